"""The `plan` command through click's runner: JSON equals the API's serialisation, tables name what they
show, bad input exits 2 with one line naming the problem."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from parallelplan.cli.main import plan
from parallelplan.models import list_presets, load_model
from parallelplan.models.report import analyze_model


def run(*args: str):
    return CliRunner().invoke(plan, list(args))


def test_presets_json_lists_every_preset():
    result = run("presets", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert [m["name"] for m in data["models"]] == list_presets()
    assert {"dgx-h100", "gb200-nvl72"} <= {c["name"] for c in data["clusters"]}
    assert "h100-sxm-80gb" in {g["name"] for g in data["gpus"]}
    llama = next(m for m in data["models"] if m["name"] == "llama-3.1-405b")
    assert llama["total_params"] == load_model("llama-3.1-405b").total_params


def test_presets_table():
    result = run("presets", "--kind", "gpus")
    assert result.exit_code == 0
    assert "h100-sxm-80gb" in result.output and "bf16 TFLOP/s" in result.output
    assert "llama" not in result.output


def test_analyze_json_is_the_api_serialisation():
    result = run("analyze", "--model", "deepseek-v3", "--seq-len", "8192", "--json")
    assert result.exit_code == 0, result.output
    expected = analyze_model(load_model("deepseek-v3"), 8192).model_dump(mode="json")
    assert json.loads(result.output) == expected


def test_analyze_table_names_the_model_and_totals():
    result = run("analyze", "--model", "mixtral-8x7b")
    assert result.exit_code == 0
    assert "Mixtral-8x7B" in result.output and "46.70 B" in result.output and "active per token" in result.output
    assert "training, full attention" in result.output and "bf16" in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["analyze", "--model", "lama-3.1-70b"], "did you mean llama-3.1-70b"),
        (["analyze", "--model", "./nope/config.json"], "no such file"),
        (["analyze", "--model", "llama-3.1-8b", "--seq-len", "abc"], "--seq-len"),
        (["analyze", "--model", "llama-3.1-8b", "--seq-len", "0"], "--seq-len"),
        (["analyze"], "--model"),
        (["presets", "--kind", "tpus"], "--kind"),
        (["analyze", "--model", "x", "--frobnicate"], "--frobnicate"),
    ],
)
def test_bad_input_exits_2_naming_the_problem(args, message):
    result = run(*args)
    assert result.exit_code == 2
    assert isinstance(result.exception, SystemExit)  # handled, not a crash
    assert message in result.stderr


@pytest.mark.parametrize(
    "content",
    [
        '{"model_type": ["llama"], "hidden_size": 64}',
        '{"model_type": "llama", "hidden_act": {"a": 1}}',
        '{"model_type": "gemma2", "num_hidden_layers": "4"}',
        '{"name": "x", "hidden_size": 1e400}',
        "[1, 2, 3]",
        "name: x\nhidden_size: [4096\n",
    ],
)
def test_malformed_model_files_give_one_error_line(tmp_path, content):
    path = tmp_path / ("model.yaml" if content.startswith("name:") else "config.json")
    path.write_text(content)
    result = run("analyze", "--model", str(path))
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit)
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1


def test_presets_listing_ignores_files_named_like_presets(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "dgx-h100").mkdir()
    (tmp_path / "llama-7b").write_text("not json")
    result = run("presets")
    assert result.exit_code == 0, result.output
    assert "dgx-h100" in result.output


def test_bad_config_file_exits_2_without_traceback(tmp_path):
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"model_type": "llama", "hidden_size": -1}))
    done = subprocess.run([sys.executable, "-m", "parallelplan", "analyze", "--model", str(config)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.startswith("error: ") and "'hidden_size' = -1" in done.stderr
    assert "Traceback" not in done.stderr
