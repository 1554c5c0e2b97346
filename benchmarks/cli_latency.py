"""Wall time of `plan` commands as a user runs them: a fresh Python process each time, imports included.

Run from the repository root:  python -m benchmarks.cli_latency [--repeat 10]
Writes benchmarks/results/cli_latency.json and cli_latency.md.
"""

from __future__ import annotations

import argparse
import platform
import shutil
import statistics
import subprocess
import sys
import time

from benchmarks.results_files import write_results

COMMANDS = [
    ["solve", "--model", "llama-3.1-70b", "--cluster", "dgx-h100"],  # the cold-start bar (infeasible: exit 1)
    ["analyze", "--model", "llama-3.1-405b"],
    ["analyze", "--model", "deepseek-v3", "--json"],
    ["estimate", "--model", "llama-3.1-70b", "--cluster", "dgx-h100", "--nodes", "8", "--tp", "8", "--pp", "2",
     "--sequence-parallel", "--sharding", "zero1"],
    ["estimate", "--model", "deepseek-v3", "--cluster", "dgx-h100", "--nodes", "128", "--tp", "2", "--pp", "8",
     "--layers-per-stage", "7,8,8,8,8,8,8,6", "--ep", "64", "--etp", "1", "--sequence-parallel", "--sharding", "zero1",
     "--recompute", "full", "--global-batch", "8192", "--json"],
    ["solve", "--model", "llama-3.1-70b", "--cluster", "dgx-h100", "--nodes", "8", "--seq-len", "8192",
     "--global-batch", "512"],
    ["solve", "--model", "llama-3.1-8b", "--cluster", "dgx-h100", "--nodes", "1", "--top-k", "3", "--json"],
    ["pareto", "--model", "llama-3.1-70b", "--cluster", "dgx-h100", "--nodes", "8", "--seq-len", "8192",
     "--global-batch", "512"],
    ["presets"],
    ["validate", "--model", "llama-3.1-70b", "--tp", "4", "--dp", "1"],
    ["sharding", "--model", "llama-3.1-8b", "--cluster", "dgx-h100", "--nodes", "2", "--global-batch", "64"],
    ["topology", "--cluster", "dgx-h100", "--nodes", "4"],
    ["topology", "--snapshot", "tests/fixtures/topology/dgx-h100", "--nodes", "4"],  # detection, replayed
    ["estimate", "--model", "llama-3.1-8b", "--tp", "8"],  # no --cluster: tries this machine's NVML first
    ["compare", "--model", "llama-3.1-8b", "--model", "llama-3.1-70b", "--cluster", "dgx-h100", "--nodes", "8"],
    ["launch", "--model", "llama-3.1-8b", "--cluster", "dgx-h100", "--nodes", "2", "--target", "megatron"],
    # issue 19's bar: the ladder from a naive plan, with the solver's optimum beside it, within 2 s
    ["optimize", "--model", "llama-3.1-70b", "--cluster", "dgx-h100", "--nodes", "8", "--tp", "8", "--pp", "1", "--dp", "8",
     "--no-sequence-parallel", "--zero-stage", "0", "--recompute", "full", "--precision", "bf16"],
    # issue 20's bar: a serving search within 2 s (aggregated and disaggregated, and the frontier)
    ["serve-plan", "--model", "qwen3-32b", "--cluster", "dgx-h100", "--ttft", "2000", "--tpot", "30"],
    ["serve-plan", "--model", "deepseek-v3", "--cluster", "hgx-h200", "--nodes", "2", "--ttft", "2000", "--tpot", "30",
     "--pareto"],
    ["--help"],
]
ANSWERS = (0, 1)
"""Exit codes of an answer: 0, or 1 for an infeasible plan / a failed validation (also a full answer)."""


def _plan_executable() -> list[str]:
    found = shutil.which("plan")
    return [found] if found else [sys.executable, "-m", "parallelplan"]


def measure(args: list[str], repeat: int) -> dict:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        done = subprocess.run(_plan_executable() + args, capture_output=True, text=True)
        times.append(time.perf_counter() - start)
        if done.returncode not in ANSWERS:
            raise SystemExit(f"plan {' '.join(args)} failed: {done.stderr}")
    return {"command": "plan " + " ".join(args), "repeat": repeat, "median_s": statistics.median(times),
            "min_s": min(times), "max_s": max(times)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=10)
    options = parser.parse_args()
    rows = [measure(args, options.repeat) for args in COMMANDS]
    record = {"machine": f"{platform.machine()}, {platform.python_implementation()} {platform.python_version()}",
              "date": time.strftime("%Y-%m-%d"), "results": rows}
    lines = [f"# CLI wall time ({record['machine']}, {record['date']})", "",
             "| command | median s | min s | max s | runs |", "|---|---:|---:|---:|---:|"]
    lines += [f"| `{r['command']}` | {r['median_s']:.3f} | {r['min_s']:.3f} | {r['max_s']:.3f} | {r['repeat']} |"
              for r in rows]
    write_results("cli_latency", record, lines)


if __name__ == "__main__":
    main()
