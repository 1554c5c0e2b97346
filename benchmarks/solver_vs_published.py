"""The solver against the experts: for every published training run, is its layout feasible under our
model, and is the solver's plan for the same GPUs, batch and sequence predicted at least as fast?

Run from the repository root:  python -m benchmarks.solver_vs_published
Writes benchmarks/results/solver_vs_published.{json,md}.

Per run of benchmarks/data/published_runs_dev.json with a complete layout (`benchmarks.published_runs.setup`,
which also states what each row assumes):
1. feasible: `constraints.check` finds no broken rule in the published plan (else the rules are listed);
2. in the space: the search space with every searched field pinned to the published plan's value holds
   exactly that plan — so the open search below ranges over a space that holds the experts' choice;
3. the open search: the run's GPUs, batch, sequence, precision, kernels and TP overlap (what its stack
   ran); every other plan variable over its default domain widened by the published value (e.g. vpp 12,
   selective_mm recompute, SP off, TP·CP across NVLink domains when the run does that). Because the solver is exact over a space holding the
   published plan, its plan is predicted at least as fast; the benchmark checks that it is.
Reported: how often our plan has the experts' degrees (tp, pp, cp, ep) and their whole layout (also vpp and
micro-batch), and the predicted speed-up we claim over them (median, 90th percentile, largest).
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.published_runs import Setup, layout_text, runs, setup
from parallelplan.constraints import Plan, check, estimate
from parallelplan.constraints.check import selective_ladder
from parallelplan.solver import Infeasible, solve
from parallelplan.solver.explain import describe
from parallelplan.solver.space import DEFAULTS, SEARCHED, SearchSpace, enumerate_plans

RESULTS = Path(__file__).parent / "results"
WIDENED = ("sharding", "recompute", "schedule", "micro_batch_size", "vpp")
"""The fields whose default domain (`solver.space.DEFAULTS`) a published run may go beyond."""


@dataclass
class Comparison:
    id: int
    model: str
    gpus: int
    layout: str
    excluded: str | None = None
    feasible: bool | None = None
    broken_rules: list[str] = field(default_factory=list)
    in_space: bool | None = None
    published_tokens_per_s: float | None = None
    solver_tokens_per_s: float | None = None
    speedup: float | None = None
    same_degrees: bool | None = None
    same_layout: bool | None = None
    proved: bool | None = None
    solver_plan: str | None = None
    published_plan: str | None = None
    solve_s: float | None = None
    assumptions: list[str] = field(default_factory=list)


def widened_ranges(inputs: Setup) -> dict[str, Any]:
    """Default domains plus the published plan's value where it lies outside them."""
    plan, ranges = inputs.plan, {}
    for name in WIDENED:
        if getattr(plan, name) not in DEFAULTS[name]:
            ranges[name] = list(DEFAULTS[name]) + [getattr(plan, name)]
    if plan.recompute == "selective" and plan.recompute_modules not in selective_ladder(inputs.model):
        ranges["recompute_modules"] = [list(m) for m in selective_ladder(inputs.model)] + [list(plan.recompute_modules)]
    if plan.tp > 1 and not plan.sequence_parallel:
        ranges["sequence_parallel"] = [False, True]
    return ranges


def _pins(plan: Plan) -> dict[str, Any]:
    return {name: getattr(plan, name) for name in SEARCHED if getattr(plan, name) is not None}


def compare(run: dict) -> Comparison:
    row = Comparison(run["id"], run["model_name"], run["num_gpus"], layout_text(run))
    inputs = setup(run)
    if isinstance(inputs, str):
        row.excluded = inputs
        return row
    m, c, w, plan = inputs.model, inputs.cluster, inputs.workload, inputs.plan
    row.assumptions, row.published_plan = inputs.assumptions, describe(plan)
    cross = plan.tp > min(max(c.nvlink_domain_gpus, c.node.gpus_per_node), c.total_gpus)
    violations = check(m, c, plan, w, allow_cross_domain=cross)
    row.feasible = not violations
    row.broken_rules = [f"{v.rule}: {v.message}" for v in violations]
    published = estimate(m, c, plan, w)
    row.published_tokens_per_s = published.tokens_per_s
    search = dict(ranges=widened_ranges(inputs), allow_cross_domain=cross,
                  fixed={"precision": plan.precision, "kernels": plan.kernels, "tp_comm_overlap": plan.tp_comm_overlap})
    if row.feasible:
        pinned = SearchSpace(m, c, w, fixed=search["fixed"] | _pins(plan), ranges=search["ranges"], allow_cross_domain=cross)
        members = enumerate_plans(pinned)
        row.in_space = any(members.plan(i) == plan for i in range(len(members)))
    started = time.perf_counter()
    try:
        found = solve(m, c, w, **search)
    except Infeasible as err:
        row.solve_s = time.perf_counter() - started
        row.broken_rules = row.broken_rules or err.conflicts
        return row
    row.solve_s = time.perf_counter() - started
    row.proved, row.solver_plan = found.optimal, describe(found.plan)
    row.solver_tokens_per_s = found.estimate.tokens_per_s
    row.speedup = row.solver_tokens_per_s / published.tokens_per_s - 1
    degrees = ("tp", "pp", "cp", "ep")
    row.same_degrees = all(getattr(found.plan, d) == getattr(plan, d) for d in degrees)
    row.same_layout = row.same_degrees and all(getattr(found.plan, d) == getattr(plan, d) for d in ("vpp", "micro_batch_size"))
    return row


def summary(rows: list[Comparison]) -> dict:
    used = [r for r in rows if r.excluded is None]
    compared = [r for r in used if r.feasible and r.speedup is not None]
    speedups = [r.speedup for r in compared]
    return {
        "runs": len(rows), "complete_layouts": len(used), "published_feasible": sum(bool(r.feasible) for r in used),
        "published_in_space": sum(bool(r.in_space) for r in used), "compared": len(compared),
        "solver_at_least_as_fast": sum(r.speedup >= -1e-9 for r in compared),
        "same_degrees": sum(bool(r.same_degrees) for r in compared), "same_layout": sum(bool(r.same_layout) for r in compared),
        "median_speedup": statistics.median(speedups) if speedups else None,
        "p90_speedup": float(np.percentile(speedups, 90)) if speedups else None,
        "max_speedup": max(speedups) if speedups else None,
        "all_proved": all(r.proved for r in compared),
    }


def main() -> None:
    started = time.perf_counter()
    rows = [compare(run) for run in runs()]
    stats = summary(rows)
    stats["seconds"] = time.perf_counter() - started
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "solver_vs_published.json").write_text(json.dumps({"summary": stats, "rows": [asdict(r) for r in rows]},
                                                                 indent=2) + "\n")
    pct = lambda x: "" if x is None else f"{100 * x:+.1f}%"  # noqa: E731
    head = (f"# Solver vs published layouts\n\n{stats['runs']} runs, {stats['complete_layouts']} with a complete layout; "
            f"{stats['published_feasible']} published layouts feasible under our model, {stats['published_in_space']} in "
            f"the search space. Of {stats['compared']} compared, the solver's plan is predicted at least as fast in "
            f"{stats['solver_at_least_as_fast']}; it has the experts' degrees (tp, pp, cp, ep) in {stats['same_degrees']} "
            f"and their whole layout (also vpp, micro-batch) in {stats['same_layout']}. Claimed speed-up: median "
            f"{pct(stats['median_speedup'])}, 90th percentile {pct(stats['p90_speedup'])}, largest {pct(stats['max_speedup'])}"
            f" (predicted by our cost model, not measured). Every optimum proved: {stats['all_proved']}.\n")
    lines = ["| id | model | GPUs | published layout | feasible | in space | published tok/s | solver tok/s | speed-up "
             "| same degrees | solver plan | why not / notes |", "|---:|---|---:|---|---|---|---:|---:|---:|---|---|---|"]
    for r in rows:
        if r.excluded:
            lines.append(f"| {r.id} | {r.model} | {r.gpus} | {r.layout} | | | | | | | | excluded: {r.excluded} |")
            continue
        notes = "; ".join(r.broken_rules + r.assumptions)
        solver = f"{r.solver_tokens_per_s:,.0f}" if r.solver_tokens_per_s else "infeasible"
        lines.append(f"| {r.id} | {r.model} | {r.gpus} | {r.published_plan} | {r.feasible} | {r.in_space} | "
                     f"{r.published_tokens_per_s:,.0f} | {solver} | {pct(r.speedup)} | {r.same_degrees} | "
                     f"{r.solver_plan or ''} | {notes} |")
    (RESULTS / "solver_vs_published.md").write_text(head + "\n" + "\n".join(lines) + "\n")
    print(head)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
