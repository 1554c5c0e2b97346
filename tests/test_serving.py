"""The serving model in steady state (`constraints.serving`): its iteration formula on a case computed by
hand, Little's law between concurrency, latency and requests, saturation of an open loop, and what
fits; the published-measurement comparison is benchmarks.serving_published."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from parallelplan import Plan, PlanError, Traffic, Workload, estimate, load_cluster, load_model, serve
from parallelplan.constraints.serving import ServingReplica, default_limits

LLAMA_8B = load_model("llama-3.1-8b")
H100 = load_cluster("dgx-h100")


def _decode_step(plan: Plan, sequences: int, cache: int) -> float:
    """One decode step of ``sequences`` per replica at a cache of ``cache`` tokens (generation's own)."""
    work = Workload(kind="inference", seq_len=cache - 1, output_len=2, global_batch_size=sequences * plan.dp)
    return estimate(LLAMA_8B, H100, plan, work).time.decode


def test_one_running_request_is_a_decode_step_plus_its_share_of_a_prompt():
    """c = 1: the prompt fits one iteration's budget (n_p = 1), so of N = osl iterations osl − 1 decode:
    d = (osl − 1)/osl → one sequence, p = isl/osl prompt tokens per iteration at a prompt's per-token
    prefill cost. TTFT: half an iteration's wait, one decode step beside the chunk, the whole prefill."""
    plan, isl, osl = Plan(tp=8), 1000, 100
    est = serve(LLAMA_8B, H100, plan, Traffic(isl=isl, osl=osl, concurrency=1))
    prefill = estimate(LLAMA_8B, H100, plan, Workload(kind="inference", seq_len=isl, global_batch_size=1)).step_time_s
    decode = _decode_step(plan, 1, isl + osl // 2)
    step = decode + isl / osl * prefill / isl
    assert est.tpot_s == pytest.approx(step, rel=1e-12) and est.prefill_iterations == 1
    assert est.ttft_s == pytest.approx(step / 2 + decode + prefill, rel=1e-12)
    assert est.latency_s == pytest.approx(est.ttft_s + (osl - 1) * step, rel=1e-12)


def test_littles_law_ties_concurrency_latency_and_requests():
    for concurrency in (1, 16, 128):
        est = serve(LLAMA_8B, H100, Plan(tp=2, dp=4), Traffic(isl=2000, osl=500, concurrency=concurrency))
        per_replica = -(-concurrency // 4)  # the clients spread over the replicas, the busiest taking the rest
        assert est.concurrency == per_replica
        assert est.requests_per_s == pytest.approx(4 * per_replica / est.latency_s, rel=1e-12)
        assert est.output_tokens_per_s == pytest.approx(est.requests_per_s * 500, rel=1e-12)
        assert est.output_tokens_per_s_per_gpu == pytest.approx(est.output_tokens_per_s / 8, rel=1e-12)


def test_an_open_loop_settles_at_its_rate_or_saturates_at_what_fits():
    plan, traffic = Plan(tp=8), dict(isl=2000, osl=500)
    light = serve(LLAMA_8B, H100, plan, Traffic(**traffic, request_rate=2.0))
    assert not light.saturated and light.requests_per_s == pytest.approx(2.0, rel=1e-9)  # what arrives is served
    most = serve(LLAMA_8B, H100, plan, Traffic(**traffic, concurrency=10**6))
    flooded = serve(LLAMA_8B, H100, plan, Traffic(**traffic, request_rate=10 * most.requests_per_s))
    assert flooded.saturated and flooded.concurrency == flooded.max_concurrency == most.concurrency
    assert flooded.requests_per_s == pytest.approx(most.requests_per_s, rel=1e-12)
    assert light.tpot_s < most.tpot_s and light.ttft_s < most.ttft_s  # more running requests, longer iterations


def test_what_fits_is_the_kv_cache_beside_the_weights_and_the_engines_limit():
    """An fp8 cache holds twice the requests (until vLLM's max_num_seqs, 1024 on an 80 GB H100, binds)."""
    traffic = Traffic(isl=8000, osl=2000, concurrency=10**6)
    bf16 = serve(LLAMA_8B, H100, Plan(tp=8), traffic)
    fp8 = serve(LLAMA_8B, H100, Plan(tp=8, kv_cache_dtype="fp8"), traffic)
    assert bf16.max_concurrency < 1024 and fp8.max_concurrency in (2 * bf16.max_concurrency, 2 * bf16.max_concurrency + 1)
    assert default_limits(H100) == (8192, 1024) and default_limits(load_cluster("dgx-a100")) == (2048, 256)
    with pytest.raises(PlanError, match="no request of 100000 \\+ 1000 tokens fits beside the weights"):
        serve(load_model("llama-3.1-70b"), load_cluster("dgx-h100"), Plan(tp=1, dp=8), Traffic(isl=100_000, osl=1000, concurrency=1))


def test_traffic_takes_at_most_one_load_and_serve_needs_one():
    with pytest.raises(ValidationError, match="concurrency .* or request_rate .* not both"):
        Traffic(isl=100, osl=100, concurrency=4, request_rate=2.0)
    with pytest.raises(PlanError, match="serve needs a load"):
        serve(LLAMA_8B, H100, Plan(tp=8), Traffic(isl=100, osl=100))


def test_a_prefix_cache_hit_skips_that_share_of_the_prompts_prefill_only():
    """Half the prompt cached: the prefill a request waits for halves, what fits does not change (the
    cached blocks are counted per request), and the decode step is the same."""
    plan, load = Plan(tp=8), dict(isl=4000, osl=200, concurrency=1)
    cold, warm = (ServingReplica(LLAMA_8B, H100, plan, Traffic(**load, prefix_hit_rate=h)) for h in (0.0, 0.5))
    assert warm.prefill_s == pytest.approx(cold.prefill_s / 2, rel=1e-12)
    assert warm.max_concurrency == cold.max_concurrency and warm.decode_step(1) == cold.decode_step(1)
    a, b = serve(LLAMA_8B, H100, plan, Traffic(**load)), serve(LLAMA_8B, H100, plan, Traffic(**load, prefix_hit_rate=0.5))
    assert b.ttft_s < a.ttft_s and b.tpot_s < a.tpot_s  # a smaller prompt chunk rides each iteration


def test_speculation_verifies_the_drafts_in_one_step_and_emits_the_accepted():
    """k = 3 drafts, 2 kept: an iteration is one step feeding 4 tokens of each request plus 3 draft passes
    of one layer's share of a step, and it emits 3 tokens, so TPOT is a third of it; a request decodes in
    (osl − 1)/3 iterations."""
    from parallelplan.constraints.evaluate import decode_step_function
    from parallelplan.constraints.serving import Speculation

    deepseek, h200 = load_model("deepseek-v3"), load_cluster("hgx-h200", nodes=1)
    plan, spec = Plan(tp=8, precision="fp8"), Speculation(draft_tokens=3, accepted=2.0)
    traffic = Traffic(isl=2000, osl=301, speculation=spec)
    replica = ServingReplica(deepseek, h200, plan, traffic)
    context = 2000 + 301 // 2
    verify = decode_step_function(deepseek, h200, plan, context, fed=4)(8)
    one = decode_step_function(deepseek, h200, plan, context)(8)
    assert replica.decode_step(8) == pytest.approx(verify + 3 * one / deepseek.num_layers, rel=1e-12)
    assert replica.tpot(8) == pytest.approx(replica.decode_step(8) / 3, rel=1e-12) and replica.decode_iterations == 100
    assert one < verify < decode_step_function(deepseek, h200, plan, context)(32)  # the cache read once, not 4 times
    plain = ServingReplica(deepseek, h200, plan, Traffic(isl=2000, osl=301))
    assert replica.tpot(1) < plain.tpot(1)  # memory-bound at one request: the verification costs little
    rejected = ServingReplica(deepseek, h200, plan, Traffic(isl=2000, osl=301, speculation=Speculation(draft_tokens=3, accepted=0)))
    assert rejected.tpot(1) > plain.tpot(1)  # nothing kept: the drafts and their verification are pure cost


def test_speculation_keeps_at_most_its_drafts():
    from parallelplan.constraints.serving import Speculation

    with pytest.raises(ValidationError, match="at most the 2 draft tokens"):
        Speculation(draft_tokens=2, accepted=2.5)


def test_a_distribution_of_lengths_is_priced_by_its_classes():
    """Prompts of 1000 and 3000 tokens (outputs 100 and 300), half each: the means are the traffic's isl
    and osl; a running request holds its whole cache, the classes running in proportion to their output,
    (100 · 1100 + 300 · 3300)/400 = 2750 tokens on average; a prompt's prefill is the mean of the classes';
    the engine's context holds the longest; one class is the fixed lengths exactly."""
    from parallelplan.constraints.serving import Lengths

    mix = Traffic(lengths=(Lengths(isl=1000, osl=100, share=1), Lengths(isl=3000, osl=300, share=1)), concurrency=16)
    assert (mix.isl, mix.osl) == (2000, 200) and mix.longest.isl == 3000
    replica = ServingReplica(LLAMA_8B, H100, Plan(tp=8), mix)
    whole = ServingReplica(LLAMA_8B, H100, Plan(tp=8), Traffic(isl=3000, osl=300))
    assert replica.kv_request_bytes == pytest.approx(whole.kv_request_bytes * 2750 / 3300, rel=1e-12)
    short = ServingReplica(LLAMA_8B, H100, Plan(tp=8), Traffic(isl=1000, osl=100))
    assert replica.prefill_s == pytest.approx((short.prefill_s + whole.prefill_s) / 2, rel=1e-12)
    assert replica.prefill_s_squared == pytest.approx((short.prefill_s**2 + whole.prefill_s**2) / 2, rel=1e-12)
    est = serve(LLAMA_8B, H100, Plan(tp=8), mix)
    assert est.output_tokens_per_s == pytest.approx(est.requests_per_s * 200, rel=1e-12)
    one = Traffic(lengths=(Lengths(isl=2000, osl=500, share=3),), concurrency=16)
    assert serve(LLAMA_8B, H100, Plan(tp=8), one) == serve(LLAMA_8B, H100, Plan(tp=8), Traffic(isl=2000, osl=500, concurrency=16))


def test_lengths_come_as_fixed_values_or_a_distribution():
    from parallelplan.constraints.serving import Lengths

    with pytest.raises(ValidationError, match="give the requests' lengths"):
        Traffic(isl=100)
    with pytest.raises(ValidationError, match="isl and osl are the distribution's means"):
        Traffic(isl=100, osl=10, lengths=(Lengths(isl=200, osl=20, share=1),))
    mix = Traffic(lengths=(Lengths(isl=200, osl=20, share=1), Lengths(isl=400, osl=40, share=3)))
    assert Traffic.model_validate(mix.model_dump()) == mix  # its means reload with it
