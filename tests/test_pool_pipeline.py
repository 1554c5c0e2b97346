"""Pipeline stages across the pools of a heterogeneous cluster (`solver.pool_pipeline`): the per-rank costs
reassemble the cost model's own step; the factored search equals brute force over every layout, each priced
as one whole pipeline on each pool's hardware (hypothesis); a two-pool case with a GPU exactly half as fast
follows the formula by hand; a model no single pool can hold trains pipelined across two."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from parallelplan.constraints import Efficiency, Workload, evaluate
from parallelplan.constraints.evaluate import stage_costs
from parallelplan.constraints.memory import micro_batches
from parallelplan.constraints.timing import bubble_factor
from parallelplan.hardware import Pool, PooledCluster, load_cluster
from parallelplan.models import load_model
from parallelplan.solver import solve_pools
from parallelplan.solver.pool_pipeline import best_pool_pipeline, brute_force
from parallelplan.solver.space import SearchSpace, enumerate_plans


def _cluster(base: str, nodes: int, per_node: int, memory: str, **gpu):
    return load_cluster({"base": base, "num_nodes": nodes, "nvlink_domain_size": per_node,
                         "node": {"gpus_per_node": per_node, "nics_per_node": per_node, "gpu_numa_nodes": None,
                                  "gpu": {"memory_bytes": memory, **gpu}}})


@pytest.mark.parametrize("name,nodes", [("llama-3.1-8b", 2), ("mixtral-8x7b", 4)])
def test_per_rank_costs_reassemble_the_step(name, nodes):
    """m · max tᵢ + β · (Σ tᵢ − max tᵢ) + max once over every rank of `stage_costs` is `evaluate`'s step,
    and its most loaded rank is `evaluate`'s memory, on every plan of a real space (pp, vpp, MoE)."""
    model, cluster = load_model(name), load_cluster("dgx-h100", nodes=nodes)
    work = Workload(seq_len=4096, global_batch_size=64)
    plans = enumerate_plans(SearchSpace(model, cluster, work))
    plans = plans.take(np.random.default_rng(0).choice(len(plans), size=min(len(plans), 3000), replace=False))
    costs = stage_costs(model, cluster, work, plans)
    t = costs.times
    slowest = t.per_microbatch.max(axis=1)
    total = np.where(costs.layout.valid, t.per_microbatch, 0.0).sum(axis=1)
    step = micro_batches(plans, work) * slowest + bubble_factor(plans) * (total - slowest) + t.once.max(axis=1)
    reference = evaluate(model, cluster, work, plans)
    assert np.allclose(step, reference.time.step, rtol=1e-12)
    assert np.allclose(costs.memory.total.max(axis=1), reference.memory.total, rtol=1e-12)


def _link(model, pooled, work, dp, mbs):
    """One send over the link, by hand: dp · micro-batch · sequence · hidden · 2 bytes / bandwidth + α."""
    alpha = pooled.link.latency or Efficiency.default().latency_s["inter_node"]
    return dp * mbs * work.seq_len * model.hidden_size * 2 / pooled.link.bandwidth + alpha


@st.composite
def pooled_instances(draw):
    heads = draw(st.sampled_from([4, 8]))
    model = load_model({"name": "generated", "hidden_size": draw(st.sampled_from([256, 512])),
                        "num_layers": draw(st.sampled_from([2, 3, 5])), "num_attention_heads": heads,
                        "num_kv_heads": draw(st.sampled_from([h for h in (1, 2, 4) if heads % h == 0])),
                        "vocab_size": draw(st.sampled_from([1000, 8000])), "ffn_hidden_size": draw(st.sampled_from([512, 1024]))})
    pools = [Pool(name=f"p{i}", cluster=_cluster(draw(st.sampled_from(["dgx-h100", "dgx-a100"])), draw(st.sampled_from([1, 2])),
                                                 draw(st.sampled_from([1, 2])), draw(st.sampled_from(["1 GiB", "2 GiB", "16 GiB"]))))
             for i in range(2)]
    pooled = PooledCluster(name="generated", pools=tuple(pools),
                           link={"bandwidth": draw(st.sampled_from([1e9, 1e11]))})
    work = Workload(seq_len=draw(st.sampled_from([128, 512])), global_batch_size=draw(st.sampled_from([2, 4, 8])))
    fixed = draw(st.sampled_from([{}, {}, {"tp": 2}, {"dp": 1}, {"pp": 1}, {"recompute": "full"}, {"sharding": "zero1"},
                                  {"micro_batch_size": 1}, {"cp": 2}]))
    return model, pooled, work, fixed


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pooled_instances())
def test_the_search_equals_brute_force(case):
    model, pooled, work, fixed = case
    found = best_pool_pipeline(model, pooled, work, fixed=fixed)
    expected = brute_force(model, pooled, work, fixed=fixed)
    assert (found is None) == (expected is None)
    if found is not None:
        assert found.step_time_s == pytest.approx(expected, rel=1e-9)
        assert sum(sum(s.layers_per_stage) for s in found.stages) == model.num_layers
        for s in found.stages:  # every rank of the plan fits its own pool, and the pins hold in each
            assert max(s.memory_bytes) <= s.usable_memory_bytes
            assert s.tp == fixed.get("tp", s.tp) and s.pp == fixed.get("pp", s.pp)
        assert (found.dp, found.recompute, found.sharding) == (fixed.get("dp", found.dp), fixed.get("recompute", found.recompute),
                                                               fixed.get("sharding", found.sharding))
        assert found.micro_batch_size == fixed.get("micro_batch_size", found.micro_batch_size)
    if "cp" in fixed:  # context parallelism is outside the pipelines across pools
        assert found is None


def test_a_gpu_half_as_fast_takes_half_the_layers():
    """Two one-GPU pools, the second's GPU an H100 with half its peak FLOP/s and HBM bandwidth (every
    kernel of a stage takes twice as long there): the cut balances the two stages, so the fast pool holds
    about twice the layers (Phi-3-mini: 32 layers of ~113 M parameters, an LM head of 98 M on the last
    stage, about one layer's work: x + 1 = 2·(32 − x) gives 21 / 11, by hand); the step is m · the slower rank + the faster rank once + the slowest update,
    and the boundary costs one micro-batch's activations over the link, all by hand from the per-rank
    times the plan reports."""
    h100 = load_cluster("dgx-h100", gpus=1)
    gpu = h100.gpu
    slow_gpu = gpu.model_copy(update={"peak_flops": {k: v / 2 for k, v in gpu.peak_flops.items()},
                                      "hbm_bandwidth": gpu.hbm_bandwidth / 2})
    slow = h100.model_copy(update={"node": h100.node.model_copy(update={"gpu": slow_gpu})})
    assert slow.gpu.hbm_bandwidth == gpu.hbm_bandwidth / 2
    pooled = PooledCluster(name="fast and slow", pools=(Pool(name="fast", cluster=h100), Pool(name="slow", cluster=slow)),
                           link={"bandwidth": 50e9})
    model = load_model("phi-3-mini")
    work = Workload(seq_len=2048, global_batch_size=64)
    found = best_pool_pipeline(model, pooled, work)
    assert found is not None
    layers = {s.pool: sum(s.layers_per_stage) for s in found.stages}
    assert layers["fast"] + layers["slow"] == model.num_layers
    assert layers == {"fast": 21, "slow": 11}
    times = [t for s in found.stages for t in s.microbatch_times_s]
    assert found.pipeline_s == pytest.approx(found.micro_batches * max(times) + sum(times) - max(times), rel=1e-12)
    assert found.step_time_s == pytest.approx(found.pipeline_s + found.once_s, rel=1e-12)
    assert found.micro_batches == 64 // (found.dp * found.micro_batch_size)
    assert found.link_s == pytest.approx(_link(model, pooled, work, found.dp, found.micro_batch_size), rel=1e-12)
    # the stages are balanced: moving a layer off the slower rank cannot help more than one layer's time
    assert min(times) / max(times) > 0.8


def test_a_model_no_pool_holds_alone_trains_pipelined_across_two():
    """Llama 3.1 8B with AdamW needs ~128 GB of states: one H100 or one A100 cannot hold it, so no split of
    the batch fits, but its layers cut across the two GPUs do."""
    pooled = load_cluster({"name": "one and one", "link": {"bandwidth": "25 GB/s"},
                           "pools": [{"cluster": "dgx-h100", "gpus": 1, "name": "h100"},
                                     {"cluster": "dgx-a100", "gpus": 1, "name": "a100"}]})
    found = solve_pools(load_model("llama-3.1-8b"), pooled, Workload(seq_len=2048, global_batch_size=32))
    assert found.layout == "pipeline" and found.alternatives["data_parallel"] is None
    assert found.step_time_s == found.pipeline.step_time_s and found.shares == ()
    assert sorted(s.pool for s in found.pipeline.stages) == ["a100", "h100"]
    assert any("Pipeline across the pools" in line for line in found.explanation)
    with pytest.raises(Exception, match="no pipeline across the pools fits either"):
        solve_pools(load_model("llama-3.1-70b"), pooled, Workload(seq_len=2048, global_batch_size=32))


def test_the_faster_layout_wins_and_the_other_is_reported():
    pooled = load_cluster({"name": "mixed", "link": {"bandwidth": "100 GB/s"},
                           "pools": [{"cluster": "dgx-h100", "nodes": 2, "name": "h100"},
                                     {"cluster": "dgx-a100", "nodes": 2, "name": "a100"}]})
    model, work = load_model("llama-3.1-8b"), Workload(seq_len=4096, global_batch_size=256)
    both = solve_pools(model, pooled, work)
    split = solve_pools(model, pooled, work, layouts=("data_parallel",))
    piped = solve_pools(model, pooled, work, layouts=("pipeline",))
    assert both.step_time_s == min(split.step_time_s, piped.step_time_s)
    assert both.alternatives["data_parallel"] == pytest.approx(split.step_time_s, rel=1e-9)
    assert both.alternatives["pipeline"] == pytest.approx(piped.step_time_s, rel=1e-12)
    assert split.layout == "data_parallel" and piped.layout == "pipeline"
    with pytest.raises(Exception, match="layouts: sideways is not a layout"):
        solve_pools(model, pooled, work, layouts=("sideways",))
