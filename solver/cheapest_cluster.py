"""`cheapest(model, workload, tokens=..., deadline_hours=...)`: the cheapest cluster — GPU type (a cluster
preset with a price) and node count — that trains ``tokens`` tokens by the deadline, and the plan there.

On a given number of GPUs the cheapest plan is the fastest (the cost of a step is its time × GPUs ×
price), so for each priced preset and node count (powers of two up to ``max_nodes``) the throughput
optimum (`candidates.best_feasible_step`, the branch and bound `solve` uses) prices the run, kept when it
meets the throughput the deadline needs (tokens / deadline); the answer is the cheapest of those, solved
again in full (`solve`) for its plan and explanation. Presets are tried in order of a lower bound on
their cost — every token's matrix multiplications (`matmul_flops_per_token`) at the fastest rate the cost
model runs any GEMM on that GPU (its bf16 dense peak × its GEMM efficiency, `Efficiency.gemm_fraction`:
the default search trains in bf16), paid at its price — and a preset whose bound is not below the best
cost found is not searched: no plan on it can be cheaper; nor is a node count whose GPUs could not reach
the throughput even at that rate. Prices are the median on-demand offer of ``hardware/data/prices.json`` (the table holds no
reserved or spot prices), or the user's ``prices`` by preset.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict

from parallelplan.constraints import Efficiency, Workload
from parallelplan.hardware import HardwareError, checked_price, default_price, list_clusters, load_cluster
from parallelplan.models import ModelSpec
from parallelplan.solver.candidates import best_feasible_step
from parallelplan.solver.errors import Infeasible, SolverInputError
from parallelplan.solver.search import solve
from parallelplan.solver.solution import Solution
from parallelplan.solver.space import SearchSpace

MAX_NODES = 64
"""The largest node count a preset is searched at by default."""


class ClusterOption(BaseModel):
    """One preset's outcome: its cheapest plan (``solution``) and what the whole run costs there, or why
    there is none (``reason``)."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    cluster: str
    gpu: str
    usd_per_gpu_hour: float
    lower_bound_usd: float
    """The run's matrix multiplications at this GPU's fastest GEMM rate, at this price: no plan here costs less."""
    nodes: int | None = None
    total_usd: float | None = None
    hours: float | None = None
    reason: str | None = None
    solution: Solution | None = None
    """The full solution, for the cheapest option only."""


class Cheapest(BaseModel):
    """The cheapest option (``best``) and every preset's outcome, cheapest first."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    tokens: float
    deadline_hours: float
    best: ClusterOption
    options: list[ClusterOption]


def matmul_flops_per_token(model: ModelSpec, workload: Workload) -> float:
    """Matrix-multiplication FLOPs per trained token of data that every plan of the cost model executes at least
    (`models.flops` conventions, the attention core left out): training's forward, input and weight
    gradients (3 passes); under PEFT its exact count less three times the attention core
    (`peft.training_flops_per_token`); DPO adds the reference's forward; a capacity factor below 1 leaves
    that share of the routed experts' work; padding (`Workload.example_len` unpacked) is computed like data."""
    from parallelplan.constraints.peft import training_flops_per_token

    counted = model.flops(workload.seq_len)
    capacity = workload.moe_capacity_factor
    dropped = (1 - capacity) * counted.routed_experts if capacity is not None and capacity < 1 else 0.0
    forward = counted.forward_per_token - counted.attention_scores - dropped
    if workload.peft is not None:  # routed experts are frozen: forward and input gradients
        matmul = training_flops_per_token(model, workload.seq_len, workload.peft) - 3 * counted.attention_scores - 2 * dropped
    else:
        matmul = 3 * forward
    per_computed_token = matmul + (forward if workload.algorithm == "dpo" else 0.0)
    return per_computed_token * workload.seq_len / workload.data_tokens_per_sequence  # padding is computed too


def _node_counts(max_nodes: int) -> list[int]:
    return [2**i for i in range(int(math.log2(max_nodes)) + 1)] + ([max_nodes] if max_nodes & (max_nodes - 1) else [])


def cheapest(model: ModelSpec, workload: Workload, *, tokens: float, deadline_hours: float,
             clusters: Sequence[str] | None = None, prices: Mapping[str, float] | None = None,
             max_nodes: int = MAX_NODES, **cost_model: Any) -> Cheapest:
    """The cheapest cluster and plan (module docstring). ``cost_model``: `solve`'s efficiency / runtime."""
    if not (isinstance(tokens, (int, float)) and math.isfinite(tokens) and tokens > 0):
        raise SolverInputError(f"tokens must be a positive number of tokens to train, got {tokens!r}")
    if not (isinstance(deadline_hours, (int, float)) and math.isfinite(deadline_hours) and deadline_hours > 0):
        raise SolverInputError(f"deadline_hours must be a positive number of hours, got {deadline_hours!r}")
    if type(max_nodes) is not int or not 1 <= max_nodes <= 4096:
        raise SolverInputError(f"max_nodes must be an integer in [1, 4096], got {max_nodes!r}")
    if not workload.training:
        raise SolverInputError("cheapest trains tokens: give a training workload (kind pretrain, finetune or rlhf)")
    names = list(clusters) if clusters is not None else list_clusters()
    unknown = sorted(set(prices or {}) - set(names))
    if unknown:
        raise SolverInputError(f"prices name {', '.join(unknown)}, which are not among the clusters searched: "
                               f"{', '.join(names)}")
    rate = tokens / (deadline_hours * 3600.0)
    flops = matmul_flops_per_token(model, workload)
    efficiency = cost_model.get("efficiency") or Efficiency.default()
    candidates: list[ClusterOption] = []
    fastest: dict[str, float] = {}  # FLOP/s of the fastest GEMM per GPU of each preset
    for name in names:
        cluster = load_cluster(name)
        try:
            price = checked_price(prices[name], SolverInputError) if prices and name in prices else default_price(cluster.gpu)
        except HardwareError:
            continue  # no price on record: it cannot be ranked by cost
        gpu = cluster.gpu
        fastest[name] = gpu.peak_flops["bf16"] * efficiency.gemm_fraction(gpu.architecture, "bf16")
        bound = flops * tokens / fastest[name] / 3600.0 * price
        candidates.append(ClusterOption(cluster=name, gpu=gpu.name, usd_per_gpu_hour=price, lower_bound_usd=bound))
    if not candidates:
        raise SolverInputError(f"none of the clusters {', '.join(names)} has a price: give prices by cluster")

    best: tuple[float, str, int] | None = None  # (total USD, preset, nodes)
    outcomes: dict[str, ClusterOption] = {}
    for option in sorted(candidates, key=lambda o: (o.lower_bound_usd, o.cluster)):
        if best is not None and option.lower_bound_usd >= best[0]:
            outcomes[option.cluster] = option.model_copy(update={
                "reason": f"not searched: even with every GEMM at its fastest it costs ${option.lower_bound_usd:,.0f}, "
                          f"above ${best[0]:,.0f}"})
            continue
        node = load_cluster(option.cluster)
        tokens_per_step = workload.data_tokens_per_step
        own: tuple[float, float, int] | None = None  # (total USD, hours, nodes)
        for nodes in _node_counts(max_nodes):
            gpus = nodes * node.node.gpus_per_node
            if gpus * fastest[option.cluster] < rate * flops:
                continue  # too few GPUs even with every GEMM at its fastest
            cluster = load_cluster(option.cluster, nodes=nodes)
            step = best_feasible_step(SearchSpace(model, cluster, workload), **cost_model)
            if step is None or tokens_per_step / step < rate:
                continue
            total = step * gpus * option.usd_per_gpu_hour / 3600.0 * tokens / tokens_per_step
            if own is None or total < own[0]:
                own = (total, tokens / (tokens_per_step / step) / 3600.0, nodes)
        if own is None:
            outcomes[option.cluster] = option.model_copy(update={
                "reason": f"no plan on up to {max_nodes} nodes fits and reaches {rate:,.0f} tokens/s"})
            continue
        outcomes[option.cluster] = option.model_copy(update={"total_usd": own[0], "hours": own[1], "nodes": own[2]})
        if best is None or own[0] < best[0]:
            best = (own[0], option.cluster, own[2])
    if best is None:
        raise Infeasible(f"no priced cluster trains {tokens:,.0f} tokens within {deadline_hours:g} h on up to {max_nodes} "
                         f"nodes ({rate:,.0f} tokens/s needed)", [], [], {})
    found = solve(model, load_cluster(best[1], nodes=best[2]), workload, price_per_gpu_hour=outcomes[best[1]].usd_per_gpu_hour,
                  **cost_model)
    outcomes[best[1]] = outcomes[best[1]].model_copy(update={"solution": found})
    priced = sorted((o for o in outcomes.values() if o.total_usd is not None), key=lambda o: (o.total_usd, o.cluster))
    rest = sorted((o for o in outcomes.values() if o.total_usd is None), key=lambda o: (o.lower_bound_usd, o.cluster))
    return Cheapest(tokens=tokens, deadline_hours=deadline_hours, best=outcomes[best[1]], options=priced + rest)
