"""Every plan of a search space, priced: `priced_candidates(space)` enumerates the space
(`solver.space`), evaluates it with the vectorized cost model, and adds the partial full-recompute plans.

With a `StepBound` (a search whose first objective is step time) only the structures that can hold a plan
the search may pick are priced in full — branch and bound over structures (degrees and pipeline layout).
Recompute only adds time: it adds forward work and repeats forward collectives to every stage's
per-micro-batch time, and the pipeline time (m − β)·max tᵢ + β·Σ tᵢ and the once-per-step terms do not
fall when a tᵢ grows (`constraints.timing`); so the step time of a structure's plan is at least that of
its twin without recompute. Activation offload likewise only adds time (the copies compute does not hide),
but it lowers memory, and with it the recompute a plan needs: a recompute plan that offloads less can be
faster than its recompute-free twin that offloads more. So a twin's fit is judged with its own offload and
its time priced without any: still a lower bound. Pricing each structure's recompute-free twins gives a
lower bound per structure; structures are then priced in full in increasing order of it until the next bound exceeds
what the search can still pick, (1 + tolerance) × the best feasible step of the rank-th best structure, in
the whole nanoseconds the search decides on (rank 2 covers the runner-up of another layout, more with ``top_k``). Twins whose plans cannot fit even
with the space's most memory-saving recompute are left out of the bound (their plans are never
feasible), so every plan that fits in a structure left out is slower than every plan the search can
pick; the faster plans that do not fit, which the explanation cites, are then those priced.

Partial recompute (Megatron's ``--recompute-method block --recompute-num-layers k``): memory falls and time
grows with k, so for every full-recompute plan that fits, the smallest k that still fits is the only one
any objective but memory can want; it is found by bisection on the memory model alone
(`constraints.evaluate.peak_memory`) and added as a plan of its own. When memory is itself an objective,
or breaks the ties inside a tolerance band of the first objective (plans within it that are equally
simple: the deeper k, slower but smaller, can win), every k is added instead (``every_recompute_depth``),
and so it is for plans that offload activations, whose time need not grow with k (more recompute leaves
fewer activations to copy over PCIe: a copy the compute did not hide can shrink by more than the
recompute adds).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields, is_dataclass, replace

import numpy as np

from parallelplan.constraints import Efficiency, PlanArrays, RuntimeAllowance, evaluate
from parallelplan.constraints.arrays import ALL_LAYERS, code
from parallelplan.constraints.evaluate import Evaluation, memory_fits, peak_memory
from parallelplan.solver.objectives import nanoseconds
from parallelplan.solver.space import (
    Execution,
    SearchSpace,
    Structure,
    enumerate_with_structure,
    executions,
    least_memory_executions,
    least_memory_recomputes,
    materialize,
    structures,
    valid_pairs,
)


@dataclass
class Candidates:
    """Plans (n rows) and their cost-model outputs; ``bounded``: plans of the space left unpriced because a
    lower bound on their step time rules them out (`StepBound`)."""

    plans: PlanArrays
    evaluation: Evaluation
    gpus: np.ndarray
    layout: np.ndarray  # one id per (cluster size, degrees, pipeline layout)
    bounded: int = 0

    def __len__(self) -> int:
        return len(self.plans)

    @classmethod
    def concat(cls, parts: list[Candidates], *, same_layouts: bool = False) -> Candidates:
        """Candidates of several cluster sizes together (the GPU count is a column), or with
        ``same_layouts`` several batches of one size (their layout ids already distinct)."""
        if len(parts) == 1:
            return parts[0]
        evaluation = _map_arrays(lambda *arrays: np.concatenate(arrays), *[c.evaluation for c in parts])
        offsets = np.zeros(len(parts), dtype=np.int64) if same_layouts else \
            np.cumsum([0] + [int(c.layout.max()) + 1 for c in parts[:-1]])
        return cls(PlanArrays.concat([c.plans for c in parts]), evaluation, np.concatenate([c.gpus for c in parts]),
                   np.concatenate([c.layout + offset for c, offset in zip(parts, offsets, strict=True)]),
                   sum(c.bounded for c in parts))


@dataclass(frozen=True)
class StepBound:
    """What a search whose first objective is step time can pick (module docstring): plans within
    (1 + ``tolerance``) of the best feasible step of the ``rank``-th best structure; ``feasible`` says
    which priced plans count."""

    rank: int
    tolerance: float
    feasible: Callable[[Candidates], np.ndarray]
    batch_plans: int | None = None
    """Plans priced per batch of structures (None: `BATCH_PLANS`)."""

    def threshold(self, best_per_structure: np.ndarray) -> float:
        """The step time above which no plan can be picked, from the structures' best feasible steps so far.
        The search decides on whole nanoseconds (`solver.objectives.nanoseconds`) and keeps a plan within
        ⌊(1 + tolerance) · best⌋ of them, so a step that rounds to that many is still pickable: the
        threshold is half a nanosecond above it (plans that tie to the nanosecond are the tie-break's to
        order, not the bound's)."""
        if len(best_per_structure) < self.rank:
            return np.inf
        best = float(np.partition(best_per_structure, self.rank - 1)[self.rank - 1])
        if not np.isfinite(best):
            return np.inf
        return (np.floor(nanoseconds(best) * (1 + self.tolerance)) + 0.5) / 1e9


BATCH_PLANS = 25_000
"""Plans priced per batch of structures under a `StepBound`: larger batches suit a full search (an A/B of
alternating DeepSeek-V3 / 2,048 H100 solves on 2 cores: 25,000 beat 10,000 and 6,000 by 12-15%)."""
TABLE_BATCH_PLANS = 8_000
"""The same for `best_feasible_step`, which needs only the best plan: smaller batches stop sooner (three
models sharing 8 nodes, `solver.place`: about 20% faster than at 25,000)."""


def _map_arrays(function, *values):
    """Apply ``function`` to the numpy arrays inside (nested dataclasses of) ``values``; scalars (shared by
    every row, e.g. the GPU's memory) are kept from the first."""
    first = values[0]
    if is_dataclass(first):
        return type(first)(**{f.name: _map_arrays(function, *[getattr(v, f.name) for v in values]) for f in fields(first)})
    return function(*values) if isinstance(first, np.ndarray) else first


def _virtual_stage_layers(space: SearchSpace, plans: PlanArrays) -> np.ndarray:
    """Layers of the largest virtual pipeline stage of each plan (what recompute_layers counts in)."""
    even = -(-space.model.num_layers // (plans.pp * plans.vpp))
    if plans.layers_per_stage is None:
        return even
    explicit = plans.layers_per_stage.max(axis=1)
    return np.where(explicit > 0, explicit, even)


def _partial_recompute(space: SearchSpace, plans: PlanArrays, fits: np.ndarray, every_depth: bool,
                       runtime: RuntimeAllowance | None) -> tuple[PlanArrays, np.ndarray] | None:
    """The partial-recompute plans (module docstring) and the row of each one's full-recompute parent."""
    if "recompute_layers" in space.fixed or not space.allow_partial_recompute:
        return None
    full = (plans.recompute == code("recompute", "full")) & (plans.recompute_layers == ALL_LAYERS)
    depth = _virtual_stage_layers(space, plans)
    every = every_depth | plans.offload_activations  # offloading, more recompute also leaves less to copy
    base = full & (depth > 1) & (fits | every)
    if not base.any():
        return None
    parts = [part for part in (_every_depth(plans, np.flatnonzero(base & every), depth),
                               _fewest_fitting_depth(space, plans, np.flatnonzero(base & ~every), depth, runtime))
             if part is not None]
    if not parts:
        return None
    return PlanArrays.concat([out for out, _ in parts]), np.concatenate([parents for _, parents in parts])


def _every_depth(plans: PlanArrays, rows: np.ndarray, depth: np.ndarray) -> tuple[PlanArrays, np.ndarray] | None:
    """Every partial depth k in [1, depth − 1] of the full-recompute plans at ``rows``."""
    if len(rows) == 0:
        return None
    counts = depth[rows] - 1
    index = np.repeat(np.arange(len(rows)), counts)
    out = plans.take(rows).take(index)
    out.recompute_layers = np.concatenate([np.arange(1, c + 1) for c in counts]).astype(np.int64)
    return out, rows[index]


def _fewest_fitting_depth(space: SearchSpace, plans: PlanArrays, rows: np.ndarray, depth: np.ndarray,
                          runtime: RuntimeAllowance | None) -> tuple[PlanArrays, np.ndarray] | None:
    """The smallest partial depth that fits of each full-recompute plan at ``rows``, where there is one."""
    if len(rows) == 0:
        return None
    parent = plans.take(rows)
    limit = depth[rows] - 1
    # bisection: the smallest k in [1, limit] that fits (k = limit + 1 is "every layer", which fits)
    low, high = np.ones(len(rows), dtype=np.int64), limit + 1
    while np.any(low < high):
        active = low < high
        mid = (low + high) // 2
        trial = parent.take(np.flatnonzero(active))
        trial.recompute_layers = mid[active]
        memory = peak_memory(space.model, space.cluster, space.workload, trial, runtime=runtime)
        ok = np.zeros(len(rows), dtype=bool)
        ok[active] = memory_fits(memory, space.cluster, _usable(space, runtime))
        high = np.where(active & ok, mid, high)
        low = np.where(active & ~ok, mid + 1, low)
    found = low <= limit
    if not found.any():
        return None
    out = parent.take(np.flatnonzero(found))
    out.recompute_layers = low[found]
    return out, rows[found]


def _usable(space: SearchSpace, runtime: RuntimeAllowance | None) -> float:
    """The bytes a plan may take per GPU (`RuntimeAllowance.usable`: less the memory margin)."""
    return (runtime or RuntimeAllowance.default()).usable(space.cluster)


def _structures_that_can_fit(space: SearchSpace, rows: list, runtime: RuntimeAllowance | None) -> np.ndarray:
    """Indices of the structures some plan of which may fit: the least memory of each is among
    `least_memory_executions` (exact pruning: a structure whose least memory exceeds the GPU holds no
    plan that fits). Structures without such a probe plan are kept."""
    probe, owner = enumerate_with_structure(space, rows, least_memory_executions(space))
    if len(probe) == 0:
        return np.arange(len(rows))
    memory = peak_memory(space.model, space.cluster, space.workload, probe, runtime=runtime).total
    least = np.full(len(rows), np.inf)
    np.minimum.at(least, owner, memory)
    probed = np.zeros(len(rows), dtype=bool)
    probed[owner] = True
    return np.flatnonzero((least <= _usable(space, runtime)) | ~probed)


def priced_candidates(space: SearchSpace, *, every_recompute_depth: bool = False, prune: bool = True,
                      efficiency: Efficiency | None = None, runtime: RuntimeAllowance | None = None,
                      bound: StepBound | None = None, least_memory: int = 0) -> Candidates | None:
    """The priced plans of ``space`` (None when the space holds no structurally valid plan); ``prune``
    drops the structures no plan of which fits (exact for searches, not for diagnosing infeasibility);
    ``bound`` prices only what a step-time search can pick (module docstring). ``least_memory`` = r > 0
    (a search whose first objective is memory, kept without tolerance, picking r layouts): each
    structure's least memory is found among `least_memory_executions`, and only the structures whose
    least memory of a feasible plan is among the r smallest are priced in full — the optimum lies in
    one of least memory, every plan that ties with it in such a structure, and each runner-up (the best
    plan of another layout) in the next ones."""
    rows = structures(space)
    bounded = bound is not None and space.workload.training and not every_recompute_depth
    # the bound's own fit check covers this one (a structure none of whose plans fits is never priced)
    if prune and space.workload.training and rows and not bounded:
        rows = [rows[i] for i in _structures_that_can_fit(space, rows, runtime)]
    if least_memory and rows:
        rows = [rows[i] for i in _least_memory_structures(space, rows, least_memory, efficiency, runtime)]
    execs = executions(space)
    s_idx, e_idx = valid_pairs(space, rows, execs)
    if len(s_idx) == 0:
        return None
    if not bounded:
        return _price(space, rows, execs, s_idx, e_idx, every_recompute_depth, efficiency, runtime)
    lower = _step_lower_bounds(space, rows, execs, efficiency, runtime)
    plans_of = np.bincount(s_idx, minlength=len(rows))
    order = np.flatnonzero(plans_of)  # the structures with valid plans, by increasing bound
    order = order[np.argsort(lower[order], kind="stable")]
    best = np.full(len(rows), np.inf)  # best feasible step per structure priced so far
    parts: list[Candidates] = []
    start = 0
    # +inf: no plan of the structure can fit (nor could any of the rest, sorted after it)
    while start < len(order) and lower[order[start]] < np.inf and lower[order[start]] <= bound.threshold(best):
        end = start + 1 + int(np.searchsorted(np.cumsum(plans_of[order[start + 1:]]), bound.batch_plans or BATCH_PLANS))
        chosen = np.zeros(len(rows), dtype=bool)
        chosen[order[start:end]] = True
        pick = chosen[s_idx]
        part = _price(space, rows, execs, s_idx[pick], e_idx[pick], False, efficiency, runtime)
        ok = bound.feasible(part)
        np.minimum.at(best, part.layout[ok], part.evaluation.time.step[ok])
        parts.append(part)
        start = end
    if not parts:  # no plan of any structure can fit: the search is infeasible
        return None
    unpriced = np.ones(len(rows), dtype=bool)
    unpriced[order[:start]] = False
    return replace(Candidates.concat(parts, same_layouts=True), bounded=int(plans_of[unpriced].sum()))


def _least_memory_structures(space: SearchSpace, rows: list[Structure], ranks: int, efficiency: Efficiency | None,
                             runtime: RuntimeAllowance | None) -> np.ndarray:
    """Indices of the structures whose least memory of a feasible plan (fits, finite step; in the whole
    bytes the search decides on) is among the ``ranks`` smallest (`priced_candidates`' ``least_memory``)."""
    execs = least_memory_executions(space)
    s_idx, e_idx = valid_pairs(space, rows, execs)
    if len(s_idx) == 0:
        return np.zeros(0, dtype=np.int64)
    probe = _price(space, rows, execs, s_idx, e_idx, False, efficiency, runtime)
    e = probe.evaluation
    ok = e.fits & np.isfinite(e.time.step)
    least = np.full(len(rows), np.inf)
    np.minimum.at(least, probe.layout[ok], np.ceil(e.memory.total[ok]))
    values = np.unique(least[np.isfinite(least)])
    if len(values) == 0:
        return np.zeros(0, dtype=np.int64)
    return np.flatnonzero(least <= values[min(ranks, len(values)) - 1])


def _price(space: SearchSpace, rows: list[Structure], execs: list[Execution], s_idx: np.ndarray, e_idx: np.ndarray,
           every_recompute_depth: bool, efficiency: Efficiency | None, runtime: RuntimeAllowance | None) -> Candidates:
    """The given (structure, execution) plans and their partial-recompute plans, priced; layout = structure index."""
    model, cluster, workload = space.model, space.cluster, space.workload
    plans, layout = materialize(space, rows, execs, s_idx, e_idx), s_idx
    if workload.training:
        fits = memory_fits(peak_memory(model, cluster, workload, plans, runtime=runtime), cluster, _usable(space, runtime))
        partial = _partial_recompute(space, plans, fits, every_recompute_depth, runtime)
        if partial is not None:
            plans = PlanArrays.concat([plans, partial[0]])
            layout = np.concatenate([layout, layout[partial[1]]])
    result = evaluate(model, cluster, workload, plans, efficiency=efficiency, runtime=runtime)
    return Candidates(plans, result, np.full(len(plans), cluster.total_gpus, dtype=np.int64), layout)


def _step_lower_bounds(space: SearchSpace, rows: list[Structure], execs: list[Execution],
                       efficiency: Efficiency | None, runtime: RuntimeAllowance | None) -> np.ndarray:
    """Per structure, the least step time of its plans' recompute-free twins, timed without activation offload
    (module docstring), over the
    twins whose plans can fit — their least memory, with the space's most memory-saving recompute
    (`least_memory_recomputes`), within the GPU: a lower bound on the step time of every plan of the
    structure that fits. +inf for a structure none of whose plans fits; −inf for one without twins (never
    ruled out)."""
    none = code("recompute", "none")
    twins = list(dict.fromkeys(replace(e, recompute=none, recompute_modules=0) for e in execs))
    s_idx, e_idx = valid_pairs(space, rows, twins)
    lower = np.full(len(rows), -np.inf)
    if len(s_idx) == 0:
        return lower
    plans = materialize(space, rows, twins, s_idx, e_idx)
    can_fit = np.zeros(len(plans), dtype=bool)
    for recompute, modules in least_memory_recomputes(execs):  # each choice tried on the twins not yet known to fit
        rest = np.flatnonzero(~can_fit)
        if len(rest) == 0:
            break
        variant = plans.take(rest)
        variant.recompute = np.full(len(rest), recompute, dtype=np.int64)
        variant.recompute_modules = np.full(len(rest), modules, dtype=np.int64)
        memory = peak_memory(space.model, space.cluster, space.workload, variant, runtime=runtime).total
        can_fit[rest] = memory <= _usable(space, runtime)
    best = np.full(len(rows), np.inf)
    if can_fit.any():
        timed = plans.take(np.flatnonzero(can_fit))  # priced without activation offload: its copies only add time
        timed.offload_activations = np.zeros(len(timed), dtype=bool)
        step = evaluate(space.model, space.cluster, space.workload, timed, efficiency=efficiency, runtime=runtime).time.step
        np.minimum.at(best, s_idx[can_fit], step)
    has_twin = np.bincount(s_idx, minlength=len(rows)) > 0
    return np.where(has_twin, best, -np.inf)


def best_feasible(space: SearchSpace, *, efficiency: Efficiency | None = None,
                  runtime: RuntimeAllowance | None = None) -> tuple[Candidates, np.ndarray] | None:
    """The plans the step-time bound prices to find the throughput optimum of ``space`` and the mask of
    those that fit and run, or None when none does (the composed searches' table entries)."""
    def feasible(c: Candidates) -> np.ndarray:
        return c.evaluation.fits & np.isfinite(c.evaluation.time.step)

    cands = priced_candidates(space, efficiency=efficiency, runtime=runtime,
                              bound=StepBound(1, 0.0, feasible, batch_plans=TABLE_BATCH_PLANS))
    if cands is None or not feasible(cands).any():
        return None
    return cands, feasible(cands)


def best_feasible_step(space: SearchSpace, *, efficiency: Efficiency | None = None,
                       runtime: RuntimeAllowance | None = None) -> float | None:
    """The least step time (seconds) of the plans of ``space`` that fit, or None when none does."""
    found = best_feasible(space, efficiency=efficiency, runtime=runtime)
    return None if found is None else float(found[0].evaluation.time.step[found[1]].min())
