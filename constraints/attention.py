"""Flash-attention kernels as a plan dimension (`Plan.attention_kernel`; facts and sources in
``data/attention_kernels.json``, each stack's kernels in ``data/stacks.json``).

A stack's fitted attention factor (`Efficiency.attention_fraction`) is the fraction of the 16-bit peak its
default kernel on the architecture reaches (``attention_default``: cuDNN fused attention under Transformer
Engine on Hopper and Blackwell, FlashAttention-2 under PyTorch SDPA). A plan that names another kernel the
stack offers (``attention_kernels``) runs at

    f_K = f_stack · v(K) / v(default),

v the kernels' published speeds on the same GPU (FlashAttention-3 paper, Fig. 5: FlashAttention-2 368,
cuDNN 609, FlashAttention-3 638 TFLOP/s forward on an H100). ``flash`` is the stack's default (ratio 1) and
``eager`` is priced by its own formula (`constraints.compute.eager_attention`); a kernel without a published
speed on the architecture is not offered there (`rules`: attention_kernel_offered_by_stack,
attention_kernel_runs_on_gpu). All flash kernels keep the same tensors, so memory does not depend on which.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any

import numpy as np

from parallelplan.constraints.arrays import PlanArrays
from parallelplan.constraints.efficiency import stacks
from parallelplan.constraints.plan import ATTENTION_KERNELS

STACK_DEFAULT = "flash"
"""The kernel name that means the stack's own flash kernel."""


@cache
def _facts() -> dict[str, Any]:
    return json.loads(resources.files("parallelplan.constraints").joinpath("data", "attention_kernels.json").read_text())


def kernel_name(kernel: str) -> str:
    """A kernel's display name (``FlashAttention-3``)."""
    return _facts()["kernels"][kernel]["name"]


def default_kernel(stack: str, architecture: str) -> str | None:
    """The flash kernel the stack runs on the architecture by default (``stacks.json`` attention_default)."""
    return stacks()[stack]["attention_default"].get(architecture)


def offered_kernels(stack: str) -> list[str]:
    """The named kernels a plan may ask the stack for (``stacks.json`` attention_kernels)."""
    return stacks()[stack]["attention_kernels"]


def runs_on(kernel: str, architecture: str) -> bool:
    """Whether the kernel runs on GPUs of the architecture (``attention_kernels.json`` architectures)."""
    return kernel in (STACK_DEFAULT, "eager") or architecture in _facts()["kernels"][kernel]["architectures"]


def speed_ratio(kernel: str, stack: str, architecture: str) -> float | None:
    """v(kernel) / v(stack's default) on the architecture (module docstring); None where no published speed
    relates the two."""
    default = default_kernel(stack, architecture)
    if kernel in (STACK_DEFAULT, "eager") or kernel == default:
        return 1.0
    speeds = _facts()["relative_speed"]["value"].get(architecture, {})
    if kernel not in speeds or default not in speeds:
        return None
    return speeds[kernel] / speeds[default]


def priced_kernels(stack: str, architecture: str) -> list[str]:
    """The named kernels a plan on the stack and architecture may use: its default, and those it offers that
    run there with a published speed beside the default."""
    default = default_kernel(stack, architecture)
    named = offered_kernels(stack) + ([default] if default and default not in offered_kernels(stack) else [])
    return [k for k in named if runs_on(k, architecture) and speed_ratio(k, stack, architecture) is not None]


def is_priced(kernel: str, stack: str, architecture: str) -> bool:
    """Whether a plan on the stack and architecture may name the kernel: ``flash`` and ``eager`` always,
    another where `priced_kernels` has it."""
    return kernel in (STACK_DEFAULT, "eager") or kernel in priced_kernels(stack, architecture)


def plan_ratios(p: PlanArrays, stack: str, architecture: str) -> np.ndarray:
    """Each plan's kernel speed over the stack's default (1 where it names none, or one not priced here: the
    rules reject those)."""
    table = np.array([speed_ratio(k, stack, architecture) or 1.0 for k in ATTENTION_KERNELS])
    return table[p.attention_kernel]
