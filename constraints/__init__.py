"""The cost model and the rules, for any plan: bytes per GPU, step time, collective costs, and the
divisibility / compatibility rules a plan must satisfy, each named and explained.

- `estimate(model, cluster, plan, workload) -> Estimate`: memory and time of one plan, with notes.
- `check(model, cluster, plan, workload) -> list[Violation]`: every rule the plan breaks, with its fix.
- `evaluate(model, cluster, workload, plans) -> Evaluation`: the same cost model over arrays of plans
  (numpy), for the solver and the oracle; `estimate` is `evaluate` on a batch of one.
- `Efficiency` and `RuntimeAllowance`: the named, overridable factors (``data/*.json``).
"""

from constraints.arrays import PlanArrays
from constraints.check import check
from constraints.efficiency import Efficiency
from constraints.errors import PlanError
from constraints.estimate import Estimate, MemoryBreakdown, TimeBreakdown, estimate
from constraints.evaluate import Evaluation, evaluate
from constraints.plan import Plan, Workload
from constraints.rules import Violation, structural_violations
from constraints.runtime import RuntimeAllowance

__all__ = [
    "Efficiency", "Estimate", "Evaluation", "MemoryBreakdown", "Plan", "PlanArrays", "PlanError", "RuntimeAllowance",
    "TimeBreakdown", "Violation", "Workload", "check", "estimate", "evaluate", "structural_violations",
]
