"""The cost model over many plans at once: `evaluate(model, cluster, workload, plans)` → arrays.

`estimate` (one plan, with notes) runs exactly this on a batch of one, so the two cannot disagree.
Per-stage quantities are (n, C) arrays over each plan's rank classes (`constraints.stages`); plans are
evaluated in groups of equal pp so that a pp = 1 plan does not pay for another plan's stage layout, small
depths merged (`GROUP_ROWS`) so that a group's fixed cost is not paid per depth (every row's arithmetic
is the same whatever its batch, so the grouping changes no number).
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields, is_dataclass

import numpy as np

from parallelplan.constraints.arrays import PlanArrays
from parallelplan.constraints.compute import layer_times
from parallelplan.constraints.efficiency import Efficiency
from parallelplan.constraints.generation import decode_time
from parallelplan.constraints.memory import (
    ClassMemory,
    MemoryArrays,
    class_memory,
    concurrent_sequences,
    kv_cache_bytes_per_token_layer,
)
from parallelplan.constraints.peft import adapter_bytes_per_param, adapters, peft_params
from parallelplan.constraints.peft import training_flops_per_token as peft_training_flops
from parallelplan.constraints.plan import PRECISIONS, Plan, Workload
from parallelplan.constraints.runtime import RuntimeAllowance
from parallelplan.constraints.stages import StageLayout, stage_layout, stage_params
from parallelplan.constraints.states import bytes_per_param, shard_divisors
from parallelplan.constraints.structure import attention_keys, model_facts
from parallelplan.constraints.timing import ClassTimes, StepTimes, class_times, step_times
from parallelplan.hardware import ClusterSpec
from parallelplan.models import ModelSpec


@dataclass
class Evaluation:
    """Cost-model outputs for n plans ((n,) arrays)."""

    memory: MemoryArrays
    time: StepTimes
    usable_memory: float
    fits: np.ndarray
    """Fits the GPU (``memory.total`` within ``usable_memory``) and the host (``host_bytes_per_node``
    within the node's host memory, where the cluster gives it)."""
    host_bytes_per_node: np.ndarray
    """Host memory the plan's offloading takes on one node: the most loaded stage's host bytes per GPU
    times the node's GPUs (an upper bound when a node holds several stages)."""
    tokens_per_s: np.ndarray
    model_flops_per_step: float
    model_tflops_per_gpu: np.ndarray
    mfu: np.ndarray
    """Model FLOP/s per GPU over the GPU's bf16 dense peak (`GPUSpec.mfu_peak_flops`), for every precision."""
    precision_peak_utilization: np.ndarray
    """Model FLOP/s per GPU over the dense peak of the plan's own precision (``peak_flops``)."""
    peak_flops: np.ndarray


def evaluate(
    model: ModelSpec,
    cluster: ClusterSpec,
    workload: Workload,
    plans: PlanArrays | Sequence[Plan],
    *,
    efficiency: Efficiency | None = None,
    runtime: RuntimeAllowance | None = None,
) -> Evaluation:
    """Memory, step time, fit and throughput of every plan (the module docstring's formulas), one row each."""
    return _grouped(_evaluate, model, cluster, workload, plans, efficiency, runtime)


def peak_memory(
    model: ModelSpec,
    cluster: ClusterSpec,
    workload: Workload,
    plans: PlanArrays | Sequence[Plan],
    *,
    runtime: RuntimeAllowance | None = None,
) -> MemoryArrays:
    """The memory half of `evaluate` alone (the same numbers), for searches that only ask what fits."""
    return _grouped(_memory, model, cluster, workload, plans, None, runtime)


PARALLEL_ROWS = 100_000
"""Batches at least this large are split over the machine's cores (numpy releases the GIL in its array
loops, so threads run them in parallel; each row's arithmetic is unchanged)."""


def memory_fits(memory: MemoryArrays, cluster: ClusterSpec, usable: float) -> np.ndarray:
    """The plans whose GPU memory fits ``usable`` bytes and whose offloading fits the node's host memory
    (every GPU of the node at the busiest stage's host bytes; not checked where the cluster does not give
    its host memory)."""
    host_capacity = cluster.node.host_memory_bytes or np.inf
    return (memory.total <= usable) & (memory.host * cluster.node.gpus_per_node <= host_capacity)


def _grouped(function, model, cluster, workload, plans, efficiency, runtime):
    p = plans if isinstance(plans, PlanArrays) else PlanArrays.from_plans(plans)
    if len(p) == 0:
        raise ValueError("evaluate needs at least one plan")
    eff = efficiency or Efficiency.default()
    rt = runtime or RuntimeAllowance.default()
    workers = min(os.cpu_count() or 1, 8)
    if len(p) >= PARALLEL_ROWS and workers > 1:
        chunks = np.array_split(np.arange(len(p)), workers)
        with ThreadPoolExecutor(workers) as pool:
            parts = list(pool.map(lambda rows: _by_depth(function, model, cluster, workload, p.take(rows), eff, rt), chunks))
        return _scatter(parts, chunks, len(p))
    return _by_depth(function, model, cluster, workload, p, eff, rt)


GROUP_ROWS = 16384
"""Depth groups smaller than this are priced together (each group is one pass of the whole model, whose
fixed cost dominates small groups; together they pay for the largest stage layout among them instead)."""


def _depth_groups(p: PlanArrays) -> list[np.ndarray]:
    """The rows of each pipeline depth, the small depths (under `GROUP_ROWS` rows) merged in order of
    depth until each merged group reaches it."""
    groups: list[np.ndarray] = []
    pending: list[np.ndarray] = []
    for depth in np.unique(p.pp):
        rows = np.flatnonzero(p.pp == depth)
        if len(rows) >= GROUP_ROWS:
            groups.append(rows)
            continue
        pending.append(rows)
        if sum(map(len, pending)) >= GROUP_ROWS:
            groups.append(np.concatenate(pending))
            pending = []
    if pending:
        groups.append(np.concatenate(pending))
    return groups


def _by_depth(function, model, cluster, workload, p, eff, rt):
    groups = _depth_groups(p)
    if len(groups) == 1:
        return function(model, cluster, workload, p, eff, rt)
    parts = [function(model, cluster, workload, p.take(rows), eff, rt) for rows in groups]
    return _scatter(parts, groups, len(p))


def _scatter(parts: list, groups: list[np.ndarray], n: int):
    """Reassemble per-group results (dataclasses of (k,) arrays and scalars) into one of n rows."""
    first = parts[0]
    if is_dataclass(first):
        return type(first)(**{f.name: _scatter([getattr(x, f.name) for x in parts], groups, n) for f in fields(first)})
    if isinstance(first, np.ndarray):
        out = np.empty((n, *first.shape[1:]), dtype=first.dtype)
        for part, rows in zip(parts, groups, strict=True):
            out[rows] = part
        return out
    return first  # a scalar shared by every group


def _memory(model: ModelSpec, cluster: ClusterSpec, workload: Workload, p: PlanArrays, eff: Efficiency,
            rt: RuntimeAllowance) -> MemoryArrays:
    return _Structure(model, cluster, workload, p, rt).memory


class _Structure:
    """What one depth group of plans is, whatever the efficiency factors: its stage layout, parameters,
    bytes per parameter, shard divisors, memory and attention spans; `step_times` prices it."""

    def __init__(self, model: ModelSpec, cluster: ClusterSpec, workload: Workload, p: PlanArrays, rt: RuntimeAllowance,
                 merge: bool = True):
        self.cluster, self.workload, self.p = cluster, workload, p
        self.f = f = model_facts(model)
        self.layout = stage_layout(f, p, train_mtp=workload.train_mtp, merge=merge)
        self.params = stage_params(f, p, self.layout)
        self.div = shard_divisors(p)
        if workload.peft is None:
            self.peft = None
            self.per = bytes_per_param(p, f.factored_states)
        else:  # the adapters train, the base is frozen (constraints.peft)
            self.peft = peft_params(f, adapters(f, workload.peft), p, self.layout, self.params)
            self.per = adapter_bytes_per_param(p, f.factored_states)
        kv_latent = (model.mla.kv_lora_rank + model.mla.qk_rope_head_dim) if model.mla else 0
        self.class_memory = class_memory(f, cluster, p, workload, rt, self.layout, self.params, self.per, self.div,
                                         kv_latent=kv_latent, kv_head_dim=model.head_dim or 0, peft=self.peft)
        self.kv_per_token_layer = kv_cache_bytes_per_token_layer(f, p, kv_latent, model.head_dim or 0)
        self.memory = self.class_memory.worst(self.layout)
        self.keys = attention_keys(model, workload.attention_span, causal=True)
        # a precision the GPU lacks cannot run: infinite step time, no throughput (rules.precision_supported)
        self.peaks = np.array([cluster.gpu.peak_flops.get(name, np.nan) for name in PRECISIONS])[p.precision]

    def _inputs(self, eff: Efficiency) -> tuple:
        times = layer_times(self.f, self.cluster.gpu, eff, self.p, self.workload, self.keys)
        return self.f, self.cluster, eff, self.p, self.workload, self.layout, self.params, times, self.per, self.div

    def step_times(self, eff: Efficiency) -> StepTimes:
        decode = None
        if self.workload.output_len:
            decode = decode_time(self.f, self.cluster, eff, self.p, self.workload, self.layout, self.params, self.div,
                                 self.kv_per_token_layer)
        step = step_times(*self._inputs(eff), peft=self.peft, decode=decode)
        step.step = np.where(np.isfinite(self.peaks), step.step, np.inf)
        return step

    def class_times(self, eff: Efficiency) -> ClassTimes:
        return class_times(*self._inputs(eff), peft=self.peft)


@dataclass
class StageCosts:
    """Every pipeline rank of n plans priced on its own, (n, P) arrays (column i: rank i, ``layout.valid``
    where the plan has it): what a pipeline whose ranks sit on different hardware is assembled from
    (`solver.pool_pipeline`)."""

    layout: StageLayout
    times: ClassTimes | None
    memory: ClassMemory
    usable_memory: float
    supported: np.ndarray
    """(n,) whether the GPU runs the plan's precision."""


def stage_costs(model: ModelSpec, cluster: ClusterSpec, workload: Workload, plans: PlanArrays, *,
                efficiency: Efficiency | None = None, runtime: RuntimeAllowance | None = None,
                times: bool = True) -> StageCosts:
    """The per-rank times (unless ``times`` is False) and memory of ``plans`` on ``cluster``: the same
    formulas as `evaluate`, before they are reduced to the critical rank."""
    rt = runtime or RuntimeAllowance.default()
    structure = _Structure(model, cluster, workload, plans, rt, merge=False)
    priced = structure.class_times(efficiency or Efficiency.default()) if times else None
    return StageCosts(layout=structure.layout, times=priced,
                      memory=structure.class_memory, usable_memory=rt.usable(cluster),
                      supported=np.isfinite(structure.peaks))


@dataclass
class GenerationWaves:
    """A generation workload's step time and peak memory per GPU at several sequences-at-once per replica,
    (n, K) arrays (column k: ``concurrencies[k]``), and whether each fits."""

    step: np.ndarray
    total: np.ndarray
    fits: np.ndarray


def generation_waves(model: ModelSpec, cluster: ClusterSpec, workload: Workload, plans: PlanArrays | Sequence[Plan],
                     concurrencies: Sequence[int], *, efficiency: Efficiency | None = None,
                     runtime: RuntimeAllowance | None = None) -> GenerationWaves:
    """`evaluate`'s step time and memory of a generation workload (kind inference, ``output_len`` > 0) with
    ``max_concurrency`` set to each of ``concurrencies``: the same numbers, the plans' structure priced once,
    since only the decode (`constraints.generation`) and the KV cache (one wave's) change with it."""
    if workload.kind != "inference" or not workload.output_len:
        raise ValueError("generation_waves prices a generation workload: kind inference with output_len > 0")
    return _grouped(functools.partial(_waves, concurrencies=tuple(concurrencies)), model, cluster, workload, plans,
                    efficiency, runtime)


def _waves(model: ModelSpec, cluster: ClusterSpec, workload: Workload, p: PlanArrays, eff: Efficiency,
           rt: RuntimeAllowance, concurrencies: tuple[int, ...]) -> GenerationWaves:
    structure = _Structure(model, cluster, workload, p, rt)
    base = structure.step_times(eff)
    prefill = base.step - base.decode
    classes = structure.class_memory
    held = concurrent_sequences(p, workload)[:, None].astype(float)
    steps, totals = [], []
    for concurrency in concurrencies:
        wave = workload.model_copy(update={"max_concurrency": concurrency})
        decode = decode_time(structure.f, cluster, eff, p, wave, structure.layout, structure.params, structure.div,
                             structure.kv_per_token_layer)
        kv = classes.kv_cache * concurrent_sequences(p, wave)[:, None] / held
        steps.append(prefill + decode)
        totals.append((classes.total - classes.kv_cache + kv).max(axis=1))
    step, total = np.stack(steps, axis=1), np.stack(totals, axis=1)
    return GenerationWaves(step=step, total=total, fits=total <= rt.usable(cluster))


def decode_step_function(model: ModelSpec, cluster: ClusterSpec, plan: Plan, context: int, *, fed: int = 1,
                         efficiency: Efficiency | None = None,
                         runtime: RuntimeAllowance | None = None) -> Callable[[int], float]:
    """One decode step of g sequences per replica of ``plan`` at a cache of ``context`` tokens, as a
    function of g alone, the plan's structure priced once: the same number as `evaluate(...).time.decode`
    of kind inference, seq_len context − 1, output_len 2 (one step), global batch g·dp — what the serving
    model asks at every concurrency it tries (`constraints.serving`); ``fed`` tokens of each sequence per
    step (speculative decoding's verification, `constraints.generation`)."""
    eff, rt = efficiency or Efficiency.default(), runtime or RuntimeAllowance.default()
    work = Workload(kind="inference", seq_len=context - 1, output_len=2, global_batch_size=plan.dp)
    s = _Structure(model, cluster, work, PlanArrays.from_plans([plan]), rt)
    supported = bool(np.isfinite(s.peaks)[0])

    def step(sequences: int) -> float:
        if not supported:
            return math.inf
        wave = work.model_copy(update={"global_batch_size": sequences * plan.dp})
        return float(decode_time(s.f, cluster, eff, s.p, wave, s.layout, s.params, s.div, s.kv_per_token_layer, fed)[0])

    return step


def step_time_function(model: ModelSpec, cluster: ClusterSpec, workload: Workload, plans: Sequence[Plan], *,
                       runtime: RuntimeAllowance | None = None) -> Callable[[Efficiency], np.ndarray]:
    """The step times of ``plans`` as a function of the efficiency factors alone, everything else computed
    once: what calibration evaluates hundreds of times (the same numbers as `evaluate(...).time.step`)."""
    p = PlanArrays.from_plans(plans)
    rt = runtime or RuntimeAllowance.default()
    structures = [(rows, _Structure(model, cluster, workload, p.take(rows), rt)) for rows in _depth_groups(p)]

    def step(eff: Efficiency) -> np.ndarray:
        out = np.empty(len(p))
        for rows, structure in structures:
            out[rows] = structure.step_times(eff).step
        return out

    return step


def _evaluate(model: ModelSpec, cluster: ClusterSpec, workload: Workload, p: PlanArrays, eff: Efficiency,
              rt: RuntimeAllowance) -> Evaluation:
    structure = _Structure(model, cluster, workload, p, rt)
    memory, step = structure.memory, structure.step_times(eff)
    usable = rt.usable(cluster)
    # tokens of data (not padding), each at the FLOPs of its example's span
    tokens = workload.data_tokens_per_step
    span = workload.example_span
    generated = workload.global_batch_size * workload.output_len
    if workload.peft is not None:  # frozen base: input gradients only, plus the adapters
        flops_per_token = peft_training_flops(model, span, workload.peft)
    else:
        flops_per_token = model.flops_per_token(span, include_mtp=workload.train_mtp)
    if workload.algorithm == "dpo":  # + the reference's forward over the same tokens
        flops_per_token += model.flops(span).forward_per_token
    if not workload.training:
        flops_per_token /= 3.0  # forward only
    model_flops = flops_per_token * tokens
    if generated:  # each generated token's forward, at the mean context it attends over
        model_flops += model.flops(workload.seq_len + workload.output_len // 2).forward_per_token * generated
    world = (p.tp * p.pp * p.dp * p.cp).astype(float)
    peaks = structure.peaks
    supported = np.isfinite(peaks)
    tflops = model_flops / step.step / world / 1e12
    return Evaluation(
        memory=memory,
        time=step,
        usable_memory=usable,
        fits=memory_fits(memory, cluster, usable),
        host_bytes_per_node=memory.host * cluster.node.gpus_per_node,
        tokens_per_s=(generated or tokens) / step.step,
        model_flops_per_step=model_flops,
        model_tflops_per_gpu=tflops,
        mfu=np.where(supported, tflops * 1e12 / cluster.gpu.mfu_peak_flops, 0.0),
        precision_peak_utilization=np.where(supported, tflops * 1e12 / peaks, 0.0),
        peak_flops=peaks,
    )


__all__ = ["Evaluation", "GenerationWaves", "StageCosts", "evaluate", "generation_waves", "memory_fits", "peak_memory", "stage_costs", "step_time_function"]
