"""The Python API of `../shared/design.md`: every name importable, the results serialise to JSON and
back, and the new API functions (assess, compare_sharding, describe_topology, compare) agree with
references we did not write: the ZeRO paper's communication volumes, nccl-tests' bus-bandwidth
definition and the cost model they wrap."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from parallelplan.cli.main import plan as plan_cli
from parallelplan.constraints import (
    Assessment,
    Estimate,
    Plan,
    ShardingComparison,
    Workload,
    assess,
    check,
    compare_sharding,
    describe_topology,
    estimate,
)
from parallelplan.hardware import load_cluster
from parallelplan.models import load_model


def test_design_names_are_importable():
    from parallelplan.constraints import check, estimate  # noqa: F401
    from parallelplan.emitters import emit, list_targets  # noqa: F401
    from parallelplan.hardware import ClusterSpec, list_clusters, load_cluster  # noqa: F401
    from parallelplan.models import ModelSpec, list_presets, load_model  # noqa: F401
    from parallelplan.solver import Plan, Solution, Workload, compare, pareto, solve  # noqa: F401


def test_public_api_from_the_namespace_root_is_the_layers_own_objects():
    """`from parallelplan import ...` gives the very objects the layers define (no copies, no wrappers),
    for every name it exports; it imports none of them until asked (the CLI's start-up pays nothing)."""
    import importlib
    import subprocess
    import sys

    import parallelplan

    for name in parallelplan.__all__:
        value = getattr(parallelplan, name)
        if name != "__version__":
            home = importlib.import_module(parallelplan._EXPORTS[name])
            assert value is getattr(home, name), name
        assert name in dir(parallelplan)
    for name in ("load_model", "load_cluster", "detect_cluster", "estimate", "check", "solve", "pareto", "Workload",
                 "Plan", "Solution", "emit", "list_targets", "Infeasible", "ModelError", "EmitError"):
        assert name in parallelplan.__all__, name
    with pytest.raises(AttributeError, match="parallelplan.*no_such_name"):
        parallelplan.no_such_name  # noqa: B018
    loaded = subprocess.run([sys.executable, "-c", "import json, sys, parallelplan; print(json.dumps(sorted(m for m in sys.modules "
                             "if m.startswith(('parallelplan.', 'ortools', 'numpy', 'pydantic')))))"],
                            capture_output=True, text=True, check=True).stdout
    assert json.loads(loaded) == ["parallelplan.common", "parallelplan.common.lazy"]


@settings(max_examples=25, deadline=None)
@given(tp=st.sampled_from([1, 2, 4, 8]), sharding=st.sampled_from(["none", "zero1", "zero2", "fsdp"]),
       recompute=st.sampled_from(["none", "selective", "full"]), micro=st.sampled_from([1, 2]))
def test_plan_and_estimate_round_trip_through_json(tp, sharding, recompute, micro):
    model, cluster = load_model("llama-3.1-8b"), load_cluster("dgx-h100")
    plan = Plan(tp=tp, dp=8 // tp, sharding=sharding, recompute=recompute, micro_batch_size=micro)
    assert Plan.model_validate_json(plan.model_dump_json()) == plan
    est = estimate(model, cluster, plan, Workload(seq_len=2048, global_batch_size=32))
    assert Estimate.model_validate_json(est.model_dump_json()) == est


def test_assessment_round_trips_and_is_what_estimate_prints():
    model, cluster = load_model("llama-3.1-8b"), load_cluster("dgx-h100")
    work = Workload(seq_len=4096, global_batch_size=64)
    report = assess(model, cluster, Plan(dp=8, sharding="zero1"), work, tokens=1e10, price_per_gpu_hour=2.0)
    assert Assessment.model_validate_json(report.model_dump_json()) == report
    assert report.violations == tuple(check(model, cluster, Plan(dp=8, sharding="zero1"), work))
    out = CliRunner().invoke(plan_cli, ["estimate", "-m", "llama-3.1-8b", "-c", "dgx-h100", "--sharding", "zero1",
                                        "--global-batch", "64", "--tokens", "1e10", "--price", "2", "--json"])
    assert json.loads(out.stdout) == report.model_dump(mode="json")


# -- sharding ---------------------------------------------------------------------------------------------

def test_sharding_volumes_follow_the_zero_paper():
    """Rajbhandari et al. 2020 §7: DDP and ZeRO-1/2 move 2Ψ per step, ZeRO-3 3Ψ — with one micro-batch per
    step and Ψ in the gradient dtype (fp32 master gradients here, bf16 weights gathered)."""
    model, cluster = load_model("llama-3.1-8b"), load_cluster("dgx-h100", nodes=2)
    n = 16
    result = compare_sharding(model, cluster, Plan(dp=n), Workload(seq_len=2048, global_batch_size=n))
    sent = {o.sharding: o.dp_comm_bytes for o in result.options}
    grads, weights = 4 * model.total_params, 2 * model.total_params  # fp32 gradients, bf16 weights
    ring = (n - 1) / n
    assert sent["none"] == pytest.approx(2 * ring * grads)                    # all-reduce
    assert sent["zero1"] == pytest.approx(ring * (grads + weights))           # reduce-scatter + all-gather
    assert sent["zero2"] == pytest.approx(sent["zero1"])
    assert sent["zero3"] == pytest.approx(ring * (grads + 2 * weights))       # 2 gathers + reduce-scatter
    assert sent["fsdp"] == pytest.approx(sent["zero3"])


def test_sharding_volumes_scale_with_micro_batches_where_the_frameworks_reduce_each_one():
    model, cluster = load_model("llama-3.1-8b"), load_cluster("dgx-h100")
    one, four = (compare_sharding(model, cluster, Plan(dp=8), Workload(seq_len=2048, global_batch_size=8 * m))
                 for m in (1, 4))
    by = lambda r: {o.sharding: o.dp_comm_bytes for o in r.options}  # noqa: E731
    assert by(four)["none"] == pytest.approx(by(one)["none"])      # once per step
    assert by(four)["zero1"] == pytest.approx(by(one)["zero1"])
    assert by(four)["fsdp"] == pytest.approx(4 * by(one)["fsdp"])  # gathers and reduce-scatters per micro-batch


def test_sharding_memory_is_the_cost_models_and_the_recommendation_runs():
    model, cluster = load_model("llama-3.1-8b"), load_cluster("dgx-h100", nodes=2)
    work = Workload(seq_len=4096, global_batch_size=64)
    result = compare_sharding(model, cluster, Plan(dp=16), work)
    for option in result.options:
        assert option.memory == estimate(model, cluster, option.plan, work).memory
        assert option.violations == tuple(check(model, cluster, option.plan, work))
    chosen = next(o for o in result.options if o.sharding == result.recommended)
    assert not chosen.violations
    fastest = min(o.step_time_s for o in result.options if not o.violations)
    assert chosen.step_time_s <= fastest * 1.01
    assert ShardingComparison.model_validate_json(result.model_dump_json()) == result


def test_hsdp_appears_only_when_it_splits_the_group():
    model = load_model("llama-3.1-8b")
    one_node = compare_sharding(model, load_cluster("dgx-h100"), Plan(dp=8), Workload(seq_len=2048, global_batch_size=8))
    assert "hsdp" not in [o.sharding for o in one_node.options]  # shard group = the whole dp group: that is FSDP


# -- topology -----------------------------------------------------------------------------------------

def test_topology_bus_bandwidth_is_nccl_tests_definition():
    """Inside one NVLink domain a large ring all-reduce reaches the effective NVLink bandwidth as busbw
    (nccl-tests PERFORMANCE.md: busbw = algbw · 2(n−1)/n equals the link speed for a ring). DGX A100's
    second-generation NVSwitch has no NVLink SHARP, so NCCL runs the ring there."""
    report = describe_topology(load_cluster("dgx-a100", nodes=4))
    nvlink = report.tiers[0]
    inside = next(g for g in report.groups if g.size == 8)
    assert inside.domains == 1 and inside.bus_bandwidth == pytest.approx(nvlink.effective_bandwidth, rel=0.02)
    across = next(g for g in report.groups if g.size == 32)
    assert across.domains == 4 and across.bus_bandwidth < inside.bus_bandwidth
    assert [g.size for g in report.groups] == [2, 4, 8, 16, 32]


def test_topology_of_a_partial_node_has_one_tier():
    report = describe_topology(load_cluster("dgx-h100", gpus=4))
    assert len(report.tiers) == 1 and report.groups[-1].size == 4


# -- the quick starts, typed as a user would ------------------------------------------------------

def _run(*args: str):
    return CliRunner().invoke(plan_cli, list(args))


def test_quick_start_recommend_on_one_node_explains_and_suggests():
    result = _run("recommend", "--model", "llama-3.1-70b", "--nodes", "1")
    assert result.exit_code == 1
    assert "infeasible" in result.stdout and "2 nodes (16 GPUs)" in result.stdout


def test_quick_start_launch_with_an_explicit_layout():
    fits = _run("launch", "--model", "llama-3.1-8b", "--nodes", "2", "--gpus", "4", "--tp", "2", "--pp", "2", "--dp", "1")
    assert fits.exit_code == 0, fits.output
    assert "tp 2 · pp 2 · dp 1" in fits.stdout and "==> launch.sh <==" in fits.stdout and "--nnodes=2" in fits.stdout
    assert "--nproc-per-node=2" in fits.stdout
    too_big = _run("launch", "--model", "llama-3.1-70b", "--nodes", "2", "--gpus", "4", "--tp", "2", "--pp", "2", "--dp", "1")
    assert too_big.exit_code == 1 and "1.03 TiB" in too_big.stdout and "16 bytes per parameter" in too_big.stdout


def test_launch_json_holds_the_solution_and_the_files(tmp_path):
    result = _run("launch", "-m", "llama-3.1-8b", "-c", "dgx-h100", "--nodes", "1", "--target", "deepspeed", "--json",
                  "--out", str(tmp_path))
    data = json.loads(result.stdout)
    assert data["target"] == "deepspeed" and set(data["files"]) == {"ds_config.json", "launch.sh"}
    assert (tmp_path / "ds_config.json").read_text() == data["files"]["ds_config.json"]
    assert data["solution"]["plan"]["pp"] == 1


def test_pin_flags_are_fix_shortcuts():
    base = ["solve", "-m", "llama-3.1-8b", "-c", "dgx-h100", "--nodes", "1", "--json"]
    assert json.loads(_run(*base, "--tp", "2").stdout)["plan"] == json.loads(_run(*base, "--fix", "tp=2").stdout)["plan"]
    both = _run(*base, "--tp", "2", "--fix", "tp=4")
    assert both.exit_code == 2 and "both pin tp" in both.stderr
    sized = json.loads(_run("solve", "-m", "llama-3.1-8b", "--tp", "2", "--dp", "2", "--json").stdout)
    assert sized["gpus"] == 4 and sized["plan"]["tp"] == 2  # a pinned dp sizes the cluster


def test_bad_api_arguments_name_the_field():
    from parallelplan.constraints import PlanError

    model, cluster = load_model("llama-3.1-8b"), load_cluster("dgx-h100", nodes=2)
    work = Workload(seq_len=2048, global_batch_size=16)
    for bad in (3, 16, 1):
        with pytest.raises(PlanError, match="hsdp_shard_size"):
            compare_sharding(model, cluster, Plan(dp=16), work, hsdp_shard_size=bad)
    with pytest.raises(PlanError, match="message_bytes"):
        describe_topology(cluster, message_bytes=0)
    with pytest.raises(PlanError, match="tokens must be a positive number"):
        assess(model, cluster, Plan(dp=16), work, tokens=-1.0)


def test_a_search_does_not_import_pandas():
    """`solver.cpsat` reaches CP-SAT without `ortools.sat.python.cp_model`, whose pandas import was ~0.3 s of
    every command's cold start (issue 16): a whole search, infeasibility core included, leaves it unloaded."""
    import os
    import subprocess
    import sys

    script = ("import sys\n"
              "from parallelplan import load_cluster, load_model, solve, Workload, Infeasible\n"
              "model, work = load_model('llama-3.1-8b'), Workload(seq_len=2048, global_batch_size=16)\n"
              "solve(model, load_cluster('dgx-h100'), work)\n"
              "try:\n"
              "    solve(load_model('llama-3.1-70b'), load_cluster('dgx-h100', gpus=1), work)\n"
              "except Infeasible:\n"
              "    pass\n"
              "print(sorted(m for m in sys.modules if m.split('.')[0] == 'pandas' or m == 'ortools.sat.python.cp_model'))\n")
    loaded = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                            env={**os.environ, "PLAN_DETECT": "off"}).stdout.strip()
    assert loaded == "[]"
