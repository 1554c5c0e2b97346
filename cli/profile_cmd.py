"""`plan profile`: a workload profile (``solver/data/profiles.json``) solved — its defaults and why, then the
proved plan (`plan solve`'s output), or for ``cost`` the cheapest priced cluster and every preset's price."""

from __future__ import annotations

import json
from typing import Any

import click

from parallelplan.cli.format import table
from parallelplan.cli.options import MODEL_OPTIONS, cost_model, load_target_cluster, with_options


@click.command()
@click.option("--list", "list_only", is_flag=True, help="List the profiles and what each is for.")
@click.option("--workload", "-w", "name", help="The profile: pretrain, finetune, lora, qlora, dpo, ppo, grpo, "
                                               "inference, long-context, moe or cost (see --list).")
@click.option("--model", "-m", "model_ref", help="Preset name or alias, a config.json or its folder, or a HF repo id.")
@click.option("--cluster", "-c", "cluster_ref", help="Cluster preset or file [default: dgx-h100; cost: every priced preset].")
@click.option("--nodes", type=click.IntRange(min=1), help="Number of nodes [default: the cluster's].")
@click.option("--gpus", type=click.IntRange(min=1), help="Total GPUs (whole nodes, or part of one node).")
@click.option("--seq-len", type=click.IntRange(min=1), help="Tokens per sequence [default: the profile's].")
@click.option("--global-batch", type=click.IntRange(min=1),
              help="Sequences (DPO: examples; PPO, GRPO: prompts) per step [default: the profile's].")
@click.option("--tokens", type=click.FloatRange(min=0, min_open=True), help="cost: tokens to train.")
@click.option("--deadline-hours", type=click.FloatRange(min=0, min_open=True), help="cost: hours the run may take.")
@click.option("--max-nodes", type=click.IntRange(1, 4096),
              help="cost: the largest node count tried per preset [default: 64].")
@with_options(MODEL_OPTIONS)
@click.option("--json", "as_json", is_flag=True, help="Print the solution (cost: the options) as JSON.")
def profile(list_only: bool, name: str | None, model_ref: str | None, cluster_ref: str | None, nodes: int | None,
            gpus: int | None, seq_len: int | None, global_batch: int | None, tokens: float | None,
            deadline_hours: float | None, max_nodes: int | None, efficiency_file, calibration_file, allow_cross_domain: bool,
            memory_margin: float, as_json: bool) -> None:
    """A workload profile solved: its objective, constraints and defaults (each with why), and the plan.

    \b
    Examples:
      plan profile --list
      plan profile --workload qlora -m llama-3.1-70b --gpus 1
      plan profile --workload lora -m llama-3.1-8b -c dgx-h100 --nodes 1
      plan profile --workload cost -m llama-3.1-8b --tokens 1e11 --deadline-hours 168
    """
    from parallelplan.models import load_model
    from parallelplan.solver import Infeasible, SolverInputError
    from parallelplan.solver.cheapest_cluster import MAX_NODES as CHEAPEST_MAX_NODES
    from parallelplan.solver.profiles import list_profiles, load_profile
    from parallelplan.solver.profiles import profile as solve_profile

    if list_only:
        if as_json:
            click.echo(json.dumps([p.model_dump(mode="json") for p in list_profiles()], indent=2))
        else:
            click.echo(table(["profile", "what it plans"], [[p.name, p.summary] for p in list_profiles()]))
        return
    if name is None or model_ref is None:
        raise SolverInputError("give --workload NAME and --model (or --list for the profiles)")
    chosen = load_profile(name)
    model = load_model(model_ref)
    overrides = {key: value for key, value in (("seq_len", seq_len), ("global_batch_size", global_batch)) if value is not None}
    options: dict[str, Any] = cost_model(efficiency_file, calibration_file, memory_margin)
    if name == "cost":
        if cluster_ref or nodes or gpus:
            raise SolverInputError("profile cost searches every priced cluster preset: drop --cluster/--nodes/--gpus")
        options["max_nodes"] = max_nodes or CHEAPEST_MAX_NODES
        cluster = None
    else:
        given = [flag for flag, value in (("--tokens", tokens), ("--deadline-hours", deadline_hours),
                                          ("--max-nodes", max_nodes)) if value is not None]
        if given:
            raise SolverInputError(f"{', '.join(given)} apply to --workload cost only")
        cluster = load_target_cluster(cluster_ref, nodes, gpus)
        options["allow_cross_domain"] = allow_cross_domain
    try:
        found = solve_profile(name, model, cluster, workload=overrides, tokens=tokens, deadline_hours=deadline_hours,
                              **options)
    except Infeasible as err:
        from parallelplan.cli.solve_cmd import report_infeasible

        report_infeasible(err, as_json)
    if as_json:
        if chosen.workload.get("rollout") is not None:
            from parallelplan.cli.rl_cmd import rl_json

            click.echo(rl_json(found))
            return
        click.echo(found.model_dump_json(indent=2) if name != "cost" else json.dumps(
            json.loads(found.model_dump_json(exclude={"best": {"solution"}, "options": {"__all__": {"solution"}}})), indent=2))
        return
    click.echo(f"profile {chosen.name}: {chosen.summary}")
    click.echo("defaults (each overridable):")
    for key, why in chosen.why.items():
        click.echo(f"  - {key}: {why}")
    if chosen.fixed:
        click.echo("  pins: " + ", ".join(f"{k}={v}" for k, v in chosen.fixed.items()))
    click.echo("")
    if name == "cost":
        click.echo(render_cheapest(found))
        return
    if chosen.workload.get("rollout") is not None:
        from parallelplan.cli.rl_cmd import render_rl

        click.echo(render_rl(model, cluster, chosen.build_workload(overrides), found))
        return
    from parallelplan.cli.solve_cmd import render_solution

    click.echo(render_solution(model, cluster, found.workload, found, chosen.objective))


def render_cheapest(found) -> str:
    """The cheapest option, then every preset: nodes, hours, total USD, or why it has none."""
    best = found.best
    lines = [f"cheapest: {best.cluster} ({best.gpu}), {best.nodes} node(s), ${best.total_usd:,.0f} for "
             f"{found.tokens:,.0f} tokens in {best.hours:,.1f} h (deadline {found.deadline_hours:g} h) at "
             f"${best.usd_per_gpu_hour:.2f} per GPU-hour",
             f"plan: {_describe(best.solution.plan)}", ""]
    rows = [[o.cluster, o.gpu, f"{o.usd_per_gpu_hour:.2f}",
             "-" if o.nodes is None else str(o.nodes), "-" if o.hours is None else f"{o.hours:,.1f}",
             "-" if o.total_usd is None else f"{o.total_usd:,.0f}", f"{o.lower_bound_usd:,.0f}", o.reason or ""]
            for o in found.options]
    lines.append(table(["cluster", "GPU", "$/GPU-h", "nodes", "hours", "total $", "bound $ (100% MFU)", "note"], rows))
    return "\n".join(lines)


def _describe(plan) -> str:
    from parallelplan.solver.explain import describe

    return describe(plan)
