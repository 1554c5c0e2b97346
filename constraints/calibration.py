"""`calibrate(runs)`: the cost model's free factors fitted to a user's measured runs — the named
efficiency factors of the step time (``data/efficiency.json``) and the two free terms of the runtime
allowance (``data/runtime.json``), each within physical bounds (``data/calibration.json``) — so that the
model reproduces what their software stack reaches on their machines. Every other term stays a formula.

Runs (`read_runs`): a CSV file, or a JSON list of objects (or ``{"runs": [...]}``), one run per row:
``model`` and ``cluster`` (what ``load_model`` / ``load_cluster`` take), ``nodes`` or ``gpus``,
``seq_len``, ``global_batch_size``, ``step_time_s`` or ``tokens_per_s``, optionally ``peak_memory_gib``
(the largest ``torch.cuda.max_memory_reserved`` over the GPUs), ``kind`` and ``stack`` (the software that
ran it, `Workload.stack`; default megatron), ``moe_dispatcher`` and ``moe_imbalance`` (`Workload`'s;
default alltoall and 1), and any `Plan` field as a
column (``tp``, ``pp``, ``micro_batch_size``, ``sharding``, ``recompute``, ...; lists separated by ``;``;
an empty cell takes the field's default, ``dp`` the GPUs left by tp·pp·cp).

Step time: minimise the soft-L1 loss of log(predicted / measured) over the runs
(``scipy.optimize.least_squares``, trust-region reflective inside the bounds), from the current values.
Only factors the runs are sensitive to (mean |Δ log t| per unit of the factor's bound range
≥ `MIN_SENSITIVITY`) and can tell apart from the factors already chosen (`MIN_DISTINCT`) are fitted, at most one
per `RUNS_PER_FACTOR` runs, the most sensitive first; the rest are held at their values, each with the
reason. Memory: measured peak = tensors + CUDA context + fragmentation × activations is linear in the two
terms: bounded linear least squares (``scipy.optimize.lsq_linear``); from a single run, the context only.
Cross-validation: the fit with each fold of runs held out (k = min(runs, `FOLDS`) folds, run i in fold
i mod k; each refit one Gauss-Newton step from the full fit, `_held_out_fit`), predicting the runs it did
not see — the error to expect on a run that is not in the file.
"""

from __future__ import annotations

import csv
import json
import math
import re
import statistics
from dataclasses import replace
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError

from parallelplan.common.validation import describe_validation_error
from parallelplan.constraints.efficiency import Efficiency
from parallelplan.constraints.errors import PlanError
from parallelplan.constraints.evaluate import evaluate, step_time_function
from parallelplan.constraints.plan import Plan, Workload
from parallelplan.constraints.rules import structural_violations
from parallelplan.constraints.runtime import RuntimeAllowance
from parallelplan.hardware import ClusterSpec, HardwareError, load_cluster
from parallelplan.models import ModelError, ModelSpec, load_model

GIB = 2**30
SENSITIVITY_STEP = 0.02
"""The move, as a fraction of a factor's bound range, by which its sensitivity is measured."""
MIN_SENSITIVITY = 0.01
"""Mean |Δ log(step time)| per unit of a factor's bound range below which the runs cannot tell its value
(moving it across its whole range would move the predictions by under 1%)."""
MIN_DISTINCT = 0.3
"""A factor is fitted only when at least this share of its effect on the runs (the norm of its effect
vector left after projecting out the already chosen factors') is its own: otherwise the runs cannot tell
it apart from them, and fitting both would trade one against the other."""
RUNS_PER_FACTOR = 3
FOLDS = 5
RUN_COLUMNS = ("model", "cluster", "nodes", "gpus", "kind", "stack", "moe_dispatcher", "moe_imbalance", "seq_len", "global_batch_size", "step_time_s",
               "tokens_per_s", "peak_memory_gib")


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True)


class MeasuredRun(_Frozen):
    """One measured run: what ran, on what, and what it took (``row``: its 1-based row in the file)."""

    row: int
    model: str | ModelSpec
    cluster: str | ClusterSpec
    nodes: int | None = None
    gpus: int | None = None
    plan: Plan
    workload: Workload
    step_time_s: float
    peak_memory_bytes: float | None = None


class FactorFit(_Frozen):
    """One factor: its value before and after, its bounds, and whether it was fitted (else why not)."""

    name: str
    before: float
    after: float
    low: float
    high: float
    fitted: bool
    why: str


class RunFit(_Frozen):
    row: int
    measured_s: float
    before_s: float
    after_s: float
    cross_validated_s: float | None
    measured_memory: float | None
    before_memory: float | None
    after_memory: float | None


class ErrorSummary(_Frozen):
    """|predicted − measured| / measured over the runs: median and maximum."""

    median: float
    max: float


class Calibration(_Frozen):
    factors: tuple[FactorFit, ...]
    runs: tuple[RunFit, ...]
    step_before: ErrorSummary
    step_after: ErrorSummary
    step_cross_validated: ErrorSummary | None
    memory_before: ErrorSummary | None
    memory_after: ErrorSummary | None

    def efficiency_overrides(self) -> dict[str, Any]:
        """The fitted step-time factors as `Efficiency.with_overrides` takes them."""
        overrides: dict[str, Any] = {}
        for factor in self.factors:
            if factor.fitted and not factor.name.startswith("runtime."):
                _assign(overrides, tuple(factor.name.split(".")), factor.after)
        return overrides

    def runtime_overrides(self) -> dict[str, float]:
        return {f.name.removeprefix("runtime."): f.after for f in self.factors if f.fitted and f.name.startswith("runtime.")}

    def profile(self) -> dict[str, Any]:
        """The calibration profile every command takes (``--calibration FILE``): the overrides, and what
        they were fitted on."""
        return {"description": "plan calibrate profile: efficiency and runtime overrides fitted to measured runs",
                "fitted_on_runs": len(self.runs), "step_error_after": self.step_after.model_dump(),
                "step_error_cross_validated": None if self.step_cross_validated is None else self.step_cross_validated.model_dump(),
                "efficiency": self.efficiency_overrides(), "runtime": self.runtime_overrides()}


# -- reading ------------------------------------------------------------------------------------------

def read_runs(path: Path) -> list[MeasuredRun]:
    """The runs of a CSV or JSON file; `PlanError` naming the row and column of the first bad cell."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise PlanError(f"{path}: cannot read it ({err})") from None
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise PlanError(f"{path}: not valid JSON (line {err.lineno}, column {err.colno}: {err.msg})") from None
        rows = data.get("runs") if isinstance(data, dict) else data
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise PlanError(f"{path}: expected a list of runs (objects), or {{\"runs\": [...]}}")
    else:
        rows = [{k: v for k, v in row.items() if k is not None} for row in csv.DictReader(text.splitlines())]
    if not rows:
        raise PlanError(f"{path}: no runs")
    return [_run(path, i + 2 if path.suffix.lower() != ".json" else i + 1, row) for i, row in enumerate(rows)]


def _cell(value: Any) -> Any:
    """A CSV cell as the value it spells (JSON values pass through): true/false, integers, numbers,
    ``;``-separated lists; an empty cell is None."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    if text == "":
        return None
    if ";" in text:
        return tuple(_cell(item) for item in text.split(";") if item.strip())
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    if re.fullmatch(r"[+-]?\d+", text):
        return int(text)
    try:
        return float(text)
    except ValueError:
        return text


def _run(path: Path, row: int, cells: dict[str, Any]) -> MeasuredRun:
    where = f"{path} row {row}"
    values = {key.strip(): _cell(value) for key, value in cells.items()}
    values = {key: value for key, value in values.items() if value is not None}
    unknown = [key for key in values if key not in RUN_COLUMNS and key not in Plan.model_fields]
    if unknown:
        raise PlanError(f"{where}, column {unknown[0]!r}: not a run column; use {', '.join(RUN_COLUMNS)} "
                        "or a Plan field (tp, pp, dp, micro_batch_size, sharding, recompute, ...)")
    for column in ("model", "cluster", "seq_len", "global_batch_size"):
        if column not in values:
            raise PlanError(f"{where}, column {column!r}: missing (every run needs model, cluster, seq_len, "
                            "global_batch_size and step_time_s or tokens_per_s)")
    for column in ("step_time_s", "tokens_per_s", "peak_memory_gib"):
        value = values.get(column)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or not 0 < value < math.inf):
            raise PlanError(f"{where}, column {column!r}: must be a positive number, got {value!r}")
    try:
        workload = Workload(kind=values.get("kind", "pretrain"), stack=values.get("stack", "megatron"),
                            moe_dispatcher=values.get("moe_dispatcher", "alltoall"),
                            moe_imbalance=values.get("moe_imbalance", 1.0),
                            seq_len=values["seq_len"], global_batch_size=values["global_batch_size"])
    except ValidationError as err:
        raise PlanError(f"{where}: {describe_validation_error(err, 'workload')}") from None
    if "step_time_s" in values:
        step = float(values["step_time_s"])
    elif "tokens_per_s" in values:
        step = workload.global_batch_size * workload.seq_len / float(values["tokens_per_s"])
    else:
        raise PlanError(f"{where}, column 'step_time_s': missing (give step_time_s or tokens_per_s)")
    fields = {key: value for key, value in values.items() if key in Plan.model_fields}
    memory = values.get("peak_memory_gib")
    return MeasuredRun(row=row, model=str(values["model"]), cluster=str(values["cluster"]),
                       nodes=values.get("nodes"), gpus=values.get("gpus"), plan=_plan_of(where, fields),
                       workload=workload, step_time_s=step, peak_memory_bytes=None if memory is None else memory * GIB)


def _plan_of(where: str, fields: dict[str, Any]) -> Plan:
    try:
        return Plan(**fields)
    except ValidationError as err:
        raise PlanError(f"{where}: {describe_validation_error(err, 'plan')}") from None


# -- pricing ------------------------------------------------------------------------------------------

class _Priced:
    """The runs grouped by (model, cluster, workload), each group priced in one vectorized call."""

    def __init__(self, runs: list[MeasuredRun]):
        models: dict[Any, ModelSpec] = {}
        clusters: dict[tuple, ClusterSpec] = {}
        groups: dict[tuple, list[int]] = {}
        self.plans: list[Plan] = []
        for i, run in enumerate(runs):
            where = f"row {run.row}"
            model_key = run.model if isinstance(run.model, str) else id(run.model)  # a name, or a spec given as is
            try:
                if model_key not in models:
                    models[model_key] = load_model(run.model)
            except ModelError as err:
                raise PlanError(f"{where}, column 'model': {err}") from None
            key = (run.cluster if isinstance(run.cluster, str) else id(run.cluster), run.nodes, run.gpus)
            try:
                if key not in clusters:
                    clusters[key] = load_cluster(run.cluster, nodes=run.nodes, gpus=run.gpus)
            except HardwareError as err:
                raise PlanError(f"{where}, column 'cluster': {err}") from None
            cluster = clusters[key]
            plan = run.plan
            if "dp" not in run.plan.model_fields_set:
                model_parallel = plan.tp * plan.pp * plan.cp
                if cluster.total_gpus % model_parallel:
                    raise PlanError(f"{where}: tp·pp·cp = {model_parallel} does not divide the cluster's "
                                    f"{cluster.total_gpus} GPUs (columns tp, pp, cp, nodes / gpus)")
                plan = Plan.model_validate(plan.model_dump() | {"dp": cluster.total_gpus // model_parallel})
            if plan.world_size != cluster.total_gpus:
                raise PlanError(f"{where}: tp·pp·dp·cp = {plan.world_size} but the cluster has {cluster.total_gpus} GPUs "
                                "(columns nodes / gpus)")
            broken = structural_violations(models[model_key], cluster, plan, run.workload, allow_cross_domain=True)
            if broken:
                raise PlanError(f"{where}: the layout breaks rule {broken[0].rule}: {broken[0].message}")
            self.plans.append(plan)
            groups.setdefault((model_key, key, run.workload), []).append(i)
        self.groups = [(models[m], clusters[k], w, np.array(rows)) for (m, k, w), rows in groups.items()]
        self.n = len(runs)
        self._step_functions: dict[RuntimeAllowance, list[Any]] = {}

    def evaluate(self, efficiency: Efficiency, runtime: RuntimeAllowance) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(step time, peak memory, activation bytes) of every run, in run order."""
        step, memory, activations = np.empty(self.n), np.empty(self.n), np.empty(self.n)
        for model, cluster, workload, rows in self.groups:
            e = evaluate(model, cluster, workload, [self.plans[i] for i in rows], efficiency=efficiency, runtime=runtime)
            step[rows], memory[rows], activations[rows] = e.time.step, e.memory.total, e.memory.activations
        return step, memory, activations

    def step(self, efficiency: Efficiency, runtime: RuntimeAllowance) -> np.ndarray:
        """The step time of every run (what the fit evaluates hundreds of times: only the efficiency-dependent
        part is recomputed, `evaluate.step_time_function`)."""
        if runtime not in self._step_functions:
            self._step_functions[runtime] = [step_time_function(model, cluster, workload, [self.plans[i] for i in rows],
                                                                runtime=runtime) for model, cluster, workload, rows in self.groups]
        out = np.empty(self.n)
        for (_, _, _, rows), step in zip(self.groups, self._step_functions[runtime], strict=True):
            out[rows] = step(efficiency)
        return out


# -- fitting ------------------------------------------------------------------------------------------

def _assign(tree: dict[str, Any], path: tuple[str, ...], value: float) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def _read(efficiency: Efficiency, path: tuple[str, ...]) -> float | None:
    node: Any = getattr(efficiency, path[0])
    for key in path[1:]:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return float(node)


def _catalogue() -> dict[str, Any]:
    return json.loads(resources.files("parallelplan.constraints").joinpath("data", "calibration.json").read_text())


def _candidates(priced: _Priced, efficiency: Efficiency) -> list[tuple[tuple[str, ...], float, float]]:
    """(path, low, high) of every step-time factor the runs' hardware and precisions name."""
    used = {(cluster.gpu.architecture, priced.plans[i].precision, workload.stack)
            for _, cluster, workload, rows in priced.groups for i in rows}
    out = []
    for entry in _catalogue()["step_time"]:
        for arch, precision, stack in sorted(used):
            named = {"<arch>": arch, "<precision>": precision, "<stack>": stack}
            path = tuple(named.get(part, part) for part in entry["path"])
            if _read(efficiency, path) is not None and all(path != seen for seen, _, _ in out):
                out.append((path, *entry["bounds"]))
    return out


def _with(efficiency: Efficiency, paths: list[tuple[str, ...]], values: np.ndarray) -> Efficiency:
    overrides: dict[str, Any] = {}
    for path, value in zip(paths, values, strict=True):
        _assign(overrides, path, float(value))
    return efficiency.with_overrides(overrides)


def _inward(value: float, fraction: float, low: float, high: float) -> float:
    """A step of ``fraction`` of the bound range from ``value``, upward unless that would leave the range."""
    step = fraction * (high - low)
    return step if value + step <= high else -step


def _fit_step(priced: _Priced, measured: np.ndarray, efficiency: Efficiency, runtime: RuntimeAllowance,
              paths: list[tuple[str, ...]], bounds: tuple[np.ndarray, np.ndarray], start: np.ndarray) -> np.ndarray:
    """The factor values minimising the soft-L1 loss of the log ratios over the runs. Tolerances of 1e-6
    in log step time: far below what the measurements resolve."""
    from scipy.optimize import least_squares

    def residuals(x: np.ndarray) -> np.ndarray:
        return np.log(priced.step(_with(efficiency, paths, x), runtime) / measured)

    return least_squares(residuals, start, bounds=bounds, loss="soft_l1", f_scale=0.05, diff_step=1e-3,
                         x_scale="jac", ftol=1e-6, xtol=1e-6, gtol=1e-6).x


def _log_jacobian(priced: _Priced, efficiency: Efficiency, runtime: RuntimeAllowance, paths: list[tuple[str, ...]],
                  x: np.ndarray, bounds: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """log step time of every run at ``x``, and its Jacobian in the factors (forward differences of 0.1%
    of each factor's bound range, stepping inward at an upper bound)."""
    base = np.log(priced.step(_with(efficiency, paths, x), runtime))
    jac = np.empty((len(base), len(paths)))
    for j in range(len(paths)):
        h = _inward(x[j], 1e-3, bounds[0][j], bounds[1][j])
        shifted = x.copy()
        shifted[j] += h
        jac[:, j] = (np.log(priced.step(_with(efficiency, paths, shifted), runtime)) - base) / h
    return base, jac


def _held_out_fit(x: np.ndarray, residuals: np.ndarray, jac: np.ndarray, kept: np.ndarray,
                  bounds: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """The fit without the runs outside ``kept``: one Gauss-Newton step from the full fit ``x`` on the
    kept runs' residuals and Jacobian, clipped to the bounds — the usual one-step approximation of a refit
    without them, exact for a model linear in its factors."""
    step = np.linalg.lstsq(jac[kept], -residuals[kept], rcond=None)[0]
    return np.clip(x + step, *bounds)


def _summary(predicted: np.ndarray, measured: np.ndarray) -> ErrorSummary:
    errors = np.abs(predicted - measured) / measured
    return ErrorSummary(median=float(statistics.median(errors)), max=float(errors.max()))


def calibrate(runs: list[MeasuredRun], *, efficiency: Efficiency | None = None,
              runtime: RuntimeAllowance | None = None, cross_validate: bool = True) -> Calibration:
    """The fitted factors, the error before and after, and the cross-validated error (module docstring)."""
    from scipy.optimize import lsq_linear

    if not runs:
        raise PlanError("calibrate needs at least one measured run")
    eff, rt = efficiency or Efficiency.default(), runtime or RuntimeAllowance.default()
    priced = _Priced(runs)
    measured = np.array([r.step_time_s for r in runs])
    before, memory_before, activations = priced.evaluate(eff, rt)  # memory does not depend on the efficiency

    # which factors the runs can tell: sensitivity of log step time to each, by a forward difference
    candidates = _candidates(priced, eff)
    effects = []  # Δ log step time of every run per unit of each factor's bound range
    for path, low, high in candidates:
        value = _read(eff, path)
        step = _inward(value, SENSITIVITY_STEP, low, high)
        shifted = priced.step(_with(eff, [path], np.array([value + step])), rt)
        effects.append(np.log(shifted / before) / (SENSITIVITY_STEP * np.sign(step)))
    sensitivity = [float(np.mean(np.abs(e))) for e in effects]
    budget = max(len(runs) // RUNS_PER_FACTOR, 1)
    chosen: list[int] = []
    confounded: dict[int, int] = {}
    for j in sorted(range(len(candidates)), key=lambda j: -sensitivity[j]):
        if sensitivity[j] < MIN_SENSITIVITY or len(chosen) == budget:
            continue
        if chosen:  # the part of its effect the chosen factors cannot mimic
            basis = np.stack([effects[i] for i in chosen], axis=1)
            rest = effects[j] - basis @ np.linalg.lstsq(basis, effects[j], rcond=None)[0]
            if np.linalg.norm(rest) < MIN_DISTINCT * np.linalg.norm(effects[j]):
                confounded[j] = max(chosen, key=lambda i: abs(float(effects[i] @ effects[j])) / np.linalg.norm(effects[i]))
                continue
        chosen.append(j)
    paths = [candidates[j][0] for j in chosen]
    low = np.array([candidates[j][1] for j in chosen])
    high = np.array([candidates[j][2] for j in chosen])
    start = np.clip([_read(eff, p) for p in paths], low, high) if paths else np.array([])
    fitted = _fit_step(priced, measured, eff, rt, paths, (low, high), start) if paths else start
    eff_after = _with(eff, paths, fitted) if paths else eff

    cross = None
    if cross_validate and len(runs) >= 2 and paths:
        cross = np.empty(len(runs))
        everyone, folds = np.arange(len(runs)), min(len(runs), FOLDS)
        log_step, jac = _log_jacobian(priced, eff, rt, paths, fitted, (low, high))
        residuals = log_step - np.log(measured)
        for fold in range(folds):
            held = everyone[everyone % folds == fold]
            x = _held_out_fit(fitted, residuals, jac, everyone[everyone % folds != fold], (low, high))
            cross[held] = priced.step(_with(eff, paths, x), rt)[held]

    # memory: measured = tensors + context + fragmentation × activations, linear in the two terms
    rt_after = rt
    with_peak = np.array([i for i, r in enumerate(runs) if r.peak_memory_bytes is not None], dtype=int)
    memory_terms = _catalogue()["memory"]
    if len(with_peak):
        peaks = np.array([runs[i].peak_memory_bytes for i in with_peak])
        tensors = memory_before[with_peak] - rt.cuda_context_bytes - rt.fragmentation * activations[with_peak]
        names = ["cuda_context_bytes", "fragmentation"] if len(with_peak) >= 2 else ["cuda_context_bytes"]
        columns = [np.ones(len(with_peak)), activations[with_peak]][:len(names)]
        bounds = ([memory_terms[n]["bounds"][0] for n in names], [memory_terms[n]["bounds"][1] for n in names])
        solution = lsq_linear(np.stack(columns, axis=1), peaks - tensors, bounds=bounds).x
        rt_after = replace(rt, **{n: float(v) if n == "fragmentation" else float(round(v)) for n, v in zip(names, solution, strict=True)})
    after, memory_after, _ = priced.evaluate(eff_after, rt_after)

    factors = []
    for j, (path, lo, hi) in enumerate(candidates):
        value = _read(eff, path)
        if j in chosen:
            factors.append(FactorFit(name=".".join(path), before=value, after=float(fitted[chosen.index(j)]), low=lo,
                                     high=hi, fitted=True, why=f"sensitivity {sensitivity[j]:.2f}"))
        else:
            if sensitivity[j] < MIN_SENSITIVITY:
                why = f"held: the runs cannot tell it (sensitivity {sensitivity[j]:.3f} < {MIN_SENSITIVITY})"
            elif j in confounded:
                why = f"held: on these runs its effect is mostly that of {'.'.join(candidates[confounded[j]][0])}"
            else:
                why = f"held: {len(runs)} runs support {budget} factor(s), one per {RUNS_PER_FACTOR} runs"
            factors.append(FactorFit(name=".".join(path), before=value, after=value, low=lo, high=hi, fitted=False, why=why))
    for name, term in memory_terms.items():
        value, new = float(getattr(rt, name)), float(getattr(rt_after, name))
        fitted_memory = len(with_peak) >= (1 if name == "cuda_context_bytes" else 2)
        factors.append(FactorFit(name=f"runtime.{name}", before=value, after=new, low=term["bounds"][0],
                                 high=term["bounds"][1], fitted=fitted_memory,
                                 why="fitted to the measured peaks" if fitted_memory else
                                 "held: needs measured peaks (peak_memory_gib) of " + ("one run" if name == "cuda_context_bytes" else "two runs")))
    peaks_all = np.array([r.peak_memory_bytes or np.nan for r in runs])
    return Calibration(
        factors=tuple(factors),
        runs=tuple(RunFit(row=r.row, measured_s=r.step_time_s, before_s=float(before[i]), after_s=float(after[i]),
                          cross_validated_s=None if cross is None else float(cross[i]),
                          measured_memory=r.peak_memory_bytes,
                          before_memory=None if r.peak_memory_bytes is None else float(memory_before[i]),
                          after_memory=None if r.peak_memory_bytes is None else float(memory_after[i]))
                   for i, r in enumerate(runs)),
        step_before=_summary(before, measured), step_after=_summary(after, measured),
        step_cross_validated=None if cross is None else _summary(cross, measured),
        memory_before=_summary(memory_before[with_peak], peaks_all[with_peak]) if len(with_peak) else None,
        memory_after=_summary(memory_after[with_peak], peaks_all[with_peak]) if len(with_peak) else None,
    )


def load_profile(path: Path) -> tuple[Efficiency, RuntimeAllowance]:
    """The efficiency factors and runtime allowance of a calibration profile (`Calibration.profile`)."""
    from parallelplan.common.files import read_mapping

    data = read_mapping(path, PlanError, "a calibration profile")
    if not isinstance(data.get("efficiency", {}), dict) or not isinstance(data.get("runtime", {}), dict):
        raise PlanError(f"{path}: not a calibration profile (written by `plan calibrate RUNS --out FILE`)")
    try:
        efficiency = Efficiency.default().with_overrides(data.get("efficiency", {}))
    except (ValueError, TypeError) as err:
        raise PlanError(f"{path}: {err}") from None
    terms = _catalogue()["memory"]  # the terms calibration fits, with their bounds
    for name, value in data.get("runtime", {}).items():
        if name not in terms:
            raise PlanError(f"{path}: unknown runtime term {name!r}; known: {', '.join(terms)}")
        low, high = terms[name]["bounds"]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
            raise PlanError(f"{path}: runtime term {name!r} must be a number in [{low}, {high}], got {value!r}")
    return efficiency, replace(RuntimeAllowance.default(), **{k: float(v) for k, v in data.get("runtime", {}).items()})
