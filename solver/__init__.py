"""Decision variables, the CP-SAT model, objectives, Pareto frontiers, infeasibility explanations and the
exhaustive oracle. Built by the solver issue; empty until then."""
