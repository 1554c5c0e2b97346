"""`compare(models, clusters, workload)`: the best plan of every (model, cluster) pair, side by side — each
cell a `solve` with the same objective and search options, or the reason none is feasible; with a token
budget, the time and cost to train on it (`constraints.training_budget`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict

from parallelplan.constraints import Budget, Workload, training_budget
from parallelplan.hardware import ClusterSpec
from parallelplan.models import ModelSpec
from parallelplan.solver.errors import Infeasible, SolverInputError
from parallelplan.solver.search import Progress, solve
from parallelplan.solver.solution import Solution


class InfeasibleCell(BaseModel):
    """Why a pair has no plan: `Infeasible`'s message, conflicting constraints and checked suggestions."""

    model_config = ConfigDict(frozen=True)

    message: str
    conflicts: tuple[str, ...]
    suggestions: tuple[str, ...]


class Comparison(BaseModel):
    """One (model, cluster) pair: its `Solution`, or `infeasible`; ``budget`` when a token budget was given."""

    model_config = ConfigDict(frozen=True)

    model: str
    cluster: str
    gpus: int
    solution: Solution | None
    infeasible: InfeasibleCell | None
    budget: Budget | None = None


def compare(models: Sequence[ModelSpec], clusters: Sequence[ClusterSpec], workload: Workload, *,
            tokens: float | None = None, progress: Progress | None = None, **solve_options: Any) -> list[Comparison]:
    """Every model on every cluster (models outer), solved with ``solve_options`` (those of `solve`)."""
    if not models or not clusters:
        raise SolverInputError("compare needs at least one model and one cluster")
    if len(models) * len(clusters) < 2:
        raise SolverInputError("compare needs two or more models or clusters (for one pair use solve)")
    out = []
    for i, model in enumerate(models):
        for j, cluster in enumerate(clusters):
            if progress is not None:
                progress(f"{i * len(clusters) + j + 1} of {len(models) * len(clusters)}: {model.name} on {cluster.name}")
            try:
                found = solve(model, cluster, workload, **solve_options)
            except Infeasible as err:
                cell = InfeasibleCell(message=str(err), conflicts=tuple(err.conflicts), suggestions=tuple(err.suggestions))
                out.append(Comparison(model=model.name, cluster=cluster.name, gpus=cluster.total_gpus, solution=None,
                                      infeasible=cell))
                continue
            budget = None
            if tokens is not None:
                budget = training_budget(found.estimate, workload, found.gpus, tokens, found.cluster,
                                         solve_options.get("price_per_gpu_hour"))
            out.append(Comparison(model=model.name, cluster=cluster.name, gpus=found.gpus, solution=found,
                                  infeasible=None, budget=budget))
    return out
