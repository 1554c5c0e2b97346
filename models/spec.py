"""`ModelSpec`: the architecture facts of a decoder-only transformer, dense or mixture-of-experts.

One frozen, validated value per model. It knows nothing about GPUs or plans. Parameter counts live in
`models.params`, FLOP counts in `models.flops`; the properties here only forward to them.

Conventions (every field is in the model's own units: counts, not bytes):
- ``head_dim`` is the per-head width of queries/keys/values (explicit in Gemma 2, Qwen3, gpt-oss,
  Nemotron, where it differs from ``hidden_size / num_attention_heads``).
- ``ffn_hidden_size`` is the width of the dense MLP; MoE experts have their own width in ``moe``.
- MLA (DeepSeek-V2 §2.1, arXiv 2405.04434) replaces the q/k/v projections with low-rank ones; the
  ``mla`` block then fixes the per-head widths and ``head_dim`` is unused.
- ``dense_layers`` (in ``moe``) lists the 0-based indices of layers whose MLP is dense; every other
  layer is an MoE layer. The convenience inputs ``first_k_dense_layers`` / ``moe_layer_frequency``
  (DeepSeek's ``first_k_dense_replace`` / ``moe_layer_freq``: layer i is MoE iff i >= k and i % f == 0)
  are expanded into it, so a spec serialises one way only.
- ``mtp_layers`` multi-token-prediction modules (DeepSeek-V3 §2.2) are counted apart: the official
  671B of DeepSeek-V3 excludes them.
- ``num_labels``: a classification head of that many outputs in place of the LM head (HF's
  ``*ForSequenceClassification`` / ``*ForTokenClassification``, ``Linear(hidden, num_labels)`` without bias,
  never tied to the embedding); 1 is the value head of PPO's critic and of a reward model (OpenRLHF's and
  verl's critics, HF reward models). None: the LM head, vocabulary-wide.
"""

from __future__ import annotations

from functools import cached_property
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, model_validator

if TYPE_CHECKING:
    from parallelplan.models.flops import FlopsBreakdown
    from parallelplan.models.params import ParamBreakdown

SIZE_LIMIT = 2**31
"""Largest size any field may take: far above every real model, low enough that FLOPs stay finite."""
PositiveInt = Annotated[StrictInt, Field(ge=1, le=SIZE_LIMIT)]
NonNegativeInt = Annotated[StrictInt, Field(ge=0, le=SIZE_LIMIT)]
"""Sizes are strict integers (no "64", no true) up to SIZE_LIMIT."""

Activation = Literal["silu", "gelu", "gelu_tanh", "relu", "relu2"]
"""Elementwise MLP activations. With ``mlp_gated`` silu is SwiGLU and gelu/gelu_tanh is GeGLU
(Shazeer 2020, arXiv 2002.05202); relu2 is squared ReLU (So et al. 2021, used by Nemotron-4)."""


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class MLASpec(_Frozen):
    """Multi-head latent attention (DeepSeek-V2 §2.1). ``q_lora_rank`` None = queries not compressed."""

    q_lora_rank: PositiveInt | None = None
    kv_lora_rank: PositiveInt
    qk_nope_head_dim: PositiveInt
    qk_rope_head_dim: PositiveInt
    v_head_dim: PositiveInt

    @property
    def qk_head_dim(self) -> int:
        return self.qk_nope_head_dim + self.qk_rope_head_dim


class MoESpec(_Frozen):
    """Mixture-of-experts MLP (Shazeer et al. 2017; Fedus et al. 2021; DeepSeekMoE arXiv 2401.06066).

    ``shared_expert_ffn_hidden_size`` is the width of ONE shared expert; ``num_shared_experts`` of them
    run on every token. ``shared_expert_gate`` is Qwen2-MoE's sigmoid gate on the shared expert.
    ``router_bias`` / ``expert_bias``: gpt-oss adds biases to the router and inside each expert;
    ``shared_expert_bias``: DeepSeek-V2 with ``mlp_bias`` biases its shared experts.
    """

    num_experts: Annotated[StrictInt, Field(ge=2, le=SIZE_LIMIT)]
    experts_per_token: PositiveInt
    expert_ffn_hidden_size: PositiveInt
    num_shared_experts: NonNegativeInt = 0
    shared_expert_ffn_hidden_size: NonNegativeInt = 0
    shared_expert_gate: bool = False
    router_bias: bool = False
    expert_bias: bool = False
    shared_expert_bias: bool = False
    dense_layers: tuple[NonNegativeInt, ...] = ()

    @model_validator(mode="after")
    def _consistent(self) -> MoESpec:
        if self.experts_per_token > self.num_experts:
            raise ValueError(
                f"experts_per_token ({self.experts_per_token}) must be <= num_experts ({self.num_experts})"
            )
        if self.num_shared_experts and not self.shared_expert_ffn_hidden_size:
            raise ValueError("num_shared_experts > 0 needs shared_expert_ffn_hidden_size > 0")
        if self.shared_expert_ffn_hidden_size and not self.num_shared_experts:
            raise ValueError("shared_expert_ffn_hidden_size is set but num_shared_experts is 0")
        if self.shared_expert_gate and not self.num_shared_experts:
            raise ValueError("shared_expert_gate needs num_shared_experts > 0")
        if len(set(self.dense_layers)) != len(self.dense_layers):
            raise ValueError("dense_layers has repeated layer indices")
        return self


class ModelSpec(_Frozen):
    """Architecture of a decoder-only transformer. See the module docstring for conventions."""

    name: Annotated[str, Field(min_length=1)]
    architecture: str = "custom"
    display_name: str | None = None
    is_estimate: bool = False
    source: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()

    # trunk
    hidden_size: PositiveInt
    num_layers: PositiveInt
    vocab_size: PositiveInt
    max_position_embeddings: PositiveInt | None = None
    position_embedding: Literal["rope", "learned", "alibi", "none"] = "rope"
    tie_word_embeddings: bool = False
    num_labels: PositiveInt | None = None

    # attention
    num_attention_heads: PositiveInt
    num_kv_heads: PositiveInt | None = None
    head_dim: PositiveInt | None = None
    qkv_bias: bool = False
    attention_out_bias: bool = False
    qk_norm: Literal["none", "per_head", "full"] = "none"
    attention_sinks: bool = False
    sliding_window: PositiveInt | None = None
    sliding_window_layers: NonNegativeInt | None = None
    mla: MLASpec | None = None

    # MLP (None only when every layer is an MoE layer)
    ffn_hidden_size: PositiveInt | None = None
    mlp_gated: bool = True
    activation: Activation = "silu"
    mlp_bias: bool = False

    # norms and residual layout
    norm_type: Literal["rmsnorm", "layernorm"] = "rmsnorm"
    norm_bias: bool = False
    norms_per_layer: PositiveInt = 2
    parallel_residual: bool = False

    moe: MoESpec | None = None
    mtp_layers: NonNegativeInt = 0

    @model_validator(mode="before")
    @classmethod
    def _expand_conveniences(cls, data: Any) -> Any:
        """Fill defaults that follow from other fields, and expand the MoE layer-pattern shorthands."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        heads, hidden = data.get("num_attention_heads"), data.get("hidden_size")
        if data.get("num_kv_heads") is None and heads is not None:
            data["num_kv_heads"] = heads
        if (
            data.get("head_dim") is None
            and data.get("mla") is None
            and isinstance(heads, int)
            and isinstance(hidden, int)
            and heads > 0
            and hidden > 0
            and hidden % heads == 0
        ):
            data["head_dim"] = hidden // heads
        if data.get("sliding_window") is not None and data.get("sliding_window_layers") is None:
            data["sliding_window_layers"] = data.get("num_layers")
        moe = data.get("moe")
        if isinstance(moe, dict) and ("first_k_dense_layers" in moe or "moe_layer_frequency" in moe):
            moe = dict(moe)
            first_k = moe.pop("first_k_dense_layers", 0)
            freq = moe.pop("moe_layer_frequency", 1)
            layers = data.get("num_layers")
            if "dense_layers" in moe:
                raise ValueError("give moe.dense_layers or the first_k_dense_layers/moe_layer_frequency shorthand, not both")
            if not all(isinstance(v, int) and not isinstance(v, bool) for v in (first_k, freq, layers)) or (
                first_k < 0 or freq < 1 or not 0 < layers <= SIZE_LIMIT
            ):
                raise ValueError(
                    "moe.first_k_dense_layers (int >= 0) and moe.moe_layer_frequency (int >= 1) need an "
                    f"integer num_layers; got {first_k!r}, {freq!r}, {layers!r}"
                )
            moe["dense_layers"] = tuple(i for i in range(layers) if i < first_k or i % freq != 0)
            data["moe"] = moe
        return data

    @model_validator(mode="after")
    def _consistent(self) -> ModelSpec:
        if self.mla is None:
            if self.head_dim is None:
                raise ValueError(
                    f"hidden_size ({self.hidden_size}) is not divisible by num_attention_heads "
                    f"({self.num_attention_heads}); set head_dim explicitly"
                )
            if self.num_attention_heads % self.num_kv_heads:
                raise ValueError(
                    f"num_attention_heads ({self.num_attention_heads}) must be a multiple of num_kv_heads "
                    f"({self.num_kv_heads})"
                )
        if self.sliding_window is None and self.sliding_window_layers:
            raise ValueError("sliding_window_layers is set but sliding_window is not")
        if self.sliding_window_layers is not None and self.sliding_window_layers > self.num_layers:
            raise ValueError(
                f"sliding_window_layers ({self.sliding_window_layers}) exceeds num_layers ({self.num_layers})"
            )
        if self.norm_bias and self.norm_type != "layernorm":
            raise ValueError("norm_bias is only meaningful with norm_type 'layernorm'")
        if self.position_embedding == "learned" and self.max_position_embeddings is None:
            raise ValueError("learned position embeddings need max_position_embeddings")
        if self.ffn_hidden_size is None and self.num_dense_layers:
            raise ValueError(f"ffn_hidden_size is required: {self.num_dense_layers} layer(s) have a dense MLP")
        if self.moe is not None:
            bad = [i for i in self.moe.dense_layers if i >= self.num_layers]
            if bad:
                raise ValueError(f"moe.dense_layers {bad} are outside 0..{self.num_layers - 1}")
            if len(self.moe.dense_layers) == self.num_layers:
                raise ValueError("moe.dense_layers covers every layer: no layer is MoE; drop the moe block")
        return self

    # -- structure -------------------------------------------------------------------------------

    @property
    def attention_kind(self) -> Literal["mha", "gqa", "mqa", "mla"]:
        if self.mla is not None:
            return "mla"
        if self.num_kv_heads == self.num_attention_heads:
            return "mha"
        return "mqa" if self.num_kv_heads == 1 else "gqa"

    @property
    def is_moe(self) -> bool:
        return self.moe is not None

    @property
    def num_moe_layers(self) -> int:
        return 0 if self.moe is None else self.num_layers - len(self.moe.dense_layers)

    @property
    def num_dense_layers(self) -> int:
        return self.num_layers - self.num_moe_layers

    @property
    def head_width(self) -> int:
        """Outputs of the head: the vocabulary (LM head) or ``num_labels`` (a classification or value head)."""
        return self.num_labels or self.vocab_size

    @property
    def head_tied(self) -> bool:
        """The head is the input embedding's table (an LM head with tied embeddings)."""
        return self.tie_word_embeddings and self.num_labels is None

    def with_value_head(self) -> ModelSpec:
        """This trunk with a one-wide value head (``num_labels`` 1): PPO's critic or a reward model of its family."""
        return type(self).model_validate(self.model_dump() | {"num_labels": 1})

    @property
    def kv_cache_elements_per_token(self) -> int:
        """Cached elements per token, summed over layers: 2·kv_heads·head_dim per layer, or
        kv_lora_rank + qk_rope_head_dim per layer for MLA (DeepSeek-V2 §2.1.2, Table 1)."""
        if self.mla is not None:
            return self.num_layers * (self.mla.kv_lora_rank + self.mla.qk_rope_head_dim)
        return self.num_layers * 2 * self.num_kv_heads * self.head_dim

    # -- counts (formulas in models.params and models.flops) ---------------------------------------

    @cached_property
    def params(self) -> ParamBreakdown:
        from parallelplan.models.params import count_parameters

        return count_parameters(self)

    @property
    def total_params(self) -> int:
        """All parameters of the main model (embeddings included, MTP modules excluded)."""
        return self.params.total

    @property
    def active_params(self) -> int:
        """Parameters a token's forward pass reads: total minus the routed experts it skips."""
        return self.params.active

    def flops(self, seq_len: int, *, causal: bool = False, include_mtp: bool = False) -> FlopsBreakdown:
        from parallelplan.models.flops import count_flops

        return count_flops(self, seq_len, causal=causal, include_mtp=include_mtp)

    def flops_per_token(self, seq_len: int, *, causal: bool = False, include_mtp: bool = False) -> float:
        """Training model FLOPs per token (forward + backward, no recompute); see `models.flops`."""
        return self.flops(seq_len, causal=causal, include_mtp=include_mtp).training_per_token
