"""Compute time of one micro-batch through one layer (and the embedding / LM head), per GPU.

Three physical parts, each with its own roof:
- GEMMs: 2·M·K·N FLOPs at the GEMM precision's dense peak × η_gemm, or the bytes they move
  ((M·K + K·N + M·N)·element size) at HBM bandwidth × η_mem, whichever is slower (roofline, Williams et
  al. 2009) — so the thin GEMMs of high tensor parallelism and small micro-batches pay for their memory
  traffic. Backward runs two GEMMs of the same size per forward GEMM (input and weight gradients).
- attention core, flash: the Q·Kᵀ and P·V FLOPs of the unmasked (query, key) pairs — causal halves them,
  sliding windows cap them — at the bf16 peak × η_attn of the workload's stack (its attention kernel);
  backward executes 2.5× the forward FLOPs
  (FlashAttention-2, Dao 2023 §3.1).
- attention core, eager (Megatron-LM before flash attention, HF's eager path): the score matrix of all
  s × s pairs per head (masking comes after the product) is materialised, so the core is two batched
  GEMMs per head and sequence (Q·Kᵀ writes the s² scores, P·V reads the probabilities; roofline at the
  16-bit GEMM rate) plus the memory-bound passes over the a·s²·b scores: forward the softmax (Megatron's
  fused scale-mask-softmax reads and writes them once; HF's eager path scales, adds the mask, upcasts to
  fp32 for the softmax and casts back) and the attention dropout (reads the probabilities, writes them
  and a 1-byte mask); backward four GEMMs of the same size (dP = dO·Vᵀ, dV = Pᵀ·dO, dQ = dS·K,
  dK = dSᵀ·Q), the dropout backward (gradient and mask in, gradient out) and the softmax backward
  (gradient and probabilities in, gradient out). Korthikanti et al. 2022 §5 (the 5·a·s²·b bytes of
  softmax output, dropout mask and dropout output that selective recompute drops; Table 4 times the
  22B layer's attention-core recompute at 1.3 of 20.3 ms).
- memory-bound elementwise kernels: norms, RoPE, activation functions, residual/bias-dropout-add, MoE
  permutation, fp8 quantization (the recipe's reads and copies, `constraints.fp8`), at HBM bandwidth × η_mem; backward moves about twice the forward bytes.
Plus a fixed launch cost per kernel, and per MoE layer and pass the host time that dropless routing's
device-to-host synchronisation exposes (``Efficiency.moe_host_sync_s``). Tensor parallelism splits the GEMM widths and the heads; context
parallelism splits the tokens; each GPU of an MoE layer computes the routed share k·T/tp of its tokens, times
the busiest rank's load (`Workload.moe_imbalance`).
GEMMs run at fp8 under fp8 training except the LM head and router (Transformer Engine's recipe).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from parallelplan.constraints.activations import activation_bytes, busiest_rank_load
from parallelplan.constraints.arrays import PlanArrays, code, fp32_storage
from parallelplan.constraints.attention import plan_ratios
from parallelplan.constraints.efficiency import Efficiency
from parallelplan.constraints.fp8 import cast_bytes
from parallelplan.constraints.plan import PRECISIONS, RECOMPUTE_MODULES, Workload
from parallelplan.constraints.structure import ModelFacts
from parallelplan.hardware import GPUSpec

KERNELS_PER_LAYER_FORWARD = 14
"""Kernels one fused transformer layer launches in forward: 2 norms, QKV and output GEMMs, RoPE, attention,
2 bias-dropout-adds, FC1, activation, FC2, and ~3 communication kernels (TP/SP)."""


@dataclass
class LayerTimes:
    """Seconds per micro-batch on one GPU, (n,) arrays: forward and backward of one dense and one MoE
    layer, the attention core (forward) alone (what selective recompute repeats and what CP overlaps), the
    GEMM time of one layer (what TP communication can hide behind) and of its column-parallel linears fed
    by the hidden state (QKV, FC1: their weight-gradient GEMMs hide the backward collective of their input
    gradient), and what can hide an MoE layer's
    expert all-to-all: another micro-batch's work on the layer (everything but the host synchronisation
    and the launches) with batch-level overlap, else only the shared experts."""

    dense_forward: np.ndarray
    dense_backward: np.ndarray
    moe_forward: np.ndarray
    moe_backward: np.ndarray
    attention_forward: np.ndarray
    attention_backward: np.ndarray
    dense_gemm_forward: np.ndarray
    moe_gemm_forward: np.ndarray
    dense_column_forward: np.ndarray
    moe_column_forward: np.ndarray
    moe_expert_forward: np.ndarray
    moe_overlappable_forward: np.ndarray
    moe_shared_forward: np.ndarray
    dense_module_recompute: np.ndarray  # (n, len(RECOMPUTE_MODULES)): forward time each selective module repeats
    moe_module_recompute: np.ndarray
    dense_sac_recompute: np.ndarray
    moe_sac_recompute: np.ndarray
    head_forward: np.ndarray
    head_backward: np.ndarray
    bf16: LayerTimes | None = None  # the same layers run in bf16, where an fp8 plan keeps some (PlanArrays.bf16_ends)


class Roofline:
    """Peaks of one GPU for the plans' precisions, with the efficiency factors applied."""

    def __init__(self, gpu: GPUSpec, eff: Efficiency, p: PlanArrays, stack: str):
        arch = gpu.architecture
        peaks = np.zeros(len(PRECISIONS))
        for i, precision in enumerate(PRECISIONS):
            if gpu.supports(precision):
                peaks[i] = gpu.peak_flops[precision] * eff.gemm_fraction(arch, precision)
        self.gemm_flops = peaks[p.precision]  # 0 where the GPU lacks the precision (a rule rejects those)
        # attention, the LM head and the router run in 16 bits under fp8 training (Transformer Engine), in
        # fp32 when the plan keeps fp32 tensors (no flash kernel exists for fp32: attention at the plan's GEMM
        # rate, the fp32 or TF32 tensor-core one)
        fp32 = fp32_storage(p)
        half = "bf16" if gpu.supports("bf16") else "fp16"
        self.half_flops = np.where(fp32, self.gemm_flops, gpu.peak_flops[half] * eff.gemm_fraction(arch, half))
        kernel = eff.attention_fraction(arch, stack) * plan_ratios(p, stack, arch)  # the plan's flash kernel
        self.attention_flops = np.where(fp32, self.gemm_flops, gpu.peak_flops[half] * kernel)
        self.hbm = gpu.hbm_bandwidth * eff.memory_bound
        self.launch = eff.kernel_launch_s
        self.moe_sync = eff.moe_host_sync_s


def _gemm(roof: Roofline, flops_rate: np.ndarray, m: np.ndarray, k: np.ndarray, n: np.ndarray, b: np.ndarray) -> np.ndarray:
    compute = 2.0 * m * k * n / np.maximum(flops_rate, 1e-30)
    traffic = (m * k + k * n + m * n) * b / roof.hbm
    return np.maximum(compute, traffic)


def _matmul_time(roof: Roofline, rate: np.ndarray, m: np.ndarray, mm: tuple[int, int, str], tp: np.ndarray,
                 b: np.ndarray) -> np.ndarray:
    k, n, mode = mm
    kk = k / tp if mode == "row" else k * np.ones_like(tp)
    nn = n / tp if mode == "column" else n * np.ones_like(tp)
    return _gemm(roof, rate, m, kk, nn, b)


def _sequence(roof: Roofline, rate: np.ndarray, m: np.ndarray, mms: tuple, tp: np.ndarray,
              b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(all, even-numbered) forward times of a matmul sequence; torchtitan's selective policy recomputes
    the even-numbered ones (counted from 1 within a layer)."""
    total = np.zeros_like(tp)
    even = np.zeros_like(tp)
    for i, mm in enumerate(mms, start=1):
        t = _matmul_time(roof, rate, m, mm, tp, b)
        total = total + t
        if i % 2 == 0:
            even = even + t
    return total, even


def elementwise_parts(f: ModelFacts, p: PlanArrays, b: np.ndarray, tp: np.ndarray, width: float,
                      cast: np.ndarray) -> dict[str, np.ndarray]:
    """Forward bytes per token that the memory-bound kernels of one layer move, by kernel (see the module
    docstring), with an MLP of ``width``. Fused: each norm reads and writes h, each of the 2 residual adds
    reads 2h and writes h, RoPE (where the model has it) reads and writes q and k, the activation reads (1+g)·f and writes f, fp8
    quantization moves ``cast`` bytes per GEMM-input value (`constraints.fp8.cast_bytes`: the recipe's reads
    and fp8 copies). Unfused PyTorch eager ops (HF's RMSNorm: upcast,
    square, mean, multiply, downcast, scale — (28 + 4b)·h; RoPE's rotate-half slices, concatenation, two
    multiplies and an add — 5 passes; SiLU then product — (1 + g + 3)·f) move more."""
    fused = p.kernels == code("kernels", "fused")
    h = f.hidden
    sp_div = np.where(p.sequence_parallel, tp, 1.0)
    norm = np.where(fused, 2 * b * h, (28 + 4 * b) * h)
    gate = 1.0 if f.gated else 0.0
    return {
        "norms": f.norms_per_layer * norm / sp_div,
        "residual": 2 * 3 * b * h / sp_div,
        "rope": np.where(fused, 1.0, 5.0) * 2 * b * (f.q_width + f.k_width) / tp * f.rotary,
        "activation": np.where(fused, (2 + gate), (2 + gate + 2 * gate)) * b * width / tp,
        "cast": cast * (2 * h + f.out_width / tp + width / tp),
    }


def eager_attention(f: ModelFacts, p: PlanArrays, roof: Roofline, b: np.ndarray, tp: np.ndarray, tokens: np.ndarray,
                    w: Workload) -> tuple[np.ndarray, np.ndarray]:
    """(forward, backward) seconds of the materialised attention core (module docstring): all s × s
    (query, key) pairs of the rank's heads over its ``tokens``."""
    fused = p.kernels == code("kernels", "fused")
    s = float(w.seq_len)
    batch = (f.heads / tp) * tokens / s  # (head, sequence) pairs on the GPU
    scores = batch * s * s
    qk = _gemm(roof, roof.half_flops, s, f.q_width / f.heads, s, b)  # writes the scores
    pv = _gemm(roof, roof.half_flops, s, s, f.out_width / f.heads, b)  # reads the probabilities
    mask = 1.0 if w.dropout > 0 else 0.0
    # bytes per score: the softmax (fused: read, write; HF: scale, mask add, fp32 softmax, cast back) and
    # the dropout (read, write, 1-byte mask); backward: dropout (gradient and mask in, gradient out) and
    # softmax (gradient and probabilities in, gradient out; HF's in fp32, with the casts' backward)
    forward_bytes = np.where(fused, 2 * b, 6 * b + 8) + mask * (2 * b + 1)
    backward_bytes = np.where(fused, 3 * b, 3 * b + 16) + mask * (2 * b + 1)
    forward = batch * (qk + pv) + scores * forward_bytes / roof.hbm
    backward = 2 * batch * (qk + pv) + scores * backward_bytes / roof.hbm
    return forward, backward


def adapter_times(f: ModelFacts, gpu: GPUSpec, eff: Efficiency, p: PlanArrays, w: Workload, roof: Roofline,
                  tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Forward seconds per micro-batch that PEFT adds to one (dense, MoE) layer on one GPU: each adapter's
    two GEMMs (rank r; fp32 unfused, at the fp32 peak, else at the 16-bit one; roofline), their
    memory-bound passes (`peft.adapter_elementwise_bytes`), and under QLoRA the dequantisation of every
    4-bit weight of the layer (read NF4, write bf16), once per pass whatever the tokens. Backward repeats
    each twice (`layer_times` doubles the elementwise part), as the adapters' input and weight
    gradients and bitsandbytes' second dequantisation for the input gradient. A tf32 plan's fp32 adapter GEMMs
    run at the TF32 rate."""
    from parallelplan.constraints.peft import (
        NF4_BYTES_PER_PARAM,
        adapter_bytes,
        adapter_elementwise_bytes,
        adapters,
        quantized_layer_params,
        split_widths,
    )

    a = adapters(f, w.peft)
    tp = p.tp.astype(float)
    fused = p.kernels == code("kernels", "fused")
    fp32 = gpu.peak_flops.get("fp32", 0.0) * eff.gemm_fraction(gpu.architecture, "fp32")
    if gpu.supports("tf32"):  # a tf32 plan runs the fp32 adapters' GEMMs on the TF32 tensor cores too
        tf32 = gpu.peak_flops["tf32"] * eff.gemm_fraction(gpu.architecture, "tf32")
        fp32 = np.where(p.precision == code("precision", "tf32"), tf32, fp32)
    rate = np.where(fused, roof.half_flops, np.where(fp32 > 0, fp32, roof.half_flops))
    ab = adapter_bytes(p)

    def layer(mms: tuple) -> np.ndarray:
        total = adapter_elementwise_bytes(a, mms, p, tp) * tokens / roof.hbm
        r = a.rank * np.ones_like(tp)
        for mm in mms:
            k, n = split_widths(mm, tp)
            total = total + _gemm(roof, rate, tokens, k, r, ab) + _gemm(roof, rate, tokens, r, n, ab)
        return total

    dense, moe = layer(a.dense_layer(f)), layer(a.moe_layer(f))
    if a.quantized:
        dense_q, moe_q = quantized_layer_params(f, tp)
        per_weight = (NF4_BYTES_PER_PARAM + activation_bytes(p)) / roof.hbm
        dense, moe = dense + dense_q * per_weight, moe + moe_q * per_weight
    return dense, moe


def layer_times(f: ModelFacts, gpu: GPUSpec, eff: Efficiency, p: PlanArrays, w: Workload,
                keys: tuple[float, float]) -> LayerTimes:
    roof = Roofline(gpu, eff, p, w.stack)
    b = activation_bytes(p)
    tp = p.tp.astype(float)
    tokens = p.micro_batch_size * w.sequences_per_example * w.seq_len / p.cp.astype(float)
    fp8 = p.precision == code("precision", "fp8")
    gemm_b = np.where(fp8, 1.0, b)
    rate = roof.gemm_flops
    one = np.ones(len(p))

    attn_gemm, attn_even = _sequence(roof, rate, tokens, f.attention_matmuls, tp, gemm_b)

    # attention core over the keys each query sees (global and sliding-window layers averaged)
    global_keys, window_keys = keys
    sliding = f.sliding_layer_share
    keys_avg = (1 - sliding) * global_keys + sliding * window_keys
    core_flops = 2.0 * (f.heads / tp) * ((f.q_width + f.out_width) / f.heads) * keys_avg * tokens
    attention, attention_backward = eager_attention(f, p, roof, b, tp, tokens, w)
    flash = p.attention_kernel != code("attention_kernel", "eager")
    attention = np.where(flash, core_flops / roof.attention_flops, attention)
    attention_backward = np.where(flash, 2.5 * attention, attention_backward)

    # dense MLP: the attention sequence continues into it (torchtitan counts matmuls per layer)
    dense_mlp = np.zeros(len(p))
    dense_even = attn_even
    if f.ffn:
        full_seq, even_seq = _sequence(roof, rate, tokens, f.attention_matmuls + f.mlp_matmuls(f.ffn), tp, gemm_b)
        dense_mlp = full_seq - attn_gemm
        dense_even = even_seq

    moe_gemm = np.zeros(len(p))
    expert_gemm = np.zeros(len(p))
    shared_gemm = np.zeros(len(p))
    routed_bytes = 0.0
    load = busiest_rank_load(p, w)  # the busiest expert-parallel rank sets the pace
    if f.experts:
        etp = p.etp.astype(float)
        routed = f.top_k * load * tokens * etp / tp  # routed tokens this GPU's expert shards compute
        local_experts = f.experts / p.ep
        per_expert = routed / local_experts
        for mm in f.mlp_matmuls(f.expert_ffn):
            expert_gemm = expert_gemm + local_experts * _matmul_time(roof, rate, per_expert, mm, etp, gemm_b)
        if f.shared_ffn:
            shared_gemm = _sequence(roof, rate, tokens, f.mlp_matmuls(f.shared_ffn), tp, gemm_b)[0]
        router_gemm = _gemm(roof, roof.half_flops, tokens, f.hidden * one, f.experts * one, b)
        moe_gemm = expert_gemm + shared_gemm + router_gemm
        # permute, unpermute and the routing softmax: read and write k copies of each token's hidden state
        routed_bytes = (4.0 * f.top_k * load * f.hidden * b / tp + 8.0 * f.experts) * tokens / roof.hbm

    seconds = lambda parts: {name: value * tokens / roof.hbm for name, value in parts.items()}  # noqa: E731
    cast = cast_bytes(p, w, gpu, b)
    dense_parts = seconds(elementwise_parts(f, p, b, tp, f.ffn, cast))
    moe_parts = seconds(elementwise_parts(f, p, b, tp, f.top_k * load * f.expert_ffn + f.shared_ffn, cast))
    dense_elementwise = sum(dense_parts.values())
    moe_elementwise = sum(moe_parts.values()) + routed_bytes
    launch = KERNELS_PER_LAYER_FORWARD * roof.launch

    # PEFT: frozen GEMMs compute input gradients only; the adapters (and QLoRA's dequantisation) add work
    # to every pass (constraints.peft)
    gemm_backward = 2.0 if w.peft is None else 1.0
    if w.peft is not None:
        dense_adapter, moe_adapter = adapter_times(f, gpu, eff, p, w, roof, tokens)
        dense_elementwise = dense_elementwise + dense_adapter
        moe_elementwise = moe_elementwise + moe_adapter

    dense_forward = attn_gemm + dense_mlp + attention + dense_elementwise + launch
    moe_forward = attn_gemm + moe_gemm + attention + moe_elementwise + launch + roof.moe_sync
    backward = lambda gemm, elementwise: gemm_backward * gemm + attention_backward + 2 * elementwise + 2 * launch  # noqa: E731

    # column-parallel linears fed by the hidden state (their backward all-reduces the input gradient)
    fed = lambda mms: sum((_matmul_time(roof, rate, tokens, mm, tp, gemm_b) for mm in mms  # noqa: E731
                           if mm[2] == "column" and mm[0] == f.hidden), np.zeros(len(p)))
    attn_column = fed(f.attention_matmuls)

    # selective recompute: the forward work each module repeats, per layer (RECOMPUTE_MODULES order)
    up_projections = tuple(mm for mm in f.attention_matmuls if mm[2] == "column" and mm[0] != f.hidden)
    up_gemm = sum((_matmul_time(roof, rate, tokens, mm, tp, gemm_b) for mm in up_projections), np.zeros(len(p)))
    norm_one = dense_parts["norms"] / f.norms_per_layer
    moe_share = (f.top_k * load * f.expert_ffn / (f.top_k * load * f.expert_ffn + f.shared_ffn)) if f.experts else 0.0
    zero = np.zeros(len(p))
    modules = {
        "core_attn": (attention, attention),
        "layernorm": (dense_parts["norms"], moe_parts["norms"]),
        "mla_up_proj": (up_gemm + dense_parts["rope"], up_gemm + moe_parts["rope"]),
        "mlp": (dense_mlp + dense_parts["activation"] + norm_one, zero),
        "moe_act": (zero, moe_share * moe_parts["activation"]),
        "moe": (zero, moe_gemm + moe_parts["activation"] + routed_bytes + norm_one + roof.moe_sync),
        "shared_experts": (zero, shared_gemm + (1 - moe_share) * moe_parts["activation"] if f.experts else zero),
    }
    dense_modules = np.stack([modules[name][0] for name in RECOMPUTE_MODULES], axis=1)
    moe_modules = np.stack([modules[name][1] for name in RECOMPUTE_MODULES], axis=1)

    # LM head and loss (last stage): GEMM at half precision, softmax/cross-entropy reads logits ~3 times
    head_gemm = _gemm(roof, roof.half_flops, tokens, f.hidden * one, f.head_width / tp, b)
    head_elementwise = 3 * 4.0 * f.head_width / tp * tokens / roof.hbm
    return LayerTimes(
        dense_forward=dense_forward,
        dense_backward=backward(attn_gemm + dense_mlp, dense_elementwise),
        moe_forward=moe_forward,
        moe_backward=backward(attn_gemm + moe_gemm, moe_elementwise) + roof.moe_sync,
        attention_forward=attention,
        attention_backward=attention_backward,
        dense_gemm_forward=attn_gemm + dense_mlp,
        moe_gemm_forward=attn_gemm + moe_gemm,
        dense_column_forward=attn_column + (fed(f.mlp_matmuls(f.ffn)) if f.ffn else 0.0),
        moe_column_forward=attn_column + (fed(f.mlp_matmuls(f.shared_ffn)) if f.shared_ffn else 0.0),
        moe_expert_forward=expert_gemm,
        moe_overlappable_forward=moe_forward - launch - roof.moe_sync,
        moe_shared_forward=shared_gemm,
        dense_module_recompute=dense_modules,
        moe_module_recompute=moe_modules,
        dense_sac_recompute=dense_even + dense_elementwise,
        moe_sac_recompute=attn_even + moe_gemm + moe_elementwise,
        head_forward=head_gemm + head_elementwise,
        head_backward=gemm_backward * head_gemm + head_elementwise,
        bf16=None if (ends := p.bf16_ends()) is None else layer_times(f, gpu, eff, ends, w, keys),
    )
