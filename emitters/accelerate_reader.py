"""`read_config(data, world_size)`: an Accelerate config (``accelerate config``'s YAML) read back into `Plan`
fields; the inverse of `emitters.accelerate.config`, for `plan validate --accelerate`.

Read (Accelerate 1.x): ``distributed_type`` (MULTI_GPU: replicas, FSDP, DEEPSPEED, MEGATRON_LM, NO),
``mixed_precision`` (bf16, fp16, fp8, no: fp32), ``num_processes`` (checked against the cluster);
``fsdp_config``: ``fsdp_version`` 2's ``fsdp_reshard_after_forward`` (false: ZeRO-2) or version 1's
``fsdp_sharding_strategy`` (FULL_SHARD, SHARD_GRAD_OP, HYBRID_SHARD: shards of one node, NO_SHARD),
``fsdp_offload_params``, ``fsdp_activation_checkpointing``; ``parallelism_config``'s ``dp_replicate_size``,
``dp_shard_size``, ``tp_size``, ``cp_size``; ``deepspeed_config``: ``zero_stage``,
``offload_optimizer_device``, ``offload_param_device`` (or ``deepspeed_config_file``, read by the DeepSpeed
reader); ``megatron_lm_config``: the TP, PP, CP, EP and expert-TP degrees, sequence parallelism, the
distributed optimizer, recompute and optimizer offload. The micro-batch and the optimizer are the training
script's (its DataLoader and optimizer), so they are left to the caller."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from parallelplan.constraints import Violation
from parallelplan.emitters.accelerate import MIXED_PRECISION
from parallelplan.emitters.errors import EmitError
from parallelplan.emitters.reading import ReadConfig

PRECISION_OF = {value: precision for precision, value in MIXED_PRECISION.items()}
FSDP1_STRATEGY = {"FULL_SHARD": "fsdp", "SHARD_GRAD_OP": "zero2", "HYBRID_SHARD": "hsdp", "NO_SHARD": "none",
                  "1": "fsdp", "2": "zero2", "3": "none", "4": "hsdp"}
ZERO_STAGE = {0: "none", 1: "zero1", 2: "zero2", 3: "zero3"}


def _section(data: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = data.get(key) or {}
    if not isinstance(value, Mapping):
        raise EmitError(f"Accelerate config: {key} must be a mapping, got {type(value).__name__}")
    return value


def read_config(data: Mapping[str, Any], world_size: int, num_layers: int | None = None, gpus_per_node: int = 8,
                base: Path | None = None) -> ReadConfig:
    """The plan ``data`` runs on ``world_size`` GPUs (``num_layers``: the model's, for the Megatron-LM plugin's
    last-stage layers; ``gpus_per_node``: HYBRID_SHARD's shard group; ``base``: the folder a
    ``deepspeed_config_file`` is relative to)."""
    if not isinstance(data, Mapping):
        raise EmitError("Accelerate config: the file must hold a mapping of its keys")
    kind = data.get("distributed_type", "NO")
    notes = ["the micro-batch and the optimizer are the training script's: left to the caller"]
    findings: list[Violation] = []
    processes = data.get("num_processes")
    if processes is not None and processes != world_size:
        findings.append(Violation(rule="accelerate_num_processes",
                                  message=f"num_processes {processes} but the cluster has {world_size} GPUs",
                                  fix=f"num_processes: {world_size} (or size the cluster to {processes} GPUs)"))
    precision = data.get("mixed_precision", "no")
    if precision not in PRECISION_OF:
        raise EmitError(f"Accelerate config: mixed_precision {precision!r} is not one of {', '.join(PRECISION_OF)}")
    fields: dict[str, Any] = {"precision": PRECISION_OF[precision], "master_weights": True}
    readers = {"FSDP": _fsdp, "DEEPSPEED": _deepspeed, "MEGATRON_LM": _megatron,
               "MULTI_GPU": lambda d, w, context, notes: {"tp": 1, "pp": 1, "cp": 1, "dp": w, "sharding": "none"},
               "NO": lambda d, w, context, notes: {"tp": 1, "pp": 1, "cp": 1, "dp": 1, "sharding": "none"}}
    if kind not in readers:
        raise EmitError(f"Accelerate config: distributed_type {kind!r} is not one of {', '.join(readers)}")
    fields |= readers[kind](data, world_size, (num_layers, gpus_per_node, base), notes)
    return ReadConfig(plan_fields=fields, global_batch_size=None, findings=tuple(findings), notes=tuple(notes))


def _fsdp(data, world_size, context, notes) -> dict:
    gpus_per_node = context[1]
    fsdp = _section(data, "fsdp_config")
    par = _section(data, "parallelism_config")
    tp, cp = par.get("parallelism_config_tp_size", 1), par.get("parallelism_config_cp_size", 1)
    replicate = par.get("parallelism_config_dp_replicate_size", 1)
    shard = par.get("parallelism_config_dp_shard_size", world_size // (replicate * tp * cp))
    if replicate * shard * tp * cp != world_size:
        raise EmitError(f"Accelerate config: dp_replicate·dp_shard·tp·cp = {replicate}·{shard}·{tp}·{cp} ≠ the "
                        f"{world_size} processes (Accelerate's ParallelismConfig asserts it)")
    out: dict[str, Any] = {"tp": tp, "cp": cp, "pp": 1, "dp": replicate * shard}
    if fsdp.get("fsdp_version", 1) == 2:
        sharding = "fsdp" if fsdp.get("fsdp_reshard_after_forward", True) else "zero2"
    else:
        strategy = str(fsdp.get("fsdp_sharding_strategy", "FULL_SHARD"))
        if strategy not in FSDP1_STRATEGY:
            raise EmitError(f"Accelerate config: fsdp_sharding_strategy {strategy!r} is not one of "
                            "FULL_SHARD, SHARD_GRAD_OP, HYBRID_SHARD, NO_SHARD")
        sharding = FSDP1_STRATEGY[strategy]
        if sharding == "hsdp" and replicate == 1:
            replicate, shard = world_size // min(gpus_per_node, world_size), min(gpus_per_node, world_size)
    if replicate > 1 and shard > 1:
        out |= {"sharding": "hsdp", "hsdp_shard_size": shard * cp}
    else:
        out["sharding"] = sharding if shard > 1 else "none"
    out["offload"] = "params" if fsdp.get("fsdp_offload_params") else "none"
    out["recompute"] = "full" if fsdp.get("fsdp_activation_checkpointing") else "none"
    return out


def _deepspeed(data, world_size, context, notes) -> dict:
    base = context[2]
    section = _section(data, "deepspeed_config")
    path = section.get("deepspeed_config_file")
    if path:
        from parallelplan.emitters.deepspeed import read_config as read_deepspeed

        file = Path(path) if base is None or Path(path).is_absolute() else base / path
        read = read_deepspeed(json.loads(file.read_text()), world_size)
        notes.extend(read.notes)
        return read.plan_fields
    stage = section.get("zero_stage", 0)
    if stage not in ZERO_STAGE:
        raise EmitError(f"Accelerate config: deepspeed_config.zero_stage must be 0, 1, 2 or 3, got {stage!r}")
    offload = ("params" if section.get("offload_param_device", "none") not in ("none", None)
               else "optimizer" if section.get("offload_optimizer_device", "none") not in ("none", None) else "none")
    return {"tp": 1, "pp": 1, "cp": 1, "dp": world_size, "sharding": ZERO_STAGE[stage], "offload": offload}


def _megatron(data, world_size, context, notes) -> dict:
    num_layers = context[0]
    m = _section(data, "megatron_lm_config")
    tp, pp, cp = m.get("megatron_lm_tp_degree", 1), m.get("megatron_lm_pp_degree", 1), m.get("megatron_lm_context_parallel_size", 1)
    if world_size % (tp * pp * cp):
        raise EmitError(f"Accelerate config: {world_size} processes do not divide by tp·pp·cp = {tp}·{pp}·{cp}")
    out: dict[str, Any] = {"tp": tp, "pp": pp, "cp": cp, "dp": world_size // (tp * pp * cp),
                           "ep": m.get("megatron_lm_expert_model_parallel_size", 1),
                           "etp": m.get("megatron_lm_expert_tensor_parallel_size", tp),
                           "sequence_parallel": bool(m.get("megatron_lm_sequence_parallelism", False)),
                           "sharding": "zero1" if m.get("megatron_lm_use_distributed_optimizer") else "none",
                           "offload": "optimizer" if m.get("megatron_lm_optimizer_cpu_offload") else "none"}
    if m.get("megatron_lm_recompute_granularity") == "full":
        out["recompute"] = "full"
        if m.get("megatron_lm_recompute_method") == "block":
            out["recompute_layers"] = m.get("megatron_lm_recompute_num_layers", 1)
    elif m.get("megatron_lm_recompute_granularity") == "selective":
        out["recompute"] = "selective"
    else:
        out["recompute"] = "none"
    last = m.get("megatron_lm_decoder_last_pipeline_num_layers")
    if last is not None:
        if num_layers is None or (num_layers - last) % (pp - 1):
            raise EmitError(f"Accelerate config: megatron_lm_decoder_last_pipeline_num_layers {last} leaves layers that "
                            f"do not split evenly over the other {pp - 1} stages")
        out["layers_per_stage"] = (*[(num_layers - last) // (pp - 1)] * (pp - 1), last)
    return out
