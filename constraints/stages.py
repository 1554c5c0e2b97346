"""Which layers each pipeline rank holds, and how many parameters sit on one GPU of each rank.

Default split (no ``layers_per_stage``): the L layers are cut into pp · vpp virtual stages of L // (pp·vpp)
layers; the remainder goes one layer each to the virtual stages in the middle, because the first and the
last stage also carry the embedding and the LM head. Rank i holds virtual stages i, i + pp, i + 2·pp, …
(Megatron's interleaved assignment, Narayanan et al. 2021 §2.2); with vpp = 1 that is one contiguous block.
Under a V schedule (DualPipeV, `constraints.plan.V_SCHEDULES`) rank i holds virtual stages i and
2·pp − 1 − i (torch.distributed.pipelining's "v" stage-to-rank mapping): rank 0 holds the embedding and the
LM head, and is both the first and the last rank.

An fp8 plan that keeps its first and last k layers in bf16 (`Plan.fp8_bf16_layers`) has them counted on
whichever ranks hold them (`bf16_end_layers`), and priced there as bf16 layers.

Ranks that hold the same layers (count, MoE count, bf16 count, first/last role) are priced once, as a rank class:
its time per micro-batch is the same for all of them, and its memory is that of the lowest-indexed one,
which holds the most micro-batches in flight. A class carries how many ranks it stands for (``weight``)
and that rank's index, so a 128-stage pipeline costs a handful of classes, not 128 stages.

Parameters per GPU of a stage (Megatron-Core's placement): attention, dense MLPs and shared experts split
by tp; norms and routers replicated; routed experts split by ep (whole experts) and etp (inside an
expert); the token embedding (vocab-parallel, /tp) and learned positions on the first stage; the LM head
(/tp) and final norm on the last stage, where a tied head is a second copy unless pp = 1. DeepSeek-V3's MTP modules, when trained,
sit on the last stage: each is one more decoder layer (MoE when the model is, split like any other) plus
its projection and norms, and one more pass through the shared LM head.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from parallelplan.constraints.arrays import PlanArrays, code
from parallelplan.constraints.plan import V_SCHEDULES
from parallelplan.constraints.structure import ModelFacts


def v_shaped(p: PlanArrays) -> np.ndarray:
    """Plans whose schedule lays its chunks out in a V (module docstring)."""
    return np.isin(p.schedule, [code("schedule", s) for s in V_SCHEDULES])


@dataclass
class StageLayout:
    """(n, C) arrays over the rank classes of each plan (see the module docstring); C = the most classes
    any plan of the batch has, and the columns beyond a plan's own classes are invalid (zeros)."""

    valid: np.ndarray
    first: np.ndarray
    last: np.ndarray
    index: np.ndarray  # the representative (lowest) rank index of the class
    weight: np.ndarray  # how many ranks the class stands for
    layers: np.ndarray
    moe_layers: np.ndarray
    mtp: np.ndarray  # MTP modules on the stage (counted in layers / moe_layers too)
    bf16_layers: np.ndarray  # of the layers, those an fp8 plan keeps in bf16 (`bf16_end_layers`)
    bf16_moe_layers: np.ndarray

    @property
    def dense_layers(self) -> np.ndarray:
        return self.layers - self.moe_layers

    @property
    def bf16_dense_layers(self) -> np.ndarray:
        return self.bf16_layers - self.bf16_moe_layers


def stage_layout(facts: ModelFacts, p: PlanArrays, *, train_mtp: bool = False, merge: bool = True) -> StageLayout:
    """The rank classes of each plan (with ``merge`` False, every rank a class of its own, column i rank i).
    A layout depends only on pp, vpp and the explicit stages, so it is computed once per distinct
    combination and shared by the plans that have it."""
    keys = np.stack([p.pp, p.vpp, v_shaped(p)], axis=1)
    if p.layers_per_stage is not None:
        keys = np.concatenate([keys, p.layers_per_stage], axis=1)
    first, inverse = _distinct_rows(keys)
    if len(first) < len(p):
        layout = _layout(facts, p.take(first), train_mtp, merge)
        return StageLayout(**{name: getattr(layout, name)[inverse] for name in StageLayout.__dataclass_fields__})
    return _layout(facts, p, train_mtp, merge)


def _distinct_rows(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(index of each distinct row's first occurrence, the distinct row of every row) of an integer matrix.
    Rows are hashed to one int64 first (sorting wide rows is slow); a hash shared by different rows falls
    back to the exact row-wise comparison."""
    weights = np.random.default_rng(0).integers(1, 2**61, size=keys.shape[1], dtype=np.int64) | 1
    hashed = (keys.astype(np.int64) * weights).sum(axis=1)  # wraps modulo 2**64, as intended
    _, first, inverse = np.unique(hashed, return_index=True, return_inverse=True)
    inverse = inverse.reshape(-1)
    if np.array_equal(keys[first][inverse], keys):
        return first, inverse
    rows = np.ascontiguousarray(keys).view(np.dtype((np.void, keys.dtype.itemsize * keys.shape[1]))).ravel()
    _, first, inverse = np.unique(rows, return_index=True, return_inverse=True)
    return first, inverse.reshape(-1)


def bf16_end_layers(facts: ModelFacts, p: PlanArrays, start: np.ndarray, end: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(layers, MoE layers) an fp8 plan keeps in bf16 (`Plan.fp8_bf16_layers` k: the model's first k and last
    k layers) among each rank's virtual stages [start, end), (n, P, V) → (n, P)."""
    k = p.fp8_bf16_layers[:, None, None]
    head_end = np.minimum(k, facts.layers)
    tail_start = np.maximum(facts.layers - k, head_end)  # no layer counted twice where 2k exceeds the model
    count = np.zeros(start.shape[:2], dtype=np.int64)
    moe = np.zeros_like(count)
    for lo, hi in ((0, head_end), (tail_start, facts.layers)):
        a, b = np.clip(start, lo, hi), np.clip(end, lo, hi)
        count = count + (b - a).sum(axis=2)
        moe = moe + (facts.moe_prefix[b] - facts.moe_prefix[a]).sum(axis=2)
    return count, moe


def _layout(facts: ModelFacts, p: PlanArrays, train_mtp: bool, merge: bool) -> StageLayout:
    n = len(p)
    explicit = p.layers_per_stage
    width = int(p.pp.max()) if explicit is None else max(int(p.pp.max()), explicit.shape[1])
    index = np.broadcast_to(np.arange(width), (n, width))
    pp = p.pp[:, None]
    valid = index < pp
    start, end = _virtual_bounds(facts, p, index, valid)  # (n, P, V): each rank's layers [start, end)
    if explicit is not None:  # rows with explicit stages, one block per rank (all-zero rows: the default split)
        given = np.zeros((n, width), dtype=np.int64)
        given[:, : explicit.shape[1]] = explicit
        given = np.where(valid, given, 0)
        starts = np.minimum(np.cumsum(given, axis=1) - given, facts.layers)
        ends = np.minimum(starts + given, facts.layers)
        has = (given.sum(axis=1) > 0)[:, None, None]
        block = ((0, 0), (0, 0), (0, start.shape[2] - 1))
        start = np.where(has, np.pad(starts[:, :, None], block), start)
        end = np.where(has, np.pad(ends[:, :, None], block), end)
    layers, moe = (end - start).sum(axis=2), (facts.moe_prefix[end] - facts.moe_prefix[start]).sum(axis=2)
    bf16, bf16_moe = bf16_end_layers(facts, p, start, end) if p.fp8_bf16_layers.any() else (np.zeros_like(layers),) * 2
    last = np.where(v_shaped(p)[:, None], index == 0, index == pp - 1)
    mtp = np.where(last, facts.mtp_layers if train_mtp else 0, 0)
    moe = moe + (mtp if facts.experts else 0)
    if not merge:
        return StageLayout(valid=valid, first=valid & (index == 0), last=valid & last, index=np.array(index),
                           weight=valid.astype(np.int64), layers=np.where(valid, layers + mtp, 0),
                           moe_layers=np.where(valid, moe, 0), mtp=np.where(valid, mtp, 0),
                           bf16_layers=np.where(valid, bf16, 0), bf16_moe_layers=np.where(valid, bf16_moe, 0))
    turn = v_shaped(p)[:, None] & (index == pp - 1)  # a V's last rank passes its chunk on locally
    return _classes(valid, index == 0, last, layers + mtp, moe, mtp, turn, bf16, bf16_moe)


def _classes(valid: np.ndarray, first: np.ndarray, last: np.ndarray, layers: np.ndarray, moe: np.ndarray,
             mtp: np.ndarray, turn: np.ndarray, bf16: np.ndarray, bf16_moe: np.ndarray) -> StageLayout:
    """Group each plan's ranks (n, P) into classes of identical ranks (module docstring); the rank where a V
    turns (``turn``) is a class of its own (it sends less)."""
    n, width = valid.shape
    span = int(layers.max()) + 1
    key = ((((((layers * span + moe) * 2 + first) * 2 + last) * 2 + turn) * span + bf16) * span) + bf16_moe
    sentinel = np.iinfo(np.int64).max
    key = np.where(valid, key, sentinel)
    order = np.argsort(key, axis=1, kind="stable")  # equal keys keep rank order: the first is the lowest
    sorted_key = np.take_along_axis(key, order, axis=1)
    starts = np.ones((n, width), dtype=bool)
    starts[:, 1:] = sorted_key[:, 1:] != sorted_key[:, :-1]
    starts &= sorted_key != sentinel
    class_of = np.cumsum(starts, axis=1) - 1
    count = int(starts.sum(axis=1).max())
    rows = np.broadcast_to(np.arange(n)[:, None], (n, width))
    weight = np.zeros((n, count), dtype=np.int64)
    np.add.at(weight, (rows[sorted_key != sentinel], class_of[sorted_key != sentinel]), 1)
    rep = np.zeros((n, count), dtype=np.int64)
    rep[rows[starts], class_of[starts]] = order[starts]
    cls_valid = weight > 0
    pick = lambda a: np.where(cls_valid, np.take_along_axis(a, rep, axis=1), 0)  # noqa: E731
    return StageLayout(
        valid=cls_valid,
        first=pick(first).astype(bool),
        last=pick(last).astype(bool),
        index=rep,
        weight=weight,
        layers=pick(layers),
        moe_layers=pick(moe),
        mtp=pick(mtp),
        bf16_layers=pick(bf16),
        bf16_moe_layers=pick(bf16_moe),
    )


def virtual_stages(facts: ModelFacts, p: PlanArrays) -> list[list[tuple[int, int]]]:
    """Each rank's virtual stages of the first plan in ``p``, in the order the rank holds them, as (first
    layer, layer count): the default split's chunks (module docstring), or one block per rank for explicit
    ``layers_per_stage``."""
    pp, vpp = int(p.pp[0]), int(p.vpp[0])
    if p.layers_per_stage is not None and p.layers_per_stage[0].any():
        counts = [int(n) for n in p.layers_per_stage[0][:pp]]
        return [[(sum(counts[:rank]), counts[rank])] for rank in range(pp)]
    index = np.arange(pp)[None, :]
    start, end = _virtual_bounds(facts, p.take(np.array([0])), index, np.ones((1, pp), dtype=bool))
    return [[(int(start[0, rank, k]), int(end[0, rank, k] - start[0, rank, k])) for k in range(vpp)] for rank in range(pp)]


def _virtual_bounds(facts: ModelFacts, p: PlanArrays, index: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(first layer, end) of each rank's virtual stages under the default split, (n, P, max vpp)."""
    pp = p.pp[:, None]
    chunk = np.arange(int(p.vpp.max()))[None, None, :]  # k: which virtual stage of the rank
    vpp = p.vpp[:, None, None]
    total = pp[:, :, None] * vpp  # virtual stages S
    v = v_shaped(p)[:, None, None]  # the second chunk of a V runs back up: 2·pp − 1 − i
    virtual = np.where(v & (chunk == 1), 2 * pp[:, :, None] - 1 - index[:, :, None], chunk * pp[:, :, None] + index[:, :, None])
    base = facts.layers // total
    rem = facts.layers % total
    lo = (total - rem) // 2
    extra_before = np.clip(virtual - lo, 0, rem)
    size = base + ((virtual >= lo) & (virtual < lo + rem))
    start = virtual * base + extra_before
    live = (chunk < vpp) & valid[:, :, None]
    start = np.where(live, np.minimum(start, facts.layers), 0)
    end = np.where(live, np.minimum(start + size, facts.layers), 0)
    return start, end


@dataclass
class StageParams:
    """Parameters on ONE GPU of each rank class, (n, C): ``dense`` ones (sharded over the data-parallel group)
    and ``expert`` ones (sharded over the expert-data-parallel group), those of one layer (the unit
    FSDP/ZeRO-3 gathers at a time), the input embedding's (first stage) and the LM head's (last stage)."""

    dense: np.ndarray
    expert: np.ndarray
    largest_layer: np.ndarray
    embedding: np.ndarray
    head: np.ndarray
    dense_layer: np.ndarray  # (n, 1): one dense layer's parameters on one GPU
    moe_layer: np.ndarray  # (n, 1): one MoE layer's


def bf16_layer_params(layout: StageLayout, params: StageParams) -> np.ndarray:
    """Parameters on one GPU of the layers an fp8 plan keeps in bf16 (`StageLayout.bf16_layers`), (n, C)."""
    return layout.bf16_dense_layers * params.dense_layer + layout.bf16_moe_layers * params.moe_layer


def stage_params(facts: ModelFacts, p: PlanArrays, layout: StageLayout) -> StageParams:
    tp = p.tp[:, None].astype(float)
    ep = p.ep[:, None].astype(float)
    etp = p.etp[:, None].astype(float)
    replicated_attention = facts.attention_params - facts.attention_split_params
    per_layer_split = facts.attention_split_params / tp + replicated_attention + facts.norm_params_per_layer
    dense = (
        layout.layers * per_layer_split
        + layout.dense_layers * facts.dense_mlp_params / tp
        + layout.moe_layers * (facts.shared_params / tp + facts.router_params)
    )
    token_embedding = facts.embedding_params - facts.position_params
    embedding = np.where(layout.first, token_embedding / tp + facts.position_params, 0.0)
    dense = dense + embedding
    separate_head = (not facts.tied) or (p.pp[:, None] > 1)
    head = np.where(layout.last, np.where(separate_head, facts.head_params / tp, 0.0) + facts.final_norm_params, 0.0)
    dense = dense + head
    dense = dense + layout.mtp * facts.mtp_extra_params / tp
    experts_per_gpu = facts.experts / ep
    expert = layout.moe_layers * experts_per_gpu * facts.expert_params / etp
    dense_layer = per_layer_split + facts.dense_mlp_params / tp
    moe_layer = per_layer_split + facts.shared_params / tp + facts.router_params + experts_per_gpu * facts.expert_params / etp
    largest = np.where(layout.moe_layers > 0, moe_layer, 0.0)
    largest = np.maximum(largest, np.where(layout.dense_layers > 0, dense_layer, 0.0))
    return StageParams(
        dense=np.where(layout.valid, dense, 0.0),
        expert=np.where(layout.valid, expert, 0.0),
        largest_layer=np.where(layout.valid, largest, 0.0),
        embedding=np.where(layout.valid, embedding, 0.0),
        head=np.where(layout.valid, head, 0.0),
        dense_layer=dense_layer,
        moe_layer=moe_layer,
    )
