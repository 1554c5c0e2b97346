"""`benchmarks.peers` runs Calculon in its own process on the cases it validates itself with, and our
cost model on the same cases: the harness must reproduce Calculon's own validation figure (so both price
the same inputs), and our error on the Korthikanti et al. 2022 runs must not grow."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from benchmarks.peers import DEFAULT_CALCULON, rows, summary

FOLDER = Path(os.environ.get("PLAN_CALCULON") or DEFAULT_CALCULON)

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not (FOLDER / "bin" / "calculon").is_file(), reason=f"Calculon is not in {FOLDER}")]


def test_both_models_price_the_korthikanti_runs_and_calculon_matches_its_own_validation():
    all_rows = rows(FOLDER)
    published = [r for r in all_rows if r.published_s is not None]
    assert len(published) == 8 and {r.recompute for r in published} == {"full", "attn_only"}
    stats = summary(all_rows)
    # Calculon's `llm-validation` prints "Ave 3.65%" for these eight rows (Table 5 of Korthikanti et al.)
    assert stats["calculon_mean_abs_error"] == pytest.approx(0.0365, abs=5e-4)
    assert all(r.ours_s > 0 and r.calculon_s > 0 for r in all_rows)
    # today's figure is 3.85% (issue 15 aims for ≤ 3.5%); a change that makes it worse fails here
    assert stats["ours_mean_abs_error"] <= 0.04
