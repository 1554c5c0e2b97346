"""`plan estimate`: memory and step time of a plan the user already runs (or considers), with the rules it
breaks and, with ``--tokens``, the time and cost to train on a token budget. Exit 0 when the plan is valid
and fits, 1 when it breaks a rule (it is still priced where the hardware can run it at all: fp8 on a GPU
without fp8 is not), 2 on bad input.

``--json`` prints the `constraints.Assessment` (``plan``, ``workload``, ``gpus``, ``estimate``,
``violations``, ``budget``). Also the plan flags, sizing and rendering that `plan validate` shares.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from parallelplan.cli.format import (
    bad,
    fit_text,
    gib,
    heading,
    plural,
    quiet,
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
    degree_product,
    given_world_size,
    load_target_cluster,
    with_options,
)

if TYPE_CHECKING:
    from parallelplan.constraints import Assessment, Budget, Estimate, Plan, Workload
    from parallelplan.hardware import ClusterSpec
    from parallelplan.models import ModelSpec

PLAN_OPTIONS = [
    click.option("--tp", type=click.IntRange(min=1), help="Tensor-parallel degree."),
    click.option("--pp", type=click.IntRange(min=1), help="Pipeline-parallel degree."),
    click.option("--dp", type=click.IntRange(min=1), help="Data-parallel degree [default: GPUs / (tp·pp·cp)]."),
    click.option("--cp", type=click.IntRange(min=1), help="Context-parallel degree."),
    click.option("--cp-comm", type=click.Choice(["p2p", "a2a", "a2a+p2p"]),
                 help="Context-parallel exchange: p2p ring attention, a2a Ulysses all-to-alls, a2a+p2p USP (Ulysses "
                      "inside the node, the ring across) [default: p2p]."),
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
    click.option("--precision", type=click.Choice(["bf16", "fp16", "fp8", "fp32", "tf32"]),
                 help="GEMM precision; tf32 is fp32 training on the TF32 tensor cores [default: bf16]."),
    click.option("--fp8-recipe", type=click.Choice(["delayed", "tensorwise", "rowwise", "blockwise", "mxfp8"]),
                 help="With --precision fp8: how GEMM inputs get their scales — delayed (amax history), tensorwise "
                      "(current per-tensor), rowwise (torchao), blockwise (128 values, Hopper), mxfp8 (32 values, "
                      "Blackwell) [default: the stack's: delayed on Megatron, rowwise on torchtitan, tensorwise on custom]."),
    click.option("--fp8-bf16-layers", type=click.IntRange(min=0),
                 help="With --precision fp8: keep the model's first and last N layers in bf16 (Megatron's "
                      "--first-last-layers-bf16) [default: 0]."),
    click.option("--master-weights/--no-master-weights", default=None,
                 help="Keep fp32 master weights, gradients and states [default: yes]."),
    click.option("--optimizer", type=click.Choice(["adamw", "adamw8bit", "adafactor", "lion", "sgd", "came"]),
                 help="Optimizer [default: adamw]."),
    click.option("--offload", type=click.Choice(["none", "optimizer", "params"]), help="CPU offload [default: none]."),
    click.option("--offload-activations/--no-offload-activations", default=None,
                 help="Copy the activations kept for the backward to host memory and back, beside the compute "
                      "[default: no]."),
    click.option("--schedule", type=click.Choice(["1f1b", "interleaved", "zero_bubble", "dualpipev", "zbv"]),
                 help="Pipeline schedule; dualpipev and zbv run two chunks per rank in a V (vpp 2) [default: "
                      "interleaved when vpp > 1, else 1f1b]."),
    click.option("--layers-per-stage", help="Layers of each pipeline stage, comma-separated (e.g. 19,21,21,19)."),
    click.option("--kernels", type=click.Choice(["fused", "unfused"]),
                 help="fused: Megatron/Transformer Engine; unfused: PyTorch eager / HF transformers [default: fused]."),
    click.option("--attention-kernel", type=click.Choice(["flash", "flash2", "flash3", "cudnn", "eager"]),
                 help="Attention kernel: flash (the stack's own), flash2, flash3 (Hopper), cudnn, or eager "
                      "(the s x s scores materialised) [default: flash]."),
    click.option("--kv-cache-dtype", type=click.Choice(["auto", "fp8"]),
                 help="Serving: the KV cache in the activations' dtype (auto) or in fp8, one byte an element "
                      "(vLLM --kv-cache-dtype fp8, SGLang fp8_e4m3) [default: auto]."),
    click.option("--tp-comm-overlap/--no-tp-comm-overlap", default=None, help="Overlap TP collectives with GEMMs [default: yes]."),
    click.option("--ep-comm-overlap/--no-ep-comm-overlap", default=None,
                 help="Overlap one micro-batch's expert all-to-all with another's compute [default: yes]."),
    click.option("--grad-reduce-overlap/--no-grad-reduce-overlap", default=None,
                 help="Overlap the gradient reduction with backward [default: yes]."),
    click.option("--param-gather-overlap/--no-param-gather-overlap", default=None,
                 help="Overlap sharded parameter gathers with forward [default: yes]."),
]


BUDGET_OPTIONS = [
    click.option("--tokens", type=click.FloatRange(min=0, min_open=True),
                 help="Training token budget (e.g. 1e12): adds the time and cost to train on it."),
    click.option("--price", "price_per_gpu_hour", type=click.FloatRange(min=0, min_open=True),
                 help="USD per GPU-hour for the cost [default: the median on-demand offer in hardware/data/prices.json]."),
]


@click.command()
@with_options(TARGET_OPTIONS)
@click.option("--plan", "plan_file", type=click.Path(dir_okay=False, path_type=Path),
              help="A plan file: JSON/YAML of Plan fields, or a saved `plan solve --json`; flags override its fields.")
@with_options(PLAN_OPTIONS)
@with_options(WORKLOAD_OPTIONS)
@GLOBAL_BATCH_OPTION
@with_options(BUDGET_OPTIONS)
@with_options(MODEL_OPTIONS)
@PLOT_OPTION
@click.option("--json", "as_json", is_flag=True, help="Print the constraints.Assessment as JSON.")
def estimate(model_ref: str, cluster_ref: str | None, nodes: int | None, gpus: int | None, plan_file: Path | None,
             kind: str, seq_len: int, global_batch: int | None, dropout: float, train_mtp: bool, stack: str | None, moe_dispatcher: str, moe_imbalance: float, tokens: float | None,
             price_per_gpu_hour: float | None, efficiency_file: Path | None, calibration_file: Path | None,
             memory_margin: float,
             allow_cross_domain: bool, plot_path: Path | None, as_json: bool,
             **plan_fields: Any) -> None:
    """Memory and step time of a plan, with the rules it breaks; with --tokens, the time and cost to
    train on a token budget. Exit 1 when the plan breaks a rule (it is still priced).

    \b
    Examples:
      plan estimate --model llama-3.1-70b --cluster dgx-h100 --nodes 8 --tp 8 --pp 2 --sequence-parallel --sharding zero1
      plan estimate -m llama-3.1-70b -c dgx-h100 --nodes 64 --tp 8 --pp 4 --seq-len 8192 --tokens 15e12 --price 2.5
      plan estimate -m mixtral-8x7b -c dgx-h100 --nodes 2 --tp 2 --ep 8 --etp 1 --sequence-parallel --json
      plan estimate -m llama-3.1-8b -c dgx-h100 --nodes 1 --kind inference --seq-len 8192 --global-batch 64 --tp 8
      plan estimate -m llama-3.1-70b -c dgx-h100 --nodes 8 --tp 8 --pp 2 --plot plan.svg
    """
    from parallelplan.models import load_model

    model = load_model(model_ref)
    fields = plan_fields_from(plan_file, plan_fields)
    cluster = load_target_cluster(cluster_ref, nodes, gpus, given_world_size(fields))
    plan = build_plan(fields, cluster.total_gpus)
    workload = build_workload(kind=kind, seq_len=seq_len, dropout=dropout, train_mtp=train_mtp, stack=stack, moe_dispatcher=moe_dispatcher, moe_imbalance=moe_imbalance,
                              global_batch_size=global_batch or default_global_batch(kind, seq_len, plan))
    report = assess_plan(model, cluster, plan, workload, tokens=tokens, price_per_gpu_hour=price_per_gpu_hour,
                         costs=cost_model(efficiency_file, calibration_file, memory_margin), allow_cross_domain=allow_cross_domain)
    if as_json:
        click.echo(report.model_dump_json(indent=2))
    else:
        click.echo(render(model, cluster, report))
    if plot_path is not None and report.estimate is not None:
        from parallelplan.dashboard.charts import estimate_chart

        title = f"{model.display_name or model.name} on {report.gpus} x {cluster.gpu.display_name}"
        click.echo(f"wrote {estimate_chart(report.estimate, title, plot_path)}", err=True)
    if report.violations:
        raise SystemExit(1)


def assess_plan(model: ModelSpec, cluster: ClusterSpec, plan: Plan, workload: Workload, *, tokens: float | None,
                price_per_gpu_hour: float | None, costs: dict[str, Any], allow_cross_domain: bool) -> Assessment:
    """`constraints.assess` with the command's cost model (`cli.options.cost_model`)."""
    from parallelplan.constraints import assess

    return assess(model, cluster, plan, workload, tokens=tokens, price_per_gpu_hour=price_per_gpu_hour,
                  allow_cross_domain=allow_cross_domain, **costs)


def plan_fields_from(plan_file: Path | None, flags: dict[str, Any]) -> dict[str, Any]:
    """`Plan` fields from a plan file (Plan fields, or a saved solution's ``plan``) and flags (flags win)."""
    from parallelplan.common.files import read_mapping
    from parallelplan.constraints import PlanError

    fields: dict[str, Any] = read_mapping(plan_file, PlanError, "Plan fields") if plan_file else {}
    if isinstance(fields.get("plan"), dict) and "estimate" in fields:  # a `plan solve --json` output
        fields = dict(fields["plan"])
    given = {name: value for name, value in flags.items() if value is not None}
    if "layers_per_stage" in given:
        given["layers_per_stage"] = parse_stages(given["layers_per_stage"])
    if "recompute_modules" in given:
        given["recompute_modules"] = tuple(m.strip() for m in given["recompute_modules"].split(",") if m.strip())
    return fields | given


def build_plan(fields: dict[str, Any], gpus: int) -> Plan:
    """A `Plan` from its fields; dp defaults to what the other degrees leave of the ``gpus``."""
    from pydantic import ValidationError

    from parallelplan.common.validation import describe_validation_error
    from parallelplan.constraints import Plan, PlanError

    fields = dict(fields)
    if fields.get("dp") is None:
        others = degree_product(fields, ("tp", "pp", "cp"))
        if gpus % others:
            raise PlanError(f"tp·pp·cp = {others} does not divide the cluster's {gpus} GPUs; give --dp, "
                            "or degrees whose product divides the GPU count")
        fields["dp"] = gpus // others
    try:
        return Plan.model_validate(fields)
    except ValidationError as err:
        raise PlanError(describe_validation_error(err, "plan")) from None


def parse_stages(text: str) -> tuple[int, ...]:
    from parallelplan.constraints import PlanError

    try:
        stages = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise PlanError(f"--layers-per-stage must be comma-separated integers (e.g. 19,21,21,19), got {text!r}") from None
    if any(n < 1 for n in stages):
        raise PlanError(f"--layers-per-stage needs at least one layer per stage, got {text!r}")
    return stages


def describe_plan(plan: Plan, model: ModelSpec) -> str:
    """The plan's every choice in words; the expert degrees only for a MoE ``model`` (a dense model has no
    experts to place: its ep and etp change nothing, and a wrong ep is reported as a broken rule)."""
    from parallelplan.solver.explain import CP_COMM_WORDS

    parts = [f"tp {plan.tp} · pp {plan.pp} · dp {plan.dp} · cp {plan.cp}"
             + (f" ({CP_COMM_WORDS[plan.cp_comm]})" if plan.cp > 1 else "")]
    if model.is_moe:
        parts.append(f"ep {plan.ep} (etp {plan.etp})")
    if plan.vpp > 1:
        parts.append(f"vpp {plan.vpp}")
    parts.append(f"micro-batch {plan.micro_batch_size}")
    if plan.sequence_parallel:
        parts.append("sequence parallel")
    parts.append({"none": "no sharding", "hsdp": f"hsdp/{plan.hsdp_shard_size}"}.get(plan.sharding, plan.sharding))
    parts.append(f"recompute {plan.recompute}" + (f" ({plan.recompute_layers} layers)" if plan.recompute_layers else "")
                 + (f" ({', '.join(plan.recompute_modules)})" if plan.recompute_modules else ""))
    parts.append(f"{plan.precision}{f' ({plan.fp8_recipe} scaling)' if plan.fp8_recipe else ''}"
                 f"{f', first and last {plan.fp8_bf16_layers} layers bf16' if plan.fp8_bf16_layers else ''}"
                 f"{'' if plan.master_weights else ' (no master weights)'}")
    parts.append(plan.optimizer + ("" if plan.offload == "none" else f", offload {plan.offload}"))
    parts.append("activations offloaded to host memory" if plan.offload_activations else "")
    parts.append(f"{plan.schedule} schedule" if plan.pp > 1 else "")
    parts.append("unfused kernels" if plan.kernels == "unfused" else "")
    parts.append("" if plan.attention_kernel == "flash" else f"{plan.attention_kernel} attention")
    parts.append("fp8 KV cache" if plan.kv_cache_dtype == "fp8" else "")
    return ", ".join(p for p in parts if p)


def memory_table(est: Estimate) -> str:
    mem = est.memory
    where = f"stage {mem.stage}" if mem.stage or est.memory.in_flight_microbatches > 1 else "every GPU"
    rows = [
        ("weights", gib(mem.weights)), ("gradients", gib(mem.gradients)),
        ("optimizer + master weights", gib(mem.optimizer)), ("activations", gib(mem.activations)),
        ("KV cache", gib(mem.kv_cache)), ("runtime (CUDA, NCCL, frag.)", gib(mem.overhead)),
        ("total", gib(mem.total) if est.fits else bad(gib(mem.total))), ("usable (GPU less --memory-margin)", gib(mem.usable)),
    ]
    if mem.host:
        rows.append(("in host memory (offloaded)", gib(mem.host)))
    return table([f"memory per GPU ({where})", ""], rows, right=(1,))


def time_table(est: Estimate) -> str:
    t, step = est.time, est.step_time_s
    parts = [("compute (incl. recompute)", t.compute), ("TP comm (exposed)", t.tp_comm),
             ("CP comm (exposed)", t.cp_comm), ("expert all-to-all (exposed)", t.ep_comm),
             ("DP / FSDP comm (exposed)", t.dp_comm), ("pipeline sends", t.pp_comm),
             ("activation offload (exposed)", t.offload),
             ("pipeline bubble", t.bubble), ("optimizer update", t.optimizer), ("decode (generation)", t.decode)]
    rows = [(name, f"{value:.3f}", f"{100 * value / step:.1f}%") for name, value in parts if value > 0]
    rows.append(("step", f"{step:.3f}", "100.0%"))
    rows.append(("step, 80% interval", step_range(est.step_time_interval_s), ""))
    return table(["time per step", "seconds", "share"], rows, right=(1, 2))


def render_budget(budget: Budget) -> str:
    days = budget.time_s / 86400
    cost = f"${budget.usd:,.0f} at ${budget.price_per_gpu_hour:.2f} per GPU-hour ({budget.price_basis})" \
        if budget.usd is not None else f"no price ({budget.price_basis}: --price)"
    rows = [("tokens", f"{budget.tokens:.3g}"), ("optimizer steps", f"{budget.steps:,}"),
            ("wall time", f"{days:,.1f} days ({budget.time_s / 3600:,.0f} h)"),
            ("GPU-hours", f"{budget.gpu_hours:,.0f}"), ("cost", cost)]
    return table(["training to the token budget", ""], rows)


def render(model: ModelSpec, cluster: ClusterSpec, report: Assessment) -> str:
    plan, workload, est, violations = report.plan, report.workload, report.estimate, report.violations
    micro = max(workload.global_batch_size // (plan.dp * plan.micro_batch_size), 1)
    lines = [
        f"{model.display_name or model.name} on {cluster.total_gpus} GPUs: {cluster.num_nodes} x {cluster.node.name}",
        heading(f"plan: {describe_plan(plan, model)}"),
        f"workload: {workload_kind(workload)}, {workload.seq_len} tokens x {plural(workload.global_batch_size, 'sequence')}"
        + (f" ({plural(micro, 'micro-batch', 'micro-batches')} per pipeline per step)" if workload.training else "")
        + f", on {software(workload, model)}",
        "",
    ]
    if est is not None:
        lines.append(side_by_side(memory_table(est), time_table(est)))
        lines.append(f"fits: {fit_text(est.memory)}")
        lines.append(f"throughput: {est.tokens_per_s:,.0f} tokens/s, {est.model_tflops_per_gpu:.0f} model TFLOP/s per GPU, "
                     f"MFU {100 * est.mfu:.1f}% (model FLOPs, recompute excluded, over the bf16 dense peak for every precision)"
                     + ("" if est.precision_peak_utilization == est.mfu else
                        f"; {100 * est.precision_peak_utilization:.1f}% of the {plan.precision} dense peak"))
        if report.budget is not None:
            lines += ["", render_budget(report.budget)]
        if not quiet():
            lines += ["", "notes:"] + [f"  - {note}" for note in est.notes]
    else:
        lines.append(bad("not priced: the plan cannot run on this hardware (below)"))
    if violations:
        lines += ["", bad("rules broken:")]
        lines += [f"  - {v.rule}: {v.message}. Fix: {v.fix}." for v in violations]
    return "\n".join(lines)
