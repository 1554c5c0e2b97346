"""`plan dry-run`: the plan's busiest rank built from `transformers` at full size and run for one training
step in PyTorch (fake tensors and a fake process group on the CPU: no GPU, nothing allocated), its peak
memory measured by MemTracker beside the estimate; verdict fits / at risk / OOM with the margin. Exit 0 when
it fits, 1 when it does not or the plan breaks a rule, 2 on bad input (also: torch missing, a model without a
`transformers` class, a dimension the dry-run does not build yet, the time limit passed)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from parallelplan.cli.estimate_cmd import PLAN_OPTIONS, build_plan, describe_plan, plan_fields_from
from parallelplan.cli.format import bad, gib, good, heading, quiet, workload_kind
from parallelplan.cli.options import (
    GLOBAL_BATCH_DEFAULT,
    TARGET_OPTIONS,
    WORKLOAD_OPTIONS,
    build_workload,
    default_global_batch,
    given_world_size,
    load_target_cluster,
    with_options,
)

if TYPE_CHECKING:
    from parallelplan.constraints import Plan
    from parallelplan.dryrun import DryRunReport, SmallRunReport
    from parallelplan.models import ModelSpec


@click.command("dry-run")
@with_options(TARGET_OPTIONS)
@click.option("--from", "plan_file", type=click.Path(dir_okay=False, path_type=Path),
              help="A strategy file: JSON/YAML of Plan fields, or a saved `plan solve --json`.")
@with_options(PLAN_OPTIONS)
@with_options(WORKLOAD_OPTIONS)
@click.option("--global-batch", type=click.IntRange(min=1), help=f"Sequences per optimizer step [default: {GLOBAL_BATCH_DEFAULT}].")
@click.option("--time-limit", type=click.FloatRange(min=1), default=600, show_default=True,
              help="Seconds before the run is stopped.")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True,
              help="cpu: fake tensors and MemTracker (no GPU needed); cuda: real tensors on this machine's GPU, "
                   "its allocator's peak and the step time.")
@click.option("--small-scale", is_flag=True,
              help="Instead: run the plan's process groups for real (one gloo process per rank) on a reduced copy of "
                   "the model, and check the loss and gradients against the unsharded model's.")
@click.option("--json", "as_json", is_flag=True, help="Print the DryRunReport (or SmallRunReport) as JSON.")
def dry_run(model_ref: str, cluster_ref: str | None, nodes: int | None, gpus: int | None, plan_file: Path | None,
            kind: str, seq_len: int, global_batch: int | None, dropout: float, train_mtp: bool, stack: str | None,
            moe_dispatcher: str, moe_imbalance: float, time_limit: float, device: str, small_scale: bool, as_json: bool,
            **plan_fields: Any) -> None:
    """Run the plan's busiest rank in PyTorch and measure its peak memory.

    \b
    Examples:
      plan dry-run --model llama-3.1-8b --dp 8 --sharding fsdp --seq-len 4096
      plan dry-run --model llama-3.1-70b --nodes 4 --tp 8 --pp 4 --dp 1 --global-batch 32
      plan dry-run --model ./config.json --from plan.json --json
      plan dry-run --model llama-3.1-8b --tp 2 --dp 2 --small-scale
    """
    from parallelplan.dryrun import dry_run as run
    from parallelplan.dryrun import dry_run_small
    from parallelplan.dryrun.run import PlanRejected

    fields = plan_fields_from(plan_file, plan_fields)
    cluster = load_target_cluster(cluster_ref, nodes, gpus, given_world_size(fields))
    plan = build_plan(fields, cluster.total_gpus)
    workload = build_workload(kind=kind, seq_len=seq_len, dropout=dropout, train_mtp=train_mtp, stack=stack,
                              moe_dispatcher=moe_dispatcher, moe_imbalance=moe_imbalance,
                              global_batch_size=global_batch or default_global_batch(kind, seq_len, plan))
    progress = (lambda _: None) if quiet() or as_json else (lambda line: click.echo(f"  {line}", err=True))
    try:
        if small_scale:
            small = dry_run_small(model_ref, cluster, plan, workload, time_limit_s=time_limit, progress=progress)
            click.echo(small.model_dump_json(indent=2) if as_json else render_small(small))
            if not small.passed:
                raise SystemExit(1)
            return
        report = run(model_ref, cluster, plan, workload, device=device, time_limit_s=time_limit, progress=progress)
    except PlanRejected as rejected:
        click.echo(bad(f"FAIL: the plan breaks {len(rejected.violations)} rule(s); not run"))
        for v in rejected.violations:
            click.echo(f"  x {v.rule}: {v.message}\n    fix: {v.fix}")
        raise SystemExit(1) from None
    from parallelplan.models import load_model

    click.echo(report.model_dump_json(indent=2) if as_json else render(report, load_model(model_ref)))
    if report.verdict == "OOM":
        raise SystemExit(1)


def render_small(report: SmallRunReport) -> str:
    from parallelplan.dryrun.small import TOLERANCE

    config = report.config
    state = good("PASS") if report.passed else bad("FAIL")
    return "\n".join([
        f"{report.world} processes over gloo, one per rank of {_degrees(report.plan)}; "
        f"reduced model: {config['num_hidden_layers']} layers, hidden {config['hidden_size']}, vocabulary {config['vocab_size']}, fp32",
        f"loss {report.loss:.6f} vs the unsharded model's {report.reference_loss:.6f} (relative difference {report.loss_error:.1e})",
        f"largest gradient difference {report.gradient_error:.1e} of the gradient's largest element"
        + (f" ({report.worst_parameter})" if report.worst_parameter else ""),
        f"{state}: tolerance {TOLERANCE:.0e} (fp32 sums in another order); ran in {report.seconds:.1f} s"])


def _degrees(plan: Plan) -> str:
    return f"tp {plan.tp} · pp {plan.pp} · dp {plan.dp}" + (f" · ep {plan.ep}" if plan.ep > 1 else "") + (
        f", {plan.sharding}" if plan.sharding != "none" else "")


def render(report: DryRunReport, model: ModelSpec) -> str:
    state = {"fits": good, "at risk": lambda text: click.style(text, fg="yellow"), "OOM": bad}[report.verdict]
    lines = [f"{report.model}: {workload_kind(report.workload)}, {report.workload.seq_len} tokens, micro-batch "
             f"{report.plan.micro_batch_size}", heading(f"plan: {describe_plan(report.plan, model)}"),
             f"ran: {report.mechanism}", "", f"{'component':<13}{'measured':>12}{'estimated':>12}"]
    for c in report.components:
        if c.measured or c.estimated:
            lines.append(f"{c.name:<13}{gib(c.measured):>12}{gib(c.estimated):>12}")
    lines += [f"{'peak tensors':<13}{gib(report.measured_peak):>12}{gib(report.estimated_peak):>12}"
              f"   estimate {100 * report.deviation:+.1f}%",
              "(MemTracker files tensors by how they were made: master copies and gradient buffers made at "
              "start-up count as weights; compare the totals)",
              f"+ runtime allowance {gib(report.runtime_allowance)} (CUDA context, NCCL, allocator; not measured)",
              ""]
    if report.kernel_saving:
        lines.append(f"- the plan's fused kernels save {gib(report.kernel_saving)} over the transformers modules that ran "
                     "(by the estimate)")
    lines.append(state(f"{report.verdict.upper()}: {gib(report.measured_peak - report.kernel_saving + report.runtime_allowance)}"
                       f" of {gib(report.usable)} usable, margin {gib(report.margin)}"))
    if report.out_of_memory:
        lines.append(f"the GPU ran out of memory: {report.out_of_memory}")
    if report.reserved is not None:
        lines.append(f"allocator reserved {gib(report.reserved)} at most")
    if report.step_seconds is not None:
        lines.append(f"step {report.step_seconds:.3f} s measured vs {report.estimated_step_seconds:.3f} s estimated "
                     "(this rank's compute and optimizer update: the fake process group moves no data)")
    lines += [f"note: {note}" for note in report.notes if not quiet()]
    lines.append(f"(measured in {report.seconds:.1f} s on {report.device})")
    return "\n".join(lines)
