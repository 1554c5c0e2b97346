"""`plan solve` / `plan recommend` / `plan pareto`: the API's answer as JSON and as a table, pins and ranges
passed through, infeasible requests explained (exit 1), bad input as one line (exit 2)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from parallelplan.cli.main import plan
from parallelplan.cli.options import DEFAULT_BATCH_TOKENS
from parallelplan.cli.solve_cmd import parse_assignments, parse_objective
from parallelplan.constraints import Plan, Workload
from parallelplan.hardware import load_cluster
from parallelplan.models import load_model
from parallelplan.solver import pareto, solve

EIGHT_B = ["-m", "llama-3.1-8b", "-c", "dgx-h100", "--nodes", "1", "--seq-len", "4096", "--global-batch", "64"]


def run(*args: str):
    return CliRunner().invoke(plan, list(args))


def _api(**kwargs):
    return solve(load_model("llama-3.1-8b"), load_cluster("dgx-h100", nodes=1), Workload(seq_len=4096, global_batch_size=64),
                 **kwargs)


def test_solve_json_is_the_api_solution():
    result = run("solve", *EIGHT_B, "--top-k", "2", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    expected = _api(top_k=2)
    assert Plan.model_validate(data["plan"]) == expected.plan
    assert data["objective"] == expected.objective and data["optimal"] is True
    assert [Plan.model_validate(a["plan"]) for a in data["alternatives"]] == [a.plan for a in expected.alternatives]


def test_recommend_is_an_alias_of_solve():
    first, second = run("solve", *EIGHT_B, "--json"), run("recommend", *EIGHT_B, "--json")
    assert first.exit_code == second.exit_code == 0
    assert json.loads(first.output)["plan"] == json.loads(second.output)["plan"]


def test_solve_table_says_what_wins_and_why():
    result = run("solve", "-m", "llama-3.1-70b", "-c", "dgx-h100", "--nodes", "8", "--seq-len", "8192",
                 "--global-batch", "512", "--top-k", "2")
    assert result.exit_code == 0, result.output
    for words in ("proved optimal by CP-SAT", "plan: tp ", "tokens/s", "memory per GPU", "why:", "Runner-up",
                  "best plans of other layouts:", "per million tokens"):
        assert words in result.output, words


def test_pins_ranges_and_weights_reach_the_solver():
    result = run("solve", *EIGHT_B, "--fix", "tp=2", "--fix", "sharding=zero1", "--range", "micro-batch-size=1,2",
                 "--range", "pp=1:2", "-o", "throughput=1,memory_headroom=0.5", "--json")
    assert result.exit_code == 0, result.output
    found = Plan.model_validate(json.loads(result.output)["plan"])
    expected = _api(fixed={"tp": 2, "sharding": "zero1"}, ranges={"micro_batch_size": [1, 2], "pp": (1, 2)},
                    objective={"throughput": 1.0, "memory_headroom": 0.5})
    assert found == expected.plan and found.tp == 2 and found.sharding == "zero1" and found.pp <= 2


def test_default_batch_is_four_million_tokens():
    result = run("solve", "-m", "llama-3.1-8b", "-c", "dgx-h100", "--nodes", "1", "--seq-len", "8192", "--json")
    assert result.exit_code == 0, result.output
    expected = solve(load_model("llama-3.1-8b"), load_cluster("dgx-h100", nodes=1),
                     Workload(seq_len=8192, global_batch_size=DEFAULT_BATCH_TOKENS // 8192))
    assert Plan.model_validate(json.loads(result.output)["plan"]) == expected.plan


def test_infeasible_exits_1_with_conflicts_and_suggestions():
    args = ["-m", "llama-3.1-70b", "-c", "dgx-h100", "--nodes", "1", "--seq-len", "8192", "--global-batch", "64"]
    result = run("solve", *args)
    assert result.exit_code == 1
    assert "infeasible:" in result.output and "constraints that cannot hold together:" in result.output
    assert "2 nodes (16 GPUs)" in result.output
    data = json.loads(run("solve", *args, "--json").output)
    assert data["infeasible"]["conflicts"] == ["every plan must fit in the GPU's 79.6 GiB"]
    assert any(s.startswith("2 nodes") for s in data["infeasible"]["suggestions"])


@pytest.mark.parametrize(("args", "message"), [
    (["-o", "speed"], "unknown objective 'speed'"),
    (["-o", "throughput=fast"], "weight of 'throughput' must be a number"),
    (["--fix", "tensor_parallel=8"], "'tensor_parallel' is not a plan variable"),
    (["--fix", "tp=eight"], "tp = 'eight'"),
    (["--fix", "tp"], "--fix takes NAME=VALUE"),
    (["--range", "pp=a:b"], "LOW:HIGH takes two integers"),
    (["--range", "precision=bf16,fp6"], "precision = 'fp6'"),
    (["--node-counts", "1,two"], "--node-counts takes comma-separated integers"),
])
def test_bad_input_exits_2_naming_the_field(args, message):
    result = run("solve", *EIGHT_B, *args)
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output


def test_inference_needs_a_batch():
    result = run("solve", "-m", "llama-3.1-8b", "-c", "dgx-h100", "--nodes", "1", "--kind", "inference")
    assert result.exit_code == 2 and "--global-batch is required for --kind inference" in result.output


def test_pareto_json_is_the_api_front():
    result = run("pareto", *EIGHT_B, "-o", "throughput,memory_headroom", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    expected = pareto(load_model("llama-3.1-8b"), load_cluster("dgx-h100", nodes=1), Workload(seq_len=4096, global_batch_size=64),
                      objectives=("throughput", "memory_headroom"))
    assert [Plan.model_validate(s["plan"]) for s in data] == [s.plan for s in expected]
    assert all(s["optimal"] for s in data)


def test_pareto_table_lists_every_point():
    result = run("pareto", "-m", "llama-3.1-70b", "-c", "dgx-h100", "--nodes", "8", "--seq-len", "8192",
                 "--global-batch", "512", "-o", "throughput,cost,gpus")
    assert result.exit_code == 0, result.output
    header = next(line for line in result.output.splitlines() if line.startswith("Pareto set over"))
    points = int(header.split(": ")[1].split(" plans")[0])
    rows = [line for line in result.output.splitlines() if line[:1].isdigit()]
    assert points >= 2 and len(rows) == points and "searching 8, 16, 32, 64 GPUs" in result.output


def test_argument_parsers():
    assert parse_objective("throughput") == "throughput"
    assert parse_objective("gpus, throughput") == ["gpus", "throughput"]
    assert parse_objective("throughput=1,cost=0.5") == {"throughput": 1.0, "cost": 0.5}
    assert parse_assignments(("tp=8", "sequence-parallel=true", "layers_per_stage=19,21,21,19"), "--fix", ranged=False) \
        == {"tp": 8, "sequence_parallel": True, "layers_per_stage": [19, 21, 21, 19]}
    assert parse_assignments(("pp=1:8", "precision=bf16,fp8", "layers_per_stage=1,3;2,2"), "--range", ranged=True) \
        == {"pp": (1, 8), "precision": ["bf16", "fp8"], "layers_per_stage": [[1, 3], [2, 2]]}
