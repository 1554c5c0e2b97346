"""`compare_sharding(model, cluster, plan, workload)`: the ways to shard model states over the data-parallel
ranks — none (DDP), ZeRO-1, ZeRO-2, ZeRO-3, FSDP, HSDP — priced on one plan: memory per GPU, the bytes each
GPU sends per step in data-parallel collectives, the step time, the rules each breaks, and a
recommendation.

What each keeps per GPU and sends (Rajbhandari et al. 2020, "ZeRO", §5 and §7; PyTorch FSDP, Zhao et al.
2023): DDP replicates every state and all-reduces the gradients (2Ψ per step); ZeRO-1 shards optimizer
states and master weights (reduce-scatter of gradients + all-gather of updated weights: 2Ψ); ZeRO-2 also
gradients (the reduce-scatter runs after every micro-batch); ZeRO-3 / FSDP also parameters (gathered for
forward and again for backward, gradients reduce-scattered: 3Ψ per micro-batch); HSDP shards within groups
of ``hsdp_shard_size`` ranks and all-reduces the gradient shards across them. The numbers are the cost
model's (`estimate`, `check`), not these rules of thumb.

The recommendation: of the options that break no rule, those within `AS_FAST` of the shortest step; of
these the one that sends the fewest bytes (communication the model hides can still be exposed by a slower
network or a straggler), then the one with the least memory. The reason names what it beats and why.
None when no option runs: the reason says what would.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from parallelplan.constraints.check import check_and_estimate
from parallelplan.constraints.efficiency import Efficiency
from parallelplan.constraints.errors import PlanError
from parallelplan.constraints.estimate import MemoryBreakdown
from parallelplan.constraints.plan import Plan, Workload
from parallelplan.constraints.rules import UNPRICEABLE, Violation
from parallelplan.constraints.runtime import RuntimeAllowance
from parallelplan.hardware import ClusterSpec
from parallelplan.models import ModelSpec

GIB = 2**30
AS_FAST = 0.01
"""Step times within 1% count as equally fast (the cost model's own accuracy is coarser than that)."""
NAMES = {"none": "DDP (none)", "zero1": "ZeRO-1", "zero2": "ZeRO-2", "zero3": "ZeRO-3", "fsdp": "FSDP", "hsdp": "HSDP"}


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True)


class ShardingOption(_Frozen):
    """One sharding on the plan: its memory per GPU, whether it fits, the step time and the exposed
    data-parallel communication in it (seconds), the bytes one GPU sends per step in data-parallel
    collectives, and the rules it breaks."""

    sharding: str
    name: str
    plan: Plan
    memory: MemoryBreakdown
    fits: bool
    step_time_s: float
    dp_comm_s: float
    dp_comm_bytes: float
    state_bytes_per_param: float
    state_recipe: str
    """The model states per parameter before sharding (`Estimate.state_recipe`): 18 bytes with ZeRO's
    mixed-precision AdamW, 16 with FSDP/HSDP, whose fp32 parameters are the master copy."""
    violations: tuple[Violation, ...]


class ShardingComparison(_Frozen):
    options: tuple[ShardingOption, ...]
    recommended: str | None
    reason: str


def _variants(plan: Plan, cluster: ClusterSpec, hsdp_shard_size: int | None) -> list[Plan]:
    group = plan.dp * plan.cp
    base = plan.model_dump() | {"zero_stage": None, "hsdp_shard_size": None}
    out = [Plan.model_validate(base | {"sharding": s}) for s in ("none", "zero1", "zero2", "zero3", "fsdp")]
    if hsdp_shard_size is not None and not (isinstance(hsdp_shard_size, int) and 1 < hsdp_shard_size < group
                                            and group % hsdp_shard_size == 0):
        raise PlanError(f"hsdp_shard_size {hsdp_shard_size!r} must divide the data-parallel group of dp·cp = {group} "
                        "ranks and lie strictly between 1 and it (1 is no sharding, the whole group is FSDP)")
    shard = hsdp_shard_size or max(cluster.node.gpus_per_node // (plan.tp * plan.cp), 1)
    if 1 < shard < group and group % shard == 0:
        out.append(Plan.model_validate(base | {"sharding": "hsdp", "hsdp_shard_size": shard}))
    return out


def _recommend(running: list[ShardingOption]) -> ShardingOption:
    fastest = min(o.step_time_s for o in running)
    tied = [o for o in running if o.step_time_s <= fastest * (1 + AS_FAST)]
    return min(tied, key=lambda o: (o.dp_comm_bytes, o.memory.total))


def _reason(best: ShardingOption, options: list[ShardingOption]) -> str:
    parts = [f"{best.name} runs in {best.step_time_s:.3f} s per step with {best.memory.total / GIB:.1f} of "
             f"{best.memory.usable / GIB:.1f} GiB per GPU, sending {best.dp_comm_bytes / 1e9:.1f} GB per GPU per step"]
    for other in options:
        if other is best:
            continue
        if not other.fits:
            parts.append(f"{other.name} does not fit ({other.memory.total / GIB:.1f} GiB)")
        elif other.violations:
            parts.append(f"{other.name} breaks {other.violations[0].rule}")
        elif other.step_time_s > best.step_time_s * (1 + AS_FAST):
            parts.append(f"{other.name} is slower (+{other.step_time_s - best.step_time_s:.3f} s)")
        elif other.dp_comm_bytes > best.dp_comm_bytes:
            parts.append(f"{other.name} is as fast but sends {other.dp_comm_bytes / best.dp_comm_bytes:.2f}x the bytes")
        else:
            parts.append(f"{other.name} is as fast but needs {other.memory.total / GIB:.1f} GiB")
    return "; ".join(parts) + "."


def compare_sharding(model: ModelSpec, cluster: ClusterSpec, plan: Plan, workload: Workload, *,
                     hsdp_shard_size: int | None = None, allow_cross_domain: bool = False,
                     efficiency: Efficiency | None = None, runtime: RuntimeAllowance | None = None) -> ShardingComparison:
    """Every sharding on ``plan`` (its own ``sharding`` is replaced); HSDP shards over ``hsdp_shard_size``
    ranks (default: a node's GPUs over tp·cp) when that splits the data-parallel group."""
    options = []
    for variant in _variants(plan, cluster, hsdp_shard_size):
        violations, est = check_and_estimate(model, cluster, variant, workload, allow_cross_domain=allow_cross_domain,
                                             efficiency=efficiency, runtime=runtime)
        if est is None:
            return ShardingComparison(options=(), recommended=None,
                                      reason="; ".join(f"{v.message}: {v.fix}" for v in violations if v.rule in UNPRICEABLE))
        options.append(ShardingOption(
            sharding=variant.sharding, name=NAMES[variant.sharding] + (f"/{variant.hsdp_shard_size}" if variant.hsdp_shard_size else ""),
            plan=variant, memory=est.memory, fits=est.fits, step_time_s=est.step_time_s, dp_comm_s=est.time.dp_comm,
            dp_comm_bytes=est.dp_comm_bytes, state_bytes_per_param=est.state_bytes_per_param, state_recipe=est.state_recipe,
            violations=tuple(violations)))
    running = [o for o in options if not o.violations]
    if running:
        best = _recommend(running)
        return ShardingComparison(options=tuple(options), recommended=best.sharding, reason=_reason(best, options))
    smallest = min(options, key=lambda o: o.memory.total)
    memory = next((v for v in smallest.violations if v.rule == "memory_fits"), None)
    why = (f"none runs: the smallest footprint, {smallest.name}, needs {smallest.memory.total / GIB:.1f} GiB of "
           f"{smallest.memory.usable / GIB:.1f} GiB per GPU")
    fix = memory.fix if memory else "; ".join(f"{v.rule}: {v.fix}" for v in smallest.violations)
    return ShardingComparison(options=tuple(options), recommended=None, reason=f"{why}. Fix: {fix}.")
