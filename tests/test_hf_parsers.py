"""The HF ``config.json`` parsers against `transformers` itself: for every supported family, the real
fixture config, each variant with one optional key deleted (so the family's class defaults apply), and
sliding-window variants must give `transformers`' parameter count and its sliding-window layers."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from parallelplan.models import ModelError, load_model

FIXTURES = Path(__file__).parent / "fixtures" / "hf_configs"
FAMILIES = sorted(p.name for p in FIXTURES.iterdir() if p.is_dir() and p.name != "falcon")
# keys that define the network's size or identity: deleting them is not a defaults question
CORE = {"model_type", "architectures", "hidden_size", "n_embd", "num_hidden_layers", "n_layer",
        "num_attention_heads", "n_head", "intermediate_size", "vocab_size", "auto_map"}
LAYERS = 5  # odd, so every-other-layer rules are visible; > DeepSeek-V3's 3 dense layers


def _config(family: str, **overrides) -> dict:
    from reference import with_layers

    return with_layers(json.loads((FIXTURES / family / "config.json").read_text()), LAYERS, **overrides)


def _attention_modules(model) -> list:
    return [m for name, m in model.named_modules() if name.endswith(("self_attn", "self_attention", "attention"))
            and hasattr(m, "forward")]


def _hf_truth(config: dict) -> tuple[int, int, object] | None:
    """(parameters, sliding-window layers, the config object) as transformers builds them, or None if it
    refuses the config. A layer slides when its attention module carries a window (Qwen, Gemma 2,
    gpt-oss set ``self.sliding_window`` per layer), or when its forward passes the config's window to the
    attention kernel (Mistral, Mixtral, Phi-3: every layer)."""
    import inspect

    from reference import build

    try:
        model = build(config, "meta")
    except Exception:  # noqa: BLE001 - transformers rejecting a variant is a legitimate outcome
        return None
    hf = model.config
    sliding = 0
    for attention in _attention_modules(model):
        if hasattr(attention, "sliding_window"):
            sliding += bool(attention.sliding_window)
        elif "sliding_window" in inspect.getsource(type(attention).forward):
            sliding += bool(getattr(hf, "sliding_window", None))
    return sum(p.numel() for p in model.parameters()), sliding, hf


def _ours(config: dict) -> tuple[int, int]:
    spec = load_model(config)
    return spec.total_params, (spec.sliding_window_layers or 0) if spec.sliding_window else 0


def _check(config: dict) -> None:
    truth = _hf_truth(config)
    if truth is None:
        return  # transformers rejects it; whatever we do (a value or a ModelError) is not contradicted
    params, sliding, hf = truth
    try:
        ours = _ours(config)
    except ModelError as err:
        # acceptable only when transformers has no value either (e.g. DeepSeek-V2's top-k defaults to None:
        # the model builds but cannot route a token)
        named = re.findall(r"'(\w+)'", str(err))
        no_value = any(getattr(hf, key, 0) is None for key in named)
        # transformers also builds heads that do not group over the KV heads, which cannot run a forward pass
        ungrouped = hf.num_attention_heads % (getattr(hf, "num_key_value_heads", None) or 1) != 0
        if not (no_value or ungrouped):
            pytest.fail(f"transformers accepts this config, we reject it: {err}")
        return
    assert ours == (params, sliding)


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_every_optional_key_deleted_matches_transformers(family):
    base = _config(family)
    _check(base)
    for key in sorted(set(base) - CORE):
        _check({k: v for k, v in base.items() if k != key})


WINDOW_VARIANTS = [
    {"use_sliding_window": True},
    {"use_sliding_window": True, "max_window_layers": 3},
    {"use_sliding_window": True, "sliding_window": 1024, "max_window_layers": 2},
    {"sliding_window": None},
    {"layer_types": None},
]


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("variant", range(len(WINDOW_VARIANTS)))
def test_sliding_window_layers_match_transformers(family, variant):
    config = {k: v for k, v in _config(family, **WINDOW_VARIANTS[variant]).items() if v is not None}
    _check(config)


@pytest.mark.slow
@pytest.mark.parametrize(
    "falcon",
    [
        # Falcon-7B style: multi-query, parallel attention, one LayerNorm per layer, tied head
        {"multi_query": True, "parallel_attn": True, "new_decoder_architecture": False},
        {"multi_query": False, "parallel_attn": False, "new_decoder_architecture": False, "bias": True},
        {"new_decoder_architecture": True, "num_kv_heads": 4, "num_ln_in_parallel_attn": 1},
        {"new_decoder_architecture": True, "num_kv_heads": 4, "alibi": True, "ffn_hidden_size": 300},
    ],
)
def test_falcon_variants_match_transformers(falcon):
    config = {"model_type": "falcon", "architectures": ["FalconForCausalLM"], "hidden_size": 256,
              "num_attention_heads": 8, "num_hidden_layers": 3, "vocab_size": 1000, **falcon}
    _check(config)
    assert _hf_truth(config) is not None
