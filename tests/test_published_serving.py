"""The published serving measurements (``benchmarks/data/published_serving.json``, the validation set of
the serving model): every series names a source and a setup our presets can price, every point its
lengths or scenario and a measured throughput."""

from __future__ import annotations

import json
from pathlib import Path

from parallelplan.hardware import load_gpu
from parallelplan.models import load_model

DATA = json.loads((Path(__file__).parents[1] / "benchmarks" / "data" / "published_serving.json").read_text())


def test_every_series_is_sourced_and_priceable():
    ids = [s["id"] for s in DATA["series"]]
    assert len(ids) == len(set(ids))
    for series in DATA["series"]:
        assert series["source"].startswith("https://") and series["locator"], series["id"]
        load_model(series["model"])  # our presets: a name that fails here is a typo
        load_gpu(series["gpu"])
        assert series["gpus"] == series["tp"] * series["pp"] or "instances" in series["load"], series["id"]
        for point in series["points"]:
            assert ("isl" in point and "osl" in point) or "scenario" in point, series["id"]
            throughput = point.get("output_tokens_per_s") or point.get("tokens_per_s")
            assert throughput and throughput > 0, (series["id"], point)
            assert all(v > 0 for k, v in point.items() if k.endswith("_ms_mean") or k.endswith("_ms_p50")), point
