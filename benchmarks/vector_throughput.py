"""Plan evaluations per second of the vectorized cost model (`constraints.evaluate`), the rate the solver's
tables and the exhaustive oracle run at.

Run from the repository root:  python -m benchmarks.vector_throughput
Writes benchmarks/results/vector_throughput.{json,md}. For each case, a grid of plans (`PlanArrays.product`
over the degrees, micro-batch, recompute, sharding and schedule choices a planner searches) is evaluated
in one call — memory per stage, step time with every communication term, fits — and timed as the best of
several repeats (wall clock, this machine). Building the grid is not timed; it is done once per search.
The issue's bar: ≥ 200,000 plan evaluations per second on a 2-core machine.
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

from parallelplan.constraints import PlanArrays, Workload, evaluate
from parallelplan.hardware import load_cluster
from parallelplan.models import load_model

RESULTS = Path(__file__).parent / "results"
REPEATS = 5

CASES = {
    "llama-3.1-70b on 8 x dgx-h100 (dense)": dict(
        model="llama-3.1-70b", cluster="dgx-h100", nodes=8,
        workload=Workload(seq_len=8192, global_batch_size=512),
        grid=dict(tp=[1, 2, 4, 8], pp=[1, 2, 4, 8], dp=[1, 2, 4, 8, 16, 32, 64], cp=[1, 2],
                  micro_batch_size=[1, 2, 4], vpp=[1, 2, 5], sequence_parallel=[False, True],
                  recompute=["none", "selective", "full"], sharding=["none", "zero1", "zero2", "fsdp"],
                  precision=["bf16", "fp8"])),
    "deepseek-v3 on 32 x dgx-h100 (MoE, MLA)": dict(
        model="deepseek-v3", cluster="dgx-h100", nodes=32,
        workload=Workload(seq_len=4096, global_batch_size=2048),
        grid=dict(tp=[1, 2, 4, 8], pp=[1, 4, 8, 16], dp=[2, 4, 8, 16, 32, 64], ep=[8, 16, 32, 64],
                  micro_batch_size=[1, 2], vpp=[1, 2], sequence_parallel=[True],
                  recompute=["none", "selective", "full"], sharding=["zero1", "fsdp"], precision=["bf16", "fp8"])),
}


def measure(case: dict) -> dict:
    model = load_model(case["model"])
    cluster = load_cluster(case["cluster"], nodes=case["nodes"])
    plans = PlanArrays.product(**case["grid"])
    evaluate(model, cluster, case["workload"], plans.take(slice(0, 1000)))  # warm caches
    best = float("inf")
    for _ in range(REPEATS):
        start = time.perf_counter()
        result = evaluate(model, cluster, case["workload"], plans)
        best = min(best, time.perf_counter() - start)
    return {"plans": len(plans), "seconds": best, "plans_per_second": len(plans) / best,
            "fitting": int(result.fits.sum())}


def main() -> None:
    machine = {"cpus": os.cpu_count(), "python": platform.python_version(), "processor": platform.processor() or platform.machine()}
    results = {name: measure(case) for name, case in CASES.items()}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "vector_throughput.json").write_text(json.dumps({"machine": machine, "cases": results}, indent=2) + "\n")
    lines = [f"# Vectorized cost model throughput\n\nMachine: {machine['cpus']} CPUs, Python {machine['python']}; "
             f"best of {REPEATS} runs.\n", "| case | plans | seconds | plans/s | plans that fit |", "|---|---:|---:|---:|---:|"]
    for name, r in results.items():
        lines.append(f"| {name} | {r['plans']:,} | {r['seconds']:.3f} | {r['plans_per_second']:,.0f} | {r['fitting']:,} |")
    (RESULTS / "vector_throughput.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
