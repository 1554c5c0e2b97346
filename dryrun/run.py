"""`dry_run(model, cluster, plan, workload)`: check the plan's rules, estimate it, then build and run its
busiest rank in PyTorch at full size (`dryrun.measure`) and report the measured peak beside the estimate.

The estimate is priced for what runs: `transformers`' unfused modules (``kernels="unfused"``), whatever the
plan asked for, since the dry-run runs those modules. A plan that breaks a rule is not run: `PlanRejected`
carries the rules' findings."""

from __future__ import annotations

import contextlib
import signal
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from parallelplan.constraints import Plan, Violation, Workload, estimate
from parallelplan.constraints.efficiency import stacks
from parallelplan.constraints.rules import structural_violations
from parallelplan.dryrun.errors import DryRunError
from parallelplan.dryrun.job import rank_job, stage_job
from parallelplan.dryrun.report import DryRunReport, components, verdict
from parallelplan.hardware import ClusterSpec

if TYPE_CHECKING:
    from parallelplan.dryrun.small import SmallRunReport
from parallelplan.models import ModelSpec, load_hf_config, load_model

INSTALL = "install the `dryrun` extra: pip install -e '.[dryrun]' (torch and transformers)"


class PlanRejected(DryRunError):
    """The plan breaks rules; it is not run. ``violations`` are the rules' findings."""

    def __init__(self, violations: list[Violation]) -> None:
        self.violations = violations
        super().__init__("; ".join(f"{v.rule}: {v.message} (fix: {v.fix})" for v in violations))


def dry_run(model_ref: str | dict[str, Any], cluster: ClusterSpec, plan: Plan, workload: Workload, *,
            device: str = "cpu", time_limit_s: float | None = None,
            progress: Callable[[str], None] = lambda _: None) -> DryRunReport:
    """Run ``plan``'s busiest rank for real (see the module docstring): on the CPU with fake tensors
    (``device`` cpu), or with real tensors on this machine's GPU (``device`` cuda). ``model_ref`` must have a
    HF ``config.json`` form (a preset with one, a file, a repo id, or the dict)."""
    if device not in ("cpu", "cuda"):
        raise DryRunError(f"device {device!r}: use cpu (fake tensors, any machine) or cuda (this machine's GPU)")
    config, model = _checked(model_ref, cluster, plan, workload)
    as_run, priced_work, notes = _as_run(plan, workload)
    est = estimate(model, cluster, as_run.model_copy(update={"kernels": "unfused"}), priced_work)
    job = rank_job(model, plan, workload, est)
    try:
        import torch

        from parallelplan.dryrun.measure import measure_rank, mechanism
    except ImportError as err:
        raise DryRunError(f"the dry-run needs {err.name}: {INSTALL}") from None
    if device == "cuda" and not torch.cuda.is_available():
        raise DryRunError("device cuda: PyTorch sees no CUDA GPU on this machine (torch.cuda.is_available() is False); "
                          "dry-run on the CPU (the default), which needs none")
    started = time.perf_counter()
    with _time_limit(time_limit_s):
        measured = measure_rank(config, job, progress, device)
    peak = sum(measured.peak.values())
    memory = est.memory
    saving = _kernel_saving(model, cluster, as_run, priced_work, est)
    state, margin = verdict(peak - saving, memory.overhead, memory.usable)
    micro_batches = workload.global_batch_size // (plan.dp * plan.micro_batch_size)
    return DryRunReport(
        model=_name(model), plan=plan, workload=workload, stage=job.stage, layers=job.chunks,
        in_flight_microbatches=job.in_flight, mechanism=mechanism(job), device=measured.device,
        components=components(measured.peak, est), measured_peak=peak,
        estimated_peak=_tensors(memory),
        runtime_allowance=memory.overhead, usable=memory.usable,
        verdict="OOM" if measured.out_of_memory else state, margin=margin, out_of_memory=measured.out_of_memory,
        reserved=measured.reserved, step_seconds=measured.step_seconds,
        estimated_step_seconds=est.time.compute * job.in_flight / max(micro_batches, 1) + est.time.optimizer,
        seconds=time.perf_counter() - started, estimate=est, notes=notes, kernel_saving=saving)


def _tensors(memory: Any) -> int:
    return memory.weights + memory.gradients + memory.optimizer + memory.activations


def _kernel_saving(model: ModelSpec, cluster: ClusterSpec, plan: Plan, workload: Workload, ran: Any) -> int:
    """Bytes the plan's own fused kernels save over the `transformers` modules that ran, by the estimate
    (its unfused tensors less its fused ones; 0 for an unfused plan)."""
    if plan.kernels == "unfused":
        return 0
    return max(_tensors(ran.memory) - _tensors(estimate(model, cluster, plan, workload).memory), 0)


def _as_run(plan: Plan, workload: Workload) -> tuple[Plan, Workload, tuple[str, ...]]:
    """The plan and workload the estimate is priced for, as PyTorch runs them: ZeRO-3 is FSDP2's
    ``fully_shard`` (fp32 shards as the master copy), where DeepSpeed also keeps a 16-bit copy of each
    shard; the run's sequence parallelism is DTensor's, which keeps each block's gathered input
    (``stacks.json``), so on a stack that keeps the shard instead it is priced for torchtitan. A note says
    each."""
    notes = []
    if plan.sharding == "zero3":
        plan = plan.model_copy(update={"sharding": "fsdp"})
        notes.append("ZeRO-3 runs as FSDP2's fully_shard, so the estimate is priced for FSDP; DeepSpeed's ZeRO-3 "
                     "also keeps a 16-bit copy of each shard (2 bytes per parameter / dp more)")
    if plan.sequence_parallel and plan.tp > 1 and not stacks()[workload.stack]["sequence_parallel_saves_gathered_input"]:
        notes.append(f"sequence parallelism runs as PyTorch's DTensor runs it, so the estimate is priced for torchtitan; "
                     f"{workload.stack} keeps each block's 1/tp input shard instead and needs less")
        workload = workload.model_copy(update={"stack": "torchtitan"})
    return plan, workload, tuple(notes)


def dry_run_small(model_ref: str | dict[str, Any], cluster: ClusterSpec, plan: Plan, workload: Workload, *,
                  time_limit_s: float = 300, progress: Callable[[str], None] = lambda _: None) -> SmallRunReport:
    """Run ``plan``'s process groups for real on a reduced copy of the model (`dryrun.small`): one gloo
    process per rank, one step, the loss and gradients against the unsharded model's."""
    config, model = _checked(model_ref, cluster, plan, workload)
    if plan.vpp > 1:
        raise DryRunError(f"plan.vpp={plan.vpp}: the small-scale run passes each stage's activations on once (no "
                          "interleaved chunks); dry-run interleaved stages at full size (without --small-scale)")
    for stage in range(plan.pp):
        stage_job(model, plan, workload, stage)  # refuses what the run does not build
    try:
        import torch  # noqa: F401  (the ranks import it; say so here rather than in every rank's traceback)
        import transformers  # noqa: F401

        from parallelplan.dryrun.small import run_small
    except ImportError as err:
        raise DryRunError(f"the dry-run needs {err.name}: {INSTALL}") from None
    progress(f"launching {plan.tp * plan.pp * plan.dp} gloo processes on a reduced copy of the model")
    return run_small(config, plan, time_limit_s=time_limit_s)


def _checked(model_ref: str | dict[str, Any], cluster: ClusterSpec, plan: Plan, workload: Workload) -> tuple[dict[str, Any], ModelSpec]:
    """The model's HF config and spec, once the plan passes its structural rules (else `PlanRejected`)."""
    config = load_hf_config(model_ref)
    model = load_model(model_ref if isinstance(model_ref, (str, dict)) else config)
    violations = structural_violations(model, cluster, plan, workload)
    if violations:
        raise PlanRejected(violations)
    return config, model


def _name(model: ModelSpec) -> str:
    return model.display_name or model.name


@contextlib.contextmanager
def _time_limit(seconds: float | None) -> Iterator[None]:
    """Stop the run after ``seconds`` (SIGALRM: the main thread of a POSIX process; elsewhere no limit)."""
    if not seconds or not hasattr(signal, "SIGALRM"):
        yield
        return

    def expired(_signum, _frame):
        raise DryRunError(f"the dry-run passed its time limit of {seconds:g} s; raise --time-limit, or dry-run "
                          "fewer layers (a smaller pp stage) or a shorter sequence")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
