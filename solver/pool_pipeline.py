"""Pipeline stages across the two pools of a heterogeneous cluster: the model's layers cut into two
contiguous blocks, the first block a pipeline on one pool and the second a pipeline on the other (both
orders tried), each pool using all of its GPUs with its own tensor parallelism and pipeline depth, both
with the same data-parallel degree, micro-batch and execution choices so that every micro-batch flows
through every stage (the layout HetPipe, Park et al. 2020, and Metis, Um et al. 2024, search).

Per micro-batch, rank s of the whole pipeline takes tₛ: its time on its own pool's hardware by the cost
model (`constraints.evaluate.stage_costs`: the formulas that price a homogeneous plan's ranks), except at
the boundary between the pools, which crosses the link: the first pool's last rank sends its forward
activations and the second pool's first rank the gradients back, each dp·b·s·h activations (every
replica's micro-batch, in the activation dtype) over the link's total bandwidth per direction, plus one
hop's latency, in place of the intra-pool send. Then, as `constraints.timing` assembles any pipeline:

    step = m · max tₛ + β · (Σ tₛ − max tₛ) + max over ranks of (exposed gradient reduction and parameter
           gather + optimizer update)

with m micro-batches per replica and β the schedule's bubble factor. A plan fits when every rank fits its
own pool's usable memory (a first-pool rank holds the micro-batches in flight of the whole pipeline
after it).

The space, searched exhaustively (exact over it): every order of the two pools; every data-parallel degree
dp that divides both pools' GPUs over their tp; per pool every tp of the model's widths within a node
(`solver.space.tp_domain`) with pp = GPUs / (tp · dp); every cut (at least one layer per stage); within a
pool the layers as even as possible, the extra ones on its middle stages (`constraints.stages`' default
rule); and the execution choices both pools' spaces offer among: micro-batch, sharding none or ZeRO-1
(Megatron's distributed optimizer; ZeRO-2/3 do not combine with pipelines), recompute none / selective
(the default core-attention set) / full, the workload's precision, sequence parallelism wherever tp > 1,
no offload, the 1F1B schedule. The pricing is factored: a rank's time does not depend on the other pool,
and its memory only through the number of stages after it, so each pool is priced once per (choice, tp,
cut) — its memory once per stages after — and the two tables are joined.

Not modelled: more than two pools in one pipeline (`MAX_PIPELINE_POOLS`), interleaved, zero-bubble or DualPipeV
schedules across pools, context and expert parallelism (cp = ep = 1). No launch target expresses a pipeline
whose stages differ in tensor parallelism or GPU type (Megatron-LM and torchtitan build uniform stages).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
from pydantic import BaseModel, ConfigDict

from parallelplan.constraints import Efficiency, RuntimeAllowance, Workload
from parallelplan.constraints.activations import activation_bytes
from parallelplan.constraints.arrays import PlanArrays, code
from parallelplan.constraints.evaluate import stage_costs
from parallelplan.constraints.memory import micro_batches
from parallelplan.constraints.timing import bubble_factor
from parallelplan.hardware import PooledCluster
from parallelplan.models import ModelSpec
from parallelplan.solver.space import Execution, SearchSpace, executions, materialize, tp_domain, valid_pairs

MAX_PIPELINE_POOLS = 2
"""Pools one pipeline spans (module docstring)."""
SHARDINGS = ("none", "zero1")
RECOMPUTES = ("none", "selective", "full")


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True)


class PoolStages(_Frozen):
    """One pool's block of the pipeline: its tp, its stages' layers, each rank's time per micro-batch
    (seconds, the link included at the boundary) and memory (bytes) against its usable memory."""

    pool: str
    gpus: int
    tp: int
    pp: int
    layers_per_stage: tuple[int, ...]
    microbatch_times_s: tuple[float, ...]
    memory_bytes: tuple[float, ...]
    usable_memory_bytes: float


class PoolPipeline(_Frozen):
    """The best pipeline across the pools (module docstring): the pools in pipeline order and the choices
    they share; ``step_time_s`` = ``pipeline_s`` (m · slowest rank + bubble) + ``once_s`` (the slowest
    rank's gradient reduction, parameter gather and optimizer update); ``link_s`` one send over the link."""

    stages: tuple[PoolStages, ...]
    dp: int
    micro_batch_size: int
    micro_batches: int
    sharding: str
    recompute: str
    precision: str
    step_time_s: float
    pipeline_s: float
    once_s: float
    link_s: float
    tokens_per_s: float
    plans_priced: int


def pipeline_executions(space: SearchSpace) -> list[Execution]:
    """The execution choices of the space that a pipeline across pools takes (module docstring)."""
    shardings = {code("sharding", s) for s in SHARDINGS}
    recomputes = {code("recompute", r) for r in RECOMPUTES}
    out = []
    for e in executions(space):
        selective_default = e.recompute != code("recompute", "selective") or e.recompute_modules == 1
        if (e.sharding in shardings and e.recompute in recomputes and selective_default and not e.zero_bubble
                and not e.v_schedule
                and e.offload == code("offload", "none")):
            out.append(e)
    return out


def _shared_choices(execs: list[Execution]) -> list[int]:
    """The index of each execution's choice the pools share: all of it but sequence parallelism, which
    each pool turns on where its own tp allows (the space's rule)."""
    identity = [replace(e, sequence_parallel=False) for e in execs]
    first = {e: i for i, e in reversed(list(enumerate(identity)))}
    return [first[e] for e in identity]


def even_split(layers: int, stages: int) -> tuple[int, ...]:
    """``layers`` over ``stages`` as evenly as possible, the extra ones on the middle stages."""
    base, extra = divmod(layers, stages)
    low = (stages - extra) // 2
    return tuple(base + (low <= i < low + extra) for i in range(stages))


@dataclass
class _Table:
    """One pool's rows at one position of the pipeline: the key of each row and its priced quantities."""

    choice: np.ndarray  # index into the shared (dp, execution) choices
    tp: np.ndarray
    pp: np.ndarray
    layers: np.ndarray
    slowest: np.ndarray  # max over the pool's ranks of the time per micro-batch (inf: precision unsupported)
    total: np.ndarray  # their sum
    once: np.ndarray  # max over the pool's ranks of the once-per-step time
    memory: np.ndarray  # (rows, len(afters)): the pool's most loaded rank by stages after it (inf: no such row)
    usable: float
    plans: PlanArrays


def _layers(block: int, pp: int, rest: int, first: bool, after: int) -> tuple[int, ...]:
    """The virtual pipeline's stages: a first pool's block then ``after`` stand-in stages holding the rest,
    or one stand-in stage holding the rest then a second pool's block (the stand-ins only place the block:
    its first and last rank, the micro-batches in flight behind it)."""
    return even_split(block, pp) + even_split(rest, after) if first else (rest,) + even_split(block, pp)


@dataclass
class PipelineSpace:
    """What a pipeline across the two pools may use (module docstring), within the pins and ranges: each
    pool's search space, the execution choices both offer, the data-parallel degrees, each pool's tp
    values and pipeline depths."""

    spaces: tuple[SearchSpace, SearchSpace]
    execs: list[Execution]
    dps: list[int]
    tps: tuple[list[int], list[int]]
    pps: tuple[set[int], set[int]]


def pipeline_space(model: ModelSpec, pooled: PooledCluster, workload: Workload, fixed: dict | None = None,
                   ranges: dict | None = None) -> PipelineSpace | None:
    """The space of pipelines across the pools; None where it is empty: more pools than
    `MAX_PIPELINE_POOLS`, serving, or pins outside it (cp, ep, etp, vpp, explicit stages, a schedule but
    1F1B).
    Degree pins apply to each pool's own block (``tp 8``: tp 8 in both), dp to both."""
    if len(pooled.pools) != MAX_PIPELINE_POOLS or not workload.training:
        return None
    spaces = tuple(SearchSpace(model, p.cluster, workload, fixed=dict(fixed or {}), ranges=dict(ranges or {}))
                   for p in pooled.pools)
    first = spaces[0]
    if (any(1 not in first.domain(name, [1]) for name in ("cp", "ep", "vpp"))
            or any(name in first.fixed or name in first.ranges for name in ("etp", "layers_per_stage"))
            or "1f1b" not in first.default_domain("schedule")):
        return None
    shared = set(pipeline_executions(spaces[1]))
    execs = [e for e in pipeline_executions(spaces[0]) if e in shared]
    gpus = [p.cluster.total_gpus for p in pooled.pools]
    dps = [d for d in first.domain("dp", range(1, min(gpus) + 1)) if 1 <= d <= min(gpus) and all(g % d == 0 for g in gpus)]
    tps = tuple([t for t in tp_domain(space) if t <= p.cluster.node.gpus_per_node] for space, p in zip(spaces, pooled.pools, strict=True))
    pps = tuple(set(space.domain("pp", range(1, model.num_layers + 1))) for space in spaces)
    if not execs or not dps or not all(tps):
        return None
    return PipelineSpace(spaces=spaces, execs=execs, dps=dps, tps=tps, pps=pps)


def _structures(model: ModelSpec, gpus: int, tps: Sequence[int], dps: Sequence[int], pps: set[int], first: bool):
    """(virtual structures, (tp, pp, layers) of the pool's block) of one position for every tp, dp and cut."""
    rows, keys = [], []
    for tp, dp in itertools.product(tps, dps):
        if gpus % (tp * dp) or gpus // (tp * dp) not in pps:
            continue
        pp = gpus // (tp * dp)
        for block in range(pp, model.num_layers):
            stages = _layers(block, pp, model.num_layers - block, first, 1)
            rows.append((tp, 1, len(stages), dp, 1, tp, 1, stages))
            keys.append((tp, pp, block))
    return rows, keys


def _block_columns(costs_width: int, pp: np.ndarray, first: bool) -> np.ndarray:
    """(rows, columns) mask of the pool's own ranks in the virtual pipeline."""
    column = np.arange(costs_width)[None, :]
    return (column < pp[:, None]) if first else ((column >= 1) & (column <= pp[:, None]))


def _price(model: ModelSpec, pooled: PooledCluster, workload: Workload, pool: int, first: bool, afters: Sequence[int],
           within: PipelineSpace, efficiency: Efficiency | None, runtime: RuntimeAllowance | None) -> _Table | None:
    """Pool ``pool``'s table at the first or the second position (module docstring); None when it has no row."""
    cluster = pooled.pools[pool].cluster
    space, dps, execs = within.spaces[pool], within.dps, within.execs
    rows, keys = _structures(model, cluster.total_gpus, within.tps[pool], dps, within.pps[pool], first)
    s_idx, e_idx = valid_pairs(space, rows, execs)
    if len(s_idx) == 0:
        return None
    plans = materialize(space, rows, execs, s_idx, e_idx)
    key = np.array(keys, dtype=np.int64)[s_idx]
    dp_index = {dp: i for i, dp in enumerate(dps)}
    shared = np.array(_shared_choices(execs))
    choice = np.array([dp_index[int(d)] for d in plans.dp], dtype=np.int64) * (shared.max() + 1) + shared[e_idx]
    tp, pp, block = key.T
    price = lambda plans, times: stage_costs(model, cluster, workload, plans, efficiency=efficiency,  # noqa: E731
                                             runtime=runtime, times=times)
    usable = (runtime or RuntimeAllowance.default()).usable(cluster)
    # memory first (the cheaper half), by the stages after the block; time only for the rows that fit
    if first:
        memory = np.full((len(plans), len(afters)), np.inf)
        rest = model.num_layers - block
        for i, after in enumerate(afters):
            ok = np.flatnonzero(rest >= after)
            if len(ok) == 0:
                continue
            total = price(_followed_by(plans.take(ok), pp[ok], block[ok], rest[ok], after), False).memory.total
            memory[ok, i] = np.where(_block_columns(total.shape[1], pp[ok], True), total, -np.inf).max(axis=1)
    else:
        total = price(plans, False).memory.total
        memory = np.where(_block_columns(total.shape[1], pp, False), total, -np.inf).max(axis=1)[:, None]
    fits = np.flatnonzero((memory <= usable).any(axis=1))
    if len(fits) == 0:
        return None
    plans, choice, tp, pp, block, memory = plans.take(fits), choice[fits], tp[fits], pp[fits], block[fits], memory[fits]
    costs = price(plans, True)
    mine = _block_columns(costs.layout.valid.shape[1], pp, first)
    link = _link_time(model, pooled, workload, plans, efficiency)
    crossing = np.arange(mine.shape[1])[None, :] == ((pp - 1)[:, None] if first else 1)
    per_microbatch = costs.times.per_microbatch + crossing * (link[:, None] - costs.times.boundary)
    slowest = np.where(costs.supported, np.where(mine, per_microbatch, -np.inf).max(axis=1), np.inf)
    return _Table(choice=choice, tp=tp, pp=pp, layers=block, slowest=slowest,
                  total=np.where(mine, per_microbatch, 0.0).sum(axis=1),
                  once=np.where(mine, costs.times.once, -np.inf).max(axis=1), memory=memory, usable=usable, plans=plans)


def _followed_by(plans: PlanArrays, pp: np.ndarray, block: np.ndarray, rest: np.ndarray, after: int) -> PlanArrays:
    """``plans`` (a first pool's block and one stand-in) with ``after`` stand-in stages behind the block instead."""
    keys, inverse = np.unique(np.stack([block, pp, rest], axis=1), axis=0, return_inverse=True)
    splits = [_layers(int(b), int(p), int(r), True, after) for b, p, r in keys]
    matrix = np.zeros((len(splits), max(map(len, splits))), dtype=np.int64)
    for i, split in enumerate(splits):
        matrix[i, : len(split)] = split
    return replace(plans, pp=pp + after, layers_per_stage=matrix[inverse.reshape(-1)])


def link_latency(pooled: PooledCluster, efficiency: Efficiency | None) -> float:
    """One hop over the link between the pools: its own latency, else the network's (`Efficiency.latency_s`)."""
    return pooled.link.latency or (efficiency or Efficiency.default()).latency_s["inter_node"]


def _link_time(model: ModelSpec, pooled: PooledCluster, workload: Workload, plans: PlanArrays,
               efficiency: Efficiency | None) -> np.ndarray:
    """One send of every replica's micro-batch activations over the link between the pools (module docstring)."""
    sequences = plans.dp * plans.micro_batch_size * workload.sequences_per_example
    sent = sequences * workload.seq_len * model.hidden_size * activation_bytes(plans)
    return sent / pooled.link.bandwidth + link_latency(pooled, efficiency)


def _join(model: ModelSpec, workload: Workload, front: _Table, back: _Table, afters: Sequence[int]) -> tuple[float, int, int, float, float] | None:
    """The fastest feasible pair of rows (a front row, the back row with the same choice, the rest of the
    layers and as many stages as the front row's memory assumed): (step, front row, back row, pipeline, once)."""
    layers = model.num_layers
    span_pp = int(max(front.pp.max(), back.pp.max())) + 1
    encode = lambda choice, pp, block: (choice * span_pp + pp) * (layers + 1) + block  # noqa: E731
    back_key = encode(back.choice, back.pp, back.layers)
    order = np.argsort(back_key, kind="stable")
    sorted_keys = back_key[order]
    best = None
    after_index = {a: i for i, a in enumerate(afters)}
    for after in afters:
        wanted = encode(front.choice, after, layers - front.layers)
        at = np.minimum(np.searchsorted(sorted_keys, wanted), len(sorted_keys) - 1)
        found = sorted_keys[at] == wanted
        if not found.any():
            continue
        f_rows = np.flatnonzero(found)
        b_rows = order[at[found]]
        fits = ((front.memory[f_rows, after_index[after]] <= front.usable)
                & (back.memory[b_rows, 0] <= back.usable))
        if not fits.any():
            continue
        f_rows, b_rows = f_rows[fits], b_rows[fits]
        plans = front.plans.take(f_rows)
        m = micro_batches(plans, workload).astype(float)
        slowest = np.maximum(front.slowest[f_rows], back.slowest[b_rows])
        pipeline = m * slowest + bubble_factor(plans) * (front.total[f_rows] + back.total[b_rows] - slowest)
        once = np.maximum(front.once[f_rows], back.once[b_rows]) if workload.training else np.zeros(len(f_rows))
        step = pipeline + once
        i = int(np.argmin(step))
        if np.isfinite(step[i]) and (best is None or step[i] < best[0]):
            best = (float(step[i]), int(f_rows[i]), int(b_rows[i]), float(pipeline[i]), float(once[i]))
    return best


def best_pool_pipeline(model: ModelSpec, pooled: PooledCluster, workload: Workload, *, fixed: dict | None = None,
                       ranges: dict | None = None, efficiency: Efficiency | None = None,
                       runtime: RuntimeAllowance | None = None) -> PoolPipeline | None:
    """The fastest pipeline across the two pools within the pins and ranges (module docstring, `pipeline_space`);
    None when the space is empty or no pipeline of it fits."""
    within = pipeline_space(model, pooled, workload, fixed, ranges)
    if within is None:
        return None
    best = None
    priced = 0
    for front_pool, back_pool in ((0, 1), (1, 0)):
        back = _price(model, pooled, workload, back_pool, False, [0], within, efficiency, runtime)
        if back is None:
            continue
        afters = sorted({int(v) for v in back.pp})
        front = _price(model, pooled, workload, front_pool, True, afters, within, efficiency, runtime)
        if front is None:
            continue
        priced += len(front.plans) + len(back.plans)
        joined = _join(model, workload, front, back, afters)
        if joined is not None and (best is None or joined[0] < best[0]):
            best = (*joined, (front_pool, back_pool), (front, back))
    if best is None:
        return None
    step, f_row, b_row, pipeline, once, order, (front, back) = best
    return _describe(model, pooled, workload, order, (front, back), (f_row, b_row), step, pipeline, once, priced,
                     efficiency, runtime)


def _describe(model: ModelSpec, pooled: PooledCluster, workload: Workload, order: tuple[int, int],
              tables: tuple[_Table, _Table], rows: tuple[int, int], step: float, pipeline: float, once: float,
              priced: int, efficiency: Efficiency | None, runtime: RuntimeAllowance | None) -> PoolPipeline:
    """The chosen pair of rows re-priced rank by rank for the report (the same numbers the search used)."""
    front, back = tables
    f_row, b_row = rows
    after = int(back.pp[b_row])
    stages = []
    for position, (pool, table, row) in enumerate(zip(order, tables, rows, strict=True)):
        first = position == 0
        plans = table.plans.take(np.array([row]))
        block, pp = int(table.layers[row]), int(table.pp[row])
        if first:
            plans = _followed_by(plans, table.pp[[row]], table.layers[[row]], model.num_layers - table.layers[[row]], after)
        cluster = pooled.pools[pool].cluster
        costs = stage_costs(model, cluster, workload, plans, efficiency=efficiency, runtime=runtime)
        columns = range(0, pp) if first else range(1, pp + 1)
        link = float(_link_time(model, pooled, workload, plans, efficiency)[0])
        crossing = pp - 1 if first else 1
        times = [float(costs.times.per_microbatch[0, c] + (link - costs.times.boundary[0, 0]) * (c == crossing))
                 for c in columns]
        stages.append(PoolStages(pool=pooled.pools[pool].name, gpus=cluster.total_gpus, tp=int(table.tp[row]), pp=pp,
                                 layers_per_stage=even_split(block, pp), microbatch_times_s=tuple(times),
                                 memory_bytes=tuple(float(costs.memory.total[0, c]) for c in columns),
                                 usable_memory_bytes=table.usable))
    shared = front.plans.plan(f_row)
    m = int(micro_batches(front.plans.take(np.array([f_row])), workload)[0])
    return PoolPipeline(stages=tuple(stages), dp=shared.dp, micro_batch_size=shared.micro_batch_size, micro_batches=m,
                        sharding=shared.sharding, recompute=shared.recompute, precision=shared.precision,
                        step_time_s=step, pipeline_s=pipeline, once_s=once,
                        link_s=float(_link_time(model, pooled, workload, front.plans.take(np.array([f_row])), efficiency)[0]),
                        tokens_per_s=workload.data_tokens_per_step / step,
                        plans_priced=priced)


def brute_force(model: ModelSpec, pooled: PooledCluster, workload: Workload, *, fixed: dict | None = None,
                ranges: dict | None = None, efficiency: Efficiency | None = None,
                runtime: RuntimeAllowance | None = None) -> float | None:
    """The best step of the module's space the slow way, the tests' and the benchmark's reference: every
    layout priced as one whole pipeline (no stand-ins) on each pool's hardware with that pool's tp, each
    rank taken from its own pool and the step assembled rank by rank; None when nothing fits."""
    within = pipeline_space(model, pooled, workload, fixed, ranges)
    if within is None:
        return None
    layers, spaces, execs = model.num_layers, within.spaces, within.execs
    gpus = [p.cluster.total_gpus for p in pooled.pools]
    alpha = link_latency(pooled, efficiency)
    best = None
    for a, b in ((0, 1), (1, 0)):
        for dp, tp_a, tp_b in itertools.product(within.dps, within.tps[a], within.tps[b]):
            if gpus[a] % (tp_a * dp) or gpus[b] % (tp_b * dp):
                continue
            pp_a, pp_b = gpus[a] // (tp_a * dp), gpus[b] // (tp_b * dp)
            if pp_a not in within.pps[a] or pp_b not in within.pps[b]:
                continue
            for cut in range(pp_a, layers - pp_b + 1):
                stages = even_split(cut, pp_a) + even_split(layers - cut, pp_b)
                priced = []
                for pool, tp in ((a, tp_a), (b, tp_b)):
                    row = (tp, 1, pp_a + pp_b, dp, 1, tp, 1, stages)
                    s_idx, e_idx = valid_pairs(spaces[pool], [row], execs)
                    if len(s_idx) == 0:
                        break
                    plans = materialize(spaces[pool], [row], execs, s_idx, e_idx)
                    costs = stage_costs(model, pooled.pools[pool].cluster, workload, plans, efficiency=efficiency,
                                        runtime=runtime)
                    by_choice = {replace(execs[e], sequence_parallel=False): k for k, e in enumerate(e_idx)}
                    priced.append((by_choice, plans, costs))
                if len(priced) < 2:
                    continue
                (front_rows, plans, front), (back_rows, _, back) = priced
                for choice in front_rows.keys() & back_rows.keys():
                    i, j = front_rows[choice], back_rows[choice]
                    mbs = int(plans.micro_batch_size[i])
                    sent = dp * mbs * workload.sequences_per_example * workload.seq_len * model.hidden_size
                    link = sent * float(activation_bytes(plans)[i]) / pooled.link.bandwidth + alpha
                    ranks = [(front, i, s) for s in range(pp_a)] + [(back, j, s) for s in range(pp_a, pp_a + pp_b)]
                    if not (front.supported[i] and back.supported[j]
                            and all(c.memory.total[r, s] <= c.usable_memory for c, r, s in ranks)):
                        continue
                    times = [float(c.times.per_microbatch[r, s]) for c, r, s in ranks]
                    times[pp_a - 1] += link - float(front.times.boundary[i, 0])
                    times[pp_a] += link - float(back.times.boundary[j, 0])
                    once = max(float(c.times.once[r, s]) for c, r, s in ranks)
                    m = max(workload.global_batch_size // (dp * mbs), 1)
                    step = m * max(times) + (sum(times) - max(times)) + once
                    best = step if best is None else min(best, step)
    return best
