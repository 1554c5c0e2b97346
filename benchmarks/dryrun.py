"""`plan dry-run` at full size on realistic plans: the busiest rank's measured peak (MemTracker, fake tensors
on the CPU) against the estimate, and the seconds the run takes (target: a Llama-3.1-70B rank of TP 8 × PP 4
within 60 s, issue 18); and the small-scale multi-process runs (gloo) with their agreement and time.

Run from the repository root:  python -m benchmarks.dryrun
Writes benchmarks/results/dryrun.{json,md}; exits 1 when a case misses its target or a small-scale run
disagrees with the unsharded model."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from parallelplan.constraints import Plan, Workload
from parallelplan.dryrun import dry_run, dry_run_small
from parallelplan.hardware import load_cluster

RESULTS = Path(__file__).parent / "results"
FULL = [  # (name, model, nodes, plan fields, sequence, global batch, target seconds)
    ("Llama-3.1-70B, TP 8 x PP 4 (stage 0: 20 layers, 4 micro-batches in flight)", "llama-3.1-70b", 4,
     dict(tp=8, pp=4, dp=1), 4096, 32, 60.0),
    ("Llama-3.1-70B, TP 8 x PP 4, full recompute", "llama-3.1-70b", 4, dict(tp=8, pp=4, dp=1, recompute="full"), 4096, 32, 60.0),
    ("Llama-3.1-8B, FSDP over 8", "llama-3.1-8b", 1, dict(dp=8, sharding="fsdp"), 4096, 64, None),
    ("Llama-3.1-8B, ZeRO-1 over 8", "llama-3.1-8b", 1, dict(dp=8, sharding="zero1"), 4096, 64, None),
    ("Llama-3.1-8B, TP 2 x PP 4 (stage 0)", "llama-3.1-8b", 1, dict(tp=2, pp=4, dp=1), 2048, 16, None),
    ("Llama-3.1-70B, TP 8 x PP 4 with sequence parallelism (as DTensor runs it)", "llama-3.1-70b", 4,
     dict(tp=8, pp=4, dp=1, sequence_parallel=True), 4096, 32, 60.0),
    ("Llama-3.1-70B, TP 8 x PP 4 x VPP 2 (stage 0: 2 chunks of 10 layers, 11 chunk forwards in flight), full recompute",
     "llama-3.1-70b", 4, dict(tp=8, pp=4, vpp=2, dp=1, recompute="full"), 4096, 32, 60.0),
    ("Qwen3-30B-A3B, EP 8 with FSDP over 8 (48 layers, balanced all-to-all)", "qwen3-30b-a3b", 1,
     dict(dp=8, ep=8, sharding="fsdp"), 4096, 64, None),
    ("Qwen3-30B-A3B, EP 8 with ZeRO-1 over 16, full recompute", "qwen3-30b-a3b", 2,
     dict(dp=16, ep=8, sharding="zero1", recompute="full"), 4096, 64, None),
]
SMALL = [("tp 2 x dp 2", "llama-3.1-8b", dict(tp=2, dp=2)),
         ("tp 2 x dp 2, sequence parallel", "llama-3.1-8b", dict(tp=2, dp=2, sequence_parallel=True)), ("FSDP over 4", "llama-3.1-8b", dict(dp=4, sharding="fsdp")),
         ("pp 2", "llama-3.1-8b", dict(pp=2, dp=1)), ("ep 2 (Qwen3-30B-A3B)", "qwen3-30b-a3b", dict(dp=2, ep=2)),
         ("ep 2 with FSDP over 4 (Qwen3-30B-A3B)", "qwen3-30b-a3b", dict(dp=4, ep=2, sharding="fsdp"))]
SMALL_TARGET_S = 180.0


def full_case(name, model, nodes, fields, seq_len, batch, target) -> dict:
    started = time.perf_counter()
    report = dry_run(model, load_cluster("dgx-h100", nodes=nodes), Plan(**fields),
                     Workload(kind="pretrain", seq_len=seq_len, global_batch_size=batch))
    seconds = time.perf_counter() - started
    return {"name": name, "seconds": round(seconds, 1), "target_s": target, "measured_gib": round(report.measured_peak / 2**30, 2),
            "estimated_gib": round(report.estimated_peak / 2**30, 2), "deviation": round(report.deviation, 4),
            "verdict": report.verdict, "meets_target": target is None or seconds <= target}


def small_case(name, model, fields) -> dict:
    plan = Plan(**fields)
    report = dry_run_small(model, load_cluster("dgx-h100", gpus=plan.tp * plan.pp * plan.dp), plan,
                           Workload(kind="pretrain", seq_len=4096, global_batch_size=8 * plan.dp))
    return {"name": name, "seconds": round(report.seconds, 1), "loss_error": report.loss_error,
            "gradient_error": report.gradient_error, "passed": report.passed}


def main() -> None:
    full = [full_case(*case) for case in FULL]
    small = [small_case(*case) for case in SMALL]
    total_small = sum(r["seconds"] for r in small)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "dryrun.json").write_text(json.dumps({"full": full, "small": small, "small_total_s": total_small}, indent=2) + "\n")
    lines = ["# plan dry-run: measured against estimated, and how long it takes", "",
             "`python -m benchmarks.dryrun` (full size: fake tensors and MemTracker on the CPU; small scale: one gloo "
             "process per rank on a reduced model)", "",
             "| full-size rank | seconds | measured GiB | estimated GiB | estimate vs measured | verdict |",
             "|---|---|---|---|---|---|",
             *[f"| {r['name']} | {r['seconds']} | {r['measured_gib']} | {r['estimated_gib']} | {100 * r['deviation']:+.1f}% | {r['verdict']} |"
               for r in full], "",
             "| small-scale run | seconds | loss difference | largest gradient difference | passed |", "|---|---|---|---|---|",
             *[f"| {r['name']} | {r['seconds']} | {r['loss_error']:.1e} | {r['gradient_error']:.1e} | {r['passed']} |" for r in small],
             "", f"Small-scale runs together: {total_small:.1f} s (target {SMALL_TARGET_S:.0f} s)."]
    (RESULTS / "dryrun.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    failed = [r["name"] for r in full if not r["meets_target"]] + [r["name"] for r in small if not r["passed"]]
    if failed or total_small > SMALL_TARGET_S:
        print(f"missed: {failed or 'the small-scale total'}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
