"""LoRA and QLoRA fine-tuning (`constraints.peft`) against what PyTorch, peft and bitsandbytes measure.

Memory: a `peft`-wrapped `transformers` model at real widths (a few layers) trains two steps under
MemTracker in FakeTensorMode (`reference.lora_training_step_peak`); the plan models that recipe (one
process, HF eager modules, no master weights, gradients freed by ``zero_grad``). QLoRA: the same
measurement with every quantised linear's bf16 bytes replaced by what bitsandbytes holds for it
(`reference.nf4_bytes`, its own ``quantize_4bit`` on the CPU) — MemTracker cannot follow bitsandbytes'
4-bit parameters through FakeTensorMode. Dropout is left out: on the CPU, ATen's dropout keeps its noise
in the input dtype (``_dropout_impl``), where CUDA's fused kernel keeps a 1-byte mask, which we model.
FLOPs: FlopCounterMode over one forward + backward of the peft model (`reference.lora_training_flops`).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from parallelplan.constraints import Plan, PlanError, Workload, evaluate
from parallelplan.constraints.arrays import PlanArrays
from parallelplan.constraints.peft import (
    NF4_BYTES_PER_PARAM,
    PeftTargetError,
    adapter_params,
    adapters,
    quantized_layer_params,
    training_flops_per_token,
)
from parallelplan.constraints.plan import Peft
from parallelplan.constraints.structure import model_facts
from parallelplan.hardware import load_cluster
from parallelplan.models import load_model

FIXTURES = Path(__file__).parent / "fixtures" / "hf_configs"
CLUSTER = load_cluster("dgx-h100", nodes=1)
TOLERANCE = 0.01
"""The issue asks for 5%; the cases below are measured within 0.01%, so 1% catches a real regression."""


def hf_config(family: str, layers: int) -> dict:
    from reference import with_layers

    return with_layers(json.loads((FIXTURES / family / "config.json").read_text()), layers)


def predicted(config: dict, seq_len: int, *, batch: int = 1, rank: int = 16, targets=("all-linear",),
              method: str = "lora", dtype: str = "bfloat16") -> dict[str, float]:
    plan = Plan(dp=CLUSTER.total_gpus, micro_batch_size=batch, kernels="unfused", master_weights=False,
                precision="fp32" if dtype == "float32" else "bf16", persistent_grads=False)
    workload = Workload(kind="finetune", seq_len=seq_len, global_batch_size=batch * CLUSTER.total_gpus,
                        peft=Peft(method=method, rank=rank, target_modules=tuple(targets)))
    memory = evaluate(load_model(config), CLUSTER, workload, [plan]).memory
    return {part: float(getattr(memory, part)[0]) for part in ("weights", "gradients", "optimizer", "activations")}


def tensors(measured: dict[str, int]) -> int:
    return sum(measured[kind] for kind in ("PARAM", "GRAD", "OPT", "ACT", "TEMP"))


# (fixture, layers, sequence length, options): Llama-3.1-8B and Qwen3-30B-A3B at their real widths
LORA_CASES = [
    ("llama", 4, 4096, dict(batch=2)),                                               # peak at the loss
    ("llama", 4, 1024, dict(targets=("q_proj", "v_proj"))),                          # peft's classic pair
    ("llama", 4, 2048, dict(batch=2, dtype="float32")),                              # adapters share their input
    ("llama", 4, 2048, dict(batch=4, rank=64, targets=("q_proj", "k_proj", "v_proj", "o_proj"))),
    ("qwen3_moe", 4, 2048, dict(batch=2, targets=("q_proj", "k_proj", "v_proj", "o_proj"))),  # frozen experts
]


@pytest.mark.slow
@pytest.mark.parametrize("family,layers,seq_len,options", LORA_CASES,
                         ids=[f"{c[0]}-L{c[1]}-s{c[2]}-" + "-".join(f"{k}={v}" for k, v in c[3].items()) for c in LORA_CASES])
def test_lora_memory_matches_memtracker(family, layers, seq_len, options):
    from reference import lora_training_step_peak

    config = hf_config(family, layers)
    targets = options.pop("targets", ("all-linear",))
    measured = lora_training_step_peak(config, seq_len, targets=list(targets) if targets != ("all-linear",) else "all-linear",
                                       **options)
    ours = predicted(config, seq_len, targets=targets, **options)
    error = sum(ours.values()) / tensors(measured) - 1
    assert abs(error) <= TOLERANCE, f"predicted {ours} vs measured {measured}: {100 * error:+.2f}%"
    assert ours["weights"] == measured["PARAM"]  # the frozen base and the fp32 adapters, exactly
    assert ours["optimizer"] == pytest.approx(measured["OPT"], rel=0.05)  # AdamW's two fp32 moments per adapter


@pytest.mark.slow
def test_qlora_memory_matches_memtracker_with_bitsandbytes_weights():
    """QLoRA = the LoRA measurement with each quantised linear held as bitsandbytes holds it."""
    from reference import lora_training_step_peak, nf4_bytes

    config = hf_config("llama", 4)
    measured = lora_training_step_peak(config, 4096, batch=2)
    facts = model_facts(load_model(config))
    linears = facts.attention_matmuls + facts.mlp_matmuls(facts.ffn)
    per_layer = sum(nf4_bytes(n, k) - 2 * k * n for k, n, _ in linears)  # bitsandbytes' bytes less the bf16 ones
    measured["PARAM"] += config["num_hidden_layers"] * per_layer
    ours = predicted(config, 4096, batch=2, method="qlora")
    error = sum(ours.values()) / tensors(measured) - 1
    assert abs(error) <= TOLERANCE, f"predicted {ours} vs measured {measured}: {100 * error:+.2f}%"
    # the weights differ only by bitsandbytes' code books and offset, 1,092 bytes per quantised matrix
    assert ours["weights"] == pytest.approx(measured["PARAM"], abs=1092 * len(linears) * config["num_hidden_layers"])


@pytest.mark.slow
@pytest.mark.parametrize("shape", [(4096, 4096), (1024, 4096), (14336, 4096)])
def test_nf4_bytes_per_parameter_is_what_bitsandbytes_holds(shape):
    from reference import nf4_bytes

    rows, cols = shape
    assert nf4_bytes(rows, cols) == pytest.approx(NF4_BYTES_PER_PARAM * rows * cols, abs=1092)


@pytest.mark.slow
@pytest.mark.parametrize("targets", ["all-linear", ("q_proj", "k_proj", "v_proj", "o_proj"), ("q_proj",),
                                     ("q_proj", "v_proj"), ("k_proj", "down_proj"), ("v_proj",)])
def test_lora_training_flops_match_flop_counter(targets):
    """Frozen linears backward once (input gradients), adapters twice, layer 0 as its frozen input allows:
    its hidden-fed frozen linears skip backward, and its attention core the gradients of un-adapted Q, K, V."""
    from reference import lora_training_flops

    config = hf_config("llama", 2)
    names = list(targets) if isinstance(targets, tuple) else targets
    measured = lora_training_flops(config, 512, targets=names)
    ours = 512 * training_flops_per_token(load_model(config), 512, Peft(target_modules=(targets,) if isinstance(targets, str) else targets))
    assert ours == measured


def test_frozen_base_keeps_weights_only_and_adapters_train():
    """LoRA on Llama-3.1-8B, one node, ZeRO-1: gradients and optimizer states are the adapters' (fp32 under
    unfused peft: 4 + 4 + 8 bytes), the weights the whole bf16 base plus the adapters."""
    model = load_model("llama-3.1-8b")
    facts = model_facts(model)
    peft = Peft(rank=16)
    a = adapters(facts, peft)
    one = np.ones(1)
    trained = model.num_layers * adapter_params(a, a.dense_layer(facts), one)[0]
    assert trained == pytest.approx(41_943_040)  # peft's own count for r=16 all-linear on Llama-3.1-8B
    plan = Plan(dp=8, kernels="unfused", master_weights=False)
    work = Workload(kind="finetune", seq_len=2048, global_batch_size=8, peft=peft)
    memory = evaluate(model, CLUSTER, work, [plan]).memory
    assert memory.weights[0] == pytest.approx(2 * model.total_params + 4 * trained)
    assert memory.optimizer[0] == pytest.approx(8 * trained)
    full = evaluate(model, CLUSTER, Workload(kind="finetune", seq_len=2048, global_batch_size=8), [plan]).memory
    assert memory.total[0] < full.total[0] - 2 * model.total_params  # no base gradients or states


def test_qlora_stores_decoder_linears_in_four_bits():
    model = load_model("llama-3.1-70b")
    facts = model_facts(model)
    dense, _ = quantized_layer_params(facts, np.ones(1))
    plan = Plan(recompute="full")
    one_gpu = load_cluster("dgx-h100", gpus=1)
    work = Workload(kind="finetune", seq_len=2048, global_batch_size=16, peft=Peft(method="qlora"))
    memory = evaluate(model, one_gpu, work, [plan]).memory
    quantized = model.num_layers * dense[0]
    base = NF4_BYTES_PER_PARAM * quantized + 2 * (model.total_params - quantized)
    a = adapters(facts, work.peft)
    trained = model.num_layers * adapter_params(a, a.dense_layer(facts), np.ones(1))[0]
    assert memory.weights[0] == pytest.approx(base + 2 * trained)  # fused: bf16 adapters, the plan's recipe
    assert memory.total[0] < one_gpu.gpu.memory_bytes  # 70B QLoRA fits one 80 GB GPU (QLoRA §1: 65B on 48 GB)


def test_peft_reduces_only_the_adapters_gradient_traffic():
    model = load_model("llama-3.1-8b")
    plan = Plan(dp=8, sharding="none")
    full = evaluate(model, CLUSTER, Workload(kind="finetune", seq_len=4096, global_batch_size=64), [plan])
    lora = evaluate(model, CLUSTER, Workload(kind="finetune", seq_len=4096, global_batch_size=64, peft=Peft()), [plan])
    assert lora.time.dp_bytes[0] < full.time.dp_bytes[0] / 100  # 42M fp32 adapter gradients vs 8B fp32 gradients
    fsdp = Plan(dp=8, sharding="fsdp")
    gathered = evaluate(model, CLUSTER, Workload(kind="finetune", seq_len=4096, global_batch_size=64, peft=Peft()), [fsdp])
    assert gathered.time.dp_bytes[0] > full.time.dp_bytes[0] / 4  # FSDP still gathers the frozen base every pass


def test_frozen_backward_is_cheaper_than_full_backward():
    model = load_model("llama-3.1-8b")
    p = PlanArrays.from_plans([Plan(dp=8)])
    full = evaluate(model, CLUSTER, Workload(kind="finetune", seq_len=4096, global_batch_size=64), p)
    lora = evaluate(model, CLUSTER, Workload(kind="finetune", seq_len=4096, global_batch_size=64, peft=Peft()), p)
    assert lora.time.compute[0] < full.time.compute[0]
    assert lora.model_flops_per_step < 0.75 * full.model_flops_per_step  # ≈ 4N instead of 6N per token


@pytest.mark.parametrize("fields,message", [
    (dict(rank=0), "rank"),
    (dict(target_modules=("c_attn",)), "target_modules c_attn"),
    (dict(target_modules=()), "target_modules is empty"),
    (dict(method="dora"), "method"),
])
def test_bad_peft_fields_are_named(fields, message):
    with pytest.raises(ValueError, match=message):
        Peft(**fields)


def test_peft_needs_finetune_and_a_target_the_model_has():
    with pytest.raises(ValueError, match="needs kind 'finetune'"):
        Workload(kind="pretrain", seq_len=4096, global_batch_size=8, peft=Peft())
    gpt = load_model("gpt3-20b")  # a plain (non-gated) MLP: no gate_proj
    work = Workload(kind="finetune", seq_len=2048, global_batch_size=8, peft=Peft(target_modules=("gate_proj",)))
    with pytest.raises(PeftTargetError, match="gate_proj not in this model"):
        evaluate(gpt, CLUSTER, work, [Plan(dp=8)])
    assert issubclass(PeftTargetError, PlanError)


@pytest.mark.parametrize("args,message", [
    (["--peft", "lora", "--lora-rank", "0"], "--lora-rank"),
    (["--peft", "lora", "--lora-targets", "q_proj,c_attn"], "target_modules c_attn"),
    (["--peft", "qlora", "--fix", "precision=fp8"], "precision 'fp8' with peft 'qlora'"),
    (["--peft", "lora", "--kind", "pretrain"], "needs kind 'finetune'"),
    (["--peft", "lora", "-m", "deepseek-v3", "--lora-targets", "q_proj"], "q_proj not in this model"),
])
def test_cli_bad_peft_input_names_the_field_and_exits_2(args, message):
    from click.testing import CliRunner

    from parallelplan.cli.main import plan

    result = CliRunner().invoke(plan, ["solve", "-m", "llama-3.1-8b", "-c", "dgx-h100", "--nodes", "1",
                                       "--kind", "finetune", *args])
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_lora_that_does_not_fit_suggests_qlora_and_counts_frozen_states():
    from parallelplan.solver import Infeasible, solve

    work = Workload(kind="finetune", seq_len=2048, global_batch_size=16, peft=Peft())
    with pytest.raises(Infeasible) as err:
        solve(load_model("llama-3.1-70b"), load_cluster("dgx-h100", gpus=1), work)
    assert any(s.startswith("QLoRA (the base in 4-bit NF4)") for s in err.value.suggestions)
    assert "frozen 16-bit base 2" in str(err.value)  # not the 18 bytes of full training


def test_launch_targets_refuse_peft_plans_by_name():
    from parallelplan.emitters import EmitError, emit
    from parallelplan.solver import solve

    found = solve(load_model("llama-3.1-8b"), CLUSTER,
                  Workload(kind="finetune", seq_len=4096, global_batch_size=64, peft=Peft()))
    with pytest.raises(EmitError, match="use --target trl"):
        emit(found, "torchrun")
