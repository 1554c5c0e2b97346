"""What one technique buys, predicted against published runs that differ in that technique only.

Run from the repository root:  python -m benchmarks.technique_pairs
Writes benchmarks/results/technique_pairs.json and technique_pairs.md.

A pair is two runs of the same source, model, GPUs, layout, batch and stack (benchmarks/published_runs.py's
``setup`` turns each into cost-model inputs) whose technique fields differ in exactly one of `TECHNIQUES`;
the published speed-up (tokens/s of the second over the first) is set beside the cost model's. Today the
data holds pairs in precision — Megatron-Core / NeMo / MaxText bf16 against fp8, and torchtitan's bf16
against its float8 linears (which torchtitan runs under torch.compile, so some of those pairs also switch
the eager kernels to compiled ones: said per pair) — and in kernels: torchtitan's eager runs against the
same runs under torch.compile (the cost model's unfused against fused kernels, `DERIVED`). The fp8 GEMM efficiency was fitted on these same rows
(benchmarks.fit_efficiency), so the check is of the formula's shape — how much of each step the GEMMs
take at each layout — not of an out-of-sample factor.
"""

from __future__ import annotations

import collections
import statistics
import time
from dataclasses import asdict, dataclass

from benchmarks.published_runs import _precision, _published, runs, setup
from benchmarks.results_files import write_results
from parallelplan.constraints.evaluate import evaluate

TECHNIQUES = {"precision": _precision, "activation_recompute": lambda r: r.get("activation_recompute"),
              "virtual_pipeline_stages": lambda r: r.get("virtual_pipeline_stages") or 1,
              "dp_sharding": lambda r: r.get("dp_sharding"), "sequence_parallel": lambda r: r.get("sequence_parallel"),
              "micro_batch_size": lambda r: r.get("micro_batch_size")}
"""The technique fields a pair may differ in, each read as the cost model reads it."""
DERIVED = {"kernels": lambda r: setup(r).plan.kernels}
"""Techniques the data does not state but the cost-model inputs derive (torchtitan's rows run fused kernels
under torch.compile, stated or implied by async TP or float8 linears): a pair differing in nothing of
`TECHNIQUES` but in one of these is that technique's pair; one differing in a technique of `TECHNIQUES`
too is that technique's, with this change listed under "also changes"."""
SAME = ("source", "model_name", "gpu_type", "num_gpus", "tp", "pp", "cp", "ep", "expert_tp", "global_batch_size",
        "seq_length", "stack")


@dataclass
class Pair:
    technique: str
    before_id: int
    after_id: int
    model: str
    change: str
    published: float
    predicted: float
    error: float
    also: str


def pairs() -> list[Pair]:
    """Every pair of runs that differ in one technique only (module docstring), with both speed-ups."""
    groups = collections.defaultdict(list)
    for run in runs():
        if _published(run) is not None and not isinstance(setup(run), str):
            groups[tuple(str(run.get(k)) for k in SAME)].append(run)
    out = []
    for members in groups.values():
        for a in members:
            for b in members:
                differ = [name for name, read in TECHNIQUES.items() if read(a) != read(b)] or [
                    name for name, read in DERIVED.items() if read(a) != read(b)]
                if len(differ) != 1 or a["id"] == b["id"] or not _ordered(differ[0], a, b):
                    continue
                before, after = setup(a), setup(b)
                speed = [evaluate(s.model, s.cluster, s.workload, [s.plan]).tokens_per_s[0] for s in (before, after)]
                published = _published(b) / _published(a)
                predicted = float(speed[1] / speed[0])
                fields = [f for f in ("kernels", "recompute", "recompute_layers", "tp_comm_overlap")
                          if f != differ[0] and getattr(before.plan, f) != getattr(after.plan, f)]
                also = ", ".join(f"{f} {getattr(before.plan, f)} → {getattr(after.plan, f)}" for f in fields)
                read = (TECHNIQUES | DERIVED)[differ[0]]
                out.append(Pair(differ[0], a["id"], b["id"], a["model_name"], f"{read(a)} → {read(b)}", published,
                                predicted, predicted / published - 1, also))
    return sorted(out, key=lambda p: (p.technique, p.before_id, p.after_id))


def _ordered(technique: str, a: dict, b: dict) -> bool:
    """One direction per pair: bf16 → fp8, and otherwise by run id."""
    if technique == "precision":
        return _precision(a) == "bf16" and _precision(b) == "fp8"
    if technique == "kernels":
        return DERIVED["kernels"](a) == "unfused"
    return a["id"] < b["id"]


def main() -> None:
    found = pairs()
    errors = [abs(p.error) for p in found]
    record = {"date": time.strftime("%Y-%m-%d"), "pairs": [asdict(p) for p in found],
              "median_abs_error": statistics.median(errors) if errors else None,
              "max_abs_error": max(errors) if errors else None}
    lines = [f"# One technique's speed-up: published against predicted ({record['date']})", "",
             "| technique | runs | model | change | published | predicted | error | also changes |",
             "|---|---|---|---|---:|---:|---:|---|"]
    lines += [f"| {p.technique} | {p.before_id} → {p.after_id} | {p.model} | {p.change} | {p.published:.3f} | "
              f"{p.predicted:.3f} | {100 * p.error:+.1f}% | {p.also or '-'} |" for p in found]
    if errors:
        lines += ["", f"{len(found)} pairs; median |error| {100 * record['median_abs_error']:.1f}%, "
                      f"max {100 * record['max_abs_error']:.1f}%"]
        for technique in sorted({p.technique for p in found}):
            own = [abs(p.error) for p in found if p.technique == technique]
            lines.append(f"- {technique}: {len(own)} pairs, median |error| {100 * statistics.median(own):.1f}%, "
                         f"max {100 * max(own):.1f}%")
    write_results("technique_pairs", record, lines)


if __name__ == "__main__":
    main()
