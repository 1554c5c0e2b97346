"""`solve(model, cluster, workload)`: the best plan for an objective, proved optimal by CP-SAT over the
search space; `pareto(...)`: the non-dominated plans over two or three objectives.

A search: enumerate the space (`solver.space`: every structurally valid plan under the pins and ranges),
price it with the vectorized cost model (`solver.candidates`), keep the plans that fit and meet the
throughput target, reduce them to the first non-dominated fronts over step time, memory, simplicity and GPU
count (`solver.frontier`, exact for every objective offered), and let CP-SAT choose among those
(`solver.model`): lexicographic stages for the objectives asked, then the documented tie-breaks
(`solver.objectives`). Objectives ``cost`` and ``gpus`` search cluster sizes too (``node_counts``; by
default powers of two up to the cluster's nodes, and its own size). An empty feasible set raises
`Infeasible` with the conflicting constraints and the changes that would help (`solver.infeasible`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from parallelplan.constraints import Efficiency, Plan, RuntimeAllowance, Workload, estimate
from parallelplan.hardware import ClusterSpec, load_cluster
from parallelplan.models import ModelSpec
from parallelplan.solver.candidates import TABLE_BATCH_PLANS, Candidates, StepBound, priced_candidates
from parallelplan.solver.errors import Infeasible, SolverInputError
from parallelplan.solver.explain import explain
from parallelplan.solver.frontier import first_fronts
from parallelplan.solver.infeasible import diagnose
from parallelplan.solver.model import Selection, frontier, lexicographic
from parallelplan.solver.objectives import OBJECTIVES, Criteria, criteria, gpu_hour_price, weighted_score
from parallelplan.solver.solution import Alternative, SearchStats, Solution
from parallelplan.solver.space import SearchSpace

Objective = str | Sequence[str] | Mapping[str, float]
Progress = Callable[[str], None]
"""Called with a short status line as a long search advances (the CLI shows it on a terminal)."""


def _parse_objective(objective: Objective) -> tuple[list[str], dict[str, float] | None]:
    """(objectives in order, weights or None for lexicographic)."""
    if isinstance(objective, str):
        names, weights = [objective], None
    elif isinstance(objective, Mapping):
        names, weights = list(objective), {k: float(v) for k, v in objective.items()}
        if any(w < 0 for w in weights.values()) or not any(w > 0 for w in weights.values()):
            raise SolverInputError(f"objective weights must be ≥ 0 and not all 0, got {dict(objective)}")
    else:
        names, weights = list(objective), None
    if not names:
        raise SolverInputError(f"give at least one objective of {', '.join(OBJECTIVES)}")
    for name in names:
        if name not in OBJECTIVES:
            raise SolverInputError(f"unknown objective {name!r}; use one of {', '.join(OBJECTIVES)}")
    if len(set(names)) != len(names):
        raise SolverInputError(f"objective lists {names} twice")
    return names, weights


class _Search:
    """The priced, filtered candidates of one request over its cluster sizes."""

    def __init__(self, model: ModelSpec, cluster: ClusterSpec, workload: Workload, names: list[str], *,
                 fixed: Mapping[str, Any] | None, ranges: Mapping[str, Any] | None, allow_uneven_stages: bool,
                 allow_cross_domain: bool, allow_partial_recompute: bool, price_per_gpu_hour: float | None, min_tokens_per_s: float | None,
                 node_counts: Sequence[int] | None, efficiency: Efficiency | None, runtime: RuntimeAllowance | None,
                 progress: Progress | None = None, step_bound: tuple[int, float] | None = None, widen: bool = False,
                 least_memory: int = 0, memory_breaks_bands: bool = False):
        if min_tokens_per_s is not None and not min_tokens_per_s > 0:
            raise SolverInputError(f"min_tokens_per_s must be > 0, got {min_tokens_per_s!r}")
        self.model, self.workload, self.target = model, workload, min_tokens_per_s
        self.efficiency, self.runtime = efficiency, runtime
        # a deeper partial recompute only saves memory: it can win where memory is an objective, or where the
        # memory tie-break decides between plans inside a tolerance band of the first objective
        self.every_depth = ("memory_headroom" in names or memory_breaks_bands) and not least_memory
        self.space = SearchSpace(model, cluster, workload, fixed=dict(fixed or {}), ranges=dict(ranges or {}),
                                 allow_uneven_stages=allow_uneven_stages, allow_cross_domain=allow_cross_domain,
                                 allow_partial_recompute=allow_partial_recompute, widen=widen)
        self.price = gpu_hour_price(cluster, price_per_gpu_hour, required="cost" in names)
        sizes = self._node_counts(cluster, names, node_counts)
        self.clusters = {n * cluster.node.gpus_per_node: load_cluster(cluster, nodes=n) for n in sizes}
        # step time first, one cluster size: price only what the search can pick (`solver.candidates`)
        bound = StepBound(*step_bound, feasible=self.feasible) if step_bound is not None and len(sizes) == 1 else None
        parts = []
        for gpus, sized in self.clusters.items():
            part = self.priced(replace(self.space, cluster=sized), bound=bound, least_memory=least_memory)
            if progress is not None:
                progress(f"priced {0 if part is None else len(part):,} plans on {gpus} GPUs")
            if part is not None:
                parts.append(part)
        self.candidates = Candidates.concat(parts) if parts else None

    @staticmethod
    def _node_counts(cluster: ClusterSpec, names: list[str], given: Sequence[int] | None) -> list[int]:
        if given is not None:
            counts = sorted(set(given))
            if not counts or any(type(n) is not int or n < 1 for n in counts):
                raise SolverInputError(f"node_counts must be positive integers, got {list(given)!r}")
            return counts
        if "gpus" in names or "cost" in names:
            powers = [2**i for i in range(cluster.num_nodes.bit_length()) if 2**i <= cluster.num_nodes]
            return sorted(set(powers) | {cluster.num_nodes})
        return [cluster.num_nodes]

    def priced(self, space: SearchSpace, *, prune: bool = True, bound: StepBound | None = None,
               least_memory: int = 0) -> Candidates | None:
        return priced_candidates(space, every_recompute_depth=self.every_depth, prune=prune, least_memory=least_memory,
                                 efficiency=self.efficiency, runtime=self.runtime, bound=bound)

    def solvable(self) -> tuple[Candidates, np.ndarray, Criteria]:
        """The candidates, which of them are feasible, and their criteria; `Infeasible` when none is."""
        cands = self.candidates
        feasible = self.feasible(cands) if cands is not None else None
        if feasible is None or not feasible.any():
            raise self.infeasible()
        return cands, feasible, criteria(cands, self.price)

    def feasible(self, candidates: Candidates) -> np.ndarray:
        e = candidates.evaluation
        ok = e.fits & np.isfinite(e.time.step)
        if self.target is not None:
            ok &= e.tokens_per_s >= self.target
        return ok

    def infeasible(self) -> Infeasible:
        return diagnose(self.space, target=self.target, price=lambda s: self.priced(s, prune=False), feasible=self.feasible,
                        fastest=self.fastest)

    def fastest(self, space: SearchSpace) -> float | None:
        """The best throughput of the feasible plans of ``space`` (None when none is), found by the
        step-time bound: tokens/s falls with step time and the feasibility here only bounds it."""
        cands = self.priced(space, bound=StepBound(1, 0.0, self.feasible, batch_plans=TABLE_BATCH_PLANS))
        ok = self.feasible(cands) if cands is not None else None
        return None if ok is None or not ok.any() else float(cands.evaluation.tokens_per_s[ok].max())

    def cluster_of(self, gpus: int) -> ClusterSpec:
        return self.clusters[int(gpus)]

    def estimate(self, plan: Plan, gpus: int):
        return estimate(self.model, self.cluster_of(gpus), plan, self.workload, efficiency=self.efficiency,
                        runtime=self.runtime)


def _stages(names: list[str], weights: dict[str, float] | None, crit: Criteria, rows: np.ndarray,
            tolerance: float) -> list[tuple[np.ndarray, float]]:
    """The lexicographic stages of an objective (columns over ``rows``), tie-breaks included."""
    if weights is None:
        stages = [(crit.column(name)[rows], tolerance if i < len(names) - 1 else 0.0) for i, name in enumerate(names)]
    else:
        stages = [(weighted_score(crit, weights, rows), 0.0)]
    for name in ("simplicity", "throughput", "memory_headroom"):
        if name not in names:
            stages.append((crit.column(name)[rows], 0.0))
    if weights is None and tolerance > 0:  # last, the banded objectives exactly: a dominated plan never wins a tie
        stages += [(crit.column(name)[rows], 0.0) for name in names[:-1]]
    return stages


def _checked_time_limit(time_limit_s: float) -> float:
    """CP-SAT's time limit per optimisation, a finite number of seconds above 0."""
    if isinstance(time_limit_s, bool) or not isinstance(time_limit_s, (int, float)) \
            or not 0 < time_limit_s < math.inf:
        raise SolverInputError(f"time_limit_s must be a finite number of seconds above 0, got {time_limit_s!r}")
    return float(time_limit_s)


def _out_of_time(time_limit_s: float, candidates: int) -> SolverInputError:
    """The error when CP-SAT's time ran out before it found any plan (only with a tiny limit)."""
    return SolverInputError(f"time_limit_s = {time_limit_s:g} s ran out before CP-SAT found any of the {candidates:,} "
                            "candidate plans; allow more time (the default, 30 s, is far more than a search needs)")


def solve(model: ModelSpec, cluster: ClusterSpec, workload: Workload, *, objective: Objective = "throughput",
          tolerance: float = 0.0, fixed: Mapping[str, Any] | None = None, ranges: Mapping[str, Any] | None = None,
          allow_uneven_stages: bool = True, allow_cross_domain: bool = False, allow_partial_recompute: bool = True,
          price_per_gpu_hour: float | None = None, min_tokens_per_s: float | None = None, node_counts: Sequence[int] | None = None, top_k: int = 0,
          efficiency: Efficiency | None = None, runtime: RuntimeAllowance | None = None,
          time_limit_s: float = 30.0, progress: Progress | None = None, widen: bool = False) -> Solution:
    """The optimal plan (module docstring). ``objective``: a name, a list (lexicographic; each earlier
    objective kept within ``tolerance`` of its optimum), or {name: weight} (weighted sum of each objective
    over its own optimum). ``fixed`` pins plan fields (e.g. {"tp": 8}); ``ranges`` lists or bounds their
    values (e.g. {"pp": (1, 8), "precision": ["bf16", "fp8"]}); with ``widen`` the ranges' values are added to
    the default domains instead of replacing them. ``min_tokens_per_s`` keeps only plans that
    reach that throughput (with ``gpus``: the fewest GPUs that meet it; without: the fewest that fit).
    ``top_k`` adds that many runner-ups. ``progress`` receives status lines as the search advances."""
    started = time.perf_counter()
    names, weights = _parse_objective(objective)
    if not 0 <= tolerance < 1:
        raise SolverInputError(f"tolerance must be in [0, 1), got {tolerance!r}")
    if type(top_k) is not int or not 0 <= top_k <= 100:
        raise SolverInputError(f"top_k must be an integer in [0, 100], got {top_k!r}")
    time_limit_s = _checked_time_limit(time_limit_s)
    search = _Search(model, cluster, workload, names, fixed=fixed, ranges=ranges, allow_uneven_stages=allow_uneven_stages,
                     allow_cross_domain=allow_cross_domain, allow_partial_recompute=allow_partial_recompute,
                     price_per_gpu_hour=price_per_gpu_hour,
                     min_tokens_per_s=min_tokens_per_s, node_counts=node_counts, efficiency=efficiency, runtime=runtime,
                     progress=progress, step_bound=(max(top_k + 1, 2), tolerance) if weights is None and names[0] == "throughput" else None,
                     widen=widen,
                     least_memory=top_k + 1 if weights is None and names[0] == "memory_headroom" and (len(names) == 1 or tolerance == 0) else 0,
                     memory_breaks_bands=weights is None and tolerance > 0 and len(names) > 1)
    cands, feasible, crit = search.solvable()
    picks: list[int] = []
    proved = True
    candidates = 0
    open_rows = np.flatnonzero(feasible)
    for _ in range(top_k + 1):
        # the best plan of the layouts not yet picked lies on their first non-dominated front
        rows = open_rows[first_fronts(np.stack([crit.step_ns[open_rows], crit.memory_bytes[open_rows]], axis=1),
                                      np.stack([crit.simplicity[open_rows], crit.gpus[open_rows]], axis=1))]
        candidates = candidates or len(rows)
        selection = Selection(len(rows), time_limit_s=time_limit_s)
        best = lexicographic(selection, _stages(names, weights, crit, rows, tolerance), crit.tie_rank(rows))
        if best is None:
            if not picks:
                raise _out_of_time(time_limit_s, len(rows))
            break
        picks.append(int(rows[best.row]))
        proved &= best.proved if len(picks) == 1 else True
        open_rows = open_rows[cands.layout[open_rows] != cands.layout[picks[-1]]]
        if len(open_rows) == 0:
            break
    winner = picks[0]
    plan = cands.plans.plan(winner)
    gpus = int(cands.gpus[winner])
    result = search.estimate(plan, gpus)
    usable = float(cands.evaluation.usable_memory)
    lines = explain(
        objective=" then ".join(names) if weights is None else f"weighted {weights}", proved=proved,
        plans=len(cands), fitting=int(feasible.sum()), candidates=candidates, winner=plan, winner_estimate=result,
        runner_up=_runner_up(cands, crit, feasible, names, weights, winner),
        fastest_unfit=_fastest_unfit(cands, crit, winner),
        estimate_of=lambda p: search.estimate(p, gpus), bounded=cands.bounded,
    )
    alternatives = tuple(Alternative(plan=cands.plans.plan(r), objective=crit.values(r, usable)) for r in picks[1:])
    return Solution(
        plan=plan, model=model, cluster=search.cluster_of(gpus), workload=workload, estimate=result, objective=crit.values(winner, usable), optimal=proved,
        solve_time_s=time.perf_counter() - started, gpus=gpus, explanation=tuple(lines), alternatives=alternatives,
        search=SearchStats(plans=len(cands), fitting=int(feasible.sum()), candidates=candidates,
                           gpu_counts=tuple(sorted(search.clusters)), bounded=cands.bounded),
    )


def _order(crit: Criteria, names: list[str], weights: dict[str, float] | None, rows: np.ndarray) -> np.ndarray:
    """``rows`` sorted best first by the objective (numpy, for the explanation only)."""
    keys = [crit.column(n)[rows] for n in names] if weights is None else [weighted_score(crit, weights, rows)]
    keys += [crit.simplicity[rows], crit.step_ns[rows], crit.memory_bytes[rows], crit.tie_rank(rows)]
    return rows[np.lexsort(keys[::-1])]


def _runner_up(cands: Candidates, crit: Criteria, feasible: np.ndarray, names, weights, winner: int) -> Plan | None:
    others = np.flatnonzero(feasible & (cands.layout != cands.layout[winner]))
    if len(others) == 0:
        return None
    return cands.plans.plan(int(_order(crit, names, weights, others)[0]))


def _fastest_unfit(cands: Candidates, crit: Criteria, winner: int) -> tuple[Plan, float, float] | None:
    """Of the plans faster than the winner that do not fit, the one closest to fitting."""
    faster = np.flatnonzero(~cands.evaluation.fits & (crit.step_ns < crit.step_ns[winner]))
    if len(faster) == 0:
        return None
    row = int(faster[np.argmin(crit.memory_bytes[faster])])
    return cands.plans.plan(row), float(cands.evaluation.time.step[row]), float(cands.evaluation.memory.total[row])


def pareto(model: ModelSpec, cluster: ClusterSpec, workload: Workload, *,
           objectives: Sequence[str] = ("throughput", "memory_headroom"), fixed: Mapping[str, Any] | None = None,
           ranges: Mapping[str, Any] | None = None, allow_uneven_stages: bool = True, allow_cross_domain: bool = False,
           allow_partial_recompute: bool = True, price_per_gpu_hour: float | None = None, min_tokens_per_s: float | None = None,
           node_counts: Sequence[int] | None = None, efficiency: Efficiency | None = None,
           runtime: RuntimeAllowance | None = None, time_limit_s: float = 30.0,
           progress: Progress | None = None) -> list[Solution]:
    """The non-dominated plans over two or three ``objectives``, best first by the first objective; each
    is CP-SAT's proved optimum of its ε-slice (``Solution.optimal``). ``progress`` receives status lines
    (plans priced, points found) as the sweep advances."""
    started = time.perf_counter()
    names, weights = _parse_objective(list(objectives))
    if not 2 <= len(names) <= 3:
        raise SolverInputError(f"pareto needs 2 or 3 objectives, got {names}")
    time_limit_s = _checked_time_limit(time_limit_s)
    search = _Search(model, cluster, workload, names, fixed=fixed, ranges=ranges, allow_uneven_stages=allow_uneven_stages,
                     allow_cross_domain=allow_cross_domain, allow_partial_recompute=allow_partial_recompute,
                     price_per_gpu_hour=price_per_gpu_hour,
                     min_tokens_per_s=min_tokens_per_s, node_counts=node_counts, efficiency=efficiency, runtime=runtime,
                     progress=progress)
    cands, feasible, crit = search.solvable()
    columns = [crit.column(n) for n in names]
    # reduce to the rows non-dominated in the asked objectives (exact for their Pareto set)
    rows = np.flatnonzero(feasible)
    fine_names = [n for n in names if n in ("throughput", "cost", "memory_headroom")]
    coarse_names = [n for n in names if n not in fine_names]
    fine = np.stack([crit.column(n)[rows] for n in fine_names], axis=1)
    coarse = np.stack([crit.column(n)[rows] for n in coarse_names], axis=1) if coarse_names else np.zeros((len(rows), 0), np.int64)
    rows = rows[first_fronts(fine, coarse, k=1)]
    ordered = sorted(range(len(names)), key=lambda i: len(set(columns[i][rows].tolist())), reverse=True)
    points = frontier(len(rows), [columns[i][rows] for i in ordered], crit.tie_rank(rows), np.ones(len(rows), bool),
                      time_limit_s, progress)
    if not points:
        raise _out_of_time(time_limit_s, len(rows))
    usable = float(cands.evaluation.usable_memory)
    out = []
    for local, proved in sorted(points, key=lambda pr: tuple(columns[i][rows[pr[0]]] for i in range(len(names)))):
        row = int(rows[local])
        plan = cands.plans.plan(row)
        gpus = int(cands.gpus[row])
        out.append(Solution(
            plan=plan, model=model, cluster=search.cluster_of(gpus), workload=workload, estimate=search.estimate(plan, gpus), objective=crit.values(row, usable), optimal=proved,
            solve_time_s=time.perf_counter() - started, gpus=gpus,
            explanation=(f"Pareto point over {', '.join(names)}: no plan of the space is at least as good in every one "
                         "and better in one (each point proved optimal by CP-SAT in its ε-slice).",),
            search=SearchStats(plans=len(cands), fitting=int(feasible.sum()), candidates=len(rows),
                               gpu_counts=tuple(sorted(search.clusters))),
        ))
    return out
