"""Activations offloaded to host memory (`Plan.offload_activations`): the GPU keeps two layers' worth, the
host the rest; the copies over PCIe cost what the passes' compute does not hide; the node's host memory
bounds what all its GPUs offload (the stacks' own limits — Megatron-Core: no pipeline, no recompute — are
rules, in tests/test_rules.py). The solver's choice of it equals exhaustive enumeration in tests/test_solver.py (its generated long-context
cases search it)."""

from __future__ import annotations

import pytest

from parallelplan.constraints import Plan, Workload, check, estimate
from parallelplan.emitters import EmitError, constraints, emit
from parallelplan.hardware import load_cluster
from parallelplan.models import load_model
from parallelplan.solver import solve

LLAMA_8B = load_model("llama-3.1-8b")
H100 = load_cluster("dgx-h100", nodes=1)
LONG = Workload(kind="finetune", seq_len=131072, global_batch_size=8, stack="custom")
RING = Plan(dp=1, cp=8, sharding="fsdp")


def _pair(cluster, plan: Plan, workload: Workload):
    kept = estimate(LLAMA_8B, cluster, plan, workload)
    offloaded = estimate(LLAMA_8B, cluster, plan.model_copy(update={"offload_activations": True}), workload)
    return kept, offloaded


def test_the_host_takes_all_but_two_layers_of_the_stored_activations():
    """One stage, one micro-batch in flight: what leaves the GPU is what the host holds, and the GPU keeps
    two of the 32 layers' stored activations (plus the transients both plans share)."""
    kept, offloaded = _pair(H100, RING, LONG)
    assert offloaded.memory.activations + offloaded.memory.host == pytest.approx(kept.memory.activations, rel=1e-9)
    assert kept.memory.host == 0 and offloaded.memory.host > 10 * 2**30
    assert not kept.fits and offloaded.fits  # 128K tokens over 8 GPUs fit only offloaded (or recomputed)


def test_long_sequences_hide_the_copies_behind_compute():
    kept, offloaded = _pair(H100, RING, LONG)
    assert offloaded.time.offload == 0
    assert offloaded.step_time_s == pytest.approx(kept.step_time_s, rel=1e-12)


def test_a_slow_host_link_exposes_the_copies_as_bounded_by_the_bytes():
    """With a PCIe link 1000 times slower the copies dominate: each pass's copy is exposed less the pass's
    compute, so the offload term lies between 2·copy − compute and 2·copy per micro-batch; it is the
    whole difference between the two plans' steps."""
    gpu = H100.node.gpu.model_copy(update={"pcie_bandwidth": H100.node.gpu.pcie_bandwidth / 1000})
    slow = H100.model_copy(update={"node": H100.node.model_copy(update={"gpu": gpu})})
    work = Workload(kind="finetune", seq_len=4096, global_batch_size=8, stack="custom")
    plan = Plan(dp=8, sharding="fsdp")
    kept, offloaded = _pair(slow, plan, work)
    assert offloaded.step_time_s - kept.step_time_s == pytest.approx(offloaded.time.offload, rel=1e-9)
    from parallelplan.constraints import Efficiency

    link = gpu.pcie_bandwidth * Efficiency.default().memory_bound
    stored_at_least = offloaded.memory.host  # one micro-batch: stored = host + the two layers kept
    assert offloaded.time.offload >= 2 * stored_at_least / link - kept.time.compute
    assert offloaded.time.offload <= 2 * (offloaded.memory.host + offloaded.memory.activations) / link


def test_the_nodes_host_memory_bounds_the_offload():
    small = H100.model_copy(update={"node": H100.node.model_copy(update={"host_memory_bytes": 64 * 2**30})})
    plan = RING.model_copy(update={"offload_activations": True})
    violations = check(LLAMA_8B, small, plan, LONG)
    assert [v.rule for v in violations] == ["host_memory_fits"]
    assert "per node of 8 GPUs; the node has 64 GiB" in violations[0].message
    assert not estimate(LLAMA_8B, small, plan, LONG).fits
    assert estimate(LLAMA_8B, H100, plan, LONG).fits  # 2 TB holds it


def test_the_search_offloads_where_it_is_faster_and_targets_that_cannot_write_it_pin_it_off():
    """At 128K tokens on one node the search offloads rather than recompute; the torchrun target cannot
    write the offload, so its search pins it off and emitting an offloaded plan there is refused."""
    found = solve(LLAMA_8B, H100, LONG, fixed={"cp": 8, "dp": 1})
    assert found.plan.offload_activations and found.plan.recompute == "none"
    assert constraints("torchrun")["fixed"]["offload_activations"] is False
    assert "offload_activations" not in constraints("trl").get("fixed", {})
    with pytest.raises(EmitError, match="torchrun cannot express activations offloaded"):
        emit(found, "torchrun")
