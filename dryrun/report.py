"""What a dry-run reports: the measured peak of the rank by component next to the cost model's estimate of
the same rank, and whether the plan fits the GPU with the runtime's allowance on top."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

from parallelplan.constraints import Estimate, Plan, Workload

AT_RISK_MARGIN = 0.05
"""A measured peak (with the runtime allowance) within 5% of the usable memory is reported "at risk": the
tensors are measured, but the allocator's fragmentation and the CUDA/NCCL runtime are the estimate's
allowance, not a measurement."""

MEASURED_AS = {"weights": ("PARAM", "BUFFER"), "gradients": ("GRAD",), "optimizer": ("OPT",),
               "activations": ("ACT", "TEMP"), "other": ("OTH",)}
"""MemTracker's categories under the estimate's components. MemTracker labels a tensor by how it was made
(a module's parameter or buffer, a ``.grad``, an optimizer state, made in forward or backward), so tensors a
framework keeps outside those slots land elsewhere: the fp32 master copies of `dryrun.optim` are
parameters (``weights``), its persistent fp32 gradient buffer a buffer (``weights``), a freed-and-remade one
``activations``; only the total is compared."""


class Component(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    measured: int
    estimated: int


class DryRunReport(BaseModel):
    model_config = ConfigDict(frozen=True)

    model: str
    plan: Plan
    workload: Workload
    stage: int
    layers: tuple[tuple[int, int], ...]
    """The rank's decoder layers: (first index, count) of each model chunk (one without interleaving)."""
    in_flight_microbatches: int
    mechanism: str
    """How PyTorch ran the plan (`dryrun.job`)."""
    device: str
    """Where: ``cpu (fake tensors, MemTracker)``, or ``cuda: <GPU name>``."""
    components: tuple[Component, ...]
    measured_peak: int
    """Bytes of tensors at the rank's peak, MemTracker's sum over its categories."""
    estimated_peak: int
    """The estimate's weights + gradients + optimizer + activations of the same rank (its runtime allowance apart)."""
    runtime_allowance: int
    usable: int
    verdict: Literal["fits", "at risk", "OOM"]
    margin: int
    """usable − (measured peak − kernel saving + runtime allowance), bytes; negative when it does not fit."""
    kernel_saving: int = 0
    """What the plan's fused kernels (Transformer Engine, Liger-style) save over the `transformers` modules
    that ran, by the estimate (its unfused tensors less its fused ones); the verdict and margin take it off
    the measured peak. 0 for a plan with ``kernels="unfused"``."""
    out_of_memory: str | None = None
    """On a GPU: the CUDA allocator's message when the step did not fit (``measured_peak`` is then what was
    allocated when it failed)."""
    reserved: int | None = None
    """On a GPU: ``torch.cuda.max_memory_reserved`` over the step (the allocator's cached blocks included)."""
    step_seconds: float | None = None
    """On a GPU: the timed second step — the rank's compute only, as the fake process group moves nothing."""
    estimated_step_seconds: float | None = None
    """The estimate's compute for the same micro-batches plus its optimizer update, to set beside ``step_seconds``."""
    seconds: float
    estimate: Estimate
    notes: tuple[str, ...] = ()
    """How the estimate beside the measurement was priced, where that differs from the plan's own stack."""

    @property
    def deviation(self) -> float:
        """estimated / measured − 1."""
        return self.estimated_peak / self.measured_peak - 1


def verdict(measured: int, allowance: int, usable: int) -> tuple[Literal["fits", "at risk", "OOM"], int]:
    margin = usable - (measured + allowance)
    if margin < 0:
        return "OOM", margin
    return ("at risk" if margin < AT_RISK_MARGIN * usable else "fits"), margin


def components(measured: dict[str, int], est: Estimate) -> tuple[Component, ...]:
    """MemTracker's categories under the estimate's components; on a GPU (one ``ALLOCATED`` figure) the
    total alone."""
    memory = est.memory
    if "ALLOCATED" in measured:
        return (Component(name="tensors", measured=measured["ALLOCATED"],
                          estimated=memory.weights + memory.gradients + memory.optimizer + memory.activations),)
    estimated = {"weights": memory.weights, "gradients": memory.gradients, "optimizer": memory.optimizer,
                 "activations": memory.activations, "other": 0}
    return tuple(Component(name=name, measured=sum(measured.get(k, 0) for k in kinds), estimated=estimated[name])
                 for name, kinds in MEASURED_AS.items())
