"""Every plan of a search space, priced: `priced_candidates(space)` enumerates the space
(`solver.space`), evaluates it with the vectorized cost model, and adds the partial full-recompute plans.

Partial recompute (Megatron's ``--recompute-method block --recompute-num-layers k``): memory falls and time
grows with k, so for every full-recompute plan that fits, the smallest k that still fits is the only one
any objective but memory can want; it is found by bisection on the memory model alone
(`constraints.evaluate.peak_memory`) and added as a plan of its own. When memory is itself an objective
(``every_recompute_depth``) every k is added instead.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, is_dataclass

import numpy as np

from parallelplan.constraints import Efficiency, PlanArrays, RuntimeAllowance, evaluate
from parallelplan.constraints.arrays import ALL_LAYERS, code
from parallelplan.constraints.evaluate import Evaluation, peak_memory
from parallelplan.solver.space import SearchSpace, enumerate_with_structure, least_memory_executions, structures


@dataclass
class Candidates:
    """Plans (n rows) and their cost-model outputs."""

    plans: PlanArrays
    evaluation: Evaluation
    gpus: np.ndarray
    layout: np.ndarray  # one id per (cluster size, degrees, pipeline layout)

    def __len__(self) -> int:
        return len(self.plans)

    @classmethod
    def concat(cls, parts: list[Candidates]) -> Candidates:
        """Candidates of several cluster sizes together (the GPU count is a column)."""
        evaluation = _map_arrays(lambda *arrays: np.concatenate(arrays), *[c.evaluation for c in parts])
        offsets = np.cumsum([0] + [int(c.layout.max()) + 1 for c in parts[:-1]])
        return cls(PlanArrays.concat([c.plans for c in parts]), evaluation, np.concatenate([c.gpus for c in parts]),
                   np.concatenate([c.layout + offset for c, offset in zip(parts, offsets, strict=True)]))


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
    base = full & fits & (depth > 1) if not every_depth else full & (depth > 1)
    rows = np.flatnonzero(base)
    if len(rows) == 0:
        return None
    parent = plans.take(rows)
    limit = depth[rows] - 1
    if every_depth:
        counts = limit
        index = np.repeat(np.arange(len(rows)), counts)
        k = np.concatenate([np.arange(1, c + 1) for c in counts])
        out = parent.take(index)
        out.recompute_layers = k.astype(np.int64)
        return out, rows[index]
    # bisection: the smallest k in [1, limit] that fits (k = limit + 1 is "every layer", which fits)
    low, high = np.ones(len(rows), dtype=np.int64), limit + 1
    while np.any(low < high):
        active = low < high
        mid = (low + high) // 2
        trial = parent.take(np.flatnonzero(active))
        trial.recompute_layers = mid[active]
        memory = peak_memory(space.model, space.cluster, space.workload, trial, runtime=runtime)
        ok = np.zeros(len(rows), dtype=bool)
        ok[active] = memory.total <= _usable(space, runtime)
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
                      efficiency: Efficiency | None = None, runtime: RuntimeAllowance | None = None) -> Candidates | None:
    """The priced plans of ``space`` (None when the space holds no structurally valid plan); ``prune``
    drops the structures no plan of which fits (exact for searches, not for diagnosing infeasibility)."""
    model, cluster, workload = space.model, space.cluster, space.workload
    rows = structures(space)
    if prune and workload.training and rows:
        rows = [rows[i] for i in _structures_that_can_fit(space, rows, runtime)]
    plans, layout = enumerate_with_structure(space, rows)
    if len(plans) == 0:
        return None
    if workload.training:
        fits = peak_memory(model, cluster, workload, plans, runtime=runtime).total <= _usable(space, runtime)
        partial = _partial_recompute(space, plans, fits, every_recompute_depth, runtime)
        if partial is not None:
            plans = PlanArrays.concat([plans, partial[0]])
            layout = np.concatenate([layout, layout[partial[1]]])
    result = evaluate(model, cluster, workload, plans, efficiency=efficiency, runtime=runtime)
    return Candidates(plans, result, np.full(len(plans), cluster.total_gpus, dtype=np.int64), layout)
