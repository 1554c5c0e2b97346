"""Peak training memory of the model against PyTorch's MemTracker, case by case: the tensors' deviation
that bounds every estimate's memory range (`constraints.uncertainty`).

Run from the repository root (needs the test extra: torch and transformers):
    python -m benchmarks.memory_reference [--update-intervals]
Prints predicted/measured − 1 per case of tests/test_memory_reference.py (its method: a `transformers`
model at real widths trains two steps under MemTracker in FakeTensorMode, on the CPU), and the deviation
as a share of the measured activations and temporaries (weights, gradients and states are exact); with
``--update-intervals`` writes them into constraints/data/uncertainty.json, by model class.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from benchmarks.uncertainty_data import write_section

ROOT = Path(__file__).parents[1]


def measured_cases() -> list[dict]:
    sys.path.insert(0, str(ROOT / "tests"))  # the reference recipe and its cases live with the tests
    from test_memory_reference import CASES, MOE_FAMILIES, deviations, measure

    out = []
    for family, layers, seq_len, options in CASES:
        measured, predicted, _ = measure(family, layers, seq_len, options)
        error, of_activations = deviations(measured, predicted)
        out.append({"case": f"{family}, {layers} layers, {seq_len} tokens" + "".join(f", {k}={v}" for k, v in options.items()),
                    "class": "moe" if family in MOE_FAMILIES else "dense", "error": round(error, 5),
                    "of_activations": None if of_activations is None else round(of_activations, 5)})
        print(f"{out[-1]['case']}: {100 * error:+.2f}% of the peak"
              + ("" if of_activations is None else f", {100 * of_activations:+.2f}% of the activations"), flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--update-intervals", action="store_true", help="Write the deviations into constraints/data/uncertainty.json.")
    args = parser.parse_args()
    cases = measured_cases()
    if args.update_intervals:
        write_section("memory", "python -m benchmarks.memory_reference --update-intervals",
                      "predicted/measured - 1 of the tensors (weights, gradients, optimizer states, activations) against "
                      "PyTorch's MemTracker, and (predicted - measured) / measured activations and temporaries, per case "
                      "of tests/test_memory_reference.py", "cases", cases)


if __name__ == "__main__":
    main()
