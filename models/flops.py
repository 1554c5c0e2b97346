"""Model FLOPs per token of a `ModelSpec`: forward, training (forward + backward) and decode.

Convention (stated once, used everywhere):
- Only matrix multiplications are counted, at 2 FLOPs per multiply-add: the projections, the MLPs and
  experts a token is routed to, the router, the LM head, and attention's two batched matmuls
  (Q·Kᵀ and P·V). Elementwise work (norms, softmax, activations, RoPE) and the embedding lookup are not.
  This is Megatron's accounting (Narayanan et al. 2021, "Efficient Large-Scale Language Model Training
  on GPU Clusters", appendix: 72·B·s·l·h²·(1 + s/6h + V/12lh) for GPT) generalised to GQA, MLA, gated
  MLPs and MoE, and it is what `torch.utils.flop_counter.FlopCounterMode` counts.
- Backward = 2 × forward (a gradient with respect to the input and one with respect to the weight per
  matmul), so training = 3 × forward (Kaplan et al. 2020 §2.1; PaLM appendix B). No recompute: the
  cost model adds recomputation on top.
- Attention span: by default (``causal=False``) every query is charged for its whole key span — the full
  sequence s for global layers, min(s, window) for sliding-window layers. This is the Megatron/PaLM/
  torchtitan convention and what dense attention kernels compute (12·L·H·hd·s training FLOPs per token
  for MHA). ``causal=True`` charges only the unmasked (query, key) pairs, (s + 1)/2 keys per query on
  average for global layers, which is what flash-attention kernels execute and what NeMo 25.x reports
  (e.g. Llama-3-8B at s=8192: 57.9 GFLOP/token full vs 51.5 causal).
- MTP modules (DeepSeek-V3) are excluded unless ``include_mtp``; each adds its 2d → d projection, one
  decoder layer and another pass through the shared LM head.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict

from parallelplan.models.params import attention_weight_shapes, mlp_params

if TYPE_CHECKING:
    from parallelplan.models.spec import ModelSpec


class FlopsBreakdown(BaseModel):
    """Forward FLOPs per token by component; training and per-token totals derived from them."""

    model_config = ConfigDict(frozen=True)

    seq_len: int
    causal: bool
    attention_projections: float
    attention_scores: float
    dense_mlp: float
    router: float
    routed_experts: float
    shared_experts: float
    lm_head: float
    mtp: float

    @property
    def forward_per_token(self) -> float:
        return (
            self.attention_projections
            + self.attention_scores
            + self.dense_mlp
            + self.router
            + self.routed_experts
            + self.shared_experts
            + self.lm_head
            + self.mtp
        )

    @property
    def training_per_token(self) -> float:
        """Forward + backward = 3 × forward (see the module docstring)."""
        return 3.0 * self.forward_per_token


def keys_per_query(seq_len: int, window: int | None, *, causal: bool) -> float:
    """Average number of keys one query is scored against in a sequence of ``seq_len`` tokens."""
    if not causal:
        return float(seq_len if window is None else min(seq_len, window))
    if window is None or window >= seq_len:
        return (seq_len + 1) / 2.0
    # positions 0..w-1 see i+1 keys, the remaining s-w positions see w keys each
    return (window * (window + 1) / 2.0 + (seq_len - window) * window) / seq_len


def _score_width(spec: ModelSpec) -> int:
    """Per key: H·d_qk multiply-adds for Q·Kᵀ plus H·d_v for P·V."""
    heads = spec.num_attention_heads
    if spec.mla is not None:
        return heads * (spec.mla.qk_head_dim + spec.mla.v_head_dim)
    return heads * 2 * spec.head_dim


def attention_score_flops(spec: ModelSpec, span_tokens: int, *, causal: bool) -> float:
    """Forward FLOPs of Q·Kᵀ and P·V for one token, over all layers."""
    layers = spec.num_layers
    sliding = spec.sliding_window_layers or 0
    global_keys = keys_per_query(span_tokens, None, causal=causal)
    window_keys = keys_per_query(span_tokens, spec.sliding_window, causal=causal)
    return 2.0 * _score_width(spec) * ((layers - sliding) * global_keys + sliding * window_keys)


def _matmul_flops_per_layer(spec: ModelSpec) -> tuple[int, int, int, int, int]:
    """Forward FLOPs per token of one layer's matmuls: attention projections, dense MLP, router,
    one routed expert, and the shared experts (with Qwen2-MoE's gate)."""
    d = spec.hidden_size
    attention = 2 * sum(i * o for i, o in attention_weight_shapes(spec))
    dense = 0 if spec.ffn_hidden_size is None else 2 * mlp_params(d, spec.ffn_hidden_size, gated=spec.mlp_gated, bias=False)
    if spec.moe is None:
        return attention, dense, 0, 0, 0
    m = spec.moe
    router = 2 * d * m.num_experts
    expert = 2 * mlp_params(d, m.expert_ffn_hidden_size, gated=spec.mlp_gated, bias=False)
    shared = 2 * m.num_shared_experts * mlp_params(d, m.shared_expert_ffn_hidden_size, gated=spec.mlp_gated, bias=False)
    if m.shared_expert_gate:
        shared += 2 * d
    return attention, dense, router, expert, shared


def count_flops(spec: ModelSpec, seq_len: int, *, causal: bool = False, include_mtp: bool = False) -> FlopsBreakdown:
    """Forward FLOPs per token for sequences of ``seq_len`` tokens (training: ×3, see the docstring)."""
    if not isinstance(seq_len, int) or seq_len < 1:
        raise ValueError(f"seq_len must be a positive integer, got {seq_len!r}")
    attention, dense, router, expert, shared = _matmul_flops_per_layer(spec)
    moe_layers = spec.num_moe_layers
    k = spec.moe.experts_per_token if spec.moe is not None else 0
    lm_head = 2.0 * spec.hidden_size * spec.head_width
    mtp = 0.0
    if include_mtp and spec.mtp_layers:
        mlp = router + k * expert + shared if spec.moe is not None else dense
        d = spec.hidden_size
        per_module = 2.0 * (2 * d * d) + attention + mlp + lm_head
        # the MTP layer is a decoder layer of the same kind as the last one: sliding only if all layers are
        window_all = spec.sliding_window is not None and spec.sliding_window_layers == spec.num_layers
        keys = keys_per_query(seq_len, spec.sliding_window if window_all else None, causal=causal)
        per_module += 2.0 * _score_width(spec) * keys
        mtp = spec.mtp_layers * per_module
    return FlopsBreakdown(
        seq_len=seq_len,
        causal=causal,
        attention_projections=float(spec.num_layers * attention),
        attention_scores=attention_score_flops(spec, seq_len, causal=causal),
        dense_mlp=float((spec.num_layers - moe_layers) * dense),
        router=float(moe_layers * router),
        routed_experts=float(moe_layers * k * expert),
        shared_experts=float(moe_layers * shared),
        lm_head=lm_head,
        mtp=mtp,
    )


def decode_flops_per_token(spec: ModelSpec, context_len: int) -> float:
    """Forward FLOPs to generate one token that attends to ``context_len`` cached tokens (itself
    included): the matmuls of one token plus attention over its context (no causal halving applies,
    the one query sees every cached key)."""
    if not isinstance(context_len, int) or context_len < 1:
        raise ValueError(f"context_len must be a positive integer, got {context_len!r}")
    full = count_flops(spec, context_len, causal=False)
    return full.forward_per_token
