"""What a new user hit trying the CLI (issue 22), each as the repro that failed: the long-context optimum
the default space excluded, bad numbers that crashed or printed absurdities, and figures that were wrong
or inconsistent between commands."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from parallelplan import Plan, Workload, estimate, load_cluster, load_model, solve
from parallelplan.cli.main import plan as plan_cli


def run(*args: str):
    return CliRunner().invoke(plan_cli, list(args))


# -- the long-context optimum ---------------------------------------------------------------------------

def test_long_context_405b_finds_context_parallelism_across_nodes_by_default():
    """Llama 3.1 405B at 128K on 16,384 H100: Meta's layout is tp 8 · cp 16 (Llama 3, §3.3.2); the
    default space must reach it (it found tp 2 · pp 16 · cp 4 at 4% MFU when CP had to stay in a node)."""
    found = solve(load_model("llama-3.1-405b"), load_cluster("dgx-h100", nodes=2048),
                  Workload(seq_len=131072, global_batch_size=128))
    assert found.optimal and found.estimate.mfu >= 0.40
    assert found.plan.tp * found.plan.cp > 8  # the CP ring spans nodes


# -- bad numbers ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("args", [
    ("solve", "-m", "llama-3.1-8b", "-c", "dgx-h100", "--nodes", "200000"),
    ("solve", "-m", "llama-3.1-8b", "-c", "dgx-h100", "--nodes", "100000000"),
    ("topology", "-c", "dgx-h100", "--gpus", "80000000"),
])
def test_clusters_beyond_the_modelled_size_are_bad_input(args):
    result = run(*args)
    assert result.exit_code == 2, result.output
    assert "plan models clusters of up to 1,048,576 GPUs" in result.output


@pytest.mark.parametrize("price", ["inf", "1e15", "nan", "-3"])
def test_a_price_that_is_not_a_price_is_bad_input(price):
    solved = run("solve", "-m", "llama-3.1-8b", "-c", "dgx-h100", "--price", price, "-o", "cost")
    assessed = run("estimate", "-m", "llama-3.1-8b", "-c", "dgx-h100", "--tp", "1", "--sharding", "fsdp",
                   "--price", price, "--tokens", "1e12")
    for result in (solved, assessed):
        assert result.exit_code == 2, result.output
        assert "$inf" not in result.output
        assert "price per GPU-hour must be a number of USD above 0 and at most 1,000" in result.output or \
            "Invalid value for '--price'" in result.output


def test_the_largest_price_and_cluster_stay_exact_in_the_cost_table():
    """$1,000 per GPU-hour on a large cluster: the fixed-point cost (nano-USD, int64) must not overflow."""
    result = run("solve", "-m", "llama-3.1-8b", "-c", "dgx-h100", "--nodes", "512", "--price", "1000", "-o", "cost", "--json")
    assert result.exit_code == 0, result.output
    solution = json.loads(result.stdout)
    values = solution["objective"]
    assert values["usd_per_hour"] == pytest.approx(solution["gpus"] * 1000)
    usd_per_step = values["step_time_s"] * values["usd_per_hour"] / 3600
    tokens_per_step = solution["workload"]["seq_len"] * solution["workload"]["global_batch_size"]
    assert values["usd_per_million_tokens"] == pytest.approx(usd_per_step / tokens_per_step * 1e6, rel=1e-6)


@pytest.mark.parametrize("limit", ["nan", "1e-300"])
def test_a_time_limit_too_small_to_find_a_plan_is_said(limit):
    result = run("solve", "-m", "llama-3.2-1b", "-c", "dgx-h100", "--time-limit", limit)
    assert result.exit_code == 2, result.output
    assert "time_limit_s" in result.output and "internal error" not in result.output


# -- consistent numbers -----------------------------------------------------------------------------------

@pytest.mark.parametrize("precision, cluster", [("fp32", "dgx-h100"), ("fp8", "dgx-h100"), ("bf16", "dgx-a100")])
def test_mfu_is_against_the_bf16_dense_peak_for_every_precision(precision, cluster):
    model, hardware = load_model("llama-3.1-8b"), load_cluster(cluster)
    est = estimate(model, hardware, Plan(dp=8, sharding="zero1", precision=precision), Workload(seq_len=4096, global_batch_size=32))
    achieved = est.model_tflops_per_gpu * 1e12
    assert est.mfu == pytest.approx(achieved / hardware.gpu.peak_flops["bf16"])
    assert est.precision_peak_utilization == pytest.approx(achieved / hardware.gpu.peak_flops[precision])
    assert est.mfu < 0.8  # fp32 plans printed 91% against the fp32 (non-tensor-core) peak


def test_both_commands_say_which_bytes_per_parameter_they_assume():
    zero1 = run("estimate", "-m", "llama-3.1-8b", "-c", "dgx-h100", "--tp", "1", "--sharding", "zero1")
    fsdp = run("estimate", "-m", "llama-3.1-8b", "-c", "dgx-h100", "--tp", "1", "--sharding", "fsdp")
    table = run("sharding", "-m", "llama-3.1-8b", "-c", "dgx-h100", "--nodes", "2", "--global-batch", "64")
    assert "18 bytes per parameter (bf16 weights 2 + fp32 gradients 4 + fp32 master weights 4 + adamw states 8)" in zero1.output
    assert "16 bytes per parameter (fp32 parameters 4" in fsdp.output
    assert "18 bytes per parameter" in table.output and "16 bytes per parameter" in table.output
    est = estimate(load_model("llama-3.1-8b"), load_cluster("dgx-h100"), Plan(dp=8, sharding="fsdp"),
                   Workload(seq_len=4096, global_batch_size=32))
    assert est.state_bytes_per_param == 16


def test_re_estimating_a_solved_plan_without_a_global_batch_reproduces_it():
    solved = run("solve", "-m", "llama-3.1-8b", "-c", "dgx-h100", "--nodes", "2", "--json")
    solution = json.loads(solved.stdout)
    p = solution["plan"]
    flags = ["--tp", p["tp"], "--pp", p["pp"], "--dp", p["dp"], "--cp", p["cp"], "--micro-batch", p["micro_batch_size"],
             "--sharding", p["sharding"], "--recompute", p["recompute"]]
    again = run("estimate", "-m", "llama-3.1-8b", "-c", "dgx-h100", "--nodes", "2", *map(str, flags), "--json")
    assessed = json.loads(again.stdout)
    assert assessed["workload"]["global_batch_size"] == solution["workload"]["global_batch_size"] == 2**22 // 4096
    assert assessed["estimate"]["step_time_s"] == pytest.approx(solution["estimate"]["step_time_s"])
    assert "dp·micro-batch·4·pp" not in run("estimate", "--help").output


def test_default_global_batch_is_the_4m_token_batch_rounded_to_the_plan():
    from parallelplan.cli.options import default_global_batch

    assert default_global_batch("pretrain", 8192) == 512
    assert default_global_batch("pretrain", 8192, Plan(dp=24, micro_batch_size=2)) == 528  # 11 × 48 ≥ 512
    assert default_global_batch("inference", 8192, Plan(dp=2, micro_batch_size=16)) == 32


def test_the_memory_fix_ignores_rules_the_plan_already_breaks():
    """`--tp 1 --ep 4` on a dense model breaks ep_without_experts too; zero1 alone still fits."""
    result = run("estimate", "-m", "llama-3.1-8b", "-c", "dgx-h100", "--tp", "1", "--ep", "4")
    memory = next(line for line in result.output.splitlines() if "memory_fits" in line)
    assert "sharding zero1" in memory and "no single change fits" not in memory


def test_plans_whose_memory_range_reaches_past_the_gpu_are_flagged_at_risk():
    solved = run("solve", "--model", "llama-3.1-70b", "--cluster", "dgx-h100", "--nodes", "8")
    found = solve(load_model("llama-3.1-70b"), load_cluster("dgx-h100", nodes=8),
                  Workload(seq_len=4096, global_batch_size=1024))
    memory = found.estimate.memory
    assert memory.low <= memory.total - memory.overhead / 2 < memory.total < memory.high  # the allowance's range alone
    assert memory.tight == (memory.total <= memory.usable < memory.high) and found.estimate.fit == memory.verdict
    assert ("AT RISK" in solved.output) == (memory.verdict == "at risk")
    roomy = run("estimate", "-m", "llama-3.1-8b", "-c", "dgx-h100", "--tp", "1", "--sharding", "fsdp", "--global-batch", "8")
    assert "fits: yes" in roomy.output and "AT RISK" not in roomy.output
