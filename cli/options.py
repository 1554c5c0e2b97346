"""Options and input builders shared by the commands that take a model, a cluster and a workload
(`plan estimate`, `plan solve`, `plan pareto`): one definition of each flag, one error policy."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from parallelplan.cli.format import quiet

if TYPE_CHECKING:
    from parallelplan.constraints import Efficiency, Plan, Workload
    from parallelplan.hardware import ClusterSpec, PooledCluster

TARGET_OPTIONS = [
    click.option("--model", "-m", "model_ref", required=True,
                 help="Preset name or alias (see `plan presets`), a config.json or its folder, or a HF repo id."),
    click.option("--cluster", "-c", "cluster_ref",
                 help="Cluster preset (see `plan presets`), a cluster file, or 'detect' (this machine) "
                      "[default: the detected node, else dgx-h100; said on stderr]."),
    click.option("--nodes", type=click.IntRange(min=1), help="Number of nodes [default: the cluster's]."),
    click.option("--gpus", type=click.IntRange(min=1),
                 help="Total GPUs: whole nodes, or part of one node; with --nodes, spread evenly over them."),
]
DEFAULT_CLUSTER = "dgx-h100"
"""The cluster a command uses without ``--cluster``: one DGX H100 node (the quick start's hardware)."""
def _remember_workload_option(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    ctx.meta.setdefault("workload_options", {})[param.name] = value
    return value


TUNING_OPTIONS = [
    click.option("--moe-capacity-factor", type=click.FloatRange(0.0, 64.0, min_open=True), expose_value=False,
                 callback=_remember_workload_option,
                 help="MoE token dropping: each expert takes at most this many times its balanced share of tokens "
                      "[default: dropless]."),
    click.option("--moe-pad-to-capacity", is_flag=True, expose_value=False, callback=_remember_workload_option,
                 help="With --moe-capacity-factor: pad every expert's input to its capacity (static shapes)."),
    click.option("--algorithm", type=click.Choice(["dpo", "ppo", "grpo"]), expose_value=False,
                 callback=_remember_workload_option,
                 help="With --kind rlhf: DPO (a chosen and a rejected sequence per example, --global-batch counting "
                      "examples, beside a frozen reference model on the same GPUs); PPO or GRPO (each step generates "
                      "responses to --global-batch prompts of --seq-len tokens, scores and trains on them; plan solve "
                      "places the roles)."),
    click.option("--response-len", type=int, expose_value=False, callback=_remember_workload_option,
                 help="PPO/GRPO: tokens generated per response [default: 1024]."),
    click.option("--group-size", type=int, expose_value=False, callback=_remember_workload_option,
                 help="PPO/GRPO: responses per prompt [default: PPO 1, GRPO 8]."),
    click.option("--mini-batch", type=int, expose_value=False, callback=_remember_workload_option,
                 help="PPO/GRPO: sequences per optimizer update [default: all of the step's in one]."),
    click.option("--rl-epochs", type=int, expose_value=False, callback=_remember_workload_option,
                 help="PPO/GRPO: passes over the step's sequences [default: 1]."),
    click.option("--reward-model/--no-reward-model", default=None, expose_value=False,
                 callback=_remember_workload_option,
                 help="PPO/GRPO: a learned reward model scores the responses [default: PPO yes, GRPO no (a rule "
                      "or verifier)]."),
    click.option("--output-len", type=click.IntRange(min=0), default=0, show_default=True, expose_value=False,
                 callback=_remember_workload_option,
                 help="With --kind inference: tokens each sequence generates after its --seq-len prompt (the decode "
                      "after the prefill; 0 prices the prefill alone)."),
    click.option("--max-concurrency", type=int, expose_value=False, callback=_remember_workload_option,
                 help="With --kind inference: sequences one data-parallel replica holds at once (vLLM's --max-num-seqs); "
                      "the rest wait for a later wave [default: all of them]."),
    click.option("--example-len", type=int, expose_value=False, callback=_remember_workload_option,
                 help="Training or score data whose examples are shorter than --seq-len: their mean tokens. Each "
                      "sequence is one example padded to --seq-len (the padding computed, throughput counting data "
                      "tokens), or with --packing several laid end to end [default: every sequence is data]."),
    click.option("--packing", is_flag=True, expose_value=False, callback=_remember_workload_option,
                 help="With --example-len: pack examples end to end in each sequence, each attending within itself "
                      "(flash-attention's variable-length kernel; TRL's packing)."),
    click.option("--peft", type=click.Choice(["none", "lora", "qlora"]), default="none", show_default=True,
                 expose_value=False, callback=_remember_workload_option,
                 help="Fine-tune adapters on a frozen base (needs --kind finetune): LoRA, or QLoRA (4-bit NF4 base)."),
    click.option("--lora-rank", type=click.IntRange(min=1), default=16, show_default=True, expose_value=False,
                 callback=_remember_workload_option, help="LoRA rank r."),
    click.option("--lora-alpha", type=click.FloatRange(min=0, min_open=True), default=32.0, show_default=True,
                 expose_value=False, callback=_remember_workload_option, help="LoRA alpha (the update is scaled by alpha / r)."),
    click.option("--lora-targets", default="all-linear", show_default=True, expose_value=False, callback=_remember_workload_option,
                 help="Comma-separated linears to adapt: all-linear, or names among q_proj, k_proj, v_proj, o_proj, "
                      "gate_proj, up_proj, down_proj (MLA: q_a_proj, q_b_proj, kv_a_proj_with_mqa, kv_b_proj)."),
    click.option("--lora-dropout", type=click.FloatRange(0.0, 1.0, max_open=True), default=0.0, show_default=True,
                 expose_value=False, callback=_remember_workload_option, help="Dropout on the adapters' input."),
]
"""MoE token dropping, generation (`Workload.output_len`), examples shorter than the sequence (`Workload.example_len`,
``packing``), preference tuning (`Workload.algorithm`) and parameter-efficient fine-tuning
(`constraints.Peft`). They reach `build_workload` through the click context (not as parameters of each
command): every command with `WORKLOAD_OPTIONS` takes them."""

WORKLOAD_OPTIONS = [
    click.option("--kind", type=click.Choice(["pretrain", "finetune", "inference", "score", "rlhf"]), default="pretrain",
                 show_default=True, help="What runs: training (pretrain, finetune), serving (inference), a forward "
                                         "without gradients over full sequences (score), or rlhf (takes --algorithm)."),
    click.option("--seq-len", type=click.IntRange(min=1), default=4096, show_default=True, help="Tokens per sequence."),
    click.option("--dropout", type=click.FloatRange(0.0, 1.0, max_open=True), default=0.0, show_default=True),
    click.option("--train-mtp", is_flag=True, help="Also train DeepSeek-V3's multi-token-prediction modules."),
    click.option("--stack", type=click.Choice(["megatron", "megatron-2022", "torchtitan", "deepspeed", "maxtext", "custom"]),
                 help="The software that runs the plan: its attention kernel and what its overlap hides price the step "
                      "(constraints/data/stacks.json) [default: megatron; plan launch: the target's]."),
    click.option("--moe-dispatcher", type=click.Choice(["alltoall", "deepep"]), default="alltoall", show_default=True,
                 help="How an MoE model's tokens reach their experts: NCCL all-to-alls of every routed copy, or DeepEP "
                      "(one copy per remote node, then NVLink) where the stack offers it."),
    click.option("--moe-imbalance", type=click.FloatRange(min=1.0), default=1.0, show_default=True,
                 help="Routed tokens on the busiest expert-parallel rank over the mean (1 = balanced routing, as "
                      "the published MoE benchmarks force; learned routing measures more)."),
    *TUNING_OPTIONS,
]
MODEL_OPTIONS = [
    click.option("--efficiency", "efficiency_file", type=click.Path(dir_okay=False, path_type=Path),
                 help="Efficiency-factor overrides (JSON/YAML, keys of constraints/data/efficiency.json)."),
    click.option("--calibration", "calibration_file", type=click.Path(dir_okay=False, path_type=Path),
                 envvar="PLAN_CALIBRATION", show_envvar=True,
                 help="A calibration profile (`plan calibrate RUNS --out FILE`): its fitted efficiency factors and "
                      "runtime allowance price every plan; --efficiency overrides it."),
    click.option("--allow-cross-domain", is_flag=True, help="Let TP groups span NVLink domains (CP groups always may: their ring is priced over the network)."),
    click.option("--memory-margin", type=click.FloatRange(0.0, 0.5, max_open=True), default=0.0, show_default=True,
                 help="Fraction of GPU memory every plan must leave free (0.05 = fit in 95%): room for what the "
                      "estimate's memory range says the run may measure above it."),
]


def with_options(options: list):
    """Apply a list of click options to a command, in the listed order."""
    def decorate(command):
        for option in reversed(options):
            command = option(command)
        return command
    return decorate


def degree_product(fields: dict[str, Any], names: tuple[str, ...]) -> int:
    """The product of the plan degrees ``names`` in ``fields`` (a missing or invalid degree counts 1:
    `Plan` validation reports it)."""
    product = 1
    for name in names:
        value = fields.get(name, 1)
        product *= value if isinstance(value, int) and value > 0 else 1
    return product


def given_world_size(fields: dict[str, Any]) -> int | None:
    """tp·pp·dp·cp when dp is given (the plan then says how many GPUs it runs on), else None."""
    return degree_product(fields, ("tp", "pp", "dp", "cp")) if isinstance(fields.get("dp"), int) else None


DETECT_ENV = "PLAN_DETECT"
"""Where a command without ``--cluster`` looks for the node: unset or ``auto`` reads this machine,
``off`` skips detection (the default preset is used), a folder replays that recorded snapshot."""
DETECT_REF = "detect"
"""``--cluster detect``: this machine's node, or an error saying why it cannot be read."""


def detection_snapshot() -> str | None:
    """The snapshot folder `DETECT_ENV` names, or None for this machine (unset, empty, ``auto`` or ``off``:
    an empty value is a cleared setting, not the current folder)."""
    setting = os.environ.get(DETECT_ENV) or "auto"
    return None if setting in ("auto", "off") else setting


def _detect(nodes: int | None, gpus: int | None, required: bool) -> ClusterSpec | None:
    """The detected node sized by ``nodes`` / ``gpus``; None (or, when ``required``, the
    `DetectionError`) when there is no GPU to read or the node cannot be modelled. A snapshot folder
    that cannot be read is a `DetectionError` either way: the user named it, so falling back to the
    default preset would price other hardware than they asked for."""
    from parallelplan.hardware.detect import DetectionError, detect_node, sized_cluster

    if os.environ.get(DETECT_ENV) == "off" and not required:
        return None
    snapshot = detection_snapshot()
    try:
        detection = detect_node(snapshot)
    except DetectionError as err:
        if snapshot is not None:
            raise DetectionError(
                f"{DETECT_ENV}={snapshot}: {err}. A snapshot folder holds SOURCES.md and the readings "
                "`plan topology --record DIR` writes (nvml.json, sysfs.json) or nvidia-smi outputs; point "
                f"{DETECT_ENV} at one, or set {DETECT_ENV}=auto (this machine) or off (the default cluster)") from None
        if required:
            raise
        if not str(err).startswith("no NVIDIA GPU detected") and not quiet():
            click.echo(f"note: no node detected: {err}", err=True)  # a failing NVML is said
        return None  # the default preset is used, and announced
    try:
        return sized_cluster(detection, nodes=nodes, gpus=gpus)
    except DetectionError as err:
        if required:
            raise
        if not quiet():
            click.echo(f"note: the detected node is not used: {err}", err=True)
        return None


def load_target_cluster(cluster_ref: str | None, nodes: int | None, gpus: int | None,
                        plan_gpus: int | None = None, *, pools: bool = False) -> ClusterSpec | PooledCluster:
    """The cluster of ``--cluster``, sized by ``--nodes`` / ``--gpus``, else by ``plan_gpus`` (the GPUs
    a fully given plan runs on), else the preset's own size. Without ``--cluster``: the node detected on
    this machine (`DETECT_ENV`), else `DEFAULT_CLUSTER`; either is announced on stderr, never silent.
    A heterogeneous cluster file (``pools``) only where the command takes one (``pools``: `plan solve`)."""
    from parallelplan.hardware import HardwareError, PooledCluster, load_cluster

    sized_by_plan = nodes is None and gpus is None and plan_gpus is not None
    if nodes is None and gpus is None:
        gpus = plan_gpus
    if cluster_ref == DETECT_REF:
        return _detect(nodes, gpus, required=True)
    if cluster_ref is not None:
        try:
            cluster = load_cluster(cluster_ref, nodes=nodes, gpus=gpus)
        except HardwareError:
            if not (sized_by_plan and pools):
                raise
            # the pins' GPU count sizes a plain cluster; a file of pools sizes itself (its pins hold per pool)
            cluster = load_cluster(cluster_ref)
            if not isinstance(cluster, PooledCluster):
                raise
        if isinstance(cluster, PooledCluster) and not pools:
            raise HardwareError(f"--cluster {cluster_ref} has pools (a heterogeneous cluster): only `plan solve` plans "
                                "across pools (no launch target runs a different layout per pool in one job); give one "
                                "pool's cluster here")
        return cluster
    cluster = _detect(nodes, gpus, required=False)
    if cluster is not None:
        if not quiet():
            click.echo(f"note: no --cluster given: using the detected node ({cluster.num_nodes} x {cluster.node.name}, "
                       f"{cluster.total_gpus} x {cluster.gpu.name}); --cluster names other hardware", err=True)
        return cluster
    cluster = load_cluster(DEFAULT_CLUSTER, nodes=nodes, gpus=gpus)
    if not quiet():
        click.echo(f"note: no --cluster given: using {DEFAULT_CLUSTER} ({cluster.num_nodes} x {cluster.node.name}, "
                   f"{cluster.total_gpus} x {cluster.gpu.name})", err=True)
    return cluster


DEFAULT_BATCH_TOKENS = 2**22
"""Tokens per optimizer step when ``--global-batch`` is not given for training: 4M, Llama 3's initial
pre-training batch (Llama 3 Herd of Models, §3.4.1: "an initial batch size of 4M tokens and sequences of
length 4,096")."""
GLOBAL_BATCH_DEFAULT = ("for training, 4M tokens' worth (2^22 / seq-len), rounded up to a multiple of dp·micro-batch "
                        "for a given plan; for serving, a given plan's dp·micro-batch (a search must be told)")
"""What `default_global_batch` does, in the words of the commands' help."""
GLOBAL_BATCH_HELP = f"Sequences per optimizer step (serving: sequences at once) [default: {GLOBAL_BATCH_DEFAULT}]."


GLOBAL_BATCH_OPTION = click.option("--global-batch", type=click.IntRange(min=1), help=GLOBAL_BATCH_HELP)


def default_global_batch(kind: str, seq_len: int, plan: Plan | None = None) -> int:
    """The global batch when ``--global-batch`` is not given, one rule for every command (so that
    re-estimating a solved plan reproduces its numbers): for training, `DEFAULT_BATCH_TOKENS` worth of
    sequences — for a given ``plan`` rounded up to a multiple of dp·micro-batch, the batches it can run;
    for serving, a given plan's own dp·micro-batch sequences at once, and a search (no plan) must be told
    (`SolverInputError`)."""
    if kind == "inference":
        if plan is None:
            from parallelplan.solver import SolverInputError

            raise SolverInputError("--global-batch is required for --kind inference: how many sequences are served at once?")
        return plan.dp * plan.micro_batch_size
    sequences = max(DEFAULT_BATCH_TOKENS // seq_len, 1)
    if plan is None:
        return sequences
    replicas = plan.dp * plan.micro_batch_size
    return -(-sequences // replicas) * replicas


def build_workload(**fields: Any) -> Workload:
    """A `Workload`, or `PlanError` naming the bad field."""
    from pydantic import ValidationError

    from parallelplan.common.validation import describe_validation_error
    from parallelplan.constraints import PlanError, Workload

    if fields.get("stack") is None:  # not given: the Workload's default stack
        fields.pop("stack", None)
    context = click.get_current_context(silent=True)
    given = context.meta.get("workload_options") if context is not None else None
    if given and given.get("algorithm") and "algorithm" not in fields:
        fields["algorithm"] = given["algorithm"]
    if given and given.get("moe_capacity_factor") is not None:
        fields.setdefault("moe_capacity_factor", given["moe_capacity_factor"])
    rollout = {name: given.get(flag) for name, flag in (("response_len", "response_len"), ("group_size", "group_size"),
               ("mini_batch_size", "mini_batch"), ("epochs", "rl_epochs"), ("reward_model", "reward_model"))
               if given and given.get(flag) is not None}
    if rollout and fields.get("algorithm") not in ("ppo", "grpo"):
        flag = {"mini_batch_size": "mini-batch", "epochs": "rl-epochs", "reward_model": "reward-model"}.get(
            next(iter(rollout)), next(iter(rollout)).replace("_", "-"))
        raise PlanError(f"--{flag}: a rollout setting, taken with --kind rlhf --algorithm ppo or grpo")
    if rollout:
        fields.setdefault("rollout", rollout)
    if given and given.get("max_concurrency") is not None:
        fields.setdefault("max_concurrency", given["max_concurrency"])
    if given and given.get("output_len"):
        fields.setdefault("output_len", given["output_len"])
    if given and given.get("example_len") is not None:
        fields.setdefault("example_len", given["example_len"])
    if given and given.get("packing"):
        fields.setdefault("packing", True)
    if given and given.get("moe_pad_to_capacity"):
        fields.setdefault("moe_pad_to_capacity", True)
    if given and given.get("peft", "none") != "none" and "peft" not in fields:
        targets = tuple(t.strip() for t in str(given["lora_targets"]).split(",") if t.strip())
        fields["peft"] = {"method": given["peft"], "rank": given["lora_rank"], "alpha": given["lora_alpha"],
                          "target_modules": targets, "dropout": given["lora_dropout"]}
    try:
        return Workload(**fields)
    except ValidationError as err:
        raise PlanError(describe_validation_error(err, "workload")) from None


def load_efficiency(path: Path | None, base: Efficiency | None = None) -> Efficiency | None:
    """``base`` (else the data file's) efficiency factors with the overrides in ``path`` merged in."""
    from parallelplan.common.files import read_mapping
    from parallelplan.constraints import Efficiency, PlanError

    if path is None:
        return base
    try:
        return (base or Efficiency.default()).with_overrides(read_mapping(path, PlanError, "efficiency factors"))
    except PlanError:
        raise
    except (ValueError, TypeError) as err:
        raise PlanError(f"{path}: {err}") from None


def cost_model(efficiency_file: Path | None, calibration_file: Path | None, memory_margin: float = 0.0) -> dict[str, Any]:
    """The ``efficiency`` and ``runtime`` keyword arguments of the API: a calibration profile's
    (``--calibration`` / ``PLAN_CALIBRATION``), then ``--efficiency``'s overrides on top, and
    ``--memory-margin`` in the runtime allowance; None = defaults."""
    from dataclasses import replace

    if not 0.0 <= memory_margin < 0.5:  # click's FloatRange lets nan through
        from parallelplan.constraints import PlanError

        raise PlanError(f"--memory-margin must be a fraction in [0, 0.5), got {memory_margin}")
    efficiency = runtime = None
    if calibration_file is not None:
        from parallelplan.constraints.calibration import load_profile

        efficiency, runtime = load_profile(calibration_file)
    if memory_margin:
        from parallelplan.constraints.runtime import RuntimeAllowance

        runtime = replace(runtime or RuntimeAllowance.default(), memory_margin=memory_margin)
    return {"efficiency": load_efficiency(efficiency_file, efficiency), "runtime": runtime}


def _plot_path(_ctx: click.Context, _param: click.Parameter, value: Path | None) -> Path | None:
    """The chart's file, checked before the search: its kind, and that matplotlib is there to draw it."""
    import importlib.util

    if value is not None and value.suffix.lower() not in (".svg", ".png", ".pdf"):
        raise click.BadParameter(f"{value}: write .svg, .png or .pdf (the file's extension picks the format)")
    if value is not None and importlib.util.find_spec("matplotlib") is None:
        raise click.BadParameter("drawing needs matplotlib: pip install -e '.[plot]'")
    return value


PLOT_OPTION = click.option("--plot", "plot_path", type=click.Path(dir_okay=False, path_type=Path), callback=_plot_path,
                           help="Also draw the chart to this .svg, .png or .pdf file (matplotlib: pip install -e '.[plot]').")
