"""Activation memory kept for the backward pass, per token of a micro-batch, per GPU, for one layer.

Korthikanti et al. 2022 ("Reducing Activation Recomputation in Large Transformer Models", §4, Table 2)
count the tensors each op saves; we do the same for the real block (GQA/MLA widths, gated or plain MLPs,
MoE routing, no dropout masks unless dropout > 0), for two implementations (``Plan.kernels``):

``fused`` — Megatron-Core with Transformer Engine. Per layer: each norm keeps its input (b·h) and an fp32
  1/σ (4 bytes); each GEMM block keeps its input (b·h); flash attention keeps Q, K, V, its output and the
  fp32 log-sum-exp per head (Dao 2023); the fused SwiGLU/GeLU keeps the FC1 output and FC2 input
  (b·(1+g)·f + b·f); bias-dropout-add keeps a 1-byte mask per hidden element when dropout > 0. With the
  classic MHA/GeLU/dropout block this reproduces Korthikanti's 34·s·b·h (without SP) exactly. Under fp8
  the GEMM inputs kept for the weight gradients are the fp8 library's (`gemm_input_bytes`): with
  Transformer Engine the norm outputs and the FC2 inputs are 1-byte copies, and the output projection
  keeps a 1-byte copy of the attention output beside the core's bf16 one.
``unfused`` — PyTorch eager modules as HF ``transformers`` writes them (measured with PyTorch's
  MemTracker in tests/test_memory_reference.py): Llama-style RMSNorm keeps an fp32 copy of its input, the
  cast back and the scaled output ((4 + 2b)·h + 4); nn.LayerNorm keeps input and output (2b·h + 8);
  QK-norm its fp32 input and the cast per head; SDPA attention Q, K, V, output and log-sum-exp; eager
  attention Q, K and V expanded to all heads, fp32 softmax and its cast (4 + b)·H·s, output; the gated
  MLP gate, act, up and product (4·b·f), a plain MLP its two intermediates (2·b·f); MoE with
  transformers' default ``grouped_mm`` experts: the router's fp32 softmax and top-k, and per routed
  token the gathered input, gate_up output, activation, product and down output (2·b·h + 4·b·f_e).

Parallelism: tensor-parallel regions (Q, K, V, attention output, MLP interiors) are split by tp; the rest
(norm inputs and outputs, GEMM inputs, masks) only with sequence parallelism (Korthikanti §4.2.2) — on a
stack whose sequence parallelism keeps each block's all-gathered input (PyTorch DTensor: torchtitan, custom;
``stacks.json`` ``sequence_parallel_saves_gathered_input``) that input is held whole.
Context parallelism splits the sequence: tokens per GPU = micro_batch · seq_len / cp. Routed experts:
balanced routing gives the etp ranks of an expert k·T·etp/tp routed tokens each, with the FFN widths split
by etp; the busiest rank holds `Workload.moe_imbalance` times that (`busiest_rank_load`).
Recompute: ``selective`` recomputes ``Plan.recompute_modules`` (Megatron-Core's selective recompute
modules, `megatron/core/transformer/transformer_layer.py`), each dropping what it rebuilds: ``core_attn``
the attention core's own tensors (eager attention's score matrices, flash attention's log-sum-exp;
Korthikanti et al. 2022 §5), ``layernorm`` each norm's output, ``mla_up_proj`` MLA's up-projected Q, K and
V, ``mlp`` a dense MLP block but its input, ``moe_act`` the routed experts' activation output, ``moe``
an MoE block but its input, ``shared_experts`` the shared experts' interiors;
``selective_mm`` (PyTorch selective checkpointing with torchtitan's op policy, torchtitan
``activation_checkpoint.py``) keeps the layer input, attention's output and log-sum-exp and the outputs
of every other matmul (the 1st, 3rd, … of the layer); ``full`` keeps only each layer's input (b·h, /tp
with SP) and rebuilds one layer at a time in backward.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from parallelplan.constraints.arrays import PlanArrays, code, fp32_storage
from parallelplan.constraints.efficiency import stacks
from parallelplan.constraints.fp8 import kept_input_bytes
from parallelplan.constraints.plan import RECOMPUTE_MODULES, Workload
from parallelplan.constraints.structure import ModelFacts

SCORE_BYTES_PER_VOCAB_UNFUSED = 10.0
"""A forward without gradients taking every position's log-probability through HF's loss path, at its
peak per token and vocabulary entry: the logits in bf16 (2·V), their fp32 upcast (4·V) and the
log-softmax (4·V) (MemTracker on LlamaForCausalLM and Qwen3-MoE under ``no_grad``, tests/test_rl.py)."""
LOSS_BYTES_PER_VOCAB_UNFUSED = 12.0
"""HF causal-LM loss at its peak, per token and vocabulary entry: logits in the model dtype kept with the
outputs, their fp32 upcast and log-softmax (MemTracker on LlamaForCausalLM: 4·V bytes kept as activations
plus 8·V temporaries at the peak, for bf16 and fp32 alike; tests/test_memory_reference.py)."""
LOSS_BYTES_PER_VOCAB_LOSS_PARALLEL = 16.0
"""The same loss over vocabulary-sharded logits (tp > 1), as PyTorch's ``loss_parallel`` computes it (DTensor's
vocab-parallel log-softmax and NLL; torchtitan), per token and local vocabulary entry: the fp32 log-softmax
kept (4·V/tp) plus three fp32 temporaries in its backward where the unsharded loss has two (12·V/tp;
measured by `plan dry-run`, tests/test_dryrun.py)."""


def activation_bytes(p: PlanArrays) -> np.ndarray:
    """Bytes per activation element: 4 in fp32 and tf32, else 2 (fp8 training keeps bf16 activations between
    GEMMs)."""
    return np.where(fp32_storage(p), 4.0, 2.0)


def fused_fp8(p: PlanArrays) -> np.ndarray:
    """Plans whose fp8 GEMMs run in the stack's fp8 library's fused modules (Transformer Engine, torchao's
    float8 linears), whose memory layout ``stacks.json`` ``fp8`` gives."""
    return (p.precision == code("precision", "fp8")) & (p.kernels == code("kernels", "fused"))


def gemm_input_bytes(p: PlanArrays, w: Workload) -> np.ndarray:
    """Bytes per element of a GEMM's input kept for its weight gradient: the activation dtype's, or under fp8
    training with fused kernels the stack's fp8 library's (``stacks.json`` ``fp8.saves_fp8_inputs``):
    Transformer Engine keeps the input's fp8 column-wise copy with its recipe's scales
    (`constraints.fp8.kept_input_bytes`: 1 byte, 1 + 1/32 blockwise and MXFP8), torchao the bf16 input itself
    (its casts redone in backward). With PEFT adapters the base's layout is kept."""
    if w.peft is not None or not stacks()[w.stack]["fp8"]["saves_fp8_inputs"]:
        return activation_bytes(p)
    return np.where(fused_fp8(p), kept_input_bytes(p, w), activation_bytes(p))


@dataclass
class LayerActivations:
    """Bytes per token of the micro-batch (tokens on this GPU's CP rank), per GPU, (n,) arrays: what one
    dense / MoE layer keeps without recompute (``*_full``) and with the plan's recompute (``*_kept``)."""

    dense_full: np.ndarray
    moe_full: np.ndarray
    dense_kept: np.ndarray
    moe_kept: np.ndarray


def busiest_rank_load(p: PlanArrays, w: Workload) -> np.ndarray:
    """Routed tokens on the busiest expert-parallel rank over the balanced share (`Workload.moe_imbalance`),
    at most ep (every token on one rank); 1 without expert parallelism (one rank computes them all). With a
    capacity factor C no expert takes more than C times its share (the rest are dropped), so the load is
    at most C — and exactly C when experts are padded to their capacity (`Workload.moe_capacity_factor`)."""
    load = np.minimum(w.moe_imbalance, p.ep.astype(float))
    if w.moe_capacity_factor is None:
        return load
    if w.moe_pad_to_capacity:
        return np.full(len(p), float(w.moe_capacity_factor))
    return np.minimum(load, w.moe_capacity_factor)


def _norm(f: ModelFacts, b: np.ndarray, fused: np.ndarray, width: float, out: np.ndarray) -> np.ndarray:
    """One normalisation over ``width`` features, output included (it is the next GEMM's input, kept at
    ``out`` bytes per element by a fused GEMM: `gemm_input_bytes`)."""
    unfused = np.where(f.norm_is_layernorm, 2 * b * width + 8, (4 + 2 * b) * width + 4)
    return np.where(fused, (b + out) * width + 4, unfused)


def layer_activations(f: ModelFacts, p: PlanArrays, w: Workload) -> LayerActivations:
    b = activation_bytes(p)
    g = gemm_input_bytes(p, w)  # the GEMM inputs a fused fp8 block keeps: norm outputs, FC2 inputs
    fused = p.kernels == code("kernels", "fused")
    flash = p.attention_kernel != code("attention_kernel", "eager")
    tp = p.tp.astype(float)
    sp_div = np.where(p.sequence_parallel, tp, 1.0)  # divisor of the non-tensor-parallel regions
    mask = 1.0 if w.dropout > 0 else 0.0
    h = f.hidden

    # attention block: norm (+ its output = QKV input), QK-norm, core, output
    replicated_attn = _norm(f, b, fused, h, g) + b * f.latent_width + mask * h
    # QK-norm keeps its fp32 input, 1/σ and the cast back; rotary saves only cos/sin, not the norm output
    qk_norm = np.where(fused, 0.0, (4 + b) * f.qk_norm_width + 4 * (f.heads + f.kv_heads)) if f.qk_norm_width else 0.0
    qkv = b * (f.q_width + f.k_width + f.v_width)
    lse = 4.0 * f.heads
    # eager attention: the score matrix over the keys each query sees (HF computes it in full for
    # sliding-window layers too and masks afterwards; Megatron's unfused softmax likewise)
    keys = w.seq_len
    eager_scores = np.where(fused, b + mask * (1 + b), 4 + b) * f.heads * keys
    # HF's eager path expands K and V to every query head (repeat_kv)
    eager_extra = np.where(fused, 0.0, b * ((f.q_width - f.k_width) + (f.out_width - f.v_width)))
    core = np.where(flash, lse, eager_scores)
    # the attention output, which the core keeps and the output projection reads: one tensor, unless the
    # projection keeps its own fp8 copy (Transformer Engine)
    proj_copy = np.where(g < b, g, 0.0) * f.out_width
    tensor_attn = qkv + qk_norm + b * f.out_width + proj_copy + np.where(flash, 0.0, eager_extra)
    attention_full = replicated_attn / sp_div + (tensor_attn + core) / tp
    # MLP blocks
    gate = 1.0 if f.gated else 0.0
    mlp_norm = _norm(f, b, fused, h, g) + mask * h

    def ffn(width: float) -> np.ndarray:
        fused_ffn = b * (1 + gate) * width + g * width  # FC1 output, FC2 input
        unfused_ffn = b * width * (4.0 if f.gated else 2.0)
        return np.where(fused, fused_ffn, unfused_ffn)

    dense_mlp = mlp_norm / sp_div + ffn(f.ffn) / tp
    if f.experts:
        k = f.top_k
        # router: fp32 softmax over the experts, top-k indices (int64) and weights (fp32), their sum
        router = np.where(fused, 8.0 * f.experts, 4.0 * f.experts + 12.0 * k + 4.0)
        # each GPU computes k·T·etp/tp routed tokens (the etp ranks of an expert share them) with the
        # expert widths split by etp: hidden-sized tensors k·(etp/tp)·T, FFN-sized k·T/tp.
        # unfused = transformers' grouped_mm experts: per routed token the gathered input and the down
        # projection's output (2·b·h), gate_up output, activation and product (4·b·f_e), three int64
        # permutation indices and the routing weight (26 bytes)
        routed_fused = 2 * b * h * p.etp / tp + (b * (1 + gate) + g) * f.expert_ffn / tp
        routed_unfused = (2 * b * h + 4 * b * f.expert_ffn + 26.0) / tp
        routed = k * busiest_rank_load(p, w) * np.where(fused, routed_fused, routed_unfused)
        moe_mlp = (mlp_norm + router) / sp_div + routed + (ffn(f.shared_ffn) / tp if f.shared_ffn else 0.0)
    else:
        moe_mlp = np.zeros_like(b)

    # DTensor's sequence parallelism (SequenceParallel norms, PrepareModuleInput's all-gather) leaves autograd
    # holding each block's gathered input (b·h) for the weight gradients of its first GEMMs, where
    # Megatron-Core keeps the 1/tp shard and gathers it again in backward (Korthikanti et al. 2022 §4.2.2);
    # measured by `plan dry-run` (tests/test_dryrun.py)
    if stacks()[w.stack]["sequence_parallel_saves_gathered_input"]:
        gathered = np.where(p.sequence_parallel, b * h * (1 - 1 / sp_div), 0.0)
        attention_full = attention_full + gathered
        dense_mlp = dense_mlp + gathered
        moe_mlp = moe_mlp + (gathered if f.experts else 0.0)

    if w.peft is not None:  # frozen base, adapters (constraints.peft)
        from parallelplan.constraints.peft import activation_delta, adapters

        routed_share = f.top_k * busiest_rank_load(p, w) if f.experts else np.zeros_like(b)
        attention_delta, dense_delta, moe_delta = activation_delta(f, adapters(f, w.peft), p, routed_share)
        attention_full = attention_full + attention_delta
        dense_mlp = dense_mlp + dense_delta
        moe_mlp = moe_mlp + moe_delta
    dense_full = attention_full + dense_mlp
    moe_full = attention_full + moe_mlp
    layer_input = b * h / sp_div

    # selective_mm (torchtitan's op policy): the layer input, the attention output and log-sum-exp, and
    # the outputs of the odd-numbered matmuls; an MoE block's grouped GEMMs are not matmuls to the policy
    def saved_outputs(mms: tuple) -> np.ndarray:
        width = np.zeros_like(b)
        for i, (_, n, mode) in enumerate(mms, start=1):
            if i % 2:
                width = width + np.select([mode == "column", mode == "row"], [n / tp, h / sp_div], default=n * 1.0)
        return b * width

    sdpa = (b * f.out_width + lse) / tp
    dense_sac = layer_input + sdpa + saved_outputs(f.attention_matmuls + (f.mlp_matmuls(f.ffn) if f.ffn else ()))
    moe_sac = layer_input + sdpa + saved_outputs(f.attention_matmuls)

    # selective: what each recomputed module frees; a whole-block module (mlp, moe) subsumes the
    # smaller ones inside its block (that block's norm output, moe_act, shared_experts)
    on = {name: (p.recompute_modules >> i & 1) > 0 for i, name in enumerate(RECOMPUTE_MODULES)}
    norm_output = g * h / sp_div
    attention_freed = (on["core_attn"] * core / tp + on["mla_up_proj"] * (qkv / tp if f.latent_width else 0.0)
                       + on["layernorm"] * (f.norms_per_layer - 1) * norm_output)
    mlp_block = dense_mlp - (layer_input + mask * h / sp_div)  # all but its input and the dropout mask
    dense_freed = attention_freed + np.where(on["mlp"], mlp_block, on["layernorm"] * norm_output)
    if f.experts:
        moe_block = moe_mlp - (layer_input + mask * h / sp_div)
        parts = (on["layernorm"] * norm_output + on["moe_act"] * k * busiest_rank_load(p, w) * g * f.expert_ffn / tp
                 + on["shared_experts"] * (ffn(f.shared_ffn) / tp if f.shared_ffn else 0.0))
        moe_freed = attention_freed + np.where(on["moe"], moe_block, parts)
    else:
        moe_freed = attention_freed

    recompute = p.recompute
    modes = [recompute == code("recompute", "full"), recompute == code("recompute", "selective"),
             recompute == code("recompute", "selective_mm")]
    dense_kept = np.select(modes, [layer_input, dense_full - dense_freed, dense_sac], default=dense_full)
    moe_kept = np.select(modes, [layer_input, moe_full - moe_freed, moe_sac], default=moe_full)
    return LayerActivations(dense_full=dense_full, moe_full=moe_full, dense_kept=dense_kept, moe_kept=moe_kept)


def head_and_loss_bytes(f: ModelFacts, p: PlanArrays, w: Workload) -> np.ndarray:
    """Per token, on the last stage, once per micro-batch: final norm, then logits and the loss at its
    peak. Fused: Megatron's vocab-parallel cross-entropy, (4·h + 4·V)/tp (``theoretical_memory_usage``:
    "Inputs to output layer and CE loss"); unfused: `LOSS_BYTES_PER_VOCAB_UNFUSED` · V (with tp > 1
    `LOSS_BYTES_PER_VOCAB_LOSS_PARALLEL` · V/tp), without gradients
    (kind score) `SCORE_BYTES_PER_VOCAB_UNFUSED` · V; serving (kind inference) takes the logits of each
    sequence's last position only, 1/seq_len of them per token. V is the head's width: the vocabulary, or a
    classification or value head's labels (`ModelSpec.num_labels`). Under PEFT the
    frozen final norm and LM head keep no input for their weights' gradients (`peft.norm_freed`)."""
    b = activation_bytes(p)
    fused = p.kernels == code("kernels", "fused")
    tp = p.tp.astype(float)
    sp_div = np.where(p.sequence_parallel, tp, 1.0)
    final_norm = _norm(f, b, fused, f.hidden, b) / sp_div  # the LM head runs in 16 bits under fp8
    if w.peft is not None:
        from parallelplan.constraints.peft import norm_freed

        final_norm = final_norm - norm_freed(f, b, fused) / sp_div
    unfused = (SCORE_BYTES_PER_VOCAB_UNFUSED if w.kind == "score"
               else np.where(tp > 1, LOSS_BYTES_PER_VOCAB_LOSS_PARALLEL, LOSS_BYTES_PER_VOCAB_UNFUSED))
    loss = np.where(fused, 4.0 * f.hidden + 4.0 * f.head_width, unfused * f.head_width) / tp
    if w.kind == "inference":  # the next token's logits at each sequence's last position only
        loss = loss / w.seq_len
    return final_norm + loss


def first_stage_bytes(f: ModelFacts, p: PlanArrays, w: Workload, head_dim: int) -> np.ndarray:
    """Per token, on the first stage per micro-batch in flight: the int64 token ids, and for unfused
    (HF) models the rotary cos/sin tables each forward builds (2·b·head_dim). Under PEFT, less what the
    first layer's input norm does not keep (`peft.first_layer_saving`)."""
    b = activation_bytes(p)
    fused = p.kernels == code("kernels", "fused")
    rotary = np.where(fused, 0.0, 2 * b * head_dim)
    if w.peft is not None:
        from parallelplan.constraints.peft import first_layer_saving

        sp_div = np.where(p.sequence_parallel, p.tp.astype(float), 1.0)
        return 8.0 + rotary - first_layer_saving(f, b, fused) / sp_div
    return 8.0 + rotary
