"""`optimize(model, cluster, workload, plan)`: the ladder from the plan a user runs today to a better one,
one change at a time, and how far its end lies from the solver's proved optimum.

The ladder (greedy, every number from the cost model):
1. While the plan breaks a rule or does not fit, the next rung is the change that repairs most per effort:
   of the moves (`solver.techniques.moves`) that lower the plan's badness — the rules it breaks besides
   memory, plus its memory over the GPU's as a fraction of the GPU's — the largest fall in badness over
   the effort class's rank (below), then the best value of the goal.
2. Once it runs, the next rung is the valid change with the largest gain per effort: the relative
   improvement of the goal's metric (step time; peak memory of the busiest rank; dollars per million
   tokens) over the effort class's rank (a flag 1, a library swap 2, a schedule or kernel change 3, a
   re-layout 4; ``data/techniques.json``), ties to the lower effort and then the catalog's order. A change
   gaining less than `MIN_GAIN` is not worth a rung: the ladder stops there.
Each rung carries Δmemory, Δstep time and Δ$ per million tokens against the rung before, and the values it
reaches. The moves that would have gained more than the ladder's last step but break a rule are listed with
the rule (`Blocked`).

The optimum: `solver.solve` over every layout and the same technique values the ladder could take (the
user's choice of techniques, not the effort ceiling: the gap shows what the efforts above it buy),
with the final plan's kernel and overlap settings, its values and the start's added to the default
domains (``widen``), so the search space holds every plan of the ladder: the ladder can never end above
it, and the gap is what re-layout (or the greedy order) leaves.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict

from parallelplan.constraints import Efficiency, Estimate, Plan, RuntimeAllowance, Violation, Workload
from parallelplan.constraints.check import check_and_estimate
from parallelplan.constraints.efficiency import stack_schedules
from parallelplan.constraints.evaluate import evaluate
from parallelplan.constraints.fp8 import undominated_recipes
from parallelplan.constraints.rules import UNPRICEABLE, structural_violations
from parallelplan.hardware import ClusterSpec
from parallelplan.models import ModelSpec
from parallelplan.solver.errors import Infeasible, SolverInputError
from parallelplan.solver.objectives import gpu_hour_price
from parallelplan.solver.search import solve
from parallelplan.solver.space import DEFAULTS, SEARCHED, SETTINGS
from parallelplan.solver.techniques import (
    OPTIMIZER_TECHNIQUES,
    PRECISION_MOVES,
    SCHEDULE_TECHNIQUES,
    Move,
    Technique,
    catalog,
    chosen_techniques,
    moves,
)

GOALS = {"throughput": "throughput", "memory": "memory_headroom", "cost": "cost"}
"""Each goal and the solver objective that proves its optimum."""
MIN_GAIN = 0.01
"""The least relative improvement of the goal a rung must bring (1%): smaller differences are within what
one configuration's run-to-run spread shows, and not worth a change to a working setup."""
MAX_RUNGS = 24
_MEMORY_RULES = ("memory_fits", "host_memory_fits")
LAYOUT_TECHNIQUES = ("tp", "pp", "cp", "ep")


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True)


class Point(_Frozen):
    """A plan and what the cost model says of it (the busiest rank's memory); the step, memory and usable
    bytes are None where a rule makes the plan unpriceable (`constraints.rules.UNPRICEABLE`)."""

    plan: Plan
    gpus: int
    step_time_s: float | None
    tokens_per_s: float
    memory_bytes: float | None
    usable_bytes: float | None
    usd_per_million_tokens: float | None
    mfu: float
    violations: tuple[Violation, ...] = ()


class Rung(_Frozen):
    technique: str
    effort: str
    change: str
    changes_math: bool
    gain: float
    """Relative improvement of the goal's metric over the rung before (0 for a repair that only makes it run)."""
    delta_step_s: float | None
    delta_memory_bytes: float | None
    """The changes against the rung before; None where either plan is unpriceable."""
    delta_usd_per_million_tokens: float | None
    reached: Point


class Blocked(_Frozen):
    """A change that would improve the final plan by ``gain`` but breaks ``rule`` (``plan``: the changed plan)."""

    technique: str
    change: str
    plan: Plan
    gain: float
    rule: str
    message: str


class RiskNote(_Frozen):
    technique: str
    text: str
    source: str


class Ladder(_Frozen):
    goal: str
    max_effort: str
    techniques: tuple[str, ...]
    start: Point
    rungs: tuple[Rung, ...]
    final: Point
    optimum: Point | None
    optimum_proved: bool
    optimum_any_layout: bool
    """The optimum was searched over every layout (re-layout techniques accepted), else over the plan's own."""
    gap: float | None
    """The final plan's goal metric over the optimum's, less 1 (≥ 0)."""
    optimum_note: str | None
    blocked: tuple[Blocked, ...]
    risks: tuple[RiskNote, ...]
    notes: tuple[str, ...]


def optimize(model: ModelSpec, cluster: ClusterSpec, workload: Workload, plan: Plan, *, goal: str = "throughput",
             max_effort: str = "high", techniques: Sequence[str] | None = None, skip: Sequence[str] = (),
             price_per_gpu_hour: float | None = None, allow_cross_domain: bool = False,
             efficiency: Efficiency | None = None, runtime: RuntimeAllowance | None = None,
             time_limit_s: float = 30.0) -> Ladder:
    """The ladder from ``plan`` (module docstring) for ``goal`` (throughput, memory or cost), using the
    ``techniques`` named (default: every one but those that change the optimizer's update rule, and CPU
    offload but for the memory goal) less ``skip``, up to ``max_effort`` (low: flags; medium: + library,
    schedule and kernel changes; high: + re-layouts)."""
    if goal not in GOALS:
        raise SolverInputError(f"goal {goal!r}: use one of {', '.join(GOALS)}")
    if not workload.training:
        raise SolverInputError(f"kind {workload.kind!r}: plan optimize improves a training plan; for serving, "
                               "plan solve --kind inference finds the best plan")
    if not cluster.gpu.supports(plan.precision):
        raise SolverInputError(f"precision {plan.precision}: the {cluster.gpu.name} has no {plan.precision} tensor "
                               f"cores; use one of {', '.join(p for p in ('bf16', 'fp16', 'fp32') if cluster.gpu.supports(p))}")
    accepted, chosen, notes = chosen_techniques(cluster, workload.stack, goal, max_effort, techniques, skip)
    price = gpu_hour_price(cluster, price_per_gpu_hour, required=goal == "cost")
    costs = {"efficiency": efficiency, "runtime": runtime}
    nodes = [2**i for i in range(cluster.num_nodes.bit_length()) if 2**i < cluster.num_nodes]
    ladder = _Ladder(model, workload, goal, price, allow_cross_domain, costs)
    current, current_cluster = ladder.point(plan, cluster), cluster
    start, rungs, blocked = current, [], []
    for _ in range(MAX_RUNGS):
        options = moves(model, current_cluster, workload, current.plan, chosen, allow_cross_domain=allow_cross_domain,
                        node_counts=nodes)
        step, blocked = ladder.next_rung(current, current_cluster, options)
        if step is None:
            break
        move, reached, gain = step
        rungs.append(_rung(move, current, reached, gain))
        current, current_cluster = reached, move.cluster
    optimum, proved, optimum_note = ladder.optimum(cluster, start.plan, current.plan, accepted, time_limit_s)
    gap = None
    if optimum is not None and not current.violations:
        gap = ladder.metric(current) / ladder.metric(optimum) - 1
    used = dict.fromkeys(r.technique for r in rungs)
    every = catalog()
    risks = tuple(RiskNote(technique=n, text=every[n].risk.text, source=every[n].risk.source)
                  for n in used if every[n].risk is not None)
    if current.plan.precision == "fp8" and not current.plan.fp8_bf16_layers and current.step_time_s is not None:
        risks += (_bf16_ends_price(ladder, current, current_cluster),)
    return Ladder(goal=goal, max_effort=max_effort, techniques=tuple(t.name for t in chosen), start=start,
                  rungs=tuple(rungs), final=current, optimum=optimum, optimum_proved=proved, gap=gap,
                  optimum_any_layout=bool({t.name for t in accepted} & set(LAYOUT_TECHNIQUES)),
                  optimum_note=optimum_note, blocked=tuple(blocked), risks=risks, notes=tuple(notes))


def _bf16_ends_price(ladder: _Ladder, fp8: Point, cluster: ClusterSpec) -> RiskNote:
    """What the fp8 risk's remedy costs on the compound plan: its first and last layers in bf16
    (`Plan.fp8_bf16_layers` 1), priced by the cost model, with the rule it breaks where its recipe forbids it."""
    ends = ladder.point(fp8.plan.model_copy(update={"fp8_bf16_layers": 1}), cluster)
    if ends.step_time_s is None or ends.memory_bytes is None or fp8.step_time_s is None or fp8.memory_bytes is None:
        text = "keeping the first and last layer in bf16 cannot be priced here"
    else:
        text = (f"keeping the first and last layer in bf16 (--fp8-bf16-layers 1) costs "
                f"{ends.step_time_s / fp8.step_time_s - 1:+.1%} step time and "
                f"{(ends.memory_bytes - fp8.memory_bytes) / 2**30:+.2f} GiB on the compound plan")
    broken = [v for v in ends.violations if v.rule == "fp8_bf16_layers_recipe"]
    if broken:
        text += f" ({broken[0].message}: {broken[0].fix})"
    return RiskNote(technique="fp8_bf16_layers", text=text,
                    source="Megatron-LM --first-last-layers-bf16; Micikevicius et al. 2022, arXiv:2209.05433")


class _Ladder:
    """Pricing and ranking of the moves of one ladder."""

    def __init__(self, model: ModelSpec, workload: Workload, goal: str, price: float | None, allow_cross_domain: bool,
                 costs: dict[str, Any]):
        self.model, self.workload, self.goal, self.price = model, workload, goal, price
        self.allow_cross_domain, self.costs = allow_cross_domain, costs

    def point(self, plan: Plan, cluster: ClusterSpec) -> Point:
        """`check`'s violations and the estimate of ``plan``: the scalar cost model, as `plan estimate` prints it."""
        violations, est = check_and_estimate(self.model, cluster, plan, self.workload,
                                             allow_cross_domain=self.allow_cross_domain, **self.costs)
        return self.point_of(plan, cluster.total_gpus, est, violations)

    def point_of(self, plan: Plan, gpus: int, est: Estimate | None, violations: Sequence[Violation] = ()) -> Point:
        """``plan`` on ``gpus`` GPUs as its estimate (None: unpriceable) prices it."""
        if est is None:
            return Point(plan=plan, gpus=gpus, step_time_s=None, tokens_per_s=0.0, memory_bytes=None, usable_bytes=None,
                         usd_per_million_tokens=None, mfu=0.0, violations=tuple(violations))
        return Point(plan=plan, gpus=gpus, step_time_s=est.step_time_s, tokens_per_s=est.tokens_per_s,
                     memory_bytes=est.memory.total, usable_bytes=est.memory.usable,
                     usd_per_million_tokens=self.usd_per_million(gpus, est.tokens_per_s), mfu=est.mfu,
                     violations=tuple(violations))

    def usd_per_million(self, gpus: int | np.ndarray, tokens_per_s: float | np.ndarray) -> Any:
        if self.price is None:
            return None
        with np.errstate(divide="ignore"):
            return self.price * gpus / 3600 / tokens_per_s * 1e6

    def metric(self, point: Point) -> float:
        """The goal's metric (lower is better; infinite for an unpriceable plan)."""
        value = {"memory": point.memory_bytes, "cost": point.usd_per_million_tokens, "throughput": point.step_time_s}[self.goal]
        return float("inf") if value is None else value

    def next_rung(self, current: Point, cluster: ClusterSpec,
                  options: list[Move]) -> tuple[tuple[Move, Point, float] | None, list[Blocked]]:
        """The next rung from ``current`` (module docstring), and the better moves that break a rule."""
        if not options:
            return None, []
        metric, fits, over = self._priced(options)
        if current.violations:
            return self._repair(current, options, metric, fits, over), []
        gain = 1 - metric / self.metric(current)
        score = gain / np.array([m.technique.effort_rank for m in options])
        order = sorted(range(len(options)), key=lambda i: (-score[i], options[i].technique.effort_rank, i))
        blocked: list[Blocked] = []
        for i in order:
            if not gain[i] >= MIN_GAIN:
                break
            move = options[i]
            broken = self._broken(move)
            if not broken and fits[i]:
                reached = self.point(move.plan, move.cluster)
                if not reached.violations:
                    return (move, reached, float(gain[i])), []
                broken = list(reached.violations)
            elif not broken:
                broken = list(self.point(move.plan, move.cluster).violations)
            blocked.append(Blocked(technique=move.technique.name, change=move.change, plan=move.plan, gain=float(gain[i]),
                                   rule=broken[0].rule, message=broken[0].message))
        return None, _distinct(blocked)

    def _repair(self, current: Point, options: list[Move], metric: np.ndarray, fits: np.ndarray,
                over: np.ndarray) -> tuple[Move, Point, float] | None:
        """The move that repairs ``current`` most per effort (module docstring), or None when no move
        lowers its badness: the rules it breaks besides memory, plus the memory over the GPU's as a fraction
        of it, plus one where the host memory overflows."""
        broken = [self._broken(m) for m in options]
        structural = np.array([len(b) for b in broken], dtype=float)
        unpriced = np.array([any(v.rule in UNPRICEABLE for v in b) for b in broken])
        host = (~fits & (over == 0)).astype(float)
        badness = np.where(unpriced, np.inf, structural + over + host)
        rules = {v.rule for v in current.violations}
        over_now = np.inf if current.memory_bytes is None else current.memory_bytes / current.usable_bytes - 1
        now = len(rules - set(_MEMORY_RULES)) + max(over_now, 0.0) + ("host_memory_fits" in rules)
        effort = np.array([m.technique.effort_rank for m in options], dtype=float)
        with np.errstate(invalid="ignore"):  # an unpriced plan (infinite badness) repaired by any priced move
            score = np.where(np.isinf(now), 1.0, now - badness) / effort
        better = [i for i in range(len(options)) if badness[i] < now]
        for i in sorted(better, key=lambda i: (-score[i], metric[i], i)):
            reached = self.point(options[i].plan, options[i].cluster)
            if len(reached.violations) < len(current.violations) or badness[i] < now:
                return options[i], reached, 0.0
        return None

    def optimum(self, cluster: ClusterSpec, start: Plan, final: Plan, accepted: Sequence[Technique],
                time_limit_s: float) -> tuple[Point | None, bool, str | None]:
        """The solver's optimum for the goal over the techniques accepted (module docstring), whether CP-SAT
        proved it, and why there is none."""
        stack = self.workload.stack
        fixed, ranges = search_domains(start, final, accepted, stack, undominated_recipes(stack, cluster.gpu.architecture))
        try:
            sol = solve(self.model, cluster, self.workload, objective=GOALS[self.goal], fixed=fixed, ranges=ranges,
                        widen=True, allow_cross_domain=self.allow_cross_domain, price_per_gpu_hour=self.price,
                        time_limit_s=time_limit_s, **self.costs)
        except Infeasible as err:
            return None, False, f"the solver finds no plan with these techniques: {err}"
        return self.point_of(sol.plan, sol.gpus, sol.estimate), sol.optimal, None

    def _broken(self, move: Move) -> list[Violation]:
        return structural_violations(self.model, move.cluster, move.plan, self.workload,
                                     allow_cross_domain=self.allow_cross_domain)

    def _priced(self, options: list[Move]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per move: the goal's metric, whether it fits, and its memory over the GPU's (a fraction ≥ 0),
        by the vectorized cost model, one batch per cluster size."""
        metric, fits, over = (np.empty(len(options)) for _ in range(3))
        for gpus in {m.cluster.total_gpus for m in options}:
            rows = [i for i, m in enumerate(options) if m.cluster.total_gpus == gpus]
            cluster = options[rows[0]].cluster
            with np.errstate(all="ignore"):  # a plan that breaks a rule may divide by zero; the rules then reject it
                e = evaluate(self.model, cluster, self.workload, [options[i].plan for i in rows], **self.costs)
            value = {"throughput": e.time.step, "memory": e.memory.total,
                     "cost": self.usd_per_million(gpus, e.tokens_per_s)}[self.goal]  # the cost goal requires a price
            metric[rows] = np.where(np.isfinite(e.time.step), value, np.inf)
            fits[rows] = e.fits & np.isfinite(e.time.step)
            over[rows] = np.maximum(e.memory.total / e.usable_memory - 1, 0)
        return metric, fits.astype(bool), over


def _distinct(blocked: list[Blocked], limit: int = 6) -> list[Blocked]:
    """The first ``limit`` blocked moves, one per technique."""
    out: dict[str, Blocked] = {}
    for b in blocked:
        out.setdefault(b.technique, b)
    return list(out.values())[:limit]


def _rung(move: Move, before: Point, reached: Point, gain: float) -> Rung:
    usd = None
    if reached.usd_per_million_tokens is not None and before.usd_per_million_tokens is not None:
        usd = reached.usd_per_million_tokens - before.usd_per_million_tokens
    priced = before.step_time_s is not None and reached.step_time_s is not None
    return Rung(technique=move.technique.name, effort=move.technique.effort, change=move.change,
                changes_math=move.technique.changes_math, gain=gain,
                delta_step_s=reached.step_time_s - before.step_time_s if priced else None,
                delta_memory_bytes=reached.memory_bytes - before.memory_bytes if priced else None,
                delta_usd_per_million_tokens=usd if priced else None, reached=reached)


def search_domains(start: Plan, final: Plan, chosen: Sequence[Technique], stack: str,
                   fp8_recipes: Sequence[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(fixed, ranges) of the optimum's search: the fields of techniques not chosen pinned to the final
    plan's values; the chosen techniques' values, the start's and the final plan's added to the default
    domains (``widen``) — the schedules among them that ``stack`` runs, tf32 where the start is fp32 or tf32 (no move reaches it from fewer bits), and
    with fp8_recipe the ``fp8_recipes`` that can be best here (`constraints.fp8.undominated_recipes`); the
    settings (kernels, overlaps) the final plan's."""
    names = {t.name for t in chosen}
    fixed: dict[str, Any] = {name: getattr(final, name) for name in SETTINGS}
    ranges: dict[str, list[Any]] = {}

    def add(field: str, *values: Any) -> None:
        current = ranges.setdefault(field, [])
        for value in values:
            if value is not None and value not in current:
                current.append(value)

    for field in ("precision", "optimizer", "recompute", "recompute_modules", "micro_batch_size", "sharding",
                  "offload", "offload_activations", "schedule", "vpp", "layers_per_stage", "cp_comm",
                  "hsdp_shard_size"):
        add(field, getattr(start, field), getattr(final, field))
    add("precision", *[p for p in ("bf16", "fp8") if p in names])
    if "tf32" in names and start.precision in PRECISION_MOVES["tf32"] + ("tf32",):
        add("precision", "tf32")
    if "fp8" in ranges["precision"]:  # a recipe range asks for fp8 (solver.space)
        add("fp8_recipe", start.fp8_recipe, final.fp8_recipe)
        if "fp8_recipe" in names:
            add("fp8_recipe", *fp8_recipes)
    add("optimizer", *[t for t in OPTIMIZER_TECHNIQUES if t in names])
    if "recompute" in names:
        add("recompute", "none", "selective", "selective_mm", "full")
    if "micro_batch" in names:
        add("micro_batch_size", *DEFAULTS["micro_batch_size"])
    if "sharding" in names:
        add("sharding", "zero3")
    if "offload" in names:
        add("offload", "optimizer", "params")
    if "offload_activations" in names:
        add("offload_activations", True)
    add("schedule", *[s for s in SCHEDULE_TECHNIQUES if s in names])
    ranges["schedule"] = [s for s in ranges["schedule"] if s in stack_schedules(stack)]  # a start's may not run
    untouched = {"recompute": ("recompute", "recompute_modules"), "micro_batch": ("micro_batch_size",),
                 "sharding": ("sharding", "hsdp_shard_size"), "offload": ("offload",),
                 "offload_activations": ("offload_activations",), ("interleaved", "dualpipev", "zbv"): ("vpp",),
                 "fp8_recipe": ("fp8_recipe",)}
    for techniques, fields in untouched.items():
        if not names & set(techniques if isinstance(techniques, tuple) else (techniques,)):
            for field in fields:
                ranges.pop(field, None)
                if getattr(final, field) is not None:
                    fixed[field] = getattr(final, field)
    if not names & set(LAYOUT_TECHNIQUES):
        fixed |= {"tp": final.tp, "pp": final.pp, "cp": final.cp, "ep": final.ep, "etp": final.etp}
    if final.fp8_bf16_layers:  # bf16 layers are a setting of fp8 plans: the optimum stays fp8
        ranges["precision"] = ["fp8"]
    ranges = {field: values for field, values in ranges.items() if values}
    assert set(ranges) <= set(SEARCHED)
    return fixed, ranges


__all__ = ["GOALS", "MIN_GAIN", "Blocked", "Ladder", "Point", "RiskNote", "Rung", "optimize", "search_domains"]
