"""Step time of published training runs, predicted by the cost model from their own layouts.

Run from the repository root:  python -m benchmarks.published_runs [--no-cross-validation]
Writes benchmarks/results/published_runs.json and published_runs.md: per row the model, GPUs, layout,
published and predicted tokens/s per GPU, and the relative error; then the median and 90th percentile of
the absolute errors (issue 3 targets: ≤ 12 % and ≤ 25 %).

Cross-validation (issue 15; minutes): the efficiency factors refitted by `plan calibrate`'s fit
(`constraints.calibration.calibrate`) on the rows of every source suite but one — the publication or
benchmark suite, `source_suite` — and the held-out suite's rows predicted with them: leave-one-source-out,
so a suite's own quirks cannot tune the factors that predict it. Beside it, the same fit on every row
(in-sample) and the data file's factors; the error per class (dense / MoE, software stack, GPU, scale).
Caveat: a factor the remaining rows cannot tell (e.g. Blackwell's when its only suite is held out) keeps the
data file's value, which `benchmarks.fit_efficiency` fitted on all rows; each fold lists what it held.

Data: benchmarks/data/published_runs_dev.json (114 runs with sources, from the project's reference data,
each with the software ``stack`` it ran on, `Workload.stack`: torchtitan for the torchtitan suites, maxtext
for the MaxText recipes, megatron-2022 for the 2021 Megatron-LM README (the runs of Narayanan et al. 2021,
without flash attention: eager attention), megatron for Megatron-Core, NeMo and NeMo AutoModel — whose
runs use Transformer Engine's kernels, per their notes).
A row is used when it publishes a step time or tokens/s and its layout is complete (tp, pp, micro and
global batch, sequence length, precision — stated or implied by the source's own note). What each row
needs beyond what it states is assumed the way the source's framework defaults it, and listed per row:
- the model: the preset named in MODEL_PRESETS; the cluster: the preset of its GPU (CLUSTER_PRESETS);
- dp = GPUs / (tp · pp · cp) — some MoE tables print the expert-data-parallel size instead;
- Megatron/NeMo recipes: sequence parallelism when tp > 1, the distributed optimizer (ZeRO-1 over
  dp · cp), communication overlap on, no recompute unless stated, expert TP 1 unless stated;
- FSDP2 (torchtitan, NeMo AutoModel) and MaxText rows: parameters, gradients and states sharded over
  dp · cp (fsdp); torchtitan's float8 linears = fp8 GEMMs, its "selective" activation checkpointing is
  its op-level policy (selective_mm), rows without torch.compile (stated, or implied by async TP or
  float8) run eager (unfused) kernels, and TP communication is overlapped only with async TP;
- fp8 rows: the scaling recipe the source states (mxfp8; "current scaling" is tensorwise), else the
  stack's default (Megatron's delayed scaling, torchtitan's rowwise);
- when a row does not state recompute and its layout does not fit our memory model without it, the
  fastest recompute that fits (Megatron's selective modules, or full recompute of some layers per rank):
  a run that trained did not run out of memory, and its authors tuned it.
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from benchmarks.uncertainty_data import write_section
from parallelplan.constraints.calibration import MeasuredRun, calibrate
from parallelplan.constraints.check import selective_ladder
from parallelplan.constraints.efficiency import Efficiency
from parallelplan.constraints.evaluate import evaluate
from parallelplan.constraints.plan import Plan, Workload
from parallelplan.constraints.rules import structural_violations
from parallelplan.hardware import ClusterSpec, load_cluster
from parallelplan.models import ModelSpec, load_model

DATA = Path(__file__).parent / "data" / "published_runs_dev.json"
RESULTS = Path(__file__).parent / "results"

MODEL_PRESETS = {
    "GPT3-20B": "gpt3-20b", "GPT3-175B": "gpt-3-175b", "GPT-3 175B (NeMo Megatron)": "gpt-3-175b",
    "LLAMA2-7B": "llama-2-7b", "LLAMA2-13B": "llama-2-13b", "Llama 2 13B": "llama-2-13b", "Llama 2 70B": "llama-2-70b",
    "Nemotron-8B": "nemotron-3-8b", "Nemotron-22B": "nemotron-3-22b", "Nemotron-4 15B": "nemotron-4-15b",
    "Nemotron-4 340B": "nemotron-4-340b",
    "LLAMA3-8B": "llama-3-8b", "LLAMA3_8B": "llama-3-8b", "Llama 3 8B": "llama-3-8b", "Llama 3.1 8B": "llama-3.1-8b",
    "LLAMA3-70B": "llama-3.1-70b", "LLAMA3_70B": "llama-3.1-70b", "Llama3 70B": "llama-3.1-70b",
    "Llama 3 70B": "llama-3.1-70b", "Llama 3 70B (MaxText/JAX)": "llama-3.1-70b", "Llama 3.1 70B": "llama-3.1-70b",
    "LLAMA3.1_405B": "llama-3.1-405b", "Llama 3.1 405B": "llama-3.1-405b",
    "DeepSeekV3 (dropless)": "deepseek-v3", "DeepSeekV3 (w/o MTP)": "deepseek-v3", "DeepSeekV3 (w/ MTP)": "deepseek-v3",
    "DeepSeek V3 671B": "deepseek-v3", "DeepSeek-V3 671B": "deepseek-v3", "Kimi K2": "kimi-k2",
    "Qwen3_30B_a3B (tokendrop)": "qwen3-30b-a3b", "Qwen3_30B_a3B": "qwen3-30b-a3b", "Qwen3 MoE 30B (30B-A3B)": "qwen3-30b-a3b",
    "Qwen3_235B_a22B (tokendrop)": "qwen3-235b-a22b", "Qwen3_235B_a22B": "qwen3-235b-a22b",
    "GPT OSS 120B": "gpt-oss-120b", "GPT-OSS 120B": "gpt-oss-120b", "Grok-1 314B": "grok-1",
    "Llama 4 Maverick 400B": "llama-4-maverick",
}
CLUSTER_PRESETS = {
    "H100": "dgx-h100", "H100 (DGX-H100)": "dgx-h100", "A100 (Selene)": "dgx-a100", "A100 80GB": "dgx-a100",
    "H100 96GB HBM2e SXM, 500W power limit (Grand Teton)": "grand-teton-h100-96gb",
    "H100 94/95GB HBM2e, lower-TDP SXM": "grand-teton-h100-96gb",
    "GB200": "gb200-nvl72", "GB200 (DGX-GB200)": "gb200-nvl72", "B200 (DGX-B200)": "dgx-b200",
    "GB300 (DGX-GB300)": "gb300-nvl72",
}
FSDP_SOURCES = ("torchtitan", "AutoModel", "MaxText")


@dataclass
class Row:
    id: int
    model: str
    gpus: int
    layout: str
    published: float
    predicted: float | None = None
    error: float | None = None
    memory_gib: float | None = None
    fits: bool | None = None
    assumptions: list[str] = field(default_factory=list)
    excluded: str | None = None


def _precision(run: dict) -> str | None:
    stated = (run.get("precision") or "").lower()
    if "fp8" in stated or "float8" in stated:
        return "fp8"
    if stated.startswith("bf16") or "half" in stated:
        return "bf16"
    if "FP8 implied" in (run.get("notes") or ""):
        return "fp8"
    return None


def _fp8_recipe(run: dict) -> str | None:
    """The fp8 scaling recipe the source states (``mxfp8``; ``current scaling``: tensorwise), else None (the
    stack's default: Megatron's delayed scaling, torchtitan's rowwise)."""
    stated = (run.get("precision") or "").lower()
    if "mxfp8" in stated:
        return "mxfp8"
    if "current scaling" in stated:
        return "tensorwise"
    return None


def _plan(run: dict, assumptions: list[str]) -> Plan:
    tp, pp, cp = run["tp"] or 1, run["pp"] or 1, run.get("cp") or 1
    gpus = run["num_gpus"]
    dp = gpus // (tp * pp * cp)
    if run.get("dp") not in (None, dp):
        assumptions.append(f"dp = {dp} (GPUs/(tp·pp·cp)); the source prints {run['dp']}")
    vpp = run.get("virtual_pipeline_stages") or 1
    if pp == 1 and vpp > 1:
        assumptions.append(f"vpp {vpp} ignored: pp = 1")
        vpp = 1
    fsdp_source = any(tag in run["source"] for tag in FSDP_SOURCES) or "FSDP" in (run.get("dp_sharding") or "")
    fsdp = fsdp_source and "FSDP=0" not in (run.get("dp_sharding") or "")
    recompute = (run.get("activation_recompute") or "none").split()[0]
    torchtitan = run["stack"] == "torchtitan"
    if torchtitan and recompute == "selective":
        recompute = "selective_mm"
        assumptions.append("selective = torchtitan's op-level policy (selective_mm)")
    notes = run.get("notes") or ""
    async_tp = torchtitan and tp > 1 and any(tag in notes for tag in ("AsyncTP", "Async TP"))
    float8 = torchtitan and _precision(run) == "fp8"
    compiled = "torch.compile" in notes or async_tp or float8
    kernels = "unfused" if torchtitan and not compiled else "fused"
    if kernels == "unfused":
        assumptions.append("eager PyTorch kernels (no torch.compile)")
    elif torchtitan and "torch.compile" not in notes:
        assumptions.append("torch.compile on: " + ("async TP requires it (torchtitan's parallelize raises without it)"
                                                   if async_tp else "torchtitan's float8 linears are run compiled"))
    if torchtitan and tp > 1:
        assumptions.append(f"async TP {'on' if async_tp else 'off'} (torchtitan's default: off)")
    moe = run.get("ep") is not None and (run.get("ep") or 1) > 1
    etp = run.get("expert_tp") or (1 if moe else tp)
    sp = run.get("sequence_parallel")
    if sp is None:
        sp = tp > 1
        assumptions.append(f"sequence parallel {'on' if sp else 'off'} (NeMo/Megatron default with tp {tp})")
    return Plan(
        tp=tp, pp=pp, dp=dp, cp=cp, ep=run.get("ep") or 1, etp=etp, vpp=vpp,
        micro_batch_size=run["micro_batch_size"], sequence_parallel=bool(sp),
        sharding="fsdp" if fsdp else ("zero1" if dp * cp > 1 else "none"),
        recompute=recompute if recompute in ("none", "selective", "selective_mm", "full") else "none",
        precision=_precision(run), fp8_recipe=_fp8_recipe(run), kernels=kernels, tp_comm_overlap=not torchtitan or async_tp,
        attention_kernel="eager" if run["stack"] == "megatron-2022" else "flash",
    )


@dataclass
class Setup:
    """A published run as cost-model inputs: its model, cluster, workload and layout (module docstring)."""

    model: ModelSpec
    cluster: ClusterSpec
    workload: Workload
    plan: Plan
    assumptions: list[str]


def layout_text(run: dict) -> str:
    return (f"tp{run['tp']} pp{run['pp']} cp{run.get('cp') or 1} ep{run.get('ep') or 1} "
            f"vpp{run.get('virtual_pipeline_stages') or 1} mbs{run.get('micro_batch_size')}")


def runs() -> list[dict]:
    return json.loads(DATA.read_text())


def setup(run: dict, efficiency: Efficiency | None = None) -> Setup | str:
    """The run's inputs, or why its layout is incomplete."""
    missing = [k for k in ("tp", "pp", "micro_batch_size", "global_batch_size", "seq_length") if run.get(k) is None]
    if _precision(run) is None:
        missing.append("precision")
    if run.get("ep") is None and (run.get("num_experts") or 0) > 1:
        missing.append("ep (an MoE model)")
    if missing:
        return "incomplete layout: " + ", ".join(missing)
    assumptions: list[str] = []
    model = load_model(MODEL_PRESETS[run["model_name"]])
    cluster = load_cluster(CLUSTER_PRESETS[run["gpu_type"]], gpus=run["num_gpus"])
    plan = _plan(run, assumptions)
    workload = Workload(seq_len=run["seq_length"], global_batch_size=run["global_batch_size"],
                        train_mtp="w/ MTP" in run["model_name"], stack=run["stack"],
                        moe_dispatcher="deepep" if "DeepEP" in (run.get("notes") or "") else "alltoall")
    result = evaluate(model, cluster, workload, [plan], efficiency=efficiency)
    if run.get("activation_recompute") is None and not result.fits[0]:
        # a run that trained did not run out of memory, and its authors tuned it: take the fastest
        # recompute that fits — Megatron's selective modules, or full recompute of some layers per rank
        layers = -(-model.num_layers // plan.pp)
        candidates = [plan.model_copy(update={"recompute": "selective", "recompute_modules": modules})
                      for modules in selective_ladder(model)]
        candidates += [plan.model_copy(update={"recompute": "full", "recompute_layers": n}) for n in range(1, layers + 1)]
        candidates = [Plan.model_validate(c.model_dump()) for c in candidates]
        trial = evaluate(model, cluster, workload, candidates, efficiency=efficiency)
        if trial.fits.any():
            best = int(np.argmax(np.where(trial.fits, trial.tokens_per_s, -1.0)))
            plan = candidates[best]
            how = (f"selective ({', '.join(plan.recompute_modules)})" if plan.recompute == "selective"
                   else f"full recompute of {plan.recompute_layers} of {layers} layers per rank")
            assumptions.append(f"recompute {how}: the fastest that fits our memory model")
    return Setup(model, cluster, workload, plan, assumptions)


def rows(efficiency: Efficiency | None = None) -> list[Row]:
    """Every published run with a throughput, predicted under ``efficiency`` (default: the data file's)."""
    out = []
    for run in runs():
        published = _published(run)
        if published is None:
            continue
        row = Row(run["id"], run["model_name"], run["num_gpus"], layout_text(run), float(published))
        inputs = setup(run, efficiency)
        if isinstance(inputs, str):
            row.excluded = inputs
            out.append(row)
            continue
        result = evaluate(inputs.model, inputs.cluster, inputs.workload, [inputs.plan], efficiency=efficiency)
        row.predicted = float(result.tokens_per_s[0] / run["num_gpus"])
        row.error = row.predicted / row.published - 1
        row.memory_gib = float(result.memory.total[0] / 2**30)
        row.fits = bool(result.fits[0])
        row.assumptions = inputs.assumptions
        out.append(row)
    return out


def source_suite(run: dict) -> str:
    """The publication or benchmark suite of a row: its source up to the first comma or parenthesis (the
    same suite's releases, e.g. NeMo 25.09 and 25.11, fall together)."""
    return run["source"].split(",")[0].split(" (")[0].strip()


def row_classes(run: dict) -> dict[str, str]:
    """The classes a row's error is tabulated by."""
    stack = "megatron (AutoModel)" if "AutoModel" in run["source"] else run["stack"]
    gpus = run["num_gpus"]
    return {"model": "MoE" if run.get("model_type") == "moe" or (run.get("num_experts") or 0) > 1 else "dense",
            "stack": stack, "GPU": CLUSTER_PRESETS[run["gpu_type"]],
            "scale": "≤ 64 GPUs" if gpus <= 64 else "65–512 GPUs" if gpus <= 512 else "> 512 GPUs"}


def cross_validated(efficiency: Efficiency | None = None) -> dict:
    """Leave-one-source-out predictions, in-sample predictions, and what each fold fitted (module docstring)."""
    used = [(run, setup(run, efficiency)) for run in runs() if _published(run) is not None]
    # calibration takes layouts the rules accept (rows with Megatron's uneven interleaved stages are not)
    used = [(run, inputs) for run, inputs in used if not isinstance(inputs, str) and not structural_violations(
        inputs.model, inputs.cluster, inputs.plan, inputs.workload, allow_cross_domain=True)]
    measured = [MeasuredRun(row=run["id"], model=inputs.model, cluster=inputs.cluster, plan=inputs.plan,
                            workload=inputs.workload,
                            step_time_s=run["global_batch_size"] * run["seq_length"] / (_published(run) * run["num_gpus"]))
                for run, inputs in used]
    base = efficiency or Efficiency.default()
    full = calibrate(measured, efficiency=base, cross_validate=False)
    held_out: dict[int, float] = {}
    folds = []
    for suite in sorted({source_suite(run) for run, _ in used}):
        train = [m for (run, _), m in zip(used, measured, strict=True) if source_suite(run) != suite]
        fold = calibrate(train, efficiency=base, cross_validate=False)
        fitted = base.with_overrides(fold.efficiency_overrides())
        for run, inputs in used:
            if source_suite(run) == suite:
                step = evaluate(inputs.model, inputs.cluster, inputs.workload, [inputs.plan], efficiency=fitted).time.step[0]
                held_out[run["id"]] = run["global_batch_size"] * run["seq_length"] / (float(step) * run["num_gpus"])
        folds.append({"held_out": suite, "rows": sum(source_suite(run) == suite for run, _ in used),
                      "fitted": {f.name: round(f.after, 4) for f in fold.factors if f.fitted and not f.name.startswith("runtime.")},
                      "held": [f.name for f in fold.factors if not f.fitted and not f.name.startswith("runtime.")]})
    in_sample = {run["id"]: run["global_batch_size"] * run["seq_length"] / (r.after_s * run["num_gpus"])
                 for (run, _), r in zip(used, full.runs, strict=True)}
    return {"held_out": held_out, "in_sample": in_sample, "folds": folds,
            "classes": {run["id"]: row_classes(run) for run, _ in used}, "suites": {run["id"]: source_suite(run) for run, _ in used}}


def _published(run: dict) -> float | None:
    published = run.get("tokens_per_sec_per_gpu")
    if published is None and run.get("step_time_s"):
        published = run["global_batch_size"] * run["seq_length"] / run["step_time_s"] / run["num_gpus"]
    return published


def summary(all_rows: list[Row]) -> dict:
    errors = [abs(r.error) for r in all_rows if r.error is not None]
    return {"rows_used": len(errors), "rows_excluded": sum(r.excluded is not None for r in all_rows),
            "median_abs_error": statistics.median(errors), "p90_abs_error": float(np.percentile(errors, 90))}


def _spread(errors: list[float]) -> str:
    return (f"median {100 * statistics.median(errors):.1f}%, p90 {100 * float(np.percentile(errors, 90)):.1f}%"
            if errors else "-")


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-cross-validation", action="store_true", help="Only the data file's factors (a second).")
    parser.add_argument("--update-intervals", action="store_true",
                        help="Write the held-out residuals into constraints/data/uncertainty.json (the step-time "
                             "prediction intervals every estimate carries).")
    args = parser.parse_args()
    if args.update_intervals and args.no_cross_validation:
        parser.error("--update-intervals needs the cross-validation")
    start = time.perf_counter()
    all_rows = rows()
    stats = summary(all_rows)
    cv = None if args.no_cross_validation else cross_validated()
    used = [r for r in all_rows if r.error is not None and (cv is None or r.id in cv["held_out"])]
    if cv is not None:
        def errors(kind: str, rows_: list[Row]) -> list[float]:
            return [abs(cv[kind][r.id] / r.published - 1) for r in rows_ if r.id in cv[kind]]

        stats["cross_validated"] = {"median_abs_error": statistics.median(errors("held_out", used)),
                                    "p90_abs_error": float(np.percentile(errors("held_out", used), 90))}
        stats["in_sample"] = {"median_abs_error": statistics.median(errors("in_sample", used)),
                              "p90_abs_error": float(np.percentile(errors("in_sample", used), 90))}
        stats["folds"] = cv["folds"]
        stats["cross_validated"]["rows"] = len(cv["held_out"])
    stats["seconds"] = time.perf_counter() - start
    RESULTS.mkdir(exist_ok=True)
    rows_json = [r.__dict__ | ({} if cv is None or r.id not in cv["held_out"] else
                               {"cross_validated": cv["held_out"][r.id], "in_sample": cv["in_sample"][r.id],
                                "suite": cv["suites"][r.id], **cv["classes"][r.id]}) for r in all_rows]
    (RESULTS / "published_runs.json").write_text(json.dumps({"summary": stats, "rows": rows_json}, indent=2) + "\n")
    lines = ["| id | model | GPUs | layout | published tok/s/GPU | predicted | error | held-out error | memory GiB | notes |",
             "|---:|---|---:|---|---:|---:|---:|---:|---:|---|"]
    for r in all_rows:
        if r.excluded:
            lines.append(f"| {r.id} | {r.model} | {r.gpus} | {r.layout} | {r.published:.0f} | | | | | excluded: {r.excluded} |")
        else:
            held = "" if cv is None or r.id not in cv["held_out"] else f"{100 * (cv['held_out'][r.id] / r.published - 1):+.1f}%"
            lines.append(f"| {r.id} | {r.model} | {r.gpus} | {r.layout} | {r.published:.0f} | {r.predicted:.0f} | "
                         f"{100 * r.error:+.1f}% | {held} | {r.memory_gib:.1f}{'' if r.fits else ' (OOM)'} | {'; '.join(r.assumptions)} |")
    head = (f"# Published runs: predicted vs published\n\nmedian |error| {100 * stats['median_abs_error']:.1f}%, "
            f"90th percentile {100 * stats['p90_abs_error']:.1f}% over {stats['rows_used']} rows "
            f"({stats['rows_excluded']} excluded), with the data file's factors\n")
    if cv is not None:
        head += (f"\nleave-one-source-out (factors refitted without the row's suite) over the {len(cv['held_out'])} rows whose "
                 f"layouts the rules accept: {_spread(errors('held_out', used))}; in-sample (refitted on them all): "
                 f"{_spread(errors('in_sample', used))}; the data file's factors on the same rows: "
                 f"{_spread([abs(r.error) for r in used if r.id in cv['held_out']])}\n"
                 "\n| class | value | rows | data file | held out | in sample |\n|---|---|---:|---|---|---|\n")
        for kind in ("model", "stack", "GPU", "scale"):
            for value in sorted({cv["classes"][r.id][kind] for r in used}):
                members = [r for r in used if cv["classes"][r.id][kind] == value]
                head += (f"| {kind} | {value} | {len(members)} | {_spread([abs(r.error) for r in members])} | "
                         f"{_spread(errors('held_out', members))} | {_spread(errors('in_sample', members))} |\n")
        head += "\n| held-out suite | rows | factors refitted on the others | held at the data file's value |\n|---|---:|---|---|\n"
        head += "".join(f"| {f['held_out']} | {f['rows']} | {', '.join(f'{k} {v}' for k, v in f['fitted'].items())} | "
                        f"{', '.join(f['held'])} |\n" for f in cv["folds"])
    (RESULTS / "published_runs.md").write_text(head + "\n" + "\n".join(lines) + "\n")
    if args.update_intervals:
        write_section("step_time", "python -m benchmarks.published_runs --update-intervals",
                      "leave-one-source-out residuals of the published runs the rules accept", "residuals",
                      step_residuals(cv, used))
    print(head)


def step_residuals(cv: dict, used: list[Row]) -> list[dict]:
    """log(measured / predicted step time) of every held-out row — log(predicted / published tokens/s) —
    with its suite and model class (`constraints.uncertainty`), and the row's tokens/s per GPU under the
    data file's factors: the fingerprint of the model the residuals belong to (a test recomputes it)."""
    return [{"id": r.id, "suite": cv["suites"][r.id], "class": cv["classes"][r.id]["model"].lower(),
             "log_ratio": round(float(np.log(cv["held_out"][r.id] / r.published)), 6), "predicted": round(r.predicted, 3)}
            for r in sorted(used, key=lambda r: r.id) if r.id in cv["held_out"]]


if __name__ == "__main__":
    main()
