"""Generation: decoding ``output_len`` tokens after the prompt (`Workload.output_len`, kind inference) — what
an RL rollout and a serving request spend most of their time on. The prefill (one forward over the
``seq_len``-token prompts) is the inference step `constraints.timing` already prices; this module adds the
decode that follows it.

Each data-parallel replica decodes its S = ⌈B/dp⌉ sequences in waves of at most c = ``max_concurrency``
(all at once without it): continuous batching holding a wave's KV cache of prompt and output
(`constraints.memory`), one token of every sequence of the wave per iteration; ⌊S/c⌋ full waves and one
of the rest. With pp > 1 the sequences split into pp groups that follow each other
through the stages (vLLM's virtual engines), so every stage runs each group in turn and an iteration takes
pp · max over stages of t_s(S/pp) — the busiest stage, which also bounds the latency of one group through
all stages (Σ_s t_s ≤ pp · max_s t_s).

One decode step of a pipeline stage s for g sequences at a cache of c tokens each is a roofline
    t_s(c) = max(bytes_s(c) / (η_stream · HBM), flops_s(c) / rate) + comm_s + launches_s:
- bytes: the stage's weights on the GPU as served (the linears of an fp8 plan in fp8,
  `states.served_gemm_weight_bytes`; the rest in 16 bits), read once per step — the token embedding
  only its g rows, routed experts only those the step's tokens touch: E_local · (1 − (1 − k/E)^T), T the
  tokens routed in the expert-parallel group (g per replica it spans), uniform routing — plus the KV cache,
  g · c · (cached bytes per token and layer) per layer (a sliding-window layer min(c, window)); streamed
  like any exactly counted read (`Efficiency.streaming`, the GEMV kernels of a decode step);
- flops: 2 per weight a token uses (the embedding none, routed experts k of E, at the busiest rank's load
  `activations.busiest_rank_load`) at the GEMM rate, plus the attention core, 4 · c · (query width / tp)
  per token and layer, at the attention rate (`compute.Roofline`);
- comm_s: tensor parallelism's two all-reduces per layer of g·h activations (latency-bound: the
  inference engines' one- or two-shot kernels, `collectives.Fabric.latency_bound_all_reduce`), the expert
  dispatch and combine per MoE layer (an all-to-all over ep; with experts split over etp > tp ranks, an
  all-gather of the etp/tp replicas' hidden states and a reduce-scatter of the outputs), context parallelism's combine of the partial attention outputs
  (an all-reduce of g · query width per layer), the weights' all-gather when they are sharded (FSDP,
  ZeRO-3: every step gathers the stage) and the send to the next stage — none hidden: a decode step is
  too short to overlap them;
- launches: the stage's layers' kernels at ``kernel_launch_s`` each (`compute.KERNELS_PER_LAYER_FORWARD`,
  the fixed cost every forward pass pays in `constraints.compute`; CUDA graphs take the host's launch
  off the path, not the kernels' own start and tail).
The prefill's logits give the first output token, so n tokens take n − 1 decode steps (as ``generate``
and vLLM run them), at caches c = L + 1 … L + n − 1. Their sum is exact: t_s is linear in c on either side of the
sliding window, and a sum of the larger of two lines over a range of integers has a closed form
(`sum_of_max_lines`). The stage whose total is largest sets the pace (the busiest stage of every step
when, as in every layout the search builds, stages differ by whole layers, the embedding and the head).
Not modelled here: speculative decoding, prefix caching, chunked prefill, continuous batching of
sequences of different lengths (a wave ends together), and the decode logits' memory.
"""

from __future__ import annotations

import numpy as np

from parallelplan.constraints.activations import activation_bytes, busiest_rank_load
from parallelplan.constraints.arrays import PlanArrays
from parallelplan.constraints.collectives import Fabric
from parallelplan.constraints.compute import KERNELS_PER_LAYER_FORWARD, Roofline
from parallelplan.constraints.efficiency import Efficiency
from parallelplan.constraints.memory import concurrent_sequences, replica_sequences
from parallelplan.constraints.plan import Workload
from parallelplan.constraints.stages import StageLayout, StageParams, bf16_layer_params
from parallelplan.constraints.states import ShardDivisors, gathers_weights, served_gemm_weight_bytes
from parallelplan.constraints.structure import ModelFacts
from parallelplan.hardware import ClusterSpec


def line_sum(a: np.ndarray, b: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Σ (a + b·c) over the integers lo ≤ c < hi (0 when hi ≤ lo)."""
    n = np.maximum(hi - lo, 0)
    return a * n + b * n * (lo + hi - 1) / 2.0


def sum_of_max_lines(a1: np.ndarray, b1: np.ndarray, a2: np.ndarray, b2: np.ndarray, lo: np.ndarray,
                     hi: np.ndarray) -> np.ndarray:
    """Σ max(a1 + b1·c, a2 + b2·c) over the integers lo ≤ c < hi, exactly: the first line is the larger
    on one side of their crossing, c* = (a2 − a1) / (b1 − b2), the second on the other."""
    a1, b1, a2, b2, lo, hi = np.broadcast_arrays(*(np.asarray(v, dtype=float) for v in (a1, b1, a2, b2, lo, hi)))
    slope = b1 - b2
    with np.errstate(divide="ignore", invalid="ignore"):
        cross = np.where(slope != 0, (a2 - a1) / np.where(slope != 0, slope, 1.0), 0.0)
    # first line from the split on (it grows faster) or up to it (it grows slower); parallel lines: the higher
    rising = np.clip(np.ceil(cross), lo, hi)
    falling = np.clip(np.floor(cross) + 1, lo, hi)
    split = np.select([slope > 0, slope < 0], [rising, falling], default=lo)
    first_after = (slope > 0) | ((slope == 0) & (a1 >= a2))
    return np.where(first_after,
                    line_sum(a2, b2, lo, split) + line_sum(a1, b1, split, hi),
                    line_sum(a1, b1, lo, split) + line_sum(a2, b2, split, hi))


def touched_experts_share(f: ModelFacts, tokens: np.ndarray) -> np.ndarray:
    """Expected share of the experts that ``tokens`` routed tokens (each to k of E, uniformly) touch."""
    if not f.experts:
        return np.zeros_like(tokens, dtype=float)
    return 1.0 - (1.0 - f.top_k / f.experts) ** tokens


def decode_time(f: ModelFacts, cluster: ClusterSpec, eff: Efficiency, p: PlanArrays, w: Workload, layout: StageLayout,
                params: StageParams, div: ShardDivisors, kv_bytes_per_token_layer: np.ndarray, fed: int = 1) -> np.ndarray:
    """Seconds to decode ``w.output_len`` tokens of every sequence after the prefill, (n,) (module docstring):
    the replica's ⌈B/dp⌉ sequences in waves of at most ``w.max_concurrency``, the last wave the rest;
    ``kv_bytes_per_token_layer`` (n,) the cache one GPU holds per token and layer; ``fed`` tokens of each
    sequence per step (`_wave_time`)."""
    if w.output_len == 0:
        return np.zeros(len(p))
    sequences = replica_sequences(p, w)
    wave = concurrent_sequences(p, w)
    full, rest = sequences // wave, sequences % wave
    one = lambda g: _wave_time(f, cluster, eff, p, w, layout, params, div, kv_bytes_per_token_layer, g, fed)  # noqa: E731
    last = np.where(rest > 0, one(np.maximum(rest, 1)), 0.0) if rest.any() else 0.0
    return full * one(wave) + last


def _wave_time(f: ModelFacts, cluster: ClusterSpec, eff: Efficiency, p: PlanArrays, w: Workload, layout: StageLayout,
               params: StageParams, div: ShardDivisors, kv_bytes_per_token_layer: np.ndarray,
               sequences: np.ndarray, fed: int = 1) -> np.ndarray:
    """Seconds for one replica to decode ``w.output_len`` tokens of ``sequences`` (n,) sequences at once,
    each step feeding ``fed`` tokens of every sequence (speculative decoding's verification of fed − 1 draft
    tokens: the weights and the cache read once, the GEMMs, the attention over the cache, the routed
    tokens and the collectives for every fed token)."""
    col = lambda a: np.asarray(a, dtype=float)[:, None]  # noqa: E731
    n_out = w.output_len
    gpu = cluster.gpu
    roof = Roofline(gpu, eff, p, w.stack)
    fabric = Fabric.of(cluster, eff)
    b = col(activation_bytes(p))
    tp, cp, pp = col(p.tp), col(p.cp), col(p.pp)
    group = col(sequences) / pp  # sequences per group of the replica
    tokens = group * fed  # tokens each step feeds

    # weights read per step: the stage's minus the embedding table (a lookup of g rows), experts touched
    replicas = np.maximum(col(p.ep * p.etp) / tp, 1.0)  # replicas whose tokens one expert-parallel group routes
    touched = touched_experts_share(f, tokens * replicas)
    embedding_rows = np.where(params.embedding > 0, tokens * f.hidden / tp, 0.0)
    # a tied LM head on a one-stage pipeline is the embedding table itself: its GEMM reads all of it
    tied_head = (np.where(layout.last & (pp == 1), (f.embedding_params - f.position_params) / tp, 0.0)
                 if f.tied else 0.0)
    dense_used = params.dense - params.embedding + tied_head
    # the linears in the served dtype (fp8 plans: one byte, states.served_gemm_weight_bytes), but the layers
    # kept in bf16; the embedding rows, the LM head and the norms in 16 bits
    gemm_bytes = col(served_gemm_weight_bytes(p, activation_bytes(p)))
    gemm_dense = params.dense - params.embedding - params.head
    weights_read = (b * (dense_used - gemm_dense + embedding_rows) + gemm_bytes * gemm_dense
                    + gemm_bytes * params.expert * touched + (b - gemm_bytes) * bf16_layer_params(layout, params))
    full_layers = layout.layers * (1.0 - f.sliding_layer_share) if f.sliding_window else layout.layers
    sliding_layers = layout.layers - full_layers
    kv_per_token = group * col(kv_bytes_per_token_layer) / cp  # per cached token of one layer
    hbm = gpu.hbm_bandwidth * eff.streaming

    # flops per step: 2 per used weight and token (routed experts: k of E, the busiest rank's load)
    expert_used = params.expert * f.top_k / f.experts * col(busiest_rank_load(p, w)) * replicas if f.experts else 0.0
    gemm = 2.0 * tokens * (dense_used + expert_used) / col(roof.gemm_flops)
    attention_per_cached = 4.0 * tokens * f.q_width / tp / cp / col(roof.attention_flops)  # per token of context, layer

    # communication per step, exposed
    hidden = tokens * f.hidden * b
    tp_comm = layout.layers * 2 * col(fabric.latency_bound_all_reduce(hidden[:, 0], p.tp, 1))
    cp_comm = layout.layers * col(fabric.latency_bound_all_reduce((tokens * f.q_width * b / tp)[:, 0], p.cp, p.tp))
    routed = tokens * f.top_k * f.hidden * b / tp
    ep_comm = layout.moe_layers * 2 * col(fabric.all_to_all(routed[:, 0], p.ep, p.etp)) if f.experts else 0.0
    # experts split wider than attention (etp > tp: expert TP across data-parallel attention replicas): each
    # MoE layer all-gathers the hidden states of the etp/tp replicas that share the experts and
    # reduce-scatters the outputs back (vLLM's allgather_reducescatter MoE backend, SGLang's DP attention)
    spread = np.maximum(p.etp // p.tp, 1)
    etp_comm = (layout.moe_layers * 2 * col(fabric.reduce_scatter(hidden[:, 0] * spread, spread, p.tp))
                if f.experts else 0.0)
    sharded = col(gathers_weights(p)) > 0
    gather = (fabric.reduce_scatter(b * params.dense, col(div.weights), tp)
              + fabric.reduce_scatter(b * params.expert, col(div.expert_weights), col(p.ep * p.etp)))
    send = np.where((pp > 1) & ~layout.last, col(fabric.send((hidden / tp)[:, 0], p.tp * p.cp * p.dp)), 0.0)
    comm = tp_comm + cp_comm + ep_comm + etp_comm + np.where(sharded, gather, 0.0) + send

    # Σ over the output tokens: full-attention layers cache c tokens, sliding ones min(c, window)
    # the prefill's logits give the first token; step k = 1 … n − 1 feeds token k and reads a cache of L + k
    steps = n_out - 1
    first, last = w.seq_len + 1, w.seq_len + n_out
    memory_at = lambda layers_c: (weights_read, kv_per_token * layers_c)  # noqa: E731 - (constant, per c)
    compute_at = lambda layers_c: (gemm, attention_per_cached * layers_c)  # noqa: E731
    window = f.sliding_window or last
    knee = np.minimum(np.maximum(window, first), last)
    # below the window every layer sees c tokens; above it the sliding layers see a constant window
    a_m, b_m = memory_at(full_layers + sliding_layers)
    a_c, b_c = compute_at(full_layers + sliding_layers)
    below = sum_of_max_lines(a_m / hbm, b_m / hbm, a_c, b_c, first, knee)
    a_m2, b_m2 = weights_read + kv_per_token * sliding_layers * window, kv_per_token * full_layers
    a_c2, b_c2 = gemm + attention_per_cached * sliding_layers * window, attention_per_cached * full_layers
    above = sum_of_max_lines(a_m2 / hbm, b_m2 / hbm, a_c2, b_c2, knee, last)
    launch = layout.layers * KERNELS_PER_LAYER_FORWARD * roof.launch  # every step, as every pass (compute.py)
    per_stage = below + above + steps * (comm + launch)
    per_stage = np.where(layout.valid, per_stage, -np.inf)
    return p.pp * per_stage.max(axis=1)


__all__ = ["decode_time", "line_sum", "sum_of_max_lines", "touched_experts_share"]
