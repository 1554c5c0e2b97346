"""What a search returns: the plan, its `Estimate`, the objective values, whether CP-SAT proved the
optimum, the time the search took, why this plan wins, and the alternatives asked for. Everything
serialises to JSON (``model_dump_json``) and back."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from parallelplan.constraints import Estimate, Plan, Workload
from parallelplan.hardware import ClusterSpec
from parallelplan.models import ModelSpec


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True)


class Alternative(_Frozen):
    """A runner-up: its plan and objective values (``objective`` as in `Solution`)."""

    plan: Plan
    objective: dict[str, float]


class SearchStats(_Frozen):
    """How big the search was: plans enumerated and priced, how many fit, how many (non-dominated)
    candidates CP-SAT chose among, and the cluster sizes searched; ``bounded``: plans of the space left
    unpriced because a lower bound on their step time shows none of them can be picked
    (`solver.candidates.StepBound`)."""

    plans: int
    fitting: int
    candidates: int
    gpu_counts: tuple[int, ...]
    bounded: int = 0


class Solution(_Frozen):
    """``objective``: tokens_per_s, step_time_s, usd_per_hour, usd_per_million_tokens,
    memory_headroom_gib, gpus and simplicity of the plan. ``optimal``: CP-SAT proved every stage of the
    objective optimal over the search space (``search``). ``model``, ``cluster`` (at the plan's GPU
    count) and ``workload`` make a saved solution self-contained: the emitters need nothing else."""

    plan: Plan
    model: ModelSpec
    cluster: ClusterSpec
    workload: Workload
    estimate: Estimate
    objective: dict[str, float]
    optimal: bool
    solve_time_s: float
    gpus: int
    explanation: tuple[str, ...]
    alternatives: tuple[Alternative, ...] = ()
    search: SearchStats
