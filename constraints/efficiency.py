"""The named efficiency factors of the time model, overridable.

Shared by every software stack (``data/efficiency.json``): GEMM, memory-bound kernels, the optimizer's
streaming update, NCCL bus bandwidth, latency and protocols, kernel launches, MoE host synchronisation. Per stack
(``data/stacks.json``, `Workload.stack`): ``attention[stack][arch]``, the fraction of the 16-bit dense peak
the stack's attention kernel reaches (forward; backward executes 2.5× the forward matmul FLOPs at the same
fraction, Dao 2023 FlashAttention-2 §3.1), and ``overlap[stack][kind]``, the fraction of the overlappable
compute that actually hides communication of kind tp (TP collectives behind GEMMs), dp (gradient reduction /
parameter gathers behind backward / forward), cp (the ring's K/V exchange behind attention), ep (expert
all-to-alls behind another micro-batch's work or the shared experts) — 0 where the stack has no such
mechanism.

`Efficiency.default()` reads the data files; `Efficiency.with_overrides({"gemm": {"hopper": {"bf16": 0.7}}})`
(or ``{"attention": {"torchtitan": {"hopper": 0.3}}}``) returns a copy with some factors replaced (what
calibration fits and what a user can pass).
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any


@dataclass(frozen=True)
class Efficiency:
    gemm: dict[str, dict[str, float]]
    attention: dict[str, dict[str, float]]
    memory_bound: float
    streaming: float
    network_bus: dict[str, float]
    latency_s: dict[str, float]
    nccl_protocols: dict[str, dict[str, float]]
    overlap: dict[str, dict[str, float]]
    kernel_launch_s: float
    moe_host_sync_s: float

    @classmethod
    def default(cls) -> Efficiency:
        data = json.loads(resources.files("parallelplan.constraints").joinpath("data", "efficiency.json").read_text())
        shared = {key: entry["value"] for key, entry in data.items() if key in cls.__dataclass_fields__}
        per_stack = {key: {name: stack[key] for name, stack in stacks().items()} for key in ("attention", "overlap")}
        return cls(**shared, **per_stack)

    def with_overrides(self, overrides: dict[str, Any]) -> Efficiency:
        """A copy with ``overrides`` merged in, key by key (e.g. ``{"gemm": {"hopper": {"bf16": 0.7}}}``).
        Unknown keys, a number where a table belongs (or the reverse) and values out of range
        (fractions of a peak in (0, 1], overlap fractions in [0, 1], seconds ≥ 0) raise ValueError
        naming the key."""
        values = {key: copy.deepcopy(getattr(self, key)) for key in self.__dataclass_fields__}
        for key, value in overrides.items():
            if key not in values:
                raise ValueError(f"unknown efficiency factor {key!r}; known: {', '.join(values)}")
            values[key] = _merge(values[key], value, key)
        return Efficiency(**values)

    def gemm_fraction(self, architecture: str, precision: str) -> float:
        """The achieved fraction of the architecture's dense peak for ``precision``'s GEMMs. tf32 (fp32
        tensors on the TF32 tensor cores) takes the 16-bit factor: the same tensor-core GEMM kernels at half
        the rate (no published tf32 runs here to fit one)."""
        if precision == "tf32":
            precision = "bf16"
        table = self.gemm.get(architecture)
        if table is None:
            raise ValueError(f"no GEMM efficiency for GPU architecture {architecture!r}; known: {', '.join(self.gemm)}")
        if precision not in table:
            raise ValueError(f"no {precision} GEMM efficiency for {architecture}; known: {', '.join(table)}")
        return table[precision]

    def attention_fraction(self, architecture: str, stack: str) -> float:
        table = self.attention[stack]
        if architecture not in table:
            raise ValueError(f"no attention efficiency for {architecture!r} under {stack}; known: {', '.join(table)}")
        return table[architecture]


def stacks() -> dict[str, dict[str, Any]]:
    """The software stacks of ``data/stacks.json``, by name: what each runs and its factors, with sources."""
    return _stacks_file()["stacks"]


@cache
def _stacks_file() -> dict[str, Any]:
    return json.loads(resources.files("parallelplan.constraints").joinpath("data", "stacks.json").read_text())


def stack_schedules(stack: str) -> tuple[str, ...]:
    """The pipeline schedules the stack's framework runs (``stacks.json`` ``schedules``, with its sources)."""
    return tuple(stacks()[stack]["schedules"])


def stack_of_target(target: str) -> str | None:
    """The stack a launch target runs (``stacks.json``'s ``targets``), or None for a serving target."""
    return next((name for name, stack in stacks().items() if target in stack["targets"]), None)


def _merge(current: Any, override: Any, where: str) -> Any:
    """``override`` merged into ``current`` (a number or a nested table of numbers), validated."""
    if isinstance(current, dict):
        if not isinstance(override, dict):
            raise ValueError(f"efficiency factor {where!r} is a table ({', '.join(current)}), got {override!r}")
        merged = dict(current)
        for key, value in override.items():
            if key not in current:
                raise ValueError(f"unknown efficiency factor {where}.{key}; known: {', '.join(current)}")
            merged[key] = _merge(current[key], value, f"{where}.{key}")
        return merged
    if isinstance(override, bool) or not isinstance(override, (int, float)):
        raise ValueError(f"efficiency factor {where!r} must be a number, got {override!r}")
    if where.endswith("_s") or where.startswith("latency_s"):
        ok, bounds = override >= 0, "≥ 0 (seconds)"
    elif where.startswith("overlap"):
        ok, bounds = 0 <= override <= 1, "in [0, 1] (the fraction of the compute that hides communication)"
    else:
        ok, bounds = 0 < override <= 1, "in (0, 1] (a fraction of a peak)"
    if not ok:
        raise ValueError(f"efficiency factor {where!r} must be {bounds}, got {override!r}")
    return float(override)
