"""Workload profiles (`solver.profiles`, ``solver/data/profiles.json``) and `plan profile`."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from parallelplan.cli.main import plan
from parallelplan.hardware import load_cluster
from parallelplan.models import load_model
from parallelplan.solver import SolverInputError, solve
from parallelplan.solver.profiles import list_profiles, load_profile, profile

NODE = load_cluster("dgx-h100", nodes=1)
NAMES = ["pretrain", "finetune", "lora", "qlora", "dpo", "ppo", "grpo", "inference", "long-context", "moe", "cost"]


def test_the_profiles_of_the_issue_exist_and_every_default_says_why():
    assert [p.name for p in list_profiles()] == NAMES
    for p in list_profiles():
        work = p.build_workload()
        given = set(p.workload) - {"kind", "algorithm", "rollout"}
        given |= {f"rollout.{key}" for key in p.workload.get("rollout", {})}
        assert given <= set(p.why), f"{p.name}: {given - set(p.why)} without a why"
        assert set(p.fixed) <= set(p.why) and "objective" in p.why
        assert work.seq_len == p.workload["seq_len"]


@pytest.mark.parametrize("name,model", [("pretrain", "llama-3.1-8b"), ("finetune", "llama-3.1-8b"), ("lora", "llama-3.1-8b"),
                                        ("qlora", "llama-3.1-8b"), ("dpo", "llama-3.1-8b"), ("inference", "llama-3.1-8b"),
                                        ("long-context", "llama-3.1-8b"), ("moe", "qwen3-30b-a3b")])
def test_a_profile_is_the_solver_on_its_workload_and_pins(name, model):
    spec = load_model(model)
    chosen = load_profile(name)
    found = profile(name, spec, NODE)
    direct = solve(spec, NODE, chosen.build_workload(), objective=chosen.objective, fixed=chosen.fixed)
    assert found.plan == direct.plan and found.optimal
    for field, value in chosen.fixed.items():
        assert getattr(found.plan, field) == value
    assert found.workload == chosen.build_workload()


@pytest.mark.parametrize("name,model,nodes,prompts", [("grpo", "llama-3.1-8b", 1, 32), ("ppo", "llama-3.1-8b", 2, 256)])
def test_rl_profiles_are_solve_rl_on_their_step(name, model, nodes, prompts):
    from parallelplan.solver import solve_rl

    spec, cluster = load_model(model), load_cluster("dgx-h100", nodes=nodes)
    overrides = {"global_batch_size": prompts}
    found = profile(name, spec, cluster, workload=overrides)
    direct = solve_rl(spec, cluster, load_profile(name).build_workload(overrides))
    assert found.step_time_s == direct.step_time_s and [r.plan for r in found.roles] == [r.plan for r in direct.roles]
    with pytest.raises(SolverInputError, match="takes no pins"):
        profile(name, spec, cluster, fixed={"tp": 2})


def test_overrides_replace_the_defaults():
    found = profile("lora", load_model("llama-3.1-8b"), NODE, workload={"seq_len": 2048, "global_batch_size": 16})
    assert (found.workload.seq_len, found.workload.global_batch_size, found.workload.peft.rank) == (2048, 16, 64)


@pytest.mark.parametrize("call,message", [
    (lambda: profile("nope", load_model("llama-3.1-8b"), NODE), "unknown workload profile 'nope'"),
    (lambda: profile("moe", load_model("llama-3.1-8b"), NODE), "dense"),
    (lambda: profile("cost", load_model("llama-3.1-8b"), tokens=1e9), "deadline_hours"),
    (lambda: profile("lora", load_model("llama-3.1-8b"), NODE, workload={"seq_len": 0}), "profile lora: seq_len"),
])
def test_bad_profile_input_is_named(call, message):
    with pytest.raises(SolverInputError, match=message):
        call()


def test_cli_lists_and_solves_profiles():
    listed = CliRunner().invoke(plan, ["profile", "--list"])
    assert listed.exit_code == 0 and all(name in listed.output for name in NAMES)
    solved = CliRunner().invoke(plan, ["profile", "-w", "qlora", "-m", "llama-3.1-70b", "-c", "dgx-h100", "--gpus", "1"])
    assert solved.exit_code == 0, solved.output
    assert "Dettmers et al. 2023" in solved.output and "finetune (QLoRA r=64 on all-linear)" in solved.output
    bad = CliRunner().invoke(plan, ["profile", "-w", "cost", "-m", "llama-3.1-8b", "--tokens", "1e9"])
    assert bad.exit_code == 2 and "deadline_hours" in bad.stderr


def test_cli_cost_profile_names_the_cheapest_cluster():
    result = CliRunner().invoke(plan, ["profile", "-w", "cost", "-m", "llama-3.2-1b", "--tokens", "1e9",
                                       "--deadline-hours", "24", "--max-nodes", "2"])
    assert result.exit_code == 0, result.output
    assert "cheapest: " in result.output and "bound $ (100% MFU)" in result.output
