"""`plan launch`: solve (or read a saved `plan solve --json`) and write the launch files of a framework;
`plan slurm`: the same with the SLURM target and its options. The search is kept inside what the target
can express (`emitters.constraints`). Exit 0 with the files written, 1 when no plan is feasible, 2 on bad
input or a plan the target cannot express (`emitters.EmitError`)."""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

import click

from parallelplan.cli.format import quiet
from parallelplan.cli.options import MODEL_OPTIONS, WORKLOAD_OPTIONS, with_options
from parallelplan.cli.rl_cmd import RL_OPTIONS
from parallelplan.cli.solve_cmd import (
    PIN_FLAGS,
    SEARCH_OPTIONS,
    build_inputs,
    parse_objective,
    report_infeasible,
    search_arguments,
)

SOURCE_OPTIONS = [
    click.option("--model", "-m", "model_ref", help="Preset name or alias, a config.json or its folder, or a HF repo id."),
    click.option("--cluster", "-c", "cluster_ref",
                 help="Cluster preset or a cluster file [default: the detected node, else dgx-h100; said on stderr]."),
    click.option("--nodes", type=click.IntRange(min=1), help="Number of nodes [default: the cluster's]."),
    click.option("--gpus", type=click.IntRange(min=1),
                 help="Total GPUs: whole nodes, or part of one node; with --nodes, spread evenly over them."),
    click.option("--solution", "solution_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
                 help="A saved `plan solve --json` (instead of --model/--cluster: no search is run)."),
    click.option("--objective", "-o", default="throughput", show_default=True, help="As in `plan solve`."),
]
LAUNCH_OPTIONS = [
    click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
                 help="Directory for the files (created if missing) [default: print them]."),
    click.option("--script", help="The training script the launcher runs [default: the target's: train.py, "
                 "pretrain_gpt.py for megatron; torchtitan runs its own trainer]."),
    click.option("--script-arg", "script_args", multiple=True, help="An argument for the script (repeatable)."),
    click.option("--master-port", type=click.IntRange(1024, 65535), default=29500, show_default=True),
    click.option("--job-name", default="plan", show_default=True),
    click.option("--json", "as_json", is_flag=True,
                 help='Print {"target", "solution" (solver.Solution), "files" ({name: content})} as JSON.'),
]
SLURM_OPTIONS = [
    click.option("--time", "slurm_time", default="24:00:00", show_default=True, help="SLURM --time ([days-]HH:MM:SS)."),
    click.option("--partition", help="SLURM partition."),
    click.option("--account", help="SLURM account."),
]


def _solution(target: str, options: dict[str, Any], as_json: bool):
    """The solution to emit: read from --solution, or solved inside the target's constraints."""
    from pydantic import ValidationError

    from parallelplan.common.validation import describe_validation_error
    from parallelplan.constraints.efficiency import stack_of_target
    from parallelplan.emitters import constraints, single_model_targets
    from parallelplan.solver import Infeasible, Solution, SolverInputError, solve

    solution_file = options.pop("solution_file")
    if solution_file is not None:
        if options["model_ref"] or options["cluster_ref"]:
            raise SolverInputError("give either --solution or --model/--cluster, not both")
        if any(options.get(name) is not None for name in PIN_FLAGS) or options["fix"] or options["ranges"]:
            raise SolverInputError("--solution is already solved: drop --tp/--pp/--dp/--cp/--ep, --fix and --range")
        try:  # bytes: pydantic reports a file that is not UTF-8 as invalid JSON, like any other malformed file
            solution = Solution.model_validate_json(solution_file.read_bytes())
        except ValidationError as err:
            raise SolverInputError(describe_validation_error(err, f"{solution_file}: not a `plan solve --json` output")
                                   + " (give the whole, unedited output of `plan solve --json`)") from None
        runs = stack_of_target(target)
        if runs is not None and solution.workload.stack != runs and not quiet():
            click.echo(f"note: {solution_file} was priced for the {solution.workload.stack} stack and {target} runs "
                       f"{runs}: its step time does not hold there (solve with --target {target} to price it)", err=True)
        return solution
    if not options["model_ref"]:
        raise SolverInputError("give --model (and --cluster), or --solution FILE")
    options["stack"] = target_stack(target, options["stack"])
    search = search_arguments(options)
    model, cluster, workload = build_inputs(options["model_ref"], options["cluster_ref"], options["nodes"], options["gpus"],
                                            options["kind"], options["seq_len"], options["dropout"], options["train_mtp"],
                                            options["stack"], options["moe_dispatcher"], options["moe_imbalance"], options["global_batch"], search["fixed"])
    if workload.rollout is not None:  # a PPO / GRPO step: its roles placed and planned inside what the target runs
        return _rl_solution(target, model, cluster, workload, options, search, as_json)
    limits = constraints(target)
    for name, value in search["fixed"].items():
        needed = _refused(limits, name, value)
        if needed is not None:
            flag = f"--{name} {value}" if name in PIN_FLAGS and options[name] is not None else f"--fix {name}={value}"
            others = [other for other in single_model_targets()
                      if other != target and _refused(constraints(other), name, value) is None]
            instead = f"drop the pin, or choose a target that runs it: {', '.join(others)}" if others \
                else "drop the pin (no target runs it)"
            raise SolverInputError(f"{flag}: the {target} target can only run {needed}; {instead}")
    search["fixed"] = limits.get("fixed", {}) | search["fixed"]
    search["ranges"] = limits.get("ranges", {}) | search["ranges"]
    search["allow_partial_recompute"] = limits.get("allow_partial_recompute", True)
    if limits.get("memory_margin"):  # the serving engines are given at most part of the GPU
        from dataclasses import replace

        from parallelplan.constraints.runtime import RuntimeAllowance

        runtime = search["runtime"] or RuntimeAllowance.default()
        search["runtime"] = replace(runtime, memory_margin=max(runtime.memory_margin, limits["memory_margin"]))
    try:
        return solve(model, cluster, workload, objective=parse_objective(options["objective"]), **search)
    except Infeasible as err:
        report_infeasible(err, as_json)


def _rl_solution(target: str, model, cluster, workload, options: dict[str, Any], search: dict[str, Any], as_json: bool):
    """`solver.solve_rl` for ``target``: each role in the target's limits, its placement when it runs one."""
    from parallelplan.cli.rl_cmd import rl_arguments, rl_given
    from parallelplan.emitters import rl_constraints, rl_placement
    from parallelplan.solver import Infeasible, SolverInputError, solve_rl

    rl_given({**options, "node_counts": search["node_counts"], "min_tokens_per_s": search["min_tokens_per_s"]},
             options["objective"], 0)
    limits, runs = rl_constraints(target), rl_placement(target)
    given = rl_arguments()
    if runs is not None and given["placement"] not in (None, runs):
        raise SolverInputError(f"--placement {given['placement']}: {target} runs the {runs} placement only")
    if runs is not None and given["gpus"] and runs == "colocated":
        raise SolverInputError(f"--role-gpus: {target} runs every role on every GPU (colocated)")
    try:
        return solve_rl(model, cluster, workload, **{**given, "placement": runs or given["placement"]}, limits=limits,
                        efficiency=search["efficiency"], runtime=search["runtime"], time_limit_s=search["time_limit_s"])
    except Infeasible as err:
        report_infeasible(err, as_json)


def target_stack(target: str, given: str | None) -> str | None:
    """The stack a plan for ``target`` is priced on: the one the target runs (``--stack`` may only repeat
    it), or for a serving target ``--stack`` as given."""
    from parallelplan.constraints.efficiency import stack_of_target, stacks
    from parallelplan.solver import SolverInputError

    runs = stack_of_target(target)
    if given is not None and runs is not None and given != runs:
        others = ", ".join(stacks()[given]["targets"]) or "none: use plan solve"
        raise SolverInputError(f"--stack {given}: the {target} target runs {runs}; drop --stack, "
                               f"or choose a target that runs {given} ({others})")
    return runs or given


def _refused(limits: dict[str, Any], name: str, value: Any) -> str | None:
    """What a target whose `emitters.constraints` are ``limits`` runs instead of ``name`` = ``value``
    (``cp = 1``, ``recompute in none, full``), or None when it runs that value."""
    fixed, allowed = limits.get("fixed", {}), limits.get("ranges", {}).get(name)
    if name in fixed and fixed[name] != value:
        return f"{name} = {fixed[name]}"
    if allowed is not None and value not in allowed:
        return f"{name} {'=' if len(allowed) == 1 else 'in'} {', '.join(map(str, allowed))}"
    return None


def _write(target: str, options: dict[str, Any]) -> None:
    import json

    from parallelplan.emitters import emit
    from parallelplan.solver.explain import describe

    as_json = options.pop("as_json")
    solution = _solution(target, options, as_json)
    emit_options = {"script": options["script"], "script_args": options["script_args"],
                    "master_port": options["master_port"], "job_name": options["job_name"]}
    slurm = {"time_limit": options.get("slurm_time"), "partition": options.get("partition"), "account": options.get("account")}
    emit_options |= {k: v for k, v in slurm.items() if v is not None}
    rl_step = hasattr(solution, "roles")
    files = emit(solution, target, **({} if rl_step else emit_options))  # EmitError: bad input, reported by `cli.main`
    out: Path | None = options["out_dir"]
    write_files(files, out)
    if as_json:
        click.echo(json.dumps({"target": target, "solution": solution.model_dump(mode="json"), "files": files}, indent=2))
        return
    if rl_step:
        click.echo(f"{target}: {solution.algorithm.upper()} step, {solution.placement}, {solution.step_time_s:.1f} s per "
                   f"step ({'proved optimal' if solution.optimal else 'not proved optimal'}): "
                   + "; ".join(f"{r.role} {describe(r.plan)}" for r in solution.roles))
    else:
        click.echo(f"{target}: {describe(solution.plan)} on {solution.gpus} GPUs "
                   f"({'proved optimal' if solution.optimal else 'not proved optimal'})")
    show_files(files, out)


def write_files(files: dict[str, str], out: Path | None) -> None:
    """Write ``files`` into ``out`` (scripts made executable); nothing without ``out``."""
    if out is None:
        return
    out.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        path = out / name
        path.write_text(content)
        if content.startswith("#!"):
            path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


def show_files(files: dict[str, str], out: Path | None) -> None:
    """Say where the files went, or print them."""
    if out is not None:
        click.echo("\n".join(f"  wrote {out / name}" for name in files))
        return
    for name, content in files.items():
        click.echo(f"\n==> {name} <==  (--out DIR writes the files)\n{content.rstrip()}")


@click.command()
@click.option("--target", "-t", help="accelerate, deepspeed, megatron, sglang, slurm, torchrun, torchtitan, trl, verl "
                                     "(PPO / GRPO steps) or vllm [default: torchrun, said on stderr].")
@with_options(SOURCE_OPTIONS)
@with_options(WORKLOAD_OPTIONS)
@with_options(SEARCH_OPTIONS)
@with_options(RL_OPTIONS)
@with_options(MODEL_OPTIONS)
@with_options(LAUNCH_OPTIONS)
def launch(target: str, **options: Any) -> None:
    """Write the launch files of a framework for the best plan it can run.

    \b
    Examples:
      plan launch --model llama-3.1-70b --cluster dgx-h100 --nodes 2 --target deepspeed --out run/
      plan launch --model llama-3.1-8b --nodes 2 --gpus 4 --tp 2 --pp 2 --dp 1
      plan solve -m llama-3.1-8b -c dgx-h100 --nodes 1 --json > plan.json
      plan launch --solution plan.json --target torchrun --out run/ --script train.py --script-arg --lr=3e-4
      plan launch -m qwen3-30b-a3b --nodes 2 --kind rlhf --algorithm grpo --seq-len 1024 --global-batch 64 --target verl
    """
    from parallelplan.emitters import EmitError, list_targets

    if target is None:
        target = "torchrun"
        if not quiet():
            click.echo("note: no --target given: writing torchrun files (choose with --target)", err=True)
    if target not in list_targets():
        raise EmitError(f"unknown target {target!r}; use one of {', '.join(list_targets())}")
    _write(target, options)


@click.command()
@with_options(SOURCE_OPTIONS)
@with_options(WORKLOAD_OPTIONS)
@with_options(SEARCH_OPTIONS)
@with_options(MODEL_OPTIONS)
@with_options(LAUNCH_OPTIONS)
@with_options(SLURM_OPTIONS)
def slurm(**options: Any) -> None:
    """An sbatch script that runs the best plan with srun + torchrun.

    \b
    Example:
      plan slurm --model llama-3.1-70b --cluster dgx-h100 --nodes 4 --partition gpu --time 48:00:00 --out run/
    """
    _write("slurm", options)
