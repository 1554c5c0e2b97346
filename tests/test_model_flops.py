"""FLOPs per token against `torch.utils.flop_counter.FlopCounterMode` on `transformers` models built
from the same config (method in `reference.py`), and against published closed-form formulas."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from parallelplan.models import decode_flops_per_token, get_preset, load_model
from parallelplan.models.flops import keys_per_query

FIXTURES = Path(__file__).parent / "fixtures" / "hf_configs"
SEQ = 512  # below every sliding window of the dense presets checked here (Phi-3: 2047)


def _preset_config(name: str) -> dict:
    return get_preset(name).hf_config


def _fixture(family: str) -> dict:
    return json.loads((FIXTURES / family / "config.json").read_text())


DENSE_FULL_SIZE = {
    "llama-3.1-8b": lambda: _preset_config("llama-3.1-8b"),
    "llama-3.1-405b": lambda: _preset_config("llama-3.1-405b"),
    "qwen2.5-7b": lambda: _preset_config("qwen2.5-7b"),
    "gemma-2-27b": lambda: _preset_config("gemma-2-27b"),
    "mistral-7b": lambda: _preset_config("mistral-7b"),
    "phi-3-mini": lambda: _preset_config("phi-3-mini"),
    "olmo-2-7b": lambda: _preset_config("olmo-2-7b"),
    "nemotron-4-340b": lambda: _preset_config("nemotron-4-340b"),
    "falcon-180b": lambda: _preset_config("falcon-180b"),
    "qwen3-8b (fixture)": lambda: _fixture("qwen3"),
    "gpt2-xl (fixture)": lambda: _fixture("gpt2"),
    "pythia-1b (fixture)": lambda: _fixture("gpt_neox"),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(DENSE_FULL_SIZE))
def test_dense_training_flops_match_flop_counter_scaled_by_layers(name):
    """Real widths on the meta device with 2 and 4 layers (Gemma 2 alternates sliding/global layers, so
    layers come in pairs); the difference is one pair of layers, scaled to the full depth."""
    from reference import training_flops, with_layers

    config = DENSE_FULL_SIZE[name]()
    layers = config.get("num_hidden_layers", config.get("n_layer"))
    two = training_flops(with_layers(config, 2), SEQ, device="meta")
    four = training_flops(with_layers(config, 4), SEQ, device="meta")
    measured_full = two + (layers - 2) / 2 * (four - two)
    ours = load_model(config).flops_per_token(SEQ) * SEQ
    assert ours == pytest.approx(measured_full, rel=0.02)
    # the same accounting on the 2-layer model itself is exact: nothing is left out
    assert load_model(with_layers(config, 2)).flops_per_token(SEQ) * SEQ == pytest.approx(two, rel=1e-12)


REDUCED_MOE = {
    # real MoE structure at small widths so that routing runs on real CPU tensors
    "mixtral-8x7b": ("preset", dict(hidden_size=64, intermediate_size=96, num_attention_heads=8,
                                    num_key_value_heads=2, num_hidden_layers=2, vocab_size=512)),
    "qwen3-30b-a3b": ("preset", dict(hidden_size=64, intermediate_size=96, moe_intermediate_size=48,
                                     num_attention_heads=8, num_key_value_heads=2, head_dim=16, num_hidden_layers=2,
                                     vocab_size=512, num_experts=16, num_experts_per_tok=4)),
    "deepseek-v3": ("preset", dict(hidden_size=64, intermediate_size=128, moe_intermediate_size=32,
                                   num_attention_heads=4, num_key_value_heads=4, q_lora_rank=48, kv_lora_rank=32,
                                   qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=16, num_hidden_layers=3,
                                   first_k_dense_replace=1, n_routed_experts=16, num_experts_per_tok=4, n_group=4,
                                   topk_group=2, vocab_size=512)),
    "deepseek-v2-lite": ("preset", dict(hidden_size=64, intermediate_size=128, moe_intermediate_size=32,
                                        num_attention_heads=4, num_key_value_heads=4, kv_lora_rank=32,
                                        qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=16, num_hidden_layers=3,
                                        first_k_dense_replace=1, n_routed_experts=16, num_experts_per_tok=4,
                                        vocab_size=512)),
    "gpt-oss-120b": ("preset", dict(hidden_size=64, intermediate_size=96, num_attention_heads=8,
                                    num_key_value_heads=2, head_dim=16, num_hidden_layers=2, vocab_size=512,
                                    num_local_experts=16, num_experts_per_tok=4, experts_per_token=4,
                                    sliding_window=256)),
    "qwen2_moe": ("fixture", dict(hidden_size=64, intermediate_size=96, moe_intermediate_size=32,
                                  shared_expert_intermediate_size=80, num_attention_heads=8, num_key_value_heads=2,
                                  num_hidden_layers=2, vocab_size=512, num_experts=16, num_experts_per_tok=4,
                                  bos_token_id=None, eos_token_id=None)),
}


def _reduced(name: str) -> dict:
    from reference import with_layers

    kind, overrides = REDUCED_MOE[name]
    base = _preset_config(name) if kind == "preset" else _fixture(name)
    return with_layers(base, overrides["num_hidden_layers"], **overrides)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(REDUCED_MOE))
@pytest.mark.parametrize("seq", [32, 128])
def test_moe_training_flops_match_flop_counter(name, seq):
    from reference import training_flops

    config = _reduced(name)
    batch = 2
    measured = training_flops(config, seq, device="cpu", batch=batch)
    ours = load_model(config).flops_per_token(seq) * seq * batch
    assert ours == pytest.approx(measured, rel=1e-12)  # the issue asks for 2%; the count is exact


@pytest.mark.slow
def test_sliding_window_beyond_the_window():
    """Eager attention scores every key and masks the ones outside the window afterwards; our
    accounting charges only the window. The difference must be exactly the masked-out key columns:
    3 (fwd + bwd) × 2·H·(d_qk + d_v) × (s − w) per token, on each sliding layer."""
    from reference import training_flops

    config = {**_reduced("gpt-oss-120b"), "sliding_window": 48}
    spec = load_model(config)
    seq, window = 128, 48
    measured = training_flops(config, seq, device="cpu", batch=1)
    ours = spec.flops_per_token(seq) * seq
    masked = 3 * 2 * spec.num_attention_heads * 2 * spec.head_dim * (seq - window) * seq
    assert spec.sliding_window_layers == 1
    assert measured - ours == pytest.approx(masked, rel=1e-12)


@pytest.mark.slow
def test_decode_flops_match_flop_counter():
    """One new token against a KV cache of context - 1 tokens, forward only."""
    from reference import FlopCounterMode, build, torch, with_layers

    config = with_layers(_preset_config("llama-3.1-8b"), 2)
    model = build(config, "meta")
    context = 300
    with torch.no_grad():
        prefix = model(input_ids=torch.zeros(1, context - 1, dtype=torch.long, device="meta"), use_cache=True)
        with FlopCounterMode(display=False) as counter:
            model(input_ids=torch.zeros(1, 1, dtype=torch.long, device="meta"),
                  past_key_values=prefix.past_key_values, use_cache=True)
    assert decode_flops_per_token(load_model(config), context) == pytest.approx(counter.get_total_flops(), rel=1e-12)


def test_megatron_closed_form_for_gpt3():
    """Narayanan et al. 2021 (arXiv 2104.04473) §5.1: F = 72·B·s·l·h²·(1 + s/(6h) + V/(12·l·h)) per
    iteration for a GPT with a 4h MLP, without recomputation counted."""
    spec = load_model("gpt-3-175b")
    s, layers, h, v = 2048, spec.num_layers, spec.hidden_size, spec.vocab_size
    megatron = 72 * s * layers * h**2 * (1 + s / (6 * h) + v / (12 * layers * h))
    assert spec.flops_per_token(s) * s == pytest.approx(megatron, rel=1e-12)


def test_palm_convention_for_llama():
    """PaLM appendix B / torchtitan: 6·N + 12·L·H·Q·T per token, N = non-embedding matmul parameters
    plus the LM head (the embedding lookup is not a matmul)."""
    spec = load_model("llama-3.1-70b")
    t = 8192
    n = spec.total_params - spec.params.embedding - spec.params.norms
    palm = 6 * n + 12 * spec.num_layers * spec.num_attention_heads * spec.head_dim * t
    assert spec.flops_per_token(t) == pytest.approx(palm, rel=1e-12)


def test_causal_convention_halves_attention_scores():
    """NeMo 25.x counts causal attention: Llama-3-8B at 8192 tokens is 57.9 GFLOP/token with full
    attention and 51.5 with causal halving (the published-runs data notes both figures)."""
    spec = load_model("llama-3-8b")
    full, causal = spec.flops(8192), spec.flops(8192, causal=True)
    assert causal.attention_scores == pytest.approx(full.attention_scores * (8192 + 1) / (2 * 8192))
    assert full.training_per_token / 1e9 == pytest.approx(57.9, abs=0.05)
    assert causal.training_per_token / 1e9 == pytest.approx(51.5, abs=0.05)


def test_keys_per_query():
    assert keys_per_query(8, None, causal=False) == 8
    assert keys_per_query(8, None, causal=True) == 4.5  # (1+...+8)/8
    assert keys_per_query(8, 3, causal=False) == 3
    assert keys_per_query(8, 3, causal=True) == (1 + 2 + 3 + 3 * 5) / 8
    assert keys_per_query(2, 3, causal=True) == 1.5


def test_mtp_adds_one_layer_and_a_head_pass():
    """DeepSeek-V3 §2.2: an MTP module = a 2d → d projection, one (MoE) decoder layer, the shared head."""
    spec = load_model("deepseek-v3")
    without, with_mtp = spec.flops(4096), spec.flops(4096, include_mtp=True)
    assert without.mtp == 0
    d, layers, moe_layers = spec.hidden_size, spec.num_layers, spec.num_moe_layers
    one_moe_layer = (without.attention_projections + without.attention_scores) / layers + (
        without.router + without.routed_experts + without.shared_experts
    ) / moe_layers
    assert with_mtp.mtp == pytest.approx(2 * 2 * d * d + one_moe_layer + without.lm_head, rel=1e-12)


def test_bad_seq_len_is_rejected():
    spec = load_model("llama-3.1-8b")
    for bad in (0, -5, 1.5):
        with pytest.raises(ValueError, match="seq_len"):
            spec.flops_per_token(bad)
