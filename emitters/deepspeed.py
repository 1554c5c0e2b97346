"""DeepSpeed (0.19): ``ds_config.json`` and the ``deepspeed`` launcher command.

Keys (`deepspeed.runtime.config.DeepSpeedConfig`, `DeepSpeedZeroConfig`): the batch triple with
train_batch_size = train_micro_batch_size_per_gpu × gradient_accumulation_steps × dp (DeepSpeed asserts it);
``zero_optimization.stage`` 0–3 from the sharding (FSDP's full sharding is ZeRO-3; HSDP is ZeRO-3 with ZeRO++
hpZ, ``zero_hpz_partition_size`` = the shard group), ``overlap_comm`` with the plan's gradient-reduce overlap,
``offload_optimizer`` / ``offload_param`` on the CPU; ``bf16`` or ``fp16`` (never both); AutoTP
(``tensor_parallel.autotp_size``) for tp > 1; ``activation_checkpointing`` for full recompute (the model must
call `deepspeed.checkpointing` or enable its own gradient checkpointing).
What the JSON cannot express is refused (`CONSTRAINTS` keeps `plan launch` inside it): context and expert
parallelism, pipeline stages (set in code with `deepspeed.pipe.PipelineModule`), Megatron sequence
parallelism, selective or partial recompute, fp8 (Transformer Engine, in the model code).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from constraints import Violation
from emitters.environment import HERE, command, nccl_environment, script
from emitters.errors import EmitError
from emitters.job import Job, unsupported
from emitters.torchrun import SCRIPT, rendezvous_lines, script_words

TARGET = "deepspeed"
CONSTRAINTS = {"fixed": {"cp": 1, "ep": 1, "pp": 1, "sequence_parallel": False}, "ranges": {"recompute": ["none", "full"]},
               "allow_partial_recompute": False}
STAGES = {"none": 0, "zero1": 1, "zero2": 2, "zero3": 3, "fsdp": 3, "hsdp": 3}
OPTIMIZERS = {"adamw": "AdamW", "lion": "Lion"}  # DeepSpeed's own optimizer types; others come from the script
AGAIN = "solve for it with `plan launch --target deepspeed`"
BUCKET = 500_000_000  # DeepSpeed's default reduce/allgather bucket (elements)


def check(job: Job) -> None:
    p, name = job.plan, "DeepSpeed"
    if p.cp > 1:
        raise unsupported(name, f"context parallelism (cp {p.cp})", AGAIN + " (it keeps cp 1)")
    if p.ep > 1:
        raise unsupported(name, f"expert parallelism in its config (ep {p.ep}: set in the model's MoE layers)",
                          AGAIN + " (it keeps ep 1)")
    if p.pp > 1:
        raise unsupported(name, f"pipeline stages in its config (pp {p.pp}: PipelineModule(num_stages=...) in code)",
                          AGAIN + " (it keeps pp 1)")
    if p.sequence_parallel:
        raise unsupported(name, "Megatron sequence parallelism with AutoTP", AGAIN + " (it keeps sequence parallelism off)")
    if p.recompute not in ("none", "full") or p.recompute_layers is not None:
        raise unsupported(name, f"recompute {p.recompute}" + (f" of {p.recompute_layers} layers" if p.recompute_layers else ""),
                          AGAIN + " (it searches recompute none or full on every layer)")
    if p.precision not in ("bf16", "fp16"):
        raise unsupported(name, f"{p.precision} in its config (fp8 lives in Transformer Engine model code)",
                          "solve with --fix precision=bf16")


def config(job: Job) -> dict:
    """The ``ds_config.json`` contents."""
    check(job)
    p = job.plan
    stage = STAGES[p.sharding]
    zero: dict = {"stage": stage, "overlap_comm": p.grad_reduce_overlap and stage > 0, "contiguous_gradients": True,
                  "reduce_bucket_size": BUCKET, "allgather_bucket_size": BUCKET}
    if p.sharding == "hsdp":
        zero["zero_hpz_partition_size"] = p.hsdp_shard_size
    if p.offload != "none":
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    if p.offload == "params":
        zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    out: dict = {
        "train_batch_size": job.workload.global_batch_size,
        "train_micro_batch_size_per_gpu": p.micro_batch_size,
        "gradient_accumulation_steps": job.gradient_accumulation,
        p.precision: {"enabled": True},
        "zero_optimization": zero,
        "gradient_clipping": 1.0,
        "steps_per_print": 10,
        "wall_clock_breakdown": False,
    }
    if p.precision == "fp16":
        out["fp16"] |= {"loss_scale": 0, "initial_scale_power": 16}
    if p.optimizer in OPTIMIZERS:
        out["optimizer"] = {"type": OPTIMIZERS[p.optimizer], "params": {"lr": 3e-4, "weight_decay": 0.1}}
    elif stage > 0:
        out["zero_allow_untested_optimizer"] = True
    if p.tp > 1:
        out["tensor_parallel"] = {"autotp_size": p.tp}
    if p.recompute == "full":
        out["activation_checkpointing"] = {"partition_activations": p.tp > 1, "contiguous_memory_optimization": False,
                                           "cpu_checkpointing": False}
    return out


def launcher_words(job: Job) -> list[str]:
    words = ["deepspeed", f"--num_nodes={job.nodes}", f"--num_gpus={job.gpus_per_node}"]
    if job.nodes > 1:
        words += ["--hostfile=$HOSTFILE", "--master_addr=$MASTER_ADDR", "--master_port=$MASTER_PORT"]
    return words + script_words(job, SCRIPT) + ["--deepspeed_config", "$HERE/ds_config.json"]


def emit(job: Job) -> dict[str, str]:
    ds = config(job)
    body = [HERE]
    if job.nodes > 1:
        body += ['# HOSTFILE lists the nodes, one "hostname slots=' + str(job.gpus_per_node) + '" line each (pdsh reaches them).',
                 ': "${HOSTFILE:?set HOSTFILE to the DeepSpeed hostfile}"', *rendezvous_lines(job)]
    body.append("exec " + command(launcher_words(job)))
    return {"ds_config.json": json.dumps(ds, indent=2) + "\n", "launch.sh": script(job.summary, nccl_environment(job.cluster), body)}


# -- reading a user's ds_config.json (the inverse of `config`) ------------------------------------------------

READ_OPTIMIZERS = {"adamw": "adamw", "adam": "adamw", "fusedadam": "adamw", "cpuadam": "adamw", "lion": "lion",
                   "fusedlion": "lion", "cpulion": "lion"}
"""DeepSpeed optimizer types (case-insensitive) and the `Plan` optimizer they are; DeepSpeed's Adam applies
decoupled weight decay by default (``adam_w_mode``), so Adam is AdamW here."""
OFFLOAD_DEVICES = ("none", "cpu", "nvme")


@dataclass(frozen=True)
class ReadConfig:
    """What a ``ds_config.json`` says about a plan: the `Plan` fields it determines, the global batch in
    sequences (None when it cannot be derived), the rules it breaks (`constraints.Violation`) and what the
    reader assumed or left out."""

    plan_fields: dict[str, Any]
    global_batch_size: int | None
    findings: tuple[Violation, ...]
    notes: tuple[str, ...]


def _section(data: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = data.get(key, {})
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise EmitError(f"DeepSpeed config: {key} must be an object, got {type(value).__name__}")
    return value


def _count(data: Mapping[str, Any], key: str, path: str, notes: list[str]) -> int | None:
    """A positive integer, None when absent or "auto" (HF Trainer fills those in)."""
    value = data.get(key)
    if value is None:
        return None
    if value == "auto":
        notes.append(f'{path} is "auto" (the HF Trainer fills it in): taken from the other batch values or the flags')
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise EmitError(f"DeepSpeed config: {path} must be a positive integer (or \"auto\"), got {value!r}")
    return value


def _batch(train: int | None, micro: int | None, accumulation: int | None, dp: int) -> tuple[int | None, int | None, int | None]:
    """DeepSpeed 0.19's `DeepSpeedConfig._set_batch_related_parameters`: any two of the triple give the
    third (integer division, as DeepSpeed does); one alone means no accumulation."""
    if train is not None and micro is not None and accumulation is None:
        accumulation = train // micro // dp
    elif train is not None and accumulation is not None and micro is None:
        micro = train // dp // accumulation
    elif micro is not None and accumulation is not None and train is None:
        train = micro * accumulation * dp
    elif train is not None and micro is None:
        accumulation, micro = 1, train // dp
    elif micro is not None and train is None:
        train, accumulation = micro * dp, 1
    return train, micro, accumulation


def _offload(zero: Mapping[str, Any], key: str) -> bool:
    device = _section(zero, key).get("device", "none")
    if device not in OFFLOAD_DEVICES:
        raise EmitError(f"DeepSpeed config: zero_optimization.{key}.device must be one of "
                        f"{', '.join(OFFLOAD_DEVICES)}, got {device!r}")
    return device != "none"


def read_config(data: Mapping[str, Any], world_size: int) -> ReadConfig:
    """The plan a ``ds_config.json`` runs on ``world_size`` GPUs (keys of DeepSpeed's config documentation:
    the batch triple, ``zero_optimization`` with ``stage``, ``overlap_comm``, ``zero_hpz_partition_size``,
    ``offload_optimizer`` / ``offload_param``; ``bf16`` / ``fp16``; ``optimizer.type``;
    ``tensor_parallel.autotp_size``; ``activation_checkpointing``). DeepSpeed's data-parallel size — what
    ZeRO shards over and the batch counts — is world_size / autotp_size."""
    notes: list[str] = []
    tp = _section(data, "tensor_parallel").get("autotp_size", 1)
    if isinstance(tp, bool) or not isinstance(tp, int) or tp < 1 or world_size % tp:
        raise EmitError(f"DeepSpeed config: tensor_parallel.autotp_size must be a positive integer dividing the "
                        f"{world_size} GPUs, got {tp!r}")
    dp = world_size // tp
    fields: dict[str, Any] = {"tp": tp, "dp": dp, "pp": 1, "cp": 1, "master_weights": True}

    zero = _section(data, "zero_optimization")
    stage = zero.get("stage", 0)
    if stage not in STAGES.values() or isinstance(stage, bool):
        raise EmitError(f"DeepSpeed config: zero_optimization.stage must be 0, 1, 2 or 3, got {stage!r}")
    hpz = zero.get("zero_hpz_partition_size", 1)
    if stage == 3 and isinstance(hpz, int) and hpz > 1:
        fields |= {"sharding": "hsdp", "hsdp_shard_size": hpz}
    else:
        fields["sharding"] = {0: "none", 1: "zero1", 2: "zero2", 3: "zero3"}[stage]
    if "overlap_comm" in zero:
        fields["grad_reduce_overlap"] = bool(zero["overlap_comm"])
    fields["offload"] = "params" if _offload(zero, "offload_param") else "optimizer" if _offload(zero, "offload_optimizer") else "none"
    if "nvme" in (_section(zero, "offload_param").get("device"), _section(zero, "offload_optimizer").get("device")):
        notes.append("NVMe offload is modelled as CPU offload (its bandwidth is lower)")

    enabled = [p for p in ("bf16", "fp16") if _section(data, p).get("enabled") in (True, "auto")]
    if len(enabled) == 2:
        raise EmitError("DeepSpeed config: bf16.enabled and fp16.enabled are both true; DeepSpeed allows one")
    fields["precision"] = enabled[0] if enabled else "fp32"

    optimizer = _section(data, "optimizer").get("type")
    if isinstance(optimizer, str) and optimizer.lower() in READ_OPTIMIZERS:
        fields["optimizer"] = READ_OPTIMIZERS[optimizer.lower()]
    elif optimizer is not None:
        notes.append(f"optimizer.type {optimizer!r} is not modelled: priced as AdamW (give --optimizer)")
    if "activation_checkpointing" in data:
        fields["recompute"] = "full"
        notes.append("activation_checkpointing present: full recompute assumed (DeepSpeed applies it only where "
                     "the model calls deepspeed.checkpointing or enables its own checkpointing)")

    given = (_count(data, "train_batch_size", "train_batch_size", notes),
             _count(data, "train_micro_batch_size_per_gpu", "train_micro_batch_size_per_gpu", notes),
             _count(data, "gradient_accumulation_steps", "gradient_accumulation_steps", notes))
    train, micro, accumulation = _batch(*given, dp)
    findings = []
    if train is not None and micro is not None and accumulation is not None:
        if micro < 1 or accumulation < 1 or train != micro * accumulation * dp:
            findings.append(Violation(
                rule="deepspeed_batch",
                message=(f"train_batch_size {train} != train_micro_batch_size_per_gpu {micro} x "
                         f"gradient_accumulation_steps {accumulation} x data-parallel size {dp}; DeepSpeed rejects it"),
                fix=f"set train_batch_size to {max(micro, 1) * max(accumulation, 1) * dp} (or drop one of the three "
                    "and let DeepSpeed derive it)"))
        fields["micro_batch_size"] = max(micro, 1)
    else:
        notes.append("the batch is not fixed by the config: give --global-batch and --micro-batch")
    return ReadConfig(plan_fields=fields, global_batch_size=train if train and train > 0 else None,
                      findings=tuple(findings), notes=tuple(notes))
