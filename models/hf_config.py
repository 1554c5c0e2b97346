"""HuggingFace ``config.json`` → `ModelSpec` fields, one small parser per supported family.

Each parser reads the keys the family's `transformers` (5.x) modeling file reads and applies the defaults
its configuration class declares for keys a ``config.json`` may omit (named in each parser, e.g. Gemma 2's
``head_dim`` 256, Mistral's 8 KV heads, Falcon's ``multi_query`` true). Sizes that define the network —
hidden size, layers, attention heads, MLP width, vocabulary — have no default here: a config without them
is reported, never guessed. The tests build the `transformers` model from the same dicts (and from each
with an optional key deleted) and check parameter counts and sliding-window layers against it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from parallelplan.models.errors import ModelError
from parallelplan.models.spec import SIZE_LIMIT

_ACTIVATIONS = {
    "silu": "silu",
    "swish": "silu",
    "gelu": "gelu",
    "gelu_new": "gelu_tanh",
    "gelu_fast": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu_python_tanh": "gelu_tanh",
    "relu": "relu",
    "relu2": "relu2",
}

_ABSENT = object()
_REQUIRED = object()
_INVALID = object()


class _Reader:
    """Reads typed values from a config dict, collecting every problem before raising once."""

    def __init__(self, cfg: dict[str, Any], family: str):
        self.cfg = cfg
        self.family = family
        self.missing: list[str] = []
        self.invalid: list[str] = []

    def _lookup(self, keys: tuple[str, ...]) -> tuple[str, Any]:
        for key in keys:
            if key in self.cfg:
                return key, self.cfg[key]
        return keys[0], _ABSENT

    def size(self, *keys: str, default: Any = _REQUIRED, null: Any = _INVALID, minimum: int = 1) -> Any:
        """An integer under the first of ``keys`` present (aliases, e.g. ``n_embd``). Absent: ``default``
        (reported missing when required). Explicit null: ``null`` (reported invalid unless given)."""
        key, value = self._lookup(keys)
        if value is _ABSENT:
            if default is _REQUIRED:
                self.missing.append(" or ".join(keys))
                return None
            return default
        if value is None:
            if null is _INVALID:
                self.invalid.append(f"'{key}' = null: expected an integer")
                return None
            return null
        if isinstance(value, bool) or not isinstance(value, int):
            self.invalid.append(f"'{key}' = {value!r}: expected an integer")
            return None
        if not minimum <= value <= SIZE_LIMIT:
            self.invalid.append(f"'{key}' = {value}: must be between {minimum} and {SIZE_LIMIT}")
            return None
        return value

    def flag(self, key: str, default: bool) -> bool:
        value = self.cfg.get(key, default)
        if value is None:
            return default
        if not isinstance(value, bool):
            self.invalid.append(f"'{key}' = {value!r}: expected true or false")
            return default
        return value

    def int_list(self, key: str) -> list[int]:
        value = self.cfg.get(key) or []
        if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            self.invalid.append(f"'{key}' = {value!r}: expected a list of layer indices")
            return []
        return value

    def activation(self, *keys: str, default: str) -> str:
        key, value = self._lookup(keys)
        if value is _ABSENT or value is None:
            value = default
        if not isinstance(value, str) or value not in _ACTIVATIONS:
            self.invalid.append(f"'{key}' = {value!r}: supported activations are {', '.join(sorted(_ACTIVATIONS))}")
            return "silu"
        return _ACTIVATIONS[value]

    def sliding_layers(self, window: int | None, layers: int | None, rule: Callable[[int], bool]) -> int | None:
        """How many of ``layers`` layers use the window: from ``layer_types`` when the config lists them
        (one "sliding_attention" / "full_attention" per layer), else the family's rule."""
        if window is None or layers is None:
            return None
        types = self.cfg.get("layer_types")
        if types is None:
            return sum(1 for i in range(layers) if rule(i))
        if not isinstance(types, list) or len(types) != layers or not all(isinstance(t, str) for t in types):
            self.invalid.append(f"'layer_types' must list one attention type per layer ({layers} strings)")
            return None
        return sum(1 for t in types if t == "sliding_attention")

    def finish(self) -> None:
        if self.missing or self.invalid:
            parts = []
            if self.missing:
                parts.append("missing field(s): " + ", ".join(f"'{m}'" for m in self.missing))
            parts.extend(self.invalid)
            raise ModelError(f"{self.family} config.json: " + "; ".join(parts))


def _core(r: _Reader, *, tie_default: bool, kv_default: Any = None, head_dim_default: Any = None,
          head_dim_nullable: bool = True) -> dict[str, Any]:
    """Fields every Llama-lineage config carries under the same names, with the family's class defaults:
    ``kv_default`` KV heads when the key is absent (None: as many as attention heads; an explicit null
    always means that), ``head_dim_default`` when absent (None: hidden / heads; an explicit null means
    that too unless the family's config class rejects it)."""
    heads = r.size("num_attention_heads")
    return {
        "hidden_size": r.size("hidden_size"),
        "num_layers": r.size("num_hidden_layers"),
        "num_attention_heads": heads,
        "num_kv_heads": r.size("num_key_value_heads", default=kv_default or heads, null=heads),
        "head_dim": r.size("head_dim", default=head_dim_default, null=None if head_dim_nullable else _INVALID),
        "ffn_hidden_size": r.size("intermediate_size"),
        "vocab_size": r.size("vocab_size"),
        "max_position_embeddings": r.size("max_position_embeddings", default=None, null=None),
        "tie_word_embeddings": r.flag("tie_word_embeddings", tie_default),
        "activation": r.activation("hidden_act", default="silu"),
    }


def _llama(r: _Reader) -> dict[str, Any]:
    """LlamaForCausalLM: ``attention_bias`` on q/k/v/o, ``mlp_bias`` on the MLP (LlamaConfig)."""
    spec = _core(r, tie_default=False)
    bias = r.flag("attention_bias", False)
    spec.update(qkv_bias=bias, attention_out_bias=bias, mlp_bias=r.flag("mlp_bias", False))
    return spec


def _window_on_every_layer(r: _Reader, spec: dict[str, Any], default: int | None) -> None:
    """Mistral, Mixtral, Phi-3: one window (``sliding_window``) on every layer when it is set."""
    window = r.size("sliding_window", default=default, null=None)
    spec["sliding_window"] = window
    spec["sliding_window_layers"] = r.sliding_layers(window, spec["num_layers"], lambda i: True)


def _mistral(r: _Reader) -> dict[str, Any]:
    """MistralForCausalLM: no biases; 8 KV heads and a 4096-token window unless the config says otherwise."""
    spec = _core(r, tie_default=False, kv_default=8)
    _window_on_every_layer(r, spec, default=4096)
    return spec


def _mixtral(r: _Reader) -> dict[str, Any]:
    """MixtralForCausalLM: every layer MoE; ``intermediate_size`` is the expert width; 8 KV heads,
    8 experts, top-2 and no window unless the config says otherwise."""
    spec = _core(r, tie_default=False, kv_default=8)
    _window_on_every_layer(r, spec, default=None)
    spec["moe"] = {
        "num_experts": r.size("num_local_experts", default=8, minimum=2),
        "experts_per_token": r.size("num_experts_per_tok", default=2),
        "expert_ffn_hidden_size": spec.pop("ffn_hidden_size"),
    }
    return spec


def _qwen_window(r: _Reader, spec: dict[str, Any], rule: Callable[[int, int], bool]) -> None:
    """Qwen families use ``sliding_window`` (default 4096) only with ``use_sliding_window``; ``rule(i, m)``
    says whether layer i slides given ``max_window_layers`` m (default 28)."""
    if not r.flag("use_sliding_window", False):
        spec["sliding_window"] = None
        return
    window = r.size("sliding_window", default=4096, null=None)
    first = r.size("max_window_layers", default=28, minimum=0)
    spec["sliding_window"] = window
    spec["sliding_window_layers"] = r.sliding_layers(window, spec["num_layers"], lambda i: rule(i, first or 0))


def _qwen2(r: _Reader) -> dict[str, Any]:
    """Qwen2ForCausalLM: bias on q/k/v only; 32 KV heads by default; window on layers >= max_window_layers."""
    spec = _core(r, tie_default=False, kv_default=32)
    spec.update(qkv_bias=True)
    _qwen_window(r, spec, lambda i, m: i >= m)
    return spec


def _qwen_moe_block(r: _Reader, spec: dict[str, Any], *, experts_default: int, top_k_default: int,
                    expert_width_default: int) -> dict[str, Any] | None:
    """Qwen MoE layer pattern: layer i is MoE iff i not in ``mlp_only_layers`` and (i+1) % step == 0.
    None when no layer is MoE (transformers then builds a dense model)."""
    step = r.size("decoder_sparse_step", default=1)
    only_dense = set(r.int_list("mlp_only_layers"))
    layers = spec["num_layers"] or 0
    dense = tuple(i for i in range(layers) if i in only_dense or (i + 1) % (step or 1) != 0)
    moe = {
        "num_experts": r.size("num_experts", default=experts_default, minimum=2),
        "experts_per_token": r.size("num_experts_per_tok", default=top_k_default),
        "expert_ffn_hidden_size": r.size("moe_intermediate_size", default=expert_width_default),
        "dense_layers": dense,
    }
    return None if layers and len(dense) == layers else moe


def _qwen2_moe(r: _Reader) -> dict[str, Any]:
    """Qwen2MoeForCausalLM: q/k/v bias (``qkv_bias``, default true), one gated shared expert; class
    defaults 16 KV heads, 60 experts, top-4, expert width 1408, shared width 5632. Window (transformers 5
    rule): layers i < max_window_layers with (i+1) odd."""
    spec = _core(r, tie_default=False, kv_default=16)
    spec.update(qkv_bias=r.flag("qkv_bias", True))
    _qwen_window(r, spec, lambda i, m: (i + 1) % 2 == 1 and i < m)
    moe = _qwen_moe_block(r, spec, experts_default=60, top_k_default=4, expert_width_default=1408)
    shared = r.size("shared_expert_intermediate_size", default=5632)
    if moe is not None and shared:
        moe.update(num_shared_experts=1, shared_expert_ffn_hidden_size=shared, shared_expert_gate=True)
    spec["moe"] = moe
    return spec


def _qwen3(r: _Reader) -> dict[str, Any]:
    """Qwen3ForCausalLM: per-head QK RMSNorm, ``attention_bias`` on q/k/v/o; class defaults head_dim
    128 (null rejected) and 32 KV heads; window on layers >= max_window_layers."""
    spec = _core(r, tie_default=False, kv_default=32, head_dim_default=128, head_dim_nullable=False)
    bias = r.flag("attention_bias", False)
    spec.update(qkv_bias=bias, attention_out_bias=bias, qk_norm="per_head")
    _qwen_window(r, spec, lambda i, m: i >= m)
    return spec


def _qwen3_moe(r: _Reader) -> dict[str, Any]:
    """Qwen3MoeForCausalLM: Qwen3 attention (head_dim default hidden/heads: Qwen3MoeConfig declares
    none) with Qwen MoE layers and no shared expert; class defaults 4 KV heads, 128 experts, top-8,
    expert width 768. The window, when on, applies to every layer."""
    spec = _core(r, tie_default=False, kv_default=4)
    bias = r.flag("attention_bias", False)
    spec.update(qkv_bias=bias, attention_out_bias=bias, qk_norm="per_head")
    _qwen_window(r, spec, lambda i, m: True)
    spec["moe"] = _qwen_moe_block(r, spec, experts_default=128, top_k_default=8, expert_width_default=768)
    return spec


def _deepseek(r: _Reader, *, v3: bool) -> dict[str, Any]:
    """DeepseekV2/V3ForCausalLM: MLA, DeepSeekMoE with shared experts, first-k dense layers.

    Class defaults: q_lora_rank 1536 when the key is absent (an explicit null, as in DeepSeek-V2-Lite,
    means uncompressed queries), kv_lora_rank 512, rope 64, nope 128, v 128, shared experts 2 (V2) / 1
    (V3), first_k_dense_replace 0 (V2) / 3 (V3). V2's ``mlp_bias`` biases the dense MLPs and the shared
    experts, not the routed ones. Layer i is MoE iff i >= first_k_dense_replace and i % moe_layer_freq
    == 0: DeepSeek's own modeling code honours ``moe_layer_freq``; transformers ignores it (every
    released config sets 1, where the two agree)."""
    spec = _core(r, tie_default=False)
    spec.pop("head_dim")
    bias = r.flag("attention_bias", False)
    mlp_bias = r.flag("mlp_bias", False) if not v3 else False
    spec.update(qkv_bias=bias, attention_out_bias=bias, mlp_bias=mlp_bias)
    spec["mla"] = {
        "q_lora_rank": r.size("q_lora_rank", default=1536, null=None),
        "kv_lora_rank": r.size("kv_lora_rank", default=512),
        "qk_nope_head_dim": r.size("qk_nope_head_dim", default=128),
        "qk_rope_head_dim": r.size("qk_rope_head_dim", default=64),
        "v_head_dim": r.size("v_head_dim", default=128),
    }
    shared = r.size("n_shared_experts", default=1 if v3 else 2, minimum=0)
    expert = r.size("moe_intermediate_size", default=2048 if v3 else 1407)
    first_k = r.size("first_k_dense_replace", default=3 if v3 else 0, minimum=0) or 0
    freq = r.size("moe_layer_freq", default=1) or 1
    layers = spec["num_layers"] or 0
    dense = tuple(i for i in range(layers) if i < first_k or i % freq != 0)
    spec["moe"] = None if layers and len(dense) == layers else {
        "num_experts": r.size("n_routed_experts", default=256 if v3 else 64, minimum=2),
        "experts_per_token": r.size("num_experts_per_tok", default=8 if v3 else _REQUIRED),
        "expert_ffn_hidden_size": expert,
        "num_shared_experts": shared,
        "shared_expert_ffn_hidden_size": expert if shared else 0,
        "shared_expert_bias": mlp_bias,
        "dense_layers": dense,
    }
    spec["mtp_layers"] = r.size("num_nextn_predict_layers", default=0, minimum=0) if v3 else 0
    return spec


def _gemma2(r: _Reader) -> dict[str, Any]:
    """Gemma2ForCausalLM: sandwich norms (4 per layer), tied embeddings, GeGLU; class defaults head_dim
    256 (null rejected), 4 KV heads, a 4096-token window on every other layer starting with layer 0."""
    spec = _core(r, tie_default=True, kv_default=4, head_dim_default=256, head_dim_nullable=False)
    spec["activation"] = r.activation("hidden_activation", "hidden_act", default="gelu_pytorch_tanh")
    bias = r.flag("attention_bias", False)
    spec.update(qkv_bias=bias, attention_out_bias=bias, norms_per_layer=4)
    window = r.size("sliding_window", default=4096, null=None)
    spec["sliding_window"] = window
    spec["sliding_window_layers"] = r.sliding_layers(window, spec["num_layers"], lambda i: i % 2 == 0)
    return spec


def _phi3(r: _Reader) -> dict[str, Any]:
    """Phi3ForCausalLM: fused qkv and gate_up projections (same counts as unfused), no biases."""
    spec = _core(r, tie_default=False)
    _window_on_every_layer(r, spec, default=None)
    return spec


def _falcon(r: _Reader) -> dict[str, Any]:
    """FalconForCausalLM (FalconConfig defaults: multi_query true, parallel_attn true, bias false,
    tied embeddings, ffn 4·hidden). KV heads: ``num_kv_heads`` with the new decoder architecture (40B,
    180B), 1 with multi-query (7B), else all heads. LayerNorms: 2 per layer (ln_attn, ln_mlp) when
    ``num_ln_in_parallel_attn`` is 2 (the new architecture's default), else 1 with parallel attention.

    Legacy configs written for the remote ``modelling_RW.py`` code say ``model_type`` "RefinedWeb"
    (Falcon-40B: the new decoder architecture, KV heads in ``n_head_kv``) or "RefinedWebModel"
    (Falcon-7B: multi-query); ``n_embed`` / ``n_head`` / ``n_layer`` are the old names."""
    heads = r.size("num_attention_heads", "n_head")
    hidden = r.size("hidden_size", "n_embed")
    new_arch = r.flag("new_decoder_architecture", r.cfg.get("model_type") == "RefinedWeb")
    parallel = r.flag("parallel_attn", True)
    if new_arch:
        kv = r.size("num_kv_heads", "n_head_kv", default=heads, null=heads)
    elif r.flag("multi_query", True):
        kv = 1
    else:
        kv = heads
    ln_parallel = r.size("num_ln_in_parallel_attn", default=None, null=None)
    if ln_parallel is None and new_arch:
        ln_parallel = 2
    norms = 2 if (not parallel or ln_parallel == 2) else 1
    bias = r.flag("bias", False)
    return {
        "hidden_size": hidden,
        "num_layers": r.size("num_hidden_layers", "n_layer"),
        "num_attention_heads": heads,
        "num_kv_heads": kv,
        "ffn_hidden_size": r.size("ffn_hidden_size", default=None, null=None) or (4 * hidden if hidden else None),
        "vocab_size": r.size("vocab_size"),
        "max_position_embeddings": r.size("max_position_embeddings", default=None, null=None),
        "tie_word_embeddings": r.flag("tie_word_embeddings", True),
        "position_embedding": "alibi" if r.flag("alibi", False) else "rope",
        "qkv_bias": bias,
        "attention_out_bias": bias,
        "mlp_bias": bias,
        "mlp_gated": False,
        "activation": "gelu",
        "norm_type": "layernorm",
        "norm_bias": True,
        "norms_per_layer": norms,
        "parallel_residual": parallel,
    }


def _gpt_oss(r: _Reader) -> dict[str, Any]:
    """GptOssForCausalLM: biased attention with per-head sinks, MoE with biased router and experts
    (gated, clamped SwiGLU); class defaults head_dim 64 (null rejected), 8 KV heads, 128 experts, top-4,
    a 128-token window on every other layer starting with layer 0."""
    spec = _core(r, tie_default=False, kv_default=8, head_dim_default=64, head_dim_nullable=False)
    bias = r.flag("attention_bias", True)
    spec.update(qkv_bias=bias, attention_out_bias=bias, attention_sinks=True)
    window = r.size("sliding_window", default=128, null=None)
    spec["sliding_window"] = window
    spec["sliding_window_layers"] = r.sliding_layers(window, spec["num_layers"], lambda i: i % 2 == 0)
    spec["moe"] = {
        "num_experts": r.size("num_local_experts", default=128, minimum=2),
        "experts_per_token": r.size("num_experts_per_tok", "experts_per_token", default=4),
        "expert_ffn_hidden_size": spec.pop("ffn_hidden_size"),
        "router_bias": True,
        "expert_bias": True,
    }
    return spec


def _olmo2(r: _Reader) -> dict[str, Any]:
    """Olmo2ForCausalLM: RMSNorm over the whole projected q and k, post-norms only (2 per layer)."""
    spec = _core(r, tie_default=False)
    bias = r.flag("attention_bias", False)
    spec.update(qkv_bias=bias, attention_out_bias=bias, qk_norm="full")
    return spec


def _gpt2(r: _Reader) -> dict[str, Any]:
    """GPT2LMHeadModel: learned positions (``n_positions``, default 1024), LayerNorm with bias, biases
    everywhere, tied head, plain GeLU MLP of width ``n_inner`` (default 4·n_embd)."""
    hidden = r.size("n_embd", "hidden_size")
    return {
        "hidden_size": hidden,
        "num_layers": r.size("n_layer", "num_hidden_layers"),
        "num_attention_heads": r.size("n_head", "num_attention_heads"),
        "ffn_hidden_size": r.size("n_inner", default=None, null=None) or (4 * hidden if hidden else None),
        "vocab_size": r.size("vocab_size"),
        "max_position_embeddings": r.size("n_positions", "max_position_embeddings", default=1024),
        "position_embedding": "learned",
        "tie_word_embeddings": r.flag("tie_word_embeddings", True),
        "qkv_bias": True,
        "attention_out_bias": True,
        "mlp_bias": True,
        "mlp_gated": False,
        "activation": r.activation("activation_function", default="gelu_new"),
        "norm_type": "layernorm",
        "norm_bias": True,
    }


def _gpt_neox(r: _Reader) -> dict[str, Any]:
    """GPTNeoXForCausalLM: parallel residual, LayerNorm with bias, biased MLP, ``attention_bias``
    (default true) on qkv and dense, untied ``embed_out``."""
    spec = _core(r, tie_default=False)
    spec.pop("num_kv_heads")
    spec.pop("head_dim")
    bias = r.flag("attention_bias", True)
    spec.update(
        qkv_bias=bias,
        attention_out_bias=bias,
        mlp_bias=True,
        mlp_gated=False,
        activation=r.activation("hidden_act", default="gelu"),
        norm_type="layernorm",
        norm_bias=True,
        parallel_residual=r.flag("use_parallel_residual", True),
    )
    return spec


def _nemotron(r: _Reader) -> dict[str, Any]:
    """NemotronForCausalLM (Nemotron-4, Minitron): squared-ReLU plain MLP, LayerNorm1P with bias."""
    spec = _core(r, tie_default=False)
    spec["activation"] = r.activation("hidden_act", default="relu2")
    bias = r.flag("attention_bias", False)
    spec.update(
        qkv_bias=bias,
        attention_out_bias=bias,
        mlp_bias=r.flag("mlp_bias", False),
        mlp_gated=False,
        norm_type="layernorm",
        norm_bias=True,
    )
    return spec


FAMILIES: dict[str, Callable[[_Reader], dict[str, Any]]] = {
    "llama": _llama,
    "mistral": _mistral,
    "mixtral": _mixtral,
    "qwen2": _qwen2,
    "qwen2_moe": _qwen2_moe,
    "qwen3": _qwen3,
    "qwen3_moe": _qwen3_moe,
    "deepseek_v2": lambda r: _deepseek(r, v3=False),
    "deepseek_v3": lambda r: _deepseek(r, v3=True),
    "gemma2": _gemma2,
    "phi3": _phi3,
    "falcon": _falcon,
    "gpt_oss": _gpt_oss,
    "olmo2": _olmo2,
    "gpt2": _gpt2,
    "gpt_neox": _gpt_neox,
    "nemotron": _nemotron,
}

_ARCHITECTURE_CLASSES = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "mistral",
    "MixtralForCausalLM": "mixtral",
    "Qwen2ForCausalLM": "qwen2",
    "Qwen2MoeForCausalLM": "qwen2_moe",
    "Qwen3ForCausalLM": "qwen3",
    "Qwen3MoeForCausalLM": "qwen3_moe",
    "DeepseekV2ForCausalLM": "deepseek_v2",
    "DeepseekV3ForCausalLM": "deepseek_v3",
    "Gemma2ForCausalLM": "gemma2",
    "Phi3ForCausalLM": "phi3",
    "FalconForCausalLM": "falcon",
    "RWForCausalLM": "falcon",
    "GptOssForCausalLM": "gpt_oss",
    "Olmo2ForCausalLM": "olmo2",
    "GPT2LMHeadModel": "gpt2",
    "GPTNeoXForCausalLM": "gpt_neox",
    "NemotronForCausalLM": "nemotron",
}

_MODEL_TYPE_ALIASES = {"RefinedWeb": "falcon", "RefinedWebModel": "falcon"}


def looks_like_hf_config(data: dict[str, Any]) -> bool:
    """HF configs carry ``model_type`` or ``architectures``; ModelSpec dicts carry neither."""
    return "model_type" in data or "architectures" in data


def family_of(cfg: dict[str, Any]) -> str:
    """The supported family of a config, or a ModelError naming what it is and what is supported."""
    model_type = cfg.get("model_type")
    if model_type is not None and not isinstance(model_type, str):
        raise ModelError(f"config.json field 'model_type' = {model_type!r}: expected a string such as 'llama'")
    model_type = _MODEL_TYPE_ALIASES.get(model_type, model_type)
    if model_type in FAMILIES:
        return model_type
    architectures = cfg.get("architectures") or []
    if not isinstance(architectures, list) or not all(isinstance(a, str) for a in architectures):
        raise ModelError(f"config.json field 'architectures' = {architectures!r}: expected a list of class names")
    for arch in architectures:
        if arch in _ARCHITECTURE_CLASSES:
            return _ARCHITECTURE_CLASSES[arch]
    seen = f"model_type {model_type!r}" if model_type else "no model_type"
    if architectures:
        seen += f", architectures {architectures!r}"
    core = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size")
    missing = [key for key in core if key not in cfg]
    lacks = f" This config also lacks {', '.join(missing)}." if missing else ""
    raise ModelError(
        f"unsupported architecture ({seen}); supported model_type values: {', '.join(sorted(FAMILIES))}.{lacks} "
        "For another decoder-only transformer, pass a ModelSpec dict (name, hidden_size, num_layers, "
        "num_attention_heads, ffn_hidden_size, vocab_size, ...)."
    )


def classifier_labels(cfg: dict[str, Any]) -> int | None:
    """Outputs of a classification head in place of the LM head — a checkpoint whose ``architectures`` name a
    ``*ForSequenceClassification`` or ``*ForTokenClassification`` class (reward models, PPO critics):
    ``num_labels``, else the length of ``id2label``, else transformers' default of 2 — or None for a
    language model."""
    architectures = cfg.get("architectures") or []
    if not isinstance(architectures, list) or not any(
            isinstance(a, str) and a.endswith(("ForSequenceClassification", "ForTokenClassification")) for a in architectures):
        return None
    labels = cfg.get("num_labels") or len(cfg.get("id2label") or {}) or 2
    if not isinstance(labels, int) or labels < 1:
        raise ModelError(f"config.json field 'num_labels' = {labels!r}: expected a positive integer")
    return labels


def spec_fields_from_hf(cfg: dict[str, Any], *, name: str) -> dict[str, Any]:
    """ModelSpec keyword arguments for a HF config dict (raises ModelError on bad or missing fields)."""
    family = family_of(cfg)
    reader = _Reader(cfg, family)
    fields = FAMILIES[family](reader)
    reader.finish()
    fields = {k: v for k, v in fields.items() if v is not None}
    fields.update(name=name, architecture=family, num_labels=classifier_labels(cfg))
    return fields
