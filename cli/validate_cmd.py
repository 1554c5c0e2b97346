"""`plan validate`: a configuration the user already has — plan flags, a strategy file (JSON/YAML of `Plan`
fields, or a saved `plan solve --json`), or a DeepSpeed ``ds_config.json`` — checked against every rule and
the memory model; each finding with its fix. Exit 0 when it passes, 1 when it fails, 2 on bad input.
``--json`` prints the `constraints.Assessment` (the DeepSpeed reader's findings come first in its
``violations``)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from parallelplan.cli.estimate_cmd import (
    PLAN_OPTIONS,
    assess_plan,
    build_plan,
    describe_plan,
    plan_fields_from,
)
from parallelplan.cli.format import bad, fit_text, gib, good, heading, plural, quiet, step_range, workload_kind
from parallelplan.cli.options import (
    GLOBAL_BATCH_DEFAULT,
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
    from parallelplan.constraints import Assessment
    from parallelplan.hardware import ClusterSpec
    from parallelplan.models import ModelSpec


@click.command()
@with_options(TARGET_OPTIONS)
@click.option("--plan", "plan_file", type=click.Path(dir_okay=False, path_type=Path),
              help="A strategy file: JSON/YAML of Plan fields, or a saved `plan solve --json`.")
@click.option("--deepspeed", "deepspeed_file", type=click.Path(dir_okay=False, path_type=Path),
              help="A DeepSpeed ds_config.json (batch, ZeRO stage, offload, precision, AutoTP); runs on the cluster's GPUs.")
@with_options(PLAN_OPTIONS)
@with_options(WORKLOAD_OPTIONS)
@click.option("--global-batch", type=click.IntRange(min=1),
              help=f"Sequences per optimizer step [default: the DeepSpeed config's; else {GLOBAL_BATCH_DEFAULT}].")
@with_options(MODEL_OPTIONS)
@click.option("--json", "as_json", is_flag=True, help="Print the constraints.Assessment as JSON.")
def validate(model_ref: str, cluster_ref: str | None, nodes: int | None, gpus: int | None, plan_file: Path | None,
             deepspeed_file: Path | None, kind: str, seq_len: int, global_batch: int | None, dropout: float,
             train_mtp: bool, stack: str | None, moe_dispatcher: str, moe_imbalance: float, efficiency_file: Path | None, calibration_file: Path | None,
             memory_margin: float, allow_cross_domain: bool,
             as_json: bool,
             **plan_fields: Any) -> None:
    """Check your own configuration against every rule and the memory model.

    \b
    Examples:
      plan validate --model llama-3.1-70b --tp 4 --dp 1
      plan validate --model llama-3.1-70b --nodes 8 --tp 8 --pp 2 --sharding zero1 --seq-len 8192
      plan validate --model llama-3.1-8b --nodes 2 --deepspeed ds_config.json
      plan validate --model llama-3.1-8b --plan strategy.yaml --json
    """
    from parallelplan.constraints import PlanError
    from parallelplan.models import load_model

    if plan_file and deepspeed_file:
        raise PlanError("give either --plan or --deepspeed, not both")
    model = load_model(model_ref)
    fields = plan_fields_from(plan_file, plan_fields)
    read = None
    if deepspeed_file is not None:
        cluster = load_target_cluster(cluster_ref, nodes, gpus)
        read = _read_deepspeed(deepspeed_file, cluster.total_gpus)
        fields = read.plan_fields | fields  # flags win
        global_batch = global_batch or read.global_batch_size
        stack = stack or "deepspeed"  # a DeepSpeed config runs on DeepSpeed
    else:
        cluster = load_target_cluster(cluster_ref, nodes, gpus, given_world_size(fields))
    plan = build_plan(fields, cluster.total_gpus)
    workload = build_workload(kind=kind, seq_len=seq_len, dropout=dropout, train_mtp=train_mtp, stack=stack, moe_dispatcher=moe_dispatcher, moe_imbalance=moe_imbalance,
                              global_batch_size=global_batch or default_global_batch(kind, seq_len, plan))
    report = assess_plan(model, cluster, plan, workload, tokens=None, price_per_gpu_hour=None,
                         costs=cost_model(efficiency_file, calibration_file, memory_margin), allow_cross_domain=allow_cross_domain)
    if read is not None and read.findings:
        report = report.model_copy(update={"violations": tuple(read.findings) + report.violations})
    if as_json:
        click.echo(report.model_dump_json(indent=2))
    else:
        click.echo(render(model, cluster, report, read.notes if read else ()))
    if report.violations:
        raise SystemExit(1)


def _read_deepspeed(path: Path, world_size: int):
    import json

    from parallelplan.emitters.deepspeed import read_config
    from parallelplan.emitters.errors import EmitError

    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise EmitError(f"{path}: not valid JSON ({err.msg} at line {err.lineno})") from None
    if not isinstance(data, dict):
        raise EmitError(f"{path}: a DeepSpeed config is a JSON object, got {type(data).__name__}")
    return read_config(data, world_size)


def render(model: ModelSpec, cluster: ClusterSpec, report: Assessment, notes: tuple[str, ...]) -> str:
    plan, est, findings = report.plan, report.estimate, report.violations
    verdict = good("PASS: the plan runs and fits") if not findings else bad(f"FAIL: {plural(len(findings), 'finding')}")
    lines = [f"{model.display_name or model.name} on {cluster.total_gpus} GPUs: {cluster.num_nodes} x {cluster.node.name}; "
             f"{workload_kind(report.workload)}, {report.workload.seq_len} tokens x {plural(report.workload.global_batch_size, 'sequence')}",
             heading(f"plan: {describe_plan(plan, model)}"), "", verdict]
    for v in findings:
        lines += [f"  x {v.rule}: {v.message}", f"    fix: {v.fix}"]
    if est is not None:
        lines += ["", f"memory per GPU {gib(est.memory.total)} of {gib(est.memory.usable)}, fits: {fit_text(est.memory)}",
                  f"step {est.step_time_s:.3f} s (80% interval {step_range(est.step_time_interval_s)} s), "
                  f"{est.tokens_per_s:,.0f} tokens/s, MFU {100 * est.mfu:.1f}% (`plan estimate` for the breakdown)"]
    if notes and not quiet():
        lines += ["", "read from the DeepSpeed config:"] + [f"  - {note}" for note in notes]
    return "\n".join(lines)
