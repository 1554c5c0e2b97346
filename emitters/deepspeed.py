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
from typing import Any

from parallelplan.constraints import Violation
from parallelplan.emitters.environment import HERE, command, nccl_environment, script
from parallelplan.emitters.errors import EmitError
from parallelplan.emitters.job import Job, unsupported
from parallelplan.emitters.reading import ReadConfig
from parallelplan.emitters.torchrun import SCRIPT, rendezvous_lines, script_words

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

DOCS = "https://www.deepspeed.ai/docs/config-json/"
SHARDINGS = {0: "none", 1: "zero1", 2: "zero2", 3: "zero3"}
"""``zero_optimization.stage`` → `Plan.sharding` (the inverse of `STAGES`; FSDP is written as ZeRO-3 and reads
back as zero3, HSDP as ZeRO-3 with ``zero_hpz_partition_size`` > 1)."""
READ_OPTIMIZERS = {name.lower(): optimizer for optimizer, name in OPTIMIZERS.items()} | {"adam": "adamw"}
"""DeepSpeed's own ``optimizer.type`` values (matched case-insensitively, as `DeepSpeedConfig` does) and the
`Plan` optimizer they are: DeepSpeed's Adam applies decoupled weight decay by default (``adam_w_mode``) and keeps
the same two fp32 states as AdamW, so Adam is adamw here."""
OFFLOAD_DEVICES = ("none", "cpu", "nvme")
BATCH_KEYS = ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps")
MODELLED_KEYS = frozenset({*BATCH_KEYS, "zero_optimization", "bf16", "bfloat16", "fp16", "torch_autocast", "optimizer",
                           "tensor_parallel", "activation_checkpointing", "sequence_parallel_size"})
NEUTRAL_KEYS = frozenset({
    "scheduler", "gradient_clipping", "steps_per_print", "wall_clock_breakdown", "dump_state", "memory_breakdown",
    "prescale_gradients", "gradient_predivide_factor", "gradient_allreduce_op", "zero_allow_untested_optimizer",
    "zero_force_ds_cpu_optimizer", "tensorboard", "wandb", "csv_monitor", "comet", "flops_profiler", "comms_logger",
    "checkpoint", "aio", "dataloader_drop_last", "log_level", "disable_python_gc"})
"""Top-level keys that change neither the plan nor its cost (logging, learning-rate schedule, clipping,
checkpointing, NVMe tuning); any other key the reader does not model is listed in a note."""
REMOVED_KEYS = ("nebula", "compression_training", "amp", "quantize_training", "sparse_gradients", "eigenvalue",
                "sparse_attention", "elasticity", "graph_harvesting", "curriculum_learning", "progressive_layer_drop")
REMOVED_ZERO_KEYS = ("mics_shard_size", "mics_hierarchical_params_gather", "zeropp_loco_param")
"""Keys DeepSpeed 0.19 refuses (`deepspeed.runtime.config._reject_removed_config_keys` raises
DeepSpeedConfigError): features it removed."""
UNMODELLED_ZERO_KEYS = ("zero_quantized_weights", "zero_quantized_nontrainable_weights", "zero_quantized_gradients",
                        "zenflow")
AUTO = "auto"  # the HF Trainer / Accelerate integration fills these in from its own arguments


def _bad(path: str, allowed: str, value: Any) -> EmitError:
    shown = repr(value)
    return EmitError(f"DeepSpeed config: {path} must be {allowed}, got {shown if len(shown) <= 60 else shown[:57] + '...'}")


def _section(data: Mapping[str, Any], key: str, path: str) -> Mapping[str, Any]:
    """The object at ``key`` ({} when absent or null)."""
    value = data.get(key)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise _bad(path, "an object", value)
    return value


def _integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _count(data: Mapping[str, Any], key: str, notes: list[str]) -> int | None:
    """A positive integer batch value; None when absent, null or "auto"."""
    value = data.get(key)
    if value is None:
        return None
    if value == AUTO:
        notes.append(f'{key} is "auto" (the HF Trainer / Accelerate fill it in): read as not given')
        return None
    if not _integer(value) or value < 1:
        raise _bad(key, 'a positive integer (or "auto")', value)
    return value


def _batch(train: int | None, micro: int | None, accumulation: int | None,
           dp: int) -> tuple[int | None, int | None, int | None]:
    """DeepSpeed 0.19's `DeepSpeedConfig._set_batch_related_parameters`, case for case: all three are kept as
    given; any two give the third by floor division (train // micro // dp, train // dp // accumulation) or by
    product; train_batch_size alone means accumulation 1 and micro = train // dp; the micro-batch alone means
    accumulation 1 and train = micro × dp; with neither train nor micro (DeepSpeed asserts) all are None."""
    if train is not None and micro is not None and accumulation is not None:
        return train, micro, accumulation
    if train is not None and micro is not None:
        return train, micro, train // micro // dp
    if train is not None and accumulation is not None:
        return train, train // dp // accumulation, accumulation
    if micro is not None and accumulation is not None:
        return micro * accumulation * dp, micro, accumulation
    if train is not None:
        return train, train // dp, 1
    if micro is not None:
        return micro * dp, micro, 1
    return None, None, None


def _batch_fix(given: tuple[int | None, int | None, int | None], train: int, dp: int) -> str:
    """The train_batch_size that `DeepSpeedConfig._batch_assertion` accepts, keeping what the user gave."""
    _, micro, accumulation = given
    if micro is not None and accumulation is not None:
        return f"set train_batch_size to {micro * accumulation * dp} (micro-batch {micro} × {accumulation} steps × {dp} ranks)"
    unit = (micro or 1) * (accumulation or 1) * dp
    lower, upper = train // unit * unit, (train // unit + 1) * unit
    per = " × ".join([*(["train_micro_batch_size_per_gpu " + str(micro)] if micro else []),
                      *(["gradient_accumulation_steps " + str(accumulation)] if accumulation else []), f"{dp} ranks"])
    values = f"{lower} or {upper}" if lower else str(upper)
    return f"set train_batch_size to {values} (a multiple of {per}), so that DeepSpeed's derivation divides evenly"


def _enabled(section: Mapping[str, Any], path: str) -> bool | str:
    value = section.get("enabled", False)
    if value is None:
        return False
    if value != AUTO and not isinstance(value, bool):
        raise _bad(path, 'true, false or "auto"', value)
    return value


def _precision(data: Mapping[str, Any], notes: list[str]) -> str | None:
    """``bf16`` (or its old name ``bfloat16``) / ``fp16`` ``enabled``, else ``torch_autocast``; None when "auto"
    leaves it to the HF Trainer."""
    bf16_key = "bf16" if data.get("bf16") is not None or "bfloat16" not in data else "bfloat16"
    flags = {"bf16": _enabled(_section(data, bf16_key, bf16_key), f"{bf16_key}.enabled"),
             "fp16": _enabled(_section(data, "fp16", "fp16"), "fp16.enabled")}
    on = [name for name, flag in flags.items() if flag is True]
    if len(on) == 2:
        raise EmitError(f"DeepSpeed config: {bf16_key}.enabled and fp16.enabled are both true; DeepSpeed allows at most "
                        "one (bfloat16 and fp16 modes cannot be simultaneously enabled)")
    for name, key in (("bf16", bf16_key), ("fp16", "fp16")):
        if _section(data, key, key).get(f"{name}_master_weights_and_grads") is True:
            notes.append(f"{key}.{name}_master_weights_and_grads is not modelled: priced with fp32 master weights and gradients")
    if on:
        return on[0]
    auto = [f"{bf16_key if name == 'bf16' else name}.enabled" for name, flag in flags.items() if flag == AUTO]
    if auto:
        notes.append(f'{" and ".join(auto)} {"is" if len(auto) == 1 else "are"} "auto" (the HF Trainer sets it from '
                     '--bf16/--fp16): precision left to the caller')
        return None
    autocast = _section(data, "torch_autocast", "torch_autocast")
    if _enabled(autocast, "torch_autocast.enabled") is True:
        dtype = {"torch.bfloat16": "bf16", "bf16": "bf16", "bfloat16": "bf16", "torch.float16": "fp16", "fp16": "fp16",
                 "float16": "fp16", "half": "fp16"}.get(str(autocast.get("dtype")))
        notes.append("torch_autocast: priced as " + (f"{dtype} mixed precision (fp32 weights, autocast GEMMs)" if dtype
                     else "fp32 (its dtype is not given: precision left to the caller)"))
        return dtype
    return "fp32"


def _offload_device(zero: Mapping[str, Any], key: str, legacy: str) -> str:
    """``zero_optimization.<key>.device``; the deprecated boolean ``<legacy>`` means cpu when the new key is absent."""
    path = f"zero_optimization.{key}"
    section = _section(zero, key, path)
    if not section and zero.get(legacy) is not None:
        if not isinstance(zero[legacy], bool):
            raise _bad(f"zero_optimization.{legacy}", "true or false", zero[legacy])
        return "cpu" if zero[legacy] else "none"
    device = section.get("device", "none")
    if device not in OFFLOAD_DEVICES:
        raise _bad(f"{path}.device", " or ".join(repr(d) for d in OFFLOAD_DEVICES), device)
    return device


def _zero(data: Mapping[str, Any], notes: list[str]) -> tuple[dict[str, Any], Mapping[str, Any]]:
    """sharding, hsdp_shard_size, grad_reduce_overlap and offload from ``zero_optimization``."""
    if isinstance(data.get("zero_optimization"), bool):  # DeepSpeed's deprecated form: true is stage 1
        notes.append("zero_optimization: true/false is DeepSpeed's deprecated form, read as stage 1/0")
        zero: Mapping[str, Any] = {"stage": int(data["zero_optimization"])}
    else:
        zero = _section(data, "zero_optimization", "zero_optimization")
    stage = zero.get("stage", 0)
    if not _integer(stage) or stage not in SHARDINGS:
        raise _bad("zero_optimization.stage", "0, 1, 2 or 3", stage)
    fields: dict[str, Any] = {"sharding": SHARDINGS[stage]}

    hpz = zero.get("zero_hpz_partition_size", 1)
    if not _integer(hpz) or hpz < 0:
        raise _bad("zero_optimization.zero_hpz_partition_size", "a non-negative integer", hpz)
    if hpz > 1 and stage == 3:
        fields |= {"sharding": "hsdp", "hsdp_shard_size": hpz}
        notes.append(f"zero_hpz_partition_size {hpz} (ZeRO++ hpZ) read as HSDP over groups of {hpz} ranks (the inverse of "
                     "the emitter): hpZ keeps a secondary parameter shard per group, gradients and optimizer states "
                     "stay sharded over all data-parallel ranks")
    elif hpz > 1:
        notes.append(f"zero_hpz_partition_size {hpz} ignored: ZeRO++ hpZ applies to stage 3 only")

    overlap = zero.get("overlap_comm")
    if overlap is not None and not isinstance(overlap, bool):
        raise _bad("zero_optimization.overlap_comm", "true or false", overlap)
    if stage == 0:
        notes.append("stage 0: DeepSpeed all-reduces the gradients after the backward pass (overlap_comm is a ZeRO "
                     "option); grad_reduce_overlap left to the caller")
    elif overlap is None:
        fields["grad_reduce_overlap"] = stage == 3  # DeepSpeedZeroConfig.overlap_comm_valid
        notes.append(f"overlap_comm not given: DeepSpeed's default for stage {stage} ({'on' if stage == 3 else 'off'})")
    else:
        fields["grad_reduce_overlap"] = overlap

    optimizer = _offload_device(zero, "offload_optimizer", "cpu_offload")
    param = _offload_device(zero, "offload_param", "cpu_offload_param")
    if stage == 0 and (optimizer, param) != ("none", "none"):
        notes.append("offload ignored: DeepSpeed offloads with ZeRO stages 1-3 only")
        optimizer = param = "none"
    if param != "none" and stage < 3:
        notes.append(f"zero_optimization.offload_param ignored: DeepSpeed offloads parameters with stage 3 only (stage {stage})")
        param = "none"
    fields["offload"] = "params" if param != "none" else "optimizer" if optimizer != "none" else "none"
    if param != "none" and optimizer == "none":
        notes.append("offload_param without offload_optimizer: priced as the plan's 'params' offload, which moves "
                     "the optimizer states too (DeepSpeed keeps them on the GPU here, so the memory is understated)")
    if "nvme" in (optimizer, param):
        notes.append("NVMe offload is modelled as CPU offload (its bandwidth is lower)")
    ratio = _section(zero, "offload_optimizer", "zero_optimization.offload_optimizer").get("ratio", 1.0)
    if optimizer != "none" and isinstance(ratio, int | float) and ratio < 1:
        notes.append(f"offload_optimizer.ratio {ratio} (partial offload) is priced as full optimizer offload")
    unmodelled = [key for key in UNMODELLED_ZERO_KEYS if zero.get(key)]
    if unmodelled:
        notes.append(f"not modelled: zero_optimization.{', zero_optimization.'.join(unmodelled)}")
    return fields, zero


def read_config(data: Mapping[str, Any], world_size: int) -> ReadConfig:
    """The plan that a ``ds_config.json`` (`DOCS`) runs on ``world_size`` GPUs; the inverse of `config`.

    Keys read: the batch triple ``train_batch_size`` / ``train_micro_batch_size_per_gpu`` /
    ``gradient_accumulation_steps`` (any two give the third, as `_batch` derives them; "auto" is not given);
    ``zero_optimization``: ``stage`` (0 none, 1 zero1, 2 zero2, 3 zero3), ``zero_hpz_partition_size`` > 1 at stage 3
    (hsdp), ``overlap_comm`` (grad_reduce_overlap; DeepSpeed's default, on at stage 3 only, when absent),
    ``offload_optimizer.device`` / ``offload_param.device`` cpu or nvme (offload optimizer / params);
    ``bf16.enabled`` / ``fp16.enabled`` (precision, fp32 when neither; master weights stay fp32);
    ``optimizer.type`` (Adam/AdamW adamw, Lion lion); ``tensor_parallel.autotp_size`` (tp); ``activation_checkpointing``
    (full recompute). DeepSpeed's data-parallel size (what ZeRO shards over and the batch counts) is
    world_size / autotp_size. Raises `EmitError` naming the key, the value and what is allowed for input that
    DeepSpeed refuses to parse or that cannot be a plan."""
    if not _integer(world_size) or world_size < 1:
        raise EmitError(f"DeepSpeed config: the world size must be a positive integer, got {world_size!r}")
    if not isinstance(data, Mapping):
        raise _bad("the config", "a JSON object", data)
    notes: list[str] = []
    findings: list[Violation] = []

    tp = _section(data, "tensor_parallel", "tensor_parallel").get("autotp_size", 1)
    if tp in (None, 0):  # DeepSpeed's default 0: AutoTP off
        tp = 1
    if not _integer(tp) or tp < 1 or world_size % tp:
        raise _bad("tensor_parallel.autotp_size", f"a positive integer dividing the world size {world_size}", tp)
    dp = world_size // tp
    if tp > 1:
        notes.append(f"the batch counts dp = {world_size} / autotp_size {tp} = {dp} ranks, as DeepSpeed does when the "
                     f"script passes an mpu (DeepSpeed's AutoTP example); without one DeepSpeedConfig counts all {world_size}")
    sp = data.get("sequence_parallel_size", 1)
    if sp not in (None, 1):
        raise EmitError(f"DeepSpeed config: sequence_parallel_size {sp!r} (Ulysses sequence parallelism) is not "
                        "modelled: remove it, or validate the plan with flags instead of --deepspeed")
    fields: dict[str, Any] = {"tp": tp, "dp": dp, "pp": 1, "cp": 1}
    if "pipeline" in data:
        notes.append("pipeline: stages are set in code (PipelineModule) and not read; pp 1 assumed")

    zero_fields, zero = _zero(data, notes)
    fields |= zero_fields
    precision = _precision(data, notes)
    if precision is not None:
        fields["precision"] = precision
    fields["master_weights"] = True

    optimizer = _section(data, "optimizer", "optimizer").get("type")
    if optimizer is None:
        notes.append("no optimizer section: the script's own optimizer runs; optimizer left to the caller")
    elif not isinstance(optimizer, str):
        raise _bad("optimizer.type", "a string", optimizer)
    elif optimizer.lower() in READ_OPTIMIZERS:
        fields["optimizer"] = READ_OPTIMIZERS[optimizer.lower()]
    else:
        notes.append(f"optimizer.type {optimizer!r} is not modelled: optimizer left to the caller")

    checkpointing = data.get("activation_checkpointing")
    if checkpointing is not None:
        checkpointing = _section(data, "activation_checkpointing", "activation_checkpointing")
        fields["recompute"] = "full"
        notes.append("activation_checkpointing present: full recompute assumed (DeepSpeed applies it only where the "
                     "model calls deepspeed.checkpointing.checkpoint or enables its own gradient checkpointing)")
        if checkpointing.get("cpu_checkpointing"):
            notes.append("activation_checkpointing.cpu_checkpointing is not modelled: checkpoints priced on the GPU")

    given = tuple(_count(data, key, notes) for key in BATCH_KEYS)
    train, micro, accumulation = _batch(*given, dp)
    if train is None or micro is None or accumulation is None:
        notes.append("the batch is not fixed by the config (DeepSpeed needs train_batch_size or "
                     "train_micro_batch_size_per_gpu): global batch and micro-batch left to the caller")
    else:
        if micro < 1 or accumulation < 1 or train != micro * accumulation * dp:
            findings.append(Violation(
                rule="deepspeed_batch",
                message=(f"DeepSpeed rejects the batch: train_batch_size {train} != train_micro_batch_size_per_gpu "
                         f"{micro} × gradient_accumulation_steps {accumulation} × {dp} data-parallel ranks"
                         + ("" if all(v is not None for v in given) else " (derived as DeepSpeed does, by floor division)")),
                fix=_batch_fix(given, train, dp)))
        if micro >= 1:
            fields["micro_batch_size"] = micro

    for key in REMOVED_KEYS:
        if key in data:
            findings.append(Violation(rule="deepspeed_removed_key", message=f"DeepSpeed 0.19 removed {key} and rejects a config that has it",
                                      fix=f"remove {key}"))
    for key in REMOVED_ZERO_KEYS:
        if key in zero:
            findings.append(Violation(rule="deepspeed_removed_key",
                                      message=f"DeepSpeed 0.19 removed zero_optimization.{key} and rejects a config that has it",
                                      fix=f"remove zero_optimization.{key}"))
    unknown = sorted(set(data) - MODELLED_KEYS - NEUTRAL_KEYS - set(REMOVED_KEYS) - {"pipeline"})
    if unknown:
        notes.append(f"not modelled: {', '.join(unknown)}")
    return ReadConfig(plan_fields=fields, global_batch_size=train, findings=tuple(findings), notes=tuple(notes))
