"""The facts about a model that the cost model needs, computed once: per-layer parameter counts, widths,
which layers are MoE, and per-token forward FLOPs of each layer kind.

Everything is derived from `models` (parameter and FLOP counts are not re-derived here); this module only
arranges them per layer so that pipeline stages can sum them.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from parallelplan.constraints.states import FactoredStates
from parallelplan.models import ModelSpec
from parallelplan.models import params as P
from parallelplan.models.flops import keys_per_query


@dataclass(frozen=True)
class ModelFacts:
    hidden: int
    head_width: int  # outputs of the last stage's head: the vocabulary, or a classification / value head's labels
    layers: int
    heads: int
    kv_heads: int
    q_width: int  # query width per token (H·hd, or H·(nope+rope) for MLA)
    k_width: int  # key width per token as attention sees it (KV·hd, or H·(nope+rope) for MLA)
    v_width: int  # value / attention-output width per token (KV·hd and H·hd, or H·v_head_dim for MLA)
    out_width: int  # attention output width (H·hd, or H·v_head_dim)
    latent_width: int  # MLA compressed q + kv widths kept per token (0 without MLA)
    ffn: int  # dense MLP width (0 when every layer is MoE)
    gated: bool
    norm_is_layernorm: bool
    norms_per_layer: int
    qk_norm_width: int  # elements per token that QK-norm normalises (0 without QK-norm)
    rotary: bool  # rotary position embeddings (RoPE) applied to q and k in every layer
    experts: int
    top_k: int
    expert_ffn: int
    shared_ffn: int  # total width of the shared experts
    is_moe: tuple[bool, ...]  # per layer
    attention_params: int  # per layer; the part split by tensor parallelism is attention_split_params
    attention_split_params: int  # column- and row-parallel projections (MLA's down-projections stay whole)
    dense_mlp_params: int
    norm_params_per_layer: int
    router_params: int
    expert_params: int
    shared_params: int
    embedding_params: int  # token (+ learned position) embeddings
    position_params: int  # learned position embeddings (not split by TP)
    head_params: int  # LM head weights (V·d, whether tied or not: a tied head still exists on the last stage)
    tied: bool
    final_norm_params: int
    mtp_layers: int
    mtp_extra_params: int  # each MTP module beyond its decoder layer: the 2d → d projection and 3 norms
    factored_states: FactoredStates  # Adafactor's and CAME's state elements per parameter
    sliding_window: int  # tokens a sliding-window layer attends to (0: none)
    sliding_layer_share: float  # fraction of the layers that use the sliding window
    attention_matmuls: tuple[tuple[int, int, str], ...]  # (in, out, TP split) in forward order

    def mlp_matmuls(self, width: int) -> tuple[tuple[int, int, str], ...]:
        """The MLP's matmuls in forward order: gate and up (gated) or FC1, then the down projection."""
        ups = 2 if self.gated else 1
        return ((self.hidden, width, "column"),) * ups + ((width, self.hidden, "row"),)

    @property
    def moe_prefix(self) -> np.ndarray:
        """moe_prefix[i] = number of MoE layers among the first i layers (length layers + 1)."""
        return np.concatenate([[0], np.cumsum(np.array(self.is_moe, dtype=np.int64))])

    @property
    def head_dim_q(self) -> int:
        return self.q_width // self.heads


def _attention_matmuls(spec: ModelSpec) -> tuple[tuple[int, int, str], ...]:
    """(in, out, how TP splits it) of each attention matmul in forward order: projections from the hidden
    state split their output (column-parallel), the output projection its input (row-parallel), MLA's
    down-projections to the latent stay whole (replicated) and its up-projections split their output."""
    shapes = P.attention_weight_shapes(spec)
    latents = set()
    if spec.mla is not None:
        latents = {spec.mla.q_lora_rank, spec.mla.kv_lora_rank + spec.mla.qk_rope_head_dim}
    out = []
    for i, (k, n) in enumerate(shapes):
        if i == len(shapes) - 1:
            mode = "row"
        elif k == spec.hidden_size and n in latents:
            mode = "replicated"
        else:
            mode = "column"
        out.append((k, n, mode))
    return tuple(out)


def _matrix_shapes(spec: ModelSpec) -> list[tuple[int, int, int]]:
    """(count in the whole model, rows, cols) of every weight matrix, for Adafactor's factored state."""
    d = spec.hidden_size
    shapes = [(spec.num_layers, i, o) for i, o in P.attention_weight_shapes(spec)]
    mlp_mats = 3 if spec.mlp_gated else 2
    if spec.ffn_hidden_size:
        shapes.append((spec.num_dense_layers * mlp_mats, d, spec.ffn_hidden_size))
    if spec.moe is not None:
        m = spec.moe
        shapes.append((spec.num_moe_layers * m.num_experts * mlp_mats, d, m.expert_ffn_hidden_size))
        shapes.append((spec.num_moe_layers, d, m.num_experts))
        if m.num_shared_experts:
            shapes.append((spec.num_moe_layers * m.num_shared_experts * mlp_mats, d, m.shared_expert_ffn_hidden_size))
    shapes.append((1, spec.vocab_size, d))
    if not spec.head_tied:
        shapes.append((1, spec.head_width, d))
    return shapes


def _factored_states(spec: ModelSpec) -> FactoredStates:
    """`FactoredStates` of the model: per matrix a row and a column accumulator (r + c values instead of
    r·c), per vector a full one; CAME adds a full first moment and a second (residual) row and column."""
    shapes = _matrix_shapes(spec)
    matrix_elements = sum(n * r * c for n, r, c in shapes)
    factored = sum(n * (r + c) for n, r, c in shapes) / spec.total_params
    vectors = max(spec.total_params - matrix_elements, 0) / spec.total_params
    return FactoredStates(adafactor=factored + vectors, came=1.0 + 2.0 * factored + vectors)


@lru_cache(maxsize=64)
def model_facts(spec: ModelSpec) -> ModelFacts:
    d, heads = spec.hidden_size, spec.num_attention_heads
    if spec.mla is not None:
        m = spec.mla
        q_width = k_width = heads * m.qk_head_dim
        v_width = out_width = heads * m.v_head_dim
        latent = (m.q_lora_rank or 0) + m.kv_lora_rank + m.qk_rope_head_dim
        kv_heads = heads
    else:
        q_width = out_width = heads * spec.head_dim
        k_width = v_width = spec.num_kv_heads * spec.head_dim
        latent = 0
        kv_heads = spec.num_kv_heads
    qk_norm = 0 if spec.qk_norm == "none" or spec.mla is not None else q_width + k_width
    moe = spec.moe
    dense = set(moe.dense_layers) if moe is not None else set(range(spec.num_layers))
    pos = spec.max_position_embeddings * d if spec.position_embedding == "learned" else 0
    return ModelFacts(
        hidden=d,
        head_width=spec.head_width,
        layers=spec.num_layers,
        heads=heads,
        kv_heads=kv_heads,
        q_width=q_width,
        k_width=k_width,
        v_width=v_width,
        out_width=out_width,
        latent_width=latent,
        ffn=spec.ffn_hidden_size or 0,
        gated=spec.mlp_gated,
        norm_is_layernorm=spec.norm_type == "layernorm",
        norms_per_layer=spec.norms_per_layer,
        qk_norm_width=qk_norm,
        rotary=spec.position_embedding == "rope",
        experts=moe.num_experts if moe else 0,
        top_k=moe.experts_per_token if moe else 0,
        expert_ffn=moe.expert_ffn_hidden_size if moe else 0,
        shared_ffn=(moe.num_shared_experts * moe.shared_expert_ffn_hidden_size) if moe else 0,
        is_moe=tuple(i not in dense for i in range(spec.num_layers)),
        attention_params=P.attention_params(spec),
        attention_split_params=sum(k * n for k, n, mode in _attention_matmuls(spec) if mode != "replicated"),
        dense_mlp_params=P.dense_mlp_params(spec),
        norm_params_per_layer=spec.norms_per_layer * P.norm_params(spec, d),
        router_params=P.router_params(spec) if moe else 0,
        expert_params=P.expert_params(spec) if moe else 0,
        shared_params=P.shared_expert_params(spec) if moe else 0,
        embedding_params=spec.params.embedding,
        position_params=pos,
        head_params=spec.head_width * d,
        tied=spec.head_tied,
        final_norm_params=P.norm_params(spec, d),
        mtp_layers=spec.mtp_layers,
        mtp_extra_params=P.mtp_module_params(spec) - P.layer_params(spec, moe_layer=moe is not None) if spec.mtp_layers else 0,
        factored_states=_factored_states(spec),
        sliding_window=spec.sliding_window or 0,
        sliding_layer_share=(spec.sliding_window_layers or 0) / spec.num_layers,
        attention_matmuls=_attention_matmuls(spec),
    )


def attention_keys(spec: ModelSpec, seq_len: int, *, causal: bool) -> tuple[float, float]:
    """Average keys per query on (global, sliding-window) layers for sequences of ``seq_len`` tokens."""
    return (keys_per_query(seq_len, None, causal=causal), keys_per_query(seq_len, spec.sliding_window, causal=causal))
