"""Generation after the prefill (`constraints.generation`): the closed-form sum over decode steps, one
decode step computed by hand as bytes over achieved HBM bandwidth, the KV cache held to the last token."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from parallelplan.constraints import Efficiency, Plan, Workload, estimate
from parallelplan.constraints.compute import KERNELS_PER_LAYER_FORWARD
from parallelplan.constraints.generation import sum_of_max_lines, touched_experts_share
from parallelplan.constraints.structure import model_facts
from parallelplan.hardware import load_cluster
from parallelplan.models import load_model

LLAMA_8B = load_model("llama-3.1-8b")
H100 = load_cluster("dgx-h100", nodes=1)
finite = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False)


@settings(max_examples=300, deadline=None)
@given(finite, finite, finite, finite, st.integers(0, 500), st.integers(0, 500))
def test_sum_of_max_lines_equals_the_loop(a1, b1, a2, b2, lo, n):
    expected = sum(max(a1 + b1 * c, a2 + b2 * c) for c in range(lo, lo + n))
    got = float(sum_of_max_lines(a1, b1, a2, b2, lo, lo + n))
    assert got == pytest.approx(expected, rel=1e-9, abs=1e-6)


def _decode(model, plan, workload):
    return estimate(model, H100, plan, workload).time.decode


def _launches(model) -> float:
    """One decode step's kernel launches: every layer's forward kernels at kernel_launch_s each."""
    return model.num_layers * KERNELS_PER_LAYER_FORWARD * Efficiency.default().kernel_launch_s


def test_one_decode_step_is_bytes_over_achieved_hbm_bandwidth():
    """One sequence, two tokens — the prefill's logits give the first, one decode step the second — on one
    GPU: memory-bound, plus the layers' kernel launches. Bytes read = every weight in bf16 except the input
    embedding table, of which one row (Llama 3.1 8B's head is untied, so V·h of them), plus the KV cache
    of the prompt and the new token: 32 layers · 2 · 8 KV heads · 128 · 2 bytes per token."""
    prompt = 1000
    work = Workload(kind="inference", seq_len=prompt, output_len=2, global_batch_size=1)
    hidden, vocab = 4096, 128256
    params = LLAMA_8B.total_params
    weight_bytes = 2 * (params - vocab * hidden + hidden)
    kv_bytes = (prompt + 1) * 32 * 2 * 8 * 128 * 2
    streaming = Efficiency.default().streaming
    expected = (weight_bytes + kv_bytes) / (H100.node.gpu.hbm_bandwidth * streaming) + _launches(LLAMA_8B)
    assert _decode(LLAMA_8B, Plan(), work) == pytest.approx(expected, rel=1e-12)


def test_an_fp8_plan_serves_its_linears_in_one_byte():
    """vLLM's and SGLang's fp8 (--quantization fp8, or an fp8 checkpoint) keep the linears' weights in fp8
    and the embedding, LM head and norms in bf16 (states.served_gemm_weight_bytes): the decode step reads
    1 byte per linear weight, 2 per head weight, one embedding row; the KV cache stays bf16. The layers'
    norms are counted with their linears (0.003% of them). Memory holds the same weights: the linears once
    in fp8, the embedding and the head in bf16."""
    prompt = 1000
    work = Workload(kind="inference", seq_len=prompt, output_len=2, global_batch_size=1)
    hidden, vocab = 4096, 128256
    head = vocab * hidden + hidden  # the LM head and the final norm
    layers = LLAMA_8B.total_params - vocab * hidden - head  # linears and their norms
    kv_bytes = (prompt + 1) * 32 * 2 * 8 * 128 * 2
    expected = ((layers + 2 * (head + hidden) + kv_bytes) / (H100.node.gpu.hbm_bandwidth * Efficiency.default().streaming)
                + _launches(LLAMA_8B))
    fp8 = Plan(precision="fp8")
    assert _decode(LLAMA_8B, fp8, work) == pytest.approx(expected, rel=1e-12)
    held = estimate(LLAMA_8B, H100, fp8, work).memory.weights
    assert held == pytest.approx(layers + 2 * (vocab * hidden + head), rel=1e-12)
    trained = estimate(LLAMA_8B, H100, fp8, Workload(seq_len=prompt, global_batch_size=8)).memory.weights
    assert trained >= 2 * LLAMA_8B.total_params  # training keeps 16-bit weights (and Transformer Engine's fp8 copies)


def test_a_tied_lm_head_reads_the_embedding_table_each_step():
    """Llama 3.2 1B ties its LM head to the input embedding: the head's GEMM reads the whole table each
    step, the lookup one more row, so the bytes are every parameter plus a row (16 layers, 8 KV heads of 64)."""
    model = load_model("llama-3.2-1b")
    prompt = 1000
    work = Workload(kind="inference", seq_len=prompt, output_len=2, global_batch_size=1)
    weight_bytes = 2 * (model.total_params + 2048)
    kv_bytes = (prompt + 1) * 16 * 2 * 8 * 64 * 2
    expected = (weight_bytes + kv_bytes) / (H100.node.gpu.hbm_bandwidth * Efficiency.default().streaming) + _launches(model)
    assert _decode(model, Plan(), work) == pytest.approx(expected, rel=1e-12)


def test_decode_sums_every_step_and_grows_with_the_context():
    """n tokens cost the n − 1 decode steps at caches L+1 … L+n−1 (the prefill gave the first token): more
    than n − 1 times the first step (the cache grows), less than n − 1 times the last; one token costs none."""
    one = _decode(LLAMA_8B, Plan(), Workload(kind="inference", seq_len=4096, output_len=2, global_batch_size=8))
    last = _decode(LLAMA_8B, Plan(), Workload(kind="inference", seq_len=4096 + 511, output_len=2, global_batch_size=8))
    many = _decode(LLAMA_8B, Plan(), Workload(kind="inference", seq_len=4096, output_len=513, global_batch_size=8))
    assert _decode(LLAMA_8B, Plan(), Workload(kind="inference", seq_len=4096, output_len=1, global_batch_size=8)) == 0
    assert 512 * one < many < 512 * last
    assert many == pytest.approx(512 * (one + last) / 2, rel=1e-9)  # linear in the cache while memory-bound


def test_kv_cache_holds_prompt_and_output():
    plan = Plan(tp=8)
    prefill = estimate(LLAMA_8B, H100, plan, Workload(kind="inference", seq_len=3072, global_batch_size=16))
    generate = estimate(LLAMA_8B, H100, plan, Workload(kind="inference", seq_len=2048, output_len=1024,
                                                       global_batch_size=16))
    assert generate.memory.kv_cache == prefill.memory.kv_cache == 16 * 3072 * 32 * 2 * 1 * 128 * 2


SP_EP = {"etp": 1, "sequence_parallel": True}


@pytest.mark.parametrize("name, plan, cluster, per_sequence", [
    # MHA: 32 layers x 2 (K, V) x 32 heads x 128 x 2 bytes, every token of 8192 (one GPU per replica)
    ("llama-2-7b", Plan(dp=8), "dgx-h100", 8192 * 32 * 2 * 32 * 128 * 2),
    # MLA: 61 layers x (512 latent + 64 rope key) x 2 bytes, not split over tp (DeepSeek-V2 §2.1.2)
    ("deepseek-v3", Plan(tp=8, ep=8, precision="fp8", **SP_EP), "hgx-h200", 8192 * 61 * (512 + 64) * 2),
    # sliding windows: 18 of 36 layers keep 128 tokens; 8 KV heads of 64 over tp 8, one per GPU
    ("gpt-oss-120b", Plan(tp=8, ep=8, **SP_EP), "dgx-h100", (18 * 8192 + 18 * 128) * 2 * 1 * 64 * 2),
    # 23 of 46 layers keep a 4096-token window; 16 KV heads of 128 over tp 8, two per GPU
    ("gemma-2-27b", Plan(tp=8), "dgx-h100", (23 * 8192 + 23 * 4096) * 2 * 2 * 128 * 2),
])
def test_kv_cache_bytes_follow_each_cache_layout_and_fp8_halves_them(name, plan, cluster, per_sequence):
    """Eight sequences of 8192 tokens per replica, the cache computed by hand from each model's layout; an
    fp8 cache (vLLM --kv-cache-dtype fp8) holds one byte an element."""
    model, gpus = load_model(name), load_cluster(cluster)
    work = Workload(kind="inference", seq_len=8192, global_batch_size=8 * plan.dp)
    assert estimate(model, gpus, plan, work).memory.kv_cache == 8 * per_sequence
    fp8 = plan.model_copy(update={"kv_cache_dtype": "fp8"})
    assert estimate(model, gpus, fp8, work).memory.kv_cache == 8 * per_sequence // 2


def test_an_fp8_kv_cache_halves_what_a_decode_step_reads_of_it():
    prompt = 1000
    work = Workload(kind="inference", seq_len=prompt, output_len=2, global_batch_size=1)
    hidden, vocab = 4096, 128256
    weight_bytes = 2 * (LLAMA_8B.total_params - vocab * hidden + hidden)
    kv_bytes = (prompt + 1) * 32 * 2 * 8 * 128 * 1
    expected = (weight_bytes + kv_bytes) / (H100.node.gpu.hbm_bandwidth * Efficiency.default().streaming) + _launches(LLAMA_8B)
    assert _decode(LLAMA_8B, Plan(kv_cache_dtype="fp8"), work) == pytest.approx(expected, rel=1e-12)


def test_tensor_parallelism_divides_the_bytes_each_gpu_reads():
    """Memory-bound decode: tp 8 reads an eighth of the weights and cache per GPU, so it decodes faster
    than tp 1, by less than 8x (its all-reduces per layer)."""
    work = Workload(kind="inference", seq_len=2048, output_len=256, global_batch_size=16)
    alone, split = _decode(LLAMA_8B, Plan(), work), _decode(LLAMA_8B, Plan(tp=8), work)
    assert alone / 8 < split < alone / 2


def test_moe_reads_only_the_experts_its_tokens_touch():
    """Qwen3-30B-A3B (128 experts, 8 active): one token touches 8/128 of the experts; 64 tokens most."""
    f = model_facts(load_model("qwen3-30b-a3b"))
    share = touched_experts_share(f, np.array([1.0, 64.0]))
    assert share[0] == pytest.approx(8 / 128)
    assert share[1] == pytest.approx(1 - (1 - 8 / 128) ** 64)
    qwen = load_model("qwen3-30b-a3b")
    single = _decode(qwen, Plan(), Workload(kind="inference", seq_len=512, output_len=64, global_batch_size=1))
    dense_equivalent = 2 * qwen.total_params * 64 / (H100.node.gpu.hbm_bandwidth * Efficiency.default().streaming)
    assert single < dense_equivalent / 4  # reads a small part of the 30B weights per token


def test_waves_of_sequences_hold_one_waves_cache():
    """64 sequences in waves of 16 decode as four waves of 16, each holding only its own KV cache."""
    base = dict(kind="inference", seq_len=1024, output_len=256)
    waves = estimate(LLAMA_8B, H100, Plan(tp=8), Workload(**base, global_batch_size=64, max_concurrency=16))
    one = estimate(LLAMA_8B, H100, Plan(tp=8), Workload(**base, global_batch_size=16))
    assert waves.time.decode == pytest.approx(4 * one.time.decode, rel=1e-12)
    assert waves.memory.kv_cache == one.memory.kv_cache
    uneven = estimate(LLAMA_8B, H100, Plan(tp=8), Workload(**base, global_batch_size=40, max_concurrency=16))
    rest = estimate(LLAMA_8B, H100, Plan(tp=8), Workload(**base, global_batch_size=8))
    assert uneven.time.decode == pytest.approx(2 * one.time.decode + rest.time.decode, rel=1e-12)


def test_output_len_needs_inference():
    with pytest.raises(ValueError, match="output_len"):
        Workload(kind="finetune", seq_len=1024, output_len=16, global_batch_size=8)


def test_experts_split_beyond_attention_gather_and_scatter_their_tokens(monkeypatch):
    """Experts split over etp = 8 GPUs under 8 data-parallel attention replicas (tp 1): each MoE layer
    all-gathers the 8 replicas' hidden states and reduce-scatters the outputs — a ring of g·h·b·8 bytes
    each way per layer, the only reduce-scatter an unsharded decode step has (taken out, the step loses
    exactly that)."""
    from parallelplan.constraints.collectives import Fabric
    from parallelplan.constraints.evaluate import decode_step_function

    mixtral, plan, g = load_model("mixtral-8x7b"), Plan(tp=1, dp=8, ep=1, etp=8), 16
    full = decode_step_function(mixtral, H100, plan, 2048)(g)
    fabric = Fabric.of(H100, Efficiency.default())
    ring = float(fabric.reduce_scatter(np.array([g * mixtral.hidden_size * 2.0 * 8]), np.array([8]), np.array([1]))[0])
    monkeypatch.setattr(Fabric, "reduce_scatter", lambda self, n, size, stride: np.zeros(np.shape(n)))
    without = decode_step_function(mixtral, H100, plan, 2048)(g)
    assert full - without == pytest.approx(mixtral.num_layers * 2 * ring, rel=1e-9)
