"""What a new user reads (issue 22): bad input is one ``error:`` line naming the flag, the value and the fix
(exit 2), never a fallback or a pydantic dump; plans, counts and tables read right; the serving scripts
admit what the plan was priced at."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from parallelplan.cli.format import plural
from parallelplan.cli.main import plan

SNAPSHOTS = Path(__file__).parent / "fixtures" / "topology"
EIGHT_B = ("-m", "llama-3.1-8b", "-c", "dgx-h100")


def run(*args: str):
    return CliRunner().invoke(plan, list(args))


def one_error_line(result) -> str:
    """The single ``error:`` line of a bad-input exit."""
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def plan_line(output: str) -> str:
    return next(line for line in output.splitlines() if line.startswith("plan: "))


# -- 1. a range with low above high -------------------------------------------------------------------------

def test_a_range_with_low_above_high_says_so():
    line = one_error_line(run("solve", *EIGHT_B, "--range", "pp=16:8"))
    assert line == "error: --range pp=16:8: low 16 is above high 8; write pp=8:16"
    assert run("solve", *EIGHT_B, "--range", "pp=1:1", "--quiet").exit_code == 0  # low = high is one value


# -- 2. a partial saved solution ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def saved_solution() -> dict:
    solved = run("solve", *EIGHT_B, "--nodes", "1", "--json")
    assert solved.exit_code == 0, solved.output
    return json.loads(solved.stdout)


def test_a_partial_solution_names_its_missing_and_invalid_fields(saved_solution, tmp_path):
    partial = {key: value for key, value in saved_solution.items() if key not in ("estimate", "search")}
    partial["plan"] = saved_solution["plan"] | {"tp": 0}
    path = tmp_path / "partial.json"
    path.write_text(json.dumps(partial))
    line = one_error_line(run("launch", "--solution", str(path), "--target", "torchrun"))
    assert line.startswith(f"error: {path}: not a `plan solve --json` output: ")
    assert "field 'plan.tp' = 0" in line and "field 'estimate' is missing" in line and "field 'search' is missing" in line
    assert "validation error" not in line
    path.write_bytes(b"\xff\xfe not json")  # not even text: still one line, not a traceback
    assert "Invalid JSON" in one_error_line(run("launch", "--solution", str(path), "--target", "torchrun"))


# -- 3. a pin the target cannot run -------------------------------------------------------------------------

def _offered(line: str) -> list[str]:
    return line.split("choose a target that runs it: ", 1)[1].split(", ")


def test_a_pin_the_target_cannot_run_names_the_flag_typed_and_only_other_targets():
    mixtral = ("launch", "-m", "mixtral-8x7b", "-c", "dgx-h100", "--nodes", "4", "--target", "deepspeed")
    flag = one_error_line(run(*mixtral, "--ep", "8"))
    assert flag.startswith("error: --ep 8: the deepspeed target can only run ep = 1; ") and "--fix" not in flag
    assert _offered(flag) == ["accelerate", "megatron", "sglang", "slurm", "torchrun", "torchtitan", "vllm"]
    fixed = one_error_line(run(*mixtral, "--fix", "ep=8"))
    assert fixed.startswith("error: --fix ep=8: the deepspeed target can only run ep = 1; ")
    # only the targets that can run the value: vllm and deepspeed fix cp = 1 as sglang does
    cp = one_error_line(run("launch", *EIGHT_B, "--target", "sglang", "--cp", "2"))
    assert cp.startswith("error: --cp 2: the sglang target can only run cp = 1; ")
    assert _offered(cp) == ["accelerate", "megatron", "slurm", "torchrun", "torchtitan"]
    # a value outside the target's range (torchtitan runs bf16 only)
    fp8 = one_error_line(run("launch", *EIGHT_B, "--target", "torchtitan", "--fix", "precision=fp8"))
    assert fp8.startswith("error: --fix precision=fp8: the torchtitan target can only run precision = bf16; ")
    assert "torchtitan" not in _offered(fp8)


# -- 4. PLAN_DETECT naming a folder without a snapshot ------------------------------------------------------

@pytest.mark.parametrize("folder", ["empty", "missing"])
def test_a_detect_folder_without_a_snapshot_is_bad_input(folder, tmp_path, monkeypatch):
    path = tmp_path / folder
    if folder == "empty":
        path.mkdir()
    monkeypatch.setenv("PLAN_DETECT", str(path))
    for args in (("solve", "-m", "llama-3.1-8b"), ("solve", "-m", "llama-3.1-8b", "--quiet")):
        line = one_error_line(run(*args))
        assert line.startswith(f"error: PLAN_DETECT={path}: ")
        assert "SOURCES.md" in line and "plan topology --record DIR" in line and "PLAN_DETECT=auto" in line
    monkeypatch.setenv("PLAN_DETECT", "off")
    assert "using dgx-h100" in run("estimate", *EIGHT_B[:2], "--tp", "8").stderr


def test_a_snapshot_of_a_node_that_cannot_be_used_still_falls_back_with_a_note(monkeypatch):
    monkeypatch.setenv("PLAN_DETECT", str(SNAPSHOTS / "pcie-l40s"))  # no network port: not one of two nodes
    result = run("estimate", "-m", "llama-3.1-8b", "--nodes", "2", "--tp", "8")
    assert result.exit_code == 0, result.output
    assert "the detected node is not used" in result.stderr and "using dgx-h100" in result.stderr


# -- 5. expert degrees only for MoE models ------------------------------------------------------------------

def test_dense_plans_show_no_expert_degrees_and_moe_plans_do():
    dense = run("estimate", *EIGHT_B, "--tp", "8", "--ep", "2")
    assert dense.exit_code == 1 and "ep_without_experts" in dense.output  # the wrong ep is a broken rule...
    assert "etp" not in plan_line(dense.output) and "ep 2" not in plan_line(dense.output)  # ...not a plan choice
    validated = run("validate", *EIGHT_B, "--tp", "8", "--ep", "2")
    assert validated.exit_code == 1 and "etp" not in plan_line(validated.output)
    moe = run("estimate", "-m", "mixtral-8x7b", "-c", "dgx-h100", "--nodes", "2", "--tp", "8", "--etp", "1",
              "--sequence-parallel", "--sharding", "fsdp")
    assert moe.exit_code == 0, moe.output
    assert "ep 1 (etp 1)" in plan_line(moe.output)  # etp 1 under tp 8 changes the expert GEMMs: shown


# -- 6. counts in the right number --------------------------------------------------------------------------

def test_counts_read_in_the_right_number():
    assert [plural(1, "sequence"), plural(64, "sequence"), plural(2, "micro-batch", "micro-batches")] == [
        "1 sequence", "64 sequences", "2 micro-batches"]
    one = run("estimate", *EIGHT_B, "--tp", "8", "--global-batch", "1")
    assert one.exit_code == 0, one.output
    assert "4096 tokens x 1 sequence (1 micro-batch per pipeline per step)" in one.output
    validated = run("validate", *EIGHT_B, "--tp", "8", "--global-batch", "1")
    assert validated.exit_code == 0 and "4096 tokens x 1 sequence\n" in validated.output
    sharded = run("sharding", *EIGHT_B, "--global-batch", "8")
    assert sharded.exit_code == 0 and "4096 tokens x 8 sequences (1 micro-batch per replica per step)" in sharded.output
    for result in (one, validated, sharded):
        assert not re.search(r"\b1 (sequences|micro-batches)\b", result.output)


# -- 7. the sharding table ----------------------------------------------------------------------------------

def test_every_line_of_the_sharding_table_has_the_headers_columns():
    result = run("sharding", *EIGHT_B, "--nodes", "2", "--global-batch", "64")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("sharding "))
    rows = lines[start:lines.index("", start)]
    columns = [len(re.split(r"\s{2,}", row.strip())) for row in rows]
    assert len(rows) == 2 + 6 and columns == [12] * len(rows), rows  # header, rule, six shardings
    assert re.fullmatch(r"-+( {2}-+){11}", rows[1])
    assert sum(row.endswith("yes, recommended") for row in rows) == 1


# -- 8. serving limits per data-parallel rank ---------------------------------------------------------------

@pytest.mark.parametrize(("target", "flag"), [("vllm", "--max-num-seqs"), ("sglang", "--max-running-requests")])
def test_serving_scripts_admit_one_replicas_sequences(target, flag):
    result = run("launch", "-m", "llama-3.1-70b", "-c", "dgx-h100", "--kind", "inference", "--seq-len", "8192",
                 "--global-batch", "64", "--target", target, "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    dp = data["solution"]["plan"]["dp"]
    assert dp > 1  # else the per-rank and the total limit are the same number
    script = data["files"]["serve.sh"]
    assert f"{flag}={64 // dp} " in script and f"{flag}=64 " not in script
