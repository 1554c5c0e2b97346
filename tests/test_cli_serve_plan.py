"""`plan serve-plan` through click's runner: its JSON is the API's answer, the table marks the best, an
unmeetable target exits 1 with its explanation, bad input exits 2 with one line, --emit writes the files."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from parallelplan import Traffic, load_cluster, load_model
from parallelplan.cli.main import plan
from parallelplan.solver.serving import serve_plan

BASE = ("serve-plan", "-m", "llama-3.1-8b", "-c", "dgx-h100", "--isl", "2000", "--osl", "300")


def run(*args: str):
    return CliRunner().invoke(plan, list(args))


def test_json_is_the_api_answer():
    result = run(*BASE, "--ttft", "500", "--tpot", "20", "--json")
    assert result.exit_code == 0, result.output
    got = json.loads(result.output)["solution"]
    api = serve_plan(load_model("llama-3.1-8b"), load_cluster("dgx-h100"), Traffic(isl=2000, osl=300), ttft_s=0.5, tpot_s=0.02)
    assert got["best"] == json.loads(api.best.model_dump_json())
    assert got["targets"] == {"mode": "streaming", "ttft_s": 0.5, "tpot_s": 0.02}


def test_the_table_marks_the_best_and_the_frontier_on_request():
    result = run(*BASE, "--ttft", "500", "--tpot", "20", "--pareto")
    assert result.exit_code == 0, result.output
    assert "TTFT 500 ms, TPOT 20 ms (means)" in result.output and "frontier" in result.output
    assert sum(line.lstrip().startswith("best") for line in result.output.splitlines()) == 1


def test_an_unmeetable_target_exits_1_with_what_would_meet_it():
    result = run(*BASE, "--ttft", "1", "--tpot", "20")
    assert result.exit_code == 1
    assert "TTFT ≤ 1 ms" in result.output and "--ttft" in result.output.split("changes that make it feasible")[1]


@pytest.mark.parametrize("args, words", [
    (("--rate", "2", "--concurrency", "4"), "--rate and --concurrency both give the load"),
    (("--fix", "dp=2"), "fixed: dp cannot be pinned for serving"),
    (("--out", "x"), "--out writes --emit's files"),
    (("--mode", "fast"), "Invalid value for '--mode'"),
    (("--prefix-hit-rate", "1"), "--prefix-hit-rate"),
])
def test_bad_input_exits_2_with_one_line(args, words):
    result = run(*BASE, *args)
    assert result.exit_code == 2 and words in result.output, result.output


def test_emit_writes_the_launch_files(tmp_path):
    result = run(*BASE, "--ttft", "500", "--tpot", "20", "--serving", "disaggregated", "--emit", "sglang",
                 "--out", str(tmp_path))
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["decode.sh", "prefill.sh", "router.sh"]
    assert "--disaggregation-mode=prefill" in (tmp_path / "prefill.sh").read_text()


def test_speculative_decoding_reaches_the_search_and_the_engine_flags():
    args = ("serve-plan", "-m", "deepseek-v3", "-c", "hgx-h200", "--nodes", "2", "--isl", "2000", "--osl", "500",
            "--fix", "precision=fp8", "--serving", "aggregated")
    plain = json.loads(run(*args, "--json").output)["solution"]["best"]
    result = run(*args, "--speculative-tokens", "1", "--accepted-tokens", "0.9", "--json", "--emit", "vllm")
    fast = json.loads(result.output)
    assert fast["solution"]["traffic"]["speculation"] == {"draft_tokens": 1, "accepted": 0.9, "draft_layers": 1}
    assert fast["solution"]["best"]["aggregated"]["output_tokens_per_s_per_gpu"] > \
        plain["aggregated"]["output_tokens_per_s_per_gpu"]
    assert '--speculative-config={"method":"mtp","num_speculative_tokens":1}' in fast["files"]["serve.sh"]
    assert run(*args, "--speculative-tokens", "1").exit_code == 2  # the acceptance is the user's measurement


def test_a_length_distribution_is_given_as_classes():
    result = run("serve-plan", "-m", "llama-3.1-8b", "-c", "dgx-h100", "--lengths", "1000:200:0.7,8000:500:0.3",
                 "--emit", "vllm", "--json")
    assert result.exit_code == 0, result.output
    got = json.loads(result.output)
    assert (got["solution"]["traffic"]["isl"], got["solution"]["traffic"]["osl"]) == (3100, 290)
    assert "--max-model-len=8500" in got["files"]["serve.sh"]  # the engine holds the longest request
    both = run("serve-plan", "-m", "llama-3.1-8b", "--lengths", "1000:200:1", "--isl", "100")
    assert both.exit_code == 2 and "give one or the other" in both.output
