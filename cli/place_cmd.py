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
@click.option("--colocate", "colocated", multiple=True, metavar="ROLE,ROLE[,...]",
              help="Roles that share the same nodes and run one after the other each step (an RL step's phases); "
                   "repeat for each group.")
@click.option("--role-kind", "role_kinds", multiple=True, metavar="ROLE=KIND",
              help="One role's workload kind (pretrain, finetune, inference, score) instead of --kind; repeatable.")
@with_options(WORKLOAD_OPTIONS)
@with_options([GLOBAL_BATCH_OPTION])
@with_options(MODEL_OPTIONS)
@click.option("--json", "as_json", is_flag=True, help="Print solver.Placement as JSON.")
def place(model_refs: tuple[str, ...], names: tuple[str, ...], cluster_ref: str | None, nodes: int | None,
          colocated: tuple[str, ...], role_kinds: tuple[str, ...], kind: str,
          seq_len: int, dropout: float, train_mtp: bool, stack: str | None, moe_dispatcher: str, moe_imbalance: float,
          global_batch: int | None, efficiency_file: Path | None, calibration_file: Path | None,
          allow_cross_domain: bool, memory_margin: float, as_json: bool) -> None:
    """Share a cluster between models that run at once (e.g. an RL actor and its reward model), or take
    turns on the same nodes (--colocate): the nodes each gets and its plan, so that the slowest step is as
    short as it can be.

    \b
    Examples:
      plan place -m llama-3.1-70b -m llama-3.1-8b --name actor --name reward -c dgx-h100 --nodes 8
      plan place -m qwen3-30b-a3b -m llama-3.1-8b -c dgx-h100 --nodes 4 --json
      plan place -m llama-3.1-8b -m llama-3.1-8b -m llama-3.1-8b --name actor --name reference --name reward \\
        --colocate actor,reference --role-kind reference=score --role-kind reward=score --kind finetune
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
    role_names = list(names or [m.name for m in models])
    groups = role_groups(colocated, role_names)
    kinds = role_kind_map(role_kinds, role_names)
    roles = [Role(name=name, model=model, group=groups.get(name),
                  workload=workload if name not in kinds else build_workload(
                      kind=kinds[name], seq_len=seq_len, dropout=dropout, train_mtp=train_mtp, stack=stack,
                      moe_dispatcher=moe_dispatcher, moe_imbalance=moe_imbalance,
                      global_batch_size=global_batch or default_global_batch(kinds[name], seq_len),
                      algorithm=None, **({} if kinds[name] == "finetune" else {"peft": None})))  # --peft: fine-tuned roles
             for name, model in zip(role_names, models, strict=True)]
    try:
        placed = place_roles(roles, cluster, **cost_model(efficiency_file, calibration_file, memory_margin))
    except Infeasible as err:
        click.echo(f"infeasible: {err}", err=as_json)
        if not quiet():
            for suggestion in err.suggestions:
                click.echo(f"  try: {suggestion}", err=as_json)
        raise SystemExit(1) from None
    click.echo(placed.model_dump_json(indent=2) if as_json else render(placed, workload.seq_len, workload.global_batch_size))


def role_groups(colocated: tuple[str, ...], names: list[str]) -> dict[str, str]:
    """Each colocated role's group (named by its roles joined with '+'); `SolverInputError` naming the
    --colocate value for an unknown role, a role in two groups or a group of one."""
    from parallelplan.solver import SolverInputError

    groups: dict[str, str] = {}
    for value in colocated:
        members = [m.strip() for m in value.split(",") if m.strip()]
        unknown = [m for m in members if m not in names]
        if unknown:
            raise SolverInputError(f"--colocate {value}: no role named {unknown[0]!r}; the roles are {', '.join(names)}")
        if len(set(members)) < 2:
            raise SolverInputError(f"--colocate {value}: name two or more roles, comma-separated")
        again = [m for m in members if m in groups]
        if again:
            raise SolverInputError(f"--colocate {value}: role {again[0]!r} is already in group {groups[again[0]]}")
        groups |= dict.fromkeys(members, "+".join(members))
    return groups


def role_kind_map(role_kinds: tuple[str, ...], names: list[str]) -> dict[str, str]:
    """--role-kind ROLE=KIND values as a map; `SolverInputError` naming the value when malformed."""
    from parallelplan.solver import SolverInputError

    kinds: dict[str, str] = {}
    for value in role_kinds:
        name, _, kind = value.partition("=")
        if name not in names:
            raise SolverInputError(f"--role-kind {value}: no role named {name!r}; the roles are {', '.join(names)}")
        if kind not in ("pretrain", "finetune", "inference", "score"):
            raise SolverInputError(f"--role-kind {value}: the kind must be pretrain, finetune, inference or score")
        kinds[name] = kind
    return kinds


def render(placed: Placement, seq_len: int, batch: int) -> str:
    from parallelplan.solver.explain import describe

    rows = [(r.role, r.group or "-", r.solution.model.name, r.solution.workload.kind, r.nodes, r.gpus, describe(r.solution.plan),
             f"{r.solution.estimate.memory.total / 2**30:.1f}", f"{r.solution.estimate.step_time_s:.3f}",
             step_range(r.solution.estimate.step_time_interval_s)) for r in placed.roles]
    lines = [heading(f"{len(placed.roles)} roles on {placed.nodes_used} of {plural(placed.nodes, 'node')}, "
                     f"{seq_len} tokens x {plural(batch, 'sequence')} per step each"),
             table(["role", "group", "model", "kind", "nodes", "GPUs", "plan", "memory GiB", "step s",
                    "80% interval"], rows, right=(4, 5, 7, 8, 9)),
             f"slowest step: {placed.step_time_s:.3f} s, a role's or a colocated group's phases together "
             f"({'proved optimal' if placed.optimal else 'not proved'})"]
    if not quiet():
        lines += ["", "why:"] + [f"  - {line}" for line in placed.explanation]
    return "\n".join(lines)
