"""Memory per GPU for every pipeline stage, and the most loaded one.

Per stage: model states (`constraints.states` × parameters of the stage's GPU, `constraints.stages`; under
fp8 with Transformer Engine also its cached fp8 copy of every GEMM weight, `fp8_weight_cache`),
activations (`constraints.activations`) times the micro-batches in flight, the LM head and loss peak on
the last stage, the layers FSDP/ZeRO-3 gathers, the KV cache when serving, and the runtime allowance.

Micro-batches in flight on pipeline rank i (m micro-batches per step):
- 1F1B and zero-bubble (ZB-H1 keeps 1F1B's peak, Qi et al. 2023 §3): min(pp − i, m) (Narayanan 2021).
- interleaved with vpp chunks: min(2·(pp − i − 1) + (vpp − 1)·pp + 1, m·vpp) chunks of 1/vpp of the
  stage (Megatron-LM ``get_pp_warmup_microbatches``), which on rank 0 is pp · (1 + (pp − 1)/(pp·vpp))
  micro-batches, Megatron's "interleaved schedule memory penalty".
- DualPipeV (two chunks per rank in a V): min(2·pp + 1, 2·m) chunks of half the stage on every rank
  (DeepSeek-AI's DualPipe README, "Activation per device: PP + 1" with PP = 2·pp chunks over pp devices).
- ZB-V (the same V): min(2·pp, 2·m) chunks on every rank — the most chunks whose forward has run and whose
  weight gradient has not, counted along torch's ScheduleZBVZeroBubble order (whatever F, B, W take: the
  order is fixed); pp micro-batches, 1F1B's first stage, as Qi et al. 2023 §6 state.
Gradient buffers: persistent plans hold them throughout; otherwise they appear as backward frees
activations, so the peak is the larger of the end of forward (all activations, no gradients) and the
backward of the stage's first layer (one layer's activations, every other gradient); the breakdown
reports what is present at the peak.
With ``offload_activations`` the stored activations go to host memory as the forward produces them and
come back a layer ahead of the backward: the GPU keeps ``OFFLOAD_WINDOW_LAYERS`` layers' worth (the one
being copied and the one computed), the host the rest (``host``, with the optimizer states and
parameters that ``offload`` moves there).
Transients on top of the kept activations, one at a time: the LM head and loss on the last stage at the
end of a micro-batch's forward, or one layer rebuilt by full recompute during backward. Plans that shard
weights (ZeRO-3, FSDP, HSDP) add what FSDP holds at the same moment — units gathered, gradients unsharded
and in the reduce-scatter buffer (`GatheredUnits`) — and the peak is the largest such moment. The
optimizer step is a second candidate peak: gradients plus the step's temporaries, once activations are
freed and every unit resharded.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from parallelplan.constraints.activations import (
    LayerActivations,
    activation_bytes,
    first_stage_bytes,
    fused_fp8,
    head_and_loss_bytes,
    layer_activations,
)
from parallelplan.constraints.arrays import PlanArrays, code
from parallelplan.constraints.dpo import has_reference_copy, reference_weight_bytes
from parallelplan.constraints.efficiency import stacks
from parallelplan.constraints.fp8 import weight_cache_bytes
from parallelplan.constraints.peft import PeftParams
from parallelplan.constraints.plan import V_SCHEDULES, Workload
from parallelplan.constraints.runtime import RuntimeAllowance
from parallelplan.constraints.stages import StageLayout, StageParams, bf16_layer_params
from parallelplan.constraints.states import (
    BytesPerParam,
    ShardDivisors,
    gathers_weights,
    optimizer_step_temporaries,
    served_gemm_weight_bytes,
)
from parallelplan.constraints.structure import ModelFacts
from parallelplan.hardware import ClusterSpec, GPUSpec


@dataclass
class MemoryParts:
    """Bytes on one GPU: its parts, their total, and the micro-batches of activations it holds."""

    weights: np.ndarray
    gradients: np.ndarray
    optimizer: np.ndarray
    activations: np.ndarray
    kv_cache: np.ndarray
    overhead: np.ndarray
    total: np.ndarray
    in_flight: np.ndarray
    host: np.ndarray
    """Bytes this GPU keeps in host memory: offloaded activations, optimizer states and parameters."""


@dataclass
class MemoryArrays(MemoryParts):
    """Bytes on one GPU of the most loaded stage and which stage that is, (n,) arrays; ``host``: the most
    any stage's GPU keeps in host memory."""

    stage: np.ndarray


OFFLOAD_WINDOW_LAYERS = 2
"""Layers of stored activations an offloading GPU still holds: the layer whose activations are in transit
to or from the host and the one being computed (Megatron-Core keeps at least one layer on the GPU,
``cpu_offloading_num_layers`` < layers; torchtune and TRL prefetch the next layer's during backward)."""


def recomputed_share(p: PlanArrays, layout: StageLayout) -> np.ndarray:
    """Share of each rank's layers whose activations follow the plan's recompute mode ((n, C)): all of
    them, except under ``full`` with ``recompute_layers``, where only that many of each of the rank's vpp
    model chunks (Megatron's block method counts per virtual pipeline stage)."""
    full = (p.recompute == code("recompute", "full"))[:, None]
    layers = np.maximum(layout.layers, 1)
    partial = np.minimum(p.recompute_layers[:, None] * p.vpp[:, None], layers) / layers
    return np.where(full, partial, 1.0)


def micro_batches(p: PlanArrays, w: Workload) -> np.ndarray:
    """Micro-batches per pipeline per step: global batch / (dp · micro-batch), at least 1."""
    return np.maximum(w.global_batch_size // (p.dp * p.micro_batch_size), 1)


def warm_up_forwards(p: PlanArrays, w: Workload, stage_index: np.ndarray) -> np.ndarray:
    """Forwards a rank of each class runs before its first backward ((n, C); ``stage_index`` is the class's
    lowest rank): micro-batches, or under interleaving model-chunk forwards (module docstring)."""
    pp = p.pp[:, None]
    vpp = p.vpp[:, None]
    m = micro_batches(p, w)[:, None]
    plain = np.minimum(pp - stage_index, m)
    chunks = np.minimum(2 * (pp - stage_index - 1) + (vpp - 1) * pp + 1, m * vpp)
    v_chunks = np.minimum(2 * pp + 1, m * vpp)  # DualPipeV: 2·pp + 1 chunks' worth on every rank
    zbv_chunks = np.minimum(2 * pp, m * vpp)  # ZB-V: 2·pp chunks (a 1F1B first stage's pp micro-batches) on every rank
    return np.select([p.schedule[:, None] == code("schedule", "interleaved"),
                      p.schedule[:, None] == code("schedule", "dualpipev"), p.schedule[:, None] == code("schedule", "zbv")],
                     [chunks, v_chunks, zbv_chunks], default=plain)


def in_flight(p: PlanArrays, w: Workload, stage_index: np.ndarray) -> np.ndarray:
    """Micro-batch equivalents of activations held by a rank of each class ((n, C)): its warm-up forwards,
    each 1/vpp of the stage under interleaving and the V schedules."""
    chunked = np.isin(p.schedule, [code("schedule", s) for s in ("interleaved", *V_SCHEDULES)])[:, None]
    return (warm_up_forwards(p, w, stage_index) / np.where(chunked, p.vpp[:, None], 1)).astype(float)


def micro_batch_tokens(p: PlanArrays, w: Workload) -> np.ndarray:
    """Tokens of one micro-batch on one GPU, (n,): its sequences (DPO: both of each pair) over the context ranks."""
    return p.micro_batch_size * w.sequences_per_example * w.seq_len / p.cp.astype(float)


@dataclass
class StoredActivations:
    """Bytes per token of one micro-batch that a training rank of each class keeps for its backward, (n, C):
    for its layers (each layer's recompute mode's, averaged over the rank's layers with partial full
    recompute; the layers an fp8 plan keeps in bf16 at their bf16 bytes), for the whole stage (the layers and,
    on the first, the embedding's), for its largest layer, and what its largest layer holds before recompute
    frees it (the rebuild of one layer under full recompute)."""

    layers: np.ndarray
    stage: np.ndarray
    largest_layer: np.ndarray
    largest_full: np.ndarray


def layer_kinds(f: ModelFacts, p: PlanArrays, w: Workload, layout: StageLayout,
                acts: LayerActivations) -> list[tuple[np.ndarray, LayerActivations, str]]:
    """(layers of the kind on each class (n, C), their activations, "dense" | "moe"): the dense and MoE
    layers, and apart from them those an fp8 plan keeps in bf16 (`PlanArrays.bf16_ends`)."""
    ends = p.bf16_ends()
    if ends is None:
        return [(layout.dense_layers, acts, "dense"), (layout.moe_layers, acts, "moe")]
    bf16 = layer_activations(f, ends, w)
    return [(layout.dense_layers - layout.bf16_dense_layers, acts, "dense"), (layout.moe_layers - layout.bf16_moe_layers, acts, "moe"),
            (layout.bf16_dense_layers, bf16, "dense"), (layout.bf16_moe_layers, bf16, "moe")]


def stored_activations(f: ModelFacts, p: PlanArrays, w: Workload, layout: StageLayout,
                       acts: LayerActivations | None = None) -> StoredActivations:
    """`StoredActivations` of each rank class: full recompute on the first ``recompute_layers`` of the rank's
    layers keeps their inputs only, the rest keep what the recompute mode leaves (`constraints.activations`)."""
    col = lambda a: np.asarray(a, dtype=float)[:, None]  # noqa: E731
    acts = acts or layer_activations(f, p, w)
    share = recomputed_share(p, layout)
    layers = largest = largest_full = np.zeros(layout.layers.shape)
    for count, kind_acts, kind in layer_kinds(f, p, w, layout, acts):
        kept = share * col(getattr(kind_acts, f"{kind}_kept")) + (1 - share) * col(getattr(kind_acts, f"{kind}_full"))
        layers = layers + count * kept
        largest = np.maximum(largest, np.where(count > 0, kept, 0.0))
        largest_full = np.maximum(largest_full, np.where(count > 0, col(getattr(kind_acts, f"{kind}_full")), 0.0))
    stage = layers + np.where(layout.first, col(first_stage_bytes(f, p, w, f.head_dim_q)), 0.0)
    return StoredActivations(layers=layers, stage=stage, largest_layer=largest, largest_full=largest_full)


def replica_sequences(p: PlanArrays, w: Workload) -> np.ndarray:
    """Sequences of the most loaded data-parallel replica: ⌈B/dp⌉."""
    return -(-w.global_batch_size // p.dp)


def concurrent_sequences(p: PlanArrays, w: Workload) -> np.ndarray:
    """Sequences a serving replica holds at once: all of its own, at most ``w.max_concurrency``."""
    sequences = replica_sequences(p, w)
    return sequences if w.max_concurrency is None else np.minimum(sequences, w.max_concurrency)


def kv_cache_bytes_per_token_layer(f: ModelFacts, p: PlanArrays, mla_latent: int, head_dim: int) -> np.ndarray:
    """Cached bytes per token per layer on one GPU: 2 · (KV heads / tp) · head_dim (KV heads replicated
    when fewer than tp), or MLA's latent + rope key, which is not split (DeepSeek-V2 §2.1.2); one byte an
    element with an fp8 cache (`Plan.kv_cache_dtype`), else the activations' dtype."""
    b = np.where(p.kv_cache_dtype == code("kv_cache_dtype", "fp8"), 1.0, activation_bytes(p))
    if mla_latent:
        return b * mla_latent
    heads_per_gpu = np.ceil(f.kv_heads / p.tp)
    return b * 2 * heads_per_gpu * head_dim


@dataclass
class ClassMemory(MemoryParts):
    """Bytes on one GPU of each rank class, (n, C) arrays (``total`` is -inf on invalid columns)."""

    def worst(self, layout: StageLayout) -> MemoryArrays:
        """The most loaded class of each plan."""
        stage = np.argmax(self.total, axis=1)
        pick = lambda a: np.take_along_axis(np.broadcast_to(a, self.total.shape), stage[:, None], axis=1)[:, 0]  # noqa: E731
        return MemoryArrays(weights=pick(self.weights), gradients=pick(self.gradients), optimizer=pick(self.optimizer),
                            activations=pick(self.activations), kv_cache=pick(self.kv_cache),
                            overhead=pick(self.overhead), total=pick(self.total),
                            stage=np.take_along_axis(layout.index, stage[:, None], axis=1)[:, 0],
                            in_flight=pick(self.in_flight),
                            host=np.where(layout.valid, self.host, 0.0).max(axis=1))  # the node's busiest, any stage


FSDP_REDUCE_BYTES = 4.0
"""Bytes per gradient element FSDP reduce-scatters in: fp32 (FSDP2 ``MixedPrecisionPolicy(reduce_dtype=
torch.float32)``, torchtitan's default ``mixed_precision_reduce``); measured by `plan dry-run`."""


@dataclass
class GatherMoment:
    """What a sharded-weights plan holds on top of its shards and kept activations at one moment, bytes
    ((n, C) arrays): units ``gathered`` in the compute dtype, gradients ``reducing`` (unsharded, and the
    reduce-scatter buffers), and the activation ``transient``."""

    gathered: np.ndarray
    reducing: np.ndarray
    transient: np.ndarray


@dataclass
class GatheredUnits:
    """FSDP's units of one stage (ZeRO-3, FSDP, HSDP: a decoder layer, the embedding, the final norm with
    the LM head), as FSDP2's ``fully_shard`` runs them (torch.distributed.fsdp ``FSDPParamGroup``): a unit
    is all-gathered for its forward and resharded after it, except the head's, kept for its backward; in
    backward the next unit's all-gather is prefetched while one computes, and a unit's gradients appear
    unsharded in the compute dtype; after its backward the unit is resharded and its gradients copied into
    the reduce-scatter input (`FSDP_REDUCE_BYTES`), which is kept until the next unit reduces (one buffer
    in flight, ``reduce_scatter_max_input_buffers``), with the reduce-scatter output, 1/shard of it.
    The embedding's own reduce, at the very end of backward, is not priced."""

    layer: np.ndarray
    head: np.ndarray
    weight_bytes: np.ndarray
    shards: np.ndarray
    last: np.ndarray

    @property
    def layer_gathered(self) -> np.ndarray:
        """A layer in backward: itself and the prefetched next one."""
        return 2 * self.weight_bytes * self.layer

    @property
    def layer_reducing(self) -> np.ndarray:
        """A layer in backward: its unsharded gradients and the previous layer's kept reduce-scatter input."""
        return (self.weight_bytes + FSDP_REDUCE_BYTES) * self.layer

    def peak_moment(self, head_loss: np.ndarray, rebuild: np.ndarray, one_layer: np.ndarray) -> GatherMoment:
        """The largest of four moments, on top of the kept activations: the end of the last stage's forward
        (the head gathered, the head and loss transient ``head_loss``); the head's reduce (its gradients
        unsharded and in the reduce buffer, the last layer prefetched; the loss's tensors freed); the
        backward of the stage's last layer (two layers gathered, its gradients, the head's kept reduce
        input on the last stage, the layer ``rebuild`` under full recompute); the next layer's backward
        (the same with a layer's kept input, ``one_layer`` of activations freed)."""
        zero = np.zeros_like(self.head)
        head_reduce = (self.weight_bytes + FSDP_REDUCE_BYTES * (1 + 1 / self.shards)) * self.head
        previous = np.where(self.last, self.head, self.layer)
        moments = [
            GatherMoment(gathered=self.weight_bytes * self.head, reducing=zero, transient=head_loss),
            GatherMoment(gathered=self.weight_bytes * self.layer, reducing=head_reduce, transient=zero),
            GatherMoment(gathered=self.layer_gathered,
                         reducing=self.weight_bytes * self.layer + FSDP_REDUCE_BYTES * previous, transient=rebuild),
            GatherMoment(gathered=self.layer_gathered, reducing=self.layer_reducing, transient=rebuild - one_layer),
        ]
        on_last_stage = (True, True, False, True)
        totals = np.stack([np.where(self.last | (not last_only), m.gathered + m.reducing + m.transient, -np.inf)
                           for last_only, m in zip(on_last_stage, moments, strict=True)])
        pick = np.argmax(totals, axis=0)
        choose = lambda name: np.choose(pick, [np.broadcast_to(getattr(m, name), pick.shape) for m in moments])  # noqa: E731
        return GatherMoment(gathered=choose("gathered"), reducing=choose("reducing"), transient=choose("transient"))


def gathered_units(params: StageParams, layout: StageLayout, weight_bytes: np.ndarray, shards: np.ndarray) -> GatheredUnits:
    return GatheredUnits(layer=params.largest_layer, head=params.head, weight_bytes=weight_bytes, shards=shards,
                         last=np.broadcast_to(layout.last, params.head.shape))


def fp8_weight_cache(p: PlanArrays, w: Workload, gpu: GPUSpec) -> np.ndarray:
    """Bytes per GEMM-weight parameter of the fp8 library's quantized weight cache beside the bf16 weight
    (``stacks.json`` ``fp8.caches_fp8_weights``: Transformer Engine keeps each weight's fp8 copies with the
    module across micro-batches — the row-wise copy and, on Ada and Hopper or under a directional block
    recipe, a column-wise one: `constraints.fp8.weight_cache_bytes`, 2 bytes on Hopper) under fp8 training
    with fused kernels and resident weights; 0 otherwise — where the stack makes the weights fp8 parameters
    once states are sharded (``fp8_params_when_sharded``: Megatron's --fp8-param-gather, an fp8 weight and
    its transpose taking the bf16 weight's 2 bytes), where ZeRO-3 / FSDP / HSDP gather weights per use (a
    cache of gathered weights is not modelled) and where parameters are offloaded to the host."""
    fp8 = stacks()[w.stack]["fp8"]
    if not w.training or not fp8["caches_fp8_weights"]:
        return np.zeros(len(p))
    on = fused_fp8(p) & ~gathers_weights(p).astype(bool) & (p.offload != code("offload", "params"))
    if fp8["fp8_params_when_sharded"]:
        on &= p.sharding == code("sharding", "none")
    return np.where(on, weight_cache_bytes(p, w, gpu), 0.0)


def class_memory(
    f: ModelFacts, cluster: ClusterSpec, p: PlanArrays, w: Workload, runtime: RuntimeAllowance, layout: StageLayout,
    params: StageParams, per: BytesPerParam, div: ShardDivisors, *, kv_latent: int, kv_head_dim: int,
    peft: PeftParams | None = None,
) -> ClassMemory:
    """Memory of every rank class (module docstring). Under PEFT (``peft``, with ``per`` the adapters'
    bytes per parameter) the trained parameters are the adapters and the frozen base adds its weights."""
    col = lambda a: np.asarray(a, dtype=float)[:, None]  # noqa: E731 - (n,) → (n, 1) for stage broadcasting

    training = w.training
    offload_params = col(p.offload == code("offload", "params"))
    offload_states = col(p.offload != code("offload", "none"))
    trained_dense, trained_expert = (params.dense, params.expert) if peft is None else (peft.adapters, 0.0)
    # without an optimizer there is no master copy: FSDP shards the weights themselves, in the compute dtype
    resident = per.resident_weights if training else per.weights
    weights = col(resident) * (trained_dense / col(div.weights) + trained_expert / col(div.expert_weights))
    if peft is not None:
        weights = weights + peft.frozen_dense_bytes / col(div.weights) + peft.frozen_expert_bytes / col(div.expert_weights)
    if has_reference_copy(w):  # DPO's frozen reference on the same GPUs (constraints.dpo)
        weights = weights + reference_weight_bytes(p, params, div)
    if peft is None:  # the decoder layers' GEMM weights (norms and router included: under 0.1% of them), but
        # those of the layers kept in bf16: training's fp8 weight cache, or the fp8 weights served in place
        # of the 16-bit ones (states.served_gemm_weight_bytes)
        gemm = params.dense - params.embedding - params.head + params.expert
        served = 0.0 if training else np.where(gathers_weights(p).astype(bool), 0.0,
                                               served_gemm_weight_bytes(p, per.weights) - per.weights)
        weights = weights + col(fp8_weight_cache(p, w, cluster.gpu) + served) * (gemm - bf16_layer_params(layout, params))
    host = np.where(offload_params > 0, weights, 0.0)
    weights = np.where(offload_params > 0, 0.0, weights)
    gathering = col(gathers_weights(p)) > 0
    if training:
        grads = col(per.grads) * (trained_dense / col(div.grads) + trained_expert / col(div.expert_grads))
        states_per_param = col(per.master + per.optimizer)
        states = states_per_param * (trained_dense / col(div.states) + trained_expert / col(div.expert_states))
        host = host + np.where(offload_states > 0, states, 0.0)
        states = np.where(offload_states > 0, 0.0, states)
    else:
        grads = states = np.zeros_like(weights)

    tokens = col(micro_batch_tokens(p, w))
    acts = layer_activations(f, p, w)
    flight = in_flight(p, w, layout.index) if training else np.ones_like(weights)
    if training:
        kept = stored_activations(f, p, w, layout, acts)
        stored = flight * kept.stage * tokens
        offloaded = col(p.offload_activations) > 0
        window = np.minimum(stored, OFFLOAD_WINDOW_LAYERS * kept.largest_layer * tokens)
        activations = np.where(offloaded, window, stored)
        host = host + np.where(offloaded, stored - window, 0.0)
        # on top of what is kept, one transient at a time: the LM head and loss (last stage, end of a
        # micro-batch's forward) or, with full recompute, one rebuilt layer during backward
        rebuild = kept.largest_full
        full = col(p.recompute == code("recompute", "full"))
        transient = np.where(full > 0, rebuild, 0.0)
    else:  # serving: one layer's working set at a time
        activations = np.zeros_like(weights)
        transient = np.maximum(col(acts.dense_full), col(acts.moe_full))
    head_loss = np.where(layout.last, col(head_and_loss_bytes(f, p, w)), 0.0)
    if training and peft is None:
        units = gathered_units(params, layout, col(per.weights), col(div.grads))
        moment = units.peak_moment(head_loss * tokens, transient * tokens, kept.largest_layer * tokens)
        gathered = np.where(gathering, moment.gathered, 0.0)
        reducing = np.where(gathering, moment.reducing, 0.0)
        transient = np.where(gathering, moment.transient / tokens, np.maximum(transient, head_loss))
        # at the backward of the stage's first layer (the late phase below) it is gathered, the next
        # prefetched, and its gradients reduced
        late_gathered = np.where(gathering, units.layer_gathered, 0.0)
        late_reducing = np.where(gathering, units.layer_reducing, 0.0)
    else:  # serving, or a frozen base under PEFT: the unit computed and the one prefetched, no gradients
        unit = np.maximum(params.largest_layer, np.maximum(params.embedding, params.head))
        unit_bytes = (params.largest_layer + unit) * col(per.weights) if peft is None else peft.gathered_bytes
        gathered = np.where(gathering, unit_bytes, 0.0)
        reducing = late_reducing = np.zeros_like(gathered)
        late_gathered = gathered
        transient = np.maximum(transient, head_loss)
    activations = activations + transient * tokens
    if peft is not None:  # QLoRA dequantises one 4-bit weight at a time for its GEMM
        activations = activations + peft.dequantized_bytes

    if w.kind == "inference":
        sequences = col(concurrent_sequences(p, w))  # the most loaded data-parallel replica's wave
        context = w.seq_len + w.output_len  # the prompt and every generated token (constraints.generation)
        cached = layout.layers * context
        if f.sliding_window:  # sliding-window layers keep only the window (spread evenly over the stages)
            cached = cached - layout.layers * f.sliding_layer_share * max(context - f.sliding_window, 0)
        kv = cached * col(kv_cache_bytes_per_token_layer(f, p, kv_latent, kv_head_dim)) * sequences / col(p.cp)
    else:
        kv = np.zeros_like(weights)

    # Candidate peaks: forward/backward (activations, plus gradients when their buffers persist) and
    # the optimizer step (gradients and the step's temporaries, activations freed).
    persistent = col(p.persistent_grads) > 0
    compute_phase = activations + np.where(persistent, grads, 0.0) + gathered + reducing
    grads_in_compute = np.where(persistent, grads, 0.0) + reducing
    if training:
        # Without persistent buffers gradients appear as backward proceeds. Backward of the stage's
        # first layer is the other extreme: every later layer's and the head's gradients exist, of the
        # kept activations only that layer's remain, plus its rebuild under full recompute.
        layers = np.maximum(layout.layers, 1)
        kept_layers = kept.layers * tokens
        late_acts = np.where(offloaded, activations - transient * tokens,  # offloaded: the window throughout
                             activations - transient * tokens - kept_layers * (layers - 1) / layers)
        late_acts = late_acts + np.where(full > 0, rebuild, 0.0) * tokens
        if peft is None:
            stage_params_total = np.maximum(params.dense + params.expert, 1.0)
            late_share = np.clip(1 - (params.largest_layer + params.embedding) / stage_params_total, 0.0, 1.0)
        else:
            late_share = np.clip(1 - peft.adapter_layer / np.maximum(peft.adapters, 1.0), 0.0, 1.0)
        late = late_acts + late_share * grads + late_gathered + late_reducing
        use_late = ~persistent & (late > compute_phase)
        compute_phase = np.where(use_late, late, compute_phase)
        activations = np.where(use_late, late_acts, activations)
        grads_in_compute = np.where(use_late, late_share * grads + late_reducing, grads_in_compute)
        gathered = np.where(use_late, late_gathered, gathered)
    step_temp = col(optimizer_step_temporaries(p, per)) * (trained_dense + trained_expert) / col(div.states)
    step_temp = np.where(offload_states > 0, 0.0, step_temp) if training else np.zeros_like(weights)
    step_phase = grads + step_temp  # every unit resharded: nothing gathered
    in_step = step_phase > compute_phase
    grads_at_peak = np.where(in_step, grads, grads_in_compute)
    activations = np.where(in_step, 0.0, activations)
    states = states + np.where(in_step, step_temp, 0.0)
    weights = weights + np.where(in_step, 0.0, gathered)
    overhead = col(runtime.fixed_bytes(p, cluster)) + runtime.fragmentation * activations
    totals = weights + states + grads_at_peak + activations + kv + overhead
    totals = np.where(layout.valid, totals, -np.inf)
    shape = totals.shape
    return ClassMemory(weights=np.broadcast_to(weights, shape), gradients=np.broadcast_to(grads_at_peak, shape),
                       optimizer=np.broadcast_to(states, shape), activations=np.broadcast_to(activations, shape),
                       kv_cache=np.broadcast_to(kv, shape), overhead=np.broadcast_to(overhead, shape), total=totals,
                       in_flight=np.broadcast_to(flight, shape), host=np.broadcast_to(host, shape))
