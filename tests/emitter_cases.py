"""Solved plans that together span what each emitter expresses (shared by the fast emitter tests and the
validator tests): single and multi-node; for DeepSpeed every ZeRO stage, HSDP, AutoTP, CPU offload of the
optimizer and of parameters, fp16 and full recompute; for Megatron every parallel dimension (TP, PP with
virtual and uneven stages, CP as ring attention and as Ulysses all-to-alls, EP, expert-TP, SP), every recompute form, fp8, each sharding, MoE with MLA,
shared experts, dense layers and MTP, and a Blackwell node."""

from __future__ import annotations

import re
import shlex
from dataclasses import replace
from functools import cache

from parallelplan.constraints import Peft, Workload
from parallelplan.constraints.runtime import RuntimeAllowance
from parallelplan.emitters import constraints
from parallelplan.hardware import load_cluster
from parallelplan.models import load_model
from parallelplan.solver import Solution, solve

EIGHT_B = "llama-3.1-8b"
WORK = Workload(seq_len=4096, global_batch_size=128)


def _solve(model: str, nodes: int, target: str, fixed: dict | None = None, ranges: dict | None = None,
           cluster: str = "dgx-h100", workload: Workload = WORK) -> Solution:
    """The best plan inside the target's constraints, with the case's pins and ranges on top."""
    limits = constraints(target)
    runtime = RuntimeAllowance.default()
    runtime = replace(runtime, memory_margin=limits.get("memory_margin", runtime.memory_margin))  # as plan launch does
    return solve(load_model(model), load_cluster(cluster, nodes=nodes), workload,
                 fixed=limits.get("fixed", {}) | (fixed or {}), ranges=limits.get("ranges", {}) | (ranges or {}),
                 allow_partial_recompute=limits.get("allow_partial_recompute", True), runtime=runtime)


@cache
def deepspeed_cases() -> dict[str, Solution]:
    return {
        "zero0 single node": _solve(EIGHT_B, 1, "deepspeed", {"sharding": "none", "tp": 2}),
        "zero1": _solve(EIGHT_B, 2, "deepspeed", {"sharding": "zero1"}),
        "zero2 fp16": _solve(EIGHT_B, 2, "deepspeed", {"sharding": "zero2"}, {"precision": ["fp16"]}),
        "zero3 full recompute": _solve(EIGHT_B, 1, "deepspeed", {"sharding": "zero3", "recompute": "full"}),
        "hsdp": _solve(EIGHT_B, 2, "deepspeed", {"sharding": "hsdp"}),
        "offload optimizer, autotp": _solve(EIGHT_B, 1, "deepspeed", {"tp": 2, "sharding": "zero1"},
                                            {"offload": ["optimizer"]}),
        "offload params": _solve(EIGHT_B, 1, "deepspeed", {"sharding": "zero3"}, {"offload": ["params"]}),
    }


@cache
def megatron_cases() -> dict[str, Solution]:
    long = Workload(seq_len=32768, global_batch_size=64)
    mtp = Workload(seq_len=4096, global_batch_size=4096, train_mtp=True)
    deepep = WORK.model_copy(update={"moe_dispatcher": "deepep"})
    return {
        "tp pp vpp sp fsdp selective": _solve("llama-3.1-70b", 4, "megatron"),
        "cp zero1 full recompute": _solve(EIGHT_B, 2, "megatron", {"cp": 2, "sharding": "zero1", "recompute": "full",
                                                                     "cp_comm": "p2p"}, workload=long),
        "ulysses cp": _solve(EIGHT_B, 2, "megatron", {"cp": 4, "cp_comm": "a2a"}, workload=long),
        "usp cp across nodes": _solve(EIGHT_B, 4, "megatron", {"cp": 16, "tp": 1, "cp_comm": "a2a+p2p"}, workload=long),
        "fp8 block recompute uneven stages": _solve(
            EIGHT_B, 3, "megatron", {"pp": 3, "tp": 2, "sharding": "zero1"},
            {"precision": ["fp8"], "recompute": ["full"]}),
        "moe ep etp alltoall": _solve("mixtral-8x7b", 2, "megatron", {"ep": 4, "etp": 1}),
        "moe token dropping padded to capacity": _solve("mixtral-8x7b", 2, "megatron", {"ep": 8, "etp": 1},
                                                        workload=WORK.model_copy(update={"moe_capacity_factor": 1.25,
                                                                                         "moe_pad_to_capacity": True})),
        "moe ep across nodes deepep": _solve("qwen3-30b-a3b", 2, "megatron", {"ep": 16, "etp": 1}, workload=deepep),
        "mla shared experts dense layers mtp": _solve(
            "deepseek-v3", 32, "megatron", {"tp": 2, "pp": 16, "ep": 8, "etp": 1, "vpp": 1, "cp": 1}, workload=mtp),
        "hsdp": _solve(EIGHT_B, 2, "megatron", {"sharding": "hsdp", "tp": 1, "pp": 1}),
        "activations offloaded": _solve(EIGHT_B, 1, "megatron", {"cp": 2, "pp": 1, "recompute": "none",
                                                                 "offload_activations": True}, workload=long),
        "zero2 offload optimizer": _solve(EIGHT_B, 1, "megatron", {"sharding": "zero2"}, {"offload": ["optimizer"]}),
        "no sharding gelu learned positions": _solve("gpt-3-175b", 8, "megatron", {"sharding": "none"}),
        "blackwell tp": _solve("llama-3.1-70b", 2, "megatron", {"tp": 4, "sharding": "zero1"}, cluster="dgx-b200"),
        "blackwell mxfp8": _solve("llama-3.1-70b", 2, "megatron", {"tp": 4, "sharding": "zero1", "fp8_recipe": "mxfp8"},
                                  cluster="dgx-b200"),
        "hopper blockwise fp8": _solve(EIGHT_B, 1, "megatron", {"sharding": "zero1", "fp8_recipe": "blockwise"}),
        "flash-attention 3": _solve(EIGHT_B, 1, "megatron", {"sharding": "zero1", "attention_kernel": "flash3"}),
        "fp8 ends in bf16": _solve(EIGHT_B, 1, "megatron", {"sharding": "zero1", "pp": 2, "fp8_bf16_layers": 2}),
    }


@cache
def torchtitan_cases() -> dict[str, Solution]:
    return {
        "fsdp tp pp interleaved": _solve("llama-3.1-70b", 4, "torchtitan"),
        "hsdp per-op selective": _solve(EIGHT_B, 2, "torchtitan", {"sharding": "hsdp", "recompute": "selective_mm"}),
        "ddp tp sp pp vpp": _solve(EIGHT_B, 2, "torchtitan", {"sharding": "none", "tp": 2, "pp": 2, "vpp": 2}),
        "uneven stages cp full recompute": _solve(EIGHT_B, 3, "torchtitan", {"pp": 3, "tp": 2, "cp": 2, "recompute": "full"}),
        "zero2 cp": _solve(EIGHT_B, 2, "torchtitan", {"cp": 2, "sharding": "zero2"}),
        "moe ep": _solve("qwen3-30b-a3b", 2, "torchtitan", {"ep": 4, "etp": 1, "tp": 1}),
        "mla moe ep": _solve("deepseek-v2-lite", 1, "torchtitan", {"ep": 8, "etp": 1, "cp": 1}),
        "fp8 base config, param offload": _solve("llama-3.1-405b", 8, "torchtitan", {"sharding": "fsdp", "pp": 1},
                                                 {"precision": ["fp8"], "offload": ["params"]}),
        "dualpipev": _solve(EIGHT_B, 2, "torchtitan", {"pp": 2, "sharding": "fsdp"}, {"schedule": ["dualpipev"]},
                            workload=WORK.model_copy(update={"stack": "torchtitan"})),
        "zbv": _solve(EIGHT_B, 2, "torchtitan", {"pp": 4, "sharding": "fsdp"}, {"schedule": ["zbv"]},
                      workload=WORK.model_copy(update={"stack": "torchtitan"})),
        "mxfp8 on blackwell": _solve(EIGHT_B, 1, "torchtitan", {"sharding": "fsdp", "fp8_recipe": "mxfp8"},
                                     {"precision": ["fp8"]}, cluster="dgx-b200"),
        "fp8 ends in bf16": _solve(EIGHT_B, 1, "torchtitan", {"sharding": "fsdp", "fp8_bf16_layers": 2}, {"precision": ["fp8"]},
                                   workload=WORK.model_copy(update={"stack": "torchtitan"})),
        "mxfp8 ends in bf16": _solve(EIGHT_B, 1, "torchtitan", {"sharding": "fsdp", "fp8_recipe": "mxfp8", "fp8_bf16_layers": 1},
                                     {"precision": ["fp8"]}, cluster="dgx-b200", workload=WORK.model_copy(update={"stack": "torchtitan"})),
    }


@cache
def accelerate_cases() -> dict[str, Solution]:
    return {
        "megatron plugin tp pp sp zero1": _solve("llama-3.1-70b", 4, "accelerate", {"tp": 8, "pp": 2}),
        "megatron plugin ep etp cp full recompute": _solve(
            "mixtral-8x7b", 2, "accelerate", {"ep": 4, "etp": 1, "cp": 2, "pp": 2, "recompute": "full"}),
        "fsdp2 hsdp": _solve(EIGHT_B, 2, "accelerate", {"sharding": "hsdp"}),
        "fsdp2 tp cp recompute fp8": _solve(EIGHT_B, 2, "accelerate", {"sharding": "fsdp", "tp": 2, "cp": 2, "recompute": "full"},
                                           {"precision": ["fp8"]}),
        "fsdp2 zero2": _solve(EIGHT_B, 1, "accelerate", {"sharding": "zero2", "tp": 1}),
        "fsdp2 param offload": _solve(EIGHT_B, 1, "accelerate", {"sharding": "fsdp", "tp": 1}, {"offload": ["params"]}),
        "deepspeed zero1 offload": _solve(EIGHT_B, 2, "accelerate", {"sharding": "zero1", "tp": 1, "pp": 1},
                                          {"offload": ["optimizer"]}),
        "ddp": _solve("llama-3.2-1b", 1, "accelerate", {"sharding": "none", "tp": 1, "pp": 1, "recompute": "none"}),
    }


LORA = Workload(kind="finetune", seq_len=4096, global_batch_size=64, peft=Peft())
QLORA = Workload(kind="finetune", seq_len=4096, global_batch_size=64,
                 peft=Peft(method="qlora", rank=64, alpha=16, target_modules=("q_proj", "v_proj"), dropout=0.05))
DPO = Workload(kind="rlhf", algorithm="dpo", seq_len=2048, global_batch_size=32, peft=Peft())


@cache
def trl_cases() -> dict[str, Solution]:
    return {
        "sft lora deepspeed zero1": _solve(EIGHT_B, 1, "trl", {"sharding": "zero1"}, workload=LORA),
        "sft qlora fsdp2 two nodes": _solve(EIGHT_B, 2, "trl", {"sharding": "fsdp"}, workload=QLORA),
        "dpo lora ddp checkpointing": _solve(EIGHT_B, 1, "trl", {"sharding": "none", "recompute": "full"}, workload=DPO),
        "sft full fsdp2 zero2": _solve("llama-3.2-1b", 1, "trl", {"sharding": "zero2"},
                                       workload=Workload(kind="finetune", seq_len=2048, global_batch_size=64)),
        "sft long context activations offloaded": _solve(EIGHT_B, 1, "trl", {"offload_activations": True},
                                                         workload=Workload(kind="finetune", seq_len=16384, global_batch_size=8)),
        "sft lora packed": _solve(EIGHT_B, 1, "trl", workload=Workload(kind="finetune", seq_len=4096, global_batch_size=64,
                                                                        peft=Peft(), example_len=700, packing=True)),
        "sft full tf32 on a100": _solve("llama-3.2-1b", 1, "trl", {"precision": "tf32", "sharding": "fsdp"},
                                        workload=Workload(kind="finetune", seq_len=2048, global_batch_size=64),
                                        cluster="dgx-a100"),
        "sft full flash-attention 3": _solve("llama-3.2-1b", 1, "trl", {"sharding": "fsdp", "attention_kernel": "flash3"},
                                             workload=Workload(kind="finetune", seq_len=2048, global_batch_size=64)),
    }


def _rl_step(model: str, nodes: int, algorithm: str, prompts: int, peft: Peft | None = None, **rollout):
    """A PPO / GRPO step solved inside verl's per-role constraints, colocated (what verl runs)."""
    from parallelplan.constraints import Rollout
    from parallelplan.emitters import rl_constraints
    from parallelplan.solver import solve_rl

    work = Workload(kind="rlhf", algorithm=algorithm, seq_len=1024, global_batch_size=prompts, peft=peft,
                    rollout=Rollout(**rollout))
    return solve_rl(load_model(model), load_cluster("dgx-h100", nodes=nodes), work, placement="colocated",
                    limits=rl_constraints("verl"))


@cache
def verl_cases() -> dict:
    return {
        "grpo lora one node": _rl_step(EIGHT_B, 1, "grpo", 64, Peft(), response_len=512),
        "ppo with a critic on two nodes": _rl_step(EIGHT_B, 2, "ppo", 256, response_len=1024, mini_batch_size=64,
                                                   reward_model=False),
        "grpo moe in waves": _rl_step("qwen3-30b-a3b", 2, "grpo", 64, response_len=2048, group_size=5),
    }


SERVE = Workload(kind="inference", seq_len=8192, global_batch_size=64)


@cache
def serving_cases(target: str) -> dict[str, Solution]:
    """Inference plans for vLLM and SGLang: one node, replicas over nodes, a replica over nodes, MoE with EP."""
    ep = {"vllm": 8, "sglang": 4}[target]
    return {
        "one node": _solve("llama-3.1-70b", 1, target, workload=SERVE),
        "replicas over nodes": _solve("llama-3.1-70b", 2, target, {"tp": 4, "pp": 1}, workload=SERVE),
        "replica over nodes": _solve("llama-3.1-405b", 2, target, {"tp": 8, "pp": 2, "dp": 1}, workload=SERVE),
        "moe ep fp8": _solve("mixtral-8x7b", 1, target, {"ep": ep, "tp": ep if target == "sglang" else 4},
                             {"precision": ["fp8"]}, workload=SERVE),
        "fp8 kv cache": _solve("llama-3.1-70b", 1, target, {"kv_cache_dtype": "fp8"}, workload=SERVE),
    }


@cache
def serving_plans() -> dict:
    """Serving deployments of the serving search (`solver.serving`) for vLLM and SGLang: a dense model
    aggregated and disaggregated, a MoE model's experts over data-parallel attention by EP and by expert
    TP, pipeline stages of uneven layers, and speculative decoding with the model's MTP module."""
    from parallelplan.constraints import Traffic
    from parallelplan.constraints.serving import Speculation
    from parallelplan.solver.serving import serve_plan

    node, traffic = load_cluster("dgx-h100"), Traffic(isl=2000, osl=400)
    mixtral, bf16 = load_model("mixtral-8x7b"), {"precision": "bf16", "kv_cache_dtype": "auto"}

    def plan(model, cluster, serving, fixed=None, load=traffic):
        found = serve_plan(model, cluster, load, ttft_s=1.0, tpot_s=0.05, serving=serving, fixed=fixed)
        return found, found.best

    return {
        "dense aggregated": plan(load_model(EIGHT_B), node, "aggregated"),
        "dense disaggregated": plan(load_model(EIGHT_B), node, "disaggregated"),
        "moe ep over dp attention": plan(mixtral, node, "aggregated", bf16 | {"tp": 1, "ep": 8}),
        "moe expert tp over dp attention": plan(mixtral, node, "aggregated", bf16 | {"tp": 2, "ep": 1}),
        "uneven pipeline stages": plan(load_model("deepseek-v3"), load_cluster("hgx-h200", nodes=2), "aggregated",
                                       {"pp": 2, "precision": "fp8"}),
        "mtp speculation": plan(load_model("deepseek-v3"), load_cluster("hgx-h200", nodes=2), "aggregated",
                                {"precision": "fp8", "tp": 8},
                                traffic.model_copy(update={"speculation": Speculation(draft_tokens=2, accepted=1.5)})),
    }


@cache
def launcher_cases() -> dict[str, Solution]:
    return {"single node": _solve(EIGHT_B, 1, "torchrun"), "four nodes": _solve("llama-3.1-70b", 4, "torchrun")}


def command_words(script: str, program: str) -> list[str]:
    """The words after ``program`` on its command line in a script (continuation lines joined)."""
    text = script.replace("\\\n", " ")
    line = next(row for row in text.splitlines()
                if not row.lstrip().startswith("#") and re.search(rf"(^|\s){program}\s", row))
    words = shlex.split(line)
    return words[words.index(program) + 1:]
