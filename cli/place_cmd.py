"""`plan place`: several models sharing one cluster, each on its own whole nodes at once — how many nodes
each gets and its best plan there, the split proved optimal by CP-SAT over every role's step-time table
(`solver.place`). Exit 0 with a placement, 1 when the roles cannot share the cluster, 2 on bad input.
``--json`` prints `solver.Placement`."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from parallelplan.cli.format import heading, plural, quiet, step_range, table
from parallelplan.cli.options import (
    GLOBAL_BATCH_OPTION,
    MODEL_OPTIONS,
    WORKLOAD_OPTIONS,
    build_workload,
    cost_model,
    default_global_batch,
    load_target_cluster,
    with_options,
)

if TYPE_CHECKING:
    from pathlib import Path

    from parallelplan.solver import Placement


@click.command()
@click.option("--model", "-m", "model_refs", multiple=True, required=True,
              help="A model (preset, config.json, HF repo id); repeat for each role.")
@click.option("--name", "names", multiple=True,
              help="The roles' names, in --model order [default: the model names].")
@click.option("--cluster", "-c", "cluster_ref",
              help="Cluster preset or file [default: the detected node, else dgx-h100; said on stderr].")
@click.option("--nodes", type=click.IntRange(min=1), help="Nodes to share [default: the cluster's].")
@with_options(WORKLOAD_OPTIONS)
@with_options([GLOBAL_BATCH_OPTION])
@with_options(MODEL_OPTIONS)
@click.option("--json", "as_json", is_flag=True, help="Print solver.Placement as JSON.")
def place(model_refs: tuple[str, ...], names: tuple[str, ...], cluster_ref: str | None, nodes: int | None, kind: str,
          seq_len: int, dropout: float, train_mtp: bool, stack: str | None, moe_dispatcher: str, moe_imbalance: float,
          global_batch: int | None, efficiency_file: Path | None, calibration_file: Path | None,
          allow_cross_domain: bool, memory_margin: float, as_json: bool) -> None:
    """Share a cluster between models that run at once (e.g. an RL actor and its reward model): the nodes
    each gets and its best plan, so that the slowest step is as short as it can be.

    \b
    Examples:
      plan place -m llama-3.1-70b -m llama-3.1-8b --name actor --name reward -c dgx-h100 --nodes 8
      plan place -m qwen3-30b-a3b -m llama-3.1-8b -c dgx-h100 --nodes 4 --json
    """
    from parallelplan.models import load_model
    from parallelplan.solver import Infeasible, Role, SolverInputError
    from parallelplan.solver import place as place_roles

    if allow_cross_domain:
        raise SolverInputError("--allow-cross-domain is not taken by plan place: each role is searched with the defaults")
    if names and len(names) != len(model_refs):
        raise SolverInputError(f"--name given {len(names)} times for {len(model_refs)} --model: name every role or none")
    models = [load_model(ref) for ref in model_refs]
    cluster = load_target_cluster(cluster_ref, nodes, None)
    workload = build_workload(kind=kind, seq_len=seq_len, dropout=dropout, train_mtp=train_mtp, stack=stack,
                              moe_dispatcher=moe_dispatcher, moe_imbalance=moe_imbalance,
                              global_batch_size=global_batch or default_global_batch(kind, seq_len))
    roles = [Role(name=name, model=model, workload=workload)
             for name, model in zip(names or [m.name for m in models], models, strict=True)]
    try:
        placed = place_roles(roles, cluster, **cost_model(efficiency_file, calibration_file, memory_margin))
    except Infeasible as err:
        click.echo(f"infeasible: {err}", err=as_json)
        if not quiet():
            for suggestion in err.suggestions:
                click.echo(f"  try: {suggestion}", err=as_json)
        raise SystemExit(1) from None
    click.echo(placed.model_dump_json(indent=2) if as_json else render(placed, workload.seq_len, workload.global_batch_size))


def render(placed: Placement, seq_len: int, batch: int) -> str:
    from parallelplan.solver.explain import describe

    rows = [(r.role, r.solution.model.name, r.nodes, r.gpus, describe(r.solution.plan),
             f"{r.solution.estimate.memory.total / 2**30:.1f}", f"{r.solution.estimate.step_time_s:.3f}",
             step_range(r.solution.estimate.step_time_interval_s)) for r in placed.roles]
    lines = [heading(f"{len(placed.roles)} roles on {placed.nodes_used} of {plural(placed.nodes, 'node')}, "
                     f"{seq_len} tokens x {plural(batch, 'sequence')} per step each"),
             table(["role", "model", "nodes", "GPUs", "plan", "memory GiB", "step s", "80% interval"], rows,
                   right=(2, 3, 5, 6, 7)),
             f"slowest step: {placed.step_time_s:.3f} s ({'proved optimal' if placed.optimal else 'not proved'})"]
    if not quiet():
        lines += ["", "why:"] + [f"  - {line}" for line in placed.explanation]
    return "\n".join(lines)
