"""The software stack is an input (`Workload.stack`, constraints/data/stacks.json): its attention kernel and
overlap mechanisms price the step, a launch target implies its stack, calibration fits a stack's own
factors, and factors fitted on one stack's published runs carry over to the others' through the shared
physics."""

from __future__ import annotations

import json
import typing

import numpy as np
import pytest
from click.testing import CliRunner

from parallelplan import Plan, Workload, estimate, evaluate, load_cluster, load_model
from parallelplan.cli.main import plan as plan_cli
from parallelplan.constraints import Efficiency
from parallelplan.constraints.calibration import MeasuredRun, calibrate, read_runs
from parallelplan.constraints.efficiency import stack_of_target, stacks
from parallelplan.constraints.plan import STACKS
from parallelplan.emitters import list_targets

SERVING = ("vllm", "sglang")


def test_the_stacks_file_covers_every_stack_architecture_and_overlap():
    assert tuple(stacks()) == STACKS
    assert typing.get_args(Workload.model_fields["stack"].annotation) == STACKS
    option = next(p for p in plan_cli.commands["estimate"].params if p.name == "stack")
    assert tuple(option.type.choices) == STACKS
    architectures = set(Efficiency.default().gemm)
    dispatchers = typing.get_args(Workload.model_fields["moe_dispatcher"].annotation)
    option = next(p for p in plan_cli.commands["estimate"].params if p.name == "moe_dispatcher")
    assert tuple(option.type.choices) == dispatchers
    for name, stack in stacks().items():
        assert set(stack["attention"]) == architectures, name
        assert set(stack["overlap"]) == {"tp", "dp", "cp", "ep"}, name
        assert stack["source"] and stack["attention_kernel"]
        assert set(stack["mechanisms"]) == {"tp", "dp", "cp", "ep", "moe_dispatch", "moe_token_dropping",
                                            "activation_offload"}, name
        assert "alltoall" in stack["moe_dispatchers"] and set(stack["moe_dispatchers"]) <= set(dispatchers), name
        assert isinstance(stack["moe_token_dropping"], bool), name
        assert isinstance(stack["activation_offload"], bool), name
        assert set(stack["activation_offload_excludes"]) <= {"pipeline", "recompute"}, name
    listed = CliRunner().invoke(plan_cli, ["presets", "--kind", "stacks"]).output
    assert all(name in listed for name in STACKS) and "FlashAttention-2 (SDPA)" in listed


def test_every_training_target_runs_exactly_one_stack():
    named = [target for stack in stacks().values() for target in stack["targets"]]
    assert len(named) == len(set(named)) and set(named) <= set(list_targets())
    for target in list_targets():
        assert (stack_of_target(target) is None) == (target in SERVING), target


def _step(stack: str, cluster: str = "dgx-h100", seq_len: int = 16384, **plan) -> float:
    model, hardware = load_model("llama-3.1-8b"), load_cluster(cluster)
    e = estimate(model, hardware, Plan(**{"dp": 8, "sharding": "zero1", **plan}),
                 Workload(seq_len=seq_len, global_batch_size=64, stack=stack))
    return e.step_time_s


def test_flash_attention_2_prices_long_sequences_slower_on_hopper_not_on_ampere():
    """torchtitan calls FlashAttention-2 through SDPA, Megatron Transformer Engine's cuDNN attention: on Hopper
    the attention core is slower under torchtitan; on Ampere both run FlashAttention-2, and a data-parallel
    plan (no TP, CP or EP to overlap) prices the same."""
    assert _step("torchtitan") > 1.05 * _step("megatron")
    assert _step("torchtitan", cluster="dgx-a100", seq_len=4096) == pytest.approx(_step("megatron", cluster="dgx-a100", seq_len=4096))


def test_a_stack_without_an_overlap_mechanism_exposes_that_communication():
    """DeepSpeed has no TP overlap; torchtitan's context parallelism all-gathers K and V before attention."""
    megatron = estimate(load_model("llama-3.1-8b"), load_cluster("dgx-a100"), Plan(tp=8, sequence_parallel=True),
                        Workload(seq_len=4096, global_batch_size=8))
    deepspeed = estimate(load_model("llama-3.1-8b"), load_cluster("dgx-a100"), Plan(tp=8, sequence_parallel=True),
                         Workload(seq_len=4096, global_batch_size=8, stack="deepspeed"))
    assert deepspeed.time.tp_comm > megatron.time.tp_comm and deepspeed.time.tp_comm > 0
    ring = {stack: estimate(load_model("llama-3.1-8b"), load_cluster("dgx-h100", nodes=2), Plan(cp=16),
                            Workload(seq_len=131072, global_batch_size=16, stack=stack)).time.cp_comm
            for stack in ("megatron", "torchtitan")}
    assert ring["torchtitan"] > ring["megatron"]


def run(*args: str):
    return CliRunner().invoke(plan_cli, list(args))


def test_launch_prices_the_targets_stack(tmp_path):
    result = run("launch", "-m", "llama-3.1-8b", "-c", "dgx-h100", "--target", "torchtitan", "--out", str(tmp_path / "tt"), "--json")
    assert result.exit_code == 0, result.output
    solution = json.loads(result.stdout)["solution"]
    assert solution["workload"]["stack"] == "torchtitan"
    assert solution["plan"]["tp_comm_overlap"] is False  # the torchtitan target does not emit async TP
    again = estimate(load_model("llama-3.1-8b"), load_cluster("dgx-h100"), Plan(**solution["plan"]),
                     Workload(**solution["workload"]))
    assert again.step_time_s == pytest.approx(solution["estimate"]["step_time_s"], rel=1e-9)


def test_a_stack_that_contradicts_the_target_is_bad_input(tmp_path):
    result = run("launch", "-m", "llama-3.1-8b", "-c", "dgx-h100", "--target", "torchtitan", "--stack", "megatron",
                 "--out", str(tmp_path / "x"))
    assert result.exit_code == 2 and "--stack megatron: the torchtitan target runs torchtitan" in result.output
    assert not (tmp_path / "x").exists()
    result = run("estimate", "-m", "llama-3.1-8b", "--gpus", "8", "--stack", "jax")
    assert result.exit_code == 2 and "--stack" in result.output and "torchtitan" in result.output


def test_estimate_says_the_stack_and_a_deepspeed_config_implies_deepspeed(tmp_path):
    result = run("estimate", "-m", "llama-3.1-8b", "-c", "dgx-h100", "--dp", "8", "--sharding", "zero1", "--stack", "custom")
    assert result.exit_code == 0 and ", on custom" in result.output
    config = tmp_path / "ds.json"
    config.write_text(json.dumps({"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1,
                                  "zero_optimization": {"stage": 1}, "bf16": {"enabled": True}}))
    result = run("validate", "-m", "llama-3.1-8b", "-c", "dgx-h100", "--deepspeed", str(config), "--json")
    assert json.loads(result.stdout)["workload"]["stack"] == "deepspeed"


def test_calibration_reads_the_stack_column_and_fits_that_stacks_attention(tmp_path):
    truth = Efficiency.default().with_overrides({"attention": {"torchtitan": {"hopper": 0.3}}})
    model, cluster = load_model("llama-3.1-8b"), load_cluster("dgx-h100")
    rows = []
    for seq, micro, sharding in [(s, m, z) for s in (4096, 8192, 16384) for m in (1, 2) for z in ("fsdp", "zero1")]:
        plan = Plan(dp=8, micro_batch_size=micro, sharding=sharding, recompute="full")
        workload = Workload(seq_len=seq, global_batch_size=64, stack="torchtitan")
        step = estimate(model, cluster, plan, workload, efficiency=truth).step_time_s
        rows.append({"model": "llama-3.1-8b", "cluster": "dgx-h100", "stack": "torchtitan", "seq_len": seq,
                     "global_batch_size": 64, "dp": 8, "micro_batch_size": micro, "sharding": sharding,
                     "recompute": "full", "step_time_s": step})
    path = tmp_path / "runs.json"
    path.write_text(json.dumps(rows))
    runs = read_runs(path)
    assert {r.workload.stack for r in runs} == {"torchtitan"}
    fitted = {f.name: f for f in calibrate(runs, cross_validate=False).factors}
    assert "attention.megatron.hopper" not in fitted  # only the stacks the runs ran on
    assert fitted["attention.torchtitan.hopper"].fitted
    assert fitted["attention.torchtitan.hopper"].after == pytest.approx(0.3, abs=0.02)
    rows[0]["stack"] = "jax"
    path.write_text(json.dumps(rows))
    with pytest.raises(Exception, match="row 1.*stack"):
        read_runs(path)


def test_factors_fitted_on_one_stacks_published_runs_carry_over_to_the_others():
    """From uncalibrated shared factors (the middle of their bounds), a fit on the torchtitan rows alone
    brings the Megatron rows closer too: GEMM, memory-bound and network factors are the hardware's and
    the libraries', not the stack's."""
    from benchmarks.published_runs import _published, runs, setup
    from parallelplan.constraints.rules import structural_violations

    uncalibrated = Efficiency.default().with_overrides({"gemm": {"hopper": {"bf16": 0.45, "fp8": 0.45}},
                                                        "memory_bound": 0.45})
    by_stack: dict[str, list[MeasuredRun]] = {"torchtitan": [], "megatron": []}
    for run in runs():
        inputs = setup(run)
        if (_published(run) is None or isinstance(inputs, str) or run["stack"] not in by_stack
                or inputs.cluster.gpu.architecture != "hopper"
                or structural_violations(inputs.model, inputs.cluster, inputs.plan, inputs.workload, allow_cross_domain=True)):
            continue
        step = run["global_batch_size"] * run["seq_length"] / (_published(run) * run["num_gpus"])
        by_stack[run["stack"]].append(MeasuredRun(row=run["id"], model=inputs.model, cluster=inputs.cluster,
                                                  plan=inputs.plan, workload=inputs.workload, step_time_s=step))
    assert len(by_stack["torchtitan"]) >= 9 and len(by_stack["megatron"]) >= 20
    fit = calibrate(by_stack["torchtitan"], efficiency=uncalibrated, cross_validate=False)
    fitted = uncalibrated.with_overrides(fit.efficiency_overrides())
    assert any(f.fitted and f.name.startswith(("gemm.", "memory_bound")) for f in fit.factors)

    def median_error(efficiency: Efficiency) -> float:
        return float(np.median([abs(evaluate(r.model, r.cluster, r.workload, [r.plan], efficiency=efficiency).time.step[0]
                                    / r.step_time_s - 1) for r in by_stack["megatron"]]))

    assert median_error(fitted) < 0.8 * median_error(uncalibrated)


def test_megatron_2022_scatters_pipeline_sends_and_does_not_overlap_the_gradient_reduction():
    """Narayanan et al. 2021 §4.1: each TP rank sends 1/tp of the boundary activations over its own link
    and the receiving stage all-gathers them over NVLink; Megatron's DDP of the time all-reduced the
    gradients after the backward pass."""
    model, cluster = load_model("llama-3.1-70b"), load_cluster("dgx-a100", nodes=8)
    plan = Plan(tp=8, pp=4, dp=2, micro_batch_size=1, attention_kernel="eager", recompute="full")
    time = {stack: estimate(model, cluster, plan, Workload(seq_len=2048, global_batch_size=64, stack=stack)).time
            for stack in ("megatron", "megatron-2022")}
    assert time["megatron-2022"].pp_comm < time["megatron"].pp_comm
    assert time["megatron-2022"].dp_comm > time["megatron"].dp_comm


def test_a_dispatcher_the_stack_does_not_offer_is_bad_input(tmp_path):
    with pytest.raises(ValueError, match="moe_dispatcher 'deepep': the deepspeed stack offers alltoall"):
        Workload(seq_len=4096, global_batch_size=64, stack="deepspeed", moe_dispatcher="deepep")
    result = run("estimate", "-m", "mixtral-8x7b", "-c", "dgx-h100", "--ep", "8", "--stack", "maxtext",
                 "--moe-dispatcher", "deepep")
    assert result.exit_code == 2 and "the maxtext stack offers alltoall" in result.output
    result = run("estimate", "-m", "qwen3-30b-a3b", "-c", "dgx-h100", "--nodes", "2", "--ep", "16", "--sharding", "zero1",
                 "--recompute", "full", "--moe-dispatcher", "deepep")
    assert result.exit_code == 0 and "on megatron (DeepEP dispatch, balanced routing)" in result.output
    # torchtitan has DeepEP, but 0.3.0 selects it in the model's config, which the target does not write
    result = run("launch", "-m", "mixtral-8x7b", "-c", "dgx-h100", "--nodes", "2", "--ep", "8", "--target", "torchtitan",
                 "--moe-dispatcher", "deepep", "--out", str(tmp_path / "tt"))
    assert result.exit_code == 2 and "--moe-dispatcher alltoall" in result.output
    rows = [{"model": "qwen3-30b-a3b", "cluster": "dgx-h100", "nodes": 2, "seq_len": 4096, "global_batch_size": 64,
             "ep": 16, "moe_dispatcher": "deepep", "step_time_s": 10.0}]
    path = tmp_path / "runs.json"
    path.write_text(json.dumps(rows))
    assert read_runs(path)[0].workload.moe_dispatcher == "deepep"


def test_an_imbalance_below_balanced_is_bad_input():
    result = run("estimate", "-m", "qwen3-30b-a3b", "-c", "dgx-h100", "--ep", "8", "--moe-imbalance", "0.5")
    assert result.exit_code == 2 and "--moe-imbalance" in result.output
    result = run("estimate", "-m", "qwen3-30b-a3b", "-c", "dgx-h100", "--ep", "8", "--sharding", "zero1", "--recompute", "full",
                 "--moe-imbalance", "1.25")
    assert result.exit_code == 0 and "busiest expert rank 1.25x the mean" in result.output
