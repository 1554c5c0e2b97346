"""Properties over generated architectures (hypothesis): counts grow with every size field, and a spec
survives dict → ModelSpec → JSON → ModelSpec unchanged."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from parallelplan.models import ModelSpec, load_model


@st.composite
def model_fields(draw: st.DrawFn) -> dict[str, Any]:
    kv = draw(st.integers(1, 8))
    layers = draw(st.integers(1, 8))
    position = draw(st.sampled_from(["rope", "learned", "alibi", "none"]))
    norm = draw(st.sampled_from(["rmsnorm", "layernorm"]))
    fields: dict[str, Any] = {
        "name": "generated",
        "hidden_size": draw(st.integers(1, 512)),
        "num_layers": layers,
        "num_attention_heads": kv * draw(st.integers(1, 4)),
        "num_kv_heads": kv,
        "head_dim": draw(st.integers(1, 64)),
        "ffn_hidden_size": draw(st.integers(1, 1024)),
        "vocab_size": draw(st.integers(1, 5000)),
        "max_position_embeddings": draw(st.integers(1, 4096)),
        "position_embedding": position,
        "tie_word_embeddings": draw(st.booleans()),
        "mlp_gated": draw(st.booleans()),
        "qkv_bias": draw(st.booleans()),
        "attention_out_bias": draw(st.booleans()),
        "mlp_bias": draw(st.booleans()),
        "qk_norm": draw(st.sampled_from(["none", "per_head", "full"])),
        "attention_sinks": draw(st.booleans()),
        "norm_type": norm,
        "norm_bias": norm == "layernorm" and draw(st.booleans()),
        "norms_per_layer": draw(st.integers(1, 4)),
        "mtp_layers": draw(st.integers(0, 2)),
    }
    if draw(st.booleans()):
        fields["sliding_window"] = draw(st.integers(1, 4096))
        fields["sliding_window_layers"] = draw(st.integers(0, layers))
    if draw(st.booleans()):
        fields["mla"] = {
            "q_lora_rank": draw(st.none() | st.integers(1, 256)),
            "kv_lora_rank": draw(st.integers(1, 256)),
            "qk_nope_head_dim": draw(st.integers(1, 64)),
            "qk_rope_head_dim": draw(st.integers(1, 64)),
            "v_head_dim": draw(st.integers(1, 64)),
        }
    if draw(st.booleans()):
        experts = draw(st.integers(2, 16))
        shared = draw(st.integers(0, 2))
        dense = draw(st.sets(st.integers(0, layers - 1), max_size=layers - 1))
        fields["moe"] = {
            "num_experts": experts,
            "experts_per_token": draw(st.integers(1, experts)),
            "expert_ffn_hidden_size": draw(st.integers(1, 256)),
            "num_shared_experts": shared,
            "shared_expert_ffn_hidden_size": draw(st.integers(1, 256)) if shared else 0,
            "shared_expert_gate": bool(shared) and draw(st.booleans()),
            "router_bias": draw(st.booleans()),
            "expert_bias": draw(st.booleans()),
            "dense_layers": sorted(dense),
        }
    return fields


def _grow(fields: dict[str, Any], field: str, by: int) -> dict[str, Any] | None:
    """``fields`` with one size field larger (None when it does not apply to this architecture)."""
    out = {**fields, "moe": dict(fields["moe"]) if "moe" in fields else None,
           "mla": dict(fields["mla"]) if "mla" in fields else None}
    groups = fields["num_attention_heads"] // fields["num_kv_heads"]
    if field == "num_kv_heads":  # grow the KV heads, keeping the query heads per KV head
        out["num_kv_heads"] += by
        out["num_attention_heads"] = out["num_kv_heads"] * groups
    elif field == "num_attention_heads":
        out["num_attention_heads"] = fields["num_kv_heads"] * (groups + by)
    elif field in fields and not isinstance(fields[field], (dict, bool)) and field not in ("name", "mtp_layers"):
        out[field] += by
    elif field == "mtp_layers":
        out["mtp_layers"] += by
    elif out["moe"] and field in out["moe"] and field not in ("dense_layers",):
        if field == "experts_per_token" and out["moe"]["experts_per_token"] + by > out["moe"]["num_experts"]:
            return None
        if field == "shared_expert_ffn_hidden_size" and not out["moe"]["num_shared_experts"]:
            return None
        if field == "num_shared_experts" and not out["moe"]["shared_expert_ffn_hidden_size"]:
            out["moe"]["shared_expert_ffn_hidden_size"] = 1
        out["moe"][field] += by
    elif out["mla"] and field in out["mla"] and out["mla"][field] is not None:
        out["mla"][field] += by
    else:
        return None
    return {k: v for k, v in out.items() if v is not None}


# sliding_window_layers is left out on purpose: more windowed layers means less attention work.
SIZE_FIELDS = [
    "hidden_size", "num_layers", "vocab_size", "num_attention_heads", "num_kv_heads", "head_dim", "ffn_hidden_size",
    "max_position_embeddings", "norms_per_layer", "sliding_window", "mtp_layers",
    "num_experts", "experts_per_token", "expert_ffn_hidden_size", "num_shared_experts",
    "shared_expert_ffn_hidden_size", "q_lora_rank", "kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim",
    "v_head_dim",
]


@settings(max_examples=300, deadline=None)
@given(model_fields(), st.sampled_from(SIZE_FIELDS), st.integers(1, 64), st.integers(1, 4096))
def test_counts_are_monotone_in_every_size_field(fields, field, by, seq_len):
    grown = _grow(fields, field, by)
    assume(grown is not None)
    before, after = ModelSpec(**fields), ModelSpec(**grown)
    assert after.total_params >= before.total_params
    assert after.active_params >= before.active_params
    assert after.params.total_with_mtp >= before.params.total_with_mtp
    flops_before = before.flops_per_token(seq_len, include_mtp=True)
    assert after.flops_per_token(seq_len, include_mtp=True) >= flops_before
    if field in ("hidden_size", "num_layers", "vocab_size", "norms_per_layer"):
        assert after.total_params > before.total_params


@settings(max_examples=300, deadline=None)
@given(model_fields())
def test_modelspec_round_trips_through_json(fields):
    spec = load_model(fields)
    again = ModelSpec.model_validate_json(spec.model_dump_json())
    assert again == spec
    assert again.total_params == spec.total_params and again.active_params == spec.active_params
    assert load_model(spec.model_dump(mode="json")) == spec


@settings(max_examples=300, deadline=None)
@given(model_fields(), st.integers(1, 8192), st.integers(1, 512))
def test_flops_grow_with_sequence_and_causal_never_exceeds_full(fields, seq_len, more):
    spec = ModelSpec(**fields)
    assert spec.active_params <= spec.total_params
    full, causal = spec.flops(seq_len), spec.flops(seq_len, causal=True)
    assert causal.attention_scores <= full.attention_scores
    matmuls = full.forward_per_token - full.attention_scores
    assert causal.forward_per_token - causal.attention_scores == pytest.approx(matmuls)
    assert spec.flops_per_token(seq_len + more) >= spec.flops_per_token(seq_len)
