"""How far an estimate may be from what the run will measure (``data/uncertainty.json``).

Step time — a prediction interval from out-of-sample residuals. The residuals are those of the published
runs under leave-one-source-out cross-validation (`python -m benchmarks.published_runs
--update-intervals`): r = log(measured / predicted step time) for every row, predicted with the efficiency
factors refitted without the row's publication or benchmark suite — the error to expect on a run the model
was not tuned on. By model class (dense, MoE), the interval of coverage c is
[t·exp(q₍₁₋c₎/₂), t·exp(q₍₁₊c₎/₂)] with q the empirical quantiles of the class's residuals (linear
interpolation; numpy's default). A calibration profile (`plan calibrate`) fits other factors; its own
cross-validated error is what `plan calibrate` reports, and the interval here stays the published runs'.

Peak memory — a range, not a fitted interval: no published run reports its peak. Two parts:
- activations: the largest deviations of the model from PyTorch's MemTracker over the reference cases of
  tests/test_memory_reference.py, by class, as shares of the activations and temporaries MemTracker
  measured (e = (predicted − measured) / measured activations; measured ∈ predicted − [e_max, e_min] ×
  activations, the estimate's activations and KV cache standing for the measured ones).
  Weights, gradients and optimizer states are exact there (the test asserts the weights byte for byte);
- the runtime allowance (CUDA context, NCCL buffers, fragmentation, ``data/runtime.json``): between half
  and twice its value, since each of its figures is a single reported measurement.
A plan fits ``yes`` when the range's top fits the GPU, ``no`` when even its bottom does not, else it is
``at risk``.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Literal

import numpy as np

STEP_COVERAGE = 0.8
"""The coverage of the step-time interval every estimate carries."""
ALLOWANCE_RANGE = (0.5, 2.0)
"""The runtime allowance's range, as multiples of its value (module docstring)."""
Verdict = Literal["yes", "at risk", "no"]


@cache
def _data() -> dict:
    return json.loads(resources.files("parallelplan.constraints").joinpath("data", "uncertainty.json").read_text())


def model_class(moe: bool) -> str:
    return "moe" if moe else "dense"


def step_residuals(moe: bool) -> np.ndarray:
    """log(measured / predicted) of the class's published runs, held out by source suite."""
    cls = model_class(moe)
    return np.array([row["log_ratio"] for row in _data()["step_time"]["residuals"] if row["class"] == cls])


def step_interval(step_s: float, moe: bool, coverage: float = STEP_COVERAGE) -> tuple[float, float]:
    """The step-time interval of ``coverage`` around a predicted ``step_s`` (module docstring)."""
    low, high = np.quantile(step_residuals(moe), [(1 - coverage) / 2, (1 + coverage) / 2])
    return step_s * float(np.exp(low)), step_s * float(np.exp(high))


def activation_deviation(moe: bool) -> tuple[float, float]:
    """(smallest, largest) (predicted − measured) / measured activations over the class's MemTracker cases."""
    errors = [case["of_activations"] for case in _data()["memory"]["cases"]
              if case["class"] == model_class(moe) and case["of_activations"] is not None]  # None: a peak without them
    return min(errors), max(errors)


def memory_range(tensors: float, activations: float, allowance: float, moe: bool) -> tuple[float, float]:
    """(low, high) bytes of a peak whose tensors (``activations`` of them) and runtime allowance the model
    puts at ``tensors`` and ``allowance`` (module docstring)."""
    smallest, largest = activation_deviation(moe)
    low = tensors - max(largest, 0.0) * activations + ALLOWANCE_RANGE[0] * allowance
    high = tensors - min(smallest, 0.0) * activations + ALLOWANCE_RANGE[1] * allowance
    return low, high


def verdict(low: float, high: float, usable: float) -> Verdict:
    return "yes" if high <= usable else "no" if low > usable else "at risk"
