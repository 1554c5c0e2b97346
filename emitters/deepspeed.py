"""DeepSpeed (0.19): ``ds_config.json`` and the ``deepspeed`` launcher command.

Keys (`deepspeed.runtime.config.DeepSpeedConfig`, `DeepSpeedZeroConfig`): the batch triple with
train_batch_size = train_micro_batch_size_per_gpu × gradient_accumulation_steps × dp (DeepSpeed asserts it);
``zero_optimization.stage`` 0–3 from the sharding (FSDP's full sharding is ZeRO-3; HSDP is ZeRO-3 with ZeRO++
hpZ, ``zero_hpz_partition_size`` = the shard group), ``overlap_comm`` with the plan's gradient-reduce overlap,
``offload_optimizer`` / ``offload_param`` on the CPU; ``bf16`` or ``fp16`` (never both); AutoTP
(``tensor_parallel.autotp_size``) for tp > 1; ``activation_checkpointing`` for full recompute (the model must
call `deepspeed.checkpointing` or enable its own gradient checkpointing).
What the JSON cannot express is refused (`CONSTRAINTS` keeps `plan launch` inside it): context and expert
parallelism, pipeline stages (set in code with `deepspeed.pipe.PipelineModule`), Megatron sequence
parallelism, selective or partial recompute, fp8 (Transformer Engine, in the model code).
"""

from __future__ import annotations

import json

from emitters.environment import HERE, command, nccl_environment, script
from emitters.job import Job, unsupported
from emitters.torchrun import SCRIPT, rendezvous_lines, script_words

TARGET = "deepspeed"
CONSTRAINTS = {"fixed": {"cp": 1, "ep": 1, "pp": 1, "sequence_parallel": False}, "ranges": {"recompute": ["none", "full"]},
               "allow_partial_recompute": False}
STAGES = {"none": 0, "zero1": 1, "zero2": 2, "zero3": 3, "fsdp": 3, "hsdp": 3}
OPTIMIZERS = {"adamw": "AdamW", "lion": "Lion"}  # DeepSpeed's own optimizer types; others come from the script
AGAIN = "solve for it with `plan launch --target deepspeed`"
BUCKET = 500_000_000  # DeepSpeed's default reduce/allgather bucket (elements)


def check(job: Job) -> None:
    p, name = job.plan, "DeepSpeed"
    if p.cp > 1:
        raise unsupported(name, f"context parallelism (cp {p.cp})", AGAIN + " (it keeps cp 1)")
    if p.ep > 1:
        raise unsupported(name, f"expert parallelism in its config (ep {p.ep}: set in the model's MoE layers)",
                          AGAIN + " (it keeps ep 1)")
    if p.pp > 1:
        raise unsupported(name, f"pipeline stages in its config (pp {p.pp}: PipelineModule(num_stages=...) in code)",
                          AGAIN + " (it keeps pp 1)")
    if p.sequence_parallel:
        raise unsupported(name, "Megatron sequence parallelism with AutoTP", AGAIN + " (it keeps sequence parallelism off)")
    if p.recompute not in ("none", "full") or p.recompute_layers is not None:
        raise unsupported(name, f"recompute {p.recompute}" + (f" of {p.recompute_layers} layers" if p.recompute_layers else ""),
                          AGAIN + " (it searches recompute none or full on every layer)")
    if p.precision not in ("bf16", "fp16"):
        raise unsupported(name, f"{p.precision} in its config (fp8 lives in Transformer Engine model code)",
                          "solve with --fix precision=bf16")


def config(job: Job) -> dict:
    """The ``ds_config.json`` contents."""
    check(job)
    p = job.plan
    stage = STAGES[p.sharding]
    zero: dict = {"stage": stage, "overlap_comm": p.grad_reduce_overlap and stage > 0, "contiguous_gradients": True,
                  "reduce_bucket_size": BUCKET, "allgather_bucket_size": BUCKET}
    if p.sharding == "hsdp":
        zero["zero_hpz_partition_size"] = p.hsdp_shard_size
    if p.offload != "none":
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    if p.offload == "params":
        zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    out: dict = {
        "train_batch_size": job.workload.global_batch_size,
        "train_micro_batch_size_per_gpu": p.micro_batch_size,
        "gradient_accumulation_steps": job.gradient_accumulation,
        p.precision: {"enabled": True},
        "zero_optimization": zero,
        "gradient_clipping": 1.0,
        "steps_per_print": 10,
        "wall_clock_breakdown": False,
    }
    if p.precision == "fp16":
        out["fp16"] |= {"loss_scale": 0, "initial_scale_power": 16}
    if p.optimizer in OPTIMIZERS:
        out["optimizer"] = {"type": OPTIMIZERS[p.optimizer], "params": {"lr": 3e-4, "weight_decay": 0.1}}
    elif stage > 0:
        out["zero_allow_untested_optimizer"] = True
    if p.tp > 1:
        out["tensor_parallel"] = {"autotp_size": p.tp}
    if p.recompute == "full":
        out["activation_checkpointing"] = {"partition_activations": p.tp > 1, "contiguous_memory_optimization": False,
                                           "cpu_checkpointing": False}
    return out


def launcher_words(job: Job) -> list[str]:
    words = ["deepspeed", f"--num_nodes={job.nodes}", f"--num_gpus={job.gpus_per_node}"]
    if job.nodes > 1:
        words += ["--hostfile=$HOSTFILE", "--master_addr=$MASTER_ADDR", "--master_port=$MASTER_PORT"]
    return words + script_words(job, SCRIPT) + ["--deepspeed_config", "$HERE/ds_config.json"]


def emit(job: Job) -> dict[str, str]:
    ds = config(job)
    body = [HERE]
    if job.nodes > 1:
        body += ['# HOSTFILE lists the nodes, one "hostname slots=' + str(job.gpus_per_node) + '" line each (pdsh reaches them).',
                 ': "${HOSTFILE:?set HOSTFILE to the DeepSpeed hostfile}"', *rendezvous_lines(job)]
    body.append("exec " + command(launcher_words(job)))
    return {"ds_config.json": json.dumps(ds, indent=2) + "\n", "launch.sh": script(job.summary, nccl_environment(job.cluster), body)}
