"""The plan's tensor parallelism and sharding applied to a `Stage` with PyTorch's own modules (see
`dryrun.job` for which mechanism stands for which plan setting)."""

from __future__ import annotations

import contextlib

import torch
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import Replicate, Shard
from torch.distributed.tensor.parallel import (
    ColwiseParallel,
    PrepareModuleInput,
    RowwiseParallel,
    SequenceParallel,
    loss_parallel,
    parallelize_module,
)

from parallelplan.dryrun.errors import DryRunError
from parallelplan.dryrun.job import RankJob
from parallelplan.dryrun.stage import Stage

COLUMN = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "mlp.gate_proj", "mlp.up_proj")
ROW = ("self_attn.o_proj", "mlp.down_proj")
"""Megatron's split of a decoder layer (Shoeybi et al. 2019, §3): Q, K, V and the MLP's input projections
by output columns, the attention output and the MLP's output projection by input rows."""


def tensor_parallel(stage: Stage, mesh: DeviceMesh, sequence_parallel: bool = False) -> None:
    """Split every layer's projections, the embedding (by vocabulary rows) and the LM head (by vocabulary
    columns, its loss computed on the shards: `loss_parallel`) over ``mesh``. With ``sequence_parallel``
    (Korthikanti et al. 2022 §4.2.2, torchtitan's plan) the residual stream and the norms hold 1/tp of the
    sequence: each block's input is all-gathered, its output reduce-scattered."""
    sequence = Shard(1)
    for layer in stage.layers:
        names = {name for name, _ in layer.named_modules()}
        missing = [name for name in COLUMN + ROW if name not in names]
        if missing:
            raise DryRunError(f"{type(layer).__name__} has no {', '.join(missing)}: the dry-run splits Llama-style "
                              "attention and MLP projections over tensor ranks; use tp=1 for this model")
        rows = RowwiseParallel(output_layouts=sequence) if sequence_parallel else RowwiseParallel()
        layer_plan = {**dict.fromkeys(COLUMN, ColwiseParallel()), **dict.fromkeys(ROW, rows)}
        if sequence_parallel:
            layer_plan |= {
                "input_layernorm": SequenceParallel(), "post_attention_layernorm": SequenceParallel(),
                "self_attn": PrepareModuleInput(input_kwarg_layouts={"hidden_states": sequence},
                                                desired_input_kwarg_layouts={"hidden_states": Replicate()}),
                "mlp": PrepareModuleInput(input_layouts=(sequence,), desired_input_layouts=(Replicate(),))}
        parallelize_module(layer, mesh, layer_plan)
    if stage.embed_tokens is not None:
        parallelize_module(stage.embed_tokens, mesh, RowwiseParallel(input_layouts=Replicate(),
                                                                     output_layouts=sequence if sequence_parallel else Replicate()))
    if stage.lm_head is not None:
        if sequence_parallel:
            parallelize_module(stage.norm, mesh, SequenceParallel())
        parallelize_module(stage.lm_head, mesh, ColwiseParallel(input_layouts=sequence if sequence_parallel else Replicate(),
                                                                output_layouts=Shard(-1), use_local_output=False))


def device_meshes(device: str, job: RankJob, pipeline: int = 1) -> dict[str, DeviceMesh]:
    """This rank's meshes over ``pipeline`` stages of ``job``'s tp · dp ranks (Megatron's order: tensor ranks
    adjacent, then data, then pipeline): ``tp``; ``dp`` (HSDP: 2-D, replicate × shard); and for expert
    parallelism ``ep``, ep consecutive data-parallel ranks that split the experts, with ``edp``, the ranks
    holding the same experts (dp/ep)."""
    if job.sharding == "hsdp":
        mesh = init_device_mesh(device, (pipeline, job.dp // job.shard_size, job.shard_size, job.tp),
                                mesh_dim_names=("pp", "replicate", "shard", "tp"))
        return {"dp": mesh["replicate", "shard"], "tp": mesh["tp"]}
    mesh = init_device_mesh(device, (pipeline, job.dp // job.ep, job.ep, job.tp), mesh_dim_names=("pp", "edp", "ep", "tp"))
    return {"dp": mesh["edp", "ep"]._flatten("dp"), "tp": mesh["tp"], "ep": mesh["ep"], "edp": mesh["edp"]}


def shard(stage: Stage, meshes: dict[str, DeviceMesh], job: RankJob, compute: torch.dtype) -> None:
    """FSDP2 over ``meshes["dp"]`` (1-D: shard; 2-D: HSDP's replicate × shard) in units of one layer, the
    embedding, and the final norm with the LM head; under expert parallelism each layer's experts are their
    own unit over the expert-data-parallel ranks (torchtitan's ``dp_shard_mod_ep``); ZeRO-2 keeps each unit
    gathered from its forward to its backward."""
    mesh = meshes["dp"]
    policy = MixedPrecisionPolicy(param_dtype=compute, reduce_dtype=torch.float32)
    after_forward = job.sharding != "zero2"
    if stage.embed_tokens is not None:
        fully_shard(stage.embed_tokens, mesh=mesh, mp_policy=policy, reshard_after_forward=after_forward)
    for layer in stage.layers:
        experts = getattr(getattr(layer, "mlp", None), "experts", None)
        if job.ep > 1 and experts is not None:
            fully_shard(experts, mesh=meshes["edp"], mp_policy=policy, reshard_after_forward=after_forward)
            # their gradients already sum the ep ranks' tokens (the all-to-all's backward): averaged over all
            # dp replicas, not the dp/ep that reduce them (torchtitan sets the same factor); summed, then
            # divided, since gloo has no PREMUL_SUM
            experts.set_gradient_divide_factor(float(job.dp))
            experts.set_force_sum_reduction_for_comms(True)
        fully_shard(layer, mesh=mesh, mp_policy=policy, reshard_after_forward=after_forward)
    if stage.lm_head is not None:
        fully_shard([stage.norm, stage.lm_head], mesh=mesh, mp_policy=policy, reshard_after_forward=False)
    fully_shard(stage, mesh=mesh, mp_policy=policy, reshard_after_forward=after_forward)


def loss_context(job: RankJob) -> contextlib.AbstractContextManager:
    """Around a last stage's forward and backward under tensor parallelism: the cross-entropy of the
    vocabulary-sharded logits (`loss_parallel`), as Megatron's vocab-parallel cross-entropy computes it."""
    return loss_parallel() if job.tp > 1 and job.last else contextlib.nullcontext()
