"""torchtitan 0.3.0: the job as ``torchtitan.train`` takes it in that release — a Python config function
chosen with ``--module/--config``, ``--section.key`` overrides, and the activation-checkpoint subcommand
last (0.3.0 has no TOML job files; flags from `torchtitan.config.ConfigManager`, checked by it in the
validator tests).

- ``plan_config.py``: a config function ``plan()`` that starts from torchtitan's own config for the model
  (`emitters/data/torchtitan.json`: the models 0.3.0 ships) and sets what the command line cannot — the
  fp8 converter of the plan's recipe (``Float8LinearConverter`` rowwise, ``lm_head`` kept in bf16 as
  torchtitan's own 405B config does; ``MXFP8LinearConverter`` on the decoder layers; the first and last
  ``fp8_bf16_layers`` layers left out of either) when the plan's precision, recipe or bf16 layers differ
  from that config's.
- ``launch.sh``: torchrun on ``-m torchtitan.train`` with every parallel degree written out, so nothing of
  the base config's layout leaks through: data-parallel replicate/shard degrees (none = DDP replicate,
  fsdp/zero3 = shard, zero2 = shard with ``fsdp_reshard_after_forward never``, HSDP = shard within
  ``hsdp_shard_size``/cp ranks, replicate across), TP with or without sequence parallel, PP with its
  schedule (``1F1B``, ``Interleaved1F1B``, or ``DualPipeV`` / ``ZBVZeroBubble`` with compile off, as torch requires), layers per stage and the lighter first/last stages, CP, EP
  (torchtitan borrows EP ranks from FSDP × CP × TP, so expert TP is 1 with EP and TP without), the
  micro-batch (``training.local_batch_size``: micro-batch without PP, the replica's whole batch split in
  micro-batches with PP), global batch and sequence length, CPU offload; recompute ``none``, ``full``
  or per-op ``selective`` (our selective_mm).
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources

from parallelplan.constraints.fp8 import target_recipe
from parallelplan.constraints.plan import V_SCHEDULES
from parallelplan.emitters.environment import HERE, command, nccl_environment, script
from parallelplan.emitters.job import Job, unsupported
from parallelplan.emitters.torchrun import rendezvous_lines, torchrun_words

TARGET = "torchtitan"
VERSION = "0.3.0"
CONSTRAINTS = {"fixed": {"tp_comm_overlap": False},  # async TP is not emitted (data/stacks.json, torchtitan)
               "ranges": {"sharding": ["none", "zero2", "fsdp", "hsdp"], "recompute": ["none", "selective_mm", "full"],
                          "schedule": ["1f1b", "interleaved"], "precision": ["bf16"]},
               "allow_partial_recompute": False}
SCHEDULES = {"1f1b": "1F1B", "interleaved": "Interleaved1F1B", "dualpipev": "DualPipeV", "zbv": "ZBVZeroBubble"}
CHECKPOINT = {"none": "none", "full": "full", "selective_mm": "selective"}
AGAIN = "solve for it with `plan launch --target torchtitan`"
NAME = f"torchtitan {VERSION}"


@cache
def models() -> dict[str, dict]:
    """The models torchtitan ships, keyed by our preset name (`emitters/data/torchtitan.json`)."""
    return json.loads(resources.files("parallelplan.emitters").joinpath("data/torchtitan.json").read_text())["models"]


def entry(job: Job) -> dict:
    found = models().get(job.model.name)
    if found is None:
        raise unsupported(NAME, f"the model {job.model.name} (it ships definitions for {', '.join(sorted(models()))})",
                          "use the torchrun target with your own model code")
    return found


def shard_degrees(job: Job) -> tuple[int, int]:
    """(data_parallel_replicate_degree, data_parallel_shard_degree): FSDP shards over shard × cp ranks."""
    p = job.plan
    if p.sharding == "none":
        return p.dp, 1
    if p.sharding == "hsdp":
        if p.hsdp_shard_size % p.cp:
            raise unsupported(NAME, f"HSDP groups of {p.hsdp_shard_size} ranks with cp {p.cp}", AGAIN)
        shard = p.hsdp_shard_size // p.cp
        return p.dp // shard, shard
    return 1, p.dp


def check(job: Job) -> None:
    p, m = job.plan, job.model
    if not job.workload.training:
        raise unsupported(NAME, "an inference plan with torchtitan.train", "use the vllm or sglang target")
    if p.sharding == "zero1":
        raise unsupported(NAME, "ZeRO-1 (FSDP2 shards gradients too)", AGAIN + " (it searches none, zero2, fsdp, hsdp)")
    if p.recompute not in CHECKPOINT or p.recompute_layers is not None:
        raise unsupported(NAME, f"recompute {p.recompute}" + (f" of {p.recompute_layers} layers" if p.recompute_layers else ""),
                          AGAIN + " (none, full on every layer, or per-op selective)")
    if p.schedule not in SCHEDULES:
        raise unsupported(NAME, f"the {p.schedule} schedule with these degrees", AGAIN)
    if p.precision not in ("bf16", "fp8") or not p.master_weights:
        raise unsupported(NAME, f"{p.precision} training" + ("" if p.master_weights else " without fp32 master weights"),
                          "solve with --range precision=bf16,fp8")
    if p.schedule in V_SCHEDULES and p.precision == "fp8":
        raise unsupported(NAME, f"{SCHEDULES[p.schedule]} with float8 linears (torch's V schedules refuse compiled stage modules, "
                                "which torchao's float8 needs)", "solve with --fix precision=bf16 or another schedule")
    if p.precision == "fp8" and target_recipe(p.fp8_recipe, TARGET) not in CONVERTERS:
        raise unsupported(NAME, f"the {p.fp8_recipe} fp8 recipe (its converters run {' and '.join(CONVERTERS)})",
                          f"solve with --range fp8_recipe={','.join(CONVERTERS)}")
    if p.optimizer != "adamw":
        raise unsupported(NAME, f"the {p.optimizer} optimizer from its config flags", "solve with --fix optimizer=adamw")
    if p.offload == "optimizer" or p.offload == "params" and p.sharding not in ("fsdp", "zero3", "hsdp"):
        raise unsupported(NAME, f"{p.offload} offload" + ("" if p.offload == "optimizer" else f" with {p.sharding}"),
                          "its CPU offload moves parameters, gradients and optimizer states of FSDP together")
    if m.moe is not None:
        replicate, shard = shard_degrees(job)
        if p.ep > 1 and (p.etp != 1 or (shard * p.cp * p.tp) % p.ep):
            raise unsupported(NAME, f"ep {p.ep} with expert-tp {p.etp} (EP borrows ranks from FSDP × CP × TP: "
                                    f"{shard}·{p.cp}·{p.tp}, and expert TP is 1)", AGAIN)
        if p.ep > 1 and job.workload.moe_dispatcher == "deepep":
            raise unsupported(NAME, "DeepEP dispatch from its flags (it chooses the token dispatcher in the "
                                    "model's config)", "solve with --moe-dispatcher alltoall")
        if p.ep == 1 and p.etp != p.tp:
            raise unsupported(NAME, f"expert-tp {p.etp} without EP (experts follow TP)", AGAIN)
    if m.mtp_layers and job.workload.train_mtp:
        raise unsupported(NAME, "training the MTP modules from these flags", "solve without --train-mtp")


def stage_arguments(job: Job) -> list[str]:
    """Layers per (virtual) stage; torchtitan's first/last-stage reductions express uneven first/last stages."""
    p = job.plan
    layers = p.layers_per_stage or (job.model.num_layers // p.pp,) * p.pp
    if p.vpp > 1:
        return [f"--parallelism.pipeline_parallel_layers_per_stage={job.model.num_layers // (p.pp * p.vpp)}",
                "--parallelism.pipeline_parallel_first_stage_less_layers=0",
                "--parallelism.pipeline_parallel_last_stage_less_layers=0"]
    middle = max(layers[1:-1]) if p.pp > 2 else max(layers)
    if p.pp > 2 and len(set(layers[1:-1])) > 1:
        raise unsupported(NAME, f"the stage layout {list(layers)} (only the first and last stage may be lighter)", AGAIN)
    return [f"--parallelism.pipeline_parallel_layers_per_stage={middle}",
            f"--parallelism.pipeline_parallel_first_stage_less_layers={middle - layers[0]}",
            f"--parallelism.pipeline_parallel_last_stage_less_layers={middle - layers[-1]}"]


def arguments(job: Job) -> list[str]:
    """The ``--section.key`` overrides (the activation-checkpoint subcommand follows them: `subcommand`)."""
    check(job)
    p, w = job.plan, job.workload
    replicate, shard = shard_degrees(job)
    out = [f"--parallelism.data_parallel_replicate_degree={replicate}",
           f"--parallelism.data_parallel_shard_degree={shard}",
           "--parallelism.fsdp_reshard_after_forward=" + ("never" if p.sharding == "zero2" else "default"),
           f"--parallelism.tensor_parallel_degree={p.tp}",
           "--parallelism." + ("" if p.sequence_parallel or p.tp == 1 else "no_") + "enable_sequence_parallel",
           f"--parallelism.context_parallel_degree={p.cp}", f"--parallelism.expert_parallel_degree={p.ep}",
           f"--parallelism.pipeline_parallel_degree={p.pp}"]
    if p.pp > 1:
        out += [f"--parallelism.pipeline_parallel_schedule={SCHEDULES[p.schedule]}",
                f"--parallelism.pipeline_parallel_microbatch_size={p.micro_batch_size}", *stage_arguments(job)]
    local = w.global_batch_size // p.dp if p.pp > 1 else p.micro_batch_size
    out += [f"--training.local_batch_size={local}", f"--training.global_batch_size={w.global_batch_size}",
            f"--training.seq_len={w.seq_len}",
            "--training." + ("" if p.offload == "params" else "no_") + "enable_cpu_offload"]
    if p.pp > 1 or p.ep > 1:  # torchtitan refuses CUDA graphs with pipeline schedules and all-to-all dispatch
        out.append("--training.disable_cuda_graphs")
    if p.precision == "fp8":
        out.append("--compile.enable")  # torchao float8 GEMMs reach their speed only under torch.compile
    if p.schedule in V_SCHEDULES:
        out.append("--compile.no_enable")  # torch's V schedules refuse compiled stage modules (the base config may compile)
    return out


def subcommand(job: Job) -> str:
    """Last on the command line: tyro parses what follows it inside the activation-checkpoint config."""
    return f"activation_checkpoint:{CHECKPOINT[job.plan.recompute]}"


CONVERTERS = {"rowwise": "Float8LinearConverter", "mxfp8": "MXFP8LinearConverter"}
"""The plan's fp8 recipe as torchtitan's converter (0.3.0 ``torchtitan.components.quantization``)."""


def converter(recipe: str, job: Job) -> str:
    """The converter's config: the decoder layers' linears in fp8, the LM head in bf16 (the cost model's fp8
    layout), and the first and last ``fp8_bf16_layers`` layers in bf16 too — Float8's ``filter_fqns`` skips
    the linears whose name contains one of its strings, MXFP8's ``fqns`` converts those whose name contains
    one of its (``layers.3.``: the dot keeps ``layers.3`` from naming ``layers.30``)."""
    k, layers = job.plan.fp8_bf16_layers, job.model.num_layers
    ends = [i for i in range(layers) if i < k or i >= layers - k]
    if recipe == "rowwise":
        skipped = ["lm_head", *(f"layers.{i}." for i in ends)]
        return f'Float8LinearConverter.Config(recipe_name="rowwise", filter_fqns={json.dumps(skipped)}, model_compile_enabled=True)'
    converted = [f"layers.{i}." for i in range(layers) if i not in ends] if ends else ["layers"]
    return f"MXFP8LinearConverter.Config(fqns={json.dumps(converted)}, model_compile_enabled=True)"
BASE_RECIPE = "rowwise"
"""The recipe of torchtitan's own fp8 configs (llama3_405b: Float8LinearConverter's default)."""


def plan_config(job: Job) -> str:
    """``plan_config.py``: torchtitan's config for the model, with the fp8 converter matching the plan."""
    e = entry(job)
    p = job.plan
    recipe = target_recipe(p.fp8_recipe, TARGET) if p.precision == "fp8" else None
    base = BASE_RECIPE if e["precision"] == "fp8" else None
    lines = [f'"""{job.summary}', "", f"Written by `plan launch` for torchtitan {VERSION}: torchtitan's own "
             f"{e['config']}() with the", 'linear layers in the precision of the plan; torchrun.sh sets the layout."""',
             "", f"from torchtitan.models.{e['module']} import model_registry",
             f"from torchtitan.models.{e['module']}.config_registry import {e['config']}"]
    if recipe is not None:
        lines.insert(5, f"from torchtitan.components.quantization import {CONVERTERS[recipe]}")
    lines += ["", "", "def plan():", f"    config = {e['config']}()"]
    if recipe != base or p.fp8_bf16_layers:
        kwargs = [f"{key}={value!r}" for key, value in e["registry_kwargs"].items()]
        if recipe is not None:
            kwargs.append(f"converters=[{converter(recipe, job)}]")
        lines.append(f"    config.model_spec = model_registry({', '.join([repr(e['flavor']), *kwargs])})")
    lines.append("    return config")
    return "\n".join(lines) + "\n"


def emit(job: Job) -> dict[str, str]:
    if job.script:
        raise unsupported(NAME, "another training script", "it runs its own trainer (-m torchtitan.train)")
    words = torchrun_words(job) + ["-m", "torchtitan.train", "--module", "plan_config", "--config", "plan",
                                   *arguments(job), *job.script_args, subcommand(job)]
    body = ["# plan_config.py sits beside this script; torchtitan imports it by module name.",
            HERE, 'export PYTHONPATH="$HERE${PYTHONPATH:+:$PYTHONPATH}"',
            *rendezvous_lines(job), "exec " + command(words)]
    return {"launch.sh": script(job.summary, nccl_environment(job.cluster), body), "plan_config.py": plan_config(job)}
