"""Hugging Face Accelerate (1.15): ``accelerate_config.yaml`` and the ``accelerate launch`` command.

Keys: `accelerate.commands.config.config_args.ClusterConfig` (top level) and the ``accelerate launch``
parser's destinations (nested sections), checked by accelerate's own loader and launch checks in the
validator tests. The plan picks the plugin — Accelerate's plugins each cover part of the space:
- ``MEGATRON_LM`` when the plan needs pipeline stages, expert parallelism, or TP without sharded
  parameters: TP, PP, SP, CP, EP and expert-TP degrees, the micro-batch count, full recompute (uniform or
  block), the distributed optimizer for ZeRO-1, optimizer offload;
- ``FSDP`` (version 2) for sharded parameters (fsdp/zero3; HSDP and TP/CP through ``parallelism_config``;
  zero2 as FSDP2 without resharding after forward), full activation checkpointing, parameter offload, fp8
  through torchao (``fp8_config``);
- ``DEEPSPEED`` for ZeRO-1 without model parallelism (optimizer offload);
- ``MULTI_GPU`` (DDP) otherwise.
A plan no plugin expresses (EP with FSDP, virtual pipeline stages, per-module selective recompute) is refused.
"""

from __future__ import annotations

import yaml

from parallelplan.constraints.fp8 import target_recipe
from parallelplan.emitters.environment import HERE, command, launch_environment, script
from parallelplan.emitters.job import Job, unsupported
from parallelplan.emitters.torchrun import SCRIPT, node_rank_lines, script_words

TARGET = "accelerate"
CONSTRAINTS = {"fixed": {"vpp": 1}, "ranges": {"recompute": ["none", "full"]}, "allow_partial_recompute": False}
NAME = "Accelerate"
AGAIN = "solve for it with `plan launch --target accelerate`"
FSDP_SHARDINGS = ("zero2", "zero3", "fsdp", "hsdp")
AO_RECIPE = "tensorwise"
"""The fp8 recipe of ``fp8_config: {backend: AO}``: torchao's Float8LinearConfig default (torchao/float8/config.py)."""
MIXED_PRECISION = {"bf16": "bf16", "fp16": "fp16", "fp8": "fp8", "fp32": "no", "tf32": "no"}


def plugin(job: Job) -> str:
    """MEGATRON_LM, FSDP, DEEPSPEED or MULTI_GPU (module docstring)."""
    p = job.plan
    if p.pp > 1 or p.ep > 1 or (p.tp > 1 and p.sharding in ("none", "zero1")):
        if p.sharding in FSDP_SHARDINGS:
            dims = ", ".join(f"{name} {value}" for name, value in (("pp", p.pp), ("ep", p.ep)) if value > 1)
            raise unsupported(NAME, f"{dims} with {p.sharding} (its FSDP plugin has neither pipeline stages nor "
                                    "expert parallelism, its Megatron-LM plugin no sharded parameters)",
                              AGAIN + " or use the megatron target")
        return "MEGATRON_LM"
    if p.sharding in FSDP_SHARDINGS:
        return "FSDP"
    return "DEEPSPEED" if p.sharding == "zero1" else "MULTI_GPU"


def megatron_section(job: Job) -> dict:
    p = job.plan
    if p.vpp > 1:
        raise unsupported(NAME, f"virtual pipeline stages (vpp {p.vpp}) in its Megatron-LM plugin", AGAIN)
    layers = p.layers_per_stage
    if layers is not None and len(set(layers[:-1])) > 1:
        raise unsupported(NAME, f"the stage layout {list(layers)} (its plugin sets only the last stage's layers)", AGAIN)
    if p.precision == "fp8" or p.offload == "params":
        raise unsupported(NAME, "fp8" if p.precision == "fp8" else "parameter offload", "in its Megatron-LM plugin")
    out = {"megatron_lm_tp_degree": p.tp, "megatron_lm_pp_degree": p.pp,
           "megatron_lm_num_micro_batches": job.gradient_accumulation,
           "megatron_lm_sequence_parallelism": p.sequence_parallel, "megatron_lm_context_parallel_size": p.cp,
           "megatron_lm_expert_model_parallel_size": p.ep, "megatron_lm_expert_tensor_parallel_size": p.etp,
           "megatron_lm_use_distributed_optimizer": p.sharding == "zero1", "megatron_lm_gradient_clipping": 1.0}
    if layers is not None and len(set(layers)) > 1:
        out["megatron_lm_decoder_last_pipeline_num_layers"] = layers[-1]
    if p.recompute == "full":
        out |= {"megatron_lm_recompute_granularity": "full",
                "megatron_lm_recompute_method": "uniform" if p.recompute_layers is None else "block",
                "megatron_lm_recompute_num_layers": p.recompute_layers or 1}
    if p.offload == "optimizer":
        out |= {"megatron_lm_optimizer_cpu_offload": True, "megatron_lm_use_precision_aware_optimizer": True}
    return {"megatron_lm_config": out}


def fsdp_section(job: Job) -> dict:
    p = job.plan
    if p.offload == "optimizer":
        raise unsupported(NAME, "optimizer-only offload with FSDP (it offloads parameters, gradients and states "
                                "together)", "solve with --range offload=none,params")
    fsdp = {"fsdp_version": 2, "fsdp_auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
            "fsdp_reshard_after_forward": p.sharding != "zero2", "fsdp_offload_params": p.offload == "params",
            "fsdp_activation_checkpointing": p.recompute == "full", "fsdp_state_dict_type": "SHARDED_STATE_DICT",
            "fsdp_cpu_ram_efficient_loading": True}
    out: dict = {"fsdp_config": fsdp}
    shard = p.hsdp_shard_size // p.cp if p.sharding == "hsdp" else p.dp
    if p.sharding == "hsdp" and p.hsdp_shard_size % p.cp:
        raise unsupported(NAME, f"HSDP groups of {p.hsdp_shard_size} ranks with cp {p.cp}", AGAIN)
    if p.tp > 1 or p.cp > 1 or p.sharding == "hsdp":
        out["parallelism_config"] = {"parallelism_config_dp_replicate_size": p.dp // shard,
                                     "parallelism_config_dp_shard_size": shard,
                                     "parallelism_config_tp_size": p.tp, "parallelism_config_cp_size": p.cp}
        if p.cp > 1:
            out["parallelism_config"]["parallelism_config_cp_backend"] = "torch"
    if p.precision == "fp8":
        out["fp8_config"] = {"backend": "AO", "enable_fsdp_float8_all_gather": True}
    return out


def deepspeed_section(job: Job) -> dict:
    p = job.plan
    return {"deepspeed_config": {"zero_stage": 1, "gradient_accumulation_steps": job.gradient_accumulation,
                                 "gradient_clipping": 1.0, "zero3_init_flag": False,
                                 "offload_optimizer_device": "cpu" if p.offload == "optimizer" else "none",
                                 "offload_param_device": "none"}}


def check(job: Job, kind: str, *, script_checkpoints: bool = False) -> None:
    """Refuse what ``kind`` cannot run; ``script_checkpoints``: the training script turns activation
    checkpointing on itself (TRL's ``gradient_checkpointing``), whatever the plugin."""
    p = job.plan
    if not job.workload.training:
        raise unsupported(NAME, "an inference plan", "use the vllm or sglang target")
    if p.recompute not in ("none", "full") or (p.recompute_layers is not None and kind != "MEGATRON_LM"):
        raise unsupported(NAME, f"recompute {p.recompute}" + (f" of {p.recompute_layers} layers" if p.recompute_layers else ""),
                          AGAIN + " (none or full)")
    if p.recompute == "full" and kind in ("DEEPSPEED", "MULTI_GPU") and not script_checkpoints:
        raise unsupported(NAME, f"activation checkpointing in its {kind} config (the model code turns it on)",
                          AGAIN + " with --fix recompute=none, or use the deepspeed target")
    if p.offload == "params" and kind != "FSDP" or p.offload == "optimizer" and kind == "MULTI_GPU":
        raise unsupported(NAME, f"{p.offload} offload with its {kind} plugin", AGAIN)
    if p.precision == "fp8" and kind != "FSDP":
        raise unsupported(NAME, f"fp8 with its {kind} plugin", "solve with --fix precision=bf16")
    if p.precision == "fp8" and target_recipe(p.fp8_recipe, TARGET) != AO_RECIPE:
        raise unsupported(NAME, f"the {p.fp8_recipe} fp8 recipe in its config (fp8_config's AO backend runs torchao's "
                                f"default, {AO_RECIPE})", f"solve with --fix fp8_recipe={AO_RECIPE}")


def config(job: Job, *, script_checkpoints: bool = False) -> dict:
    """The ``accelerate_config.yaml`` contents (``script_checkpoints``: see `check`)."""
    kind = plugin(job)
    check(job, kind, script_checkpoints=script_checkpoints)
    out = {"compute_environment": "LOCAL_MACHINE", "distributed_type": kind,
           "mixed_precision": MIXED_PRECISION[job.plan.precision], "num_machines": job.nodes,
           "num_processes": job.cluster.total_gpus, "machine_rank": 0, "main_process_port": job.master_port,
           "rdzv_backend": "static", "same_network": True, "use_cpu": False, "main_training_function": "main"}
    sections = {"MEGATRON_LM": megatron_section, "FSDP": fsdp_section, "DEEPSPEED": deepspeed_section}
    if kind in sections:
        out |= sections[kind](job)
    return out


def yaml_text(data: dict) -> str:
    """``data`` as YAML block mappings in its own key order (PyYAML quotes the strings YAML would read as
    something else, such as mixed_precision's ``'no'``)."""
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False, width=1000).rstrip("\n")


def accelerate_words(job: Job) -> list[str]:
    """``accelerate launch`` with the config beside the script, up to what it launches."""
    words = ["accelerate", "launch", "--config_file=$HERE/accelerate_config.yaml"]
    if job.nodes > 1:
        words += ["--machine_rank=$NODE_RANK", "--main_process_ip=$MASTER_ADDR"]
    return words


def launcher_words(job: Job) -> list[str]:
    return accelerate_words(job) + script_words(job, SCRIPT)


def emit(job: Job) -> dict[str, str]:
    data = config(job)
    body = [HERE, *node_rank_lines(job), "exec " + command(launcher_words(job))]
    header = f"# {job.summary}\n# Written by `plan launch` for Accelerate's {data['distributed_type']} plugin.\n"
    return {"accelerate_config.yaml": header + yaml_text(data) + "\n",
            "launch.sh": script(job.summary, launch_environment(job.plan, job.cluster), body)}
