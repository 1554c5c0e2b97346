"""The distribution installs one import name, `parallelplan`, and works next to a user's own `models/`,
`cli/` and `solver/` packages: a real wheel (``pip wheel .``, with build isolation, as a user builds it),
installed into a fresh virtual environment with its dependencies, run from a directory holding those
packages and with it on ``PYTHONPATH``."""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCE_FOLDERS = ("api", "models", "hardware", "constraints", "solver", "emitters", "cli", "common")
OLD_TOP_LEVEL = {*SOURCE_FOLDERS, "plan_common"}

def _run(args: list, **kwargs) -> subprocess.CompletedProcess:
    done = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=900, **kwargs)
    assert done.returncode == 0, f"{' '.join(map(str, args))} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """Built from a copy of the sources without build leftovers (setuptools would package a stale
    ``build/lib``), as from a fresh clone."""
    source, out = tmp_path_factory.mktemp("source") / "parallelplan", tmp_path_factory.mktemp("wheel")
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".*", "build", "dist", "*.egg-info", "__pycache__"))
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--wheel-dir", out, source])
    (found,) = out.glob("parallelplan-*.whl")
    return found


@pytest.fixture(scope="module")
def fresh_venv(wheel, tmp_path_factory) -> Path:
    venv = tmp_path_factory.mktemp("venv")
    _run([sys.executable, "-m", "venv", venv])
    _run([venv / "bin" / "python", "-m", "pip", "install", "--quiet", wheel])
    return venv


@pytest.fixture
def user_project(tmp_path) -> Path:
    """A training repository's own top-level packages, named like our layers."""
    for name in ("models", "cli", "solver"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text("OWNER = 'user'\n\ndef load_model(name):\n    return 'user ' + name\n")
    return tmp_path


@pytest.mark.slow
def test_wheel_installs_only_the_namespace(wheel):
    with zipfile.ZipFile(wheel) as archive:
        record = next(n for n in archive.namelist() if n.endswith(".dist-info/RECORD"))
        paths = [line.split(",")[0] for line in archive.read(record).decode().splitlines() if line]
        entry_points = archive.read(record.replace("RECORD", "entry_points.txt")).decode()
    top_level = {path.split("/")[0] for path in paths}
    assert top_level == {"parallelplan", record.split("/")[0]}, top_level
    # every layer and its data files are inside the namespace
    for expected in ("parallelplan/__init__.py", "parallelplan/__main__.py", "parallelplan/models/presets/llama-3.1-70b.json",
                     "parallelplan/hardware/data/clusters.json", "parallelplan/hardware/detect/probe.py",
                     "parallelplan/constraints/data/efficiency.json", "parallelplan/emitters/data/allowlists.json",
                     "parallelplan/solver/search.py", "parallelplan/cli/main.py", "parallelplan/common/lazy.py"):
        assert expected in paths, expected
    assert "plan = parallelplan.cli.main:main" in entry_points


@pytest.mark.slow
def test_cli_and_api_next_to_a_users_own_packages(fresh_venv, user_project):
    env = {**os.environ, "PYTHONPATH": str(user_project), "PLAN_DETECT": "off"}
    env.pop("VIRTUAL_ENV", None)
    solved = _run([fresh_venv / "bin" / "plan", "solve", "--model", "llama-3.1-8b", "--cluster", "dgx-h100", "--json"],
                  cwd=user_project, env=env)
    solution = json.loads(solved.stdout)
    assert solution["optimal"] is True and solution["estimate"]["fits"] is True

    script = user_project / "use_both.py"
    script.write_text(textwrap.dedent("""
        import json, models, cli, solver
        import parallelplan
        from parallelplan import load_model, load_cluster, Workload, solve, emit, estimate
        assert (models.OWNER, cli.OWNER, solver.OWNER) == ("user", "user", "user")
        assert models.load_model("x") == "user x"
        model = load_model("llama-3.1-8b")
        sol = solve(model, load_cluster("dgx-h100"), Workload(seq_len=4096, global_batch_size=64))
        again = estimate(model, load_cluster("dgx-h100"), sol.plan, Workload(seq_len=4096, global_batch_size=64))
        files = emit(sol, "torchrun")
        print(json.dumps({"params": model.total_params, "step": sol.estimate.step_time_s, "again": again.step_time_s,
                          "files": sorted(files), "where": parallelplan.__file__, "version": parallelplan.__version__}))
    """))
    used = json.loads(_run([fresh_venv / "bin" / "python", script], cwd=user_project, env=env).stdout)
    assert used["params"] == 8_030_261_248  # Meta's model card: 8.03B
    assert used["step"] == pytest.approx(used["again"])
    assert used["files"] and Path(used["where"]).is_relative_to(fresh_venv)
    version = _run([fresh_venv / "bin" / "python", "-m", "parallelplan", "--version"], cwd=user_project, env=env)
    assert version.stdout.startswith(f"plan, version {used['version']}")


def test_no_module_imports_a_layer_by_its_old_top_level_name():
    """Every import in the repository (package, tests, benchmarks) goes through `parallelplan`."""
    offending = []
    for path in sorted(p for folder in (*SOURCE_FOLDERS, "tests", "benchmarks") for p in (ROOT / folder).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            names = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                     else [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else [])
            offending += [f"{path.relative_to(ROOT)}:{node.lineno}: {name}" for name in names
                          if name.split(".")[0] in OLD_TOP_LEVEL]
    assert not offending, offending
