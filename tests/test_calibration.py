"""`plan calibrate`: the fit recovers factors that generated synthetic runs, the memory terms from
measured peaks, the profile prices every command, and bad input is one line naming the row and column
with nothing written."""

from __future__ import annotations

import csv
import itertools
import json

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from parallelplan import Plan, Workload, evaluate, load_cluster, load_model
from parallelplan.cli.main import plan as plan_cli
from parallelplan.constraints import Efficiency
from parallelplan.constraints.calibration import MeasuredRun, calibrate
from parallelplan.constraints.runtime import RuntimeAllowance

MODEL = "llama-3.1-8b"
COLUMNS = ["model", "cluster", "nodes", "seq_len", "global_batch_size", "tp", "dp", "micro_batch_size",
           "sequence_parallel", "sharding", "recompute", "step_time_s", "peak_memory_gib"]


def synthetic_runs(truth: Efficiency, runtime: RuntimeAllowance, noise: float, seed: int = 0) -> list[MeasuredRun]:
    """Runs whose times and peaks the cost model computes with ``truth`` and ``runtime``, times scattered
    by log-normal noise of ``noise``."""
    rng = np.random.default_rng(seed)
    model = load_model(MODEL)
    runs = []
    for nodes, tp, micro, seq in itertools.product([1, 2], [1, 2, 8], [1, 2], [2048, 8192]):
        cluster = load_cluster("dgx-h100", nodes=nodes)
        workload = Workload(seq_len=seq, global_batch_size=32 * nodes)
        plan = Plan(tp=tp, dp=8 * nodes // tp, micro_batch_size=micro, sequence_parallel=tp > 1, sharding="zero1",
                    recompute="full")
        e = evaluate(model, cluster, workload, [plan], efficiency=truth, runtime=runtime)
        runs.append(MeasuredRun(row=len(runs) + 2, model=MODEL, cluster="dgx-h100", nodes=nodes, plan=plan, workload=workload,
                                step_time_s=float(e.time.step[0]) * float(np.exp(rng.normal(0, noise))),
                                peak_memory_bytes=float(e.memory.total[0])))
    return runs


@settings(max_examples=4, deadline=None)
@given(gemm=st.floats(0.5, 0.85), overlap=st.floats(0.1, 0.9), seed=st.integers(0, 1000))
def test_the_fit_recovers_the_factors_that_made_the_runs(gemm, overlap, seed):
    truth = Efficiency.default().with_overrides({"gemm": {"hopper": {"bf16": gemm}}, "overlap": {"megatron": {"tp": overlap}}})
    runs = synthetic_runs(truth, RuntimeAllowance.default(), noise=0.01, seed=seed)
    result = calibrate(runs)
    fitted = {f.name: f for f in result.factors}
    assert fitted["gemm.hopper.bf16"].fitted and fitted["gemm.hopper.bf16"].after == pytest.approx(gemm, abs=0.04)
    assert result.step_after.median <= 0.02  # the noise is 1%
    assert result.step_cross_validated is not None and result.step_cross_validated.median <= 0.03
    assert not fitted["moe_host_sync_s"].fitted and "cannot tell" in fitted["moe_host_sync_s"].why  # a dense model


def test_memory_terms_are_fitted_from_measured_peaks():
    runtime = RuntimeAllowance.default()
    truth = RuntimeAllowance(**{**runtime.__dict__, "cuda_context_bytes": 900 * 2**20, "fragmentation": 0.12})
    result = calibrate(synthetic_runs(Efficiency.default(), truth, noise=0.0))
    fitted = {f.name: f for f in result.factors}
    assert fitted["runtime.cuda_context_bytes"].after == pytest.approx(900 * 2**20, rel=1e-3)
    assert fitted["runtime.fragmentation"].after == pytest.approx(0.12, abs=1e-3)
    assert result.memory_after.max < 1e-3 < result.memory_before.median


def test_fewer_factors_than_runs_support_are_fitted_and_the_rest_said():
    result = calibrate(synthetic_runs(Efficiency.default(), RuntimeAllowance.default(), noise=0.01)[:4])
    fitted = [f for f in result.factors if f.fitted and not f.name.startswith("runtime.")]
    assert len(fitted) == 1  # 4 runs support one factor
    assert any("4 runs support 1 factor" in f.why for f in result.factors)


def _write(path, runs: list[dict]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=sorted({k for r in runs for k in r}))
        writer.writeheader()
        writer.writerows(runs)


def _rows(runs: list[MeasuredRun]) -> list[dict]:
    return [{"model": r.model, "cluster": r.cluster, "nodes": r.nodes, "seq_len": r.workload.seq_len,
             "global_batch_size": r.workload.global_batch_size, "tp": r.plan.tp, "dp": r.plan.dp,
             "micro_batch_size": r.plan.micro_batch_size, "sequence_parallel": str(r.plan.sequence_parallel).lower(),
             "sharding": r.plan.sharding, "recompute": r.plan.recompute, "step_time_s": r.step_time_s,
             "peak_memory_gib": r.peak_memory_bytes / 2**30} for r in runs]


def test_the_profile_prices_every_command(tmp_path, monkeypatch):
    truth = Efficiency.default().with_overrides({"gemm": {"hopper": {"bf16": 0.75}}})
    runs = synthetic_runs(truth, RuntimeAllowance.default(), noise=0.0)
    runs_file, profile = tmp_path / "runs.csv", tmp_path / "profile.json"
    _write(runs_file, _rows(runs))
    result = CliRunner().invoke(plan_cli, ["calibrate", str(runs_file), "--out", str(profile)])
    assert result.exit_code == 0, result.output
    assert "gemm.hopper.bf16" in result.output and "profile written to" in result.output
    written = json.loads(profile.read_text())
    assert written["efficiency"]["gemm"]["hopper"]["bf16"] == pytest.approx(0.75, abs=0.01)
    args = ["estimate", "-m", MODEL, "-c", "dgx-h100", "--tp", "2", "--sequence-parallel", "--sharding", "zero1",
            "--recompute", "full", "--seq-len", "2048", "--global-batch", "32", "--json"]
    default = json.loads(CliRunner().invoke(plan_cli, args).stdout)["estimate"]["step_time_s"]
    calibrated = json.loads(CliRunner().invoke(plan_cli, [*args, "--calibration", str(profile)]).stdout)["estimate"]["step_time_s"]
    measured = next(r.step_time_s for r in runs if r.nodes == 1 and r.plan.tp == 2 and r.plan.micro_batch_size == 1
                    and r.workload.seq_len == 2048)
    assert calibrated == pytest.approx(measured, rel=0.01) and abs(default - measured) > 0.05 * measured
    monkeypatch.setenv("PLAN_CALIBRATION", str(profile))
    assert json.loads(CliRunner().invoke(plan_cli, args).stdout)["estimate"]["step_time_s"] == pytest.approx(calibrated)


def test_topology_prices_collectives_with_the_profiles_bus_efficiency(tmp_path):
    profile, override = tmp_path / "profile.json", tmp_path / "eff.json"
    profile.write_text(json.dumps({"efficiency": {"network_bus": {"intra_node": 0.4}}, "runtime": {}}))
    override.write_text(json.dumps({"network_bus": {"intra_node": 0.8}}))
    args = ["topology", "-c", "dgx-a100", "--json"]  # NCCL's ring: no NVLink SHARP on second-generation NVSwitch

    def all_reduce_8(*extra: str) -> float:
        report = json.loads(CliRunner().invoke(plan_cli, [*args, *extra]).stdout)
        return next(row for row in report["groups"] if row["size"] == 8)["all_reduce_s"]

    default, calibrated = all_reduce_8(), all_reduce_8("--calibration", str(profile))
    assert calibrated > 1.8 * default  # half the NVLink bus efficiency: about twice the all-reduce
    assert all_reduce_8("--calibration", str(profile), "--efficiency", str(override)) == pytest.approx(default)


GOOD = {"model": MODEL, "cluster": "dgx-h100", "nodes": 1, "seq_len": 4096, "global_batch_size": 32, "tp": 1,
        "step_time_s": 2.5}


@pytest.mark.parametrize("change, words", [
    ({"step_time_s": "-2"}, ["row 3", "'step_time_s'", "positive number"]),
    ({"step_time_s": None}, ["row 3", "step_time_s", "missing"]),
    ({"model": "no-such-model"}, ["row 3", "'model'", "no-such-model"]),
    ({"tp": 3}, ["row 3", "tp·pp·cp = 3", "8 GPUs"]),
    ({"ep": 2}, ["row 3", "rule ep_without_experts"]),
    ({"flavour": "x"}, ["row 3", "'flavour'", "not a run column"]),
    ({"tp": "eight"}, ["row 3", "tp"]),
])
def test_bad_runs_name_the_row_and_column_and_write_nothing(tmp_path, change, words):
    bad = {**GOOD, **change}
    runs_file, profile = tmp_path / "runs.csv", tmp_path / "profile.json"
    _write(runs_file, [GOOD, {k: ("" if v is None else v) for k, v in bad.items()}])
    result = CliRunner().invoke(plan_cli, ["calibrate", str(runs_file), "--out", str(profile)])
    assert result.exit_code == 2, result.output
    line = result.stderr.strip()
    assert "\n" not in line and all(w in line for w in words), line
    assert not profile.exists()


def test_a_malformed_file_is_one_line(tmp_path):
    broken = tmp_path / "runs.json"
    broken.write_text("[{\"model\": ")
    result = CliRunner().invoke(plan_cli, ["calibrate", str(broken)])
    assert result.exit_code == 2 and "not valid JSON" in result.stderr


@pytest.mark.parametrize("profile, words", [
    ({"runtime": {"fragmentation": -5}}, ["'fragmentation'", "[0.0, 0.5]", "-5"]),
    ({"runtime": {"cuda_context_bytes": "lots"}}, ["'cuda_context_bytes'", "'lots'"]),
    ({"runtime": {"foo": 1}}, ["unknown runtime term 'foo'", "cuda_context_bytes, fragmentation"]),
    ({"efficiency": {"gemm": 3}}, ["'gemm'", "table"]),
])
def test_a_bad_calibration_profile_is_bad_input(tmp_path, profile, words):
    path = tmp_path / "profile.json"
    path.write_text(json.dumps(profile))
    result = CliRunner().invoke(plan_cli, ["estimate", "-m", MODEL, "-c", "dgx-h100", "--calibration", str(path)])
    assert result.exit_code == 2 and all(w in result.stderr for w in words), result.stderr
