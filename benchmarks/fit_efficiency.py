"""Fit the step-time model's efficiency factors to the published runs (how data/efficiency.json's
fitted values were obtained).

Run from the repository root:  python -m benchmarks.fit_efficiency [--sweeps 3]
Prints the fitted factors (JSON) and the resulting median / 90th-percentile errors; it writes nothing —
copy values into constraints/data/efficiency.json (shared factors) and stacks.json (attention and
overlap per stack) by hand, with the date.

Method: coordinate descent over a grid per factor, each bounded to its physically plausible range (e.g.
a GEMM can reach 50-80% of dense peak, flash attention 40-70%), minimising a robust loss — the mean
Cauchy loss log(1 + (r/0.25)²) of the log ratio r = log(predicted/published) — so that a few runs far
off for reasons outside the model (early software, a benchmark's own quirks) cannot drag the physics.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
from typing import Any

import numpy as np

import benchmarks.published_runs as runs
from parallelplan.constraints.efficiency import Efficiency

GRIDS: list[tuple[tuple[str, ...], np.ndarray]] = [
    (("gemm", "hopper", "bf16"), np.linspace(0.5, 0.8, 13)),
    (("gemm", "hopper", "fp8"), np.linspace(0.4, 0.75, 15)),
    (("gemm", "blackwell", "bf16"), np.linspace(0.5, 0.8, 13)),
    (("gemm", "blackwell", "fp8"), np.linspace(0.4, 0.75, 15)),
    (("gemm", "ampere", "bf16"), np.linspace(0.5, 0.85, 15)),
    (("attention", "megatron", "hopper"), np.linspace(0.3, 0.7, 9)),
    (("attention", "megatron", "blackwell"), np.linspace(0.4, 0.7, 7)),
    (("attention", "torchtitan", "hopper"), np.linspace(0.15, 0.45, 13)),
    (("overlap", "megatron", "tp"), np.linspace(0.0, 1.0, 11)),
    (("overlap", "megatron", "ep"), np.linspace(0.0, 1.0, 11)),
    (("memory_bound",), np.linspace(0.5, 0.9, 9)),
    (("moe_host_sync_s",), np.linspace(0.0, 4e-3, 17)),
]
TIED = {  # factors fitted as one: Blackwell Ultra and fp16 follow Blackwell and bf16
    ("gemm", "blackwell", "bf16"): [("gemm", "blackwell-ultra", "bf16"), ("gemm", "blackwell", "fp16"),
                                   ("gemm", "blackwell-ultra", "fp16")],
    ("gemm", "blackwell", "fp8"): [("gemm", "blackwell-ultra", "fp8")],
    ("gemm", "hopper", "bf16"): [("gemm", "hopper", "fp16")],
    ("gemm", "ampere", "bf16"): [("gemm", "ampere", "fp16")],
    # MaxText runs the same cuDNN attention and is unfitted: it follows Megatron (data/stacks.json)
    ("attention", "megatron", "hopper"): [("attention", "maxtext", "hopper")],
    ("attention", "megatron", "blackwell"): [("attention", "megatron", "blackwell-ultra"), ("attention", "maxtext", "blackwell"),
                                             ("attention", "maxtext", "blackwell-ultra")],
    ("overlap", "megatron", "tp"): [("overlap", "maxtext", "tp")],
    ("overlap", "megatron", "ep"): [("overlap", "maxtext", "ep")],
    # FlashAttention-2 through SDPA: one kernel, whichever PyTorch stack calls it (data/stacks.json)
    ("attention", "torchtitan", "hopper"): [("attention", stack, arch) for stack in ("torchtitan", "deepspeed", "custom")
                                            for arch in ("hopper", "blackwell", "blackwell-ultra")
                                            if (stack, arch) != ("torchtitan", "hopper")],
}


def _set(overrides: dict[str, Any], path: tuple[str, ...], value: float) -> None:
    for target in (path, *TIED.get(path, [])):
        node = overrides
        for key in target[:-1]:
            node = node.setdefault(key, {})
        node[target[-1]] = value


def _current(eff: Efficiency, path: tuple[str, ...]) -> float:
    node: Any = getattr(eff, path[0])
    for key in path[1:]:
        node = node[key]
    return float(node)


def score(overrides: dict[str, Any]) -> tuple[float, float, float]:
    """(robust loss, median |error|, 90th percentile |error|) of the published runs."""
    eff = Efficiency.default().with_overrides(overrides)
    errors = [r.error for r in runs.rows(efficiency=eff) if r.error is not None]
    logs = np.log1p(np.array(errors))
    loss = float(np.mean(np.log1p((logs / 0.25) ** 2)))
    absolute = [abs(e) for e in errors]
    return loss, statistics.median(absolute), float(np.percentile(absolute, 90))


def fit(sweeps: int) -> dict[str, Any]:
    base = Efficiency.default()
    overrides: dict[str, Any] = {}
    for path, _ in GRIDS:
        _set(overrides, path, _current(base, path))
    for _ in range(sweeps):
        for path, grid in GRIDS:
            trials = []
            for value in grid:
                trial = copy.deepcopy(overrides)
                _set(trial, path, float(value))
                trials.append((score(trial)[0], float(value)))
            _set(overrides, path, min(trials)[1])
    return overrides


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sweeps", type=int, default=3)
    options = parser.parse_args()
    overrides = fit(options.sweeps)
    loss, median, p90 = score(overrides)
    print(json.dumps(overrides, indent=2))
    print(f"robust loss {loss:.4f}; median |error| {100 * median:.1f}%; 90th percentile {100 * p90:.1f}%")


if __name__ == "__main__":
    main()
