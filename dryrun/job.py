"""What one rank of a plan runs, in the terms PyTorch builds it: the pipeline stage the cost model finds
most loaded, its layers, the micro-batches it holds in flight, the process groups its parameters are split
over, and the dtypes of its weights and states. No torch here: `rank_job` also decides, before anything is
built, whether the dry-run can run the plan at all, and names the field when it cannot.

The mechanisms (each PyTorch's own, as torchtitan composes them):
- tensor parallelism: DTensor ``parallelize_module`` — attention and MLP projections column/row-wise, the
  token embedding row-wise (vocab-parallel), the LM head column-wise with ``loss_parallel``; sequence
  parallelism: the norms ``SequenceParallel``, each block's input gathered and its output reduce-scattered
  along the sequence (torchtitan's plan);
- ZeRO-3 / FSDP: FSDP2 ``fully_shard`` per decoder layer, the embedding, and the final norm with the LM
  head; ZeRO-2: the same with ``reshard_after_forward=False`` (FSDP2's ZeRO-2 equivalent, torchtitan's
  docs); HSDP: ``fully_shard`` on a (replicate, shard) mesh; mixed precision: fp32 sharded parameters (the
  master copy) with ``MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=fp32)``;
- no sharding / ZeRO-1 with master weights: the layout of Megatron-Core's distributed optimizer — bf16
  parameters, an fp32 gradient buffer each gradient accumulates into, the fp32 master copy and the
  optimizer states of this rank's 1/dp of every parameter (`dryrun.optim`);
- expert parallelism: each MoE layer's experts module replaced by this rank's E/ep experts, tokens
  dispatched and combined by all-to-all (`dryrun.experts`; at full size with balanced counts, the busiest
  rank's load); FSDP2 shards those experts over the expert-data-parallel ranks (dp/ep), as torchtitan does,
  and the distributed optimizer their states likewise (Megatron-Core's expert data-parallel group);
- a pipeline stage: only its layers (the embedding on the first, the final norm, head and loss on the last);
  under 1F1B it runs its in-flight micro-batches' forwards before their backwards, as the schedule's
  warm-up does (Narayanan et al. 2021, §2.2), receiving activations and gradients as buffers; interleaved
  (vpp > 1): its vpp model chunks, the warm-up's chunk forwards in Megatron's order (its
  ``get_model_chunk_id``: pp micro-batches through one chunk, then the next), then the backwards;
- full recompute: ``torch.utils.checkpoint`` around each of the first ``recompute_layers`` layers of each
  chunk (Megatron's block method); selective
  recompute: ``torch.utils.checkpoint`` around each named module of every layer (Megatron-Core's modules:
  ``core_attn`` the attention function, ``layernorm`` the layer's two norms, ``mlp`` a dense MLP block,
  ``moe`` an MoE block, ``shared_experts`` its shared experts); op-level selective recompute (``selective_mm``):
  each layer under ``torch.utils.checkpoint`` with torchtitan's op policy (`dryrun.stage.SAVED_OPS`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from parallelplan.constraints import Estimate, Plan, Workload
from parallelplan.constraints.activations import busiest_rank_load
from parallelplan.constraints.arrays import PlanArrays
from parallelplan.constraints.memory import warm_up_forwards
from parallelplan.constraints.plan import FP32_STORAGE
from parallelplan.dryrun.errors import DryRunError
from parallelplan.models import ModelSpec


@dataclass(frozen=True)
class RankJob:
    stage: int
    pp: int
    chunks: tuple[tuple[int, int], ...]
    """The rank's model chunks (virtual stages) as (first layer, layer count); one without interleaving."""
    forward_chunks: tuple[int, ...]
    """The chunk of each forward the rank runs before its first backward (1F1B's warm-up and first steady
    forward: min(pp − stage, m) micro-batches of its one chunk; interleaved: Megatron's
    min(2·(pp − stage − 1) + (vpp − 1)·pp + 1, m·vpp) chunk forwards, in its order)."""
    micro_batch: int
    seq_len: int
    tp: int
    sequence_parallel: bool
    dp: int
    ep: int
    expert_load: float
    """Routed copies the rank's experts receive over its balanced share (`constraints.activations.busiest_rank_load`:
    the workload's imbalance, capped by ep and the capacity factor); 1 without expert parallelism."""
    sharding: str
    shard_size: int
    """Ranks each parameter is sharded over (dp; HSDP's shard size)."""
    recompute_layers: int
    recompute_modules: tuple[str, ...]
    """Megatron-Core's selective recompute modules (`dryrun.stage.SELECTIVE`), empty without selective recompute."""
    op_recompute: bool
    """torchtitan's op-level selective checkpointing of every layer (``recompute="selective_mm"``)."""
    param_dtype: str
    master_weights: bool
    optimizer: str
    persistent_grads: bool

    @property
    def first(self) -> bool:
        return self.stage == 0

    @property
    def in_flight(self) -> int:
        return len(self.forward_chunks)

    @property
    def layer_count(self) -> int:
        return sum(count for _, count in self.chunks)

    @property
    def layer_end(self) -> int:
        """One past the rank's highest layer index."""
        return max(start + count for start, count in self.chunks)

    @property
    def last(self) -> bool:
        return self.stage == self.pp - 1

    @property
    def world(self) -> int:
        """The ranks the run's process groups span: one pipeline stage's tp · dp."""
        return self.tp * self.dp


SELECTIVE = ("core_attn", "layernorm", "mlp", "moe", "shared_experts")
"""Selective recompute modules the dry-run checkpoints (`dryrun.stage`)."""

_UNBUILT = {
    "cp": ("context parallelism", 1),
    "offload": ("offloading states to the host", "none"), "offload_activations": ("activation offload", False),
}


def rank_job(model: ModelSpec, plan: Plan, workload: Workload, estimate: Estimate) -> RankJob:
    """The busiest rank of ``plan`` (the stage `estimate`'s memory names), or DryRunError naming the first
    field the dry-run does not build."""
    return stage_job(model, plan, workload, estimate.memory.stage)


def stage_job(model: ModelSpec, plan: Plan, workload: Workload, stage: int) -> RankJob:
    """A rank of pipeline stage ``stage`` of ``plan`` (see `rank_job`)."""
    for field, (what, built) in _UNBUILT.items():
        if getattr(plan, field) != built:
            raise DryRunError(f"plan.{field}={getattr(plan, field)}: the dry-run does not build {what} yet; "
                              f"dry-run the plan with {field}={built} (its other dimensions are measured the same way)")
    if plan.schedule not in ("1f1b", "interleaved"):
        raise DryRunError(f"plan.schedule={plan.schedule}: the dry-run runs the 1f1b and interleaved schedules")
    if plan.vpp > 1 and plan.layers_per_stage:
        raise DryRunError("plan.layers_per_stage with vpp > 1: the dry-run splits interleaved stages by the default "
                          "split only (explicit stages give each rank's total, not its chunks)")
    if model.is_moe and plan.tp > 1:
        raise DryRunError("plan.tp > 1 on an MoE model: the dry-run does not split experts over tensor ranks (etp) yet; use tp=1")
    if plan.ep > 1 and plan.sharding == "hsdp":
        raise DryRunError("plan.sharding=hsdp with ep > 1: the dry-run does not lay experts over HSDP's replicate x shard "
                          "mesh yet; dry-run it with sharding=fsdp (the same expert shards when the HSDP shard group "
                          "holds the expert-data-parallel ranks)")
    if plan.recompute == "selective_mm" and plan.ep > 1:
        raise DryRunError("plan.recompute=selective_mm with ep > 1: the dry-run's expert-parallel experts run one matmul "
                          "per expert, which torchtitan's op policy would count (its grouped GEMMs it does not); "
                          "use full or selective recompute, or ep=1")
    unbuilt = [m for m in plan.recompute_modules or () if m not in SELECTIVE]
    if plan.recompute == "selective" and unbuilt:
        raise DryRunError(f"plan.recompute_modules={','.join(unbuilt)}: the dry-run recomputes {', '.join(SELECTIVE)}")
    if plan.optimizer not in ("adamw", "sgd"):
        raise DryRunError(f"plan.optimizer={plan.optimizer}: the dry-run steps torch's adamw or sgd")
    if plan.precision == "fp8":
        raise DryRunError("plan.precision=fp8: the dry-run computes in bf16, fp16 or fp32")
    if workload.kind not in ("pretrain", "finetune") or workload.peft is not None or workload.algorithm is not None:
        raise DryRunError(f"workload.kind={workload.kind}: the dry-run runs a training step without PEFT")
    arrays = PlanArrays.from_plans([plan])
    chunks = tuple(_virtual_stages(model, arrays)[stage])
    warm_up = int(warm_up_forwards(arrays, workload, np.array([[stage]]))[0, 0])
    # Megatron's get_model_chunk_id: pp micro-batches through one chunk, then the next (one chunk: all 0)
    forward_chunks = tuple((k % (plan.pp * plan.vpp)) // plan.pp for k in range(warm_up))
    return RankJob(
        stage=stage, pp=plan.pp, chunks=chunks, forward_chunks=forward_chunks,
        micro_batch=plan.micro_batch_size, seq_len=workload.seq_len,
        tp=plan.tp, sequence_parallel=plan.sequence_parallel and plan.tp > 1, dp=plan.dp, ep=plan.ep,
        expert_load=float(busiest_rank_load(arrays, workload)[0]), sharding=plan.sharding, shard_size=plan.hsdp_shard_size or plan.dp,
        recompute_layers=(plan.recompute_layers or max(n for _, n in chunks)) if plan.recompute == "full" else 0,
        recompute_modules=tuple(plan.recompute_modules or ()) if plan.recompute == "selective" else (),
        op_recompute=plan.recompute == "selective_mm",
        param_dtype={"bf16": "bfloat16", "fp16": "float16", "fp32": "float32", "tf32": "float32"}[plan.precision],
        master_weights=plan.master_weights and plan.precision not in FP32_STORAGE, optimizer=plan.optimizer,
        persistent_grads=plan.persistent_grads)


def _virtual_stages(model: ModelSpec, plan: PlanArrays) -> list[list[tuple[int, int]]]:
    """Each pipeline rank's chunks, as the cost model splits the layers (`constraints.stages`)."""
    from parallelplan.constraints.stages import virtual_stages
    from parallelplan.constraints.structure import model_facts

    return virtual_stages(model_facts(model), plan)
