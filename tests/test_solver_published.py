"""The solver never recommends worse than the experts under our own model (benchmarks/solver_vs_published.py):
for every published run with a complete layout, either the layout breaks a named rule of our model (listed
with the reason), or it lies in the search space and the solver's proved optimum is predicted at least as
fast."""

from __future__ import annotations

import pytest

from benchmarks.published_runs import runs
from benchmarks.solver_vs_published import compare, summary


@pytest.mark.slow
def test_solver_is_at_least_as_fast_as_every_feasible_published_layout():
    rows = [compare(run) for run in runs()]
    used = [r for r in rows if r.excluded is None]
    assert len(used) >= 80
    for r in used:
        if not r.feasible:
            assert r.broken_rules, f"run {r.id}: infeasible without a reason"
            continue
        assert r.in_space, f"run {r.id}: the published plan is outside the search space"
        assert r.proved, f"run {r.id}: optimum not proved"
        assert r.solver_tokens_per_s >= r.published_tokens_per_s * (1 - 1e-9), f"run {r.id}: {r.speedup:+.2%}"
    stats = summary(rows)
    assert stats["compared"] == stats["published_feasible"] == stats["published_in_space"] >= 60
    assert stats["solver_at_least_as_fast"] == stats["compared"]
