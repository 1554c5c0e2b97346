"""`place(roles, cluster)`: several models (roles) sharing one cluster, each on whole nodes — how many nodes
each gets, and its plan there. Roles run at once on nodes of their own, or, when they name the same
``group``, one after the other on the same nodes (the phases of an RL step on colocated GPUs: generate,
score, train), sharing those GPUs' memory.

A composed problem cannot be enumerated as one space (the product of the roles' spaces), but it factors
into parts (a group, or a role on its own):
1. per part and node count from 1 up to what the other parts' fewest fitting node counts leave, each
   role's options: for a role on its own, its best feasible step (the throughput optimum of `solve` there,
   found by the same branch and bound over structures, `solver.candidates`, without the explanation); for
   a role of a group, the plans it may run with — its own throughput optimum when the group's optima fit
   the GPUs together, else every plan that fits alone and is not dominated in (step, resident memory,
   transient memory) — where resident is what stays on the GPUs between phases (weights, gradients,
   optimizer states at the plan's peak) and transient what a phase adds while it runs (activations, KV
   cache, the runtime's overhead), in MiB rounded up;
2. CP-SAT chooses one node count per part and one option per role there (Booleans, exactly one each),
   with the nodes the parts take together at most the cluster's and, in a group, the residents of all its
   roles plus the largest transient at most the usable memory of a GPU (the roles' most loaded ranks
   added up: an upper bound when they are different ranks), and minimises, lexicographically: the
   slowest part's step (parts advance in lockstep, as an RL step's concurrent actor, critic and reward
   models do; a group's step is the sum of its phases), then the sum of every role's step, then the nodes
   used, then the node counts in part order (smaller first: one answer per request).
Every criterion is an integer (steps in nanoseconds, `solver.objectives`), so CP-SAT and `brute_force`
(every combination, for tests) decide on the same numbers. Each chosen role is then solved on its node
count for its full `Solution` (plan, estimate, explanation) — pinned to the option chosen when it is a
group's.
"""

from __future__ import annotations

import bisect
import itertools
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from parallelplan.constraints import Efficiency, Plan, RuntimeAllowance, Workload
from parallelplan.hardware import ClusterSpec, load_cluster
from parallelplan.models import ModelSpec
from parallelplan.solver.candidates import Candidates, best_feasible, best_feasible_step, priced_candidates
from parallelplan.solver.cpsat import Model
from parallelplan.solver.errors import Infeasible, SolverInputError
from parallelplan.solver.model import minimize_in_turn
from parallelplan.solver.objectives import fixed_point, nanoseconds
from parallelplan.solver.search import solve
from parallelplan.solver.solution import Solution
from parallelplan.solver.space import SEARCHED, SETTINGS, SearchSpace

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
    group: str | None = Field(default=None, min_length=1)
    """Roles naming the same group share the same nodes and run one after the other each step (module
    docstring); None: the role has nodes of its own."""


class RolePlacement(_Frozen):
    """A role's share: its node count, GPUs, plan there, and its table (best step time in seconds per
    node count; None where no plan fits); ``group`` as the role gave it."""

    role: str
    group: str | None = None
    nodes: int
    gpus: int
    solution: Solution
    table: dict[int, float | None]
    options: dict[int, list[tuple[int, int, int]]]
    """What CP-SAT chose among, by node count: (step ns, resident MiB, transient MiB) of each option (module
    docstring); a role on its own has one, its best step."""


class Placement(_Frozen):
    """The roles' shares of the cluster. ``step_time_s``: the slowest part's step (the objective: a role's,
    or the sum of a group's); ``optimal``: CP-SAT proved every stage optimal over the tables."""

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


Option = tuple[int, int, int]
"""One plan of a role on a node count: (step ns, resident MiB, transient MiB)."""
PartTables = Sequence[Mapping[int, Sequence[Option]]]
"""A part's roles, each a table of its options by node count (an empty list: nothing fits there)."""
MIB = 2**20


def _counts(part: PartTables) -> list[int]:
    """The node counts on which every role of the part has an option."""
    return [n for n in part[0] if all(table.get(n) for table in part)]


def _code(nodes: Sequence[int], total: int) -> int:
    """The node counts in part order as one integer (base total + 1), the last criterion."""
    code = 0
    for n in nodes:
        code = code * (total + 1) + n
    return code


def brute_force_parts(parts: Sequence[PartTables], total: int, usable_mib: int) -> tuple[tuple[int, int, int, int], tuple] | None:
    """Every node count per part and option per role that fits (module docstring), the least criteria
    (slowest part, sum of steps, nodes, code) and the choice ((node count, option per role) per part);
    None when nothing fits — the tests' reference for CP-SAT."""
    per_part = []
    for part in parts:
        choices = []
        for n in _counts(part):
            for options in itertools.product(*(range(len(table[n])) for table in part)):
                picked = [table[n][o] for table, o in zip(part, options, strict=True)]
                if len(part) > 1 and sum(p[1] for p in picked) + max(p[2] for p in picked) > usable_mib:
                    continue
                choices.append((n, options, sum(p[0] for p in picked)))
        per_part.append(choices)
    best = None
    for combo in itertools.product(*per_part):
        nodes = [n for n, _, _ in combo]
        if sum(nodes) > total:
            continue
        steps = [s for _, _, s in combo]
        key = (max(steps), sum(steps), sum(nodes), _code(nodes, total))
        if best is None or key < best[0]:
            best = (key, tuple((n, o) for n, o, _ in combo))
    return best


def choose_parts(parts: Sequence[PartTables], total: int, usable_mib: int, *,
                 time_limit_s: float = 30.0) -> tuple[tuple[int, int, int, int], tuple, bool] | None:
    """CP-SAT's node count per part and option per role (module docstring): the criteria, the choice as
    `brute_force_parts` gives it, and whether every stage was proved; None when nothing fits."""
    model = Model()
    counts, roles, steps = [], [], []
    for part in parts:
        fits = _counts(part)
        if not fits:
            return None
        count = {n: model.bool_var() for n in fits}
        model.exactly_one(count.values())
        chosen = []
        for table in part:
            option = {(n, o): model.bool_var() for n in fits for o in range(len(table[n]))}
            for n in fits:  # an option of the role on the part's node count, none elsewhere
                model.linear([(option[n, o], 1) for o in range(len(table[n]))] + [(count[n], -1)], 0, 0)
            chosen.append(option)
        column = lambda k, chosen=chosen, part=part: [(x, part[r][n][o][k]) for r, option in enumerate(chosen)  # noqa: E731
                                                      for (n, o), x in option.items()]
        if len(part) > 1:  # residents + the largest transient within a GPU
            peak = model.int_var(0, max(v for _, v in column(2)))
            for r, option in enumerate(chosen):
                model.linear([(peak, 1)] + [(x, -part[r][n][o][2]) for (n, o), x in option.items()], low=0)
            model.linear(column(1) + [(peak, 1)], high=usable_mib)
        counts.append(count)
        roles.append(chosen)
        steps.append(column(0))
    longest = max(sum(max(o[0] for options in table.values() for o in options) for table in part) for part in parts)
    slowest = model.int_var(0, longest)
    for step in steps:
        model.linear([(slowest, 1)] + [(x, -v) for x, v in step], low=0)
    nodes = [(x, n) for count in counts for n, x in count.items()]
    model.linear(nodes, high=total)
    weights = [(total + 1) ** (len(parts) - 1 - p) for p in range(len(parts))]
    code = [(x, w * n) for w, count in zip(weights, counts, strict=True) for n, x in count.items()]
    stages = [[(slowest, 1)], [term for step in steps for term in step], nodes, code]
    solved = minimize_in_turn(model, stages, time_limit_s)
    if solved is None:
        return None
    result, proved = solved
    choice = tuple((next(n for n, x in count.items() if result.solution[x]),
                    tuple(next(o for (_, o), x in option.items() if result.solution[x]) for option in chosen))
                   for count, chosen in zip(counts, roles, strict=True))
    return tuple(result.value(stage) for stage in stages), choice, proved


def _single(tables: Sequence[Mapping[int, int | None]]) -> list[PartTables]:
    """Roles on nodes of their own as parts: one option each, its best step."""
    return [[{n: [] if s is None else [(s, 0, 0)] for n, s in table.items()}] for table in tables]


def brute_force(tables: Sequence[Mapping[int, int | None]], total: int) -> tuple[int, ...] | None:
    """`brute_force_parts` for roles each on nodes of their own (tables of best steps): the node counts."""
    best = brute_force_parts(_single(tables), total, 0)
    return None if best is None else tuple(n for n, _ in best[1])


def choose(tables: Sequence[Mapping[int, int | None]], total: int, *, time_limit_s: float = 30.0) -> tuple[tuple[int, ...], bool] | None:
    """`choose_parts` for roles each on nodes of their own: the node counts and whether CP-SAT proved them."""
    found = choose_parts(_single(tables), total, 0, time_limit_s=time_limit_s)
    return None if found is None else (tuple(n for n, _ in found[1]), found[2])


def _parts(roles: Sequence[Role]) -> list[list[int]]:
    """The roles' indices by part: each group (in order of its first role), each role without one alone."""
    parts: dict[str | int, list[int]] = {}
    for i, role in enumerate(roles):
        parts.setdefault(role.group if role.group is not None else i, []).append(i)
    return list(parts.values())


def _options(cands: Candidates, ok: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(step ns, resident MiB, transient MiB) per feasible candidate (module docstring), and their rows."""
    rows = np.flatnonzero(ok)
    memory = cands.evaluation.memory
    resident = (memory.weights + memory.gradients + memory.optimizer)[rows]
    table = np.stack([fixed_point(cands.evaluation.time.step[rows], 1e9), np.ceil(resident / MIB),
                      np.ceil((memory.total[rows] - resident) / MIB)], axis=1).astype(np.int64)
    return table, rows


def nondominated_options(table: np.ndarray) -> np.ndarray:
    """Indices of the rows of an (n, 3) integer table no other row is at most in every column (one of
    equal rows), in increasing step order: a sweep in (step, resident, transient) order keeps a row when
    no row kept before it has resident and transient both at most its own — the kept rows' lower-left
    staircase in (resident, transient), residents rising and transients falling, answers that by
    bisection (the fastest row of each (resident, transient) pair is the only one that can be kept)."""
    order = np.lexsort(table.T[::-1])
    _, first = np.unique(table[order][:, 1:], axis=0, return_index=True)
    residents: list[int] = []
    transients: list[int] = []
    kept: list[int] = []
    for i in order[np.sort(first)]:
        _, resident, transient = (int(v) for v in table[i])
        k = bisect.bisect_right(residents, resident)
        if k and transients[k - 1] <= transient:
            continue
        kept.append(int(i))
        start = k - 1 if k and residents[k - 1] == resident else k
        end = start
        while end < len(residents) and transients[end] >= transient:
            end += 1
        residents[start:end] = [resident]
        transients[start:end] = [transient]
    return np.array(kept, dtype=np.int64)


def group_options(roles: Sequence[Role], cluster: ClusterSpec, usable_mib: int, *, efficiency: Efficiency | None = None,
                  runtime: RuntimeAllowance | None = None) -> list[tuple[list[Option], list[Plan]]]:
    """Each role's options on ``cluster`` as one of a group (module docstring), with their plans: its
    throughput optimum alone when the roles' optima fit together, else its non-dominated feasible plans;
    empty lists when some role fits nowhere on it."""
    spaces = [SearchSpace(r.model, cluster, r.workload, fixed=dict(r.fixed), ranges=dict(r.ranges)) for r in roles]
    bests = []
    for space in spaces:
        found = best_feasible(space, efficiency=efficiency, runtime=runtime)
        if found is None:
            return [([], []) for _ in roles]
        table, rows = _options(*found)
        i = int(np.lexsort(table.T[::-1])[0])
        bests.append(([tuple(int(v) for v in table[i])], [found[0].plans.plan(int(rows[i]))]))
    if sum(b[0][0][1] for b in bests) + max(b[0][0][2] for b in bests) <= usable_mib:
        return bests
    out = []
    for space in spaces:
        cands = priced_candidates(space, efficiency=efficiency, runtime=runtime)
        ok = cands.evaluation.fits & np.isfinite(cands.evaluation.time.step)
        table, rows = _options(cands, ok)
        front = nondominated_options(table)
        out.append(([tuple(int(v) for v in table[i]) for i in front], [cands.plans.plan(int(rows[i])) for i in front]))
    return out


def _fill_part(roles: Sequence[Role], tables: list[dict], plans: list[dict], cluster: ClusterSpec,
               counts: Sequence[int], usable_mib: int, efficiency: Efficiency | None,
               runtime: RuntimeAllowance | None) -> None:
    """Add each node count of ``counts`` to the part's tables (per role: node count → options) and to the
    plans of a group's options (per role: node count → plans; a role alone is solved afresh once placed)."""
    for n in counts:
        if len(roles) == 1:
            step = step_table(roles[0], cluster, [n], efficiency=efficiency, runtime=runtime)[n]
            tables[0][n] = [] if step is None else [(step, 0, 0)]
            continue
        on = load_cluster(cluster, nodes=n)
        for r, (options, found) in enumerate(group_options(roles, on, usable_mib, efficiency=efficiency, runtime=runtime)):
            tables[r][n], plans[r][n] = options, found


def place(roles: Sequence[Role], cluster: ClusterSpec, *, efficiency: Efficiency | None = None,
          runtime: RuntimeAllowance | None = None, time_limit_s: float = 30.0) -> Placement:
    """The roles' node counts and plans on ``cluster`` (module docstring); `Infeasible` when a part fits on
    no node count or the parts cannot all fit at once."""
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
    parts = _parts(roles)
    label = lambda p: " + ".join(roles[i].name for i in p)  # noqa: E731
    if total < len(parts):
        what = "roles" if len(parts) == len(roles) else "parts (roles, or groups of roles sharing nodes)"
        raise Infeasible(f"{len(parts)} {what} need at least {len(parts)} whole nodes; the cluster has {total}",
                         [f"{len(parts)} {what} on whole nodes", f"{total} nodes"],
                         [f"use ≥ {len(parts)} nodes", "put roles that can take turns in one group"])
    usable_mib = int((runtime or RuntimeAllowance.default()).usable(cluster) // MIB)
    counts = range(1, total - len(parts) + 2)  # every part keeps at least one node for the others
    built = []
    for part in parts:  # each part's tables up to the fewest nodes all its roles fit on
        members = [roles[i] for i in part]
        tables: list[dict] = [{} for _ in part]
        plans: list[dict] = [{} for _ in part]
        for n in counts:
            _fill_part(members, tables, plans, cluster, [n], usable_mib, efficiency, runtime)
            if _counts(tables):
                break
        else:
            who = (f"role {members[0].name!r}: {members[0].model.name}" if len(part) == 1 else
                   f"group {members[0].group!r} ({label(part)})")
            raise Infeasible(f"{who} fits on no count of {cluster.node.name} nodes up to {counts[-1]} (the other "
                             "parts keep a node each)", [f"{label(part)}: memory on ≤ {counts[-1]} nodes"],
                             ["solve each role alone (`plan solve`) to see why, or give the cluster more nodes"])
        built.append((tables, plans))
    least = [max(tables[0]) for tables, _ in built]
    for p, (part, (tables, plans)) in enumerate(zip(parts, built, strict=True)):  # the rest, as far as the others leave room
        room = total - sum(least) + least[p]
        _fill_part([roles[i] for i in part], tables, plans, cluster, range(least[p] + 1, room + 1), usable_mib,
                   efficiency, runtime)
    found = choose_parts([tables for tables, _ in built], total, usable_mib, time_limit_s=time_limit_s)
    if found is None:
        raise Infeasible(f"the parts need at least {sum(least)} nodes together "
                         f"({', '.join(f'{label(p)} {n}' for p, n in zip(parts, least, strict=True))}), and a group's "
                         f"roles must fit its GPUs' memory together; the cluster has {total} nodes",
                         [f"{label(p)} ≥ {n} nodes" for p, n in zip(parts, least, strict=True)],
                         [f"use ≥ {sum(least)} nodes", "split a group whose roles cannot share memory"])
    _, choice, proved = found
    shares: list[RolePlacement | None] = [None] * len(roles)
    part_steps = []
    for part, (tables, plans), (n, options) in zip(parts, built, choice, strict=True):
        on = load_cluster(cluster, nodes=n)
        for r, (i, option) in enumerate(zip(part, options, strict=True)):
            role = roles[i]
            if len(part) > 1:  # the group's choice: that plan, every field pinned
                chosen = plans[r][n][option]
                solution = solve(role.model, on, role.workload,
                                 fixed={k: v for k, v in chosen.model_dump().items() if k in SEARCHED + SETTINGS and v is not None},
                                 allow_uneven_stages=chosen.layers_per_stage is not None,
                                 allow_partial_recompute=chosen.recompute_layers is not None,
                                 efficiency=efficiency, runtime=runtime, time_limit_s=time_limit_s)
            else:
                solution = solve(role.model, on, role.workload, fixed=role.fixed, ranges=role.ranges,
                                 efficiency=efficiency, runtime=runtime, time_limit_s=time_limit_s)
            best = {k: min((o[0] for o in v), default=None) for k, v in tables[r].items()}
            shares[i] = RolePlacement(role=role.name, group=role.group, nodes=n, gpus=n * cluster.node.gpus_per_node,
                                      solution=solution, table={k: None if v is None else v / 1e9 for k, v in best.items()},
                                      options={k: list(v) for k, v in tables[r].items()})
        part_steps.append(sum(shares[i].solution.estimate.step_time_s for i in part))
    slowest = max(range(len(parts)), key=lambda p: part_steps[p])
    nodes = [n for n, _ in choice]
    lines = [f"{'Proved optimal' if proved else 'Best found within the time limit'} by CP-SAT over each role's options on "
             f"every node count the other parts leave room for: the slowest part, {label(parts[slowest])}, takes "
             f"{part_steps[slowest]:.3f} s per step on {nodes[slowest]} of {total} nodes."]
    for p, part in enumerate(parts):
        if len(part) > 1:
            lines.append(f"group {roles[part[0]].group}: {label(part)} run one after the other on the same "
                         f"{plural_nodes(nodes[p])}, {part_steps[p]:.3f} s per step; their weights, gradients and optimizer "
                         f"states stay on the GPUs together with the largest phase's activations.")
        for i in part:
            share = shares[i]
            faster = {k: v for k, v in share.table.items() if v is not None and k > share.nodes}
            more = f"; with {min(faster)} nodes it could take {faster[min(faster)]:.3f} s" if faster and len(part) == 1 else ""
            lines.append(f"{share.role}: {plural_nodes(share.nodes)}, {share.solution.estimate.step_time_s:.3f} s per step{more}.")
    return Placement(roles=tuple(shares), step_time_s=part_steps[slowest], nodes_used=sum(nodes), nodes=total,
                     optimal=proved, solve_time_s=time.perf_counter() - started, explanation=tuple(lines))


def plural_nodes(n: int) -> str:
    return f"{n} node{'' if n == 1 else 's'}"
