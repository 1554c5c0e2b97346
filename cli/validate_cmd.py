"""`plan validate`: a configuration the user already has — plan flags, a strategy file (JSON/YAML of `Plan`
fields, or a saved `plan solve --json`), or a framework's own configuration: a DeepSpeed ``ds_config.json``,
an Accelerate YAML, a torchtitan TOML or command line, a Megatron-LM argument list or launch script —
checked against every rule and the memory model; each finding with its fix. Exit 0 when it passes, 1 when it
fails, 2 on bad input. ``--json`` prints the `constraints.Assessment` (the framework reader's findings come
first in its ``violations``)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from parallelplan.cli.estimate_cmd import (
    PLAN_OPTIONS,
    assess_plan,
    build_plan,
    describe_plan,
    plan_fields_from,
)
from parallelplan.cli.format import bad, fit_text, gib, good, heading, plural, quiet, step_range, workload_kind
from parallelplan.cli.options import (
    GLOBAL_BATCH_DEFAULT,
    MODEL_OPTIONS,
    TARGET_OPTIONS,
    WORKLOAD_OPTIONS,
    build_workload,
    cost_model,
    default_global_batch,
    given_world_size,
    load_target_cluster,
    with_options,
)

if TYPE_CHECKING:
    from parallelplan.constraints import Assessment
    from parallelplan.hardware import ClusterSpec
    from parallelplan.models import ModelSpec


@click.command()
@with_options(TARGET_OPTIONS)
@click.option("--plan", "plan_file", type=click.Path(dir_okay=False, path_type=Path),
              help="A strategy file: JSON/YAML of Plan fields, or a saved `plan solve --json`.")
@click.option("--deepspeed", "deepspeed_file", type=click.Path(dir_okay=False, path_type=Path),
              help="A DeepSpeed ds_config.json (batch, ZeRO stage, offload, precision, AutoTP); runs on the cluster's GPUs.")
@click.option("--accelerate", "accelerate_file", type=click.Path(dir_okay=False, path_type=Path),
              help="An Accelerate config YAML (FSDP, DeepSpeed or Megatron-LM plugin, parallelism_config).")
@click.option("--torchtitan", "torchtitan_file", type=click.Path(dir_okay=False, path_type=Path),
              help="A torchtitan TOML config, or a file with its --section.key=value command line.")
@click.option("--megatron", "megatron_file", type=click.Path(dir_okay=False, path_type=Path),
              help="Megatron-LM arguments: a launch script or a file of pretrain_gpt.py flags.")
@with_options(PLAN_OPTIONS)
@with_options(WORKLOAD_OPTIONS)
@click.option("--global-batch", type=click.IntRange(min=1),
              help=f"Sequences per optimizer step [default: the DeepSpeed config's; else {GLOBAL_BATCH_DEFAULT}].")
@with_options(MODEL_OPTIONS)
@click.option("--json", "as_json", is_flag=True, help="Print the constraints.Assessment as JSON.")
def validate(model_ref: str, cluster_ref: str | None, nodes: int | None, gpus: int | None, plan_file: Path | None,
             deepspeed_file: Path | None, accelerate_file: Path | None, torchtitan_file: Path | None,
             megatron_file: Path | None, kind: str, seq_len: int, global_batch: int | None, dropout: float,
             train_mtp: bool, stack: str | None, moe_dispatcher: str, moe_imbalance: float, efficiency_file: Path | None, calibration_file: Path | None,
             memory_margin: float, allow_cross_domain: bool,
             as_json: bool,
             **plan_fields: Any) -> None:
    """Check your own configuration against every rule and the memory model.

    \b
    Examples:
      plan validate --model llama-3.1-70b --tp 4 --dp 1
      plan validate --model llama-3.1-70b --nodes 8 --tp 8 --pp 2 --sharding zero1 --seq-len 8192
      plan validate --model llama-3.1-8b --nodes 2 --deepspeed ds_config.json
      plan validate --model llama-3.1-70b --nodes 4 --megatron launch.sh
      plan validate --model llama-3.1-8b --plan strategy.yaml --json
    """
    from parallelplan.constraints import PlanError
    from parallelplan.models import load_model

    given = {name: path for name, path in (("--plan", plan_file), ("--deepspeed", deepspeed_file),
                                           ("--accelerate", accelerate_file), ("--torchtitan", torchtitan_file),
                                           ("--megatron", megatron_file)) if path is not None}
    if len(given) > 1:
        raise PlanError(f"give one of {', '.join(given)}, not several")
    model = load_model(model_ref)
    fields = plan_fields_from(plan_file, plan_fields)
    read, source = None, next((name for name in given if name != "--plan"), None)
    if source is not None:
        cluster = load_target_cluster(cluster_ref, nodes, gpus)
        read, framework_stack = read_framework(source, given[source], cluster, model.num_layers)
        fields = read.plan_fields | fields  # flags win
        global_batch = global_batch or read.global_batch_size
        stack = stack or framework_stack
        context = click.get_current_context()
        if read.seq_len and context.get_parameter_source("seq_len") == click.core.ParameterSource.DEFAULT:
            seq_len = read.seq_len
    else:
        cluster = load_target_cluster(cluster_ref, nodes, gpus, given_world_size(fields))
    plan = build_plan(fields, cluster.total_gpus)
    workload = build_workload(kind=kind, seq_len=seq_len, dropout=dropout, train_mtp=train_mtp, stack=stack, moe_dispatcher=moe_dispatcher, moe_imbalance=moe_imbalance,
                              global_batch_size=global_batch or default_global_batch(kind, seq_len, plan))
    report = assess_plan(model, cluster, plan, workload, tokens=None, price_per_gpu_hour=None,
                         costs=cost_model(efficiency_file, calibration_file, memory_margin), allow_cross_domain=allow_cross_domain)
    if read is not None and read.findings:
        report = report.model_copy(update={"violations": tuple(read.findings) + report.violations})
    if as_json:
        click.echo(report.model_dump_json(indent=2))
    else:
        click.echo(render(model, cluster, report, read.notes if read else (), source))
    if report.violations:
        raise SystemExit(1)


def read_framework(source: str, path: Path, cluster: ClusterSpec, num_layers: int):
    """(`emitters.reading.ReadConfig`, the stack it runs on) of a framework's configuration file."""
    import json

    import yaml

    from parallelplan.emitters.errors import EmitError

    text = path.read_text()
    world = cluster.total_gpus
    if source == "--deepspeed":
        from parallelplan.emitters.deepspeed import read_config
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise EmitError(f"{path}: not valid JSON ({err.msg} at line {err.lineno})") from None
        if not isinstance(data, dict):
            raise EmitError(f"{path}: a DeepSpeed config is a JSON object, got {type(data).__name__}")
        return read_config(data, world), "deepspeed"
    if source == "--accelerate":
        from parallelplan.emitters.accelerate_reader import read_config
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise EmitError(f"{path}: not valid YAML ({' '.join(str(err).split())})") from None
        read = read_config(data, world, num_layers, cluster.node.gpus_per_node, path.parent)
        kind = data.get("distributed_type") if isinstance(data, dict) else None
        return read, {"MEGATRON_LM": "megatron", "DEEPSPEED": "deepspeed"}.get(kind, "custom")
    if source == "--torchtitan":
        from parallelplan.emitters.torchtitan_reader import read_config, sections_from_text
        return read_config(sections_from_text(text), world, num_layers), "torchtitan"
    from parallelplan.emitters.megatron_reader import read_arguments, words_from_text
    return read_arguments(words_from_text(text), world, num_layers), "megatron"


def render(model: ModelSpec, cluster: ClusterSpec, report: Assessment, notes: tuple[str, ...], source: str | None = None) -> str:
    plan, est, findings = report.plan, report.estimate, report.violations
    verdict = good("PASS: the plan runs and fits") if not findings else bad(f"FAIL: {plural(len(findings), 'finding')}")
    lines = [f"{model.display_name or model.name} on {cluster.total_gpus} GPUs: {cluster.num_nodes} x {cluster.node.name}; "
             f"{workload_kind(report.workload)}, {report.workload.seq_len} tokens x {plural(report.workload.global_batch_size, 'sequence')}",
             heading(f"plan: {describe_plan(plan, model)}"), "", verdict]
    for v in findings:
        lines += [f"  x {v.rule}: {v.message}", f"    fix: {v.fix}"]
    if est is not None:
        lines += ["", f"memory per GPU {gib(est.memory.total)} of {gib(est.memory.usable)}, fits: {fit_text(est.memory)}",
                  f"step {est.step_time_s:.3f} s (80% interval {step_range(est.step_time_interval_s)} s), "
                  f"{est.tokens_per_s:,.0f} tokens/s, MFU {100 * est.mfu:.1f}% (`plan estimate` for the breakdown)"]
    if notes and not quiet():
        lines += ["", f"read from the {source.lstrip('-')} config:"] + [f"  - {note}" for note in notes]
    return "\n".join(lines)
