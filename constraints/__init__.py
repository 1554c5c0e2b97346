"""The cost model and the rules, for any plan: bytes per GPU, step time, collective costs, and the
divisibility / compatibility rules a plan must satisfy, each named and explained.

- `estimate(model, cluster, plan, workload) -> Estimate`: memory and time of one plan, with notes.
- `check(model, cluster, plan, workload) -> list[Violation]`: every rule the plan breaks, with its fix.
- `assess(model, cluster, plan, workload, tokens=...) -> Assessment`: estimate, violations and the
  time and cost to train on a token budget (`Budget`), as `plan estimate` / `plan validate` print them.
- `compare_sharding(model, cluster, plan, workload) -> ShardingComparison`: DDP, ZeRO-1/2/3, FSDP, HSDP
  on one plan, with a recommendation.
- `describe_topology(cluster) -> TopologyReport`: bandwidth tiers and collective costs by group size.
- `serve(model, cluster, plan, Traffic(...)) -> ServingEstimate`: an inference layout serving requests in
  steady state (continuous batching): TTFT, TPOT, latency, tokens and requests per second.
- `evaluate(model, cluster, workload, plans) -> Evaluation`: the same cost model over arrays of plans
  (numpy), for the solver and the oracle; `estimate` is `evaluate` on a batch of one.
- `Efficiency` and `RuntimeAllowance`: the named, overridable factors (``data/*.json``).
- `calibrate(read_runs(path)) -> Calibration`: those factors fitted to measured runs; `load_profile` reads
  the profile it writes back into an `Efficiency` and a `RuntimeAllowance`.
"""

from parallelplan.constraints.arrays import PlanArrays
from parallelplan.constraints.assess import Assessment, Budget, assess, training_budget
from parallelplan.constraints.calibration import Calibration, MeasuredRun, calibrate, load_profile, read_runs
from parallelplan.constraints.check import check
from parallelplan.constraints.efficiency import Efficiency
from parallelplan.constraints.errors import PlanError
from parallelplan.constraints.estimate import Estimate, MemoryBreakdown, TimeBreakdown, estimate
from parallelplan.constraints.evaluate import Evaluation, evaluate
from parallelplan.constraints.plan import Peft, Plan, Rollout, Workload
from parallelplan.constraints.rules import Violation, structural_violations
from parallelplan.constraints.runtime import RuntimeAllowance
from parallelplan.constraints.serving import ServingEstimate, Traffic, serve
from parallelplan.constraints.sharding import ShardingComparison, ShardingOption, compare_sharding
from parallelplan.constraints.topology import GroupCost, Tier, TopologyReport, describe_topology

__all__ = [
    "Assessment", "Budget", "Calibration", "Efficiency", "MeasuredRun", "calibrate", "load_profile", "read_runs", "Estimate", "Evaluation", "GroupCost", "MemoryBreakdown", "Peft", "Plan", "Rollout", "PlanArrays", "PlanError", "RuntimeAllowance",
    "ShardingComparison", "ShardingOption", "Tier", "TimeBreakdown", "TopologyReport", "Violation", "Workload", "assess", "check", "compare_sharding", "describe_topology", "estimate", "evaluate", "structural_violations",
    "training_budget", "ServingEstimate", "Traffic", "serve",
]
