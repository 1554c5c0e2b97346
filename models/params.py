"""Exact parameter counts of a `ModelSpec`, per component.

Every count is the number of elements of the weight and bias tensors of the module, as the reference
implementations lay them out (HF `transformers` modeling files; Megatron-LM for GPT-3-style models):

- attention, standard: q (d → H·hd), k and v (d → K·hd each), o (H·hd → d); biases on q/k/v when
  ``qkv_bias``, on o when ``attention_out_bias``; QK-norm weights (per head: hd each for q and k; full:
  H·hd + K·hd, OLMo 2); one sink logit per head (gpt-oss).
- attention, MLA (DeepSeek-V2 §2.1): q_a (d → r_q) + its RMSNorm + q_b (r_q → H·(d_nope + d_rope)), or
  q (d → H·(d_nope + d_rope)) without query compression; kv_a (d → r_kv + d_rope) + its RMSNorm;
  kv_b (r_kv → H·(d_nope + d_v)); o (H·d_v → d).
- MLP: gated = 3·d·f (gate, up, down), plain = 2·d·f; biases f per input projection and d on the output.
- MoE: router E·d (+E bias), E experts (each an MLP of width f_e), shared experts (each an MLP of width
  f_s) and, for Qwen2-MoE, a d → 1 shared-expert gate.
- norms: d weights (RMSNorm) or 2·d (LayerNorm with bias), ``norms_per_layer`` per layer plus the final one.
- embeddings: V·d, plus max_positions·d for learned positions (GPT-2/GPT-3); the LM head V·d unless tied.
- MTP (DeepSeek-V3 §2.2): per module two RMSNorms (d each), a 2d → d projection, one decoder layer and
  the output head's RMSNorm (d); the embedding and output head are shared with the main model.

Active parameters (per token) = total − routed experts + ``experts_per_token`` experts per MoE layer.

Buffers are not parameters and are not counted: rotary ``inv_freq`` (stored per layer in the Llama 2 -hf
checkpoints) and DeepSeek-V3's ``e_score_correction_bias`` (a buffer in `transformers`, updated by the
auxiliary-loss-free balancing rule rather than by gradients; 256 values per MoE layer).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:
    from parallelplan.models.spec import ModelSpec


class ParamBreakdown(BaseModel):
    """Parameter counts per component (whole model, all layers). ``mtp`` is outside ``total``."""

    model_config = ConfigDict(frozen=True)

    embedding: int
    attention: int
    dense_mlp: int
    router: int
    routed_experts: int
    routed_experts_active: int
    shared_experts: int
    norms: int
    lm_head: int
    mtp: int

    @property
    def total(self) -> int:
        return (
            self.embedding
            + self.attention
            + self.dense_mlp
            + self.router
            + self.routed_experts
            + self.shared_experts
            + self.norms
            + self.lm_head
        )

    @property
    def active(self) -> int:
        return self.total - self.routed_experts + self.routed_experts_active

    @property
    def total_with_mtp(self) -> int:
        return self.total + self.mtp


def norm_params(spec: ModelSpec, width: int) -> int:
    """One normalisation layer over ``width`` features: weight, plus bias for LayerNorm with bias."""
    return width * (2 if spec.norm_bias else 1)


def mlp_params(d: int, ffn: int, *, gated: bool, bias: bool) -> int:
    """One MLP: (gate,) up, down projections with optional biases."""
    in_projections = 2 if gated else 1
    weights = (in_projections + 1) * d * ffn
    return weights + (in_projections * ffn + d if bias else 0)


def attention_weight_shapes(spec: ModelSpec) -> list[tuple[int, int]]:
    """(in, out) of every matmul weight in one attention block, in forward order."""
    d, heads = spec.hidden_size, spec.num_attention_heads
    if spec.mla is not None:
        m = spec.mla
        if m.q_lora_rank is not None:
            q = [(d, m.q_lora_rank), (m.q_lora_rank, heads * m.qk_head_dim)]
        else:
            q = [(d, heads * m.qk_head_dim)]
        kv = [(d, m.kv_lora_rank + m.qk_rope_head_dim), (m.kv_lora_rank, heads * (m.qk_nope_head_dim + m.v_head_dim))]
        return q + kv + [(heads * m.v_head_dim, d)]
    hd, kv_heads = spec.head_dim, spec.num_kv_heads
    return [(d, heads * hd), (d, kv_heads * hd), (d, kv_heads * hd), (heads * hd, d)]


def attention_params(spec: ModelSpec) -> int:
    """Parameters of one attention block (see the module docstring for the layout)."""
    d, heads = spec.hidden_size, spec.num_attention_heads
    weights = sum(i * o for i, o in attention_weight_shapes(spec))
    out_bias = d if spec.attention_out_bias else 0
    if spec.mla is not None:
        m = spec.mla
        # With a bias, MLA's down-projections (q_a and kv_a) carry it; the uncompressed q never does.
        in_bias = (m.q_lora_rank or 0) + m.kv_lora_rank + m.qk_rope_head_dim if spec.qkv_bias else 0
        latent_norms = (m.q_lora_rank or 0) + m.kv_lora_rank  # RMSNorm weights on the compressed q and kv
        return weights + in_bias + out_bias + latent_norms
    hd, kv_heads = spec.head_dim, spec.num_kv_heads
    in_bias = (heads + 2 * kv_heads) * hd if spec.qkv_bias else 0
    qk_norm = {"none": 0, "per_head": 2 * hd, "full": (heads + kv_heads) * hd}[spec.qk_norm]
    sinks = heads if spec.attention_sinks else 0
    return weights + in_bias + out_bias + qk_norm + sinks


def expert_params(spec: ModelSpec) -> int:
    """One routed expert."""
    assert spec.moe is not None
    return mlp_params(spec.hidden_size, spec.moe.expert_ffn_hidden_size, gated=spec.mlp_gated, bias=spec.moe.expert_bias)


def router_params(spec: ModelSpec) -> int:
    assert spec.moe is not None
    e = spec.moe.num_experts
    return e * spec.hidden_size + (e if spec.moe.router_bias else 0)


def shared_expert_params(spec: ModelSpec) -> int:
    """All shared experts of one MoE layer, with Qwen2-MoE's d → 1 gate."""
    assert spec.moe is not None
    m = spec.moe
    per = mlp_params(spec.hidden_size, m.shared_expert_ffn_hidden_size, gated=spec.mlp_gated, bias=m.shared_expert_bias)
    return m.num_shared_experts * per + (spec.hidden_size if m.shared_expert_gate else 0)


def dense_mlp_params(spec: ModelSpec) -> int:
    """One dense MLP layer (0 when the model has none)."""
    if spec.ffn_hidden_size is None:
        return 0
    return mlp_params(spec.hidden_size, spec.ffn_hidden_size, gated=spec.mlp_gated, bias=spec.mlp_bias)


def moe_mlp_params(spec: ModelSpec) -> int:
    """One MoE layer's MLP: router, every routed expert and the shared experts."""
    assert spec.moe is not None
    return router_params(spec) + spec.moe.num_experts * expert_params(spec) + shared_expert_params(spec)


def layer_params(spec: ModelSpec, *, moe_layer: bool) -> int:
    """One decoder layer: attention, MLP (dense or MoE) and its norms."""
    mlp = moe_mlp_params(spec) if moe_layer else dense_mlp_params(spec)
    return attention_params(spec) + mlp + spec.norms_per_layer * norm_params(spec, spec.hidden_size)


def mtp_module_params(spec: ModelSpec) -> int:
    """One DeepSeek-V3 MTP module without the shared embedding and head (§2.2, Figure 3)."""
    d = spec.hidden_size
    return 3 * norm_params(spec, d) + 2 * d * d + layer_params(spec, moe_layer=spec.moe is not None)


def count_parameters(spec: ModelSpec) -> ParamBreakdown:
    d, layers = spec.hidden_size, spec.num_layers
    moe_layers = spec.num_moe_layers
    dense_layers = layers - moe_layers
    embedding = spec.vocab_size * d
    if spec.position_embedding == "learned":
        assert spec.max_position_embeddings is not None
        embedding += spec.max_position_embeddings * d
    if spec.moe is not None:
        experts_all = moe_layers * spec.moe.num_experts * expert_params(spec)
        experts_active = moe_layers * spec.moe.experts_per_token * expert_params(spec)
        router = moe_layers * router_params(spec)
        shared = moe_layers * shared_expert_params(spec)
    else:
        experts_all = experts_active = router = shared = 0
    return ParamBreakdown(
        embedding=embedding,
        attention=layers * attention_params(spec),
        dense_mlp=dense_layers * dense_mlp_params(spec),
        router=router,
        routed_experts=experts_all,
        routed_experts_active=experts_active,
        shared_experts=shared,
        norms=(layers * spec.norms_per_layer + 1) * norm_params(spec, d),
        lm_head=0 if spec.head_tied else spec.head_width * d,
        mtp=spec.mtp_layers * mtp_module_params(spec),
    )
