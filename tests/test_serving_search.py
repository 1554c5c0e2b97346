"""The serving search (`solver.serving`): its best equals an exhaustive scan of the same cost model —
every layout at every concurrency, every prefill/decode split — on generated small cases; a load gets
the fewest GPUs; the disaggregated figures are the formulas of `constraints.disaggregated` computed by
hand; infeasible targets are explained with what would meet them; the emitted commands carry the plan."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from parallelplan import Plan, Traffic, load_cluster, load_model
from parallelplan.constraints.collectives import Fabric
from parallelplan.constraints.disaggregated import Pools, disaggregate, prefill_utilization_within
from parallelplan.constraints.efficiency import Efficiency
from parallelplan.constraints.serving import ServingReplica
from parallelplan.emitters import emit_serving
from parallelplan.solver import Infeasible, SolverInputError
from parallelplan.solver.serving import (
    Request,
    Targets,
    aggregated_plan,
    price_layouts,
    rank,
    serve_plan,
    worker_layouts,
)

LLAMA_8B = load_model("llama-3.1-8b")
NODE = load_cluster("dgx-h100")
EFF = Efficiency.default()


def _request(traffic: Traffic, ttft: float | None, tpot: float | None) -> Request:
    return Request(LLAMA_8B, NODE, traffic, Targets(mode="streaming", ttft_s=ttft, tpot_s=tpot), None, None)


def _scan_aggregated(request: Request):
    """Every layout at every concurrency within the targets, the best by the search's own order."""
    priced = price_layouts(request, worker_layouts(request.model, request.cluster, {}))
    found = []
    for replica in priced.replicas.values():
        for c in range(1, replica.max_concurrency + 1):
            s = replica.steady(c)
            if request.targets.met(s.ttft_s, s.tpot_s):
                found.append(aggregated_plan(request, replica, c))
    found = [f for f in found if f is not None]
    return max(found, key=lambda p: rank(p, "throughput")) if found else None


def _scan_disaggregated(request: Request) -> float:
    """The most output tokens/s per GPU of any prefill/decode split: every pair of layouts of one dtype,
    every decode concurrency within TPOT, every count of prefill and decode workers."""
    priced = price_layouts(request, worker_layouts(request.model, request.cluster, {}))
    t, targets, best = request.traffic, request.targets, 0.0
    for a, prefill in priced.replicas.items():
        for b, decode in priced.replicas.items():
            if (a.precision, a.kv_cache_dtype) != (b.precision, b.kv_cache_dtype):
                continue
            pools = Pools(prefill, decode, EFF)
            gp, gd = a.world_size, b.world_size
            for c in range(1, decode.max_concurrency + 1):
                step = decode.decode_step(c)
                if decode.tpot(c) > targets.tpot_s:
                    break
                for x in range(1, NODE.total_gpus // gp + 1):
                    for y in range(1, (NODE.total_gpus - x * gp) // gd + 1):
                        gpus = x * gp + y * gd
                        rho = prefill_utilization_within(pools, targets.ttft_s, gpus)
                        rate = min(x * a.dp * rho / prefill.prefill_s, y * b.dp * c / (decode.decode_iterations * step))
                        best = max(best, rate * t.osl / gpus)
    return best


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(isl=st.integers(64, 4096), osl=st.integers(2, 400), ttft=st.floats(0.02, 2.0), tpot=st.floats(0.004, 0.05))
def test_the_search_finds_what_an_exhaustive_scan_finds(isl, osl, ttft, tpot):
    traffic = Traffic(isl=isl, osl=osl, max_num_seqs=24)
    request = _request(traffic, ttft, tpot)
    try:
        found = serve_plan(LLAMA_8B, NODE, traffic, ttft_s=ttft, tpot_s=tpot)
    except Infeasible:
        assert _scan_aggregated(request) is None and _scan_disaggregated(request) == 0.0
        return
    scanned = _scan_aggregated(request)
    if scanned is None:
        assert found.best_aggregated is None
    else:
        assert found.best_aggregated.figures.output_tokens_per_s_per_gpu == pytest.approx(
            scanned.figures.output_tokens_per_s_per_gpu, rel=1e-9)
    best = _scan_disaggregated(request)
    got = found.best_disaggregated.figures.output_tokens_per_s_per_gpu if found.best_disaggregated else 0.0
    assert got == pytest.approx(best, rel=1e-6)
    for plan in (found.best_aggregated, found.best_disaggregated):
        if plan is not None:  # every returned deployment meets the targets and fits the cluster
            assert plan.figures.ttft_s <= ttft * (1 + 1e-9) and plan.figures.tpot_s <= tpot * (1 + 1e-9)
            assert sum(w.gpus for w in plan.workers) <= NODE.total_gpus and not plan.figures.saturated


def test_a_load_gets_the_fewest_gpus_that_carry_it():
    """At 5 requests/s: no deployment of fewer GPUs carries the load within the targets (each layout
    tried at every worker count), and the one found does."""
    traffic = Traffic(isl=2000, osl=200, request_rate=5.0)
    found = serve_plan(LLAMA_8B, NODE, traffic, ttft_s=0.5, tpot_s=0.03, serving="aggregated")
    best = found.best
    assert found.objective == "gpus" and best.figures.requests_per_s == pytest.approx(5.0, rel=1e-9)
    request = _request(traffic, 0.5, 0.03)
    for plan in worker_layouts(LLAMA_8B, NODE, {}):
        replica = ServingReplica(LLAMA_8B, NODE, plan, traffic)
        for count in range(1, NODE.total_gpus // plan.world_size + 1):
            if count * plan.world_size >= best.gpus:
                break
            from parallelplan.constraints.serving import replica_deployment
            figures = replica_deployment(replica, traffic, workers=count)
            assert figures.saturated or not request.targets.met(figures.ttft_s, figures.tpot_s)


def test_disaggregated_figures_are_the_queue_transfer_and_decode_formulas():
    """TTFT = S + ρS/(2(1 − ρ)) + isl · bytes per token per GPU / link, TPOT the decode step at the
    concurrency Little's law gives, computed here from the pieces."""
    traffic = Traffic(isl=3000, osl=300)
    prefill = ServingReplica(LLAMA_8B, NODE, Plan(tp=2), traffic)
    decode = ServingReplica(LLAMA_8B, NODE, Plan(tp=4), traffic)
    pools = Pools(prefill, decode, EFF)
    est = disaggregate(pools, 1, 1, 2.0)
    s = prefill.prefill_s
    rho = 2.0 * s / 1
    fabric = Fabric.of(NODE, EFF)
    per_gpu = 3000 * max(prefill.kv_bytes_per_token, decode.kv_bytes_per_token)
    transfer = per_gpu / fabric.intra_bw + fabric.intra_alpha  # six GPUs share the node's NVLink domain
    assert est.kv_transfer_s == pytest.approx(transfer, rel=1e-12)
    assert est.ttft_s == pytest.approx(s + rho * s / (2 * (1 - rho)) + transfer, rel=1e-12)
    c = est.decode_concurrency
    assert c == pytest.approx(2.0 * 299 * decode.decode_step(c), rel=1e-9)  # Little's law on the decode pool
    assert est.tpot_s == decode.decode_step(c) and est.requests_per_s == pytest.approx(2.0, rel=1e-12)
    assert est.gpus == 6 and est.output_tokens_per_s_per_gpu == pytest.approx(2.0 * 300 / 6, rel=1e-12)
    assert prefill_utilization_within(pools, est.ttft_s, 6) == pytest.approx(rho, rel=1e-9)  # its inverse


def test_a_prefix_cache_shortens_the_wait_for_the_first_token():
    plain = serve_plan(LLAMA_8B, NODE, Traffic(isl=8000, osl=200), ttft_s=0.3, tpot_s=0.03, serving="aggregated")
    cached = serve_plan(LLAMA_8B, NODE, Traffic(isl=8000, osl=200, prefix_hit_rate=0.75), ttft_s=0.3, tpot_s=0.03,
                        serving="aggregated")
    assert cached.best.figures.output_tokens_per_s_per_gpu > plain.best.figures.output_tokens_per_s_per_gpu


def test_a_ttft_no_layout_meets_is_explained_with_the_target_that_would_be_met():
    with pytest.raises(Infeasible) as caught:
        serve_plan(load_model("llama-3.1-70b"), NODE, Traffic(isl=32000, osl=100), ttft_s=0.05, tpot_s=1.0)
    message = str(caught.value)
    assert "TTFT ≤ 50 ms" in message and "x the target" in message and "32000-token prompt" in message
    fastest = float(message.split("takes ")[1].split(" ms")[0])
    assert any(f"--ttft {math.ceil(fastest)}" in s for s in caught.value.suggestions)
    # the suggested target is met
    serve_plan(load_model("llama-3.1-70b"), NODE, Traffic(isl=32000, osl=100), ttft_s=math.ceil(fastest + 1) / 1e3,
               tpot_s=1.0, serving="aggregated")


def test_a_load_beyond_the_cluster_names_the_gpus_it_needs():
    with pytest.raises(Infeasible) as caught:
        serve_plan(LLAMA_8B, NODE, Traffic(isl=2000, osl=500, request_rate=500.0), mode="realtime")
    gpus = int(str(caught.value).split("need ")[1].split(" GPUs")[0])
    assert gpus > NODE.total_gpus and f"--nodes {math.ceil(gpus / 8)}" in " ".join(caught.value.suggestions)
    found = serve_plan(LLAMA_8B, load_cluster("dgx-h100", nodes=math.ceil(gpus / 8)),
                       Traffic(isl=2000, osl=500, request_rate=500.0), mode="realtime", serving="aggregated")
    assert found.best.gpus == gpus  # the count named is what the larger cluster's search uses


def test_modes_set_mlperf_targets_and_bad_input_is_named():
    assert (Targets.of("streaming").ttft_s, Targets.of("streaming").tpot_s) == (2.0, 0.2)
    assert (Targets.of("realtime").ttft_s, Targets.of("realtime").tpot_s) == (0.45, 0.04)
    assert Targets.of("batch", tpot_s=0.1).tpot_s == 0.1 and Targets.of("batch").ttft_s is None
    with pytest.raises(SolverInputError, match="mode 'fast': use one of batch, streaming, realtime"):
        Targets.of("fast")
    with pytest.raises(SolverInputError, match="ttft: a latency target must be a positive number"):
        Targets.of("streaming", ttft_s=float("nan"))
    with pytest.raises(SolverInputError, match="fixed: dp cannot be pinned for serving"):
        serve_plan(LLAMA_8B, NODE, Traffic(isl=100, osl=100), fixed={"dp": 2})


def test_batch_mode_fills_the_cache_and_leaves_disaggregation_out():
    found = serve_plan(LLAMA_8B, NODE, Traffic(isl=1000, osl=1000), mode="batch")
    assert found.best_disaggregated is None and any("without a TTFT target" in n for n in found.notes)
    with pytest.raises(SolverInputError, match="without a TTFT target .* --serving aggregated or auto"):
        serve_plan(LLAMA_8B, NODE, Traffic(isl=1000, osl=1000), mode="batch", serving="disaggregated")
    worker = found.best.workers[0]
    assert worker.concurrency == ServingReplica(LLAMA_8B, NODE, worker.plan, Traffic(isl=1000, osl=1000)).max_concurrency


def test_moe_layouts_offer_expert_parallelism_with_data_parallel_attention():
    mixtral = load_model("mixtral-8x7b")
    layouts = {(p.tp, p.dp, p.ep) for p in worker_layouts(mixtral, NODE, {"precision": "bf16", "kv_cache_dtype": "auto"})}
    assert {(1, 8, 8), (2, 4, 8), (8, 1, 8), (8, 1, 1), (2, 1, 1)} <= layouts
    assert all(ep in (1, tp * dp) for tp, dp, ep in layouts)


def test_the_frontier_trades_tokens_per_gpu_for_tokens_per_user():
    found = serve_plan(LLAMA_8B, NODE, Traffic(isl=1000, osl=300), ttft_s=1.0, tpot_s=0.05, pareto=True)
    points = [(p.figures.output_tokens_per_s_per_gpu, p.figures.tokens_per_s_per_user) for p in found.frontier]
    assert len(points) >= 3
    per_gpu, per_user = np.array(points).T
    assert np.all(np.diff(per_user) > 0) and np.all(np.diff(per_gpu) < 0)  # sorted by user speed, each a trade
    assert max(per_gpu) >= found.best.figures.output_tokens_per_s_per_gpu * (1 - 1e-9)  # TPOT does not bound it


@pytest.mark.parametrize("serving", ["aggregated", "disaggregated"])
@pytest.mark.parametrize("target", ["vllm", "sglang"])
def test_emitted_commands_carry_the_serving_plan(serving, target):
    found = serve_plan(LLAMA_8B, NODE, Traffic(isl=2000, osl=400), ttft_s=1.0, tpot_s=0.02, serving=serving)
    files = emit_serving(found, target)
    plan = found.best
    if serving == "aggregated":
        (worker,) = plan.workers
        text = files["serve.sh"]
        assert f"={worker.count * worker.plan.dp}" in text and str(worker.concurrency) in text
    else:
        assert set(files) == {"prefill.sh", "decode.sh", "router.sh"}
        assert f"Start {plan.workers[0].count} prefill" in files["router.sh"]
        assert "disaggregation-mode=decode" in files["decode.sh"] if target == "sglang" else "NixlConnector" in files["decode.sh"]
        text = files["decode.sh"]
    fraction = float(text.split("memory-utilization=" if target == "vllm" else "mem-fraction-static=")[1].split()[0])
    assert 0.5 < fraction < 1.0
    assert "--max-model-len=2400" in text if target == "vllm" else "--context-length=2400" in text


def test_a_spread_of_prompt_lengths_waits_longer_in_the_prefill_queue():
    """Two prompt lengths: the queue's wait is ρ · E[S²]/(2 E[S](1 − ρ)) (M/G/1), the transfer the mean
    prompt's cache."""
    from parallelplan.constraints.serving import Lengths

    mix = Traffic(lengths=(Lengths(isl=1000, osl=300, share=1), Lengths(isl=5000, osl=300, share=1)))
    prefill, decode = ServingReplica(LLAMA_8B, NODE, Plan(tp=2), mix), ServingReplica(LLAMA_8B, NODE, Plan(tp=4), mix)
    pools = Pools(prefill, decode, EFF)
    est = disaggregate(pools, 1, 1, 2.0)
    s, s2 = prefill.prefill_s, prefill.prefill_s_squared
    rho = 2.0 * s
    assert s2 > s * s  # a spread of service times
    assert est.ttft_s == pytest.approx(s + rho * s2 / (2 * s * (1 - rho)) + est.kv_transfer_s, rel=1e-12)
    fabric = Fabric.of(NODE, EFF)
    per_gpu = 3000 * max(prefill.kv_bytes_per_token, decode.kv_bytes_per_token)
    assert est.kv_transfer_s == pytest.approx(per_gpu / fabric.intra_bw + fabric.intra_alpha, rel=1e-12)
