"""One model across the pools of a heterogeneous cluster (`solver.pools`, `hardware.pools`): CP-SAT's batch
split equals brute force over the same tables (hypothesis); a two-pool case checked by hand against the
formula; bad pool files and impossible splits say why."""

from __future__ import annotations

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from parallelplan.cli.main import plan
from parallelplan.constraints import Efficiency, Workload
from parallelplan.hardware import HardwareError, PooledCluster, load_cluster
from parallelplan.models import load_model
from parallelplan.solver import Infeasible, Plan, PooledSolution, solve, solve_pools
from parallelplan.solver.pools import batch_shares, brute_force, choose, sync_time_ns

POOLS = {"name": "mixed", "link": {"bandwidth": "100 GB/s"},
         "pools": [{"cluster": "dgx-h100", "nodes": 2, "name": "h100"}, {"cluster": "dgx-a100", "nodes": 2, "name": "a100"}]}


@st.composite
def splits(draw):
    batch = draw(st.sampled_from([8, 12, 16, 24]))
    shares = batch_shares(batch)
    pools = draw(st.integers(2, 3))
    step = st.one_of(st.none(), st.integers(1, 40))
    tables = [{b: 0 if b == 0 else draw(step) for b in shares} for _ in range(pools)]
    sync = {k: 0 if k < 2 else draw(st.integers(0, 20)) for k in range(pools + 1)}
    return tables, sync, batch


@settings(max_examples=300, deadline=None)
@given(splits())
def test_cp_sat_split_equals_brute_force(case):
    tables, sync, batch = case
    expected = brute_force(tables, sync, batch)
    found = choose(tables, sync, batch)
    if expected is None:
        assert found is None
        return
    shares, proved = found
    assert proved and shares == expected and sum(shares) == batch


def test_pools_with_linear_speeds_split_the_batch_in_proportion():
    """Pool A does a sequence in 1 unit, pool B in 3: with no sync cost the best split of 16 gives A 12
    (step 12) and B 4 (step 12); a sync cost large enough makes using one pool alone the better step."""
    shares = batch_shares(16)
    a = {b: b for b in shares}
    b = {s: 3 * s for s in shares}
    assert choose([a, b], {0: 0, 1: 0, 2: 0}, 16)[0] == (12, 4)
    assert choose([a, b], {0: 0, 1: 0, 2: 5}, 16)[0] == (16, 0)  # 16 alone beats max(12, 12) + 5


def test_two_real_pools_follow_the_formula():
    """h100 and a100 pools of 16 GPUs each: the step is the slower pool's own optimum on its share plus the
    ring all-reduce of the fp32 gradients over the link, 2·(2−1)/2 · Ψ·4 B / 100 GB/s + 2·α; the faster
    pool takes the larger share."""
    pooled = load_cluster(POOLS)
    assert isinstance(pooled, PooledCluster) and pooled.total_gpus == 32
    model, work = load_model("llama-3.1-8b"), Workload(seq_len=4096, global_batch_size=256)
    found = solve_pools(model, pooled, work, layouts=("data_parallel",))
    h100, a100 = found.shares
    assert found.optimal and h100.sequences + a100.sequences == 256 and h100.sequences > a100.sequences
    sync = model.total_params * 4 / 100e9 + 2 * Efficiency.default().latency_s["inter_node"]
    assert found.sync_s == pytest.approx(sync, rel=1e-9)
    alone = [solve(model, p.cluster, work.model_copy(update={"global_batch_size": s.sequences}))
             for p, s in zip(pooled.pools, found.shares, strict=True)]
    assert found.step_time_s == pytest.approx(max(a.estimate.step_time_s for a in alone) + sync, rel=1e-9)
    tables = [{k: None if v is None else round(v * 1e9) for k, v in s.table.items()} for s in found.shares]
    syncs = {k: sync_time_ns(model, pooled, k, work) for k in range(3)}
    assert brute_force(tables, syncs, 256) == (h100.sequences, a100.sequences)


@pytest.mark.parametrize("change,message", [
    ({"pools": [{"cluster": "dgx-h100", "nodes": 0}, {"cluster": "dgx-a100", "nodes": 2}]}, r"pools\[0\].nodes must be a positive"),
    ({"link": None}, "link: give the bandwidth between the pools"),
    ({"pools": [{"cluster": "dgx-h100", "nodes": 2}]}, "two or more pools"),
    ({"pools": [{"cluster": "dgx-h100", "nodes": 1, "name": "x"}, {"cluster": "dgx-a100", "nodes": 1, "name": "x"}]},
     "distinct names"),
    ({"link": {"bandwidth": 0}}, "bandwidth"),
])
def test_bad_pool_files_name_the_field(change, message):
    fields = {**POOLS, **change}
    if fields.get("link") is None:
        fields.pop("link")
    with pytest.raises(HardwareError, match=message):
        load_cluster(fields)


def test_plan_solve_splits_over_pools_and_other_commands_refuse_them(tmp_path):
    import json

    path = tmp_path / "pools.json"
    path.write_text(json.dumps(POOLS))
    run = lambda *args: CliRunner().invoke(plan, list(args))  # noqa: E731
    result = run("solve", "-m", "llama-3.1-8b", "-c", str(path), "--global-batch", "256")
    # here a pipeline across the pools beats splitting the batch (tests/test_pool_pipeline.py), and says by how much
    assert result.exit_code == 0 and "pipeline across the pools" in result.output and "a100" in result.output
    assert "Splitting the batch over the pools instead" in result.output
    small = run("solve", "-m", "llama-3.2-1b", "-c", str(path), "--global-batch", "256")
    assert small.exit_code == 0 and "gradient all-reduce across pools" in small.output
    refused = run("launch", "-m", "llama-3.1-8b", "-c", str(path), "--target", "megatron")
    assert refused.exit_code == 2 and "no launch target runs a different layout per pool" in refused.output
    pinned = run("solve", "-m", "llama-3.1-8b", "-c", str(path), "--global-batch", "256", "--tp", "4", "--pp", "2",
                 "--dp", "2", "--json")  # pins hold in every pool's plan (their GPU count does not size the pools)
    assert pinned.exit_code == 0, pinned.output
    found = PooledSolution.model_validate_json(pinned.stdout)
    plans = ([s.solution.plan for s in found.shares if s.solution] if found.pipeline is None else
             [Plan(tp=s.tp, pp=s.pp, dp=found.pipeline.dp) for s in found.pipeline.stages])
    assert plans and all((p.tp, p.pp, p.dp) == (4, 2, 2) for p in plans)
    assert run("solve", "-m", "llama-3.1-8b", "-c", str(path), "--objective", "cost").exit_code == 2
    assert run("solve", "-m", "llama-3.1-8b", "-c", str(path), "--nodes", "4").exit_code == 2
    too_big = run("solve", "-m", "llama-3.1-405b", "-c", str(path), "--global-batch", "256")
    assert too_big.exit_code == 1 and "no split of 256 sequences" in too_big.output
    with pytest.raises(Infeasible, match="h100: none; a100: none"):
        solve_pools(load_model("llama-3.1-405b"), load_cluster(POOLS), Workload(seq_len=4096, global_batch_size=256))


def test_pools_reduce_only_what_trains():
    """Under LoRA the pools all-reduce the adapters' fp32 gradients, not the frozen base's: the same ring
    formula over `peft.trained_parameters`; DPO's throughput counts both sequences of each example."""
    from parallelplan.constraints import Peft
    from parallelplan.constraints.peft import trained_parameters

    pooled = load_cluster(POOLS)
    model = load_model("llama-3.1-8b")
    lora = Workload(kind="finetune", seq_len=4096, global_batch_size=256, peft=Peft())
    adapters = trained_parameters(model, lora.peft)
    assert adapters == pytest.approx(41_943_040)  # peft's count for r=16 on every linear of Llama-3.1-8B
    alpha = Efficiency.default().latency_s["inter_node"]
    assert sync_time_ns(model, pooled, 2, lora) == round((adapters * 4 / 100e9 + 2 * alpha) * 1e9)
    assert sync_time_ns(model, pooled, 2, lora) < sync_time_ns(model, pooled, 2, lora.model_copy(update={"peft": None})) / 100
    dpo = Workload(kind="rlhf", algorithm="dpo", seq_len=2048, global_batch_size=64, peft=Peft())
    found = solve_pools(model, pooled, dpo, layouts=("data_parallel",))
    assert found.tokens_per_s == pytest.approx(64 * 2 * 2048 / found.step_time_s)
