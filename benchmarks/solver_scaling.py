"""Solve time, proof status and the exhaustive oracle's time, as the problem grows — with a committed
baseline and a regression flag.

Run from the repository root:  python -m benchmarks.solver_scaling [--check] [--write-baseline]
Writes benchmarks/results/solver_scaling.{json,md}. ``--check`` exits 1 when a case regressed against
benchmarks/results/solver_scaling_baseline.json; ``--write-baseline`` replaces that baseline.

Cases (every plan variable searched over its default domain, `solver.space`, unless a case says
otherwise; objective throughput):
- fixed: Llama-3.1-70B on 8 H100 (the default domains hold no plan that fits — 1.1 TB of model states —
  so the case opens CPU offload and 8-bit AdamW; the default-domain request is timed too, as an infeasible
  diagnosis), on 64 H100; Llama-3.1-405B on 16,384 H100 (Llama 3's scale: 16M-token batches of 8K
  sequences); DeepSeek-V3 on 2,048 H100 with expert parallelism (DeepSeek-V3 report §4.2: 4K sequences,
  batch ramped to 15,360); Llama-3.1-70B at 128K context on 64 H100 (context parallelism);
- scaling: Llama-3.1-8B and Llama-3.1-70B from 8 to 16,384 H100 (batch 4M tokens, or 1,024 tokens per
  GPU when larger — Llama 3 trained 405B with 16M tokens on 16K GPUs; 70B on 8 GPUs as in the fixed case);
- generated: a hypothesis family (derandomised, so the same instances every run) of preset models,
  cluster presets, GPU counts 8 … 16,384 and sequence lengths 2K … 32K;
- pareto: the non-dominated set over throughput and memory headroom, and over throughput, cost and GPUs;
- composed: two and three models sharing 8 nodes (`solver.place`), an RL step's three roles taking turns
  on shared nodes beside a fourth on its own (`Role.group`), and one model across a two-pool
  heterogeneous cluster (`solver.solve_pools`: the batch split alone, and the faster of that and a
  pipeline across the pools), ≤ 3 s each, CP-SAT's choice beside brute force over the same step tables
  (for the pipeline, `solver.pool_pipeline.brute_force`: every layout priced as a whole pipeline).
Per case: the median solve time of REPEATS runs (wall clock, this machine), whether CP-SAT proved the
optimum, the oracle's time (`solver.exhaustive.oracle`, vectorized enumeration of the same space with every
partial-recompute depth and no pruning; skipped above ORACLE_LIMIT plans) and whether both found the same
plan. Targets (issues 4 and 16, 2-core machine): median ≤ 1 s for the 8- and 64-GPU fixed cases and for
DeepSeek-V3 on 2,048 H100 with every dimension open, ≤ 0.5 s for 405B on 16,384 H100, ≤ 3 s for the other
large ones; a Pareto set of ≥ 8 points in ≤ 10 s.
A case regresses when its median grows beyond 1.5 × the baseline + 0.25 s, or it loses its proof, its
agreement with the oracle, or its feasibility.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from parallelplan.constraints import RuntimeAllowance, Workload
from parallelplan.hardware import load_cluster
from parallelplan.models import load_model
from parallelplan.solver import Infeasible, Role, pareto, place, solve, solve_pools
from parallelplan.solver.exhaustive import oracle
from parallelplan.solver.placement import brute_force as placement_brute_force
from parallelplan.solver.placement import brute_force_parts as parts_brute_force
from parallelplan.solver.pool_pipeline import brute_force as pipeline_brute_force
from parallelplan.solver.pools import brute_force as pools_brute_force
from parallelplan.solver.pools import sync_time_ns
from parallelplan.solver.space import SearchSpace, executions, structures

RESULTS = Path(__file__).parent / "results"
BASELINE = RESULTS / "solver_scaling_baseline.json"
REPEATS = 3
ORACLE_LIMIT = 4_000_000
"""Upper bound on the oracle's plan count (structures × execution choices) beyond which it is skipped."""
OFFLOAD_OPEN = {"offload": ["none", "optimizer", "params"], "optimizer": ["adamw", "adamw8bit"]}
GPU_COUNTS = (8, 64, 512, 2048, 16384)


@dataclass
class Case:
    name: str
    model: str
    gpus: int
    seq_len: int
    batch: int
    group: str
    cluster: str = "dgx-h100"
    ranges: dict[str, Any] = field(default_factory=dict)
    target_s: float | None = None
    kind: str = "pretrain"
    peft: dict[str, Any] | None = None  # `constraints.Peft` fields of a fine-tune
    workload_fields: dict[str, Any] = field(default_factory=dict)  # any other `Workload` fields (stack, example_len …)

    def workload(self) -> Workload:
        """The case's workload (``kind="rlhf"`` is DPO, ``batch`` its examples)."""
        return Workload(kind=self.kind, seq_len=self.seq_len, global_batch_size=self.batch, peft=self.peft,
                        algorithm="dpo" if self.kind == "rlhf" else None, **self.workload_fields)


@dataclass
class Result:
    name: str
    group: str
    gpus: int
    feasible: bool
    proved: bool | None
    median_s: float
    times_s: list[float]
    plans: int | None
    candidates: int | None
    bounded: int | None
    tokens_per_s: float | None
    plan: str | None
    oracle_s: float | None
    oracle_plans: int | None
    agrees: bool | None
    target_s: float | None
    meets_target: bool | None


def _batch(gpus: int, seq_len: int) -> int:
    """Sequences per step: 4M tokens, or 1,024 tokens per GPU when that is more (module docstring)."""
    return max(2**22, 1024 * gpus) // seq_len


def fixed_cases() -> list[Case]:
    return [
        Case("llama-3.1-70b on 8 H100 (offload, 8-bit AdamW open)", "llama-3.1-70b", 8, 8192, 512, "fixed",
             ranges=OFFLOAD_OPEN, target_s=1.0),
        Case("llama-3.1-70b on 8 H100, default domains (infeasible)", "llama-3.1-70b", 8, 8192, 512, "fixed",
             target_s=1.0),
        Case("llama-3.1-70b on 64 H100", "llama-3.1-70b", 64, 8192, 512, "fixed", target_s=1.0),
        Case("llama-3.1-405b on 16,384 H100", "llama-3.1-405b", 16384, 8192, 2048, "fixed", target_s=0.5),
        Case("deepseek-v3 on 2,048 H100 (EP)", "deepseek-v3", 2048, 4096, 15360, "fixed", target_s=1.0),
        Case("llama-3.1-70b, 128K context, on 64 H100 (CP)", "llama-3.1-70b", 64, 131072, 32, "fixed", target_s=3.0),
    ]


def scaling_cases() -> list[Case]:
    out = []
    for model in ("llama-3.1-8b", "llama-3.1-70b"):
        for gpus in GPU_COUNTS:
            # 70B fits on 8 GPUs only with offload (see the fixed cases); offload stays closed elsewhere since
            # the cost model does not price the host's Adam step (`constraints.timing`) and would favour it
            ranges = OFFLOAD_OPEN if model == "llama-3.1-70b" and gpus == 8 else {}
            name = f"{model} on {gpus:,} H100" + (" (offload, 8-bit AdamW open)" if ranges else "")
            out.append(Case(name, model, gpus, 8192, _batch(gpus, 8192), "scaling", ranges=ranges))
    return out


def generated_cases(examples: int = 12) -> list[Case]:
    """Instances drawn by hypothesis (derandomised: the same draw every run)."""
    drawn: list[Case] = []

    @settings(max_examples=examples, derandomize=True, database=None, deadline=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(st.sampled_from(["llama-3.1-8b", "llama-3.1-70b", "qwen3-30b-a3b", "mixtral-8x7b", "gpt-3-175b", "llama-2-13b"]),
           st.sampled_from(["dgx-h100", "dgx-a100", "dgx-b200"]), st.sampled_from(GPU_COUNTS),
           st.sampled_from([2048, 8192, 32768]))
    def draw(model: str, cluster: str, gpus: int, seq_len: int) -> None:
        name = f"{model} on {gpus:,} x {cluster} GPUs, {seq_len // 1024}K"
        if all(c.name != name for c in drawn):
            drawn.append(Case(name, model, gpus, seq_len, _batch(gpus, seq_len), "generated", cluster=cluster))

    draw()
    return drawn


def run_case(case: Case, *, with_oracle: bool = True) -> Result:
    model, cluster = load_model(case.model), load_cluster(case.cluster, gpus=case.gpus)
    workload = case.workload()
    times, found = [], None
    for _ in range(REPEATS):
        started = time.perf_counter()
        try:
            found = solve(model, cluster, workload, ranges=case.ranges)
        except Infeasible:
            found = None
        times.append(time.perf_counter() - started)
    median = statistics.median(times)
    result = Result(case.name, case.group, case.gpus, found is not None, found.optimal if found else None, median, times,
                    found.search.plans if found else None, found.search.candidates if found else None,
                    found.search.bounded if found else None, found.objective["tokens_per_s"] if found else None, _describe(found.plan) if found else None,
                    None, None, None, case.target_s, None if case.target_s is None else median <= case.target_s)
    space = SearchSpace(model, cluster, workload, ranges=case.ranges)
    bound = len(structures(space)) * len(executions(space))
    if with_oracle and bound <= ORACLE_LIMIT:
        started = time.perf_counter()
        best = oracle(model, cluster, workload, ranges=case.ranges, brute_force=False)
        result.oracle_s = time.perf_counter() - started
        result.oracle_plans = len(best.candidates) if best is not None else 0
        result.agrees = (best is None) if found is None else (best is not None and best.plan == found.plan)
    return result


def _describe(plan) -> str:
    from parallelplan.solver.explain import describe

    return describe(plan)


def pareto_cases() -> list[dict]:
    model, work = load_model("llama-3.1-70b"), Workload(seq_len=8192, global_batch_size=512)
    out = []
    for objectives in (("throughput", "memory_headroom"), ("throughput", "cost", "gpus")):
        times, front = [], []
        for _ in range(REPEATS):
            started = time.perf_counter()
            front = pareto(model, load_cluster("dgx-h100", nodes=8), work, objectives=objectives)
            times.append(time.perf_counter() - started)
        median = statistics.median(times)
        min_points = 8 if len(objectives) == 2 else 1  # the 3-objective set over cluster sizes is small by nature
        out.append({"name": f"llama-3.1-70b on up to 64 H100: {' x '.join(objectives)}", "points": len(front),
                    "proved": all(s.optimal for s in front), "median_s": median, "times_s": times,
                    "target": f"≥ {min_points} points, ≤ 10 s", "meets_target": median <= 10.0 and len(front) >= min_points})
    return out


def composed_cases() -> list[dict]:
    """Composed problems: models sharing a cluster (`solver.place`) and one model across a heterogeneous
    cluster's pools (`solver.solve_pools`) — the median time of the whole search (the per-part step
    tables, CP-SAT's choice, each part's solve), and whether CP-SAT's choice equals brute force over every
    combination of the same tables."""
    work = Workload(seq_len=4096, global_batch_size=512)
    out = []
    for name, models in (("llama-3.1-70b actor + llama-3.1-8b reward on 8 H100 nodes", ("llama-3.1-70b", "llama-3.1-8b")),
                         ("llama-3.1-8b + mixtral-8x7b + qwen3-30b-a3b on 8 H100 nodes",
                          ("llama-3.1-8b", "mixtral-8x7b", "qwen3-30b-a3b"))):
        roles = [Role(name=m, model=load_model(m), workload=work) for m in models]
        times, placed = _timed(lambda: place(roles, load_cluster("dgx-h100", nodes=8)))  # noqa: B023
        tables = [{n: None if v is None else round(v * 1e9) for n, v in r.table.items()} for r in placed.roles]
        started = time.perf_counter()
        same = placement_brute_force(tables, 8) == tuple(r.nodes for r in placed.roles)
        out.append(_composed_row(name, " / ".join(f"{r.role} {r.nodes} nodes" for r in placed.roles), placed.step_time_s,
                                 placed.optimal, times, time.perf_counter() - started, same))
    m8, cluster = load_model("llama-3.1-8b"), load_cluster("dgx-h100", nodes=2)
    tune, score = Workload(kind="finetune", seq_len=4096, global_batch_size=256), Workload(kind="score", seq_len=4096, global_batch_size=256)
    roles = [Role(name=n, model=m8, workload=tune, group="ppo") for n in ("actor", "critic", "reference")]
    roles.append(Role(name="reward", model=m8, workload=score))
    times, placed = _timed(lambda: place(roles, cluster))
    started = time.perf_counter()
    parts = [[r.options for r in placed.roles[:3]], [placed.roles[3].options]]
    usable = int(RuntimeAllowance.default().usable(cluster) // 2**20)
    best = parts_brute_force(parts, 2, usable)
    same = best is not None and tuple(n for n, _ in best[1]) == (placed.roles[0].nodes, placed.roles[3].nodes)
    out.append(_composed_row("RL step: 3 llama-3.1-8b fine-tuning roles taking turns on shared nodes + an 8B reward model, 2 H100 nodes",
                             " / ".join(f"{r.role} {r.nodes} node" for r in placed.roles), placed.step_time_s, placed.optimal,
                             times, time.perf_counter() - started, same))
    pooled = load_cluster({"name": "2 DGX H100 + 2 DGX A100", "link": {"bandwidth": "100 GB/s"},
                           "pools": [{"cluster": "dgx-h100", "nodes": 2, "name": "h100"},
                                     {"cluster": "dgx-a100", "nodes": 2, "name": "a100"}]})
    model, batch = load_model("llama-3.1-8b"), Workload(seq_len=4096, global_batch_size=256)
    times, split = _timed(lambda: solve_pools(model, pooled, batch, layouts=("data_parallel",)))
    tables = [{b: None if v is None else round(v * 1e9) for b, v in share.table.items()} for share in split.shares]
    started = time.perf_counter()
    syncs = {k: sync_time_ns(model, pooled, k, batch) for k in range(len(pooled.pools) + 1)}
    same = pools_brute_force(tables, syncs, 256) == tuple(share.sequences for share in split.shares)
    out.append(_composed_row("llama-3.1-8b across 2 H100 + 2 A100 nodes (pools), 256 sequences, batch split",
                             " / ".join(f"{share.pool} {share.sequences} seq" for share in split.shares), split.step_time_s,
                             split.optimal, times, time.perf_counter() - started, same))
    times, both = _timed(lambda: solve_pools(model, pooled, batch))
    started = time.perf_counter()
    slow_way = pipeline_brute_force(model, pooled, batch)
    same = both.layout == "pipeline" and slow_way is not None and abs(slow_way - both.step_time_s) <= 1e-9 * slow_way
    choice = (" then ".join(f"{s.pool} {sum(s.layers_per_stage)} layers (tp {s.tp}, pp {s.pp})" for s in both.pipeline.stages)
              if both.pipeline else both.layout)
    out.append(_composed_row("llama-3.1-8b across the same pools, batch split or pipeline across them (the faster)",
                             choice, both.step_time_s, both.optimal, times, time.perf_counter() - started, same))
    return out


def _timed(search):
    times, result = [], None
    for _ in range(REPEATS):
        started = time.perf_counter()
        result = search()
        times.append(time.perf_counter() - started)
    return times, result


def _composed_row(name: str, choice: str, step_s: float, proved: bool, times: list[float], brute_s: float, same: bool) -> dict:
    median = statistics.median(times)
    return {"name": name, "choice": choice, "step_s": step_s, "proved": proved, "median_s": median, "times_s": times,
            "brute_force_s": brute_s, "same_choice": same, "target": "≤ 3 s", "meets_target": median <= 3.0}


def regressions(results: list[Result], baseline: dict) -> list[str]:
    """The cases that got slower, lost a proof, an agreement or feasibility (module docstring)."""
    before = {r["name"]: r for r in baseline.get("cases", [])}
    flags = []
    for r in results:
        old = before.get(r.name)
        if old is None:
            continue
        if r.median_s > 1.5 * old["median_s"] + 0.25:
            flags.append(f"{r.name}: {r.median_s:.2f} s, baseline {old['median_s']:.2f} s")
        if old["feasible"] != r.feasible:
            flags.append(f"{r.name}: feasible {old['feasible']} → {r.feasible}")
        if old["proved"] and not r.proved:
            flags.append(f"{r.name}: optimum no longer proved")
        if old["agrees"] and r.agrees is False:
            flags.append(f"{r.name}: disagrees with the oracle")
    return flags


def _table(results: list[Result]) -> list[str]:
    lines = ["| case | GPUs | feasible | proved | solve s (median) | plans priced | ruled out unpriced | candidates | oracle s "
             "| oracle plans | same plan | target | plan |", "|---|---:|---|---|---:|---:|---:|---:|---:|---:|---|---|---|"]
    for r in results:
        oracle_s = f"{r.oracle_s:.2f}" if r.oracle_s is not None else "skipped"
        target = "" if r.target_s is None else f"≤ {r.target_s:g} s: {'yes' if r.meets_target else 'NO'}"
        lines.append(f"| {r.name} | {r.gpus:,} | {'yes' if r.feasible else 'no'} | {'' if r.proved is None else r.proved} "
                     f"| {r.median_s:.2f} | {r.plans or ''} | {'' if r.bounded is None else r.bounded} | {r.candidates or ''} "
                     f"| {oracle_s} | {r.oracle_plans or ''} "
                     f"| {'' if r.agrees is None else r.agrees} | {target} | {r.plan or ''} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when a case regressed against the baseline")
    parser.add_argument("--write-baseline", action="store_true", help="replace the committed baseline")
    args = parser.parse_args()
    machine = {"cpus": os.cpu_count(), "python": platform.python_version(), "processor": platform.processor() or platform.machine()}
    results = [run_case(c) for c in fixed_cases() + scaling_cases() + generated_cases()]
    fronts = pareto_cases()
    composed = composed_cases()
    baseline = json.loads(BASELINE.read_text()) if BASELINE.exists() else {}
    flags = regressions(results, baseline)
    payload = {"machine": machine, "repeats": REPEATS, "cases": [asdict(r) for r in results], "pareto": fronts,
               "composed": composed, "regressions": flags}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "solver_scaling.json").write_text(json.dumps(payload, indent=2) + "\n")
    if args.write_baseline:
        BASELINE.write_text(json.dumps(payload, indent=2) + "\n")
    lines = [f"# Solver scaling\n\nMachine: {machine['cpus']} CPUs, Python {machine['python']}; median of {REPEATS} "
             "solves per case; oracle = exhaustive vectorized enumeration of the same space.\n"]
    for group in ("fixed", "scaling", "generated"):
        lines += [f"\n## {group}\n"] + _table([r for r in results if r.group == group])
    lines += ["\n## pareto\n", "| objectives | points | all proved | median s | target |", "|---|---:|---|---:|---|"]
    lines += [f"| {f['name']} | {f['points']} | {f['proved']} | {f['median_s']:.2f} | {f['target']}: "
              f"{'yes' if f['meets_target'] else 'NO'} |" for f in fronts]
    lines += ["\n## composed: models sharing a cluster, a model across pools\n",
              "| case | choice | step s | proved | median s | brute force s | same choice | target |",
              "|---|---|---:|---|---:|---:|---|---|"]
    lines += [f"| {c['name']} | {c['choice']} | {c['step_s']:.3f} | {c['proved']} | {c['median_s']:.2f} "
              f"| {c['brute_force_s']:.4f} | {c['same_choice']} | {c['target']}: {'yes' if c['meets_target'] else 'NO'} |"
              for c in composed]
    lines += ["\n## regressions against the baseline\n"] + ([f"- {flag}" for flag in flags] or ["none"])
    (RESULTS / "solver_scaling.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    if args.check and flags:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
