"""`plan optimize`: the ladder from the plan you run today to a better one — one change at a time, each
priced by the cost model, the compound plan beside the solver's proved optimum (`solver.ladder`).

The plan comes from flags, or ``--from`` a file: a plan file (JSON/YAML of `Plan` fields, or a saved
`plan solve --json`), a DeepSpeed ``ds_config.json``, an Accelerate YAML, a torchtitan TOML or a
Megatron-LM argument file (told apart by their content; flags override what the file says). Exit 0 with a
ladder, 1 when no plan of the techniques allowed fits (the ladder so far and why), 2 on bad input.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from parallelplan.cli.estimate_cmd import PLAN_OPTIONS, build_plan, describe_plan, plan_fields_from
from parallelplan.cli.format import bad, gib, good, heading, plural, quiet, table, workload_kind
from parallelplan.cli.options import (
    GLOBAL_BATCH_OPTION,
    MODEL_OPTIONS,
    TARGET_OPTIONS,
    WORKLOAD_OPTIONS,
    build_workload,
    cost_model,
    default_global_batch,
    given_world_size,
    load_target_cluster,
    with_options,
)

if TYPE_CHECKING:
    from parallelplan.hardware import ClusterSpec
    from parallelplan.models import ModelSpec
    from parallelplan.solver.ladder import Ladder, Point


def _names(text: str | None) -> list[str] | None:
    return None if text is None else [n.strip() for n in text.split(",") if n.strip()]


@click.command()
@with_options(TARGET_OPTIONS)
@click.option("--from", "from_file", type=click.Path(dir_okay=False, path_type=Path),
              help="The plan you run: a plan file (JSON/YAML of Plan fields, or a saved `plan solve --json`), a DeepSpeed "
                   "ds_config.json, an Accelerate YAML, a torchtitan TOML or a Megatron-LM argument file; flags override it.")
@with_options(PLAN_OPTIONS)
@click.option("--goal", type=click.Choice(["throughput", "memory", "cost"]), default="throughput", show_default=True,
              help="What each change must improve: step time, peak memory per GPU, or dollars per million tokens.")
@click.option("--max-effort", type=click.Choice(["low", "medium", "high"]), default="high", show_default=True,
              help="The most work a change may take: low = flags; medium = + library swaps, schedule and kernel "
                   "changes; high = + re-layouts (other tp/pp/cp/ep).")
@click.option("--techniques", "only", help="Only these techniques, comma-separated (see solver/data/techniques.json) "
                                           "[default: all but adafactor, lion, sgd, came, and offload unless --goal memory].")
@click.option("--skip", help="Techniques to leave out, comma-separated.")
@click.option("--price", "price_per_gpu_hour", type=click.FloatRange(min=0, min_open=True),
              help="USD per GPU-hour [default: the median on-demand offer in hardware/data/prices.json].")
@with_options(WORKLOAD_OPTIONS)
@GLOBAL_BATCH_OPTION
@with_options(MODEL_OPTIONS)
@click.option("--json", "as_json", is_flag=True, help="Print the solver.ladder.Ladder as JSON.")
def optimize(model_ref: str, cluster_ref: str | None, nodes: int | None, gpus: int | None, from_file: Path | None,
             goal: str, max_effort: str, only: str | None, skip: str | None, price_per_gpu_hour: float | None,
             kind: str, seq_len: int, global_batch: int | None, dropout: float, train_mtp: bool, stack: str | None,
             moe_dispatcher: str, moe_imbalance: float, efficiency_file: Path | None, calibration_file: Path | None,
             memory_margin: float, allow_cross_domain: bool, as_json: bool, **plan_fields: Any) -> None:
    """From the plan you run, the changes worth making, in order: each with what it buys on your model
    and cluster, and how far the result is from the best plan there is.

    \b
    Examples:
      plan optimize -m llama-3.1-70b --nodes 8 --tp 8 --recompute full
      plan optimize -m llama-3.1-70b --nodes 8 --from ds_config.json --goal cost
      plan optimize -m llama-3.1-8b --from plan.json --goal memory --max-effort low
      plan optimize -m llama-3.1-70b --nodes 8 --tp 8 --techniques recompute,sharding,fp8 --json
    """
    from parallelplan.models import load_model
    from parallelplan.solver.ladder import optimize as run_optimize

    model = load_model(model_ref)
    fields = plan_fields_from(None, plan_fields)
    if from_file is not None:
        cluster = load_target_cluster(cluster_ref, nodes, gpus)
        read, framework_stack, file_batch, file_seq = _read_plan_file(from_file, cluster, model.num_layers)
        fields = read | fields
        stack, global_batch = stack or framework_stack, global_batch or file_batch
        if file_seq and click.get_current_context().get_parameter_source("seq_len") == click.core.ParameterSource.DEFAULT:
            seq_len = file_seq
    else:
        cluster = load_target_cluster(cluster_ref, nodes, gpus, given_world_size(fields))
    plan = build_plan(fields, cluster.total_gpus)
    workload = build_workload(kind=kind, seq_len=seq_len, dropout=dropout, train_mtp=train_mtp, stack=stack,
                              moe_dispatcher=moe_dispatcher, moe_imbalance=moe_imbalance,
                              global_batch_size=global_batch or default_global_batch(kind, seq_len, plan))
    ladder = run_optimize(model, cluster, workload, plan, goal=goal, max_effort=max_effort, techniques=_names(only),
                          skip=_names(skip) or (), price_per_gpu_hour=price_per_gpu_hour,
                          allow_cross_domain=allow_cross_domain, **cost_model(efficiency_file, calibration_file, memory_margin))
    if as_json:
        click.echo(ladder.model_dump_json(indent=2))
    else:
        click.echo(render(model, cluster, workload, ladder))
    if ladder.final.violations:
        raise SystemExit(1)


def _read_plan_file(path: Path, cluster: ClusterSpec, num_layers: int) -> tuple[dict[str, Any], str | None, int | None, int | None]:
    """(Plan fields, the stack, the global batch, the sequence length) of ``--from``: a framework's own
    configuration (`cli.validate_cmd.read_framework`), else a plan file; which one, from its content."""
    from parallelplan.cli.validate_cmd import read_framework
    from parallelplan.constraints import PlanError
    from parallelplan.emitters.errors import EmitError

    text = path.read_text()
    source = _framework_of(path, text)
    if source is None:
        try:
            return plan_fields_from(path, {}), None, None, None
        except PlanError as err:
            raise PlanError(f"--from {path}: neither a plan file nor a DeepSpeed, Accelerate, torchtitan or "
                            f"Megatron-LM config ({err})") from None
    try:
        read, stack = read_framework(source, path, cluster, num_layers)
    except (EmitError, PlanError) as err:
        message = str(err)
        raise type(err)(message if str(path) in message else f"--from {path}: {message}") from None
    return read.plan_fields, stack, read.global_batch_size, read.seq_len


def _framework_of(path: Path, text: str) -> str | None:
    """Which framework's configuration ``text`` is (validate's option name), or None for a plan file: JSON
    with DeepSpeed's keys is a ds_config; a TOML or torchtitan's --section.key flags, torchtitan; Megatron's
    flags, Megatron-LM; ``distributed_type``, Accelerate; any other JSON or YAML, a plan file."""
    if path.suffix == ".json" or text.lstrip().startswith("{"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            return None
        deepspeed_keys = {"zero_optimization", "train_batch_size", "train_micro_batch_size_per_gpu", "bf16", "fp16",
                          "gradient_accumulation_steps"}
        if isinstance(data, dict) and deepspeed_keys & set(data) and not {"tp", "pp", "dp", "plan"} & set(data):
            return "--deepspeed"
        return None
    if path.suffix == ".toml" or text.lstrip().startswith("[") or "torchtitan" in text or "--parallelism." in text:
        return "--torchtitan"
    if text.lstrip().startswith("--") or any(word in text for word in ("pretrain_gpt", "--tensor-model-parallel-size",
                                                                         "--micro-batch-size")):
        return "--megatron"
    if "distributed_type:" in text:
        return "--accelerate"
    return None


def _values(point: Point) -> tuple[str, str, str]:
    usd = f"{point.usd_per_million_tokens:.3f}" if point.usd_per_million_tokens is not None else "-"
    step = f"{point.step_time_s:.3f}" if point.step_time_s is not None else "-"
    return step, gib(point.memory_bytes) if point.memory_bytes is not None else "-", usd


def _signed(value: float | None, digits: int = 3, scale: float = 1.0, unit: str = "") -> str:
    if value is None or not math.isfinite(value):
        return "-"
    return f"{value / scale:+.{digits}f}{unit}"


def render(model: ModelSpec, cluster: ClusterSpec, workload, ladder: Ladder) -> str:
    from parallelplan.solver.techniques import effort_label

    start, final = ladder.start, ladder.final
    lines = [f"{model.display_name or model.name} on {cluster.total_gpus} GPUs: {cluster.num_nodes} x {cluster.node.name}; "
             f"{workload_kind(workload)}, {workload.seq_len} tokens x {plural(workload.global_batch_size, 'sequence')}; "
             f"goal {ladder.goal}, effort up to {ladder.max_effort}",
             heading(f"your plan: {describe_plan(start.plan, model)}")]
    step, memory, usd = _values(start)
    lines.append(f"  step {step} s, {memory} per GPU, ${usd} per M tokens"
                 + (f"; breaks {', '.join(v.rule for v in start.violations)}" if start.violations else ""))
    rows = []
    for i, rung in enumerate(ladder.rungs, 1):
        step, memory, usd = _values(rung.reached)
        gain = "repair" if not _runs(ladder, i - 1) else f"{100 * rung.gain:.1f}%"
        rows.append([str(i), rung.change + (" *" if rung.changes_math else ""), effort_label(rung.effort), gain,
                     _signed(rung.delta_step_s), _signed(rung.delta_memory_bytes, 2, 2**30),
                     _signed(rung.delta_usd_per_million_tokens), step, memory, usd])
    if rows:
        lines += ["", heading("the ladder (each change on top of the ones above)"),
                  table(["#", "change", "effort", "gain", "Δstep s", "Δmem GiB", "Δ$/M tok", "step s", "memory", "$/M tok"],
                        rows, right=(0, 3, 4, 5, 6, 7, 8, 9))]
        if any(r.changes_math for r in ladder.rungs):
            lines.append("  * changes the training's numerics (see the risks)")
    else:
        lines += ["", "no single change within these techniques improves the plan by 1% or more"]
    lines += ["", heading(f"compound plan: {describe_plan(final.plan, model)}")]
    if final.violations:
        lines.append(bad(f"  still breaks {', '.join(v.rule for v in final.violations)}: {final.violations[0].message}"))
    else:
        step, memory, usd = _values(final)
        lines.append(f"  step {step} s, {memory} per GPU, ${usd} per M tokens, {final.tokens_per_s:,.0f} tokens/s, "
                     f"MFU {100 * final.mfu:.1f}%")
    if ladder.optimum is not None:
        opt = ladder.optimum
        step, memory, usd = _values(opt)
        proved = good("proved optimal") if ladder.optimum_proved else "best found"
        layouts = "any layout" if ladder.optimum_any_layout else "your layout"
        lines += [heading(f"solver's optimum ({proved}, same techniques, {layouts}): {describe_plan(opt.plan, model)}"),
                  f"  step {step} s, {memory} per GPU, ${usd} per M tokens on {opt.gpus} GPUs"]
        if ladder.gap is not None:
            lines.append(f"  the compound plan is {100 * ladder.gap:.1f}% above it in {_metric_name(ladder.goal)}"
                         + (": what a re-layout or the changes above --max-effort buy" if ladder.gap > 0.005 else ""))
    elif ladder.optimum_note:
        lines += ["", bad(ladder.optimum_note)]
    if ladder.blocked and not quiet():
        lines += ["", heading("would help further but break a rule")]
        lines += [f"  - {b.change} ({100 * b.gain:.1f}%): {b.rule}: {b.message}" for b in ladder.blocked]
    if ladder.risks and not quiet():
        lines += ["", heading("risks")] + [f"  - {r.technique}: {r.text} ({r.source})" for r in ladder.risks]
    if ladder.notes and not quiet():
        lines += [""] + [f"note: {n}" for n in ladder.notes]
    return "\n".join(lines)


def _runs(ladder: Ladder, index: int) -> bool:
    """Whether the plan ran (broke no rule) before rung ``index`` (0-based)."""
    before = ladder.start if index == 0 else ladder.rungs[index - 1].reached
    return not before.violations


def _metric_name(goal: str) -> str:
    return {"throughput": "step time", "memory": "peak memory", "cost": "dollars per token"}[goal]
