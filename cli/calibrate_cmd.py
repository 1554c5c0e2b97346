"""`plan calibrate RUNS`: the cost model's free factors fitted to your measured runs
(`constraints.calibration`), written as a profile every command takes (``--calibration FILE`` or
``PLAN_CALIBRATION``)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from parallelplan.cli.format import gib, heading, quiet, table


@click.command()
@click.argument("runs_file", metavar="RUNS", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--out", "-o", "out", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the calibration profile here (JSON); nothing is written when a run is bad input.")
@click.option("--no-cross-validation", is_flag=True, help="Skip the held-out error (faster on many runs).")
@click.option("--json", "as_json", is_flag=True, help="Print the constraints.calibration.Calibration as JSON.")
def calibrate(runs_file: Path, out: Path | None, no_cross_validation: bool, as_json: bool) -> None:
    """Fit the cost model's efficiency factors and runtime allowance to measured runs.

    RUNS is a CSV (or a JSON list) with one run per row: model, cluster, nodes or gpus, seq_len,
    global_batch_size, step_time_s or tokens_per_s, optionally peak_memory_gib, and any plan field
    (tp, pp, dp, cp, ep, vpp, micro_batch_size, sequence_parallel, sharding, recompute, precision, ...).
    Only the factors the runs can tell apart are fitted, at most one per three runs, each within its
    physical bounds; the rest are held and the table says why.

    \b
    Examples:
      plan calibrate runs.csv
      plan calibrate runs.csv --out my-cluster.json
      plan solve -m llama-3.1-70b --nodes 8 --calibration my-cluster.json
    """
    from parallelplan.constraints.calibration import calibrate as fit
    from parallelplan.constraints.calibration import read_runs

    result = fit(read_runs(runs_file), cross_validate=not no_cross_validation)
    if out is not None:
        out.write_text(json.dumps(result.profile(), indent=2) + "\n")
    if as_json:
        click.echo(result.model_dump_json(indent=2))
        return
    click.echo(render(result, out))


def _value(name: str, value: float) -> str:
    return gib(value) if name.endswith("bytes") else f"{value:.4g}"


def render(result, out: Path | None) -> str:
    rows = [(f.name, _value(f.name, f.before), _value(f.name, f.after), f"{_value(f.name, f.low)} … {_value(f.name, f.high)}",
             "fitted" if f.fitted else f.why.removeprefix("held: ")) for f in result.factors]
    lines = [heading(f"calibration on {len(result.runs)} measured runs"), "",
             table(["factor", "before", "after", "bounds", "fitted"], rows), "",
             f"step time |error|: before median {100 * result.step_before.median:.1f}% (max {100 * result.step_before.max:.1f}%), "
             f"after {100 * result.step_after.median:.1f}% (max {100 * result.step_after.max:.1f}%)"
             + ("" if result.step_cross_validated is None else
                f", on runs held out of the fit {100 * result.step_cross_validated.median:.1f}% "
                f"(max {100 * result.step_cross_validated.max:.1f}%)")]
    if result.memory_after is not None:
        lines.append(f"peak memory |error|: before median {100 * result.memory_before.median:.1f}%, "
                     f"after {100 * result.memory_after.median:.1f}%")
    if not quiet():
        run_rows = [(r.row, f"{r.measured_s:.3f}", f"{r.before_s:.3f}", f"{r.after_s:.3f}",
                     "" if r.cross_validated_s is None else f"{r.cross_validated_s:.3f}") for r in result.runs]
        lines += ["", table(["row", "measured s", "before s", "after s", "held out s"], run_rows, right=(0, 1, 2, 3, 4))]
    lines += ["", f"profile written to {out}; use it with --calibration {out} or PLAN_CALIBRATION={out}" if out else
              "give --out FILE to write the profile every command takes (--calibration FILE)"]
    return "\n".join(lines)
