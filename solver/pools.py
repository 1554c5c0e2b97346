"""`solve_pools(model, pooled, workload)`: one model trained across the pools of a heterogeneous cluster.
This module's layout is data-parallel across the pools of a
heterogeneous cluster (`hardware.PooledCluster`) — each pool runs replicas of its own layout (its own tp,
pp, micro-batch, sharding … on its own GPUs) on its share of every global batch, and the pools then
all-reduce their gradients over the link between them.

Step time of a split (b₁ … b_k sequences, Σ bᵢ = B, a pool with bᵢ = 0 idle):
    max over used pools of tᵢ(bᵢ) + 2·(k′ − 1)/k′ · Ψ·4 B / B_link + 2·(k′ − 1)·α
where tᵢ(bᵢ) is pool i's best step on bᵢ sequences (its own gradient reduction and optimizer update
included: the throughput optimum of `solve` there), k′ the pools used, Ψ the parameters, 4 bytes per fp32
gradient, B_link the link's bandwidth per direction and α its latency — a ring all-reduce across the pools
(Thakur et al. 2005), after the pools' own reductions and before their updates, not overlapped.

The search factors like `solver.placement`: per pool a table of tᵢ on the shares 0, u, 2u, … B (u = B/8,
or B over its largest divisor ≤ 8), then CP-SAT chooses one share per pool with Σ = B, minimising the
step time above, then the sum of the pools' steps, then the shares in pool order (larger first for the
pools listed first). `brute_force` checks it in the tests.

The other layout, pipeline stages across the pools (`solver.pool_pipeline`), is searched beside this one;
`solve_pools` returns the faster (``layouts`` restricts it to one) and says what the other would take.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Literal

from pydantic import BaseModel, ConfigDict

from parallelplan.constraints import Efficiency, RuntimeAllowance, Workload
from parallelplan.constraints.peft import trained_parameters
from parallelplan.hardware import PooledCluster
from parallelplan.models import ModelSpec
from parallelplan.solver.candidates import best_feasible_step
from parallelplan.solver.cpsat import Model
from parallelplan.solver.errors import Infeasible, SolverInputError
from parallelplan.solver.model import best_combination, minimize_in_turn, one_per_table
from parallelplan.solver.objectives import nanoseconds
from parallelplan.solver.pool_pipeline import MAX_PIPELINE_POOLS, PoolPipeline, best_pool_pipeline, link_latency
from parallelplan.solver.search import solve
from parallelplan.solver.solution import Solution
from parallelplan.solver.space import SearchSpace

SHARE_STEPS = 8
"""Global-batch shares per pool are multiples of B / (the largest divisor of B up to this)."""
GRADIENT_BYTES = 4
"""Bytes per parameter the pools exchange: fp32 gradients (Megatron-Core's default reduction dtype)."""


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True)


class PoolShare(_Frozen):
    """A pool's part: its sequences per step, its plan there (None when idle), and its table (best step in
    seconds per share of sequences; None where no plan fits)."""

    pool: str
    gpus: int
    sequences: int
    solution: Solution | None
    table: dict[int, float | None]


LAYOUTS = ("data_parallel", "pipeline")
"""How one model spans the pools: the batch split over them (this module) or its layers (`solver.pool_pipeline`)."""


class PooledSolution(_Frozen):
    """The faster layout across the pools. ``data_parallel``: ``shares`` holds the split and the pools'
    plans, ``step_time_s`` = the slowest used pool's step + ``sync_s`` (the gradient all-reduce across
    pools). ``pipeline``: ``pipeline`` holds the stages per pool (``shares`` empty, ``sync_s`` 0).
    ``optimal``: the layout's search is exact (CP-SAT proved every stage over the tables, or the
    pipeline enumeration is exhaustive); ``alternatives``: the best step of each layout searched (None
    where none fits)."""

    cluster: PooledCluster
    workload: Workload
    layout: Literal["data_parallel", "pipeline"]
    shares: tuple[PoolShare, ...]
    pipeline: PoolPipeline | None
    step_time_s: float
    sync_s: float
    tokens_per_s: float
    optimal: bool
    alternatives: dict[str, float | None]
    solve_time_s: float
    explanation: tuple[str, ...]


def batch_shares(batch: int, steps: int = SHARE_STEPS) -> list[int]:
    """0, u, 2u, … batch with u = batch / (its largest divisor ≤ ``steps``)."""
    divisor = max(d for d in range(1, steps + 1) if batch % d == 0)
    unit = batch // divisor
    return [unit * i for i in range(divisor + 1)]


def sync_time_ns(model: ModelSpec, pooled: PooledCluster, used: int, workload: Workload,
                 efficiency: Efficiency | None = None) -> int:
    """The cross-pool gradient all-reduce of ``used`` pools, in nanoseconds (module docstring): of the
    parameters that train (`peft.trained_parameters`: a PEFT run's adapters only)."""
    if used < 2:
        return 0
    alpha = link_latency(pooled, efficiency)
    trained = trained_parameters(model, workload.peft)
    return nanoseconds(2 * (used - 1) / used * trained * GRADIENT_BYTES / pooled.link.bandwidth
                       + 2 * (used - 1) * alpha)


def share_table(model: ModelSpec, pooled: PooledCluster, workload: Workload, pool: int, shares: Sequence[int], *,
                fixed: dict | None = None, ranges: dict | None = None, efficiency: Efficiency | None = None,
                runtime: RuntimeAllowance | None = None) -> dict[int, int | None]:
    """Pool ``pool``'s best feasible step in nanoseconds on each share of sequences within the pins and
    ranges (0 for an idle pool, None where no plan fits)."""
    out: dict[int, int | None] = {}
    for b in shares:
        if b == 0:
            out[b] = 0
            continue
        space = SearchSpace(model, pooled.pools[pool].cluster, workload.model_copy(update={"global_batch_size": b}),
                            fixed=dict(fixed or {}), ranges=dict(ranges or {}))
        best = best_feasible_step(space, efficiency=efficiency, runtime=runtime)
        out[b] = None if best is None else nanoseconds(best)
    return out


def _key(steps: Sequence[int], shares: Sequence[int], sync: Mapping[int, int], batch: int) -> tuple[int, int, int]:
    """The lexicographic criteria of a split (module docstring); the last prefers larger shares for the
    pools listed first (one answer per request)."""
    used = sum(b > 0 for b in shares)
    code = 0
    for b in shares:
        code = code * (batch + 1) + (batch - b)
    return max(steps) + sync[used], sum(steps), code


def brute_force(tables: Sequence[Mapping[int, int | None]], sync: Mapping[int, int], batch: int) -> tuple[int, ...] | None:
    """Every split of ``batch`` over the tables' shares, the best by `_key` (the tests' reference)."""
    return best_combination(tables, lambda shares: sum(shares) == batch,
                            lambda shares, steps: _key(steps, shares, sync, batch))


def choose(tables: Sequence[Mapping[int, int | None]], sync: Mapping[int, int], batch: int, *,
           time_limit_s: float = 30.0) -> tuple[tuple[int, ...], bool] | None:
    """CP-SAT's share per pool (module docstring) and whether every stage was proved; None when no split fits."""
    model = Model()
    built = one_per_table(model, tables)
    if built is None:
        return None
    choices, slowest = built
    model.linear([(x, b) for c in choices for b, _, x in c], batch, batch)
    counts = {k: model.bool_var() for k in range(1, len(tables) + 1)}  # how many pools are used
    model.exactly_one(counts.values())
    model.linear([(z, k) for k, z in counts.items()] + [(x, -1) for c in choices for b, _, x in c if b > 0], 0, 0)
    code = [(x, (batch + 1) ** (len(tables) - 1 - p) * (batch - b)) for p, c in enumerate(choices) for b, _, x in c]
    stages = [[(slowest, 1)] + [(z, sync[k]) for k, z in counts.items()], [(x, s) for c in choices for _, s, x in c], code]
    solved = minimize_in_turn(model, stages, time_limit_s)
    if solved is None:
        return None
    result, proved = solved
    return tuple(next(b for b, _, x in c if result.solution[x]) for c in choices), proved


def solve_pools(model: ModelSpec, pooled: PooledCluster, workload: Workload, *, fixed: dict | None = None,
                ranges: dict | None = None, efficiency: Efficiency | None = None,
                runtime: RuntimeAllowance | None = None, time_limit_s: float = 30.0,
                layouts: Sequence[str] = LAYOUTS) -> PooledSolution:
    """The faster of the ``layouts`` across the pools: the best split of the global batch with each pool's
    plan (module docstring), or the best pipeline across them (`solver.pool_pipeline`); `Infeasible` when
    neither fits. ``fixed`` and ``ranges`` (as `solve` takes them) hold for every pool's plan; with the
    pipeline, degree pins apply to each pool's block and dp to both (`pool_pipeline.pipeline_space`)."""
    started = time.perf_counter()
    if not workload.training:
        raise SolverInputError("solve_pools plans training across pools; serve each pool on its own (`plan solve` "
                               "with one pool's cluster)")
    unknown = sorted(set(layouts) - set(LAYOUTS))
    if unknown or not layouts:
        raise SolverInputError(f"layouts: {unknown[0] if unknown else 'none given'} is not a layout; use "
                               f"{', '.join(LAYOUTS)}")
    batch = workload.global_batch_size
    shares = batch_shares(batch)
    split = tables = None
    if "data_parallel" in layouts:
        tables = [share_table(model, pooled, workload, i, shares, fixed=fixed, ranges=ranges, efficiency=efficiency,
                              runtime=runtime) for i in range(len(pooled.pools))]
        sync = {k: sync_time_ns(model, pooled, k, workload, efficiency) for k in range(0, len(pooled.pools) + 1)}
        split = choose(tables, sync, batch, time_limit_s=time_limit_s)
    piped = (best_pool_pipeline(model, pooled, workload, fixed=fixed, ranges=ranges, efficiency=efficiency,
                                runtime=runtime) if "pipeline" in layouts else None)
    split_step = None if split is None else _key([tables[i][b] for i, b in enumerate(split[0])], split[0], sync, batch)[0] / 1e9
    alternatives = {"data_parallel": split_step, "pipeline": None if piped is None else piped.step_time_s}
    if split is None and piped is None:
        raise _infeasible(model, pooled, batch, shares, tables, layouts)
    if split is None or (piped is not None and piped.step_time_s < split_step):
        return _pipelined(pooled, workload, piped, alternatives, started)
    return _split(model, pooled, workload, split, tables, sync, shares, alternatives, dict(fixed or {}), dict(ranges or {}),
                  efficiency, runtime, time_limit_s, started)


def _infeasible(model: ModelSpec, pooled: PooledCluster, batch: int, shares: Sequence[int],
                tables: Sequence[Mapping[int, int | None]] | None, layouts: Sequence[str]) -> Infeasible:
    conflicts, lines = [f"memory of {model.name} on each pool"], []
    if tables is not None:
        fits = [f"{p.name}: {', '.join(str(b) for b, s in t.items() if b and s is not None) or 'none'}"
                for p, t in zip(pooled.pools, tables, strict=True)]
        lines.append(f"no split of {batch} sequences over the pools of {pooled.name} with every pool used fitting "
                     f"(the shares, in sequences, each pool fits: {'; '.join(fits)})")
        conflicts.append(f"global batch {batch} in steps of {shares[1]}")
    if "pipeline" in layouts:
        lines.append("no pipeline across the pools fits either" if len(pooled.pools) <= MAX_PIPELINE_POOLS else
                     f"a pipeline spans at most {MAX_PIPELINE_POOLS} pools, this cluster has {len(pooled.pools)}")
    return Infeasible(f"{model.name}: {'; '.join(lines)}", conflicts,
                      ["solve each pool alone (`plan solve` with its cluster) to see why", "add pools or nodes",
                       "a global batch with more divisors"])


def _pipelined(pooled: PooledCluster, workload: Workload, piped: PoolPipeline, alternatives: dict[str, float | None],
               started: float) -> PooledSolution:
    blocks = ", then ".join(f"{s.pool} {sum(s.layers_per_stage)} layers (tp {s.tp}, pp {s.pp})" for s in piped.stages)
    slowest = max(t for s in piped.stages for t in s.microbatch_times_s)
    lines = [f"Pipeline across the pools, best of {piped.plans_priced:,} layouts priced (every order, cut, tp, dp and "
             f"execution choice): {blocks}; dp {piped.dp}, {piped.micro_batches} micro-batches of {piped.micro_batch_size}.",
             f"Step {piped.step_time_s:.3f} s = {piped.micro_batches} x the slowest rank's {slowest * 1e3:.1f} ms per "
             f"micro-batch + the bubble (the other ranks' times once) = {piped.pipeline_s:.3f} s, + {piped.once_s:.3f} s "
             f"gradient reduction and optimizer update; the boundary crosses the link in {piped.link_s * 1e3:.2f} ms "
             "per micro-batch and direction."]
    if alternatives["data_parallel"] is not None:
        lines.append(f"Splitting the batch over the pools instead: {alternatives['data_parallel']:.3f} s.")
    return PooledSolution(cluster=pooled, workload=workload, layout="pipeline", shares=(), pipeline=piped,
                          step_time_s=piped.step_time_s, sync_s=0.0, tokens_per_s=piped.tokens_per_s, optimal=True,
                          alternatives=alternatives, solve_time_s=time.perf_counter() - started, explanation=tuple(lines))


def _split(model: ModelSpec, pooled: PooledCluster, workload: Workload, split: tuple[tuple[int, ...], bool],
           tables: Sequence[Mapping[int, int | None]], sync: Mapping[int, int], shares: Sequence[int],
           alternatives: dict[str, float | None], fixed: dict, ranges: dict, efficiency: Efficiency | None,
           runtime: RuntimeAllowance | None, time_limit_s: float, started: float) -> PooledSolution:
    picked, proved = split
    batch = workload.global_batch_size
    out = []
    for pool, b, table in zip(pooled.pools, picked, tables, strict=True):
        found = None if b == 0 else solve(model, pool.cluster, workload.model_copy(update={"global_batch_size": b}),
                                          fixed=fixed, ranges=ranges, efficiency=efficiency, runtime=runtime,
                                          time_limit_s=time_limit_s)
        out.append(PoolShare(pool=pool.name, gpus=pool.cluster.total_gpus, sequences=b, solution=found,
                             table={k: None if v is None else v / 1e9 for k, v in table.items()}))
    used = [s for s in out if s.solution is not None]
    sync_s = sync[len(used)] / 1e9
    step = max(s.solution.estimate.step_time_s for s in used) + sync_s
    slowest = max(used, key=lambda s: s.solution.estimate.step_time_s)
    lines = [f"{'Proved optimal' if proved else 'Best found within the time limit'} by CP-SAT over each pool's best step "
             f"on shares of {shares[1]} sequences: {', '.join(f'{s.pool} {s.sequences}' for s in out)} of {batch} "
             f"sequences per step.",
             f"Step {step:.3f} s = the slowest pool, {slowest.pool}, {slowest.solution.estimate.step_time_s:.3f} s + the "
             f"gradient all-reduce across {len(used)} pools over the link, {sync_s:.3f} s."]
    lines += [f"{s.pool}: idle — every share it could take makes the step slower." for s in out if s.solution is None]
    if alternatives["pipeline"] is not None:
        lines.append(f"A pipeline across the pools instead: {alternatives['pipeline']:.3f} s.")
    return PooledSolution(cluster=pooled, workload=workload, layout="data_parallel", shares=tuple(out), pipeline=None,
                          step_time_s=step, sync_s=sync_s, tokens_per_s=workload.data_tokens_per_step / step, optimal=proved,
                          alternatives=alternatives, solve_time_s=time.perf_counter() - started, explanation=tuple(lines))
