"""`place(roles, cluster)`: several models (roles) sharing one cluster, each on its own whole nodes at once —
how many nodes each gets, and its best plan there.

A composed problem cannot be enumerated as one space (the product of the roles' spaces), but it factors:
1. per role, a priced table of its best feasible step time on every node count from 1 up to what the
   other roles' fewest fitting node counts leave (each entry the throughput optimum of `solve` on that
   many nodes, found by the same branch and bound over structures, `solver.candidates`, without the
   explanation);
2. CP-SAT chooses one node count per role (a Boolean per table entry, exactly one per role) with the
   nodes they take together at most the cluster's, and minimises, lexicographically: the slowest role's
   step time (the roles advance in lockstep, as an RL step's concurrent actor, critic and reward models
   do), then the sum of the roles' step times (the others as fast as the nodes left allow), then the
   nodes used, then the node counts in role order (smaller first: one answer per request).
Every criterion is an integer (steps in nanoseconds, `solver.objectives`), so CP-SAT and `brute_force`
(every combination of the tables, for tests) decide on the same numbers. Each chosen role is then solved
on its node count for its full `Solution` (plan, estimate, explanation).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from ortools.sat.python import cp_model
from pydantic import BaseModel, ConfigDict, Field

from parallelplan.constraints import Efficiency, RuntimeAllowance, Workload
from parallelplan.hardware import ClusterSpec, load_cluster
from parallelplan.models import ModelSpec
from parallelplan.solver.candidates import best_feasible_step
from parallelplan.solver.errors import Infeasible, SolverInputError
from parallelplan.solver.model import best_combination, minimize_in_turn, one_per_table
from parallelplan.solver.objectives import nanoseconds
from parallelplan.solver.search import solve
from parallelplan.solver.solution import Solution
from parallelplan.solver.space import SearchSpace

MAX_NODES = 64
"""The largest cluster `place` takes: its tables price every role on every node count."""


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)


class Role(_Frozen):
    """One model of a composed request: its ``name`` (unique), model, workload, and the pins and ranges of
    its own search (as `solve` takes them)."""

    name: str = Field(min_length=1)
    model: ModelSpec
    workload: Workload
    fixed: dict[str, Any] = Field(default_factory=dict)
    ranges: dict[str, Any] = Field(default_factory=dict)


class RolePlacement(_Frozen):
    """A role's share: its node count, GPUs, best plan there, and its table (best step time in seconds per
    node count; None where no plan fits)."""

    role: str
    nodes: int
    gpus: int
    solution: Solution
    table: dict[int, float | None]


class Placement(_Frozen):
    """The roles' shares of the cluster. ``step_time_s``: the slowest role's step (the objective);
    ``optimal``: CP-SAT proved every stage optimal over the tables."""

    roles: tuple[RolePlacement, ...]
    step_time_s: float
    nodes_used: int
    nodes: int
    optimal: bool
    solve_time_s: float
    explanation: tuple[str, ...]


def step_table(role: Role, cluster: ClusterSpec, node_counts: Sequence[int], *, efficiency: Efficiency | None = None,
               runtime: RuntimeAllowance | None = None) -> dict[int, int | None]:
    """The role's best feasible step time in nanoseconds on each node count (None where nothing fits)."""
    out: dict[int, int | None] = {}
    for n in node_counts:
        space = SearchSpace(role.model, load_cluster(cluster, nodes=n), role.workload, fixed=dict(role.fixed),
                            ranges=dict(role.ranges))
        best = best_feasible_step(space, efficiency=efficiency, runtime=runtime)
        out[n] = None if best is None else nanoseconds(best)
    return out


def _order_key(steps: Sequence[int], nodes: Sequence[int], total: int) -> tuple[int, int, int, int]:
    """The lexicographic criteria of a combination (module docstring); the last encodes the node counts
    in role order as one integer (base total + 1), smaller first."""
    code = 0
    for n in nodes:
        code = code * (total + 1) + n
    return max(steps), sum(steps), sum(nodes), code


def brute_force(tables: Sequence[Mapping[int, int | None]], total: int) -> tuple[int, ...] | None:
    """Every combination of the tables' node counts that fits in ``total`` nodes, the best by
    `_order_key` (the tests' reference for CP-SAT); None when none fits."""
    return best_combination(tables, lambda nodes: sum(nodes) <= total,
                            lambda nodes, steps: _order_key(steps, nodes, total))


def choose(tables: Sequence[Mapping[int, int | None]], total: int, *, time_limit_s: float = 30.0) -> tuple[tuple[int, ...], bool] | None:
    """CP-SAT's node count per role (module docstring) and whether every stage was proved; None when no
    combination fits in ``total`` nodes."""
    model = cp_model.CpModel()
    built = one_per_table(model, tables)
    if built is None:
        return None
    choices, slowest = built
    model.Add(sum(n * x for c in choices for n, _, x in c) <= total)
    weights = [(total + 1) ** (len(tables) - 1 - r) for r in range(len(tables))]
    stages = [slowest, sum(s * x for c in choices for _, s, x in c), sum(n * x for c in choices for n, _, x in c),
              sum(w * n * x for w, c in zip(weights, choices, strict=True) for n, _, x in c)]
    solved = minimize_in_turn(model, stages, time_limit_s)
    if solved is None:
        return None
    solver, proved = solved
    nodes = tuple(next(n for n, _, x in c if solver.Value(x)) for c in choices)
    return nodes, proved


def place(roles: Sequence[Role], cluster: ClusterSpec, *, efficiency: Efficiency | None = None,
          runtime: RuntimeAllowance | None = None, time_limit_s: float = 30.0) -> Placement:
    """The roles' node counts and plans on ``cluster`` (module docstring); `Infeasible` when a role fits on
    no node count or the roles cannot all fit at once."""
    started = time.perf_counter()
    if len(roles) < 2:
        raise SolverInputError("place needs two or more roles (for one model use solve)")
    names = [r.name for r in roles]
    if len(set(names)) != len(names):
        raise SolverInputError(f"role names must be unique, got {names}")
    total = cluster.num_nodes
    if total > MAX_NODES:
        raise SolverInputError(f"place prices every role on every node count: give a cluster of at most {MAX_NODES} "
                               f"nodes, got {total}")
    if total < len(roles):
        raise Infeasible(f"{len(roles)} roles need at least {len(roles)} whole nodes; the cluster has {total}",
                         [f"{len(roles)} roles on whole nodes", f"{total} nodes"], [f"use ≥ {len(roles)} nodes"])
    counts = range(1, total - len(roles) + 2)  # every role keeps at least one node for the others
    tables: list[dict[int, int | None]] = []
    for role in roles:  # each role's table up to the fewest nodes it fits on
        table: dict[int, int | None] = {}
        for n in counts:
            table |= step_table(role, cluster, [n], efficiency=efficiency, runtime=runtime)
            if table[n] is not None:
                break
        else:
            raise Infeasible(f"role {role.name!r}: {role.model.name} fits on no count of {cluster.node.name} nodes up to "
                             f"{counts[-1]} (the other roles keep a node each)", [f"role {role.name!r}: memory on ≤ {counts[-1]} nodes"],
                             ["solve it alone (`plan solve`) to see why, or give the cluster more nodes"])
        tables.append(table)
    least = [max(t) for t in tables]
    for r, (role, table) in enumerate(zip(roles, tables, strict=True)):  # the rest, as far as the others leave room
        room = total - sum(least) + least[r]
        table |= step_table(role, cluster, range(least[r] + 1, room + 1), efficiency=efficiency, runtime=runtime)
    picked = choose(tables, total, time_limit_s=time_limit_s)
    if picked is None:
        raise Infeasible(f"the roles need at least {sum(least)} nodes together ({', '.join(f'{r.name} {n}' for r, n in zip(roles, least, strict=True))}); "
                         f"the cluster has {total}", [f"{r.name} ≥ {n} nodes" for r, n in zip(roles, least, strict=True)],
                         [f"use ≥ {sum(least)} nodes"])
    nodes, proved = picked
    shares = []
    for role, n, table in zip(roles, nodes, tables, strict=True):
        found = solve(role.model, load_cluster(cluster, nodes=n), role.workload, fixed=role.fixed, ranges=role.ranges,
                      efficiency=efficiency, runtime=runtime, time_limit_s=time_limit_s)
        shares.append(RolePlacement(role=role.name, nodes=n, gpus=n * cluster.node.gpus_per_node, solution=found,
                                    table={k: None if v is None else v / 1e9 for k, v in table.items()}))
    slowest = max(shares, key=lambda s: s.solution.estimate.step_time_s)
    lines = [f"{'Proved optimal' if proved else 'Best found within the time limit'} by CP-SAT over each role's best step "
             f"time on every node count the other roles leave room for: the slowest role, {slowest.role}, takes "
             f"{slowest.solution.estimate.step_time_s:.3f} s per step on {slowest.nodes} of {total} nodes."]
    for share in shares:
        faster = {k: v for k, v in share.table.items() if v is not None and k > share.nodes}
        more = f"; with {min(faster)} nodes it would take {faster[min(faster)]:.3f} s" if faster else ""
        lines.append(f"{share.role}: {share.nodes} node{'' if share.nodes == 1 else 's'}, {share.solution.estimate.step_time_s:.3f} s per step{more}.")
    return Placement(roles=tuple(shares), step_time_s=slowest.solution.estimate.step_time_s, nodes_used=sum(nodes),
                     nodes=total, optimal=proved, solve_time_s=time.perf_counter() - started, explanation=tuple(lines))
