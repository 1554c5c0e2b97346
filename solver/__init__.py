"""The CP-SAT solver: the best plan for an objective, Pareto frontiers, explained infeasibility.

- `solve(model, cluster, workload, objective=..., fixed=..., ranges=...) -> Solution`
- `pareto(model, cluster, workload, objectives=(...)) -> list[Solution]`
- `Infeasible` (the conflicting constraints and the changes that would help), `SolverInputError`.
`Plan` and `Workload` are re-exported from `constraints`.
"""

from constraints import Plan, Workload
from solver.errors import Infeasible, SolverInputError
from solver.objectives import OBJECTIVES
from solver.solution import Alternative, SearchStats, Solution
from solver.solve import pareto, solve

__all__ = ["OBJECTIVES", "Alternative", "Infeasible", "Plan", "SearchStats", "Solution", "SolverInputError",
           "Workload", "pareto", "solve"]
