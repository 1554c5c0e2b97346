"""`optimize()` on typical starting plans: the rungs it climbs, how far its compound plan stays from the
solver's proved optimum (the gap the greedy, one-change-at-a-time ladder leaves), and its time in-process.

Run from the repository root:  python -m benchmarks.optimize_ladders
Writes benchmarks/results/optimize_ladders.json and optimize_ladders.md.
"""

from __future__ import annotations

import time

from benchmarks.results_files import write_results
from parallelplan import Peft, Plan, Workload, load_cluster, load_model, optimize

CASES = [
    ("Llama 3.1 70B, naive (issue 19)", "llama-3.1-70b", 8, Workload(seq_len=4096, global_batch_size=1024),
     Plan(tp=8, dp=8, recompute="full"), "throughput"),
    ("Llama 3.1 70B, one node (the seed's example)", "llama-3.1-70b", 1, Workload(seq_len=4096, global_batch_size=256),
     Plan(tp=8), "throughput"),
    ("Llama 3.1 70B, naive, memory", "llama-3.1-70b", 8, Workload(seq_len=4096, global_batch_size=1024),
     Plan(tp=8, dp=8, recompute="full"), "memory"),
    ("Llama 3.1 70B, naive, cost", "llama-3.1-70b", 8, Workload(seq_len=4096, global_batch_size=1024),
     Plan(tp=8, dp=8, recompute="full"), "cost"),
    ("Mixtral 8x7B, tp 2 ep 8", "mixtral-8x7b", 2, Workload(seq_len=4096, global_batch_size=512),
     Plan(tp=2, dp=8, ep=8), "throughput"),
    ("Llama 3.1 8B LoRA", "llama-3.1-8b", 1, Workload(kind="finetune", seq_len=4096, global_batch_size=64, peft=Peft()),
     Plan(dp=8), "throughput"),
    ("Llama 3.1 8B DPO", "llama-3.1-8b", 1, Workload(kind="rlhf", algorithm="dpo", seq_len=4096, global_batch_size=64),
     Plan(dp=8), "throughput"),
    ("Llama 3.1 8B, 128K tokens, cp 8", "llama-3.1-8b", 1, Workload(seq_len=131072, global_batch_size=8),
     Plan(cp=8), "throughput"),
]


def main() -> None:
    rows = []
    for name, model_name, nodes, workload, plan, goal in CASES:
        model, cluster = load_model(model_name), load_cluster("dgx-h100", nodes=nodes)
        started = time.perf_counter()
        ladder = optimize(model, cluster, workload, plan, goal=goal)
        seconds = time.perf_counter() - started
        rows.append({"case": name, "goal": goal, "seconds": seconds, "rungs": [r.change for r in ladder.rungs],
                     "start_step_s": ladder.start.step_time_s, "final_step_s": ladder.final.step_time_s,
                     "final_runs": not ladder.final.violations,
                     "gap": ladder.gap, "optimum_proved": ladder.optimum_proved, "optimum_note": ladder.optimum_note})
    record = {"date": time.strftime("%Y-%m-%d"), "cases": rows}
    lines = [f"# plan optimize ladders ({record['date']}, in-process, imports excluded)", "",
             "| case | goal | rungs | runs at the end | gap to the optimum | s |", "|---|---|---|---|---:|---:|"]
    for r in rows:
        gap = f"{100 * r['gap']:.1f}%" if r["gap"] is not None else (r["optimum_note"] or "-")[:60]
        lines.append(f"| {r['case']} | {r['goal']} | {'; '.join(r['rungs']) or '-'} | {'yes' if r['final_runs'] else 'no'} | "
                     f"{gap} | {r['seconds']:.2f} |")
    write_results("optimize_ladders", record, lines)


if __name__ == "__main__":
    main()
