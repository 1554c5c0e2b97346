"""`plan estimate`: the breakdown of a plan the user runs, the API's numbers in the JSON, the rules it
breaks (exit 1), and bad input as one line (exit 2)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from parallelplan.cli.main import plan
from parallelplan.constraints import Plan, Workload, check, estimate
from parallelplan.hardware import load_cluster
from parallelplan.models import load_model


def run(*args: str):
    return CliRunner().invoke(plan, list(args))


def test_json_is_the_api_serialisation():
    result = run("estimate", "--model", "llama-3.1-70b", "--cluster", "dgx-h100", "--nodes", "8", "--tp", "8", "--pp", "2",
                 "--sequence-parallel", "--sharding", "zero1", "--recompute", "selective", "--seq-len", "8192",
                 "--global-batch", "512", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    expected_plan = Plan(tp=8, pp=2, dp=4, sequence_parallel=True, sharding="zero1", recompute="selective")
    work = Workload(seq_len=8192, global_batch_size=512)
    expected = estimate(load_model("llama-3.1-70b"), load_cluster("dgx-h100", nodes=8), expected_plan, work)
    assert data["plan"] == expected_plan.model_dump(mode="json")
    assert data["workload"] == work.model_dump(mode="json")
    assert data["estimate"] == expected.model_dump(mode="json")
    assert data["violations"] == []


def test_table_shows_both_breakdowns_and_the_notes():
    result = run("estimate", "-m", "mixtral-8x7b", "-c", "dgx-h100", "--nodes", "2", "--tp", "2", "--ep", "8", "--etp", "1",
                 "--sequence-parallel", "--sharding", "zero1", "--recompute", "full")
    assert result.exit_code == 0, result.output
    out = result.output
    for words in ("memory per GPU", "optimizer + master weights", "activations", "fits: yes", "time per step",
                  "Expert all-to-all", "MFU", "notes:", "dp 8"):
        assert words in out, words


def test_a_plan_that_breaks_rules_is_priced_and_exits_1():
    result = run("estimate", "-m", "llama-3.1-70b", "-c", "dgx-h100", "--nodes", "2", "--tp", "8", "--pp", "2",
                 "--sequence-parallel")
    assert result.exit_code == 1
    assert "fits: NO" in result.output and "rules broken:" in result.output and "memory_fits" in result.output
    model, cluster = load_model("llama-3.1-70b"), load_cluster("dgx-h100", nodes=2)
    violations = check(model, cluster, Plan(tp=8, pp=2, sequence_parallel=True), Workload(seq_len=4096, global_batch_size=8))
    assert violations[0].fix in result.output


def test_plan_file_with_flags_overriding(tmp_path):
    path = tmp_path / "plan.yaml"
    path.write_text("tp: 8\npp: 2\nsequence_parallel: true\nsharding: zero1\nrecompute: full\n")
    result = run("estimate", "-m", "llama-3.1-70b", "-c", "dgx-h100", "--nodes", "4", "--plan", str(path), "--pp", "4", "--json")
    assert result.exit_code == 0, result.output
    chosen = json.loads(result.output)["plan"]
    assert (chosen["tp"], chosen["pp"], chosen["dp"], chosen["recompute"]) == (8, 4, 1, "full")


def test_efficiency_overrides_change_the_time(tmp_path):
    path = tmp_path / "eff.json"
    path.write_text(json.dumps({"gemm": {"hopper": {"bf16": 0.8}}}))
    base = ["estimate", "-m", "llama-3.1-8b", "-c", "dgx-h100", "--json"]
    slow = json.loads(run(*base).output)["estimate"]["step_time_s"]
    fast = json.loads(run(*base, "--efficiency", str(path)).output)["estimate"]["step_time_s"]
    assert fast < slow


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--tp", "3"], "tp·pp·cp = 3 does not divide the cluster's 8 GPUs"),
        (["--recompute-layers", "2"], "recompute_layers applies to recompute 'full' only"),
        (["--layers-per-stage", "3,x"], "comma-separated integers"),
        (["--sharding", "hsdp"], "needs hsdp_shard_size"),
        (["--sharding", "zoro1"], "--sharding"),
        (["--nodes", "0"], "--nodes"),
    ],
)
def test_bad_input_exits_2_naming_the_problem(args, message):
    cluster = [] if "-c" in args else ["-c", "dgx-h100"]
    result = run("estimate", "-m", "llama-3.1-8b", *cluster, *args)
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit)
    assert message in result.stderr


@pytest.mark.parametrize(("args", "rule", "message"), [
    (["--precision", "fp8", "-c", "dgx-a100"], "precision_supported", "no fp8 tensor cores"),
    (["--pp", "2", "--layers-per-stage", "10,10"], "layers_per_stage_sum", "layers_per_stage sums to 20"),
])
def test_a_plan_the_hardware_cannot_run_fails_unpriced(args, rule, message):
    cluster = [] if "-c" in args else ["-c", "dgx-h100"]
    result = run("estimate", "-m", "llama-3.1-8b", *cluster, *args)
    assert result.exit_code == 1, result.output
    assert "not priced" in result.output and message in result.output
    data = json.loads(run("estimate", "-m", "llama-3.1-8b", *cluster, *args, "--json").output)
    assert data["estimate"] is None and [v["rule"] for v in data["violations"]] == [rule]


@pytest.mark.parametrize(("content", "message"), [
    ('{"gemm": 3}', "'gemm' is a table"),
    ('{"overlap": {"megatron": {"tp": 1.5}}}', "must be in [0, 1]"),
    ('{"overlap": {"tp": 0.5}}', "known: megatron, megatron-2022, torchtitan"),
    ('{"gemm": {"hoper": {"bf16": 0.7}}}', "unknown efficiency factor gemm.hoper"),
    ("[1]", "expected a mapping"),
])
def test_bad_efficiency_file_exits_2(tmp_path, content, message):
    path = tmp_path / "eff.json"
    path.write_text(content)
    result = run("estimate", "-m", "llama-3.1-8b", "-c", "dgx-h100", "--efficiency", str(path))
    assert result.exit_code == 2 and message in result.stderr
