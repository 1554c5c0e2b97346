"""The serving model (`constraints.serving.serve`) against published serving measurements
(``benchmarks/data/published_serving.json``): predicted TTFT, TPOT / inter-token latency and output
tokens/s beside the measured ones, and the median |error| of each.

Run from the repository root:  python -m benchmarks.serving_published
Writes benchmarks/results/serving_published.json and serving_published.md.

Each point is priced as its source ran it: the layout (tp, one replica per instance), the weights' and
the KV cache's dtype, the lengths, and the load —
- an offered request rate: the open loop at that rate; a benchmark sends a finite number N of requests,
  so its output tokens/s is N·osl over the time to send them and drain the last, N/λ + latency (the
  steady state's latency), which the prediction follows; a rate above what the replica serves saturates
  it (only its throughput is compared: the measured TTFT then is the queue's);
- all requests at once (``inf``, offline sweeps): the closed loop at as many running requests as fit;
  only the throughput is compared;
- the DeepSeek-R1 runs sent 200 requests at 10/s, the same finite-run correction.
MLPerf's Llama-2-70B rows publish no input lengths in their logs, so they are not priced.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path

from benchmarks.results_files import write_results
from parallelplan import Plan, load_cluster, load_model
from parallelplan.constraints.serving import Traffic, serve

DATA = Path(__file__).parent / "data" / "published_serving.json"
CLUSTERS = {"h100-sxm-80gb": "dgx-h100", "h200-sxm-141gb": "hgx-h200"}
"""The cluster preset of each GPU the data names (8-GPU nodes; a layout of fewer GPUs uses part of one)."""
REQUESTS = {"trtllm-0.14-online": 500, "skypilot": 200}
"""Requests each benchmark sent (the series' ``load``), by id prefix."""


@dataclass
class Row:
    series: str
    load: str
    isl: int
    osl: int
    measured_ttft_ms: float | None
    predicted_ttft_ms: float | None
    measured_tpot_ms: float | None
    predicted_tpot_ms: float | None
    measured_tokens_per_s: float
    predicted_tokens_per_s: float
    saturated: bool


def _plan(series: dict) -> Plan:
    return Plan(tp=series["tp"], precision="fp8" if series["weights"] == "fp8" else "bf16",
                kv_cache_dtype="fp8" if series["kv_cache"] == "fp8" else "auto")


def _requests(series_id: str) -> int | None:
    return next((n for prefix, n in REQUESTS.items() if series_id.startswith(prefix)), None)


def rows() -> list[Row]:
    out = []
    for series in json.loads(DATA.read_text())["series"]:
        if "scenario" in series["points"][0]:
            continue
        model, cluster, plan = load_model(series["model"]), load_cluster(CLUSTERS[series["gpu"]]), _plan(series)
        sent = _requests(series["id"])
        offline = series["load"].startswith(("offline", "request rate inf"))
        for point in series["points"]:
            isl, osl, rate = point["isl"], point["osl"], point.get("request_rate", 10.0 if sent == 200 else None)
            at_once = offline or rate == "inf"
            load = "all at once" if at_once else f"{rate:g} req/s"
            traffic = Traffic(isl=isl, osl=osl, concurrency=10**6) if at_once else Traffic(isl=isl, osl=osl, request_rate=rate)
            est = serve(model, cluster, plan, traffic)
            tokens = est.output_tokens_per_s
            if sent and not at_once:  # a finite run: N requests sent over N/λ, the last one done a latency later
                tokens = sent * osl / (sent / rate + est.latency_s) if not est.saturated else tokens
            measured_tpot = point.get("tpot_ms_mean") or point.get("itl_ms_mean")
            compare_latency = not at_once and not est.saturated
            out.append(Row(series["id"], load, isl, osl, point.get("ttft_ms_mean"),
                           est.ttft_s * 1e3 if compare_latency else None, measured_tpot,
                           est.tpot_s * 1e3 if compare_latency else None, point["output_tokens_per_s"],
                           tokens, est.saturated))
    return out


def _errors(pairs: list[tuple[float | None, float | None]]) -> list[float]:
    return [abs(p / m - 1) for m, p in pairs if m and p]


def main() -> None:
    table = rows()
    metrics = {"TTFT": [(r.measured_ttft_ms, r.predicted_ttft_ms) for r in table],
               "TPOT / ITL": [(r.measured_tpot_ms, r.predicted_tpot_ms) for r in table],
               "output tokens/s": [(r.measured_tokens_per_s, r.predicted_tokens_per_s) for r in table]}
    summary = {name: _errors(pairs) for name, pairs in metrics.items()}
    lines = ["# The serving model against published measurements", "",
             "| metric | points | median abs. error | p90 |", "|---|---:|---:|---:|"]
    for name, errors in summary.items():
        p90 = statistics.quantiles(errors, n=10)[-1] if len(errors) > 1 else errors[0]
        lines.append(f"| {name} | {len(errors)} | {statistics.median(errors):.1%} | {p90:.1%} |")
    lines += ["", "| series | load | ISL/OSL | TTFT ms measured / predicted | TPOT ms measured / predicted | "
                  "output tok/s measured / predicted |", "|---|---|---|---|---|---|"]

    def pair(m: float | None, p: float | None, digits: int) -> str:
        return f"{m if m is not None else '–'} / {f'{p:.{digits}f}' if p is not None else '–'}"

    for r in table:
        lines.append(f"| {r.series} | {r.load}{' (saturated)' if r.saturated else ''} | {r.isl}/{r.osl} | "
                     f"{pair(r.measured_ttft_ms, r.predicted_ttft_ms, 0)} | {pair(r.measured_tpot_ms, r.predicted_tpot_ms, 1)} | "
                     f"{pair(r.measured_tokens_per_s, r.predicted_tokens_per_s, 0)} |")
    write_results("serving_published", {"summary": {k: {"points": len(v), "median": statistics.median(v)}
                                                    for k, v in summary.items()},
                                        "rows": [asdict(r) for r in table]}, lines)


if __name__ == "__main__":
    main()
