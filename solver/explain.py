"""Why the chosen plan wins, in words: the runner-up with a different layout and the cost-model terms that
separate them, and the faster plans of the space that do not fit."""

from __future__ import annotations

from collections.abc import Callable

from parallelplan.constraints import Estimate, Plan
from parallelplan.constraints.plan import SCHEDULE_NAMES, V_SCHEDULES

GIB = 2**30
CP_COMM_WORDS = {"p2p": "ring p2p", "a2a": "Ulysses a2a", "a2a+p2p": "USP: Ulysses + ring"}
"""`Plan.cp_comm` in words (ring attention is the default, named only where every choice is listed)."""

TERMS = (("compute", "compute"), ("tp_comm", "tensor-parallel communication"), ("cp_comm", "context-parallel exchange"),
         ("ep_comm", "expert all-to-all"), ("dp_comm", "data-parallel communication"), ("pp_comm", "pipeline sends"),
         ("offload", "activation offload copies"), ("bubble", "pipeline bubble"), ("optimizer", "optimizer update"))


def describe(plan: Plan) -> str:
    """A plan in a few words: its degrees and the choices that differ from the defaults."""
    parts = [f"tp {plan.tp} · pp {plan.pp} · dp {plan.dp}"]
    if plan.cp > 1:
        parts.append(f"cp {plan.cp}" + ("" if plan.cp_comm == "p2p" else f" ({CP_COMM_WORDS[plan.cp_comm]})"))
    if plan.ep > 1:
        parts.append(f"ep {plan.ep}")
    if plan.ep > 1 and plan.etp != plan.tp:
        parts.append(f"etp {plan.etp}")
    if plan.vpp > 1:
        parts.append(f"vpp {plan.vpp}")
    if plan.layers_per_stage:
        parts.append(f"stages {'/'.join(map(str, plan.layers_per_stage))}")
    parts.append(f"micro-batch {plan.micro_batch_size}")
    if plan.sharding != "none":
        parts.append(plan.sharding if plan.sharding != "hsdp" else f"hsdp/{plan.hsdp_shard_size}")
    if plan.recompute != "none":
        detail = f" ({', '.join(plan.recompute_modules)})" if plan.recompute_modules else ""
        detail = f" ({plan.recompute_layers} layers)" if plan.recompute_layers else detail
        parts.append(f"recompute {plan.recompute}{detail}")
    if plan.precision != "bf16":
        parts.append(plan.precision)
    if plan.optimizer != "adamw":
        parts.append(plan.optimizer)
    if plan.offload != "none":
        parts.append(f"offload {plan.offload}")
    if plan.offload_activations:
        parts.append("activations offloaded")
    if plan.schedule in ("zero_bubble", *V_SCHEDULES):
        parts.append(f"{SCHEDULE_NAMES[plan.schedule]} schedule")
    if plan.kv_cache_dtype == "fp8":
        parts.append("fp8 KV cache")
    return ", ".join(parts)


def compare(winner: Estimate, other: Estimate, limit: int = 3) -> str:
    """The step-time terms that differ most between two plans, signed from the other plan's side."""
    diffs = [(getattr(other.time, key) - getattr(winner.time, key), words) for key, words in TERMS]
    diffs = sorted((d for d in diffs if abs(d[0]) > 1e-4 * max(winner.step_time_s, 1e-9)), key=lambda d: -abs(d[0]))
    return ", ".join(f"{words} {delta:+.3g} s" for delta, words in diffs[:limit]) or "the same time terms"


def explain(*, objective: str, proved: bool, plans: int, fitting: int, candidates: int, winner: Plan,
            winner_estimate: Estimate, runner_up: Plan | None, fastest_unfit: tuple[Plan, float, float] | None,
            estimate_of: Callable[[Plan], Estimate], bounded: int = 0) -> list[str]:
    """Sentences for `Solution.explanation`."""
    proof = "proved optimal by CP-SAT" if proved else "the best CP-SAT found within the time limit (not proved)"
    ruled_out = (f"; {bounded:,} more were ruled out unpriced, a lower bound on their step time exceeding what "
                 "the search can pick" if bounded else "")
    lines = [f"Best for {objective} among {plans:,} priced plans of the search space ({fitting:,} fit in memory; CP-SAT "
             f"chose among the {candidates:,} non-dominated ones{ruled_out}): {proof}."]
    step = winner_estimate.step_time_s
    if runner_up is not None:
        other = estimate_of(runner_up)
        slower = other.step_time_s / step - 1
        lines.append(f"Runner-up with another layout: {describe(runner_up)} — {abs(slower):.1%} "
                     f"{'slower' if slower >= 0 else 'faster'} per step ({other.step_time_s:.3f} s vs {step:.3f} s): "
                     f"{compare(winner_estimate, other)}; memory {other.memory.total / GIB:.1f} GiB vs "
                     f"{winner_estimate.memory.total / GIB:.1f} GiB.")
    if fastest_unfit is not None:
        plan, unfit_step, unfit_memory = fastest_unfit
        nearest = "the nearest to fitting of those priced" if bounded else "the nearest to fitting"
        lines.append(f"Faster plans do not fit; {nearest}, {describe(plan)}, would take {unfit_step:.3f} s "
                     f"({1 - unfit_step / step:.1%} less) but needs {unfit_memory / GIB:.1f} GiB per GPU "
                     f"(the GPU has {winner_estimate.memory.usable / GIB:.1f} GiB).")
    headroom = (winner_estimate.memory.usable - winner_estimate.memory.total) / GIB
    where = f" on pipeline stage {winner_estimate.memory.stage}, the most loaded" if winner.pp > 1 else ""
    lines.append(f"Memory headroom {headroom:.1f} GiB per GPU{where}.")
    return lines

