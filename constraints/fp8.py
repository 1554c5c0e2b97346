"""fp8 scaling recipes (`Plan.fp8_recipe`, facts and sources in ``data/fp8_recipes.json``): the quantization
traffic and the bytes each recipe adds beside the fp8 GEMMs.

A fused fp8 linear (Transformer Engine, torchao float8) quantizes each GEMM input before its GEMM. Per
input value, the forward's quantization reads r·b bytes of the b-byte input — r = 2 under current
per-tensor scaling (the amax first, then the cast), 1 otherwise — and writes, per fp8 copy, 1 byte and
its share s of the scales (an fp32 scale per 128 values blockwise and an E8M0 one per 32 under MXFP8:
1/32 byte each; per-tensor and per-row scales: none worth counting). A library that keeps fp8 inputs for
the weight gradient (Transformer Engine) writes their column-wise copy in the forward as well: a second
copy where the GPU's fp8 GEMMs need a transposed operand (Ada, Hopper) or the recipe's blocks run along
one direction (blockwise, MXFP8), one copy where both usages share it (per-tensor recipes on Blackwell).
torchao keeps the 16-bit input and quantizes it again in the backward, one copy each time. So

    bytes moved per GEMM-input value = r·b + c·(1 + s),   c ∈ {1, 2},

the weight gradient's kept input is 1 + s bytes per value (Transformer Engine) or the 16-bit input
(torchao), and Transformer Engine's weight cache holds c copies of each GEMM weight at 1 + s_w bytes
(s_w: the weight blocks' scales). The fp8 GEMMs run at the same rate under every recipe (no per-recipe
GEMM speed is published for the same kernels).
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any

import numpy as np

from parallelplan.constraints.arrays import STACK_RECIPE, PlanArrays, code
from parallelplan.constraints.efficiency import stack_of_target, stacks
from parallelplan.constraints.plan import FP8_RECIPES, Workload
from parallelplan.hardware import GPUSpec


@cache
def _facts() -> dict[str, Any]:
    return json.loads(resources.files("parallelplan.constraints").joinpath("data", "fp8_recipes.json").read_text())


def recipe_facts(recipe: str) -> dict[str, Any]:
    """One recipe's entry of ``data/fp8_recipes.json`` (its name, traffic, scales, architectures, source)."""
    return _facts()["recipes"][recipe]


def stack_recipes(stack: str) -> list[str]:
    """The recipes the stack's fp8 library runs, its default first (``stacks.json`` ``fp8.recipes``)."""
    return stacks()[stack]["fp8"]["recipes"]


def plan_recipe(recipe: str | None, stack: str) -> str:
    """A plan's recipe by name: its own, or the stack's default."""
    return recipe if recipe is not None else stack_recipes(stack)[0]


def target_recipe(recipe: str | None, target: str) -> str:
    """The recipe a launch target writes for an fp8 plan: the plan's own, or the default of the stack the
    target runs (``stacks.json`` ``targets``)."""
    stack = stack_of_target(target)
    assert stack is not None, f"{target} runs no training stack"
    return plan_recipe(recipe, stack)


def bf16_layers_recipes(stack: str) -> list[str]:
    """The recipes under which the stack keeps the first and last layers in bf16 (``stacks.json``
    ``fp8.bf16_layers_recipes``; `Plan.fp8_bf16_layers`)."""
    return stacks()[stack]["fp8"]["bf16_layers_recipes"]


def runs_on(recipe: str, architecture: str) -> bool:
    """Whether GPUs of ``architecture`` run the recipe (``data/fp8_recipes.json`` ``architectures``)."""
    return architecture in recipe_facts(recipe)["architectures"]


def _transposes(architecture: str) -> bool:
    """Whether the architecture's fp8 GEMMs need a transposed operand (``transposing_architectures``)."""
    return architecture in _facts()["transposing_architectures"]["value"]


def runnable_recipes(stack: str, architecture: str) -> list[str]:
    """The stack's recipes that GPUs of ``architecture`` run, its default first."""
    return [r for r in stack_recipes(stack) if runs_on(r, architecture)]


def undominated_recipes(stack: str, architecture: str) -> list[str]:
    """The runnable recipes (`runnable_recipes`) that no other runnable recipe beats or equals in every byte
    the cost model counts — reads, fp8 copies, activation and weight scales (module docstring): a dominated
    recipe is never faster nor smaller, so a search for the best plan needs only these."""
    def costs(recipe: str) -> tuple[float, ...]:
        facts = recipe_facts(recipe)
        transposes = _transposes(architecture)
        return (facts["reads"], float(transposes or facts["directional_blocks"]), facts["scale_bytes_per_value"],
                facts.get("weight_scale_bytes_per_value", 0.0))

    runnable = runnable_recipes(stack, architecture)
    beaten = {r for r in runnable for other in runnable
              if other != r and all(a <= b for a, b in zip(costs(other), costs(r), strict=True))
              and (costs(other) != costs(r) or runnable.index(other) < runnable.index(r))}
    return [r for r in runnable if r not in beaten]


def _per_plan(p: PlanArrays, w: Workload, key: str) -> np.ndarray:
    """A recipe fact of each plan's recipe (the stack's default where the plan names none)."""
    table = np.array([float(recipe_facts(r).get(key, 0.0)) for r in FP8_RECIPES])
    default = FP8_RECIPES.index(stack_recipes(w.stack)[0])
    return table[np.where(p.fp8_recipe == STACK_RECIPE, default, p.fp8_recipe)]


def copies(p: PlanArrays, w: Workload, gpu: GPUSpec) -> np.ndarray:
    """fp8 copies of a tensor the forward writes (module docstring): 2 where the library keeps fp8 inputs
    and the GPU transposes or the recipe's blocks are directional, else 1."""
    if not stacks()[w.stack]["fp8"]["saves_fp8_inputs"]:
        return np.ones(len(p))
    transposes = _transposes(gpu.architecture)
    return np.where(transposes | (_per_plan(p, w, "directional_blocks") > 0), 2.0, 1.0)


def cast_bytes(p: PlanArrays, w: Workload, gpu: GPUSpec, b: np.ndarray) -> np.ndarray:
    """Bytes the forward's quantization moves per GEMM-input value, r·b + c·(1 + s) (module docstring); 0
    for plans without fp8 GEMMs."""
    moved = _per_plan(p, w, "reads") * b + copies(p, w, gpu) * (1.0 + _per_plan(p, w, "scale_bytes_per_value"))
    return np.where(p.precision == code("precision", "fp8"), moved, 0.0)


def kept_input_bytes(p: PlanArrays, w: Workload) -> np.ndarray:
    """Bytes per value of the fp8 column-wise copy of a GEMM input that Transformer Engine keeps for the
    weight gradient: 1 + s (module docstring)."""
    return 1.0 + _per_plan(p, w, "scale_bytes_per_value")


def weight_cache_bytes(p: PlanArrays, w: Workload, gpu: GPUSpec) -> np.ndarray:
    """Bytes per GEMM-weight parameter of Transformer Engine's quantized weight cache: c copies at
    1 + s_w bytes (module docstring)."""
    return copies(p, w, gpu) * (1.0 + _per_plan(p, w, "weight_scale_bytes_per_value"))
