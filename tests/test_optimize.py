"""`plan optimize` / `optimize()`: the ladder from a user's plan (`solver.ladder`).

The ladder never ends above the solver's proved optimum under the same cost model and techniques (a
hypothesis test on generated small instances), its final plan passes `check()`, every rung is priced by
the scalar cost model as `plan estimate` prices it, the moves it lists as blocked do break the rule named,
and bad input is one line, exit 2."""

from __future__ import annotations

import json
import math
import time

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from parallelplan import Ladder, Plan, Workload, check, estimate, load_cluster, load_model, optimize
from parallelplan.cli.main import plan as plan_command
from parallelplan.solver import SolverInputError
from parallelplan.solver.ladder import MIN_GAIN
from parallelplan.solver.objectives import fixed_point, nanoseconds
from parallelplan.solver.space import SearchSpace, enumerate_plans
from parallelplan.solver.techniques import catalog, chosen_techniques
from tests.test_solver import small_cluster

NAIVE_70B = Plan(tp=8, pp=1, dp=8, sequence_parallel=False, sharding="none", recompute="full", precision="bf16")
"""Issue 19's naive plan: tp 8, pp 1, dp 8, no sequence parallelism, ZeRO 0, full recompute, bf16."""


def run(*args: str):
    return CliRunner().invoke(plan_command, list(args))


def _cluster_of(cluster, gpus: int):
    return cluster if gpus == cluster.total_gpus else load_cluster(cluster, nodes=gpus // cluster.node.gpus_per_node)


def _in_solver_units(goal: str, point) -> int:
    """The goal's metric in the fixed point the solver decides on (`solver.objectives.criteria`)."""
    if goal == "throughput":
        return nanoseconds(point.step_time_s)
    if goal == "memory":
        return math.ceil(point.memory_bytes)
    return int(fixed_point(np.array([point.usd_per_million_tokens]), 1e9)[0])


def _assert_consistent(model, cluster, workload, ladder: Ladder) -> None:
    """Every rung priced by `estimate` and checked by `check` as the CLI's other commands do; rungs
    taken once the plan runs gain at least `MIN_GAIN`; a valid final plan never above the optimum."""
    before = ladder.start
    for rung in ladder.rungs:
        point = rung.reached
        sized = _cluster_of(cluster, point.gpus)
        assert list(point.violations) == check(model, sized, point.plan, workload)
        if not point.violations:
            est = estimate(model, sized, point.plan, workload)
            assert point.step_time_s == est.step_time_s and point.memory_bytes == est.memory.total
        if not before.violations:
            assert rung.gain >= MIN_GAIN
            assert not point.violations
        before = point
    final = ladder.final
    assert final == (ladder.rungs[-1].reached if ladder.rungs else ladder.start)
    if not final.violations:
        assert check(model, _cluster_of(cluster, final.gpus), final.plan, workload) == []
        assert ladder.optimum is not None, "the ladder found a plan where the solver found none"
        assert _in_solver_units(ladder.goal, final) >= _in_solver_units(ladder.goal, ladder.optimum)
        assert ladder.gap is not None and ladder.gap >= -1e-9
    for blocked in ladder.blocked:
        assert blocked.rule in {v.rule for v in check(model, _cluster_of(cluster, final.gpus), blocked.plan, workload)}


# -- the ladder against the solver's optimum (hypothesis) --------------------------------------------

@st.composite
def ladders(draw):
    heads = draw(st.sampled_from([4, 8]))
    spec = {"name": "generated", "hidden_size": draw(st.sampled_from([256, 512])), "num_layers": draw(st.sampled_from([2, 4])),
            "num_attention_heads": heads, "num_kv_heads": draw(st.sampled_from([h for h in (1, 2, 4) if heads % h == 0])),
            "vocab_size": draw(st.sampled_from([1000, 8000]))}
    if draw(st.booleans()):
        spec["moe"] = {"num_experts": 4, "experts_per_token": 1, "expert_ffn_hidden_size": 256}
    else:
        spec["ffn_hidden_size"] = draw(st.sampled_from([512, 1024]))
    model = load_model(spec)
    cluster = small_cluster(draw(st.sampled_from([1, 2])), draw(st.sampled_from([2, 4])),
                             draw(st.sampled_from(["1 GiB", "2 GiB", "16 GiB"])))
    workload = Workload(kind=draw(st.sampled_from(["pretrain", "finetune"])), seq_len=draw(st.sampled_from([512, 2048])),
                        global_batch_size=draw(st.sampled_from([4, 8])), stack=draw(st.sampled_from(["megatron", "custom"])))
    # the start: a plan of the solver's own space (structurally valid; it may not fit), or a naive one
    plans = enumerate_plans(SearchSpace(model, cluster, workload, ranges={"recompute": ["none", "full"]}))
    start = plans.plan(draw(st.integers(0, len(plans) - 1))) if len(plans) else Plan(dp=cluster.total_gpus)
    goal = draw(st.sampled_from(["throughput", "memory", "cost"]))
    effort = draw(st.sampled_from(["low", "medium", "high"]))
    return model, cluster, workload, start, goal, effort


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ladders())
def test_the_ladder_never_ends_above_the_proved_optimum_and_its_plans_pass_check(case):
    model, cluster, workload, start, goal, effort = case
    ladder = optimize(model, cluster, workload, start, goal=goal, max_effort=effort, price_per_gpu_hour=2.0)
    _assert_consistent(model, cluster, workload, ladder)
    if not start.model_dump() == ladder.start.plan.model_dump():
        raise AssertionError("the ladder must start from the user's plan")
    allowed = {t.name for t in chosen_techniques(cluster, workload.stack, goal, effort)[1]}
    assert {r.technique for r in ladder.rungs} <= allowed


# -- the examples -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def llama_70b():
    return load_model("llama-3.1-70b")


def test_the_naive_70b_plan_on_eight_dgx_h100_climbs_to_a_priced_ladder(llama_70b):
    cluster = load_cluster("dgx-h100", nodes=8)
    workload = Workload(kind="pretrain", seq_len=4096, global_batch_size=1024)
    started = time.perf_counter()
    ladder = optimize(llama_70b, cluster, workload, NAIVE_70B)
    elapsed = time.perf_counter() - started
    _assert_consistent(llama_70b, cluster, workload, ladder)
    assert ladder.start.violations and ladder.start.violations[0].rule == "memory_fits"  # 155 GiB: it does not fit
    assert ladder.rungs[0].gain == 0 and not ladder.rungs[0].reached.violations  # one flag repairs it
    assert ladder.rungs[0].effort == "flag"
    assert ladder.final.step_time_s < ladder.rungs[0].reached.step_time_s
    assert ladder.optimum_proved and ladder.gap is not None
    # Megatron-LM runs 1F1B and interleaved only: the ladder and its optimum keep to them, and say so
    assert ladder.optimum.plan.schedule in ("1f1b", "interleaved")
    assert not {r.technique for r in ladder.rungs} & {"zero_bubble", "dualpipev", "zbv"}
    assert "left out: zero_bubble, dualpipev, zbv — schedules the megatron stack does not run" in ladder.notes
    # the changes that alter numerics carry their risk with a source
    for name in {r.technique for r in ladder.rungs if r.changes_math and catalog()[r.technique].risk}:
        assert any(risk.technique == name and risk.source for risk in ladder.risks)
    assert elapsed < 30  # the 2 s bar is measured by benchmarks/cli_latency.py, not by a unit test's clock


def test_a_schedule_the_stack_does_not_run_is_no_technique_to_name(llama_70b):
    with pytest.raises(SolverInputError, match="the megatron stack does not run zbv"):
        optimize(llama_70b, load_cluster("dgx-h100", nodes=8), Workload(seq_len=4096, global_batch_size=1024),
                 NAIVE_70B, techniques=["zbv", "pp"])
    result = run("optimize", "-m", "llama-3.1-70b", "-c", "dgx-h100", "--nodes", "8", "--tp", "8", "--techniques", "zbv")
    assert result.exit_code == 2 and "the megatron stack does not run zbv" in result.output


def test_seventy_b_on_one_h100_node_says_why_no_plan_fits(llama_70b):
    """The seed's example: 70B, one H100 node, throughput. AdamW's states need more than 8 × 80 GB hold
    even fully sharded (without CPU offload, which the throughput goal does not take unless named)."""
    ladder = optimize(llama_70b, load_cluster("dgx-h100", nodes=1), Workload(kind="pretrain", seq_len=4096,
                                                                             global_batch_size=256), Plan(tp=8))
    assert ladder.final.violations and ladder.optimum is None
    assert "2 nodes" in ladder.optimum_note and "offload" in ladder.optimum_note
    result = run("optimize", "-m", "llama-3.1-70b", "-c", "dgx-h100", "--nodes", "1", "--tp", "8")
    assert result.exit_code == 1 and "2 nodes" in result.stdout


def test_with_offload_named_the_seed_example_fits(llama_70b):
    cluster = load_cluster("dgx-h100", nodes=1)
    workload = Workload(kind="pretrain", seq_len=4096, global_batch_size=256)
    ladder = optimize(llama_70b, cluster, workload, Plan(tp=8), goal="memory")
    _assert_consistent(llama_70b, cluster, workload, ladder)
    assert not ladder.final.violations and ladder.final.plan.offload != "none"


def test_the_memory_goal_ends_at_less_memory_and_the_cost_goal_prices_every_rung(llama_70b):
    cluster = load_cluster("dgx-h100", nodes=8)
    workload = Workload(kind="pretrain", seq_len=4096, global_batch_size=512)
    start = Plan(tp=8, dp=8, sequence_parallel=True, sharding="zero1")
    memory = optimize(llama_70b, cluster, workload, start, goal="memory", max_effort="medium")
    _assert_consistent(llama_70b, cluster, workload, memory)
    assert memory.final.memory_bytes < memory.start.memory_bytes
    assert all(r.effort in ("flag", "library", "schedule_kernel") for r in memory.rungs)
    cost = optimize(llama_70b, cluster, workload, start, goal="cost", price_per_gpu_hour=2.5)
    _assert_consistent(llama_70b, cluster, workload, cost)
    for rung in cost.rungs:
        assert rung.reached.usd_per_million_tokens == pytest.approx(
            2.5 * rung.reached.gpus / 3600 / rung.reached.tokens_per_s * 1e6)


def test_max_effort_techniques_and_skip_bound_the_changes(llama_70b):
    cluster = load_cluster("dgx-h100", nodes=8)
    workload = Workload(kind="pretrain", seq_len=4096, global_batch_size=512)
    low = optimize(llama_70b, cluster, workload, NAIVE_70B, max_effort="low")
    assert low.rungs and all(r.effort == "flag" for r in low.rungs)
    only = optimize(llama_70b, cluster, workload, NAIVE_70B, techniques=["sharding", "recompute"])
    assert {r.technique for r in only.rungs} <= {"sharding", "recompute"}
    skipped = optimize(llama_70b, cluster, workload, NAIVE_70B, skip=["sequence_parallel", "fp8"])
    assert not {"sequence_parallel", "fp8"} & {r.technique for r in skipped.rungs}
    assert skipped.optimum is not None and skipped.optimum.plan.precision != "fp8"


def test_a_relayout_to_one_data_parallel_rank_drops_the_sharding_and_stays_within_the_optimum():
    """Hypothesis found it: a pp move took an FSDP plan to dp 1, where sharding over one rank is outside the
    solver's space (the cost model would price its FSDP layout, 16 bytes a parameter, and the ladder ended
    below the proved optimum). Such a move now drops the sharding, as the search space writes the plan."""
    model = load_model({"name": "generated", "hidden_size": 512, "num_layers": 4, "num_attention_heads": 4,
                        "num_kv_heads": 2, "ffn_hidden_size": 512, "vocab_size": 8000})
    cluster = small_cluster(1, 2, "1 GiB")
    workload = Workload(seq_len=2048, global_batch_size=4)
    ladder = optimize(model, cluster, workload, Plan(dp=2))
    _assert_consistent(model, cluster, workload, ladder)
    assert all(r.reached.plan.sharding == "none" for r in ladder.rungs if r.reached.plan.dp * r.reached.plan.cp == 1)


def test_an_fp32_plan_climbs_to_tf32_with_a_flag_and_to_bf16_from_there():
    """From plain fp32 on A100s the TF32 tensor cores are a flag away; bf16 mixed precision then gains
    more, and the ladder never moves back up in bits per GEMM input (solver.techniques.PRECISION_MOVES)."""
    model, cluster = load_model("llama-3.2-1b"), load_cluster("dgx-a100")
    workload = Workload(kind="pretrain", seq_len=2048, global_batch_size=64)
    start = Plan(dp=8, sharding="fsdp", precision="fp32")
    tf32 = optimize(model, cluster, workload, start, techniques=["tf32"])
    assert [r.change for r in tf32.rungs] == ["precision fp32 → tf32"] and tf32.rungs[0].gain > 0.5
    both = optimize(model, cluster, workload, start, techniques=["tf32", "bf16"])
    assert both.rungs[0].change == "precision fp32 → bf16" and len(both.rungs) == 1


def test_a_stack_that_offloads_without_recompute_turns_recompute_off_in_the_same_move(llama_70b):
    cluster = load_cluster("dgx-h100", nodes=8)
    workload = Workload(kind="pretrain", seq_len=4096, global_batch_size=512)
    ladder = optimize(llama_70b, cluster, workload, Plan(tp=8, dp=8, sequence_parallel=True, sharding="fsdp",
                                                         recompute="full", offload="optimizer"),
                      goal="memory", techniques=["offload_activations"])
    assert [r.change.split(",")[0] for r in ladder.rungs] == ["activation offload on"]
    assert ladder.final.plan.recompute == "none" and ladder.final.plan.offload_activations


# -- the command ---------------------------------------------------------------------------------------

def test_the_command_prints_the_ladder_and_its_json_is_the_ladder():
    args = ["optimize", "-m", "llama-3.1-70b", "-c", "dgx-h100", "--nodes", "8", "--tp", "8", "--recompute", "full",
            "--global-batch", "512"]
    text = run(*args)
    assert text.exit_code == 0, text.output
    assert "the ladder" in text.stdout and "solver's optimum" in text.stdout and "repair" in text.stdout
    data = run(*args, "--json")
    ladder = Ladder.model_validate_json(data.stdout)
    assert ladder.start.plan.tp == 8 and ladder.start.plan.recompute == "full"
    for rung in ladder.rungs:
        assert rung.change in text.stdout


def test_an_unpriceable_plan_is_repaired_first_and_its_json_reads_back():
    """HSDP shards of 16 on 8 GPUs leave a fraction of a replica (rule hsdp_shard_divides_dp): the cost model
    cannot price it, the first rung must make it priceable, and the ladder's JSON reads back."""
    result = run("optimize", "-m", "llama-3.1-8b", "-c", "dgx-h100", "--sharding", "hsdp", "--hsdp-shard-size", "16",
                 "--json")
    assert result.exit_code == 0, result.output
    ladder = Ladder.model_validate_json(result.stdout)
    assert ladder.start.step_time_s is None and ladder.start.violations[0].rule == "hsdp_shard_divides_dp"
    first = ladder.rungs[0]
    assert first.technique == "sharding" and first.reached.step_time_s is not None and first.delta_step_s is None
    assert not ladder.final.violations and ladder.gap is not None and ladder.gap >= 0


def test_from_a_deepspeed_config_starts_from_its_plan(tmp_path):
    config = {"train_batch_size": 256, "train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 16,
              "bf16": {"enabled": True}, "zero_optimization": {"stage": 0}}
    path = tmp_path / "ds_config.json"
    path.write_text(json.dumps(config))
    result = run("optimize", "-m", "llama-3.1-8b", "-c", "dgx-h100", "--nodes", "1", "--from", str(path), "--json")
    assert result.exit_code in (0, 1), result.output
    ladder = Ladder.model_validate_json(result.stdout)
    assert ladder.start.plan.micro_batch_size == 2 and ladder.start.plan.sharding == "none" and ladder.start.plan.dp == 8


@pytest.mark.parametrize("target", ["megatron", "torchtitan", "accelerate", "deepspeed"])
def test_from_the_files_plan_launch_writes_starts_from_their_plan(tmp_path, target):
    """Each framework's own configuration, as `plan launch` writes it, told apart by its content."""
    solved = run("solve", "-m", "llama-3.1-8b", "-c", "dgx-h100", "--nodes", "2", "--json")
    plan = Plan.model_validate(json.loads(solved.stdout)["plan"])
    assert run("launch", "-m", "llama-3.1-8b", "-c", "dgx-h100", "--nodes", "2", "--target", target,
               "--out", str(tmp_path)).exit_code == 0
    name = {"megatron": "launch.sh", "torchtitan": "launch.sh", "deepspeed": "ds_config.json"}.get(target)
    file = tmp_path / (name or next(p.name for p in tmp_path.iterdir() if p.suffix == ".yaml"))
    result = run("optimize", "-m", "llama-3.1-8b", "-c", "dgx-h100", "--nodes", "2", "--from", str(file), "--json")
    assert result.exit_code == 0, result.output
    start = Ladder.model_validate_json(result.stdout).start.plan
    assert (start.tp, start.pp, start.dp, start.shard_group) == (plan.tp, plan.pp, plan.dp, plan.shard_group)
    if target != "accelerate":  # an Accelerate YAML leaves the micro-batch to the training script
        assert start.micro_batch_size == plan.micro_batch_size


def test_from_a_saved_solution_starts_from_its_plan(tmp_path):
    solved = run("solve", "-m", "llama-3.1-8b", "-c", "dgx-h100", "--nodes", "1", "--json")
    assert solved.exit_code == 0, solved.output
    path = tmp_path / "plan.json"
    path.write_text(solved.stdout)
    result = run("optimize", "-m", "llama-3.1-8b", "-c", "dgx-h100", "--nodes", "1", "--from", str(path), "--json")
    ladder = Ladder.model_validate_json(result.stdout)
    assert ladder.start.plan == Plan.model_validate(json.loads(solved.stdout)["plan"])
    assert ladder.gap is not None and ladder.gap >= 0


@pytest.mark.parametrize("args, message", [
    (["--techniques", "warp_drive"], "unknown technique 'warp_drive'"),
    (["--skip", "fp16"], "unknown technique 'fp16'"),
    (["-c", "dgx-a100", "--precision", "fp8"], "precision fp8: the"),
    (["-c", "dgx-a100", "--techniques", "fp8,recompute"], "fp8 needs fp8 tensor cores"),
    (["--kind", "inference", "--global-batch", "8"], "improves a training plan"),
])
def test_bad_input_is_one_line_and_exit_2(args, message):
    result = run("optimize", "-m", "llama-3.1-8b", "-c", "dgx-h100", "--tp", "8", *args)
    assert result.exit_code == 2, result.output
    assert result.stdout == "" and message in result.stderr and len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("name, text", [("plan.json", "{not json"), ("plan.yaml", "tp: [unclosed"),
                                        ("ds_config.json", '{"train_batch_size": "many"}')])
def test_a_plan_file_that_does_not_parse_is_one_line_and_exit_2(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    result = run("optimize", "-m", "llama-3.1-8b", "-c", "dgx-h100", "--from", str(path))
    assert result.exit_code == 2, result.output
    assert result.stdout == "" and str(path) in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_the_api_refuses_unknown_goals_and_efforts(llama_70b):
    cluster = load_cluster("dgx-h100", nodes=8)
    workload = Workload(kind="pretrain", seq_len=4096, global_batch_size=512)
    with pytest.raises(SolverInputError, match="goal 'speed': use one of throughput, memory, cost"):
        optimize(llama_70b, cluster, workload, NAIVE_70B, goal="speed")
    with pytest.raises(SolverInputError, match="max_effort 'extreme'"):
        optimize(llama_70b, cluster, workload, NAIVE_70B, max_effort="extreme")


def test_every_technique_has_a_move_generator_and_a_cited_risk_or_none():
    from parallelplan.solver.techniques import _GENERATORS

    assert set(_GENERATORS) == set(catalog())
    for technique in catalog().values():
        assert technique.risk is None or (technique.risk.text and technique.risk.source)


@pytest.mark.parametrize("plan", [
    Plan(tp=2, pp=2, dp=4, ep=4, recompute="full", tp_comm_overlap=False, grad_reduce_overlap=False,
         param_gather_overlap=False, ep_comm_overlap=False, kernels="unfused", attention_kernel="eager", precision="fp32"),
    Plan(tp=2, pp=4, dp=2, vpp=2, ep=2, etp=1, sequence_parallel=True, sharding="zero1", offload_activations=True),
])
def test_every_move_changes_only_the_fields_its_technique_lists(plan):
    """techniques.json's ``fields`` say what each technique touches, the changes a move forces on other
    fields included (a new cp sets sequence parallelism; activation offload on Megatron drops recompute)."""
    from parallelplan.solver.techniques import moves

    before = plan.model_dump()
    found = moves(load_model("mixtral-8x7b"), load_cluster("dgx-h100", nodes=2), Workload(seq_len=4096, global_batch_size=64),
                  plan, list(catalog().values()), node_counts=[1])
    assert {m.technique.name for m in found} >= {"recompute", "sharding", "tp", "cp", "ep", "nodes", "fp8", "offload_activations"}
    for move in found:
        changed = {name for name, value in move.plan.model_dump().items() if before[name] != value}
        assert changed and changed <= set(move.technique.fields), (move.technique.name, move.change, changed)
