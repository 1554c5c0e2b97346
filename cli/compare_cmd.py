"""`plan compare`: several models and/or clusters side by side — each pair's best plan, memory, throughput
and cost, or why it has none (`solver.compare`). Exit 0 when at least one pair has a plan, 1 when none
does, 2 on bad input. ``--json`` prints the list of `solver.Comparison`."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import click

from parallelplan.cli.format import bad, heading, plural, progress, quiet, step_range, table
from parallelplan.cli.options import (
    MODEL_OPTIONS,
    WORKLOAD_OPTIONS,
    build_workload,
    default_global_batch,
    load_target_cluster,
    with_options,
)
from parallelplan.cli.solve_cmd import SEARCH_OPTIONS, parse_objective, search_arguments

if TYPE_CHECKING:
    from parallelplan.solver import Comparison


@click.command()
@click.option("--model", "-m", "model_refs", multiple=True, required=True,
              help="A model (preset, config.json, HF repo id); repeat for each model.")
@click.option("--cluster", "-c", "cluster_refs", multiple=True,
              help="A cluster preset or file; repeat for each [default: the detected node, else dgx-h100; said on stderr].")
@click.option("--nodes", type=click.IntRange(min=1), help="Nodes of every cluster [default: each cluster's].")
@click.option("--gpus", type=click.IntRange(min=1), help="Total GPUs of every cluster (instead of --nodes).")
@with_options(WORKLOAD_OPTIONS)
@click.option("--objective", "-o", default="throughput", show_default=True, help="As in `plan solve`.")
@click.option("--tokens", type=click.FloatRange(min=0, min_open=True),
              help="Training token budget (e.g. 1e12): adds each plan's time and cost to train on it.")
@with_options(SEARCH_OPTIONS)
@with_options(MODEL_OPTIONS)
@click.option("--json", "as_json", is_flag=True, help="Print the list of solver.Comparison as JSON.")
def compare(model_refs: tuple[str, ...], cluster_refs: tuple[str, ...], nodes: int | None, gpus: int | None, kind: str,
            seq_len: int, dropout: float, train_mtp: bool, stack: str | None, moe_dispatcher: str, moe_imbalance: float, objective: str, tokens: float | None, as_json: bool,
            **search: Any) -> None:
    """Best plans of several models and/or clusters, side by side.

    \b
    Examples:
      plan compare --model llama-3.1-8b --model llama-3.1-70b --nodes 8
      plan compare -m llama-3.1-70b -c dgx-h100 -c dgx-a100 -c hgx-h200 --nodes 16 --tokens 1e12
      plan compare -m mixtral-8x7b -m qwen3-30b-a3b -c dgx-h100 --nodes 4 -o cost --json
    """
    from parallelplan.models import load_model
    from parallelplan.solver import SolverInputError
    from parallelplan.solver import compare as compare_pairs

    if len(set(model_refs)) != len(model_refs) or len(set(cluster_refs)) != len(cluster_refs):
        raise SolverInputError("--model and --cluster each name a value once")
    models = [load_model(ref) for ref in model_refs]
    clusters = [load_target_cluster(ref, nodes, gpus) for ref in (cluster_refs or (None,))]
    workload = build_workload(kind=kind, seq_len=seq_len, dropout=dropout, train_mtp=train_mtp, stack=stack, moe_dispatcher=moe_dispatcher, moe_imbalance=moe_imbalance,
                              global_batch_size=search["global_batch"] or default_global_batch(kind, seq_len))
    with progress("compare") as report:
        rows = compare_pairs(models, clusters, workload, tokens=tokens, progress=report,
                             objective=parse_objective(objective), **search_arguments(search))
    if as_json:
        click.echo(json.dumps([row.model_dump(mode="json") for row in rows], indent=2))
    else:
        click.echo(render(rows, workload.seq_len, workload.global_batch_size, tokens is not None))
    if all(row.solution is None for row in rows):
        raise SystemExit(1)


def render(rows: list[Comparison], seq_len: int, batch: int, with_budget: bool) -> str:
    from parallelplan.solver.explain import describe

    table_rows = []
    for row in rows:
        s = row.solution
        if s is None:
            table_rows.append((row.model, row.cluster, row.gpus, bad("infeasible"), "-", "-", "-", "-", "-", "-")
                              + (("-", "-") if with_budget else ()))
            continue
        v = s.objective
        cost = f"{v['usd_per_million_tokens']:.3f}" if v["usd_per_hour"] else "-"
        cells = (row.model, row.cluster, s.gpus, describe(s.plan), f"{s.estimate.memory.total / 2**30:.1f}",
                 f"{v['tokens_per_s']:,.0f}", step_range(s.estimate.step_time_interval_s), f"{100 * s.estimate.mfu:.1f}",
                 f"{v['usd_per_hour']:,.0f}" if v["usd_per_hour"] else "-", cost)
        if with_budget:
            b = row.budget  # every solved pair has one when a budget is asked
            cells += (f"{b.time_s / 86400:,.1f}", f"{b.usd:,.0f}" if b.usd is not None else "-")
        table_rows.append(cells)
    headers = ["model", "cluster", "GPUs", "best plan", "memory GiB", "tokens/s", "step s, 80% interval", "MFU %", "$/h",
               "$/M tokens"]
    if with_budget:
        headers += ["days to budget", "$ to budget"]
    lines = [heading(f"best plans, {seq_len} tokens x {plural(batch, 'sequence')} per step"),
             table(headers, table_rows, right=(2, 4, 5, 6, 7, 8, 9, 10, 11))]
    failed = [row for row in rows if row.infeasible is not None]
    if failed and not quiet():
        lines += ["", "infeasible:"]
        for row in failed:
            lines.append(f"  - {row.model} on {row.cluster}: {row.infeasible.message}")
            lines += [f"      try: {s}" for s in row.infeasible.suggestions[:2]]
    return "\n".join(lines)
