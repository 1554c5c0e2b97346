"""The CP-SAT solver: the best plan for an objective, Pareto frontiers, explained infeasibility.

- `solve(model, cluster, workload, objective=..., fixed=..., ranges=...) -> Solution`
- `pareto(model, cluster, workload, objectives=(...)) -> list[Solution]`
- `compare(models, clusters, workload) -> list[Comparison]`: the best plan of every pair, side by side
- `Infeasible` (the conflicting constraints and the changes that would help), `SolverInputError`.
`Plan` and `Workload` are re-exported from `constraints`. The search modules (and OR-Tools) load on first
use, so catching the error types costs a command nothing.
"""

from importlib import import_module

from solver.errors import Infeasible, SolverInputError

_LAZY = {"solve": "solver.search", "pareto": "solver.search", "Solution": "solver.solution",
         "Alternative": "solver.solution", "SearchStats": "solver.solution",
         "compare": "solver.comparison", "Comparison": "solver.comparison", "InfeasibleCell": "solver.comparison", "OBJECTIVES": "solver.objectives",
         "Plan": "constraints", "Workload": "constraints"}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'solver' has no attribute {name!r}")


__all__ = ["OBJECTIVES", "Alternative", "Comparison", "Infeasible", "InfeasibleCell", "Plan", "SearchStats", "Solution", "SolverInputError",
           "Workload", "compare", "pareto", "solve"]
