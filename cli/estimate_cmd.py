"""`plan estimate`: memory and step time of a plan the user already runs (or considers), with the rules it
breaks. Exit 0 when the plan is valid and fits, 1 when it breaks a rule (it is still priced), 2 on bad input
and for plans the cost model cannot price (`constraints.PlanError`, e.g. fp8 on a GPU without it).

``--json`` prints ``{"plan", "workload", "estimate", "violations"}``: the resolved `constraints.Plan` and
`constraints.Workload`, the `constraints.Estimate` and the `constraints.Violation` list of `check`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from cli.format import gib, table
from cli.options import MODEL_OPTIONS, TARGET_OPTIONS, WORKLOAD_OPTIONS, build_workload, load_efficiency, with_options

if TYPE_CHECKING:
    from constraints import Estimate, Plan, Violation, Workload
    from hardware import ClusterSpec
    from models import ModelSpec

PLAN_OPTIONS = [
    click.option("--tp", type=click.IntRange(min=1), help="Tensor-parallel degree."),
    click.option("--pp", type=click.IntRange(min=1), help="Pipeline-parallel degree."),
    click.option("--dp", type=click.IntRange(min=1), help="Data-parallel degree [default: GPUs / (tp·pp·cp)]."),
    click.option("--cp", type=click.IntRange(min=1), help="Context-parallel degree."),
    click.option("--ep", type=click.IntRange(min=1), help="Expert-parallel degree (inside dp·cp·tp)."),
    click.option("--etp", type=click.IntRange(min=1), help="Expert tensor-parallel degree [default: tp]."),
    click.option("--vpp", type=click.IntRange(min=1), help="Virtual pipeline stages per rank (interleaved schedule)."),
    click.option("--micro-batch", "micro_batch_size", type=click.IntRange(min=1), help="Micro-batch size (sequences)."),
    click.option("--sequence-parallel/--no-sequence-parallel", default=None, help="Megatron sequence parallelism [default: off]."),
    click.option("--sharding", type=click.Choice(["none", "zero1", "zero2", "zero3", "fsdp", "hsdp"]),
                 help="Sharding of model states over the data-parallel ranks [default: none]."),
    click.option("--zero-stage", type=click.IntRange(0, 3), help="DeepSpeed ZeRO stage (alias of --sharding)."),
    click.option("--hsdp-shard-size", type=click.IntRange(min=1), help="Ranks each HSDP replica shards over."),
    click.option("--recompute", type=click.Choice(["none", "selective", "selective_mm", "full"]),
                 help="Activation recomputation [default: none]."),
    click.option("--recompute-layers", type=click.IntRange(min=1), help="With --recompute full: layers per pipeline rank."),
    click.option("--recompute-modules",
                 help="With --recompute selective: Megatron modules, comma-separated, of core_attn, layernorm, "
                      "mla_up_proj, mlp, moe_act, moe, shared_experts [default: core_attn]."),
    click.option("--precision", type=click.Choice(["bf16", "fp16", "fp8", "fp32"]), help="GEMM precision [default: bf16]."),
    click.option("--master-weights/--no-master-weights", default=None,
                 help="Keep fp32 master weights, gradients and states [default: yes]."),
    click.option("--optimizer", type=click.Choice(["adamw", "adamw8bit", "adafactor", "lion", "sgd"]),
                 help="Optimizer [default: adamw]."),
    click.option("--offload", type=click.Choice(["none", "optimizer", "params"]), help="CPU offload [default: none]."),
    click.option("--schedule", type=click.Choice(["1f1b", "interleaved", "zero_bubble"]),
                 help="Pipeline schedule [default: interleaved when vpp > 1, else 1f1b]."),
    click.option("--layers-per-stage", help="Layers of each pipeline stage, comma-separated (e.g. 19,21,21,19)."),
    click.option("--kernels", type=click.Choice(["fused", "unfused"]),
                 help="fused: Megatron/Transformer Engine; unfused: PyTorch eager / HF transformers [default: fused]."),
    click.option("--attention-kernel", type=click.Choice(["flash", "eager"]), help="Attention kernel [default: flash]."),
    click.option("--tp-comm-overlap/--no-tp-comm-overlap", default=None, help="Overlap TP collectives with GEMMs [default: yes]."),
    click.option("--ep-comm-overlap/--no-ep-comm-overlap", default=None,
                 help="Overlap one micro-batch's expert all-to-all with another's compute [default: yes]."),
    click.option("--grad-reduce-overlap/--no-grad-reduce-overlap", default=None,
                 help="Overlap the gradient reduction with backward [default: yes]."),
    click.option("--param-gather-overlap/--no-param-gather-overlap", default=None,
                 help="Overlap sharded parameter gathers with forward [default: yes]."),
]


@click.command()
@with_options(TARGET_OPTIONS)
@click.option("--plan", "plan_file", type=click.Path(dir_okay=False, path_type=Path),
              help="A plan file (JSON/YAML of Plan fields); flags override its fields.")
@with_options(PLAN_OPTIONS)
@with_options(WORKLOAD_OPTIONS)
@click.option("--global-batch", type=click.IntRange(min=1),
              help="Sequences per optimizer step (serving: sequences at once) [default: dp·micro-batch·4·pp].")
@with_options(MODEL_OPTIONS)
@click.option("--json", "as_json", is_flag=True, help="Print plan, workload, estimate and violations as JSON.")
def estimate(model_ref: str, cluster_ref: str, nodes: int | None, gpus: int | None, plan_file: Path | None,
             kind: str, seq_len: int, global_batch: int | None, dropout: float, train_mtp: bool,
             efficiency_file: Path | None, allow_cross_domain: bool, as_json: bool, **plan_fields: Any) -> None:
    """Memory and step time of a plan, with the rules it breaks.

    \b
    Examples:
      plan estimate --model llama-3.1-70b --cluster dgx-h100 --nodes 8 --tp 8 --pp 2 --sequence-parallel --sharding zero1
      plan estimate -m mixtral-8x7b -c dgx-h100 --nodes 2 --tp 2 --ep 8 --etp 1 --sequence-parallel --json
      plan estimate -m llama-3.1-8b -c dgx-h100 --nodes 1 --kind inference --seq-len 8192 --global-batch 64 --tp 8
    """
    from constraints import check
    from constraints import estimate as estimate_plan
    from hardware import load_cluster
    from models import load_model

    model = load_model(model_ref)
    cluster = load_cluster(cluster_ref, nodes=nodes, gpus=gpus)
    plan = build_plan(plan_file, plan_fields, cluster.total_gpus)
    default_batch = plan.dp * plan.micro_batch_size * (4 * plan.pp if plan.pp > 1 else 1)
    workload = build_workload(kind=kind, seq_len=seq_len, dropout=dropout, train_mtp=train_mtp,
                              global_batch_size=global_batch or default_batch)
    efficiency = load_efficiency(efficiency_file)
    violations = check(model, cluster, plan, workload, allow_cross_domain=allow_cross_domain, efficiency=efficiency)
    result = estimate_plan(model, cluster, plan, workload, efficiency=efficiency)
    if as_json:
        click.echo(json.dumps({
            "plan": plan.model_dump(mode="json"), "workload": workload.model_dump(mode="json"),
            "estimate": result.model_dump(mode="json"), "violations": [v.model_dump(mode="json") for v in violations],
        }, indent=2))
    else:
        click.echo(render(model, cluster, plan, workload, result, violations))
    if violations:
        raise SystemExit(1)


def build_plan(plan_file: Path | None, flags: dict[str, Any], gpus: int) -> Plan:
    """A `Plan` from a plan file and flags (flags win); dp defaults to what the other degrees leave."""
    from pydantic import ValidationError

    from constraints import Plan, PlanError
    from plan_common.files import read_mapping
    from plan_common.validation import describe_validation_error

    fields: dict[str, Any] = read_mapping(plan_file, PlanError, "Plan fields") if plan_file else {}
    given = {name: value for name, value in flags.items() if value is not None}
    if "layers_per_stage" in given:
        given["layers_per_stage"] = parse_stages(given["layers_per_stage"])
    if "recompute_modules" in given:
        given["recompute_modules"] = tuple(m.strip() for m in given["recompute_modules"].split(",") if m.strip())
    fields |= given
    if fields.get("dp") is None:
        others = 1
        for name in ("tp", "pp", "cp"):
            value = fields.get(name, 1)
            others *= value if isinstance(value, int) and value > 0 else 1
        if gpus % others:
            raise PlanError(f"tp·pp·cp = {others} does not divide the cluster's {gpus} GPUs; give --dp, "
                            "or degrees whose product divides the GPU count")
        fields["dp"] = gpus // others
    try:
        return Plan.model_validate(fields)
    except ValidationError as err:
        raise PlanError(describe_validation_error(err, "plan")) from None


def parse_stages(text: str) -> tuple[int, ...]:
    from constraints import PlanError

    try:
        stages = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise PlanError(f"--layers-per-stage must be comma-separated integers (e.g. 19,21,21,19), got {text!r}") from None
    if any(n < 1 for n in stages):
        raise PlanError(f"--layers-per-stage needs at least one layer per stage, got {text!r}")
    return stages


def describe_plan(plan: Plan) -> str:
    parts = [f"tp {plan.tp} · pp {plan.pp} · dp {plan.dp} · cp {plan.cp}"]
    if plan.ep > 1:
        parts.append(f"ep {plan.ep} (etp {plan.etp})")
    if plan.vpp > 1:
        parts.append(f"vpp {plan.vpp}")
    parts.append(f"micro-batch {plan.micro_batch_size}")
    if plan.sequence_parallel:
        parts.append("sequence parallel")
    parts.append(plan.sharding if plan.sharding != "hsdp" else f"hsdp/{plan.hsdp_shard_size}")
    parts.append(f"recompute {plan.recompute}" + (f" ({plan.recompute_layers} layers)" if plan.recompute_layers else "")
                 + (f" ({', '.join(plan.recompute_modules)})" if plan.recompute_modules else ""))
    parts.append(f"{plan.precision}{'' if plan.master_weights else ' (no master weights)'}")
    parts.append(plan.optimizer + ("" if plan.offload == "none" else f", offload {plan.offload}"))
    parts.append(f"{plan.schedule} schedule" if plan.pp > 1 else "")
    return ", ".join(p for p in parts if p)


def render(model: ModelSpec, cluster: ClusterSpec, plan: Plan, workload: Workload, est: Estimate,
           violations: list[Violation]) -> str:
    mem, t = est.memory, est.time
    micro = max(workload.global_batch_size // (plan.dp * plan.micro_batch_size), 1)
    lines = [
        f"{model.display_name or model.name} on {cluster.num_nodes} x {cluster.node.name} ({cluster.total_gpus} GPUs)",
        f"plan: {describe_plan(plan)}",
        f"workload: {workload.kind}, {workload.seq_len} tokens x {workload.global_batch_size} sequences"
        + (f" ({micro} micro-batches per pipeline per step)" if workload.training else ""),
        "",
    ]
    where = f"stage {mem.stage} of {plan.pp}" if plan.pp > 1 else "every GPU"
    memory_rows = [
        ("weights", gib(mem.weights)), ("gradients", gib(mem.gradients)),
        ("optimizer states + master weights", gib(mem.optimizer)), ("activations", gib(mem.activations)),
        ("KV cache", gib(mem.kv_cache)), ("runtime (CUDA context, NCCL, fragmentation)", gib(mem.overhead)),
        ("total", gib(mem.total)), ("GPU memory", gib(mem.usable)),
    ]
    lines.append(table([f"memory per GPU ({where})", ""], memory_rows, right=(1,)))
    lines.append(f"fits: {'yes' if est.fits else 'NO'}")
    lines.append("")
    step = est.step_time_s
    parts = [("compute (incl. recompute)", t.compute), ("tensor-parallel comm (exposed)", t.tp_comm),
             ("context-parallel comm (exposed)", t.cp_comm), ("expert all-to-all (exposed)", t.ep_comm),
             ("data-parallel / FSDP comm (exposed)", t.dp_comm), ("pipeline sends", t.pp_comm),
             ("pipeline bubble", t.bubble), ("optimizer update", t.optimizer)]
    rows = [(name, f"{value:.3f}", f"{100 * value / step:.1f}%") for name, value in parts if value > 0]
    rows.append(("step", f"{step:.3f}", "100.0%"))
    lines.append(table(["time per step", "seconds", "share"], rows, right=(1, 2)))
    lines.append(f"throughput: {est.tokens_per_s:,.0f} tokens/s, {est.model_tflops_per_gpu:.0f} model TFLOP/s per GPU, "
                 f"MFU {100 * est.mfu:.1f}% (model FLOPs, recompute excluded, over the {plan.precision} dense peak)")
    lines += ["", "notes:"] + [f"  - {note}" for note in est.notes]
    if violations:
        lines += ["", "rules broken:"]
        lines += [f"  - {v.rule}: {v.message}. Fix: {v.fix}." for v in violations]
    return "\n".join(lines)
