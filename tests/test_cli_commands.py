"""The commands of the `plan` surface added for the full advisor — validate, sharding, topology, compare,
estimate --tokens, the not-yet-available ones — and the behaviour every command shares (default cluster,
--quiet, --debug, exit codes), through click's runner: each ``--json`` equals the API's serialisation,
each table names its result, bad flags exit 2 naming the flag."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from parallelplan.cli.main import plan
from parallelplan.constraints import Assessment, Plan, Workload, assess, compare_sharding, describe_topology
from parallelplan.hardware import load_cluster
from parallelplan.models import load_model


def run(*args: str):
    return CliRunner().invoke(plan, list(args))


# -- validate -----------------------------------------------------------------------------------------

def test_validate_quick_start_fails_on_memory_with_the_fix():
    result = run("validate", "--model", "llama-3.1-70b", "--tp", "4", "--dp", "1")
    assert result.exit_code == 1, result.output
    assert "FAIL" in result.output and "memory_fits" in result.output and "fix:" in result.output
    assert "no --cluster given: using dgx-h100" in result.stderr  # the default is said, never silent
    data = json.loads(run("validate", "--model", "llama-3.1-70b", "--tp", "4", "--dp", "1", "--json").stdout)
    model, cluster = load_model("llama-3.1-70b"), load_cluster("dgx-h100", gpus=4)
    expected = assess(model, cluster, Plan(tp=4, dp=1), Workload(seq_len=4096, global_batch_size=2**22 // 4096))  # the 4M-token default
    assert Assessment.model_validate(data) == expected
    assert data["gpus"] == 4 and [v["rule"] for v in data["violations"]] == ["memory_fits"]


def test_validate_passes_a_plan_that_runs_and_reads_a_strategy_file(tmp_path):
    args = ["validate", "-m", "llama-3.1-8b", "-c", "dgx-h100", "--nodes", "1"]
    flags = run(*args, "--tp", "2", "--sharding", "zero1", "--recompute", "full")
    assert flags.exit_code == 0, flags.output
    assert "PASS" in flags.output and "tp 2 · pp 1 · dp 4" in flags.output
    strategy = tmp_path / "strategy.yaml"
    strategy.write_text("tp: 2\nsharding: zero1\nrecompute: full\n")
    from_file = run(*args, "--plan", str(strategy), "--json")
    assert from_file.exit_code == 0, from_file.output
    assert json.loads(from_file.stdout) == json.loads(run(*args, "--tp", "2", "--sharding", "zero1", "--recompute", "full",
                                                         "--json").stdout)


def test_validate_reads_a_saved_solution(tmp_path):
    saved = run("solve", "-m", "llama-3.1-8b", "-c", "dgx-h100", "--nodes", "1", "--json")
    assert saved.exit_code == 0, saved.output
    path = tmp_path / "plan.json"
    path.write_text(saved.stdout)
    solved = json.loads(saved.stdout)
    checked = run("validate", "-m", "llama-3.1-8b", "-c", "dgx-h100", "--nodes", "1", "--plan", str(path),
                  "--global-batch", str(solved["workload"]["global_batch_size"]), "--json")
    assert checked.exit_code == 0, checked.output
    assert json.loads(checked.stdout)["plan"] == solved["plan"]


def test_validate_reports_each_broken_rule_with_its_fix():
    result = run("validate", "-m", "llama-3.1-8b", "-c", "dgx-h100", "--tp", "3", "--dp", "1", "--nodes", "1")
    assert result.exit_code == 1
    rules = [v["rule"] for v in json.loads(run("validate", "-m", "llama-3.1-8b", "-c", "dgx-h100", "--tp", "3", "--dp", "1",
                                               "--nodes", "1", "--json").stdout)["violations"]]
    assert "world_size" in rules and all(f"x {rule}" in result.output for rule in rules)


def test_validate_refuses_two_sources(tmp_path):
    path = tmp_path / "p.json"
    path.write_text("{}")
    result = run("validate", "-m", "llama-3.1-8b", "--plan", str(path), "--deepspeed", str(path))
    assert result.exit_code == 2 and "give one of --plan, --deepspeed, not several" in result.stderr


# -- sharding -----------------------------------------------------------------------------------------

def test_sharding_quick_start_explains_that_nothing_fits():
    result = run("sharding", "--model", "llama-3.1-70b", "--dp", "8")
    assert result.exit_code == 1, result.output
    for words in ("DDP (none)", "ZeRO-1", "ZeRO-2", "ZeRO-3", "FSDP", "none runs", "use at least"):
        assert words in result.output, words


def test_sharding_json_is_the_api_and_names_a_recommendation():
    args = ["sharding", "-m", "llama-3.1-8b", "-c", "dgx-h100", "--nodes", "2", "--global-batch", "64"]
    table = run(*args)
    assert table.exit_code == 0, table.output
    data = json.loads(run(*args, "--json").stdout)
    expected = compare_sharding(load_model("llama-3.1-8b"), load_cluster("dgx-h100", nodes=2), Plan(dp=16),
                                Workload(seq_len=4096, global_batch_size=64))
    assert data == expected.model_dump(mode="json")
    assert [o["sharding"] for o in data["options"]] == ["none", "zero1", "zero2", "zero3", "fsdp", "hsdp"]
    chosen = next(o for o in data["options"] if o["sharding"] == data["recommended"])
    assert f"recommendation: {chosen['name']}" in table.output
    assert any(line.startswith(chosen["name"]) and line.endswith("yes, recommended") for line in table.output.splitlines())


# -- topology -----------------------------------------------------------------------------------------

def test_topology_json_is_the_api_and_the_table_names_the_tiers():
    args = ["topology", "--cluster", "dgx-h100", "--nodes", "4"]
    data = json.loads(run(*args, "--json").stdout)
    assert data == describe_topology(load_cluster("dgx-h100", nodes=4)).model_dump(mode="json")
    table = run(*args)
    assert table.exit_code == 0
    assert "NVLink domain: nvswitch" in table.output and "network: infiniband" in table.output
    assert "all-reduce 1024 MiB ms" in table.output
    # which protocol NCCL's ring runs at which size, from the same prices (constraints.topology.protocol_ranges)
    ranges = [(r["size"], r["protocol"]) for r in data["protocols"]]
    assert ranges == [(8, "ll"), (8, "ll128"), (8, "simple"), (32, "ll"), (32, "ll128"), (32, "simple")]
    assert data["protocols"][0]["from_bytes"] == 8 and data["protocols"][-1]["to_bytes"] is None
    assert "NCCL protocol of a ring all-reduce (NCCL default): over 8 GPUs LL 8 B–" in table.output



def test_a_cluster_file_that_sets_nccl_proto_is_priced_on_those_protocols_only(tmp_path):
    path = tmp_path / "simple.json"
    path.write_text(json.dumps({**load_cluster("dgx-a100").model_dump(mode="json"), "nccl_protocols": ["simple"]}))
    table = run("topology", "--cluster", str(path))
    assert table.exit_code == 0, table.output
    assert "NCCL protocol of a ring all-reduce (the cluster sets NCCL_PROTO): over 8 GPUs Simple 8 B and up" in table.output
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**load_cluster("dgx-a100").model_dump(mode="json"), "nccl_protocols": ["fast"]}))
    refused = run("topology", "--cluster", str(bad))
    assert refused.exit_code == 2 and "nccl_protocols" in refused.output and "Traceback" not in refused.output


# -- estimate --tokens --------------------------------------------------------------------------------

def test_estimate_prices_a_token_budget():
    args = ["estimate", "-m", "llama-3.1-8b", "-c", "dgx-h100", "--nodes", "1", "--tp", "2", "--sharding", "zero1",
            "--global-batch", "256", "--tokens", "1e12", "--price", "3"]
    data = json.loads(run(*args, "--json").stdout)
    budget, est = data["budget"], data["estimate"]
    assert budget["steps"] == -(-10**12 // (256 * 4096))
    assert budget["time_s"] == pytest.approx(budget["steps"] * est["step_time_s"])
    assert budget["usd"] == pytest.approx(budget["time_s"] / 3600 * 8 * 3)
    table = run(*args)
    assert "training to the token budget" in table.output and "$3.00 per GPU-hour (given)" in table.output


def test_estimate_budget_uses_the_price_table_by_default():
    data = json.loads(run("estimate", "-m", "llama-3.1-8b", "-c", "dgx-h100", "--nodes", "1", "--tokens", "1e9",
                          "--sharding", "zero1", "--json").stdout)
    assert "prices.json" in data["budget"]["price_basis"] and data["budget"]["usd"] > 0


# -- compare ------------------------------------------------------------------------------------------

def test_compare_two_models_side_by_side():
    args = ["compare", "-m", "llama-3.1-8b", "-m", "llama-3.1-70b", "-c", "dgx-h100", "--nodes", "2", "--seq-len", "4096",
            "--global-batch", "256"]
    data = json.loads(run(*args, "--json").stdout)
    assert [(r["model"], r["cluster"]) for r in data] == [("llama-3.1-8b", "dgx-h100"), ("llama-3.1-70b", "dgx-h100")]
    small = run("solve", "-m", "llama-3.1-8b", "-c", "dgx-h100", "--nodes", "2", "--global-batch", "256", "--json")
    solved = json.loads(small.stdout)
    assert data[0]["solution"]["plan"] == solved["plan"] and data[0]["solution"]["objective"] == solved["objective"]
    table = run(*args)
    assert table.exit_code == 0 and "llama-3.1-70b" in table.output and "tokens/s" in table.output


def test_compare_marks_an_infeasible_pair_and_gives_the_budget():
    args = ["compare", "-m", "llama-3.1-8b", "-m", "llama-3.1-70b", "-c", "dgx-h100", "--nodes", "1", "--tokens", "1e11"]
    data = json.loads(run(*args, "--json").stdout)
    assert data[0]["solution"] is not None and data[0]["budget"]["steps"] > 0
    assert data[1]["solution"] is None and data[1]["infeasible"]["suggestions"]
    assert "infeasible" in run(*args).output


def test_compare_needs_two_pairs():
    result = run("compare", "-m", "llama-3.1-8b", "-c", "dgx-h100")
    assert result.exit_code == 2 and "two or more models or clusters" in result.stderr


# -- shared behaviour ---------------------------------------------------------------------------------

def test_quiet_drops_notes_and_explanations():
    args = ["estimate", "-m", "llama-3.1-8b", "-c", "dgx-h100", "--nodes", "1", "--sharding", "zero1"]
    loud, quiet = run(*args), run(*args, "--quiet")
    assert "notes:" in loud.output and "notes:" not in quiet.output and "fits: yes" in quiet.output
    assert run("--quiet", *args).output == quiet.output
    solved = run("solve", "-m", "llama-3.1-8b", "--nodes", "1", "-q")
    assert "why:" not in solved.output and "plan: " in solved.output and solved.stderr == ""


def test_debug_shows_the_traceback_of_bad_input():
    args = ["analyze", "--model", "lama-3.1-70b"]
    plain = run(*args)
    assert plain.exit_code == 2 and plain.stderr.count("\n") == 1
    debug = run(*args, "--debug")
    assert debug.exit_code == 1 and type(debug.exception).__name__ == "ModelError"


def test_an_unreadable_output_folder_is_bad_input(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = run("launch", "-m", "llama-3.1-8b", "-c", "dgx-h100", "--nodes", "1", "--target", "torchrun",
                 "--out", str(blocker / "run"))
    assert result.exit_code == 2 and result.stderr.startswith("error: ") and str(blocker) in result.stderr


def test_colour_only_when_asked_or_on_a_terminal():
    args = ["estimate", "-m", "llama-3.1-8b", "-c", "dgx-h100", "--nodes", "1", "--sharding", "zero1", "-q"]
    assert "\x1b[" not in run(*args).output  # click's runner is not a terminal
    assert "\x1b[" in CliRunner().invoke(plan, ["--color", *args]).output
    assert "\x1b[" in CliRunner().invoke(plan, args, color=True).output  # as on a terminal
    assert "\x1b[" not in CliRunner(env={"NO_COLOR": "1"}).invoke(plan, args, color=True).output
    assert "\x1b[" not in CliRunner().invoke(plan, ["--no-color", *args], color=True).output


@pytest.mark.parametrize("command", ["solve", "estimate", "validate", "sharding", "pareto", "compare", "topology",
                                     "launch", "slurm"])
def test_bad_flags_exit_2_naming_the_flag(command):
    result = run(command, "--model", "llama-3.1-8b", "--nodes", "zero")
    if command == "topology":
        result = run(command, "--nodes", "zero")
    assert result.exit_code == 2 and "--nodes" in result.stderr
    unknown = run(command, "--tpp", "2")
    assert unknown.exit_code == 2 and "--tpp" in unknown.stderr


@pytest.mark.parametrize("command", ["presets", "analyze", "estimate", "validate", "sharding", "topology", "solve",
                                     "recommend", "pareto", "compare", "launch", "slurm"])
def test_every_command_has_json_quiet_debug_and_an_example(command):
    text = run(command, "--help").output
    for flag in ("--json", "--quiet", "--debug", "Example"):
        assert flag in text, (command, flag)


def test_long_searches_report_progress_on_a_terminal_only(monkeypatch):
    from types import SimpleNamespace

    args = ["pareto", "-m", "llama-3.1-8b", "-c", "dgx-h100", "--nodes", "2", "-o", "throughput,memory_headroom"]
    assert run(*args).stderr == ""  # not a terminal: nothing
    monkeypatch.setattr("parallelplan.cli.format.sys", SimpleNamespace(stderr=SimpleNamespace(isatty=lambda: True)))
    shown = run(*args)
    assert shown.exit_code == 0
    assert "pareto: priced" in shown.stderr and "Pareto points" in shown.stderr
    assert shown.stderr.endswith("\r\x1b[K")  # the status line is erased before the table
    assert run(*args, "--quiet").stderr == ""
