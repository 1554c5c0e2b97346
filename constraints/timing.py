"""Time of one optimizer step: the pipeline of micro-batches, the communication it cannot hide, the
data-parallel reduction and the optimizer update.

Per micro-batch on pipeline rank i (`constraints.compute` for the compute):
- forward + backward of its layers, plus recompute (full: the layers' forward again; selective: the
  attention core again; selective_mm: every other matmul and the elementwise kernels, MoE blocks
  entirely), plus the LM head on the last stage;
- tensor parallelism: per layer and pass, two all-gathers and two reduce-scatters of the micro-batch's
  hidden states with sequence parallelism, or two all-reduces without — the same ring volume,
  4 · RS(T·h·b) (Korthikanti et al. 2022 §4.2.2); with ``tp_comm_overlap`` the GEMMs hide up to
  η_tp of their time of it;
- context parallelism: ring attention passes the rank's K and V cp − 1 times forward (K, V and their
  gradients backward), hidden behind attention up to η_cp (Liu et al. 2023, Ring Attention);
- expert parallelism: an all-to-all dispatch and combine per MoE layer and pass, hidden behind the
  layer's other compute (attention, router, shared experts) up to η_ep (Megatron-Core's a2a overlap);
- pipeline parallelism: the activations sent to the next stage forward and their gradient backward
  (vpp times with interleaving);
- ZeRO-3 / FSDP / HSDP: all-gather of the stage's weights forward and backward and reduce-scatter of its
  gradients, hidden behind that micro-batch's compute up to η_dp.
Pipeline of m micro-batches with per-rank times tᵢ: m · max tᵢ + β · (Σ tᵢ − max tᵢ), with the bubble
factor β = 1 for 1F1B ((pp − 1)/m of the step for balanced stages, Narayanan et al. 2021), 1/vpp
interleaved, 1/3 for zero-bubble ZB-H1 (Qi et al. 2023, §3).
Once per step and rank: the data-parallel gradient reduction (reduce-scatter with a distributed
optimizer / ZeRO-1-2, all-reduce otherwise, over dp·cp for dense and the expert-data-parallel group for
expert weights), hidden behind the last backward up to η_dp with ``grad_reduce_overlap``; the parameter
all-gather after a sharded update, hidden behind the next forward with ``param_gather_overlap``; and the
memory-bound optimizer update of the rank's share of parameters (over PCIe when offloaded).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from constraints.activations import activation_bytes
from constraints.arrays import PlanArrays, code
from constraints.collectives import Fabric
from constraints.compute import LayerTimes
from constraints.efficiency import Efficiency
from constraints.memory import micro_batches, recomputed_share
from constraints.plan import Workload
from constraints.stages import StageLayout, StageParams
from constraints.states import (
    BytesPerParam,
    ShardDivisors,
    expert_data_parallel,
    gathers_weights,
)
from constraints.structure import ModelFacts
from hardware import ClusterSpec

ADAM_UPDATE_PASSES = 2
"""The fused Adam update reads and writes every state once: bytes moved = 2 × (master + moments) + the
gradient read + the new weight written."""


@dataclass
class StepTimes:
    """Seconds, (n,) arrays. ``compute`` … ``pp_comm`` are m × the critical rank's per-micro-batch terms;
    ``bubble`` is the pipeline fill and drain; ``dp_comm`` the exposed data-parallel (and FSDP)
    communication; they sum to ``step``."""

    step: np.ndarray
    compute: np.ndarray
    tp_comm: np.ndarray
    cp_comm: np.ndarray
    ep_comm: np.ndarray
    pp_comm: np.ndarray
    dp_comm: np.ndarray
    bubble: np.ndarray
    optimizer: np.ndarray
    critical_stage: np.ndarray


def _hidden(comm: np.ndarray, cover: np.ndarray, fraction: float, enabled: np.ndarray | bool) -> np.ndarray:
    """What of ``comm`` stays exposed when up to ``fraction`` of ``cover`` hides it."""
    return np.where(enabled, np.maximum(comm - fraction * cover, 0.0), comm)


def step_times(
    f: ModelFacts, cluster: ClusterSpec, eff: Efficiency, p: PlanArrays, w: Workload, layout: StageLayout,
    params: StageParams, times: LayerTimes, per: BytesPerParam, div: ShardDivisors,
) -> StepTimes:
    fabric = Fabric.of(cluster, eff)
    col = lambda a: np.asarray(a, dtype=float)[:, None]  # noqa: E731
    b = activation_bytes(p)
    tp, cp, dp, ep, etp = p.tp, p.cp, p.dp, p.ep, p.etp
    tokens = p.micro_batch_size * w.seq_len / cp.astype(float)
    dense_l, moe_l = layout.dense_layers, layout.moe_layers
    layers = layout.layers
    training = w.training

    forward = dense_l * col(times.dense_forward) + moe_l * col(times.moe_forward)
    forward = forward + np.where(layout.last, col(times.head_forward), 0.0)
    backward = dense_l * col(times.dense_backward) + moe_l * col(times.moe_backward)
    backward = backward + np.where(layout.last, col(times.head_backward), 0.0)
    gemm_fwd = dense_l * col(times.dense_gemm_forward) + moe_l * col(times.moe_gemm_forward)
    attention_fwd = layers * col(times.attention_forward)
    selective = attention_fwd
    sac = dense_l * col(times.dense_sac_recompute) + moe_l * col(times.moe_sac_recompute)
    mode = p.recompute[:, None]
    recompute = np.select([mode == code("recompute", "full"), mode == code("recompute", "selective"),
                           mode == code("recompute", "selective_mm")],
                          [recomputed_share(p, layout) * forward, selective, sac], default=0.0)
    if not training:
        backward = recompute = np.zeros_like(forward)

    # tensor parallelism: 4 reduce-scatter-equivalents of the hidden states per layer and pass
    hidden_bytes = tokens * f.hidden * b
    tp_per_pass = 4 * layers * col(fabric.reduce_scatter(hidden_bytes, tp, 1))
    overlap_tp = col(p.tp_comm_overlap) > 0
    tp_exposed = _hidden(tp_per_pass, gemm_fwd, eff.overlap["tp"], overlap_tp)
    if training:
        tp_exposed = tp_exposed + _hidden(tp_per_pass, 2 * gemm_fwd, eff.overlap["tp"], overlap_tp)

    # context parallelism: ring exchange of K and V, hidden behind attention
    kv_bytes = tokens * (f.k_width + f.v_width) * b / tp
    ring = col((cp - 1) * fabric.send(kv_bytes, tp)) * layers
    cp_exposed = np.maximum(ring - eff.overlap["cp"] * attention_fwd, 0.0)
    if training:
        cp_exposed = cp_exposed + np.maximum(2 * ring - eff.overlap["cp"] * 2.5 * attention_fwd, 0.0)

    # expert parallelism: dispatch and combine all-to-alls per MoE layer and pass
    routed_bytes = f.top_k * tokens * f.hidden * b / tp if f.experts else np.zeros(len(p))
    a2a = 2 * moe_l * col(fabric.all_to_all(routed_bytes, ep, etp))
    moe_other = moe_l * col(times.moe_forward - times.moe_expert_forward)
    ep_comm = np.maximum(a2a - eff.overlap["ep"] * moe_other, 0.0)
    if training:
        ep_comm = ep_comm + np.maximum(2 * a2a - eff.overlap["ep"] * 2 * moe_other, 0.0)

    # pipeline send/receive of the stage boundary's activations (vpp times with interleaving)
    sp_div = np.where(p.sequence_parallel, tp, 1)
    boundary = col(fabric.send(hidden_bytes / sp_div, tp * cp * dp) * p.vpp)
    pp_comm = np.where(layout.last, 0.0, boundary) + np.where(layout.first | ~training, 0.0, boundary)
    pp_comm = np.where(col(p.pp) > 1, pp_comm, 0.0)

    # ZeRO-3 / FSDP / HSDP: gather weights forward and backward, reduce-scatter gradients, per micro-batch
    gathered = col(gathers_weights(p) & (p.offload != code("offload", "params")))
    expert_group = expert_data_parallel(p)
    dense_group = (col(p.shard_group), col(tp))
    expert_groups = (col(expert_group), col(etp * ep))
    weight_bytes = params.dense * col(per.weights), params.expert * col(per.weights)
    grad_bytes = params.dense * col(per.grads), params.expert * col(per.grads)
    fsdp = (2 * fabric.reduce_scatter(weight_bytes[0], *dense_group) + fabric.reduce_scatter(grad_bytes[0], *dense_group)
            + 2 * fabric.reduce_scatter(weight_bytes[1], *expert_groups)
            + fabric.reduce_scatter(grad_bytes[1], *expert_groups))
    fsdp = np.where(gathered > 0, fsdp, 0.0) if training else np.zeros_like(forward)
    fsdp_exposed = _hidden(fsdp, forward + backward, eff.overlap["dp"], True)

    compute = forward + backward + recompute
    per_microbatch = compute + tp_exposed + cp_exposed + ep_comm + pp_comm + fsdp_exposed
    per_microbatch = np.where(layout.valid, per_microbatch, -np.inf)
    critical = np.argmax(per_microbatch, axis=1)
    pick = lambda a: np.take_along_axis(np.broadcast_to(a, per_microbatch.shape), critical[:, None], axis=1)[:, 0]  # noqa: E731
    t_max = pick(per_microbatch)
    total = np.where(layout.valid, per_microbatch, 0.0).sum(axis=1)
    m = micro_batches(p, w).astype(float)
    bubble_factor = np.select([p.schedule == code("schedule", "interleaved"), p.schedule == code("schedule", "zero_bubble")],
                              [1.0 / p.vpp, 1.0 / 3.0], default=1.0)
    pipeline = m * t_max + bubble_factor * (total - t_max)

    # once per step: gradient reduction, parameter gather, optimizer update
    if training:
        sharded_states = (div.states > 1) & ~gathers_weights(p)
        reduce = np.where(col(sharded_states), 1.0, 2.0)  # reduce-scatter, or all-reduce
        dp_groups = (col(dp * cp), col(tp))
        dp_time = reduce * (fabric.reduce_scatter(grad_bytes[0], *dp_groups)
                            + fabric.reduce_scatter(grad_bytes[1], *expert_groups))
        dp_time = np.where(gathered > 0, 0.0, dp_time)
        # reduction buckets overlap the last micro-batch's backward, parameter gathers the next forward
        dp_exposed = _hidden(dp_time, backward, eff.overlap["dp"], col(p.grad_reduce_overlap) > 0)
        gather_time = np.where(col(sharded_states), fabric.reduce_scatter(weight_bytes[0], *dp_groups)
                               + fabric.reduce_scatter(weight_bytes[1], *expert_groups), 0.0)
        gather_exposed = _hidden(gather_time, forward, eff.overlap["dp"], col(p.param_gather_overlap) > 0)
        updated = params.dense / col(div.states) + params.expert / col(div.expert_states)
        update_bytes = updated * col(ADAM_UPDATE_PASSES * (per.master + per.optimizer) + per.grads + per.weights)
        offloaded = col(p.offload != code("offload", "none")) > 0
        pcie = cluster.gpu.pcie_bandwidth * eff.memory_bound
        hbm = cluster.gpu.hbm_bandwidth * eff.memory_bound
        update = np.where(offloaded, updated * col(per.grads + per.weights) / pcie, update_bytes / hbm)
        once = np.where(layout.valid, dp_exposed + gather_exposed + update, -np.inf)
        once_stage = np.argmax(once, axis=1)
        pick_once = lambda a: np.take_along_axis(np.broadcast_to(a, once.shape), once_stage[:, None], axis=1)[:, 0]  # noqa: E731
        dp_once = pick_once(dp_exposed + gather_exposed)
        optimizer = pick_once(update)
    else:
        dp_once = optimizer = np.zeros(len(p))

    step = pipeline + dp_once + optimizer
    return StepTimes(
        step=step,
        compute=m * pick(compute),
        tp_comm=m * pick(tp_exposed),
        cp_comm=m * pick(cp_exposed),
        ep_comm=m * pick(ep_comm),
        pp_comm=m * pick(pp_comm),
        dp_comm=m * pick(fsdp_exposed) + dp_once,
        bubble=pipeline - m * t_max,
        optimizer=optimizer,
        critical_stage=critical,
    )
