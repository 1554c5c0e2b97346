"""`plan serve` under load: many concurrent `recommend` requests against a real server on localhost
(uvicorn, real sockets, each search in a worker process of its own), every request answered (200, or
422 for an infeasible question) or cleanly refused (503 at once, when more wait than the queue holds).

Two rounds on the same requests: the server's defaults (every request queued, then answered) and a
tight queue (``--queue`` small: the surplus refused at once, the rest answered). Reported per round:
the answers by HTTP status, p50/p99/max latency (send to answer, queueing included), throughput, and
the peak memory of the server with its fork server and worker processes (psutil: the sum of their
proportional set sizes, so that pages the workers share with the fork server count once; sampled every
50 ms).

Run from the repository root:  python -m benchmarks.http_load [--requests 50] [--workers 2]
Writes benchmarks/results/http_load.json and http_load.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import threading
import time
from collections import Counter

import httpx
import numpy as np
import psutil

from benchmarks.plan_server import plan_server
from benchmarks.results_files import write_results

QUESTIONS = [  # recommend bodies: the issue's headline case first, then smaller and larger ones
    {"model_ref": "llama-3.1-70b", "cluster_ref": "dgx-h100", "nodes": 8},
    {"model_ref": "llama-3.1-8b", "cluster_ref": "dgx-h100", "nodes": 1},
    {"model_ref": "qwen3-32b", "cluster_ref": "dgx-h100", "nodes": 4, "seq_len": 8192},
    {"model_ref": "llama-3.1-405b", "cluster_ref": "dgx-h100", "nodes": 64},
    {"model_ref": "mixtral-8x7b", "cluster_ref": "dgx-a100", "nodes": 2},
]
ANSWERED, REFUSED = (200, 422), (503,)


class PeakMemory:
    """The largest memory of a process and its descendants together (the sum of their proportional set
    sizes, PSS: a page shared by n processes counts 1/n in each), sampled every 50 ms."""

    def __init__(self, pid: int) -> None:
        self.root, self.peak_bytes, self._stop = psutil.Process(pid), 0, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            total = 0
            for process in [self.root, *self.root.children(recursive=True)]:
                try:
                    total += process.memory_full_info().pss
                except psutil.NoSuchProcess:  # a worker that finished between the listing and the read
                    pass
            self.peak_bytes = max(self.peak_bytes, total)
            self._stop.wait(0.05)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *_exc) -> None:
        self._stop.set()
        self._thread.join()


async def _fire(url: str, bodies: list[dict], timeout_s: float) -> list[tuple[int, float]]:
    """Every body posted at once; (status, seconds to the answer) for each."""
    async with httpx.AsyncClient(base_url=url, timeout=timeout_s,
                                 limits=httpx.Limits(max_connections=len(bodies))) as client:
        async def one(body: dict) -> tuple[int, float]:
            start = time.perf_counter()
            answer = await client.post("/api/parallelism/recommend", json=body)
            return answer.status_code, time.perf_counter() - start

        return list(await asyncio.gather(*(one(body) for body in bodies)))


def run_round(requests: int, workers: int, queue: int, timeout_s: float) -> dict:
    """One server, ``requests`` concurrent recommend requests (the questions in turn), its figures."""
    bodies = [QUESTIONS[i % len(QUESTIONS)] for i in range(requests)]
    with plan_server("--workers", str(workers), "--queue", str(queue), "--timeout", str(timeout_s)) as (url, server):
        with PeakMemory(server.pid) as memory:
            start = time.perf_counter()
            outcomes = asyncio.run(_fire(url, bodies, timeout_s + 60))
            wall = time.perf_counter() - start
    statuses = Counter(status for status, _ in outcomes)
    answered = [seconds for status, seconds in outcomes if status in ANSWERED]
    refused = [seconds for status, seconds in outcomes if status in REFUSED]
    return {"requests": requests, "workers": workers, "queue": queue, "timeout_s": timeout_s,
            "statuses": {str(k): v for k, v in sorted(statuses.items())},
            "all_answered_or_refused": sum(statuses[s] for s in ANSWERED + REFUSED) == requests,
            "answered_p50_s": _quantile(answered, 0.5), "answered_p99_s": _quantile(answered, 0.99),
            "answered_max_s": max(answered, default=None), "refused_max_s": max(refused, default=None),
            "wall_s": wall, "answers_per_s": len(answered) / wall, "peak_pss_mib": memory.peak_bytes / 2**20}


def _quantile(values: list[float], q: float) -> float | None:
    return float(np.quantile(values, q)) if values else None


def _seconds(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def _at_least(low: float, kind: type):
    """An argparse type: a number of ``kind`` no smaller than ``low`` (what plan serve accepts)."""
    def parse(text: str):
        value = kind(text)
        if value < low:
            raise argparse.ArgumentTypeError(f"{text}: must be at least {low}")
        return value

    parse.__name__ = kind.__name__  # argparse names it in its error: "invalid int value"
    return parse


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=_at_least(1, int), default=50)
    parser.add_argument("--workers", type=_at_least(1, int), default=2, help="plan serve --workers (searches at once)")
    parser.add_argument("--tight-queue", type=_at_least(0, int), default=10, help="the second round's --queue")
    parser.add_argument("--timeout", type=_at_least(1, float), default=120.0,
                        help="plan serve --timeout (seconds per request)")
    options = parser.parse_args()
    rounds = [run_round(options.requests, options.workers, queue, options.timeout)
              for queue in (max(64, options.requests), options.tight_queue)]
    record = {"machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.python_implementation()} "
                         f"{platform.python_version()}", "date": time.strftime("%Y-%m-%d"),
              "questions": QUESTIONS, "rounds": rounds}
    lines = [f"# plan serve under {options.requests} concurrent recommend requests ({record['machine']}, {record['date']})",
             "", "Each round starts its own server; the requests cycle through "
             + ", ".join(f"{q['model_ref']} on {q['nodes']}×{q['cluster_ref']}" for q in QUESTIONS) + ".", "",
             "| workers | queue | answers by status | all answered or refused | p50 s | p99 s | max s | slowest refusal s "
             "| answers/s | peak memory (PSS) MiB |", "|---:|---:|---|---|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['workers']} | {r['queue']} | {', '.join(f'{k}: {v}' for k, v in r['statuses'].items())} | "
              f"{'yes' if r['all_answered_or_refused'] else 'NO'} | {_seconds(r['answered_p50_s'])} | "
              f"{_seconds(r['answered_p99_s'])} | {_seconds(r['answered_max_s'])} | {_seconds(r['refused_max_s'])} | "
              f"{r['answers_per_s']:.2f} | {r['peak_pss_mib']:.0f} |" for r in rounds]
    write_results("http_load", record, lines)


if __name__ == "__main__":
    main()
