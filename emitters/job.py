"""What every emitter reads: the solved plan with its model, cluster and workload, and the launch options
(the training script and its arguments, the rendezvous port, the job name)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from parallelplan.constraints import MemoryBreakdown, Plan, Workload
from parallelplan.constraints.serving import Speculation, default_limits
from parallelplan.emitters.errors import EmitError
from parallelplan.hardware import ClusterSpec
from parallelplan.models import ModelSpec
from parallelplan.solver import Solution

OPTIONS = ("script", "script_args", "master_port", "job_name", "time_limit", "partition", "account")
"""Launch options every target accepts (`emitters.emit(..., **options)`)."""


@dataclass(frozen=True)
class Job:
    plan: Plan
    model: ModelSpec
    cluster: ClusterSpec
    workload: Workload
    memory: MemoryBreakdown  # the plan's per-GPU memory at its peak (the serving targets size their pools by it)
    script: str | None = None  # None: the target's own (train.py, pretrain_gpt.py, torchtitan.train)
    script_args: tuple[str, ...] = ()
    master_port: int = 29500
    job_name: str = "plan"
    time_limit: str = "24:00:00"
    partition: str | None = None
    account: str | None = None
    summary: str = field(default="")
    speculation: Speculation | None = None  # a serving plan's speculative decoding (`constraints.serving`)
    batched_tokens: int | None = None  # a serving plan's tokens per engine iteration (its chunked-prefill budget)

    @classmethod
    def from_solution(cls, solution: Solution, **options) -> Job:
        from parallelplan.solver.explain import describe

        unknown = set(options) - set(OPTIONS)
        if unknown:
            raise EmitError(f"unknown emit option(s) {sorted(unknown)}; use {', '.join(OPTIONS)}")
        if "time_limit" in options and not re.fullmatch(r"(\d+-)?\d{1,2}:\d{2}:\d{2}", options["time_limit"]):
            raise EmitError(f"time_limit must read [days-]HH:MM:SS (SLURM's --time), got {options['time_limit']!r}")
        options["script_args"] = tuple(options.get("script_args", ()))
        port = options.get("master_port", 29500)
        if type(port) is not int or not 1024 <= port <= 65535:
            raise EmitError(f"master_port must be an integer in 1024–65535, got {port!r}")
        summary = (f"{solution.model.display_name or solution.model.name} on {solution.cluster.num_nodes} x "
                   f"{solution.cluster.node.name} ({solution.cluster.total_gpus} GPUs): {describe(solution.plan)}")
        return cls(solution.plan, solution.model, solution.cluster, solution.workload, solution.estimate.memory,
                   summary=summary, **options)

    @classmethod
    def from_worker(cls, solution, worker) -> Job:
        """One engine of a serving deployment (`solver.serving`): a dense model's aggregated workers as one
        engine's data-parallel ranks (vLLM's and SGLang's DP); a MoE model's worker, or a disaggregated
        pool's, as one engine the summary says to start that many copies of (a MoE engine's DP ranks
        share its experts, so copies are separate engines); its requests at most the worker's
        concurrency per replica, on the nodes it spans."""
        from parallelplan.solver.explain import describe

        plan, copies = worker.plan, worker.count
        if worker.role == "aggregated" and copies > 1 and solution.model.moe is None:
            plan, copies = plan.model_copy(update={"dp": copies * plan.dp}), 1  # one engine, its DP ranks the copies
        t = solution.traffic
        longest = t.longest  # the engine's context holds the longest request
        workload = Workload(kind="inference", seq_len=longest.isl, output_len=longest.osl,
                            global_batch_size=worker.concurrency * plan.dp, max_concurrency=worker.concurrency)
        per_node = solution.cluster.node.gpus_per_node
        cluster = solution.cluster.model_copy(update={"num_nodes": -(-plan.world_size // per_node)})
        start = (f"start {copies} copies of this engine, each on its own {plan.world_size} GPUs, behind a load balancer"
                 if copies > 1 else f"{plan.world_size} GPUs of {solution.cluster.node.name}")
        summary = (f"{solution.model.display_name or solution.model.name} serving, {worker.role} ({start}): "
                   f"{describe(plan)}")
        return cls(plan, solution.model, cluster, workload, worker.memory, summary=summary,
                   speculation=t.speculation if worker.role != "prefill" else None,
                   batched_tokens=t.max_num_batched_tokens or default_limits(solution.cluster)[0])

    @property
    def nodes(self) -> int:
        return self.cluster.num_nodes

    @property
    def gpus_per_node(self) -> int:
        return self.cluster.node.gpus_per_node

    @property
    def gradient_accumulation(self) -> int:
        """Micro-batches per data-parallel replica per step: global batch / (micro-batch × dp)."""
        return self.workload.global_batch_size // (self.plan.micro_batch_size * self.plan.dp)


def unsupported(framework: str, dimension: str, instead: str) -> EmitError:
    """The error for a plan dimension a framework cannot express."""
    return EmitError(f"{framework} cannot express {dimension}; {instead}")
