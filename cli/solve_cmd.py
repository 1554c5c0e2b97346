"""`plan solve` (alias `plan recommend`): the best plan for an objective, proved optimal; `plan pareto`:
the non-dominated plans over two or three objectives. Exit 0 with a plan, 1 when no plan is feasible (the
conflicting constraints and the changes that would help are printed), 2 on bad input.

``--json`` prints the API's serialisation: `solver.Solution` for `solve`, a list of them for `pareto`, and
``{"infeasible": {"message", "conflicts", "suggestions"}}`` when nothing is feasible.

Pins and ranges name `constraints.Plan` fields: ``--fix tp=8 --fix recompute=full`` (``zero_stage=1`` is
DeepSpeed's name for a sharding), ``--range pp=1:8`` (integers from 1 to 8), ``--range precision=bf16,fp8``
(a list); tuple fields take comma-separated items (``--fix layers_per_stage=19,21,21,19``) and a range of
them separates the tuples with ``;``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from parallelplan.cli.format import (
    bad,
    fit_text,
    gib,
    good,
    heading,
    plural,
    progress,
    quiet,
    risk_mark,
    side_by_side,
    software,
    step_range,
    table,
    workload_kind,
)
from parallelplan.cli.options import (
    GLOBAL_BATCH_OPTION,
    MODEL_OPTIONS,
    PLOT_OPTION,
    TARGET_OPTIONS,
    WORKLOAD_OPTIONS,
    build_workload,
    cost_model,
    default_global_batch,
    given_world_size,
    load_target_cluster,
    with_options,
)
from parallelplan.cli.rl_cmd import RL_OPTIONS, rl_given, solve_rl_step

if TYPE_CHECKING:
    from parallelplan.constraints import Workload
    from parallelplan.hardware import ClusterSpec, PooledCluster
    from parallelplan.models import ModelSpec
    from parallelplan.solver import Infeasible, PooledSolution, Solution

TRUE, FALSE = ("true", "yes", "on"), ("false", "no", "off")
PIN_FLAGS = ("tp", "pp", "dp", "cp", "ep")
"""Degrees with a flag of their own (``--tp 8`` = ``--fix tp=8``)."""

SEARCH_OPTIONS = [
    click.option("--tp", type=click.IntRange(min=1), help="Pin the tensor-parallel degree (= --fix tp=N)."),
    click.option("--pp", type=click.IntRange(min=1), help="Pin the pipeline-parallel degree."),
    click.option("--dp", type=click.IntRange(min=1),
                 help="Pin the data-parallel degree (without --nodes/--gpus the cluster is sized to tp·pp·dp·cp)."),
    click.option("--cp", type=click.IntRange(min=1), help="Pin the context-parallel degree."),
    click.option("--ep", type=click.IntRange(min=1), help="Pin the expert-parallel degree."),
    click.option("--fix", "fix", multiple=True, metavar="NAME=VALUE",
                 help="Pin a plan field, e.g. tp=8, sharding=zero1, recompute=full (repeatable)."),
    click.option("--range", "ranges", multiple=True, metavar="NAME=LOW:HIGH|A,B,..",
                 help="Search a field over a range or list, e.g. pp=1:8, precision=bf16,fp8, "
                      "optimizer=adamw,adamw8bit (repeatable; replaces the default domain)."),
    GLOBAL_BATCH_OPTION,
    click.option("--price", "price_per_gpu_hour", type=click.FloatRange(min=0, min_open=True),
                 help="USD per GPU-hour for the cost objective [default: the median on-demand offer in "
                      "hardware/data/prices.json]."),
    click.option("--min-tokens-per-s", type=click.FloatRange(min=0, min_open=True),
                 help="Throughput every plan must reach (needed by the gpus objective)."),
    click.option("--node-counts", help="Cluster sizes (nodes, comma-separated) the cost and gpus objectives search "
                                       "[default: powers of two up to --nodes, and --nodes]."),
    click.option("--even-stages", is_flag=True, help="Only even pipeline stages (no lighter first/last stage)."),
    click.option("--time-limit", type=click.FloatRange(min=0, min_open=True), default=30.0, show_default=True,
                 help="CP-SAT time limit per solve (seconds); a plan found within it but not proved says so."),
]


@click.command()
@with_options(TARGET_OPTIONS)
@with_options(WORKLOAD_OPTIONS)
@click.option("--objective", "-o", default="throughput", show_default=True,
              help="throughput, cost, memory_headroom, gpus or simplicity; a comma list is lexicographic "
                   "(gpus,throughput); name=weight pairs are weighted (throughput=1,cost=0.5).")
@click.option("--tolerance", type=click.FloatRange(0.0, 1.0, max_open=True), default=0.0, show_default=True,
              help="Lexicographic slack: later objectives may cost each earlier one this fraction of its optimum.")
@click.option("--top-k", type=click.IntRange(0, 100), default=0, show_default=True,
              help="Also list the best plans of this many other layouts.")
@with_options(SEARCH_OPTIONS)
@with_options(RL_OPTIONS)
@with_options(MODEL_OPTIONS)
@click.option("--json", "as_json", is_flag=True, help="Print the solver.Solution (a PPO/GRPO step: solver.RLSolution) as JSON.")
def solve(model_ref: str, cluster_ref: str, nodes: int | None, gpus: int | None, kind: str, seq_len: int,
          dropout: float, train_mtp: bool, stack: str | None, moe_dispatcher: str, moe_imbalance: float, objective: str, tolerance: float, top_k: int, as_json: bool,
          **search: Any) -> None:
    """The best plan for an objective, proved optimal by CP-SAT, and why it wins.

    \b
    Examples:
      plan solve --model llama-3.1-70b --cluster dgx-h100 --nodes 8 --seq-len 8192 --global-batch 512
      plan solve -m deepseek-v3 -c dgx-h100 --nodes 256 --fix precision=fp8 --top-k 3
      plan solve -m llama-3.1-8b -c dgx-h100 --nodes 4 -o gpus,throughput --min-tokens-per-s 200000
      plan recommend -m mixtral-8x7b -c dgx-a100 --nodes 2 -o cost --range optimizer=adamw,adamw8bit --json
      plan solve -m llama-3.1-70b -c dgx-h100 --nodes 8 --kind rlhf --algorithm ppo --seq-len 1024 --global-batch 512
    """
    from parallelplan.hardware import PooledCluster
    from parallelplan.solver import Infeasible
    from parallelplan.solver import solve as solve_plan

    arguments = search_arguments(search)
    model, cluster, workload = build_inputs(model_ref, cluster_ref, nodes, gpus, kind, seq_len, dropout, train_mtp, stack, moe_dispatcher, moe_imbalance,
                                            search["global_batch"], arguments["fixed"], pools=True)
    if workload.rollout is not None and not isinstance(cluster, PooledCluster):  # a PPO / GRPO step (cli.rl_cmd)
        rl_given(search, objective, top_k)
        solve_rl_step(model, cluster, workload, cost_model(search["efficiency_file"], search["calibration_file"],
                                                           search["memory_margin"]), search["time_limit"], as_json)
        return
    if isinstance(cluster, PooledCluster):
        solve_across_pools(model, cluster, workload, objective, top_k, arguments, as_json)
        return
    try:
        with progress("solve") as report:
            found = solve_plan(model, cluster, workload, objective=parse_objective(objective), tolerance=tolerance,
                               top_k=top_k, progress=report, **arguments)
    except Infeasible as err:
        report_infeasible(err, as_json)
    if as_json:
        click.echo(found.model_dump_json(indent=2))
    else:
        click.echo(render_solution(model, cluster, workload, found, objective))


@click.command()
@with_options(TARGET_OPTIONS)
@with_options(WORKLOAD_OPTIONS)
@click.option("--objectives", "-o", default="throughput,memory_headroom", show_default=True,
              help="Two or three of throughput, cost, memory_headroom, gpus, simplicity, comma-separated.")
@with_options(SEARCH_OPTIONS)
@with_options(MODEL_OPTIONS)
@PLOT_OPTION
@click.option("--json", "as_json", is_flag=True, help="Print the list of solver.Solution as JSON.")
def pareto(model_ref: str, cluster_ref: str, nodes: int | None, gpus: int | None, kind: str, seq_len: int,
           dropout: float, train_mtp: bool, stack: str | None, moe_dispatcher: str, moe_imbalance: float, objectives: str,
           plot_path: Path | None, as_json: bool, **search: Any) -> None:
    """The plans no other plan beats on every objective at once, each proved optimal in its slice.

    \b
    Examples:
      plan pareto --model llama-3.1-70b --cluster dgx-h100 --nodes 8 --seq-len 8192 --global-batch 512
      plan pareto -m llama-3.1-8b -c dgx-h100 --nodes 8 -o throughput,cost,gpus --plot front.svg
    """
    from parallelplan.solver import Infeasible
    from parallelplan.solver import pareto as pareto_plans

    arguments = search_arguments(search)
    model, cluster, workload = build_inputs(model_ref, cluster_ref, nodes, gpus, kind, seq_len, dropout, train_mtp, stack, moe_dispatcher, moe_imbalance,
                                            search["global_batch"], arguments["fixed"])
    names = [name.strip() for name in objectives.split(",") if name.strip()]
    try:
        with progress("pareto") as report:
            front = pareto_plans(model, cluster, workload, objectives=names, progress=report, **arguments)
    except Infeasible as err:
        report_infeasible(err, as_json)
    if as_json:
        click.echo(json.dumps([s.model_dump(mode="json") for s in front], indent=2))
    else:
        click.echo(render_front(model, cluster, workload, front, names))
    if plot_path is not None:
        from parallelplan.dashboard.charts import pareto_chart

        title = f"{model.display_name or model.name} on {cluster.total_gpus} x {cluster.gpu.display_name}: Pareto set"
        click.echo(f"wrote {pareto_chart(front, names, title, plot_path)}", err=True)


# -- parsing --------------------------------------------------------------------------------------------

def build_inputs(model_ref: str, cluster_ref: str | None, nodes: int | None, gpus: int | None, kind: str, seq_len: int,
                 dropout: float, train_mtp: bool, stack: str | None, moe_dispatcher: str, moe_imbalance: float, global_batch: int | None,
                 fixed: dict[str, Any], *, pools: bool = False) -> tuple[ModelSpec, ClusterSpec, Workload]:
    """Model, cluster and workload of a search. Without --nodes/--gpus, a pinned dp sizes the cluster to
    tp·pp·dp·cp GPUs (unpinned degrees count 1). ``pools``: a heterogeneous cluster file is taken."""
    from parallelplan.models import load_model

    model = load_model(model_ref)
    cluster = load_target_cluster(cluster_ref, nodes, gpus, given_world_size(fixed), pools=pools)
    workload = build_workload(kind=kind, seq_len=seq_len, dropout=dropout, train_mtp=train_mtp, stack=stack, moe_dispatcher=moe_dispatcher, moe_imbalance=moe_imbalance,
                              global_batch_size=global_batch or default_global_batch(kind, seq_len))
    return model, cluster, workload


def search_arguments(options: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments of `solver.solve` / `solver.pareto` from the shared search options."""
    from parallelplan.solver import SolverInputError

    counts = options["node_counts"]
    fixed = parse_assignments(options["fix"], "--fix", ranged=False)
    for name in PIN_FLAGS:
        if options.get(name) is not None:
            if name in fixed:
                raise SolverInputError(f"--{name} and --fix {name}= both pin {name}: give one")
            fixed[name] = options[name]
    return {
        "fixed": fixed,
        "ranges": parse_assignments(options["ranges"], "--range", ranged=True),
        "allow_uneven_stages": not options["even_stages"],
        "allow_cross_domain": options["allow_cross_domain"],
        "price_per_gpu_hour": options["price_per_gpu_hour"],
        "min_tokens_per_s": options["min_tokens_per_s"],
        "node_counts": _integers(counts, "--node-counts") if counts else None,
        **cost_model(options["efficiency_file"], options["calibration_file"], options["memory_margin"]),
        "time_limit_s": options["time_limit"],
    }


def parse_objective(text: str) -> str | list[str] | dict[str, float]:
    """``throughput`` → a name; ``gpus,throughput`` → lexicographic; ``throughput=1,cost=0.5`` → weights."""
    from parallelplan.solver import SolverInputError

    parts = [part.strip() for part in text.split(",") if part.strip()]
    if not any("=" in part for part in parts):
        return parts[0] if len(parts) == 1 else parts
    weights = {}
    for part in parts:
        name, _, weight = part.partition("=")
        try:
            weights[name.strip()] = float(weight)
        except ValueError:
            raise SolverInputError(f"--objective: weight of {name.strip()!r} must be a number, got {weight!r} "
                                   "(write name=weight pairs, e.g. throughput=1,cost=0.5)") from None
    return weights


def parse_assignments(items: tuple[str, ...], flag: str, *, ranged: bool) -> dict[str, Any]:
    """``NAME=VALUE`` items as a dict; the solver checks each name and value against `constraints.Plan`."""
    from parallelplan.solver import SolverInputError

    out: dict[str, Any] = {}
    for item in items:
        name, sep, text = item.partition("=")
        name = name.strip().replace("-", "_")
        if not sep or not name or not text.strip():
            raise SolverInputError(f"{flag} takes NAME=VALUE (e.g. {'pp=1:8' if ranged else 'tp=8'}), got {item!r}")
        if name in out:
            raise SolverInputError(f"{flag} names {name} twice")
        out[name] = _range(name, text.strip(), flag) if ranged else _value(name, text.strip())
    return out


def _range(name: str, text: str, flag: str) -> tuple[int, int] | list[Any]:
    from parallelplan.solver import SolverInputError

    if ":" in text:
        low, _, high = text.partition(":")
        try:
            low, high = int(low), int(high)
        except ValueError:
            raise SolverInputError(f"{flag} {name}={text}: LOW:HIGH takes two integers") from None
        if low > high:  # an empty range: said here, before the solver reports an empty domain
            raise SolverInputError(f"{flag} {name}={text}: low {low} is above high {high}; write {name}={high}:{low}")
        return low, high
    if _is_tuple_field(name):
        return [_value(name, item) for item in text.split(";") if item.strip()]
    return [_value(name, item) for item in text.split(",") if item.strip()]


def _value(name: str, text: str) -> Any:
    """A typed value for a `Plan` field (the solver validates it and names the allowed values)."""
    if _is_tuple_field(name):
        return [_scalar(item.strip()) for item in text.split(",") if item.strip()]
    return _scalar(text)


def _scalar(text: str) -> Any:
    lowered = text.lower()
    if lowered in TRUE or lowered in FALSE:
        return lowered in TRUE
    try:
        return int(text)
    except ValueError:
        return text


def _is_tuple_field(name: str) -> bool:
    from parallelplan.constraints import Plan

    field = Plan.model_fields.get(name)
    return field is not None and "tuple" in str(field.annotation)


def _integers(text: str, flag: str) -> list[int]:
    from parallelplan.solver import SolverInputError

    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise SolverInputError(f"{flag} takes comma-separated integers (e.g. 1,2,4,8), got {text!r}") from None


# -- output -----------------------------------------------------------------------------------------------

def solve_across_pools(model: ModelSpec, pooled: PooledCluster, workload: Workload, objective: str, top_k: int,
                       arguments: dict[str, Any], as_json: bool) -> None:
    """`plan solve` on a heterogeneous cluster: the batch split over its pools with each pool's plan, or a
    pipeline across them, whichever is faster (`solver.solve_pools`), within the pins and ranges; the
    options it does not take yet are refused by name."""
    from parallelplan.solver import Infeasible, SolverInputError, solve_pools

    given = [flag for flag, value in (("--objective", objective != "throughput"), ("--top-k", top_k > 0),
                                      ("--node-counts", arguments["node_counts"] is not None),
                                      ("--min-tokens-per-s", arguments["min_tokens_per_s"] is not None),
                                      ("--price-per-gpu-hour", arguments["price_per_gpu_hour"] is not None)) if value]
    if given:
        raise SolverInputError(f"{given[0]}: not taken with a cluster of pools yet (it searches the pools' layouts "
                               "for throughput); drop it, or solve one pool's cluster")
    try:
        found = solve_pools(model, pooled, workload, fixed=arguments["fixed"], ranges=arguments["ranges"],
                            efficiency=arguments["efficiency"], runtime=arguments["runtime"],
                            time_limit_s=arguments["time_limit_s"])
    except Infeasible as err:
        report_infeasible(err, as_json)
    click.echo(found.model_dump_json(indent=2) if as_json else render_pools(model, found))


def render_pools(model: ModelSpec, found: PooledSolution) -> str:
    from parallelplan.solver.explain import describe

    w = found.workload
    lines = [f"{model.display_name or model.name} across {len(found.cluster.pools)} pools of {found.cluster.name} "
             f"({found.cluster.total_gpus} GPUs); {workload_kind(w)}, {w.seq_len} tokens x {plural(w.global_batch_size, 'sequence')} "
             f"per step on {software(w, model)}"]
    if found.pipeline is not None:
        piped = found.pipeline
        rows = [(s.pool, s.gpus, f"tp {s.tp} · pp {s.pp} · dp {piped.dp}", "/".join(map(str, s.layers_per_stage)),
                 f"{max(s.memory_bytes) / 2**30:.1f}", f"{max(s.microbatch_times_s) * 1e3:.1f}") for s in piped.stages]
        lines += [f"pipeline across the pools, first to last stage; micro-batch {piped.micro_batch_size} x "
                  f"{piped.micro_batches}, sharding {piped.sharding}, recompute {piped.recompute}, {piped.precision}",
                  table(["pool", "GPUs", "layout", "layers per stage", "memory GiB", "slowest rank ms"], rows, right=(1, 4, 5)),
                  f"step: {found.step_time_s:.3f} s (pipeline {piped.pipeline_s:.3f} s + {piped.once_s:.3f} s gradient "
                  f"reduction and update), {found.tokens_per_s:,.0f} tokens/s (exhaustive over the pipeline layouts)"]
    else:
        rows = [(s.pool, s.gpus, s.sequences, describe(s.solution.plan) if s.solution else "idle",
                 f"{s.solution.estimate.memory.total / 2**30:.1f}" if s.solution else "-",
                 f"{s.solution.estimate.step_time_s:.3f}" if s.solution else "-") for s in found.shares]
        lines += [table(["pool", "GPUs", "sequences", "plan", "memory GiB", "pool step s"], rows, right=(1, 2, 4, 5)),
                  f"step: {found.step_time_s:.3f} s (slowest pool + {found.sync_s:.3f} s gradient all-reduce across pools), "
                  f"{found.tokens_per_s:,.0f} tokens/s ({'proved optimal' if found.optimal else 'not proved'})"]
    if not quiet():
        lines += ["", "why:"] + [f"  - {line}" for line in found.explanation]
    return "\n".join(lines)


def report_infeasible(err: Infeasible, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps({"infeasible": {"message": str(err), "conflicts": err.conflicts,
                                              "suggestions": err.suggestions}}, indent=2))
    else:
        lines = [f"infeasible: {err}"]
        if err.conflicts:
            lines += ["", "constraints that cannot hold together:"] + [f"  - {c}" for c in err.conflicts]
        if err.suggestions:
            lines += ["", "changes that make it feasible (each checked):"] + [f"  - {s}" for s in err.suggestions]
        click.echo("\n".join(lines))
    raise SystemExit(1)


def _header(model: ModelSpec, cluster: ClusterSpec, workload: Workload, gpu_counts: tuple[int, ...]) -> str:
    sizes = f"{cluster.total_gpus} GPUs" if len(gpu_counts) == 1 else f"searching {', '.join(map(str, gpu_counts))} GPUs"
    return (f"{model.display_name or model.name} on {cluster.node.name} nodes ({sizes}); {workload_kind(workload)}, "
            f"{workload.seq_len} tokens x {plural(workload.global_batch_size, 'sequence')} per step on {software(workload, model)}")


def _headroom(found: Solution) -> str:
    """Memory headroom, marked when the plan's memory range reaches past the GPU (`MemoryBreakdown.verdict`)."""
    return f"{found.objective['memory_headroom_gib']:.2f}" + risk_mark(found.estimate.memory)


def _cost(values: dict[str, float]) -> str:
    if not values["usd_per_hour"]:
        return "no price (give --price)"
    return f"${values['usd_per_hour']:,.2f}/h, ${values['usd_per_million_tokens']:.3f} per million tokens"


def render_solution(model: ModelSpec, cluster: ClusterSpec, workload: Workload, found: Solution, objective: str) -> str:
    from parallelplan.cli.estimate_cmd import describe_plan, memory_table, time_table
    from parallelplan.constraints.uncertainty import step_interval
    from parallelplan.solver.explain import describe

    est, values = found.estimate, found.objective
    proof = good("proved optimal by CP-SAT") if found.optimal else bad("best found within the time limit, NOT proved optimal")
    rows = [
        ("GPUs", f"{found.gpus}"),
        ("throughput", f"{values['tokens_per_s']:,.0f} tokens/s, MFU {100 * est.mfu:.1f}%"),
        ("step time", f"{values['step_time_s']:.3f} s (80% interval {step_range(est.step_time_interval_s)} s)"),
        ("memory per GPU", f"{gib(est.memory.total)} of {gib(est.memory.usable)} (headroom {values['memory_headroom_gib']:.2f} GiB)"),
        ("fits", fit_text(est.memory)),
        ("cost", _cost(values)),
        ("simplicity", f"{values['simplicity']:.0f} (lower is simpler)"),
    ]
    lines = [_header(model, cluster, workload, found.search.gpu_counts),
             f"objective {objective}: {proof} in {found.solve_time_s:.2f} s", "",
             heading(f"plan: {describe_plan(found.plan, model)}"), "", table(["", "value"], rows)]
    if quiet():
        return "\n".join(lines)
    lines += ["", side_by_side(memory_table(est), time_table(est)),
              f"model states: {est.state_recipe} before sharding ({found.plan.sharding})", "", "why:"]
    lines += [f"  - {line}" for line in found.explanation]
    if found.alternatives:
        alt_rows = [(i + 1, describe(a.plan), f"{a.objective['tokens_per_s']:,.0f}", f"{a.objective['step_time_s']:.3f}",
                     step_range(step_interval(a.objective["step_time_s"], model.is_moe)),
                     f"{a.objective['memory_headroom_gib']:.2f}", f"{a.objective['gpus']:.0f}")
                    for i, a in enumerate(found.alternatives)]
        lines += ["", "best plans of other layouts:",
                  table(["#", "plan", "tokens/s", "step s", "80% interval s", "headroom GiB", "GPUs"], alt_rows,
                        right=(0, 2, 3, 4, 5, 6))]
    return "\n".join(lines)


def render_front(model: ModelSpec, cluster: ClusterSpec, workload: Workload, front: list[Solution],
                 names: list[str]) -> str:
    from parallelplan.solver.explain import describe

    rows = []
    for i, s in enumerate(front):
        v = s.objective
        cost = f"{v['usd_per_million_tokens']:.3f}" if v["usd_per_hour"] else "-"
        rows.append((i + 1, s.gpus, f"{v['tokens_per_s']:,.0f}", f"{v['step_time_s']:.3f}",
                     step_range(s.estimate.step_time_interval_s), _headroom(s), cost, f"{v['simplicity']:.0f}", describe(s.plan)))
    proved = sum(s.optimal for s in front)
    elapsed = max((s.solve_time_s for s in front), default=0.0)
    return "\n".join([
        _header(model, cluster, workload, front[0].search.gpu_counts),
        f"Pareto set over {', '.join(names)}: {len(front)} plans, {proved} proved optimal in their ε-slice, "
        f"in {elapsed:.2f} s", "",
        table(["#", "GPUs", "tokens/s", "step s", "80% interval s", "headroom GiB", "$/M tokens", "simplicity", "plan"],
              rows, right=(0, 1, 2, 3, 4, 5, 6, 7)),
    ])
