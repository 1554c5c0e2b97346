"""Shared test setup: commands run without ``--cluster`` use the default preset, not whatever GPU the
test machine has (the detection tests set PLAN_DETECT to a recorded snapshot themselves)."""

import pytest


@pytest.fixture(autouse=True)
def _no_live_detection(monkeypatch):
    monkeypatch.setenv("PLAN_DETECT", "off")
