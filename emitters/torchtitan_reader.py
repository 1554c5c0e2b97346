"""`read_config(sections, world_size, num_layers)`: a torchtitan job — a TOML file of its config sections
(``[parallelism]``, ``[training]``, ``[activation_checkpoint]``, ``[model]``, ``[optimizer]``) or the
``--section.key=value`` overrides of its command line (`sections_from_text` reads either) — read back into
`Plan` fields; the inverse of `emitters.torchtitan.arguments`, for `plan validate --torchtitan`.

Read, with torchtitan 0.3's defaults where absent: ``parallelism.data_parallel_replicate_degree`` (1),
``data_parallel_shard_degree`` (-1: the ranks the other degrees leave), ``fsdp_reshard_after_forward``
(``never`` is ZeRO-2), ``tensor_parallel_degree``, ``enable_sequence_parallel`` (on with TP),
``context_parallel_degree``, ``expert_parallel_degree``, ``expert_tensor_parallel_degree`` (1 with EP;
without EP the experts follow TP),
``pipeline_parallel_degree``, ``pipeline_parallel_schedule`` (``1F1B``, ``Interleaved1F1B``, ``DualPipeV``, ``ZBVZeroBubble``),
``pipeline_parallel_microbatch_size``, ``pipeline_parallel_layers_per_stage`` with
``pipeline_parallel_first/last_stage_less_layers``; ``training.local_batch_size``, ``global_batch_size``,
``seq_len``, ``enable_cpu_offload``, ``mixed_precision_param``; ``activation_checkpoint.mode`` (with
``selective_ac_option`` ``op``); ``model.converters`` (``float8``: fp8 in the stack's recipe; ``mx``: fp8 with the mxfp8 recipe); ``optimizer.name`` (AdamW). A
float8 converter set in a Python config module (``--module``) is not visible here: precision is then left to
the caller (a note says so)."""

from __future__ import annotations

import shlex
import sys
from collections.abc import Mapping
from typing import Any

from parallelplan.constraints.plan import V_SCHEDULES
from parallelplan.emitters.errors import EmitError
from parallelplan.emitters.reading import ReadConfig
from parallelplan.emitters.torchtitan import SCHEDULES

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

SCHEDULE_OF = {name: schedule for schedule, name in SCHEDULES.items()}
RECOMPUTE_OF = {"none": "none", "full": "full", "selective": "selective_mm"}


def sections_from_text(text: str) -> dict[str, dict[str, Any]]:
    """A TOML config, or a launch line's ``--section.key[=value]`` words (``--section.no_key``: False; a
    ``activation_checkpoint:MODE`` subcommand: its mode), as {section: {key: value}}."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        data = None
    if data and all(isinstance(v, dict) for v in data.values()):
        return data
    try:
        words = shlex.split(text.replace("\\\n", " "), comments=True)
    except ValueError as err:
        raise EmitError(f"torchtitan config: neither TOML nor shell words ({err})") from None
    out: dict[str, dict[str, Any]] = {}
    for word in words:
        if word.startswith("activation_checkpoint:"):
            out.setdefault("activation_checkpoint", {})["mode"] = word.split(":", 1)[1]
            continue
        if not word.startswith("--") or "." not in word.split("=", 1)[0]:
            continue
        key, _, value = word[2:].partition("=")
        section, _, name = key.partition(".")
        if not value and "=" not in word:
            flag = not name.startswith("no_")
            out.setdefault(section, {})[name if flag else name[3:]] = flag
        else:
            out.setdefault(section, {})[name] = _scalar(value)
    if not out:
        raise EmitError("torchtitan config: found no [section] tables nor --section.key flags")
    return out


def _scalar(text: str) -> Any:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


def _int(section: Mapping[str, Any], key: str, default: int, where: str) -> int:
    value = section.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool):
        raise EmitError(f"torchtitan config: {where}.{key} must be an integer, got {value!r}")
    return value


def read_config(sections: Mapping[str, Any], world_size: int, num_layers: int | None = None) -> ReadConfig:
    notes: list[str] = []
    par = sections.get("parallelism", {})
    training = sections.get("training", {})
    tp = _int(par, "tensor_parallel_degree", 1, "parallelism")
    pp = _int(par, "pipeline_parallel_degree", 1, "parallelism")
    cp = _int(par, "context_parallel_degree", 1, "parallelism")
    replicate = _int(par, "data_parallel_replicate_degree", 1, "parallelism")
    shard = _int(par, "data_parallel_shard_degree", -1, "parallelism")
    if shard == -1:
        if world_size % (replicate * tp * pp * cp):
            raise EmitError(f"torchtitan config: the world size {world_size} is not divisible by replicate·tp·pp·cp = "
                            f"{replicate}·{tp}·{pp}·{cp}")
        shard = world_size // (replicate * tp * pp * cp)
    if replicate * shard * tp * pp * cp != world_size:
        raise EmitError(f"torchtitan config: replicate·shard·tp·pp·cp = {replicate}·{shard}·{tp}·{pp}·{cp} ≠ the "
                        f"{world_size} GPUs (torchtitan's ParallelDims asserts it); size the cluster to match")
    dp = replicate * shard
    fields: dict[str, Any] = {"tp": tp, "pp": pp, "cp": cp, "dp": dp, "master_weights": True,
                              "ep": _int(par, "expert_parallel_degree", 1, "parallelism"),
                              "sequence_parallel": tp > 1 and bool(par.get("enable_sequence_parallel", True))}
    # experts follow TP without EP; with EP, torchtitan's expert TP (default 1)
    fields["etp"] = _int(par, "expert_tensor_parallel_degree", 1, "parallelism") if fields["ep"] > 1 else tp
    if shard == 1:
        fields["sharding"] = "none"
    elif replicate > 1:
        fields |= {"sharding": "hsdp", "hsdp_shard_size": shard * cp}
    else:
        fields["sharding"] = "zero2" if par.get("fsdp_reshard_after_forward", "default") == "never" else "fsdp"
    if pp > 1:
        schedule = par.get("pipeline_parallel_schedule", "1F1B")
        if schedule not in SCHEDULE_OF:
            raise EmitError(f"torchtitan config: pipeline_parallel_schedule {schedule!r} is not modelled; use one of "
                            f"{', '.join(SCHEDULE_OF)}")
        fields["schedule"] = SCHEDULE_OF[schedule]
        fields["micro_batch_size"] = _int(par, "pipeline_parallel_microbatch_size", 1, "parallelism")
        fields |= _stages(par, pp, fields["schedule"], num_layers)
    elif "local_batch_size" in training:
        fields["micro_batch_size"] = _int(training, "local_batch_size", 8, "training")
    if training.get("enable_cpu_offload"):
        fields["offload"] = "params"
    else:
        fields["offload"] = "none"
    checkpoint = sections.get("activation_checkpoint", {})
    mode = checkpoint.get("mode", "selective")
    if mode not in RECOMPUTE_OF:
        raise EmitError(f"torchtitan config: activation_checkpoint.mode {mode!r} is not one of {', '.join(RECOMPUTE_OF)}")
    if mode == "selective" and checkpoint.get("selective_ac_option", "op") != "op":
        notes.append(f"activation_checkpoint.selective_ac_option {checkpoint['selective_ac_option']!r} (every k-th layer) "
                     "is priced as full recompute")
        mode = "full"
    fields["recompute"] = RECOMPUTE_OF[mode]
    converters = sections.get("model", {}).get("converters", [])
    precision = training.get("mixed_precision_param")
    if "float8" in converters or "quantize.linear.float8" in converters:
        fields["precision"] = "fp8"
    elif "mx" in converters or "quantize.linear.mx" in converters:
        fields["precision"], fields["fp8_recipe"] = "fp8", "mxfp8"
    elif precision is not None:
        fields["precision"] = {"bfloat16": "bf16", "float32": "fp32"}.get(precision, "bf16")
    else:
        notes.append("precision not set here (a float8 converter may sit in the Python config module): left to the caller")
    optimizer = sections.get("optimizer", {}).get("name", "AdamW")
    if optimizer not in ("AdamW", "Adam"):
        raise EmitError(f"torchtitan config: optimizer.name {optimizer!r} is not modelled; AdamW is")
    fields["optimizer"] = "adamw"
    global_batch = training.get("global_batch_size")
    if global_batch in (None, -1):
        global_batch = fields.get("micro_batch_size", 8) * dp if pp == 1 else None
    return ReadConfig(plan_fields=fields, global_batch_size=global_batch, findings=(), notes=tuple(notes),
                      seq_len=training.get("seq_len"))


def _stages(par: Mapping[str, Any], pp: int, schedule: str, num_layers: int | None) -> dict:
    per = par.get("pipeline_parallel_layers_per_stage")
    if schedule in V_SCHEDULES:  # two chunks per rank, in a V, whatever the layers per stage
        return {"vpp": 2}
    if per is None:
        return {}
    first = per - _int(par, "pipeline_parallel_first_stage_less_layers", 1, "parallelism")
    last = per - _int(par, "pipeline_parallel_last_stage_less_layers", 1, "parallelism")
    if schedule == "interleaved":
        if num_layers is None:
            raise EmitError("torchtitan config: an interleaved schedule needs the model's layer count")
        return {"vpp": num_layers // (pp * per)}
    stages = (first, *([per] * (pp - 2)), last) if pp > 1 else (per,)
    return {} if len(set(stages)) == 1 else {"layers_per_stage": stages}
