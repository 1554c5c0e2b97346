"""The oracle: the same search space enumerated exhaustively and priced with the same vectorized cost model,
the optimum found by sorting — what the CP-SAT search must reproduce.

Two enumerations of the space, both without the solver's pruning (no structure pruning, every partial
recompute depth, no dominance reduction):
- ``brute_force=True`` — the product of every variable's raw candidate values as `Plan` objects, kept when
  `constraints.rules.structural_violations` finds nothing and the space's conventions hold
  (`_conventional`). Independent of `solver.space`'s vectorized rules, so it checks them; for spaces of
  up to some 10⁵ combinations (tests).
- ``brute_force=False`` — `solver.space.enumerate_plans` plus every recompute depth, for the benchmarks'
  oracle times at scale.
The objective is decided on the same integer criteria (`solver.objectives.criteria`) as the solver.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from parallelplan.constraints import Plan, PlanArrays, RuntimeAllowance, Workload, evaluate
from parallelplan.constraints.arrays import ALL_LAYERS, code
from parallelplan.constraints.check import selective_ladder
from parallelplan.constraints.rules import structural_violations
from parallelplan.hardware import ClusterSpec
from parallelplan.models import ModelSpec
from parallelplan.solver.candidates import Candidates
from parallelplan.solver.objectives import Criteria, criteria, gpu_hour_price, weighted_score
from parallelplan.solver.space import (
    SearchSpace,
    cp_candidates,
    cp_comm_domain,
    enumerate_with_structure,
    fp8_recipe_domain,
    offload_activations_domain,
    uneven_splits,
)


@dataclass
class OracleResult:
    rows: list[int]  # best first (top-k distinct layouts)
    candidates: Candidates
    criteria: Criteria
    feasible: np.ndarray
    seconds: float

    @property
    def plan(self) -> Plan:
        return self.candidates.plans.plan(self.rows[0])


def _raw_plans(space: SearchSpace) -> list[Plan]:
    """Every combination of raw candidate values (a superset of the space), kept when valid."""
    m, c, w = space.model, space.cluster, space.workload
    limit = c.total_gpus if space.allow_cross_domain else space.fast_domain
    tps = space.domain("tp", range(1, min(m.num_attention_heads, limit) + 1))
    cps = space.domain("cp", cp_candidates(w.seq_len, c.total_gpus))
    pps = space.domain("pp", range(1, m.num_layers + 1))
    eps = space.domain("ep", range(1, m.moe.num_experts + 1)) if m.moe else [1]
    ladder = [tuple(x) for x in space.domain("recompute_modules", selective_ladder(m))]
    recomputes = []
    for mode in space.default_domain("recompute"):
        if mode == "selective":
            recomputes += [("selective", modules, None) for modules in ladder]
        elif mode == "full":
            depths = list(range(1, m.num_layers + 1)) if space.allow_partial_recompute else []
            layers = space.domain("recompute_layers", [None] + depths)
            recomputes += [("full", None, k) for k in layers]
        else:
            recomputes.append((mode, None, None))
    shardings = [(s, size) for s in space.default_domain("sharding")
                 for size in (space.domain("hsdp_shard_size", [c.node.gpus_per_node]) if s == "hsdp" else [None])]
    schedules = space.default_domain("schedule")
    cp_comms = cp_comm_domain(space)
    offloads = offload_activations_domain(space)
    precisions = [(precision, recipe) for precision in space.default_domain("precision")
                  for recipe in (fp8_recipe_domain(space) if precision == "fp8" else [None])]
    out = []
    for tp, cp, pp in itertools.product(tps, cps, pps):
        if c.total_gpus % (tp * cp * pp):
            continue
        dp = c.total_gpus // (tp * cp * pp)
        if ("dp" in space.fixed or "dp" in space.ranges) and dp not in space.domain("dp", [dp]):
            continue
        etps = space.domain("etp", sorted({1, tp})) if m.moe else [tp]
        layouts = [(v, None) for v in (space.default_domain("vpp") if pp > 1 else [1])]
        if space.allow_uneven_stages and 1 in [v for v, _ in layouts]:
            layouts += [(1, s) for s in uneven_splits(m.num_layers, pp)]
        if "layers_per_stage" in space.fixed or "layers_per_stage" in space.ranges:
            layouts = [(1, tuple(s)) for s in space.domain("layers_per_stage", [])]
        for ep, etp, (vpp, stages), mbs, sp, (sharding, size), (recompute, modules, k), (precision, recipe), optimizer, \
                offload, schedule, cp_comm, host in itertools.product(
                    eps, etps, layouts, space.default_domain("micro_batch_size"),
                    space.default_domain("sequence_parallel"), shardings, recomputes,
                    precisions, space.default_domain("optimizer"),
                    space.default_domain("offload"), schedules, cp_comms, offloads):
            try:
                plan = Plan(tp=tp, pp=pp, dp=dp, cp=cp, cp_comm=cp_comm, ep=ep, etp=etp, vpp=vpp, micro_batch_size=mbs,
                            sequence_parallel=sp, sharding=sharding, hsdp_shard_size=size, recompute=recompute,
                            recompute_modules=modules, recompute_layers=k, precision=precision, fp8_recipe=recipe,
                            optimizer=optimizer,
                            offload=offload, offload_activations=host, schedule=schedule, layers_per_stage=stages,
                            **space.settings())
            except ValueError:
                continue
            if _conventional(space, plan) and not structural_violations(
                    m, c, plan, w, allow_cross_domain=space.allow_cross_domain):
                out.append(plan)
    return out


def _conventional(space: SearchSpace, plan: Plan) -> bool:
    """The space's own conventions (`solver.space` docstring) that are not rules of `check`."""
    m, w = space.model, space.workload
    sp_possible = plan.tp > 1 and (w.seq_len // plan.cp) % plan.tp == 0
    if "sequence_parallel" not in space.fixed and "sequence_parallel" not in space.ranges \
            and plan.sequence_parallel != sp_possible:
        return False
    if plan.sharding != "none" and plan.dp * plan.cp == 1 and plan.offload == "none":
        return False
    if plan.cp == 1 and plan.cp_comm != "p2p":  # no context parallelism: one way to say so
        return False
    if plan.sharding == "hsdp" and not 1 < (plan.hsdp_shard_size or 0) < plan.dp * plan.cp:
        return False
    if plan.recompute_layers is not None:
        depth = max(plan.layers_per_stage) if plan.layers_per_stage else -(-m.num_layers // (plan.pp * plan.vpp))
        if plan.recompute_layers >= depth:  # every layer: the plain full recompute
            return False
    return True


def oracle(model: ModelSpec, cluster: ClusterSpec, workload: Workload, *,
           objective: Sequence[str] | Mapping[str, float] = ("throughput",),
           tolerance: float = 0.0, fixed: Mapping[str, Any] | None = None, ranges: Mapping[str, Any] | None = None,
           allow_uneven_stages: bool = True, allow_cross_domain: bool = False, allow_partial_recompute: bool = True,
           min_tokens_per_s: float | None = None,
           top_k: int = 0, brute_force: bool = True, price_per_gpu_hour: float | None = None,
           runtime: RuntimeAllowance | None = None) -> OracleResult | None:
    """The optimum (and the best plans of the next ``top_k`` layouts) by exhaustive enumeration, for a
    lexicographic (a list) or weighted (a dict) ``objective`` on one cluster size; None when no plan is
    feasible."""
    started = time.perf_counter()
    space = SearchSpace(model, cluster, workload, fixed=dict(fixed or {}), ranges=dict(ranges or {}),
                        allow_uneven_stages=allow_uneven_stages, allow_cross_domain=allow_cross_domain,
                        allow_partial_recompute=allow_partial_recompute)
    if brute_force:
        plans = _raw_plans(space)
        if not plans:
            return None
        arrays = PlanArrays.from_plans(plans)
        layout = np.unique(np.array([hash((p.tp, p.pp, p.dp, p.cp, p.ep, p.etp, p.vpp, p.layers_per_stage))
                                     for p in plans]), return_inverse=True)[1].reshape(-1)
    else:
        arrays, layout = enumerate_with_structure(space)
        if len(arrays) == 0:
            return None
        arrays, layout = _every_depth(space, arrays, layout)
    result = evaluate(model, cluster, workload, arrays, runtime=runtime)
    candidates = Candidates(arrays, result, np.full(len(arrays), cluster.total_gpus, dtype=np.int64), layout)
    price = gpu_hour_price(cluster, price_per_gpu_hour, required=False)
    crit = criteria(candidates, price)
    feasible = result.fits & np.isfinite(result.time.step)
    if min_tokens_per_s is not None:
        feasible &= result.tokens_per_s >= min_tokens_per_s
    rows = []
    open_rows = np.flatnonzero(feasible)
    for _ in range(top_k + 1):
        if len(open_rows) == 0:
            break
        best = _best(crit, objective, tolerance, open_rows)
        rows.append(best)
        open_rows = open_rows[layout[open_rows] != layout[best]]
    if not rows:
        return None
    return OracleResult(rows, candidates, crit, feasible, time.perf_counter() - started)


def _every_depth(space: SearchSpace, plans: PlanArrays, layout: np.ndarray) -> tuple[PlanArrays, np.ndarray]:
    """The plans plus every partial full-recompute depth of each full-recompute plan."""
    if "recompute_layers" in space.fixed or not space.workload.training or not space.allow_partial_recompute:
        return plans, layout
    full = np.flatnonzero((plans.recompute == code("recompute", "full")) & (plans.recompute_layers == ALL_LAYERS))
    even = -(-space.model.num_layers // (plans.pp * plans.vpp))
    depth = even if plans.layers_per_stage is None else np.where(plans.layers_per_stage.max(axis=1) > 0,
                                                                 plans.layers_per_stage.max(axis=1), even)
    counts = np.maximum(depth[full] - 1, 0)
    parents = np.repeat(full, counts)
    if len(parents) == 0:
        return plans, layout
    extra = plans.take(parents)
    extra.recompute_layers = np.concatenate([np.arange(1, c + 1) for c in counts if c]).astype(np.int64)
    return PlanArrays.concat([plans, extra]), np.concatenate([layout, layout[parents]])


def _best(crit: Criteria, objective: Sequence[str] | Mapping[str, float], tolerance: float, rows: np.ndarray) -> int:
    """The optimum over ``rows``, with the solver's tolerance, weighting and tie-break semantics."""
    if isinstance(objective, Mapping):
        score = weighted_score(crit, dict(objective), rows)
        rows = rows[score == score.min()]
    else:
        for i, name in enumerate(objective):
            column = crit.column(name)[rows]
            best = int(column.min())
            bound = int(np.floor(best * (1 + tolerance))) if i < len(objective) - 1 and best > 0 else best
            rows = rows[column <= bound]
    tie_breaks = [name for name in ("simplicity", "throughput", "memory_headroom") if name not in objective]
    if not isinstance(objective, Mapping) and tolerance > 0:
        tie_breaks += list(objective[:-1])  # the banded objectives exactly, last
    for name in tie_breaks:
        column = crit.column(name)[rows]
        rows = rows[column == column.min()]
    return int(rows[np.argmin(crit.tie_rank(rows))])
