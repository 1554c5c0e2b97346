"""Time of one optimizer step: the pipeline of micro-batches, the communication it cannot hide, the
data-parallel reduction and the optimizer update.

Per micro-batch on pipeline rank i (`constraints.compute` for the compute):
- forward + backward of its layers, plus recompute (full: the layers' forward again, collectives
  included, not the LM head; selective: each recomputed module's forward — the attention core, norms,
  MLA up-projections, a dense MLP or MoE block with its collectives, the experts' activation, the
  shared experts; selective_mm: every other matmul and the elementwise kernels, MoE blocks entirely),
  plus the LM head on the last stage (once more per trained MTP module);
- tensor parallelism: per layer and pass, two all-gathers and two reduce-scatters of the micro-batch's
  hidden states with sequence parallelism, or two all-reduces without — the same ring volume,
  4 · RS(T·h·b) (Korthikanti et al. 2022 §4.2.2). Backward, Megatron's column-parallel linears (QKV, FC1)
  all-reduce their input gradient asynchronously while their weight-gradient GEMM runs; with sequence
  parallelism they all-gather the saved input shard again during the input-gradient GEMM and
  reduce-scatter the input gradient during the weight-gradient GEMM, while the all-gathers of the
  row-parallel linears' output gradients stay exposed (Megatron-LM mpu/layers.py
  ColumnParallelLinearWithAsyncAllreduce / ColumnParallelLinearWithSequenceParallelism, Megatron-Core's
  LinearWithGradAccumulationAndAsyncCommunication): each hidden up to η_tp of those GEMMs' time on a stack that does this (``stacks.json``
  ``tp_backward_async``: Megatron's; PyTorch's DTensor waits for each collective).
  ``tp_comm_overlap`` (Transformer Engine userbuffers, which Megatron allows only with sequence
  parallelism) hides up to η_tp of all the GEMMs' time of the forward 4 · RS and the backward 6 · RS
  (η: the overlap fractions of the workload's stack, `Efficiency.overlap`, 0 where it has no such mechanism);
- context parallelism: ring attention (``cp_comm`` p2p) passes the rank's K and V cp − 1 times forward
  (K, V and their gradients backward), hidden behind attention up to η_cp (Liu et al. 2023, Ring
  Attention); Ulysses (a2a) all-to-alls the rank's Q, K, V before attention and the output after, (cp − 1)/cp
  of them leaving the GPU (Jacobs et al. 2023, DeepSpeed-Ulysses §3.1: 4·N·h/P per link per layer for MHA),
  and their gradients backward, not overlapped;
- expert parallelism: a dispatch and a combine per MoE layer and pass — NCCL all-to-alls of the k
  routed copies, or with ``moe_dispatcher`` deepep one copy per remote domain holding an expert, as long
  as the busiest rank's receipt (``moe_imbalance`` times the mean); with ``ep_comm_overlap``
  (Megatron-Core's ``--overlap-moe-expert-parallel-comm``: one micro-batch's all-to-all runs while
  another computes, as in DeepSeek-V3's DualPipe) hidden behind up to η_ep of the layer's compute (not
  the host synchronisation that must precede a dispatch), else only behind the shared experts
  (``--moe-shared-expert-overlap``);
- pipeline parallelism: the activations sent to the next stage forward and their gradient backward
  (vpp times with interleaving, where the last rank also sends its chunks back to the first); a stack
  with ``pipeline_scatter_gather`` (Megatron-LM of 2021–22, ``--scatter-gather-tensors-in-pipeline``,
  Narayanan et al. 2021 §4.1) sends 1/tp of them from each TP rank on its own link and all-gathers them
  over the TP group on arrival (without sequence parallelism; with it the tensor is already split);
- ZeRO-3 / FSDP / HSDP: all-gather of the stage's weights forward (hidden behind forward up to η_dp with
  ``param_gather_overlap``) and again backward, the reduce-scatter of its gradients, and for HSDP the
  all-reduce of the gradient shards across replicas (hidden behind backward with
  ``grad_reduce_overlap``); with parameters offloaded, their copy over PCIe each pass;
- ZeRO-2 (DeepSpeed): the gradient reduce-scatter after every micro-batch's backward, since only the
  rank's shard of gradients is kept;
- activation offload (``offload_activations``): the micro-batch's stored activations
  (`memory.stored_activations`) cross the GPU's PCIe link to the host during its forward and back during
  its backward, on copy engines beside the compute: exposed where the pass's compute (backward with its
  recompute) is shorter than its copy, at η_membound of the link (as the parameter and optimizer
  offloads; several GPUs sharing a PCIe switch's uplink is not modelled).
Pipeline of m micro-batches with per-rank times tᵢ: m · max tᵢ + the bubble, the other ranks' times once:
Σ tᵢ − max tᵢ for 1F1B ((pp − 1)/m of the step for balanced stages, Narayanan et al. 2021), 1/vpp of it
interleaved, and for zero-bubble ZB-H1 each of those ranks' time less twice its weight-gradient GEMMs Wᵢ —
(pp − 1)(F + B − 2W) for balanced stages, B the whole backward (Qi et al. 2024, "Zero Bubble Pipeline
Parallelism", §2: (p − 1)(T_F + T_B − T_W) with T_B the input gradient alone; DeepSeek-AI 2024, DeepSeek-V3
report, Table 2): the weight-gradient passes fill the bubble. Wᵢ = the forward GEMMs' time of the rank's
layers (the weight gradient takes as many FLOPs; none for frozen or PEFT-adapted weights). DualPipeV
(two chunks per rank in a V, DeepSeek-AI's DualPipe README: DualPipe's (PP/2 − 1)(F&B + B − 3W) with PP = 2·pp
chunks over pp devices and F, B, W per chunk, half a rank's): half of each other rank's time plus its
backward Bᵢ less 3Wᵢ, F&B taken as F + B (the pair overlaps communication, not compute). Its V sends each
micro-batch across every rank twice each way, once on rank 0 (which holds the first and the last chunk)
and on the last rank (where the V turns, chunk pp − 1 to chunk pp on the same GPU: torch's V schedules).
ZB-V (torch.distributed.pipelining's ScheduleZBVZeroBubble, the V layout of DualPipeV): no closed form is
published for unequal F, B, W (Qi et al. give its bubble for equal times; their code and torch's docstring
schedule by simulation), so the step was derived from torch's own action order: as longest paths through
it (max-plus, communication left out), every rank's step for m ≥ 2·pp − 1 micro-batches is
2m(F + B + W) plus the largest of eight linear forms in the per-chunk F, B (input gradient) and W (`zbv_forms`),
whatever m — (pp − 1)·F on equal times, a sixth of 1F1B's; tests/test_zbv.py rebuilds it from torch's
order. F, B, W are the other ranks' per-chunk averages.
Once per step and rank: the data-parallel gradient reduction — all-reduce without sharding,
reduce-scatter with ZeRO-1 / Megatron's distributed optimizer, over dp·cp for dense and the
expert-data-parallel group for expert weights — hidden behind the last backward up to η_dp with
``grad_reduce_overlap``; the parameter all-gather after a ZeRO-1/2 update, hidden behind the next
forward with ``param_gather_overlap``; and the optimizer update of the rank's share of parameters, one
fused multi-tensor kernel streaming its exactly counted bytes at η_stream of HBM bandwidth
(``Efficiency.streaming``; its gradients and weights over PCIe when the optimizer is offloaded; the host's
own Adam time is not modelled).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from parallelplan.constraints.activations import activation_bytes, busiest_rank_load
from parallelplan.constraints.arrays import PlanArrays, code
from parallelplan.constraints.collectives import Fabric, ring_bytes
from parallelplan.constraints.compute import LayerTimes
from parallelplan.constraints.efficiency import Efficiency, stacks
from parallelplan.constraints.memory import micro_batch_tokens, micro_batches, recomputed_share, stored_activations
from parallelplan.constraints.peft import PeftParams
from parallelplan.constraints.plan import RECOMPUTE_MODULES, Workload
from parallelplan.constraints.stages import StageLayout, StageParams, v_shaped
from parallelplan.constraints.states import BytesPerParam, ShardDivisors, expert_data_parallel, gathers_weights
from parallelplan.constraints.structure import ModelFacts
from parallelplan.constraints.usp import ulysses_degree
from parallelplan.hardware import ClusterSpec

STATE_PASSES = 2
"""A fused optimizer update reads and writes each of its states once: bytes moved = 2 × (master + optimizer
states) + the gradient read + the new weight written (`update_bytes_per_param`)."""


def update_bytes_per_param(p: PlanArrays, per: BytesPerParam) -> np.ndarray:
    """HBM bytes per parameter of one optimizer step: the fused update (``STATE_PASSES``); the global
    gradient norm for clipping, which reads every gradient once more (Megatron-LM's clip_grad_norm_fp32,
    on by default with --clip-grad 1.0; torch.nn.utils.clip_grad_norm_); the master weights read again to
    write the 16-bit compute copy (Megatron's _copy_main_params_to_model_params, after the update); and
    under fp16 loss scaling the unscale-and-check-for-inf pass over the gradients, a read and a write
    (torch._amp_foreach_non_finite_check_and_unscale_, Megatron's _unscale_main_grads_and_check_for_nan)."""
    fp16 = p.precision == code("precision", "fp16")
    return STATE_PASSES * (per.master + per.optimizer) + per.grads + per.weights + per.grads + per.master + 2 * fp16 * per.grads


@dataclass
class StepTimes:
    """Seconds, (n,) arrays. ``compute`` … ``offload`` are m × the critical rank's per-micro-batch terms;
    ``bubble`` is the pipeline fill and drain; ``dp_comm`` the exposed data-parallel (and FSDP)
    communication; ``decode`` the generation after an inference step's prefill
    (`constraints.generation`); they sum to ``step``."""

    step: np.ndarray
    compute: np.ndarray
    tp_comm: np.ndarray
    cp_comm: np.ndarray
    ep_comm: np.ndarray
    pp_comm: np.ndarray
    offload: np.ndarray
    dp_comm: np.ndarray
    bubble: np.ndarray
    optimizer: np.ndarray
    critical_stage: np.ndarray
    dp_bytes: np.ndarray
    """Bytes one GPU of the busiest stage sends per step in data-parallel and sharding collectives (ring
    volumes, `collectives.ring_bytes`: the all-reduce of gradients counts twice, ZeRO-3/FSDP gather the
    weights forward and backward and reduce-scatter the gradients every micro-batch — Rajbhandari et al.
    2020 §7: 2Ψ for DDP and ZeRO-1/2, 3Ψ for ZeRO-3, per micro-batch for the latter)."""
    decode: np.ndarray


def _hidden(comm: np.ndarray, cover: np.ndarray, fraction: float, enabled: np.ndarray | bool) -> np.ndarray:
    """What of ``comm`` stays exposed when up to ``fraction`` of ``cover`` hides it."""
    return np.where(enabled, np.maximum(comm - fraction * cover, 0.0), comm)


@dataclass
class ClassTimes:
    """Seconds per rank class, (n, C) arrays (`constraints.stages`): the per-micro-batch terms, which sum to
    ``per_microbatch`` (-inf on invalid columns), and the once-per-step ones (``once``: their sum, -inf on
    invalid columns). ``boundary`` ((n, 1)) is one pipeline send of the stage boundary's activations, which
    ``pp_comm`` counts forward on every rank but the last and backward on every rank but the first.
    ``backward_compute`` and ``weight_grad`` are the rank's backward and its weight-gradient GEMMs per
    micro-batch (within ``compute``), which the zero-bubble schedules move into the bubble."""

    compute: np.ndarray
    tp_comm: np.ndarray
    cp_comm: np.ndarray
    ep_comm: np.ndarray
    pp_comm: np.ndarray
    offload: np.ndarray
    dp_per_microbatch: np.ndarray
    per_microbatch: np.ndarray
    dp_once: np.ndarray
    update: np.ndarray
    once: np.ndarray
    boundary: np.ndarray
    backward_compute: np.ndarray
    weight_grad: np.ndarray
    bytes_per_microbatch: np.ndarray
    once_bytes: np.ndarray


def bubble_factor(p: PlanArrays) -> np.ndarray:
    """The share of the other ranks' times that 1F1B-family schedules leave idle (module docstring): 1 for
    1F1B and zero-bubble (whose weight-gradient passes then fill part of it: `pipeline_bubble`), 1/vpp
    interleaved."""
    return np.where(p.schedule == code("schedule", "interleaved"), 1.0 / p.vpp, 1.0)


def zbv_forms(pp: np.ndarray) -> np.ndarray:
    """ZB-V's bubble coefficients (module docstring): (n, 8, 3) integer multiples of the per-chunk (F, B, W)
    whose largest sum is the idle time of a step of torch's ScheduleZBVZeroBubble on pp ranks."""
    q = np.asarray(pp, dtype=float)[:, None]
    one, zero = np.ones_like(q), np.zeros_like(q)
    forms = [(zero, one, q - 2), (zero, q - 1, zero), (zero, 2 * (q - 1), -2 * (q - 1)), (one, zero, q - 2),
             (2 * q - 3, -(q - 2), zero), (2 * q - 3, one, -2 * (q - 1)), (2 * (q - 1), -(q - 1), -one),
             (2 * (q - 1), zero, -(2 * q - 1))]
    return np.stack([np.concatenate(form, axis=1) for form in forms], axis=1)


def pipeline_bubble(p: PlanArrays, others: np.ndarray, others_backward: np.ndarray,
                    others_weight_grad: np.ndarray) -> np.ndarray:
    """Idle time of a step's pipeline (module docstring), from the other ranks' per-micro-batch times,
    backward compute and weight-gradient GEMM times (each summed once over the ranks but the critical one)."""
    zbv = np.zeros_like(others)
    rows = np.flatnonzero(p.schedule == code("schedule", "zbv"))
    if len(rows):  # the other ranks' two chunks each, averaged
        chunks = 2.0 * np.maximum(p.pp[rows] - 1, 1)[:, None]
        per_chunk = np.stack([others - others_backward, others_backward - others_weight_grad, others_weight_grad], axis=1)[rows] / chunks
        zbv[rows] = np.maximum((zbv_forms(p.pp[rows]) * per_chunk[:, None, :]).sum(axis=2).max(axis=1), 0.0)
    return np.select(
        [p.schedule == code("schedule", "zero_bubble"), p.schedule == code("schedule", "dualpipev"),
         p.schedule == code("schedule", "zbv")],
        [np.maximum(others - 2.0 * others_weight_grad, 0.0),
         np.maximum(others + others_backward - 3.0 * others_weight_grad, 0.0) / 2.0, zbv],
        default=bubble_factor(p) * others)


def step_times(
    f: ModelFacts, cluster: ClusterSpec, eff: Efficiency, p: PlanArrays, w: Workload, layout: StageLayout,
    params: StageParams, times: LayerTimes, per: BytesPerParam, div: ShardDivisors, peft: PeftParams | None = None,
    decode: np.ndarray | None = None,
) -> StepTimes:
    """The step of each plan from its rank classes' times (module docstring), plus ``decode`` ((n,) seconds
    of generation after the prefill, `constraints.generation`) when given."""
    c = class_times(f, cluster, eff, p, w, layout, params, times, per, div, peft=peft)
    critical = np.argmax(c.per_microbatch, axis=1)
    pick = lambda a: np.take_along_axis(np.broadcast_to(a, c.per_microbatch.shape), critical[:, None], axis=1)[:, 0]  # noqa: E731
    t_max = pick(c.per_microbatch)
    total = (layout.weight * np.where(layout.valid, c.per_microbatch, 0.0)).sum(axis=1)
    others = lambda a: (layout.weight * np.where(layout.valid, a, 0.0)).sum(axis=1) - pick(a)  # noqa: E731
    m = micro_batches(p, w).astype(float)
    pipeline = m * t_max + pipeline_bubble(p, total - t_max, others(c.backward_compute), others(c.weight_grad))
    if w.training:
        once_stage = np.argmax(c.once, axis=1)
        pick_once = lambda a: np.take_along_axis(np.broadcast_to(a, c.once.shape), once_stage[:, None], axis=1)[:, 0]  # noqa: E731
        dp_once, optimizer = pick_once(c.dp_once), pick_once(c.update)
        step_bytes = m[:, None] * c.bytes_per_microbatch + c.once_bytes
        dp_bytes = np.where(layout.valid, step_bytes, 0.0).max(axis=1)
    else:
        dp_once = optimizer = dp_bytes = np.zeros(len(p))
    decode = np.zeros(len(p)) if decode is None else decode
    return StepTimes(
        step=pipeline + dp_once + optimizer + decode,
        compute=m * pick(c.compute),
        tp_comm=m * pick(c.tp_comm),
        cp_comm=m * pick(c.cp_comm),
        ep_comm=m * pick(c.ep_comm),
        pp_comm=m * pick(c.pp_comm),
        offload=m * pick(c.offload),
        dp_comm=m * pick(c.dp_per_microbatch) + dp_once,
        bubble=pipeline - m * t_max,
        optimizer=optimizer,
        critical_stage=np.take_along_axis(layout.index, critical[:, None], axis=1)[:, 0],
        dp_bytes=dp_bytes,
        decode=decode,
    )


def class_times(
    f: ModelFacts, cluster: ClusterSpec, eff: Efficiency, p: PlanArrays, w: Workload, layout: StageLayout,
    params: StageParams, times: LayerTimes, per: BytesPerParam, div: ShardDivisors, peft: PeftParams | None = None,
) -> ClassTimes:
    """Each rank class's per-micro-batch and once-per-step times (module docstring). Under PEFT (``peft``;
    ``per`` the adapters' bytes per parameter) data parallelism reduces and updates the adapters only,
    while FSDP / ZeRO-3 still gather the frozen base."""
    fabric = Fabric.of(cluster, eff)
    hide = eff.overlap[w.stack]  # what the stack's overlap mechanisms hide, by kind
    col = lambda a: np.asarray(a, dtype=float)[:, None]  # noqa: E731
    b = activation_bytes(p)
    tp, cp, dp, ep, etp = p.tp, p.cp, p.dp, p.ep, p.etp
    tokens = micro_batch_tokens(p, w)
    dense_l, moe_l = layout.dense_layers, layout.moe_layers
    layers = layout.layers
    training = w.training
    heads = layout.last + layout.mtp  # LM head passes on the stage

    def over_layers(name: str, kinds: tuple[str, ...] = ("dense", "moe"),
                    reduce: Callable[[np.ndarray], np.ndarray] = lambda a: a) -> np.ndarray:
        """Σ over the class's layers of LayerTimes.<kind>_<name> (``reduce``d to (n,)), the layers an fp8
        plan keeps in bf16 at their bf16 times (`LayerTimes.bf16`)."""
        counts = {"dense": (dense_l, layout.bf16_dense_layers), "moe": (moe_l, layout.bf16_moe_layers)}
        total = np.zeros_like(dense_l, dtype=float)
        for kind in kinds:
            value = reduce(getattr(times, f"{kind}_{name}"))
            total = total + counts[kind][0] * col(value)
            if times.bf16 is not None:
                total = total + counts[kind][1] * col(reduce(getattr(times.bf16, f"{kind}_{name}")) - value)
        return total

    layer_forward = over_layers("forward")
    forward = layer_forward + heads * col(times.head_forward)
    backward = over_layers("backward") + heads * col(times.head_backward)
    gemm_fwd = over_layers("gemm_forward")
    attention_fwd = layers * col(times.attention_forward)
    attention_bwd = layers * col(times.attention_backward)
    sac = over_layers("sac_recompute")
    mode = p.recompute[:, None]
    full = recomputed_share(p, layout) * (mode == code("recompute", "full"))  # share of layers rebuilt
    bits = (p.recompute_modules[:, None] >> np.arange(len(RECOMPUTE_MODULES))) & 1  # (n, modules)
    on = {name: col(bits[:, i]) for i, name in enumerate(RECOMPUTE_MODULES)}
    modules = over_layers("module_recompute", reduce=lambda a: (a * bits).sum(axis=1))
    recompute = np.select([mode == code("recompute", "selective"), mode == code("recompute", "selective_mm")],
                          [modules, sac], default=full * layer_forward)
    if not training:
        backward = recompute = np.zeros_like(forward)
        full = np.zeros_like(forward)
        on = dict.fromkeys(on, 0.0)

    # tensor parallelism per layer, forward: 2 all-gathers and 2 reduce-scatters of the hidden states under
    # sequence parallelism (4 reduce-scatter-equivalents R), else 2 all-reduces A (2R on a ring; in-network
    # reduction makes them faster: `collectives.Fabric.all_reduce`)
    hidden_bytes = tokens * f.hidden * b
    rs = layers * col(fabric.reduce_scatter(hidden_bytes, tp, 1))
    ar = layers * col(fabric.all_reduce(hidden_bytes, tp, 1))
    sequence_parallel = col(p.sequence_parallel) > 0
    overlap_tp = col(p.tp_comm_overlap & p.sequence_parallel) > 0
    tp_forward = _hidden(np.where(sequence_parallel, 4 * rs, 2 * ar), gemm_fwd, hide["tp"], overlap_tp)
    # recompute repeats the forward collectives: all of them under full, the MLP / MoE block's half
    # under the mlp / moe modules
    block_share = (on["mlp"] * dense_l + on["moe"] * moe_l) / np.maximum(layers, 1) / 2
    tp_exposed = (1 + full + block_share) * tp_forward
    if training:
        asynchronous_backward = stacks()[w.stack]["tp_backward_async"]
        column = hide["tp"] * asynchronous_backward * over_layers("column_forward")
        asynchronous = np.where(sequence_parallel, 2 * rs + 2 * np.maximum(2 * rs - column, 0.0), np.maximum(2 * ar - column, 0.0))
        tp_exposed = tp_exposed + np.where(overlap_tp, np.maximum(6 * rs - hide["tp"] * 2 * gemm_fwd, 0.0), asynchronous)

    # context parallelism: Ulysses' all-to-alls of Q, K, V and the attention output inside groups of u ranks,
    # exposed, then the ring exchange of K and V across the cp/u groups, hidden behind attention — u = 1
    # for p2p (ring attention), cp for a2a (Ulysses), `usp.ulysses_degree` for a2a+p2p (USP)
    comm = p.cp_comm
    usp = comm == code("cp_comm", "a2a+p2p")
    u = np.where(comm == code("cp_comm", "a2a"), cp, 1)
    if usp.any():
        u = np.where(usp, ulysses_degree(f.heads, f.kv_heads, tp, cp, fabric.domain), u)
    u = np.maximum(u, 1)
    r = cp // u
    kv_bytes = tokens * (f.k_width + f.v_width) * b / tp
    ring = col((r - 1) * fabric.ring_step(kv_bytes, r, tp * u)) * layers
    qkvo_bytes = tokens * (2 * f.q_width + f.k_width + f.v_width) * b / tp
    ulysses = col(fabric.all_to_all(qkvo_bytes, u, tp)) * layers
    cp_forward = ulysses + np.maximum(ring - hide["cp"] * attention_fwd, 0.0)
    cp_exposed = (1 + full) * cp_forward
    if training:
        cp_exposed = cp_exposed + ulysses + np.maximum(2 * ring - hide["cp"] * attention_bwd, 0.0)

    # expert parallelism: dispatch and combine all-to-alls per MoE layer and pass
    token_bytes = tokens * f.hidden * b / tp
    if f.experts and w.moe_dispatcher == "deepep":
        dispatch = fabric.node_deduplicated_dispatch(token_bytes, f.top_k, f.experts, ep, etp)
    else:
        dispatch = fabric.all_to_all(f.top_k * token_bytes if f.experts else np.zeros(len(p)), ep, etp)
    a2a = 2 * moe_l * col(dispatch * busiest_rank_load(p, w))  # the busiest rank receives the most
    cover = np.where(col(p.ep_comm_overlap) > 0, over_layers("overlappable_forward", ("moe",)), over_layers("shared_forward", ("moe",)))
    ep_forward = np.maximum(a2a - hide["ep"] * cover, 0.0)
    ep_comm = (1 + full + on["moe"]) * ep_forward
    if training:
        ep_comm = ep_comm + np.maximum(2 * a2a - hide["ep"] * 2 * cover, 0.0)

    # pipeline send/receive of the stage boundary's activations (vpp times with interleaving)
    sp_div = np.where(p.sequence_parallel, tp, 1)
    if stacks()[w.stack]["pipeline_scatter_gather"]:  # each TP rank sends its 1/tp, the receiver all-gathers
        send = np.where(p.sequence_parallel, fabric.send(hidden_bytes / tp, tp * cp * dp),
                        fabric.send(hidden_bytes / tp, tp * cp * dp) + fabric.reduce_scatter(hidden_bytes, tp, 1))
    else:
        send = fabric.send(hidden_bytes / sp_div, tp * cp * dp)
    boundary = col(send * p.vpp)
    wraps = col(p.vpp) > 1  # interleaved chunks continue from the last rank to the first
    pipelined = col(p.pp) > 1
    pp_forward = np.where(pipelined, np.where(layout.last & ~wraps, 0.0, boundary), 0.0)
    pp_backward = np.where(pipelined & ~((layout.first & ~wraps) | (not training)), boundary, 0.0)
    # a V: rank 0 (the first chunk's output down, the last chunk's gradient up) and the rank where the V turns
    # (it hands chunk pp − 1's output to chunk pp locally) send once each way, the others twice
    v = col(v_shaped(p)) > 0
    once = layout.first | (layout.index == col(p.pp) - 1)
    pp_forward = np.where(v & pipelined, np.where(once, boundary / 2, boundary), pp_forward)
    pp_backward = np.where(v & pipelined & training, np.where(once, boundary / 2, boundary), pp_backward)
    pp_comm = pp_forward + pp_backward

    # data parallelism per micro-batch: FSDP-style gathers and reductions, ZeRO-2's gradient reduce-scatter
    trained = (params.dense, params.expert) if peft is None else (peft.adapters, np.zeros_like(peft.adapters))
    trained_weights = trained[0] * col(per.weights), trained[1] * col(per.weights)
    weights = trained_weights if peft is None else (trained_weights[0] + peft.frozen_dense_bytes, peft.frozen_expert_bytes)
    grads = trained[0] * col(per.grads), trained[1] * col(per.grads)
    shard = (col(div.weights), col(tp)), (col(div.expert_weights), col(ep * etp))
    gathered = col(gathers_weights(p)) > 0
    all_gather = fabric.reduce_scatter(weights[0], *shard[0]) + fabric.reduce_scatter(weights[1], *shard[1])
    grad_scatter = fabric.reduce_scatter(grads[0], *shard[0]) + fabric.reduce_scatter(grads[1], *shard[1])
    replicas = (col(dp * cp) / col(div.weights), col(expert_data_parallel(p)) / col(div.expert_weights))
    across_replicas = (fabric.all_reduce(grads[0] / shard[0][0], replicas[0], col(tp) * shard[0][0])
                       + fabric.all_reduce(grads[1] / shard[1][0], replicas[1], col(ep * etp) * shard[1][0]))
    offloaded_params = col(p.offload == code("offload", "params")) > 0
    host_copy = np.where(offloaded_params, (weights[0] / shard[0][0] + weights[1] / shard[1][0])
                         / (cluster.gpu.pcie_bandwidth * eff.memory_bound), 0.0)
    zero2 = col(p.sharding == code("sharding", "zero2")) > 0
    dp_groups = (col(dp * cp), col(tp)), (col(expert_data_parallel(p)), col(ep * etp))
    reduce_scatter_dp = fabric.reduce_scatter(grads[0], *dp_groups[0]) + fabric.reduce_scatter(grads[1], *dp_groups[1])
    fetch_forward = np.where(gathered, all_gather + host_copy, 0.0)
    fetch_backward = np.where(gathered, all_gather + grad_scatter + across_replicas + host_copy, 0.0)
    fetch_backward = fetch_backward + np.where(zero2, reduce_scatter_dp, 0.0)
    if not training:
        fetch_backward = np.zeros_like(forward)
    gather_forward = _hidden(fetch_forward, forward, hide["dp"], col(p.param_gather_overlap) > 0)
    dp_per_microbatch = gather_forward + _hidden(fetch_backward, backward, hide["dp"], col(p.grad_reduce_overlap) > 0)
    # the same collectives as bytes sent per GPU
    gather_bytes = ring_bytes(weights[0], shard[0][0]) + ring_bytes(weights[1], shard[1][0])
    replica_bytes = 2 * (ring_bytes(grads[0] / shard[0][0], replicas[0]) + ring_bytes(grads[1] / shard[1][0], replicas[1]))
    sharded_bytes = 2 * gather_bytes + ring_bytes(grads[0], shard[0][0]) + ring_bytes(grads[1], shard[1][0]) + replica_bytes
    dp_scatter_bytes = ring_bytes(grads[0], dp_groups[0][0]) + ring_bytes(grads[1], dp_groups[1][0])
    bytes_per_microbatch = np.where(gathered, sharded_bytes, 0.0) + np.where(zero2, dp_scatter_bytes, 0.0)

    # activation offload: the stored activations to the host in forward, back in backward, beside the compute
    offload = np.zeros_like(forward)
    if training and p.offload_activations.any():
        stored = stored_activations(f, p, w, layout).stage * col(tokens)
        copy = stored / (cluster.gpu.pcie_bandwidth * eff.memory_bound)
        exposed = np.maximum(copy - forward, 0.0) + np.maximum(copy - (backward + recompute), 0.0)
        offload = np.where(col(p.offload_activations) > 0, exposed, 0.0)

    compute = forward + backward + recompute
    if w.algorithm == "dpo":  # the frozen reference's forward scores both sequences first (constraints.dpo)
        compute = compute + forward
        tp_exposed = tp_exposed + tp_forward
        cp_exposed = cp_exposed + cp_forward
        ep_comm = ep_comm + ep_forward
        pp_comm = pp_comm + pp_forward
        dp_per_microbatch = dp_per_microbatch + gather_forward
    per_microbatch = compute + tp_exposed + cp_exposed + ep_comm + pp_comm + offload + dp_per_microbatch
    per_microbatch = np.where(layout.valid, per_microbatch, -np.inf)

    # once per step: gradient reduction, parameter gather, optimizer update
    zeros = np.zeros_like(per_microbatch)
    dp_once = update = once_bytes = zeros
    if training:
        unsharded = col(p.sharding == code("sharding", "none")) > 0
        zero1 = col(p.sharding == code("sharding", "zero1")) > 0
        all_reduce_dp = fabric.all_reduce(grads[0], *dp_groups[0]) + fabric.all_reduce(grads[1], *dp_groups[1])
        reduction = np.select([unsharded, zero1], [all_reduce_dp, reduce_scatter_dp], default=0.0)
        dp_exposed = _hidden(reduction, backward, hide["dp"], col(p.grad_reduce_overlap) > 0)
        param_gather = (fabric.reduce_scatter(trained_weights[0], *dp_groups[0])
                        + fabric.reduce_scatter(trained_weights[1], *dp_groups[1]))
        param_gather = np.where(zero1 | zero2, param_gather, 0.0)
        gather_exposed = _hidden(param_gather, forward, hide["dp"], col(p.param_gather_overlap) > 0)
        updated = trained[0] / col(div.states) + trained[1] / col(div.expert_states)
        update_bytes = updated * col(update_bytes_per_param(p, per))
        offloaded = col(p.offload != code("offload", "none")) > 0
        pcie = cluster.gpu.pcie_bandwidth * eff.memory_bound
        hbm = cluster.gpu.hbm_bandwidth * eff.streaming  # one fused multi-tensor kernel over exactly counted bytes
        update = np.where(offloaded, updated * col(per.grads + per.weights) / pcie, update_bytes / hbm)
        dp_once = dp_exposed + gather_exposed
        weight_gather_bytes = (ring_bytes(trained_weights[0], dp_groups[0][0])
                               + ring_bytes(trained_weights[1], dp_groups[1][0]))
        once_bytes = (np.select([unsharded, zero1], [2 * dp_scatter_bytes, dp_scatter_bytes], default=0.0)
                      + np.where(zero1 | zero2, weight_gather_bytes, 0.0))
    once = np.where(layout.valid, dp_once + update, -np.inf)
    return ClassTimes(compute=compute, tp_comm=tp_exposed, cp_comm=cp_exposed, ep_comm=ep_comm, pp_comm=pp_comm, offload=offload,
                      dp_per_microbatch=dp_per_microbatch, per_microbatch=per_microbatch,
                      dp_once=np.broadcast_to(dp_once, per_microbatch.shape),
                      update=np.broadcast_to(update, per_microbatch.shape), once=once,
                      boundary=np.where(col(p.pp) > 1, boundary, 0.0),
                      backward_compute=np.broadcast_to(backward, per_microbatch.shape),
                      weight_grad=gemm_fwd if training and peft is None else np.zeros_like(per_microbatch),
                      bytes_per_microbatch=np.broadcast_to(bytes_per_microbatch, per_microbatch.shape),
                      once_bytes=np.broadcast_to(once_bytes, per_microbatch.shape))
