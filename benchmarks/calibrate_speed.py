"""How long `plan calibrate` takes on 100 measured runs (issue 15: ≤ 3 s).

Run from the repository root:  python -m benchmarks.calibrate_speed [--repeats 3]
Writes benchmarks/results/calibrate_speed.json and .md. The runs are the cost model's own prices of 100
Llama-3.1-8B layouts on 1–16 DGX H100 nodes (tp 1–8, five sequence / micro-batch / recompute settings)
under factors away from the data file's, with 2% log-normal noise and a measured peak each: the fit has
every step-time factor of a dense Hopper run to choose from, and both memory terms to fit. Timed: the
whole `calibrate` call with its 5-fold cross-validation (median of the repeats).
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import time
from pathlib import Path

import numpy as np

from parallelplan.constraints import Efficiency, Plan, Workload, evaluate
from parallelplan.constraints.calibration import MeasuredRun, calibrate
from parallelplan.hardware import load_cluster
from parallelplan.models import load_model

RESULTS = Path(__file__).parent / "results"
SETTINGS = [(2048, 1, "none"), (4096, 1, "full"), (4096, 2, "selective"), (8192, 1, "full"), (8192, 2, "full")]


def runs() -> list[MeasuredRun]:
    truth = Efficiency.default().with_overrides({"gemm": {"hopper": {"bf16": 0.7}}, "memory_bound": 0.7,
                                                 "overlap": {"megatron": {"tp": 0.4, "dp": 0.7}}})
    rng = np.random.default_rng(0)
    model = load_model("llama-3.1-8b")
    out = []
    for nodes, tp, (seq, micro, recompute) in itertools.product((1, 2, 4, 8, 16), (1, 2, 4, 8), SETTINGS):
        cluster = load_cluster("dgx-h100", nodes=nodes)
        workload = Workload(seq_len=seq, global_batch_size=64 * nodes)
        plan = Plan(tp=tp, dp=8 * nodes // tp, micro_batch_size=micro, sequence_parallel=tp > 1, sharding="zero1",
                    recompute=recompute)
        e = evaluate(model, cluster, workload, [plan], efficiency=truth)
        out.append(MeasuredRun(row=len(out) + 1, model="llama-3.1-8b", cluster="dgx-h100", nodes=nodes, plan=plan,
                               workload=workload, step_time_s=float(e.time.step[0] * np.exp(rng.normal(0, 0.02))),
                               peak_memory_bytes=float(e.memory.total[0])))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    measured = runs()
    seconds = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        result = calibrate(measured)
        seconds.append(time.perf_counter() - start)
    fitted = [f.name for f in result.factors if f.fitted]
    summary = {"runs": len(measured), "median_s": statistics.median(seconds), "seconds": seconds, "fitted": fitted,
               "step_error_after_median": result.step_after.median,
               "step_error_cross_validated_median": result.step_cross_validated.median}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "calibrate_speed.json").write_text(json.dumps(summary, indent=2) + "\n")
    text = (f"# plan calibrate on {len(measured)} runs\n\nmedian {summary['median_s']:.2f} s over {args.repeats} runs "
            f"(target ≤ 3 s); fitted {', '.join(fitted)}; step |error| after {100 * result.step_after.median:.1f}%, "
            f"held out {100 * result.step_cross_validated.median:.1f}% (2% noise)\n")
    (RESULTS / "calibrate_speed.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
