"""`plan serve` under concurrent load, on a real server on localhost (`benchmarks.http_load`, smaller):
every request is answered or refused at once with a 503 — none lost, none a 500 — and the ones the
queue takes are answered."""

from __future__ import annotations

from benchmarks.http_load import run_round


def test_concurrent_requests_are_answered_or_refused_at_once():
    figures = run_round(requests=12, workers=2, queue=3, timeout_s=120)
    assert figures["all_answered_or_refused"], figures["statuses"]
    assert figures["statuses"].get("200", 0) >= 5  # two running and three queued get their plan
    assert figures["statuses"].get("503", 0) >= 1
    assert figures["refused_max_s"] < 5  # a refusal does not wait for a worker
