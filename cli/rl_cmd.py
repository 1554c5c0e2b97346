"""`plan solve --kind rlhf --algorithm ppo|grpo`: a PPO or GRPO step's roles placed on the cluster and
planned (`solver.solve_rl`); the options that only such a step takes (`RL_OPTIONS`) and its report."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from parallelplan.cli.format import gib, good, heading, plural, quiet, table

if TYPE_CHECKING:
    from parallelplan.constraints import Workload
    from parallelplan.hardware import ClusterSpec
    from parallelplan.models import ModelSpec
    from parallelplan.solver import RLSolution


def _remember(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    ctx.meta.setdefault("rl_options", {})[param.name] = value
    return value


RL_OPTIONS = [
    click.option("--critic", "critic_ref", expose_value=False, callback=_remember,
                 help="PPO: the critic's model [default: the actor's architecture]."),
    click.option("--reward", "reward_ref", expose_value=False, callback=_remember,
                 help="PPO/GRPO with a reward model: its model [default: the critic's]."),
    click.option("--placement", type=click.Choice(["colocated", "split"]), expose_value=False, callback=_remember,
                 help="PPO/GRPO: every role on every GPU taking turns (verl), or roles on nodes of their own "
                      "(OpenRLHF) [default: the faster]."),
    click.option("--role-gpus", multiple=True, metavar="ROLE=N", expose_value=False, callback=_remember,
                 help="PPO/GRPO: pin a role's GPUs (rollout, actor, critic, reference, reward; a power of two within "
                      "a node or whole nodes; implies split)."),
]
"""Options of a PPO / GRPO step (`plan solve`); they reach `solve_rl_step` through the click context."""


def _pins(items: tuple[str, ...]) -> dict[str, int]:
    from parallelplan.solver import SolverInputError

    pins: dict[str, int] = {}
    for item in items:
        role, sep, count = item.partition("=")
        try:
            pins[role.strip()] = int(count)
        except ValueError:
            raise SolverInputError(f"--role-gpus takes ROLE=N (e.g. actor=16), got {item!r}") from None
        if not sep:
            raise SolverInputError(f"--role-gpus takes ROLE=N (e.g. actor=16), got {item!r}")
    return pins


def rl_given(search: dict[str, Any], objective: str, top_k: int) -> None:
    """Refuse the single-model search options a PPO / GRPO step does not take."""
    from parallelplan.solver import SolverInputError

    refused = [flag for flag, value in (("--objective", objective != "throughput"), ("--top-k", top_k > 0),
                                        ("--fix", bool(search["fix"])), ("--range", bool(search["ranges"])),
                                        ("--node-counts", search["node_counts"] is not None),
                                        ("--min-tokens-per-s", search["min_tokens_per_s"] is not None))
               + tuple((f"--{d}", search.get(d) is not None) for d in ("tp", "pp", "dp", "cp", "ep")) if value]
    if refused:
        raise SolverInputError(f"{refused[0]}: a PPO/GRPO step is planned for its step time, each role in its own "
                               "search space; pin roles' GPUs with --role-gpus, or plan one role with --kind finetune")


def rl_arguments() -> dict[str, Any]:
    """`solve_rl`'s critic, reward, placement and GPU pins from the RL options on the click context."""
    from parallelplan.models import load_model

    given = click.get_current_context().meta.get("rl_options", {})
    return {"critic": load_model(given["critic_ref"]) if given.get("critic_ref") else None,
            "reward": load_model(given["reward_ref"]) if given.get("reward_ref") else None,
            "placement": given.get("placement"), "gpus": _pins(given.get("role_gpus") or ())}


def solve_rl_step(model: ModelSpec, cluster: ClusterSpec, workload: Workload, cost: dict[str, Any], time_limit_s: float,
                  as_json: bool) -> None:
    """Run `solver.solve_rl` with the RL options and print its report (or JSON)."""
    from parallelplan.cli.solve_cmd import report_infeasible
    from parallelplan.solver import Infeasible, solve_rl

    try:
        found = solve_rl(model, cluster, workload, **rl_arguments(), time_limit_s=time_limit_s, **cost)
    except Infeasible as err:
        report_infeasible(err, as_json)
    click.echo(rl_json(found) if as_json else render_rl(model, cluster, workload, found))


def rl_json(found: RLSolution) -> str:
    """`solver.RLSolution` as JSON, as `cli.answers.RLSummary` (without each role's full estimates and the
    models' specs)."""
    from parallelplan.cli.answers import RLSummary

    return RLSummary.of(found).model_dump_json(indent=2)


def render_rl(model: ModelSpec, cluster: ClusterSpec, workload: Workload, found: RLSolution) -> str:
    from parallelplan.solver.explain import describe

    r = workload.rollout
    assert r is not None
    proof = good("proved optimal by CP-SAT") if found.optimal else "best found within the time limit, NOT proved optimal"
    lines = [f"{found.algorithm.upper()} step of {model.display_name or model.name} on {cluster.total_gpus} GPUs "
             f"({plural(cluster.num_nodes, 'node')} of {cluster.node.name}): {plural(workload.global_batch_size, 'prompt')} "
             f"of {workload.seq_len} tokens x {r.group_size} responses of {r.response_len} tokens",
             f"placement {found.placement}: {proof} in {found.solve_time_s:.2f} s", ""]
    rows = [(role.role, role.model, role.gpus if role.nodes is None else f"{role.gpus} ({plural(role.nodes, 'node')})",
             describe(role.plan), *(f"{role.phases[p]:.2f}" if p in role.phases else "-" for p in ("generate", "score", "train")),
             gib(role.resident_bytes), gib(role.transient_bytes)) for role in found.roles]
    lines.append(table(["role", "model", "GPUs", "plan", "generate s", "score s", "train s", "stays", "adds"], rows,
                       right=(4, 5, 6, 7, 8)))
    phases = found.phases
    lines += ["", heading(f"step {found.step_time_s:.2f} s: " + " + ".join(f"{k} {v:.2f}" for k, v in phases.items())),
              "memory per GPU by phase: " + ", ".join(f"{k} {gib(v)}" for k, v in found.memory_per_phase.items())
              + f" of {gib(found.usable_bytes)}",
              f"throughput: {found.generated_tokens_per_s:,.0f} generated tokens/s, "
              f"{found.sequences / found.step_time_s:.2f} sequences/s"]
    if found.alternative:
        lines.append(f"other placement: {found.alternative}")
    if not quiet():
        lines += ["", "why:"] + [f"  - {line}" for line in found.explanation]
    return "\n".join(lines)
