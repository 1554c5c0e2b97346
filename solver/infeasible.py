"""Why a search has no feasible plan, and what would give it one.

The request's constraints — each pin, each range, memory (every plan fits on its GPU) and the throughput
target — become CP-SAT assumption literals over the plans of the relaxed space (`SearchSpace.relaxed`:
no pins or ranges, but every value they name). Plans that satisfy the same constraints are one row, so the
model is tiny; CP-SAT's sufficient assumptions for infeasibility, minimised by deletion, are the smallest
set of the request's constraints that cannot hold together. Then each nearest change — more nodes,
8-bit optimizer states, optimizer offload, full recompute, a shorter sequence, dropping a conflicting pin
or range — is tried by pricing its space, and the ones that work are reported.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import numpy as np

from parallelplan.constraints import Plan, PlanArrays, check
from parallelplan.constraints.arrays import code, module_mask, recipe_code
from parallelplan.constraints.peft import workload_state_recipe
from parallelplan.constraints.plan import (
    CP_COMMS,
    OFFLOADS,
    OPTIMIZERS,
    PRECISIONS,
    RECOMPUTES,
    SCHEDULES,
    SHARDINGS,
)
from parallelplan.constraints.rules import structural_violations
from parallelplan.hardware import load_cluster
from parallelplan.solver.candidates import Candidates
from parallelplan.solver.cpsat import Model, Result, solve
from parallelplan.solver.errors import Infeasible
from parallelplan.solver.explain import describe
from parallelplan.solver.space import SearchSpace

GIB = 2**30
_CATEGORIES = {"sharding": SHARDINGS, "recompute": RECOMPUTES, "precision": PRECISIONS, "optimizer": OPTIMIZERS,
               "offload": OFFLOADS, "schedule": SCHEDULES, "cp_comm": CP_COMMS}


def _matches(plans: PlanArrays, name: str, values: list) -> np.ndarray:
    """Rows whose field ``name`` takes one of ``values``."""
    if name in _CATEGORIES:
        codes = [code(name, v) for v in values]
        return np.isin(getattr(plans, name), codes)
    if name == "recompute_modules":
        return np.isin(plans.recompute_modules, [module_mask(v) for v in values])
    if name == "fp8_recipe":
        return np.isin(plans.fp8_recipe, [recipe_code(v) for v in values])
    if name == "recompute_layers":
        return np.isin(plans.recompute_layers, values)
    if name == "hsdp_shard_size":
        return np.isin(plans.shard_group, values) & (plans.sharding == code("sharding", "hsdp"))
    if name == "sequence_parallel":
        return np.isin(plans.sequence_parallel, values)
    if name == "layers_per_stage":
        if plans.layers_per_stage is None:
            return np.zeros(len(plans), dtype=bool)
        rows = plans.layers_per_stage
        out = np.zeros(len(plans), dtype=bool)
        for stages in values:
            stages = tuple(stages)
            padded = np.zeros(rows.shape[1], dtype=np.int64)
            padded[: len(stages)] = stages[: rows.shape[1]]
            out |= np.all(rows == padded, axis=1) & (len(stages) <= rows.shape[1])
        return out
    return np.isin(getattr(plans, name), values)


def _constraints(space: SearchSpace, candidates: Candidates, fits: np.ndarray, fast: np.ndarray | None,
                 target: float | None) -> list[tuple[str, np.ndarray]]:
    """(words, rows satisfying it) for every constraint of the request."""
    out = []
    for name, value in space.fixed.items():
        if name in ("kernels", "attention_kernel", "master_weights", "persistent_grads") or name.endswith("overlap"):
            continue
        rows = _matches(candidates.plans, name, [value])
        out.append((f"{name} fixed to {value}" + ("" if rows.any() else _why_no_plan(space, name, value)), rows))
    for name in space.ranges:
        values = space.range_values(name)
        out.append((f"{name} limited to {values}", _matches(candidates.plans, name, values)))
    usable = candidates.evaluation.usable_memory / GIB  # less the --memory-margin, when one is given
    out.append((f"every plan must fit in the GPU's {usable:.1f} GiB", fits))
    if target is not None and fast is not None:
        out.append((f"throughput of at least {target:,.0f} tokens/s", fast))
    return out


def _why_no_plan(space: SearchSpace, name: str, value) -> str:
    """Why no valid plan takes a pinned value: the rules a plan with it (and dp filling the cluster) breaks."""
    try:
        fields = {name: value}
        others = (value if name == "tp" else 1) * (value if name == "pp" else 1) * (value if name == "cp" else 1)
        if name != "dp" and isinstance(others, int) and others > 0:
            fields["dp"] = max(space.cluster.total_gpus // others, 1)
        plan = Plan(**fields)
    except (ValueError, TypeError):
        return ""
    broken = structural_violations(space.model, space.cluster, plan, space.workload,
                                   allow_cross_domain=space.allow_cross_domain)
    return f" (no valid plan has it: {'; '.join(v.message for v in broken)})" if broken else ""


def _core(constraints: list[tuple[str, np.ndarray]]) -> list[int]:
    """The smallest set of constraint indices no row satisfies together (deletion-minimised CP-SAT core)."""
    signatures = np.unique(np.stack([mask for _, mask in constraints], axis=1), axis=0)
    model = Model()
    rows = [model.bool_var() for _ in range(len(signatures))]
    model.exactly_one(rows) if rows else model.clause([])
    literals = [model.bool_var() for _ in range(len(constraints))]
    for i, signature in enumerate(signatures):
        for j, satisfied in enumerate(signature):
            if not satisfied:
                model.implies(literals[j], ~rows[i])

    def infeasible(subset: list[int]) -> Result:
        model.assume([literals[j] for j in subset])
        return solve(model)
    everything = list(range(len(constraints)))
    whole = infeasible(everything)
    if not whole.infeasible:
        return []
    core = sorted({j for j in range(len(literals)) if literals[j] in whole.core}) or everything
    for j in list(core):
        trial = [k for k in core if k != j]
        if trial and infeasible(trial).infeasible:
            core = trial
    return core


def diagnose(space: SearchSpace, *, target: float | None, price: Callable[[SearchSpace], Candidates | None],
             feasible: Callable[[Candidates], np.ndarray], fastest: Callable[[SearchSpace], float | None]) -> Infeasible:
    """The `Infeasible` error of a search of ``space`` (see the module docstring). ``price`` prices a space;
    ``feasible`` marks the candidates that satisfy memory and the target; ``fastest`` is the best
    throughput (tokens/s) of a space's feasible plans, None when it has none."""
    relaxed = space.relaxed()
    candidates = price(relaxed)
    if candidates is None:
        return _no_plan_at_all(space)
    e = candidates.evaluation
    fits = e.fits & np.isfinite(e.time.step)
    fast = e.tokens_per_s >= target if target is not None else None
    constraints = _constraints(space, candidates, fits, fast, target)
    core = _core(constraints)
    conflicts = [constraints[j][0] for j in core] or ["the search space's own rules"]
    facts = _facts(space, candidates, fits, fast)
    suggestions = _suggestions(space, fastest, [constraints[j][0] for j in core])
    message = ("No plan satisfies: " + "; ".join(conflicts) + ". " + " ".join(facts)
               + (" Changes that make it feasible: " + "; ".join(suggestions) + "." if suggestions
                  else " No single change tried (more nodes, 8-bit optimizer states, optimizer offload, full "
                       "recompute, a shorter sequence) makes it feasible."))
    return Infeasible(message, conflicts, suggestions, {"facts": facts})


def _facts(space: SearchSpace, candidates: Candidates, fits: np.ndarray, fast: np.ndarray | None) -> list[str]:
    e = candidates.evaluation
    usable = e.usable_memory
    facts = []
    least = int(np.argmin(e.memory.total))
    plan = candidates.plans.plan(least)
    facts.append(f"The least memory any plan needs is {e.memory.total[least] / GIB:.1f} GiB per GPU ({describe(plan)}); "
                 f"the GPU has {usable / GIB:.1f} GiB.")
    recipe = workload_state_recipe(space.model, plan, space.workload)  # as the least-memory plan keeps them
    states = space.model.total_params * recipe.bytes_per_param
    capacity = space.cluster.total_gpus * usable
    if states > capacity:
        facts.append(f"{space.model.display_name or space.model.name} in {plan.precision} with {plan.optimizer} needs "
                     f"{states / 2**40:.2f} TiB for its weights, gradients and optimizer states at {recipe}; "
                     f"{space.cluster.total_gpus} × {usable / GIB:.1f} GiB hold {capacity / 2**40:.2f} TiB even fully sharded.")
    if fast is not None and fits.any():
        best = float(e.tokens_per_s[fits].max())
        facts.append(f"The fastest plan that fits reaches {best:,.0f} tokens/s.")
    return facts


def _suggestions(space: SearchSpace, fastest: Callable[[SearchSpace], float | None], conflicts: list[str]) -> list[str]:
    """Each nearest change that makes the search feasible, checked by searching its space for its fastest
    feasible plan; a change the request's own pins rule out (QLoRA beside a pinned fp8 recipe) is no
    suggestion."""
    trials: list[tuple[str, Callable[[], SearchSpace]]] = []
    nodes = space.cluster.num_nodes
    for factor in (2, 4, 8):
        trials.append((f"{factor * nodes} nodes ({factor * space.cluster.total_gpus} GPUs)",
                       lambda factor=factor: replace(space, cluster=load_cluster(space.cluster, nodes=factor * nodes))))
    without_optimizer = {k: v for k, v in space.fixed.items() if k not in ("optimizer",)}
    trials.append(("8-bit AdamW optimizer states",
                   lambda: replace(space, fixed=without_optimizer, ranges={**space.ranges, "optimizer": ["adamw8bit"]})))
    without_offload = {k: v for k, v in space.fixed.items() if k not in ("offload",)}
    trials.append(("optimizer offload to CPU memory",
                   lambda: replace(space, fixed=without_offload, ranges={**space.ranges, "offload": ["optimizer"]})))
    if space.fixed.get("recompute") not in (None, "full"):
        fixed = {k: v for k, v in space.fixed.items() if k not in ("recompute", "recompute_modules", "recompute_layers")}
        trials.append(("full recompute", lambda: replace(space, fixed={**fixed, "recompute": "full"})))
    peft = space.workload.peft
    if peft is not None and peft.method == "lora":  # the same adapters on a 4-bit base
        qlora = space.workload.model_copy(update={"peft": peft.model_copy(update={"method": "qlora"})})
        trials.append(("QLoRA (the base in 4-bit NF4)", lambda: replace(space, workload=qlora)))
    seq = space.workload.seq_len
    if seq >= 2:
        halved = space.workload.model_copy(update={"seq_len": seq // 2})
        trials.append((f"sequences of {seq // 2} tokens", lambda: replace(space, workload=halved)))
    for name in list(space.fixed) + list(space.ranges):
        if any(text.startswith(f"{name} ") for text in conflicts):
            trials.append((f"free {name}", lambda name=name: replace(
                space, fixed={k: v for k, v in space.fixed.items() if k != name},
                ranges={k: v for k, v in space.ranges.items() if k != name})))
    working = []
    for words, make in trials:
        try:
            best = fastest(make())
        except ValueError:  # SolverInputError included: the change contradicts a pin
            continue
        if best is not None:
            working.append(f"{words} (best {best:,.0f} tokens/s)")
    return working


def _no_plan_at_all(space: SearchSpace) -> Infeasible:
    """No structurally valid plan exists, pins aside: the rules a simple plan breaks say why."""
    plan = Plan(dp=space.cluster.total_gpus)
    rules = [v for v in check(space.model, space.cluster, plan, space.workload) if v.rule != "memory_fits"]
    conflicts = [f"{v.message} ({v.fix})" for v in rules] or ["no degrees, layout and batch split satisfy the rules"]
    return Infeasible("No plan of this shape exists: " + "; ".join(conflicts) + ".", conflicts,
                      [], {"facts": []})

