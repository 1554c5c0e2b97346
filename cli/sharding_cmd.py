"""`plan sharding`: DDP, ZeRO-1/2/3, FSDP and HSDP compared on one plan — memory per GPU, bytes each GPU
sends per step, step time — and the recommendation with its reason (`constraints.compare_sharding`).
Exit 0 with a recommendation, 1 when no sharding runs, 2 on bad input. ``--json`` prints the
`constraints.ShardingComparison`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from parallelplan.cli.estimate_cmd import build_plan
from parallelplan.cli.format import bad, gib, good, heading, plural, quiet, risk_mark, step_range, table
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
    from parallelplan.constraints import Plan, ShardingComparison, Workload
    from parallelplan.hardware import ClusterSpec
    from parallelplan.models import ModelSpec


@click.command()
@with_options(TARGET_OPTIONS)
@click.option("--dp", type=click.IntRange(min=1), help="Data-parallel degree [default: GPUs / (tp·pp·cp)].")
@click.option("--tp", type=click.IntRange(min=1), default=1, show_default=True, help="Tensor-parallel degree.")
@click.option("--pp", type=click.IntRange(min=1), default=1, show_default=True, help="Pipeline-parallel degree.")
@click.option("--cp", type=click.IntRange(min=1), default=1, show_default=True, help="Context-parallel degree.")
@click.option("--micro-batch", "micro_batch_size", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--recompute", type=click.Choice(["none", "selective", "selective_mm", "full"]), default="none",
              show_default=True)
@click.option("--precision", type=click.Choice(["bf16", "fp16", "fp8", "fp32", "tf32"]), default="bf16", show_default=True)
@click.option("--optimizer", type=click.Choice(["adamw", "adamw8bit", "adafactor", "lion", "sgd", "came"]), default="adamw",
              show_default=True)
@click.option("--hsdp-shard-size", type=click.IntRange(min=2), help="HSDP shard group [default: a node's GPUs / (tp·cp)].")
@with_options(WORKLOAD_OPTIONS)
@GLOBAL_BATCH_OPTION
@with_options(MODEL_OPTIONS)
@click.option("--json", "as_json", is_flag=True, help="Print the constraints.ShardingComparison as JSON.")
def sharding(model_ref: str, cluster_ref: str | None, nodes: int | None, gpus: int | None, hsdp_shard_size: int | None,
             kind: str, seq_len: int, dropout: float, train_mtp: bool, stack: str | None, moe_dispatcher: str, moe_imbalance: float, global_batch: int | None,
             efficiency_file: Path | None, calibration_file: Path | None,
             memory_margin: float, allow_cross_domain: bool, as_json: bool,
             **plan_fields: Any) -> None:
    """Compare DDP, ZeRO-1/2/3, FSDP and HSDP for a model, DP size and GPU.

    \b
    Examples:
      plan sharding --model llama-3.1-70b --dp 8
      plan sharding --model llama-3.1-8b --cluster dgx-a100 --dp 16 --global-batch 256
      plan sharding -m llama-3.1-70b -c dgx-h100 --nodes 4 --tp 8 --recompute full --json
    """
    from parallelplan.constraints import compare_sharding
    from parallelplan.models import load_model

    model = load_model(model_ref)
    fields = {name: value for name, value in plan_fields.items() if value is not None}
    cluster = load_target_cluster(cluster_ref, nodes, gpus, given_world_size(fields))
    plan = build_plan(fields, cluster.total_gpus)
    workload = build_workload(kind=kind, seq_len=seq_len, dropout=dropout, train_mtp=train_mtp, stack=stack, moe_dispatcher=moe_dispatcher, moe_imbalance=moe_imbalance,
                              global_batch_size=global_batch or default_global_batch(kind, seq_len, plan))
    result = compare_sharding(model, cluster, plan, workload, hsdp_shard_size=hsdp_shard_size,
                              allow_cross_domain=allow_cross_domain, **cost_model(efficiency_file, calibration_file, memory_margin))
    if as_json:
        click.echo(result.model_dump_json(indent=2))
    else:
        click.echo(render(model, cluster, plan, workload, result))
    if result.recommended is None:
        raise SystemExit(1)


def render(model: ModelSpec, cluster: ClusterSpec, plan: Plan, workload: Workload, result: ShardingComparison) -> str:
    from parallelplan.constraints.uncertainty import step_interval

    micro = max(workload.global_batch_size // (plan.dp * plan.micro_batch_size), 1)
    lines = [f"{model.display_name or model.name} on {cluster.total_gpus} x {cluster.gpu.name}: tp {plan.tp} · pp {plan.pp} "
             f"· dp {plan.dp} · cp {plan.cp}, micro-batch {plan.micro_batch_size}, recompute {plan.recompute}, "
             f"{plan.precision} {plan.optimizer}; {workload.seq_len} tokens x {plural(workload.global_batch_size, 'sequence')} "
             f"({plural(micro, 'micro-batch', 'micro-batches')} per replica per step)", ""]
    rows = []
    for o in result.options:
        mem = o.memory
        # the recommendation is marked in its "runs" cell (it always runs), not in a column of its own:
        # a column empty on every other row has no header to stand under
        runs = good("yes, recommended") if o.sharding == result.recommended else \
            "yes" if not o.violations else bad(", ".join(v.rule for v in o.violations))
        total = gib(mem.total) if o.fits else bad(gib(mem.total))
        rows.append((o.name, f"{o.state_bytes_per_param:g}", gib(mem.weights), gib(mem.gradients), gib(mem.optimizer), gib(mem.activations),
                     total + risk_mark(mem), f"{o.dp_comm_bytes / 1e9:.1f}",
                     f"{o.dp_comm_s:.3f}", f"{o.step_time_s:.3f}", step_range(step_interval(o.step_time_s, model.is_moe)), runs))
    usable = result.options[0].memory.usable if result.options else 0
    lines.append(table(["sharding", "states B/param", "weights", "gradients", "optimizer", "activations",
                        f"total (of {gib(usable)})", "sent GB/GPU/step", "exposed comm s", "step s", "80% interval s", "runs"],
                       rows, right=(1, 2, 3, 4, 5, 6, 7, 8, 9, 10)))
    lines += ["", heading("recommendation: " + (next(o.name for o in result.options if o.sharding == result.recommended)
                                                if result.recommended else "none runs"))]
    lines.append(result.reason)
    recipes: dict[str, list[str]] = {}
    for o in result.options:
        recipes.setdefault(o.state_recipe, []).append(o.name)
    lines += ["", "model states before sharding ('states B/param'):"]
    lines += [f"  - {', '.join(names)}: {recipe}" for recipe, names in recipes.items()]
    if not quiet():
        lines += ["", "Memory is per GPU on the most loaded pipeline stage; 'sent' counts the ring volume of the "
                      "data-parallel collectives (gradient reduction, parameter gathers) one GPU sends per step; "
                      "'exposed comm' is the part of it the step waits for; 'at risk': the memory range reaches past the GPU."]
    return "\n".join(lines)
