"""Shared test setup.

- The tests import the installed package (`parallelplan`), never the repository's folders under names of
  their own: pytest puts the repository root on ``sys.path`` (for `benchmarks` and `tests.*`), where
  ``models/``, ``cli/``, ``solver/``... would otherwise import as top-level packages — a second copy of
  each module, and the very collision with a user's ``models/`` that the namespace exists to prevent. An
  import of one of those names fails here instead, naming the namespaced module to import.
- Commands run without ``--cluster`` use the default preset, not whatever GPU the test machine has (the
  detection tests set PLAN_DETECT to a recorded snapshot themselves).
"""

import sys
from importlib.abc import MetaPathFinder
from pathlib import Path

import pytest

_ROOT = Path(__file__).resolve().parents[1]
_LAYER_FOLDERS = ("api", "models", "hardware", "constraints", "solver", "emitters", "cli", "common")


class _RefuseRepositoryFolders(MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        if path is None and fullname in _LAYER_FOLDERS and (_ROOT / fullname / "__init__.py").is_file():
            installed = "parallelplan" if fullname == "api" else f"parallelplan.{fullname}"
            raise ModuleNotFoundError(f"{fullname!r} is the repository folder installed as {installed!r}; "
                                      f"import {installed}", name=fullname)
        return None


sys.meta_path.insert(0, _RefuseRepositoryFolders())


@pytest.fixture(autouse=True)
def _no_live_detection(monkeypatch):
    monkeypatch.setenv("PLAN_DETECT", "off")
