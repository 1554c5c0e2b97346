"""`solve_rl(actor, cluster, workload)`: a PPO or GRPO step's roles (`constraints.rl`: rollout, actor,
critic, reference, reward) placed on a cluster and each given its own parallel layout, so that the step
is as short as it can be.

Two placements are searched, and the faster returned (``placement`` pins one):
- ``colocated`` (verl's hybrid engine, HybridFlow, Sheng et al. 2024): every role on every GPU, the phases
  one after the other — step = generate + sync + Σ scoring forwards + Σ training. The roles share each
  GPU's memory: what stays between phases (the trained roles' weights, gradients and optimizer states,
  the frozen models' weights) of every role, plus the largest of what one role adds while it runs (its
  activations, the rollout's weights and KV cache — the engine frees them between generations, verl's
  ``free_cache_engine`` / vLLM's sleep mode — and the runtime's overhead), within the usable memory;
- ``split`` (OpenRLHF's distributed layout, Hu et al. 2024): every role on GPUs of its own — whole nodes,
  or a power of two dividing a node's GPUs (`shares`: any such set that sums to at most the cluster's
  GPUs packs onto its nodes), as OpenRLHF's ``--actor_num_gpus_per_node 2`` … give them — step = generate
  + sync + the slowest scoring forward + the slowest training (the roles of a phase run at once on their
  own GPUs, the other GPUs wait).
A role's options are the plans of its own search space (`solver.space`) on its GPUs, priced by the cost
model: the rollout's on the generation workload, the frozen models' on the scoring forward (kind score),
a trained role's on one optimizer update, times the updates of a step, plus its scoring forward run on
the same plan (its old log-probabilities or values, computed by the training engine).
Colocated, each role keeps the plans that fit and are not dominated in (its time, resident MiB,
transient MiB) — its fastest alone when those fit together — and CP-SAT chooses one per role with the
residents plus the largest transient within a GPU, minimising the step (`placement.choose_parts` on one
node count, the whole cluster). Split, each role's option on g GPUs is its fastest plan there, and CP-SAT
chooses the GPU counts (`choose_split`), minimising the step, then the GPUs used, then the counts in role
order. `brute_force_split` and `placement.brute_force_parts` check both in the tests.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict

from parallelplan.constraints import (
    Efficiency,
    Estimate,
    Peft,
    Plan,
    PlanArrays,
    RuntimeAllowance,
    Workload,
    estimate,
    evaluate,
    rl,
)
from parallelplan.constraints.evaluate import generation_waves
from parallelplan.constraints.plan import GENERATING_ALGORITHMS
from parallelplan.hardware import ClusterSpec, load_cluster
from parallelplan.models import ModelSpec
from parallelplan.solver.candidates import priced_candidates
from parallelplan.solver.cpsat import Model
from parallelplan.solver.errors import Infeasible, SolverInputError
from parallelplan.solver.model import minimize_in_turn
from parallelplan.solver.objectives import fixed_point
from parallelplan.solver.placement import MAX_NODES, MIB, choose_parts, nondominated_options, plural_nodes
from parallelplan.solver.search import solve
from parallelplan.solver.space import SearchSpace

Placement = Literal["colocated", "split"]
PLACEMENTS: tuple[Placement, ...] = ("colocated", "split")


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True)


class RLRole(_Frozen):
    """One role of the step: its model, its GPUs (split: ``gpus`` of its own on ``nodes`` nodes, whole nodes or
    part of one; colocated: every GPU, ``nodes`` None), its plan, its seconds in each phase it runs in, and its memory on each of its GPUs: what
    stays between phases and the most its phases add. ``estimates``: the cost model's `Estimate` of the
    plan on each workload the role runs (generate, score, train — one optimizer update)."""

    role: str
    model: str
    nodes: int | None
    gpus: int
    plan: Plan
    max_concurrency: int | None = None
    """The rollout's sequences per replica at once (its engine's ``max_num_seqs``); None: all of them."""
    phases: dict[str, float]
    resident_bytes: int
    transient_bytes: int
    estimates: dict[str, Estimate]


class RLSolution(_Frozen):
    """The step's placement and the roles' plans. ``phases``: seconds of generate, sync, score and train
    (they sum to ``step_time_s``); ``memory_per_phase``: bytes on the most loaded GPU during each phase;
    ``optimal``: CP-SAT proved the choice optimal over the roles' options; ``alternative``: the other
    placement's step, or why it has none."""

    algorithm: str
    placement: Placement
    workload: Workload
    cluster: ClusterSpec
    models: dict[str, ModelSpec]
    """Each role's model, by role."""
    step_time_s: float
    phases: dict[str, float]
    roles: tuple[RLRole, ...]
    memory_per_phase: dict[str, int]
    usable_bytes: int
    sequences: int
    generated_tokens_per_s: float
    optimal: bool
    solve_time_s: float
    alternative: str
    explanation: tuple[str, ...]


@dataclass
class _Options:
    """A role's priced plans that fit its GPUs: per plan its seconds per phase, resident and transient
    bytes (the largest its phases add)."""

    role: str
    model: ModelSpec
    plans: PlanArrays | None
    generate: np.ndarray
    score: np.ndarray
    train: np.ndarray
    resident: np.ndarray
    transient: np.ndarray
    concurrency: np.ndarray | None = None
    """The rollout's sequences per replica at once (0: all of them)."""

    @property
    def total(self) -> np.ndarray:
        return self.generate + self.score + self.train

    def table(self) -> np.ndarray:
        """(step ns, resident MiB, transient MiB) per plan, as `placement.choose_parts` takes options."""
        return np.stack([fixed_point(self.total, 1e9), np.ceil(self.resident / MIB), np.ceil(self.transient / MIB)],
                        axis=1).astype(np.int64)

    def __len__(self) -> int:
        return len(self.generate)

    def take(self, rows: Sequence[int]) -> _Options:
        rows = np.asarray(rows, dtype=np.int64)
        return _Options(self.role, self.model, self.plans.take(rows), self.generate[rows], self.score[rows],
                        self.train[rows], self.resident[rows], self.transient[rows],
                        None if self.concurrency is None else self.concurrency[rows])

    def fastest(self) -> _Options:
        """The option of least time (then resident, then transient memory)."""
        return self.take([int(np.lexsort(self.table().T[::-1])[0])])


def _priced(model: ModelSpec, cluster: ClusterSpec, workload: Workload, efficiency, runtime, limits: Mapping[str, Any]):
    space = SearchSpace(model, cluster, workload, fixed=dict(limits.get("fixed", {})), ranges=dict(limits.get("ranges", {})),
                        allow_partial_recompute=limits.get("allow_partial_recompute", True))
    return priced_candidates(space, efficiency=efficiency, runtime=runtime)


def role_options(role: str, model: ModelSpec, cluster: ClusterSpec, workload: Workload, *,
                 efficiency: Efficiency | None = None, runtime: RuntimeAllowance | None = None,
                 limits: Mapping[str, Any] | None = None) -> _Options:
    """Every plan of ``role``'s search space on ``cluster`` that fits and runs, priced (module docstring);
    ``limits``: the role's pins and ranges (``{"fixed": ..., "ranges": ..., "allow_partial_recompute": ...}``,
    a launch target's, as `emitters.constraints` gives a single model's)."""
    limits = limits or {}
    usable = (runtime or RuntimeAllowance.default()).usable(cluster)
    empty = np.zeros(0)
    none = _Options(role, model, None, empty, empty, empty, empty, empty)
    if role == "rollout":
        return _rollout_options(model, cluster, workload, efficiency, runtime, limits) or none
    scoring = rl.scoring_workload(workload)
    if role in rl.TRAINED:
        cands = _priced(model, cluster, rl.training_workload(workload, role), efficiency, runtime, limits)
        if cands is None:
            return none
        e = cands.evaluation
        rows = np.flatnonzero(e.fits & np.isfinite(e.time.step))
        if len(rows) == 0:
            return none
        plans = cands.plans.take(rows)
        score = evaluate(model, cluster, scoring, plans, efficiency=efficiency, runtime=runtime)
        m = e.memory
        resident = (m.weights + m.gradients + m.optimizer)[rows]
        transient = np.maximum(m.total[rows] - resident, score.memory.total - score.memory.weights)
        ok = score.fits & np.isfinite(score.time.step) & (resident + transient <= usable)
        keep = np.flatnonzero(ok)
        return _Options(role, model, plans.take(keep), np.zeros(len(keep)),
                        rl.scoring_forwards(workload, role) * score.time.step[keep],
                        rl.updates(workload) * e.time.step[rows][keep], resident[keep], transient[keep])
    cands = _priced(model, cluster, scoring, efficiency, runtime, limits)
    if cands is None:
        return none
    e = cands.evaluation
    rows = np.flatnonzero(e.fits & np.isfinite(e.time.step))
    step = e.time.step[rows]
    return _Options(role, model, cands.plans.take(rows), np.zeros_like(step), step, np.zeros_like(step),
                    e.memory.weights[rows], (e.memory.total - e.memory.weights)[rows])


def _rollout_options(model: ModelSpec, cluster: ClusterSpec, workload: Workload, efficiency, runtime,
                     limits: Mapping[str, Any]) -> _Options | None:
    """The rollout's plans, each with every sequences-at-once per replica: all of them, or waves of a power
    of two fewer (the engine's ``max_num_seqs``), the KV cache of one wave against the time of several."""
    generation = rl.generation_workload(workload)
    cands = _priced(model, cluster, generation, efficiency, runtime, limits)
    if cands is None:
        return None
    total = rl.sequences(workload)
    concurrencies = [2**j for j in range(int(np.log2(total)) + 1) if 2**j < total]
    e = cands.evaluation
    steps, memory, fits = e.time.step[:, None], e.memory.total[:, None], e.fits[:, None]
    if concurrencies:
        waves = generation_waves(model, cluster, generation, cands.plans, concurrencies, efficiency=efficiency,
                                 runtime=runtime)
        steps, memory = np.hstack([steps, waves.step]), np.hstack([memory, waves.total])
        fits = np.hstack([fits, waves.fits])
    per_replica = -(-total // cands.plans.dp)
    values = np.array([0, *concurrencies])
    useful = (values[None, :] == 0) | (values[None, :] < per_replica[:, None])  # fewer than the replica's own
    rows, columns = np.nonzero(fits & useful & np.isfinite(steps))
    step = steps[rows, columns]
    zeros = np.zeros_like(step)
    return _Options("rollout", model, cands.plans.take(rows), step, zeros, zeros, zeros, memory[rows, columns],
                    values[columns])


# -- the split placement's choice ------------------------------------------------------------------------

PhaseTimes = tuple[int, int, int]
"""A role's (generate, score, train) nanoseconds on a GPU count."""


def brute_force_split(tables: Sequence[Mapping[int, PhaseTimes]], total: int) -> tuple[tuple[int, int, int], tuple[int, ...]] | None:
    """Every GPU count per role (tables: GPU count → its phase times; a count missing: nothing fits there)
    within ``total`` GPUs: the least (step, GPUs, code) and the counts — the tests' reference."""
    best = None
    for counts in itertools.product(*(sorted(t) for t in tables)):
        if sum(counts) > total:
            continue
        step = sum(max(t[n][k] for t, n in zip(tables, counts, strict=True)) for k in range(3))
        key = (step, sum(counts), _code(counts, total))
        if best is None or key < best[0]:
            best = (key, counts)
    return best


def _code(counts: Sequence[int], total: int) -> int:
    code = 0
    for n in counts:
        code = code * (total + 1) + n
    return code


def choose_split(tables: Sequence[Mapping[int, PhaseTimes]], total: int, *,
                 time_limit_s: float = 30.0) -> tuple[tuple[int, int, int], tuple[int, ...], bool] | None:
    """CP-SAT's GPU count per role (`brute_force_split`'s criteria): the criteria, the counts and whether
    every stage was proved; None when no counts fit."""
    if any(not t for t in tables):
        return None
    model = Model()
    chosen = []
    for table in tables:
        x = {n: model.bool_var() for n in sorted(table)}
        model.exactly_one(x.values())
        chosen.append(x)
    nodes = [(x, n) for count in chosen for n, x in count.items()]
    model.linear(nodes, high=total)
    slowest = []
    for k in range(3):
        top = max(t[n][k] for t in tables for n in t)
        phase = model.int_var(0, top)
        for table, x in zip(tables, chosen, strict=True):
            model.linear([(phase, 1)] + [(x[n], -table[n][k]) for n in table], low=0)
        slowest.append((phase, 1))
    weights = [(total + 1) ** (len(tables) - 1 - r) for r in range(len(tables))]
    code = [(x, w * n) for w, count in zip(weights, chosen, strict=True) for n, x in count.items()]
    solved = minimize_in_turn(model, [slowest, nodes, code], time_limit_s)
    if solved is None:
        return None
    result, proved = solved
    counts = tuple(next(n for n, x in count.items() if result.solution[x]) for count in chosen)
    return (result.value(slowest), result.value(nodes), result.value(code)), counts, proved


# -- the search -------------------------------------------------------------------------------------------

def _models(actor: ModelSpec, critic: ModelSpec | None, reward: ModelSpec | None) -> dict[str, ModelSpec]:
    """Each role's model: the critic defaults to the actor's architecture, the reward model to the critic's
    (both are usually initialised from one reward model of the actor's family); both with a value head, one
    output per token (`ModelSpec.with_value_head`)."""
    critic = (critic or actor).with_value_head()
    reward = reward.with_value_head() if reward is not None else critic
    return {"rollout": actor, "actor": actor, "reference": actor, "critic": critic, "reward": reward}


class _Cache:
    """Role options by (role kind, model, node count): the reference and reward models, or actor and critic,
    often share one architecture and so one search."""

    def __init__(self, workload: Workload, efficiency, runtime, limits: Mapping[str, Any]):
        self.workload, self.efficiency, self.runtime, self.limits = workload, efficiency, runtime, limits
        self.found: dict[tuple, _Options] = {}

    def _key(self, role: str, model: ModelSpec, cluster: ClusterSpec) -> tuple:
        kind = {"reward": "reference"}.get(role, role)
        if role == "critic" and self.workload.peft is None:
            kind = "actor"  # without peft both train in full: one search
        limits = self.limits.get(role, {})
        return kind, model.model_dump_json(), cluster.num_nodes, cluster.total_gpus, cluster.node.name, repr(limits)

    def fill(self, requests: Sequence[tuple[str, ModelSpec, ClusterSpec]]) -> None:
        """Search the (role, model, cluster) requests not searched yet, on the machine's cores (numpy
        releases the interpreter lock in its array loops; every search is independent)."""
        todo = {}
        for role, model, cluster in requests:
            key = self._key(role, model, cluster)
            if key not in self.found and key not in todo:
                todo[key] = (key[0], model, cluster, self.limits.get(role, {}))
        run = lambda job: role_options(job[0], job[1], job[2], self.workload, efficiency=self.efficiency,  # noqa: E731
                                       runtime=self.runtime, limits=job[3])
        workers = min(len(todo), os.cpu_count() or 1, 4)
        if workers > 1:
            with ThreadPoolExecutor(workers) as pool:
                self.found.update(zip(todo, pool.map(run, todo.values()), strict=True))
        else:
            self.found.update((key, run(job)) for key, job in todo.items())

    def options(self, role: str, model: ModelSpec, cluster: ClusterSpec) -> _Options:
        key = self._key(role, model, cluster)
        if key not in self.found:
            self.fill([(role, model, cluster)])
        found = self.found[key]
        return _Options(role, found.model, found.plans, found.generate, found.score, found.train, found.resident,
                        found.transient, found.concurrency)


def _why_none(role: str, model: ModelSpec, cluster: ClusterSpec, cache: _Cache) -> str:
    """Why a role has no plan on ``cluster``: the single-model search's diagnosis of its workload."""
    w = cache.workload
    workload = (rl.training_workload(w, role) if role in rl.TRAINED else  # the rollout: one sequence at a time
                rl.generation_workload(w, 1) if role == "rollout" else rl.scoring_workload(w))
    limits = cache.limits.get(role, {})
    try:
        solve(model, cluster, workload, fixed=dict(limits.get("fixed", {})), ranges=dict(limits.get("ranges", {})),
              efficiency=cache.efficiency, runtime=cache.runtime)
    except Infeasible as err:
        facts = err.details.get("facts") or err.conflicts
        return f"{role} fits no plan on the {cluster.total_gpus} GPUs: " + " ".join(facts)
    return (f"{role} fits no plan on the {cluster.total_gpus} GPUs that also holds its scoring forward"
            if role in rl.TRAINED else f"{role} fits no plan on the {cluster.total_gpus} GPUs without its KV cache")


def _colocated(names, models, cluster, cache: _Cache, usable_mib: int, time_limit_s: float):
    """The colocated placement: the chosen option per role and whether CP-SAT proved it, or the reason none fits."""
    cache.fill([(r, models[r], cluster) for r in names])
    options = [cache.options(r, models[r], cluster) for r in names]
    empty = [o for o in options if not len(o)]
    if empty:
        return None, "; ".join(_why_none(o.role, o.model, cluster, cache) for o in empty)
    fastest = [o.fastest() for o in options]
    rows = [f.table()[0] for f in fastest]
    together = sum(int(r[1]) for r in rows) + max(int(r[2]) for r in rows)
    if together <= usable_mib:
        return fastest, (True, "each role runs its fastest plan: together they fit the GPUs' memory")
    tables = [o.table() for o in options]
    fronts = [o.take(nondominated_options(t)) for o, t in zip(options, tables, strict=True)]
    n = cluster.num_nodes
    found = choose_parts([[{n: [tuple(int(v) for v in row) for row in f.table()]} for f in fronts]], n, usable_mib,
                         time_limit_s=time_limit_s)
    if found is None:
        resident = sum(int(f.table()[:, 1].min()) for f in fronts)
        return None, (f"the roles' least resident memory together, {resident / 1024:.1f} GiB per GPU, with the phases' "
                      f"working memory does not fit {usable_mib / 1024:.1f} GiB")
    _, choice, proved = found
    return [f.take([o]) for f, o in zip(fronts, choice[0][1], strict=True)], (
        proved, f"the roles' fastest plans together need {together / 1024:.1f} GiB per GPU, more than the "
                 f"{usable_mib / 1024:.1f} GiB usable: CP-SAT chose among each role's plans that are not beaten in "
                 f"time, resident and working memory ({', '.join(f'{f.role} {len(f)}' for f in fronts)}) the "
                 "fastest set that fits together")


def shares(cluster: ClusterSpec) -> list[int]:
    """The GPU counts a role of the split placement may take: a power of two dividing a node's GPUs (part of
    one node), or whole nodes. Any set of them whose sum is at most the cluster's GPUs fits it: the whole
    nodes take nodes of their own, and parts of a node, each a power of two dividing its GPUs, fill the
    remaining nodes exactly, largest first."""
    per_node = cluster.node.gpus_per_node
    parts = [2**j for j in range(per_node.bit_length()) if 2**j < per_node and per_node % 2**j == 0]
    return parts + [n * per_node for n in range(1, cluster.num_nodes + 1)]


def _on(cluster: ClusterSpec, gpus: int) -> ClusterSpec:
    """The part of ``cluster`` a share of ``gpus`` GPUs is: whole nodes, or part of one node."""
    per_node = cluster.node.gpus_per_node
    return load_cluster(cluster, nodes=gpus // per_node) if gpus >= per_node else load_cluster(cluster, gpus=gpus)


def _split_counts(names, models, cluster, cache: _Cache, pins: Mapping[str, int]) -> tuple[dict[str, list[int]], dict[str, int]]:
    """The GPU counts worth searching per role — its pin, else the shares up to what the other roles leave
    it at their least: each other role's smallest share with a plan that fits (pinned: its pin), found by
    searching the shares upward, so no count that could be chosen is skipped (exact pruning) — and those
    least shares (a role with none is missing)."""
    total = cluster.total_gpus
    least = {name: pins[name] for name in names if name in pins}
    for g in shares(cluster):
        open_roles = [name for name in names if name not in least]
        if not open_roles:
            break
        cache.fill([(name, models[name], _on(cluster, g)) for name in open_roles])
        least |= {name: g for name in open_roles if len(cache.options(name, models[name], _on(cluster, g)))}
    room = {name: total - sum(least.get(other, 1) for other in names if other != name) for name in names}
    counts = {name: [pins[name]] if name in pins else [g for g in shares(cluster) if g <= room[name]] for name in names}
    return counts, least


def _split(names, models, cluster, cache: _Cache, pins: Mapping[str, int], time_limit_s: float):
    """The split placement: (GPU count, the fastest option there) per role and whether CP-SAT proved the
    counts, or the reason none fits; ``pins`` fix some roles' GPU counts."""
    total, k = cluster.total_gpus, len(names)
    if total < k:
        return None, f"{k} roles on GPUs of their own need ≥ {k} GPUs; the cluster has {total}"
    best: list[dict[int, _Options]] = [{} for _ in names]
    counts, least = _split_counts(names, models, cluster, cache, pins)
    room = total - (k - 1)
    if len(least) == k and sum(least.values()) > total:
        return None, (f"the roles need {sum(least.values())} GPUs together at their least ("
                      + ", ".join(f"{name} {g}" for name, g in least.items()) + f"); the cluster has {total}")
    cache.fill([(name, models[name], _on(cluster, g)) for name in names for g in counts[name]])
    for r, name in enumerate(names):
        for g in counts[name]:
            o = cache.options(name, models[name], _on(cluster, g))
            if len(o):
                best[r][g] = o.fastest()
        if not best[r]:
            where = f"its {pins[name]} GPUs" if name in pins else f"up to {room} GPUs of its own"
            return None, f"{name} fits no plan on {where}"
    tables = [{g: tuple(int(v) for v in fixed_point(np.array([o.generate[0], o.score[0], o.train[0]]), 1e9))
               for g, o in b.items()} for b in best]
    found = choose_split(tables, total, time_limit_s=time_limit_s)
    if found is None:
        return None, f"the roles need {sum(min(b) for b in best)} GPUs together; the cluster has {total}"
    _, counts, proved = found
    return [(g, best[r][g]) for r, g in enumerate(counts)], (
        proved, "each role runs its fastest plan on its GPUs; CP-SAT chose the GPU counts (a power of two within a "
                "node, or whole nodes, each at most what the other roles leave at their least) for the shortest step")


def solve_rl(actor: ModelSpec, cluster: ClusterSpec, workload: Workload, *, critic: ModelSpec | None = None,
             reward: ModelSpec | None = None, placement: Placement | None = None,
             gpus: Mapping[str, int] | None = None, limits: Mapping[str, Mapping[str, Any]] | None = None,
             efficiency: Efficiency | None = None, runtime: RuntimeAllowance | None = None,
             time_limit_s: float = 30.0) -> RLSolution:
    """The fastest placement and plans of a PPO / GRPO step (module docstring); ``gpus`` pins some roles'
    GPU counts (the split placement, as OpenRLHF's ``--actor_num_nodes`` and ``--actor_num_gpus_per_node``
    … fix them); ``limits`` gives roles
    pins and ranges of their own (by role name: ``{"fixed": …, "ranges": …}``, what a launch target runs,
    `emitters.rl_constraints`). `Infeasible` when
    no placement fits, `SolverInputError` on a workload that is not one or pins that cannot hold."""
    started = time.perf_counter()
    if workload.algorithm not in GENERATING_ALGORITHMS:
        raise SolverInputError(f"workload.algorithm: solve_rl plans a PPO or GRPO step, got {workload.algorithm!r}; "
                               "other workloads go to solve")
    if placement is not None and placement not in PLACEMENTS:
        raise SolverInputError(f"placement {placement!r}: use colocated or split")
    if cluster.num_nodes > MAX_NODES:
        raise SolverInputError(f"solve_rl prices every role on every node count: give at most {MAX_NODES} nodes, "
                               f"got {cluster.num_nodes}")
    eff = efficiency or Efficiency.default()
    rt = runtime or RuntimeAllowance.default()
    names = rl.roles(workload)
    pins = dict(gpus or {})
    _check_pins(pins, names, cluster, placement)
    if pins:
        placement = "split"
    models = _models(actor, critic, reward)
    usable = rt.usable(cluster)
    limits = {role: dict(value) for role, value in (limits or {}).items()}
    unknown = sorted(set(limits) - set(rl.ROLES))
    if unknown:
        raise SolverInputError(f"limits: {', '.join(unknown)} not a role; the roles are {', '.join(rl.ROLES)}")
    results, reasons = _search(names, models, cluster, workload, placement, pins, eff, rt, time_limit_s, limits)
    if not results:
        raise Infeasible(f"no placement of the {workload.algorithm.upper()} step fits {plural_nodes(cluster.num_nodes)} "
                         f"of {cluster.node.name} ({', '.join(reasons)} searched)",
                         [f"{k}: {v}" for k, v in reasons.items()],
                         _checked_changes(models, cluster, workload, eff, rt, time_limit_s, limits))
    built = {kind: _build(kind, chosen, names, models['actor'], cluster, workload, eff, rt)
             for kind, (chosen, _) in results.items()}
    kind = min(built, key=lambda k: (built[k][0]["step"], PLACEMENTS.index(k)))
    phases, roles_out, memory = built[kind]
    other = [k for k in PLACEMENTS if k != kind]
    alternative = ""
    if other:
        o = other[0]
        alternative = (f"{o}: {built[o][0]['step']:.2f} s per step" if o in built else
                       f"{o}: {reasons.get(o, 'not searched (placement pinned)')}")
    step = phases.pop("step")
    sequences = rl.sequences(workload)
    rollout = rl.rollout_of(workload)
    proved, how = results[kind][1]
    lines = _explain(kind, phases, step, memory, usable, alternative, proved, how)
    return RLSolution(algorithm=workload.algorithm, placement=kind, workload=workload, cluster=cluster,
                      models={name: models[name] for name in names}, step_time_s=step, phases=phases, roles=tuple(roles_out),
                      memory_per_phase=memory, usable_bytes=int(usable), sequences=sequences,
                      generated_tokens_per_s=sequences * rollout.response_len / step, optimal=bool(proved),
                      solve_time_s=time.perf_counter() - started, alternative=alternative, explanation=tuple(lines))


def _search(names, models, cluster: ClusterSpec, workload: Workload, placement: Placement | None,
            pins: Mapping[str, int], eff: Efficiency, rt: RuntimeAllowance, time_limit_s: float,
            limits: Mapping[str, Any]) -> tuple[dict, dict]:
    """Each placement searched (``placement`` alone when pinned): the chosen options with (proved, how) by
    placement, and the reason by placement where none fits."""
    cache = _Cache(workload, eff, rt, limits)
    results: dict[str, tuple] = {}
    reasons: dict[str, str] = {}
    for kind in ([placement] if placement else PLACEMENTS):
        if kind == "colocated":
            chosen, detail = _colocated(names, models, cluster, cache, int(rt.usable(cluster) // MIB), time_limit_s)
        else:
            chosen, detail = _split(names, models, cluster, cache, pins, time_limit_s)
        if chosen is None:
            reasons[kind] = detail
        else:
            results[kind] = (chosen, detail)
    return results, reasons


def _checked_changes(models, cluster: ClusterSpec, workload: Workload, eff: Efficiency, rt: RuntimeAllowance,
                     time_limit_s: float, limits: Mapping[str, Any]) -> list[str]:
    """The changes to an infeasible step that make it fit, each searched: twice the nodes, half the
    prompts per step, a LoRA adapter on the actor (which also drops the reference copy)."""
    tries = []
    if 2 * cluster.num_nodes <= MAX_NODES:
        tries.append((f"{2 * cluster.num_nodes} nodes", load_cluster(cluster, nodes=2 * cluster.num_nodes), workload))
    changed = lambda **update: Workload.model_validate({**workload.model_dump(), **update})  # noqa: E731
    if workload.global_batch_size > 1:
        half = workload.global_batch_size // 2
        tries.append((f"{half} prompts per step (one update each)", cluster,
                      changed(global_batch_size=half, rollout={**rl.rollout_of(workload).model_dump(), "mini_batch_size": None})))
    if workload.peft is None:
        tries.append(("a LoRA adapter on the actor (--peft lora)", cluster, changed(peft=Peft().model_dump())))
    changes = []
    for what, on, w in tries:
        results, _ = _search(rl.roles(w), models, on, w, None, {}, eff, rt, time_limit_s, limits)
        if results:
            changes.append(f"{what}: fits ({', '.join(results)})")
    return changes


def _check_pins(pins: Mapping[str, int], names: Sequence[str], cluster: ClusterSpec, placement: Placement | None) -> None:
    """Pinned GPU counts name this step's roles, are shares the split placement takes (`shares`), and fit
    the cluster together."""
    total = cluster.total_gpus
    for role, n in pins.items():
        if role not in names:
            raise SolverInputError(f"gpus: {role!r} is not a role of this step; its roles are {', '.join(names)}")
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise SolverInputError(f"gpus: {role} = {n!r}; give a whole number of GPUs ≥ 1")
        if n > total:
            raise SolverInputError(f"gpus: {role} = {n} is more than the cluster's {total} GPUs")
        if n not in shares(cluster):
            raise SolverInputError(f"gpus: {role} = {n}: a role takes a power of two dividing a node's "
                                   f"{cluster.node.gpus_per_node} GPUs, or whole nodes ({', '.join(map(str, shares(cluster)))})")
    if pins and sum(pins.values()) + len(set(names) - set(pins)) > total:
        raise SolverInputError(f"gpus: the pins take {sum(pins.values())} of the cluster's {total} GPUs, leaving "
                               f"fewer than one each for {', '.join(n for n in names if n not in pins)}")
    if pins and placement == "colocated":
        raise SolverInputError("gpus: pinned GPU counts place roles on GPUs of their own (split), not colocated")


def phase_workload(workload: Workload, role: str, phase: str, concurrency: int | None = None) -> Workload:
    """The workload ``role`` runs in ``phase`` (``concurrency``: the rollout's sequences at once)."""
    if phase == "train":
        return rl.training_workload(workload, role)
    return rl.generation_workload(workload, concurrency) if phase == "generate" else rl.scoring_workload(workload)


def _build(kind: str, chosen, names, actor_model: ModelSpec, cluster: ClusterSpec, workload: Workload, eff, rt):
    """The placement's phases (with ``step``), roles and memory per phase."""
    roles_out: list[RLRole] = []
    if kind == "colocated":
        placed = [(None, o) for o in chosen]
    else:
        placed = chosen
    for name, (g, o) in zip(names, placed, strict=True):
        on = cluster if g is None else _on(cluster, g)
        plan = o.plans.plan(0)
        concurrency = int(o.concurrency[0]) or None if o.concurrency is not None else None
        runs = {"generate": o.generate[0], "score": o.score[0], "train": o.train[0]}
        estimates = {}
        for phase, seconds in runs.items():
            if seconds > 0:
                estimates[phase] = estimate(o.model, on, plan, phase_workload(workload, name, phase, concurrency),
                                            efficiency=eff, runtime=rt)
        roles_out.append(RLRole(role=name, model=o.model.name, nodes=None if g is None else on.num_nodes,
                                gpus=on.total_gpus, plan=plan,
                                max_concurrency=concurrency,
                                phases={k: float(v) for k, v in runs.items() if v > 0},
                                resident_bytes=int(o.resident[0]), transient_bytes=int(o.transient[0]),
                                estimates=estimates))
    generator = next(r for r in roles_out if r.role == "rollout")
    gpus = cluster.total_gpus if kind == "colocated" else generator.gpus
    sync = rl.sync_time(2.0 * actor_model.total_params, cluster, gpus, kind, eff)  # compute-dtype weights
    combine = sum if kind == "colocated" else max
    phases = {"generate": sum(r.phases.get("generate", 0.0) for r in roles_out), "sync": sync,
              "score": combine([r.phases.get("score", 0.0) for r in roles_out]),
              "train": combine([r.phases.get("train", 0.0) for r in roles_out])}
    phases["step"] = phases["generate"] + sync + phases["score"] + phases["train"]
    memory = {}
    for phase in ("generate", "score", "train"):
        active = [r for r in roles_out if phase in r.phases]
        if kind == "colocated":
            resident = sum(r.resident_bytes for r in roles_out)
            memory[phase] = resident + max(r.transient_bytes for r in active)
        else:
            memory[phase] = max(r.resident_bytes + r.transient_bytes for r in active)
    return phases, roles_out, memory


def _explain(kind: str, phases: Mapping[str, float], step: float, memory: Mapping[str, int], usable: float,
             alternative: str, proved: bool, how: str) -> list[str]:
    gib = 2**30
    layout = ("every role on every GPU, the phases one after the other" if kind == "colocated" else
              "every role on GPUs of its own, a phase's roles at once")
    lines = [f"{'Proved optimal' if proved else 'Best found within the time limit'} over each role's plans: "
             f"{kind} ({layout}), {step:.2f} s per step — generate {phases['generate']:.2f} s, sync {phases['sync']:.2f} s, "
             f"score {phases['score']:.2f} s, train {phases['train']:.2f} s.",
             how[0].upper() + how[1:] + "."]
    if alternative:
        lines.append(f"The other placement, {alternative}.")
    lines.append("Memory per GPU by phase: " + ", ".join(f"{k} {v / gib:.1f} GiB" for k, v in memory.items())
                 + f" of {usable / gib:.1f} GiB usable.")
    return lines


__all__ = ["PLACEMENTS", "RLRole", "RLSolution", "brute_force_split", "choose_split", "role_options", "solve_rl"]
