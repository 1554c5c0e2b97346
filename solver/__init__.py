"""The CP-SAT solver: the best plan for an objective, Pareto frontiers, explained infeasibility.

- `solve(model, cluster, workload, objective=..., fixed=..., ranges=...) -> Solution`
- `pareto(model, cluster, workload, objectives=(...)) -> list[Solution]`
- `compare(models, clusters, workload) -> list[Comparison]`: the best plan of every pair, side by side
- `place(roles, cluster) -> Placement`: several models (`Role`) sharing one cluster, nodes per role proved by CP-SAT
- `cheapest(model, workload, tokens=, deadline_hours=) -> Cheapest`: the cheapest priced cluster and node count for a run by a deadline
- `profile(name, model, cluster)`, `list_profiles()`: the workload profiles (``data/profiles.json``) solved
- `solve_rl(actor, cluster, workload) -> RLSolution`: a PPO / GRPO step's roles placed (colocated or split) and planned
- `optimize(model, cluster, workload, plan, goal=...) -> Ladder`: from a user's plan, the changes worth making one at a time (techniques of ``data/techniques.json``), beside the proved optimum
- `solve_pools(model, pooled, workload) -> PooledSolution`: one model across a heterogeneous cluster's pools (the batch split over them, or a pipeline across them)
- `Infeasible` (the conflicting constraints and the changes that would help), `SolverInputError`.
`Plan`, `Workload` and `Peft` are re-exported from `constraints`. The search modules (and OR-Tools) load on first
use, so catching the error types costs a command nothing.
"""

from parallelplan.common.lazy import lazy_exports
from parallelplan.solver.errors import Infeasible, SolverInputError

__getattr__, __dir__ = lazy_exports(__name__, {
    "solve": "parallelplan.solver.search", "pareto": "parallelplan.solver.search",
    "Solution": "parallelplan.solver.solution", "Alternative": "parallelplan.solver.solution",
    "SearchStats": "parallelplan.solver.solution", "compare": "parallelplan.solver.comparison",
    "Comparison": "parallelplan.solver.comparison", "InfeasibleCell": "parallelplan.solver.comparison",
    "place": "parallelplan.solver.placement", "Role": "parallelplan.solver.placement",
    "Placement": "parallelplan.solver.placement", "RolePlacement": "parallelplan.solver.placement",
    "solve_pools": "parallelplan.solver.pools", "PooledSolution": "parallelplan.solver.pools",
    "PoolShare": "parallelplan.solver.pools", "PoolPipeline": "parallelplan.solver.pool_pipeline",
    "PoolStages": "parallelplan.solver.pool_pipeline",
    "OBJECTIVES": "parallelplan.solver.objectives", "Plan": "parallelplan.constraints",
    "Workload": "parallelplan.constraints", "Peft": "parallelplan.constraints",
    "cheapest": "parallelplan.solver.cheapest_cluster", "Cheapest": "parallelplan.solver.cheapest_cluster",
    "ClusterOption": "parallelplan.solver.cheapest_cluster", "profile": "parallelplan.solver.profiles",
    "list_profiles": "parallelplan.solver.profiles", "load_profile": "parallelplan.solver.profiles",
    "Profile": "parallelplan.solver.profiles", "solve_rl": "parallelplan.solver.rl",
    "RLSolution": "parallelplan.solver.rl", "RLRole": "parallelplan.solver.rl", "Rollout": "parallelplan.constraints",
    "optimize": "parallelplan.solver.ladder", "Ladder": "parallelplan.solver.ladder"})

__all__ = ["Ladder", "optimize", "RLRole", "RLSolution", "Rollout", "solve_rl", "Cheapest", "ClusterOption", "Profile", "cheapest", "list_profiles", "load_profile", "profile",
           "OBJECTIVES", "Alternative", "Comparison", "Infeasible", "InfeasibleCell", "Peft", "Placement", "Plan", "PoolPipeline", "PoolShare",
           "PoolStages", "PooledSolution", "Role", "RolePlacement", "SearchStats", "Solution", "SolverInputError", "Workload", "compare",
           "pareto", "place", "solve", "solve_pools"]
