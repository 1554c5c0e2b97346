"""`assess(model, cluster, plan, workload)`: one plan judged whole — its `Estimate` (None when the cost model
cannot price it), every rule it breaks (`check`) and, given a token budget, the training time and cost to
reach it. `plan estimate` and `plan validate` print it; their ``--json`` is `Assessment.model_dump_json()`.

Training to a budget of T tokens takes ⌈T / (global batch × seq_len)⌉ optimizer steps at the plan's step
time; GPU-hours = steps × step time × GPUs / 3600; cost = GPU-hours × the price per GPU-hour (the caller's,
else the median on-demand offer of the GPU in ``hardware/data/prices.json``, `hardware.default_price`).
"""

from __future__ import annotations

import math

from pydantic import BaseModel, ConfigDict

from parallelplan.constraints.check import check_and_estimate
from parallelplan.constraints.efficiency import Efficiency
from parallelplan.constraints.errors import PlanError
from parallelplan.constraints.estimate import Estimate
from parallelplan.constraints.plan import Plan, Workload
from parallelplan.constraints.rules import Violation
from parallelplan.constraints.runtime import RuntimeAllowance
from parallelplan.hardware import ClusterSpec, HardwareError, checked_price, default_price, price_offers
from parallelplan.models import ModelSpec


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True)


class Budget(_Frozen):
    """Time and money to train on ``tokens`` tokens with one plan (module docstring). ``usd`` and the
    price are None when the GPU has no price on record and none was given."""

    tokens: float
    steps: int
    time_s: float
    gpu_hours: float
    price_per_gpu_hour: float | None
    price_basis: str
    usd: float | None


class Assessment(_Frozen):
    """A plan, its workload, its `Estimate` (None when a rule of `constraints.rules.UNPRICEABLE` makes it
    unpriceable), the `Violation` list of `check` (empty: it runs and fits) and the optional `Budget`."""

    plan: Plan
    workload: Workload
    gpus: int
    estimate: Estimate | None
    violations: tuple[Violation, ...]
    budget: Budget | None = None

    @property
    def ok(self) -> bool:
        return not self.violations


def training_budget(est: Estimate, workload: Workload, gpus: int, tokens: float, cluster: ClusterSpec,
                    price_per_gpu_hour: float | None = None) -> Budget:
    """The `Budget` of ``tokens`` training tokens at ``est``'s step time (module docstring)."""
    if not workload.training:
        raise PlanError("a token budget applies to training: use --kind pretrain or finetune")
    if not (math.isfinite(tokens) and tokens > 0):
        raise PlanError(f"tokens must be a positive number (e.g. 1e12), got {tokens!r}")
    steps = math.ceil(tokens / workload.data_tokens_per_step)
    time_s = steps * est.step_time_s
    gpu_hours = time_s * gpus / 3600
    price, basis = price_per_gpu_hour, "given"
    if price is None:
        try:
            price = default_price(cluster.gpu)
        except HardwareError:
            basis = f"no price on record for {cluster.gpu.name}: give one"
        else:
            offers = [o for o in price_offers() if o.gpu == cluster.gpu.name]
            providers = len({o.provider for o in offers})
            basis = f"median of {len(offers)} on-demand offers from {providers} providers in hardware/data/prices.json"
    else:
        price = checked_price(price, PlanError)
    return Budget(tokens=float(tokens), steps=steps, time_s=time_s, gpu_hours=gpu_hours, price_per_gpu_hour=price,
                  price_basis=basis, usd=None if price is None else gpu_hours * price)


def assess(model: ModelSpec, cluster: ClusterSpec, plan: Plan, workload: Workload, *, tokens: float | None = None,
           price_per_gpu_hour: float | None = None, allow_cross_domain: bool = False,
           efficiency: Efficiency | None = None, runtime: RuntimeAllowance | None = None) -> Assessment:
    """The `Assessment` of one plan; ``tokens`` adds the `Budget` to train on that many tokens."""
    violations, est = check_and_estimate(model, cluster, plan, workload, allow_cross_domain=allow_cross_domain,
                                         efficiency=efficiency, runtime=runtime)
    budget = None
    if tokens is not None and est is not None:
        budget = training_budget(est, workload, cluster.total_gpus, tokens, cluster, price_per_gpu_hour)
    return Assessment(plan=plan, workload=workload, gpus=cluster.total_gpus, estimate=est, violations=tuple(violations),
                      budget=budget)
