"""Workloads beyond pre-training on realistic cases: each answers within its target (2 s, issue 17) and
its plan equals the exhaustive oracle's where the space is small enough to enumerate. PPO and GRPO steps
(`solver.solve_rl`, several roles placed and planned) are timed the same way; their choices are checked
against brute force in tests/test_rl.py on spaces small enough to enumerate. The cheapest-cluster
search (`solver.cheapest_cluster`, the ``cost`` profile) is timed beside them, without a target: it solves every
priced preset at every node count its bound does not rule out.

Run from the repository root:  python -m benchmarks.workloads
Writes benchmarks/results/workloads.{json,md}; exits 1 when a case misses its target or disagrees with
the oracle. Each case is `benchmarks.solver_scaling.run_case` (median of its repeats, in-process solve).
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from benchmarks.solver_scaling import Case, Result, run_case

RESULTS = Path(__file__).parent / "results"
TARGET_S = 2.0

CASES = [
    Case("llama-3.1-8b LoRA (r=16, all-linear) on one 8-GPU H100 node", "llama-3.1-8b", 8, 4096, 64, "finetune",
         kind="finetune", peft={"method": "lora"}, target_s=TARGET_S),
    Case("llama-3.1-8b QLoRA (r=64) on one 8-GPU H100 node", "llama-3.1-8b", 8, 4096, 64, "finetune",
         kind="finetune", peft={"method": "qlora", "rank": 64}, target_s=TARGET_S),
    Case("llama-3.1-70b QLoRA on one H100", "llama-3.1-70b", 1, 2048, 16, "finetune",
         kind="finetune", peft={"method": "qlora"}, target_s=TARGET_S),
    Case("llama-3.1-70b LoRA on one H100 (does not fit: says why)", "llama-3.1-70b", 1, 2048, 16, "finetune",
         kind="finetune", peft={"method": "lora"}, target_s=TARGET_S),
    Case("llama-3.1-70b LoRA on 2 H100 nodes", "llama-3.1-70b", 16, 4096, 128, "finetune",
         kind="finetune", peft={"method": "lora"}, target_s=TARGET_S),
    Case("llama-3.1-8b DPO (reference copy) on one 8-GPU H100 node", "llama-3.1-8b", 8, 2048, 64, "rlhf",
         kind="rlhf", peft=None, target_s=TARGET_S),
    Case("llama-3.1-70b DPO with LoRA on 2 H100 nodes", "llama-3.1-70b", 16, 4096, 64, "rlhf",
         kind="rlhf", peft={"method": "lora"}, target_s=TARGET_S),
    Case("llama-3.1-8b at 1M tokens per sequence (CP) on 64 H100", "llama-3.1-8b", 64, 1_048_576, 4, "long-context",
         target_s=TARGET_S),
    Case("llama-3.1-8b SFT, 600-token examples packed into 4096-token sequences, one 8-GPU H100 node", "llama-3.1-8b",
         8, 4096, 64, "finetune", kind="finetune", workload_fields={"example_len": 600, "packing": True},
         target_s=TARGET_S),
    Case("llama-3.1-8b at 128K tokens on one 8-GPU H100 node: offload activations or recompute (custom stack)",
         "llama-3.1-8b", 8, 131_072, 8, "long-context", kind="finetune", workload_fields={"stack": "custom"},
         target_s=TARGET_S),
    Case("qwen3-30b-a3b LoRA (attention) on one 8-GPU H100 node", "qwen3-30b-a3b", 8, 4096, 64, "finetune",
         kind="finetune", peft={"method": "lora", "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]},
         target_s=TARGET_S),
]


@dataclass(frozen=True)
class RLCase:
    """A PPO / GRPO step: the actor's model, DGX H100 nodes, prompts of ``prompt_len`` tokens, the rollout."""

    name: str
    model: str
    nodes: int
    algorithm: str
    prompt_len: int
    prompts: int
    rollout: dict


RL_CASES = [
    RLCase("PPO, llama-3.1-70b actor and critic (and reference, reward) on 8 H100 nodes — OpenRLHF's PPO defaults",
           "llama-3.1-70b", 8, "ppo", 1024, 1024, {"response_len": 1024, "mini_batch_size": 128}),
    RLCase("GRPO, qwen3-30b-a3b on 4 H100 nodes — verl's run_qwen3moe-30b_megatron.sh", "qwen3-30b-a3b", 4, "grpo",
           1024, 64, {"response_len": 2048, "group_size": 5}),
    RLCase("GRPO, llama-3.1-8b on one H100 node, 8 responses of 1024 tokens", "llama-3.1-8b", 1, "grpo", 1024, 128,
           {"response_len": 1024}),
]


def time_rl(case: RLCase, repeats: int = 3) -> dict:
    """Median seconds of `solve_rl` on the case, and its answer."""
    import statistics
    import time

    from parallelplan.constraints import Rollout, Workload
    from parallelplan.hardware import load_cluster
    from parallelplan.models import load_model
    from parallelplan.solver import solve_rl

    model, cluster = load_model(case.model), load_cluster("dgx-h100", nodes=case.nodes)
    work = Workload(kind="rlhf", algorithm=case.algorithm, seq_len=case.prompt_len, global_batch_size=case.prompts,
                    rollout=Rollout(**case.rollout))
    times, found = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        found = solve_rl(model, cluster, work)
        times.append(time.perf_counter() - started)
    median = statistics.median(times)
    return {"name": case.name, "median_s": median, "meets_target": median <= TARGET_S, "placement": found.placement,
            "step_time_s": found.step_time_s, "phases": found.phases, "optimal": found.optimal,
            "generated_tokens_per_s": found.generated_tokens_per_s,
            "roles": {r.role: f"{r.gpus} GPUs, tp {r.plan.tp} pp {r.plan.pp} dp {r.plan.dp}" + (f" ep {r.plan.ep}" if r.plan.ep > 1 else "")
                      for r in found.roles}}


def _rl_row(r: dict) -> str:
    phases = " + ".join(f"{k} {v:.1f}" for k, v in r["phases"].items())
    return (f"| {r['name']} | {r['median_s']:.2f} | {r['placement']} | {r['step_time_s']:.1f} s = {phases} | "
            f"{r['generated_tokens_per_s']:,.0f} | {'yes' if r['optimal'] else 'NO'} |")


def _row(r: Result) -> str:
    plan = r.plan or "infeasible"
    oracle = "-" if r.agrees is None else ("yes" if r.agrees else "NO")
    return f"| {r.name} | {r.median_s:.2f} | {plan} | {r.tokens_per_s or 0:,.0f} | {oracle} |"


def time_cheapest(repeats: int = 3) -> tuple[float, str]:
    """Median seconds of `cheapest` for Llama-3.1-8B pre-training on 100B tokens within a week, and its answer."""
    import statistics
    import time

    from parallelplan.constraints import Workload
    from parallelplan.models import load_model
    from parallelplan.solver.cheapest_cluster import cheapest

    times, found = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        found = cheapest(load_model("llama-3.1-8b"), Workload(seq_len=8192, global_batch_size=512), tokens=1e11,
                         deadline_hours=168)
        times.append(time.perf_counter() - started)
    best = found.best
    return statistics.median(times), f"{best.cluster} x {best.nodes} nodes, ${best.total_usd:,.0f}, {best.hours:.0f} h"


def main() -> None:
    results = [run_case(case) for case in CASES]
    rl_results = [time_rl(case) for case in RL_CASES]
    cheapest_s, cheapest_answer = time_cheapest()
    failures = [r.name for r in results if not r.meets_target or r.agrees is False]
    failures += [r["name"] for r in rl_results if not r["meets_target"] or not r["optimal"]]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "workloads.json").write_text(json.dumps({"cases": [asdict(r) for r in results], "rl": rl_results},
                                                       indent=2) + "\n")
    lines = ["# Workloads beyond pre-training: time to a proved plan", "",
             f"`python -m benchmarks.workloads` (target {TARGET_S:g} s per case; oracle = exhaustive enumeration agrees)", "",
             "| case | median s | plan | tokens/s | oracle |", "|---|---|---|---|---|", *map(_row, results), "",
             "| RL step | median s | placement | step (seconds per phase) | generated tokens/s | proved |",
             "|---|---|---|---|---|---|", *map(_rl_row, rl_results), "",
             f"Cheapest cluster for Llama-3.1-8B, 100B tokens within 168 h (9 priced presets, up to 64 nodes): "
             f"{cheapest_s:.2f} s, {cheapest_answer}."]
    (RESULTS / "workloads.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    if failures:
        print("missed the target or disagreed with the oracle: " + "; ".join(failures), file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
