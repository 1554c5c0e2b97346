"""The cost model against formulas other people wrote and against its own invariants.

References: Megatron-LM's ``megatron/training/theoretical_memory_usage.py`` (activations per layer with
sequence parallelism + selective recompute, and without sequence parallelism; 18 bytes per parameter,
6 + 12/d with the distributed optimizer; the interleaved schedule's memory penalty), DeepSeek-V2 §2.1.2
(MLA caches kv_lora_rank + rope dims per token and layer), and the pipeline bubble (pp − 1)/(vpp · m)
of Narayanan et al. 2021. The PyTorch measurements are in test_memory_reference.py, the published runs
in test_published_runs.py.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from parallelplan.constraints import (
    Efficiency,
    Plan,
    PlanArrays,
    RuntimeAllowance,
    Workload,
    check,
    estimate,
    evaluate,
)
from parallelplan.constraints.activations import layer_activations
from parallelplan.constraints.collectives import Fabric, nccl_protocols
from parallelplan.constraints.structure import model_facts
from parallelplan.hardware import load_cluster
from parallelplan.models import load_model

GIB = 2**30
LLAMA_8B = load_model("llama-3.1-8b")
LLAMA_70B = load_model("llama-3.1-70b")
GPT3 = load_model("gpt-3-175b")
DEEPSEEK = load_model("deepseek-v3")
MIXTRAL = load_model("mixtral-8x7b")
PRETRAIN = Workload(kind="pretrain", seq_len=4096, global_batch_size=256)


def h100(nodes: int):
    return load_cluster("dgx-h100", nodes=nodes)


# -- Megatron-LM's theoretical memory ------------------------------------------------------------------

@pytest.mark.parametrize("tp", [1, 2, 8])
def test_fused_layer_matches_megatron_with_sequence_parallel_and_selective_recompute(tp):
    """Megatron: s·b·h·(18 + 4·f/h)/t per layer (Korthikanti Table 2, 34·s·b·h/t for f = 4h); ours adds
    only the two norms' fp32 1/σ (4 bytes per token each), which Megatron leaves out."""
    h, f = GPT3.hidden_size, GPT3.ffn_hidden_size
    plan = Plan(tp=tp, sequence_parallel=tp > 1, recompute="selective")
    ours = layer_activations(model_facts(GPT3), PlanArrays.from_plans([plan]), Workload(
        seq_len=2048, global_batch_size=8, dropout=0.1)).dense_kept[0]
    megatron = (18 + 4 * f / h) * h / tp
    assert ours == pytest.approx(megatron + 8 / tp, abs=1e-9)


@pytest.mark.parametrize("tp", [1, 2, 8])
def test_fused_layer_matches_megatron_without_sequence_parallel(tp):
    """Megatron: s·b·h·(10 + 24/t) per layer; ours adds the norms' 1/σ and flash attention's fp32
    log-sum-exp per head (4·a/t bytes per token)."""
    h, a = GPT3.hidden_size, GPT3.num_attention_heads
    plan = Plan(tp=tp, recompute="none")
    ours = layer_activations(model_facts(GPT3), PlanArrays.from_plans([plan]), Workload(
        seq_len=2048, global_batch_size=8, dropout=0.1)).dense_kept[0]
    assert ours == pytest.approx((10 + 24 / tp) * h + 8 + 4 * a / tp, abs=1e-9)


@pytest.mark.parametrize("pp,vpp", [(4, 2), (8, 5), (16, 4)])
def test_interleaved_first_stage_holds_megatrons_penalty(pp, vpp):
    """Megatron: interleaving multiplies the first stage's pp in-flight micro-batches by
    1 + (pp − 1)/(pp · vpp)."""
    plan = Plan(tp=8, pp=pp, dp=64 // (8 * pp) if pp <= 8 else 1, vpp=vpp, sequence_parallel=True)
    cluster = h100(plan.world_size // 8)
    layers = pp * vpp
    model = load_model({"name": "uniform", "hidden_size": 4096, "num_layers": layers, "num_attention_heads": 32,
                        "ffn_hidden_size": 14336, "vocab_size": 32000})
    est = estimate(model, cluster, plan, Workload(seq_len=4096, global_batch_size=512 * plan.dp))
    assert est.memory.stage == 0
    assert est.memory.in_flight_microbatches == pytest.approx(pp * (1 + (pp - 1) / (pp * vpp)))


def test_one_f_one_b_stage_i_holds_pp_minus_i_microbatches():
    cluster = h100(1)
    model = LLAMA_8B
    for pp in (2, 4, 8):
        plan = Plan(pp=pp, dp=8 // pp)
        work = Workload(seq_len=4096, global_batch_size=64 * plan.dp)
        evaluation = evaluate(model, cluster, work, [plan])
        assert evaluation.memory.in_flight[0] == min(pp - evaluation.memory.stage[0], 64)
    few = Plan(pp=8)  # 2 micro-batches: no stage holds more than 2
    est = estimate(model, cluster, few, Workload(seq_len=4096, global_batch_size=2))
    assert est.memory.in_flight_microbatches == 2


@pytest.mark.parametrize("sharding,bytes_per_param", [("none", 18.0), ("zero1", 6 + 12 / 8)])
def test_model_states_match_megatrons_bytes_per_parameter(sharding, bytes_per_param):
    """Megatron: 18 bytes per parameter (bf16 weights, fp32 gradients, fp32 master and two Adam moments),
    6 + 12/d with the distributed optimizer (ZeRO-1 over the data-parallel group)."""
    plan = Plan(dp=8, sharding=sharding, precision="bf16", optimizer="adamw")
    mem = estimate(LLAMA_8B, h100(1), plan, PRETRAIN).memory
    states = mem.weights + mem.gradients + mem.optimizer
    assert states == pytest.approx(bytes_per_param * LLAMA_8B.total_params, rel=1e-12)


# -- model states --------------------------------------------------------------------------------------

def test_sharding_stages_shrink_states_in_order():
    cluster = h100(2)
    states = {}
    for sharding in ("none", "zero1", "zero2", "zero3"):
        mem = estimate(LLAMA_70B, cluster, Plan(tp=8, dp=2, sharding=sharding, sequence_parallel=True), PRETRAIN).memory
        states[sharding] = (mem.weights, mem.gradients, mem.optimizer)
    assert states["zero1"][2] == pytest.approx(states["none"][2] / 2)          # optimizer + master halve
    assert states["zero1"][:2] == states["none"][:2]
    assert states["zero2"][1] == pytest.approx(states["none"][1] / 2)          # + gradients
    assert states["zero3"][0] < states["none"][0]                               # + weights (one layer gathered)


def test_distributed_optimizer_shards_over_data_and_context_parallel_ranks():
    cluster = h100(1)
    plain = estimate(LLAMA_8B, cluster, Plan(dp=8, sharding="zero1"), PRETRAIN).memory
    with_cp = estimate(LLAMA_8B, cluster, Plan(dp=4, cp=2, sharding="zero1"), PRETRAIN).memory
    assert with_cp.optimizer == plain.optimizer  # 8 = dp · cp ranks either way


def test_fsdp_keeps_fp32_shards_and_no_resident_bf16_copy():
    """FSDP2 mixed precision: 4 (fp32 shard) + 4 (fp32 gradient) + 8 (Adam) bytes per parameter / d, and in
    bf16 only what is gathered at the peak. Llama-3.1-8B's peak is the LM head's reduce (FSDP2's order,
    measured by `plan dry-run`): the head's gradient unsharded in bf16 (2 bytes) and in the fp32
    reduce-scatter input (4) with its 1/8 output, while the last layer is prefetched (2 bytes)."""
    mem = estimate(LLAMA_8B, h100(1), Plan(dp=8, sharding="fsdp"), PRETRAIN).memory
    params = LLAMA_8B.total_params
    h, f, kv, vocab = 4096, 14336, 8 * 128, 128256
    layer = h * (h + 2 * kv + h) + 3 * h * f + 2 * h  # q, k, v, o; gate, up, down; two RMSNorms
    head = vocab * h + h  # the LM head and the final norm
    assert mem.optimizer == pytest.approx(12 * params / 8, rel=1e-12)
    assert mem.gradients == pytest.approx(4 * params / 8 + (2 + 4 * (1 + 1 / 8)) * head, rel=1e-12)
    assert mem.weights == 2 * layer


def test_fsdp_holds_no_gathered_unit_at_the_optimizer_step():
    """After backward every FSDP unit is resharded: a peak in the optimizer step (PyTorch's foreach AdamW,
    whose sqrt temporaries outweigh a short sequence's activations) holds the shards, gradients and the
    step's temporaries only."""
    short = Workload(kind="pretrain", seq_len=128, global_batch_size=8)
    fsdp = estimate(LLAMA_70B, h100(1), Plan(dp=8, sharding="fsdp", kernels="unfused"), short).memory
    params = LLAMA_70B.total_params
    assert fsdp.activations == 0 and fsdp.weights == 0  # no resident bf16 copy, nothing gathered
    assert fsdp.optimizer == pytest.approx((12 + 4) * params / 8, rel=1e-12)  # states + exp_avg_sq.sqrt()


def test_hsdp_shards_within_its_group():
    cluster = h100(4)
    hsdp = estimate(LLAMA_8B, cluster, Plan(dp=32, sharding="hsdp", hsdp_shard_size=8), PRETRAIN).memory
    fsdp8 = estimate(LLAMA_8B, h100(1), Plan(dp=8, sharding="fsdp"), Workload(seq_len=4096, global_batch_size=64)).memory
    assert hsdp.optimizer == pytest.approx(fsdp8.optimizer)


@pytest.mark.parametrize("optimizer,state_bytes", [("adamw", 8.0), ("adamw8bit", 2 * (1 + 4 / 256)),
                                                    ("lion", 4.0), ("sgd", 4.0)])
def test_optimizer_state_bytes(optimizer, state_bytes):
    """fp32 master (4 bytes) plus the optimizer's states: Adam 2 fp32 moments, bitsandbytes 8-bit Adam
    2 one-byte moments with an fp32 absmax per 256-value block, Lion and SGD one fp32 moment."""
    mem = estimate(LLAMA_8B, h100(1), Plan(dp=8, optimizer=optimizer), PRETRAIN).memory
    assert mem.optimizer == pytest.approx((4 + state_bytes) * LLAMA_8B.total_params, rel=1e-12)


def test_adafactor_keeps_factored_second_moments_only():
    adafactor = estimate(LLAMA_8B, h100(1), Plan(dp=8, optimizer="adafactor"), PRETRAIN).memory.optimizer
    master = 4 * LLAMA_8B.total_params
    assert 0 < adafactor - master < 0.01 * master  # row + column statistics: ~ (m + n)/(m·n) of a matrix


def test_offload_moves_states_to_the_host():
    cluster = h100(1)
    kept = estimate(LLAMA_8B, cluster, Plan(dp=8, sharding="zero3"), PRETRAIN).memory
    optimizer_off = estimate(LLAMA_8B, cluster, Plan(dp=8, sharding="zero3", offload="optimizer"), PRETRAIN).memory
    params_off = estimate(LLAMA_8B, cluster, Plan(dp=8, sharding="zero3", offload="params"), PRETRAIN).memory
    assert kept.optimizer > 0 and optimizer_off.optimizer == 0
    assert params_off.weights < optimizer_off.weights


# -- activations ----------------------------------------------------------------------------------------

def test_context_parallelism_splits_the_sequence():
    cluster = h100(1)
    one = estimate(LLAMA_8B, cluster, Plan(dp=8), PRETRAIN).memory.activations
    two = estimate(LLAMA_8B, cluster, Plan(dp=4, cp=2), PRETRAIN).memory.activations
    assert two == pytest.approx(one / 2, rel=0.01)


def test_sequence_parallelism_splits_the_replicated_regions():
    cluster = h100(1)
    without = estimate(LLAMA_8B, cluster, Plan(tp=8), PRETRAIN).memory.activations
    with_sp = estimate(LLAMA_8B, cluster, Plan(tp=8, sequence_parallel=True), PRETRAIN).memory.activations
    assert with_sp < 0.6 * without


def test_recompute_ladder():
    cluster = h100(1)
    acts = {mode: estimate(LLAMA_8B, cluster, Plan(dp=8, recompute=mode), PRETRAIN).memory.activations
            for mode in ("none", "selective", "selective_mm", "full")}
    assert acts["full"] < acts["selective_mm"] < acts["selective"] <= acts["none"]
    partial = estimate(LLAMA_8B, cluster, Plan(dp=8, recompute="full", recompute_layers=16), PRETRAIN).memory.activations
    assert acts["full"] < partial < acts["none"]


def test_eager_attention_keeps_the_score_matrix():
    cluster = h100(1)
    flash = estimate(LLAMA_8B, cluster, Plan(dp=8), PRETRAIN).memory.activations
    eager = estimate(LLAMA_8B, cluster, Plan(dp=8, attention_kernel="eager"), PRETRAIN).memory.activations
    # fused eager softmax keeps the bf16 scores, 2 bytes per head and (query, key) pair, where flash
    # attention kept an fp32 log-sum-exp per head and query
    layers, heads, s = LLAMA_8B.num_layers, LLAMA_8B.num_attention_heads, 4096
    assert eager - flash == layers * heads * s * (2 * s - 4)


def test_dropout_adds_its_masks():
    """One byte per hidden element for each of the two dropout masks after attention and the MLP."""
    plan = PlanArrays.from_plans([Plan()])
    facts = model_facts(GPT3)
    without = layer_activations(facts, plan, Workload(seq_len=2048, global_batch_size=1)).dense_kept[0]
    with_masks = layer_activations(facts, plan, Workload(seq_len=2048, global_batch_size=1, dropout=0.1)).dense_kept[0]
    assert with_masks - without == 2 * GPT3.hidden_size


def test_uneven_stages_pick_the_most_loaded_rank():
    cluster = h100(1)
    work = Workload(seq_len=4096, global_batch_size=64)
    back_heavy = estimate(LLAMA_8B, cluster, Plan(pp=2, dp=4, layers_per_stage=(2, 30)), work)
    front_heavy = estimate(LLAMA_8B, cluster, Plan(pp=2, dp=4, layers_per_stage=(30, 2)), work)
    assert back_heavy.memory.stage == 1 and front_heavy.memory.stage == 0


def test_kv_cache_for_serving():
    """batch × context × layers × 2 · kv_heads · head_dim × bytes; MLA caches kv_lora_rank + rope dims."""
    serve = Workload(kind="inference", seq_len=8192, global_batch_size=16)
    llama = estimate(LLAMA_8B, h100(1), Plan(tp=1, dp=8), serve).memory.kv_cache
    assert llama == 16 // 8 * 8192 * 32 * 2 * 8 * 128 * 2
    split = estimate(LLAMA_8B, h100(1), Plan(tp=8), serve).memory.kv_cache
    assert split == 16 * 8192 * 32 * 2 * 1 * 128 * 2  # 8 KV heads over 8 GPUs: one each
    deepseek = estimate(DEEPSEEK, h100(4), Plan(tp=8, pp=4), serve).memory.kv_cache
    per_token = DEEPSEEK.kv_cache_elements_per_token * 2  # (512 + 64) · 61 bf16 elements
    assert per_token == (512 + 64) * 61 * 2
    # the rank with the most layers holds ⌈61/4⌉ of them; MLA's latent is not split by tp
    assert deepseek == 16 * 8192 * 16 * (512 + 64) * 2


# -- runtime allowance ----------------------------------------------------------------------------------

def test_runtime_allowance_terms_are_adjustable():
    cluster = h100(1)
    plan = Plan(tp=8)
    base = estimate(LLAMA_8B, cluster, plan, PRETRAIN)
    more = estimate(LLAMA_8B, cluster, plan, PRETRAIN, runtime=dataclasses.replace(
        RuntimeAllowance.default(), cuda_context_bytes=RuntimeAllowance.default().cuda_context_bytes + GIB))
    assert more.memory.overhead - base.memory.overhead == GIB
    assert more.memory.total - base.memory.total == GIB


def test_expert_all_to_all_across_nodes_uses_network_channels_per_peer():
    """NCCL opens all fast-domain channels (32 on a DGX H100) per peer inside a node, and
    max(1, ⌈NIC bandwidth / 14 GB/s⌉) per peer once a peer is remote (src/graph/paths.cc)."""
    runtime = RuntimeAllowance.default()
    plans = PlanArrays.from_plans([Plan(dp=8, ep=8), Plan(dp=16, ep=16)])
    inside, across = runtime.nccl_bytes(plans, h100(2))
    per_channel = runtime.nccl_bytes_per_peer_channel
    ring = runtime.nccl_channels * per_channel  # the data-parallel ring
    assert inside == ring + 7 * 32 * per_channel
    net_channels = math.ceil(h100(2).node.nic_bandwidth_per_gpu / 14e9)
    assert net_channels == 4  # 400 Gb/s = 50 GB/s per GPU
    assert across == ring + 15 * net_channels * per_channel


# -- time -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("schedule,vpp,beta", [("1f1b", 1, 1.0), ("interleaved", 2, 0.5)])
def test_pipeline_bubble_is_at_most_pp_minus_one_over_vpp_m(schedule, vpp, beta):
    """Bubble / busy time = β · (Σ tᵢ − max tᵢ)/(m · max tᵢ) ≤ β · (pp − 1)/m, equal for balanced stages
    (zero-bubble's: `test_zero_bubble_fills_the_bubble_with_the_weight_gradient_passes`)."""
    pp, m = 4, 32
    plan = Plan(tp=8, pp=pp, vpp=vpp, schedule=schedule, sequence_parallel=True)
    est = estimate(LLAMA_70B, h100(4), plan, Workload(seq_len=4096, global_batch_size=m))
    t = est.time
    busy = t.compute + t.tp_comm + t.cp_comm + t.ep_comm + t.pp_comm
    bound = beta * (pp - 1) / m
    assert 0.85 * bound <= t.bubble / busy <= bound + 1e-12


def test_step_time_parts_add_up():
    est = estimate(MIXTRAL, h100(4), Plan(tp=2, pp=2, dp=8, ep=8, sequence_parallel=True, sharding="zero1"), PRETRAIN)
    t = est.time
    parts = t.compute + t.tp_comm + t.cp_comm + t.ep_comm + t.dp_comm + t.pp_comm + t.bubble + t.optimizer
    assert parts == pytest.approx(est.step_time_s, rel=1e-12)
    assert est.tokens_per_s == pytest.approx(PRETRAIN.global_batch_size * PRETRAIN.seq_len / est.step_time_s)


def test_mfu_counts_model_flops_without_recompute():
    cluster = h100(1)
    plain = estimate(LLAMA_8B, cluster, Plan(dp=8), PRETRAIN)
    full = estimate(LLAMA_8B, cluster, Plan(dp=8, recompute="full"), PRETRAIN)
    flops = LLAMA_8B.flops_per_token(PRETRAIN.seq_len) * PRETRAIN.seq_len * PRETRAIN.global_batch_size
    peak = cluster.gpu.peak_flops["bf16"]
    for est in (plain, full):
        assert est.mfu == pytest.approx(flops / (est.step_time_s * 8 * peak), rel=1e-12)
    assert full.step_time_s > plain.step_time_s and full.mfu < plain.mfu


def test_tensor_parallel_communication_follows_the_fabric():
    cluster = h100(2)
    plan = Plan(tp=8, pp=2, sequence_parallel=True, tp_comm_overlap=False)
    unhidden = PRETRAIN.model_copy(update={"stack": "custom"})  # a stack that hides none of it
    fast = estimate(LLAMA_70B, cluster, plan, unhidden).time.tp_comm
    slow_nvlink = Efficiency.default().with_overrides({"network_bus": {"intra_node": 0.4}})
    slow = estimate(LLAMA_70B, cluster, plan, unhidden, efficiency=slow_nvlink).time.tp_comm
    assert 1.8 * fast < slow < 2 * fast  # half the bus bandwidth: twice the transfer, the same latency
    asynchronous = estimate(LLAMA_70B, cluster, plan, PRETRAIN).time.tp_comm  # Megatron's async backward
    overlapped = estimate(LLAMA_70B, cluster, plan.model_copy(update={"tp_comm_overlap": True}), PRETRAIN).time.tp_comm
    assert overlapped < asynchronous < fast
    across = estimate(LLAMA_70B, cluster, Plan(tp=16, sequence_parallel=True, tp_comm_overlap=False), unhidden)
    assert across.time.tp_comm > 3 * fast  # a TP group spanning two nodes runs over the NICs


NVLS_BUSBW_8XH100 = {4: 370e9, 5: 420e9, 6: 440e9, 7: 460e9, 8: 480e9}
"""Measured all_reduce_perf bus bandwidth (large messages, NCCL_ALGO=NVLS) on n GPUs of one 8x H100 SXM node:
a user's nccl-tests run reported in NVIDIA/nccl issue #1455; 480 GB/s at 8 also NCCL's maintainer in
nccl-tests issue #212. Ring on the same node: 365-370 GB/s."""


@pytest.mark.parametrize("n", sorted(NVLS_BUSBW_8XH100))
def test_nvlink_sharp_all_reduce_matches_measured_bus_bandwidth(n):
    """With NVLS the switch reduces each chunk and multicasts it back: (1 + 1/n)·M per GPU each way, against
    the ring's 2(n−1)/n·M (constraints.collectives). One efficiency fitted at n = 8 must carry to 4-7 GPUs."""
    fabric = Fabric.of(h100(1), Efficiency.default())
    nbytes = np.array([8.0 * 2**30])
    seconds = fabric.all_reduce(nbytes, np.array([n]), np.array([1]))[0]
    busbw = nbytes[0] / seconds * 2 * (n - 1) / n
    assert busbw == pytest.approx(NVLS_BUSBW_8XH100[n], rel=0.03)
    ring = 2 * fabric.reduce_scatter(nbytes, np.array([n]), np.array([1]))[0]
    assert seconds < ring


ALL_REDUCE_US_8XH100 = {8: 13.67, 64: 14.92, 1024: 16.94, 8192: 17.40, 65536: 19.54, 262144: 20.43, 2**20: 27.37,
                        2**22: 54.19, 2**24: 123.8, 2**26: 324.7, 2**28: 1112.5}
"""Measured all_reduce_perf out-of-place time (us) by message size on one node of 8 H100 SXM, NCCL's default
settings (NVLS on): NVIDIA's own sample output in github.com/NVIDIA/dgxc-benchmarking nccl/README.md
("View sample output (AllReduce excerpt)")."""


def test_all_reduce_follows_measured_nccl_tests_from_eight_bytes_to_256_mib():
    """NCCL runs each all-reduce on its fastest protocol (constraints.collectives): with LL, LL128 and Simple
    priced, the model follows the measured times within 31% at every size, median 13%; Simple alone — the
    model before protocols — is off by a median 29% and 83% on the smallest messages."""
    cluster = h100(1)
    sizes = np.array(list(ALL_REDUCE_US_8XH100), dtype=float)
    measured = np.array(list(ALL_REDUCE_US_8XH100.values())) * 1e-6

    def errors(fabric: Fabric) -> np.ndarray:
        return np.abs(fabric.all_reduce(sizes, np.full(len(sizes), 8), np.ones(len(sizes), dtype=np.int64)) / measured - 1)

    with_protocols = errors(Fabric.of(cluster, Efficiency.default()))
    assert np.median(with_protocols) < 0.15 and with_protocols.max() < 0.32
    simple_only = errors(Fabric.of(cluster.model_copy(update={"nccl_protocols": ("simple",)}), Efficiency.default()))
    assert np.median(simple_only) > 0.25 and simple_only[0] > 0.8


def test_the_model_picks_the_protocol_and_algorithm_nccl_picks_on_8_h100():
    """NCCL 2.26.2 on an HGX H100 node (NCCL_DEBUG in nccl-tests issue #309): 'Algo RING proto LL' from 8 B to
    1 MB, 'Algo NVLS proto SIMPLE' from 2 MB up. The model's fastest form at each power of two is the same."""
    fabric = Fabric.of(h100(1), Efficiency.default())
    sizes = 2.0 ** np.arange(3, 31)
    eight, one = np.full(len(sizes), 8), np.ones(len(sizes), dtype=np.int64)
    rings, total = fabric.ring_times(sizes, eight, one, 2), fabric.all_reduce(sizes, eight, one)
    ll = [p.name for p in fabric.protocols].index("ll")
    small = sizes <= 2**20
    assert np.allclose(total[small], rings[ll][small]) and (rings.argmin(axis=0)[small] == ll).all()
    assert (total[~small] < rings.min(axis=0)[~small]).all()  # NVLS beats every ring protocol


PROTOCOL_US_DGX_A100 = {2: {"ll": 12, "ll128": 20, "simple": 25}, 4: {"ll": 15, "ll128": 24, "simple": 43},
                        8: {"ll": 21, "ll128": 32, "simple": 84}}
"""Measured ring all-reduce of 8-128 B on a DGX A100 with each protocol forced (NCCL_ALGO=Ring, NCCL_PROTO=…,
NCCL_MAX_NCHANNELS=1; the poster's approximate totals, nccl-tests issue #123, 2022-12-15)."""


@pytest.mark.parametrize("n", sorted(PROTOCOL_US_DGX_A100))
def test_each_protocol_alone_prices_a_tiny_all_reduce_near_its_measured_time(n):
    """NCCL_PROTO as a cluster setting: a cluster that allows one protocol prices every ring on it. NCCL's
    tuning constants (efficiency.json nccl_protocols) put each within 40% of the single-channel measurement
    (LL and Simple below it by about a third: the measured run adds its own overheads), and LL below the
    others at every size, as measured."""
    cluster = load_cluster("dgx-a100", nodes=1)
    modelled = {}
    for protocol, measured in PROTOCOL_US_DGX_A100[n].items():
        fabric = Fabric.of(cluster.model_copy(update={"nccl_protocols": (protocol,)}), Efficiency.default())
        modelled[protocol] = fabric.all_reduce(np.array([64.0]), np.array([n]), np.array([1]))[0] * 1e6
        assert modelled[protocol] == pytest.approx(measured, rel=0.4)
    assert modelled["ll"] < min(modelled["ll128"], modelled["simple"])


def test_nccl_enables_ll128_only_over_nvlink_and_the_cluster_may_restrict_the_protocols():
    assert nccl_protocols(h100(1)) == ("ll", "ll128", "simple")
    assert nccl_protocols(load_cluster("pcie-l40s")) == ("ll", "simple")  # PCIe only: no LL128 (NCCL's default)
    assert nccl_protocols(h100(1).model_copy(update={"nccl_protocols": ("simple",)})) == ("simple",)
    with pytest.raises(ValueError, match="name each of ll, ll128, simple at most once"):
        h100(1).model_validate({**h100(1).model_dump(), "nccl_protocols": []})


def test_in_network_reduction_prices_only_all_reduces_and_only_where_the_fabric_has_it():
    """Two GPUs: the ring moves M each way, NVLS (1 + 1/2)·M at a lower efficiency — NCCL's tuner keeps the
    ring, and so does the model. A DGX A100 (no NVLS) prices every all-reduce as the ring. IB SHARP (declared
    by the cluster) sends each GPU's 1/n₁ share once over its NIC instead of 2(n₂−1)/n₂ of it."""
    eff = Efficiency.default()
    nbytes, one = np.array([2.0**30]), np.array([1])
    h100_fabric = Fabric.of(h100(1), eff)
    pair = h100_fabric.all_reduce(nbytes, np.array([2]), one)[0]
    assert pair == pytest.approx(h100_fabric.ring_times(nbytes, np.array([2]), one, 2).min())
    a100 = Fabric.of(load_cluster("dgx-a100", nodes=4), eff)
    for size in (2, 8, 32):
        assert a100.all_reduce(nbytes, np.array([size]), one)[0] == pytest.approx(
            a100.ring_times(nbytes, np.array([size]), one, 2).min())
    plain = load_cluster("dgx-a100", nodes=4)
    sharp = Fabric.of(plain.model_copy(update={"ib_sharp": True}), eff)
    across = np.array([4]), np.array([8])  # one GPU per node: the whole all-reduce crosses the NICs
    ring = a100.all_reduce(nbytes, *across)[0]
    simple = sharp.protocols[-1]  # a GiB goes Simple; CollNet runs nothing else
    expected = simple.base_s + nbytes[0] / sharp.inter_bw + 2 * simple.inter_s
    assert sharp.all_reduce(nbytes, *across)[0] == pytest.approx(expected)
    assert ring == pytest.approx(simple.base_s + 2 * 3 / 4 * nbytes[0] / a100.inter_bw + 6 * simple.inter_s)
    with pytest.raises(ValueError, match="ib_sharp is SHARP in InfiniBand switches"):
        load_cluster("dgx-h100", nodes=2).model_validate(
            {**load_cluster("dgx-h100", nodes=2).model_dump(), "inter_node_fabric": "roce", "ib_sharp": True})


def test_tensor_parallel_all_reduces_use_nvlink_sharp_and_sequence_parallel_does_not():
    """Without sequence parallelism TP's forward runs 2 all-reduces per layer, which NVLS speeds up; with it,
    all-gathers and reduce-scatters, which it does not (NVIDIA/nccl issue #1506)."""
    unhidden = PRETRAIN.model_copy(update={"stack": "custom"})
    nvls, ring = h100(1), h100(1).model_copy(update={"in_network_reduction": False})
    for sp, faster in ((False, True), (True, False)):
        plan = Plan(tp=8, sequence_parallel=sp, tp_comm_overlap=False, recompute="full", sharding="zero1")
        with_nvls, without = (estimate(LLAMA_70B, c, plan, unhidden).time.tp_comm for c in (nvls, ring))
        assert (with_nvls < 0.85 * without) if faster else with_nvls == pytest.approx(without)


def test_data_parallel_reduction_is_hidden_by_overlap():
    cluster = h100(4)
    plan = Plan(tp=8, dp=4, sequence_parallel=True, sharding="zero1")
    small = Workload(seq_len=4096, global_batch_size=4)
    exposed = estimate(LLAMA_70B, cluster, plan.model_copy(update={"grad_reduce_overlap": False}), small).time.dp_comm
    hidden = estimate(LLAMA_70B, cluster, plan, small).time.dp_comm
    assert hidden < exposed


def test_efficiency_overrides_change_what_they_name():
    cluster = h100(1)
    plan = Plan(dp=8)
    base = estimate(LLAMA_8B, cluster, plan, PRETRAIN)
    faster = estimate(LLAMA_8B, cluster, plan, PRETRAIN,
                      efficiency=Efficiency.default().with_overrides({"gemm": {"hopper": {"bf16": 0.8}}}))
    assert faster.time.compute < base.time.compute
    assert faster.memory == base.memory
    fp8_untouched = Efficiency.default().with_overrides({"gemm": {"hopper": {"bf16": 0.8}}})
    assert fp8_untouched.gemm["hopper"]["fp8"] == Efficiency.default().gemm["hopper"]["fp8"]
    with pytest.raises(ValueError, match="unknown efficiency factor 'gemmm'"):
        Efficiency.default().with_overrides({"gemmm": 0.5})


# -- scalar and vectorized forms ------------------------------------------------------------------------

def test_notes_explain_the_terms():
    est = estimate(LLAMA_70B, h100(1), Plan(tp=8), PRETRAIN)
    assert not est.fits
    text = " ".join(est.notes)
    assert "Does not fit" in text and "GiB" in text and "Model states" in text


# -- data-parallel communication per sharding -----------------------------------------------------------

def _dp_comm(plan: Plan, work: Workload, nodes: int = 4) -> float:
    return estimate(LLAMA_8B, h100(nodes), plan, work).time.dp_comm


def test_hsdp_with_one_rank_per_shard_costs_what_ddp_costs():
    """HSDP sharded over 1 rank is DDP: one all-reduce of the gradients (one micro-batch, overlap off)."""
    work = Workload(seq_len=4096, global_batch_size=32)
    off = dict(grad_reduce_overlap=False, param_gather_overlap=False)
    ddp = _dp_comm(Plan(dp=32, **off), work)
    hsdp = _dp_comm(Plan(dp=32, sharding="hsdp", hsdp_shard_size=1, **off), work)
    assert ddp > 0 and hsdp == pytest.approx(ddp, rel=1e-9)


def test_fsdp_communication_honours_the_overlap_switches():
    work = Workload(seq_len=4096, global_batch_size=64)
    hidden = _dp_comm(Plan(dp=32, sharding="fsdp"), work)
    exposed = _dp_comm(Plan(dp=32, sharding="fsdp", grad_reduce_overlap=False, param_gather_overlap=False), work)
    assert exposed > hidden


def test_zero2_reduces_gradients_every_micro_batch():
    """ZeRO-2 keeps only its gradient shard, so it reduce-scatters after each micro-batch; ZeRO-1 once."""
    work = Workload(seq_len=4096, global_batch_size=256)  # 8 micro-batches per replica
    off = dict(grad_reduce_overlap=False, param_gather_overlap=False)
    zero1 = _dp_comm(Plan(dp=32, sharding="zero1", **off), work)
    zero2 = _dp_comm(Plan(dp=32, sharding="zero2", **off), work)
    assert zero2 > 4 * zero1


def test_host_synchronisation_does_not_hide_the_expert_all_to_all():
    """Dropless routing waits for the token counts before dispatching: that wait covers nothing."""
    model = load_model("qwen3-30b-a3b")
    plan = Plan(dp=64, ep=16, sharding="zero1")
    work = Workload(seq_len=4096, global_batch_size=512)
    with_sync = estimate(model, h100(8), plan, work).time.ep_comm
    no_sync = estimate(model, h100(8), plan, work, efficiency=Efficiency.default().with_overrides({"moe_host_sync_s": 0.0}))
    assert with_sync == pytest.approx(no_sync.time.ep_comm) and with_sync > 0


def test_full_recompute_does_not_rerun_the_lm_head():
    """Megatron checkpoints the transformer layers: the recompute cost does not depend on the vocabulary."""
    def recompute_cost(vocab: int) -> float:
        model = load_model({"name": f"v{vocab}", "hidden_size": 4096, "num_layers": 8, "num_attention_heads": 32,
                            "num_kv_heads": 8, "ffn_hidden_size": 14336, "vocab_size": vocab})
        times = [estimate(model, h100(1), Plan(dp=8, recompute=r), PRETRAIN).time.compute for r in ("none", "full")]
        return times[1] - times[0]
    assert recompute_cost(32000) == pytest.approx(recompute_cost(256000), rel=1e-9)


def test_fp32_plans_stay_below_the_fp32_peak():
    """Every FLOP of an fp32 plan (attention and the LM head included) runs at most at η_gemm(fp32) of
    the fp32 peak: the FLOPs executed (causal attention) over the step stay below it."""
    cluster = h100(1)
    est = estimate(LLAMA_8B, cluster, Plan(dp=8, precision="fp32", master_weights=False), PRETRAIN)
    executed = LLAMA_8B.flops_per_token(PRETRAIN.seq_len, causal=True) * PRETRAIN.seq_len * PRETRAIN.global_batch_size
    achieved = executed / (est.step_time_s * 8 * cluster.gpu.peak_flops["fp32"])
    assert 0.5 < achieved <= Efficiency.default().gemm["hopper"]["fp32"]


# -- DeepSeek-V3: MLA placement and MTP modules --------------------------------------------------------

def test_mla_down_projections_are_replicated_over_tensor_parallel_ranks():
    """Megatron-Core builds MLA's q/kv down-projections (and their norms) whole on every TP rank."""
    facts = model_facts(DEEPSEEK)
    h, q_lora, kv_lora, rope = 7168, 1536, 512, 64  # DeepSeek-V3 config.json
    assert facts.attention_params - facts.attention_split_params == h * q_lora + h * (kv_lora + rope) + q_lora + kv_lora


def test_mtp_modules_split_like_a_moe_layer():
    """A trained MTP module adds one MoE layer (experts over ep) plus its projection and norms to the last
    stage, and its compute."""
    from parallelplan.models import params as P

    plan = Plan(pp=16, dp=16, ep=16, sharding="zero1", recompute="full")
    work = Workload(seq_len=4096, global_batch_size=256)
    base = estimate(DEEPSEEK, h100(32), plan, work)
    mtp = estimate(DEEPSEEK, h100(32), plan, work.model_copy(update={"train_mtp": True}))
    experts = DEEPSEEK.moe.num_experts * P.expert_params(DEEPSEEK)
    per_gpu = P.mtp_module_params(DEEPSEEK) - experts + experts / 16
    if mtp.memory.stage == base.memory.stage == 15:
        assert mtp.memory.weights - base.memory.weights == pytest.approx(2 * per_gpu, rel=1e-9)
    last = evaluate(DEEPSEEK, h100(32), work.model_copy(update={"train_mtp": True}), [plan])
    assert mtp.time.compute > base.time.compute and last.time.step[0] > base.step_time_s


def test_sliding_window_layers_cache_only_the_window():
    model = load_model("gpt-oss-120b")  # 36 layers, 18 with a 128-token window; 8 KV heads of 64
    serve = Workload(kind="inference", seq_len=131072, global_batch_size=1)
    kv = estimate(model, h100(1), Plan(tp=8), serve).memory.kv_cache
    assert kv == (18 * 131072 + 18 * 128) * 2 * 1 * 64 * 2  # one KV head per GPU at tp 8


def test_evaluate_needs_plans():
    with pytest.raises(ValueError, match="at least one plan"):
        evaluate(LLAMA_8B, h100(1), PRETRAIN, [])


# -- Megatron's selective recompute modules ------------------------------------------------------------

def _kept(model, **plan) -> tuple[float, float]:
    acts = layer_activations(model_facts(model), PlanArrays.from_plans([Plan(**plan)]), Workload(seq_len=4096, global_batch_size=8))
    return float(acts.dense_kept[0]), float(acts.moe_kept[0])


def test_each_selective_module_frees_what_it_rebuilds():
    """Per token and layer (bf16, tp 4 with SP): layernorm frees each norm's output (b·h/t), moe_act the
    routed experts' activation output (k·b·f_e/t), mla_up_proj MLA's Q, K, V (b·(q+k+v)/t), mlp and moe
    whole blocks but their input."""
    tp, b = 4, 2
    base = dict(tp=tp, sequence_parallel=True, recompute="selective")
    core_dense, core_moe = _kept(DEEPSEEK, **base)
    ln_dense, ln_moe = _kept(DEEPSEEK, **base, recompute_modules=("core_attn", "layernorm"))
    assert core_dense - ln_dense == pytest.approx(2 * b * 7168 / tp)
    _, act_moe = _kept(DEEPSEEK, **base, recompute_modules=("core_attn", "moe_act"))
    assert core_moe - act_moe == pytest.approx(8 * b * 2048 / tp)
    up_dense, _ = _kept(DEEPSEEK, **base, recompute_modules=("core_attn", "mla_up_proj"))
    assert core_dense - up_dense == pytest.approx(b * 128 * (192 + 192 + 128) / tp)
    _, moe_block = _kept(DEEPSEEK, **base, recompute_modules=("core_attn", "moe", "moe_act", "layernorm"))
    _, only_moe = _kept(DEEPSEEK, **base, recompute_modules=("core_attn", "moe", "layernorm"))
    assert moe_block == only_moe  # moe subsumes moe_act
    mlp_dense, _ = _kept(LLAMA_70B, **base, recompute_modules=("core_attn", "mlp"))
    full_dense, _ = _kept(LLAMA_70B, **base)
    f = 28672
    assert full_dense - mlp_dense == pytest.approx((2 * b * f + b * f) / tp + (b * 8192 + 4) / tp)


def test_selective_modules_trade_memory_for_time():
    cluster, work = h100(4), Workload(seq_len=4096, global_batch_size=256)
    ladder = [("core_attn",), ("core_attn", "layernorm"), ("core_attn", "layernorm", "moe_act"),
              ("core_attn", "layernorm", "moe_act", "moe")]
    results = [estimate(MIXTRAL, cluster, Plan(tp=2, dp=16, ep=8, sequence_parallel=True, sharding="zero1",
                                                recompute="selective", recompute_modules=m), work) for m in ladder]
    memory = [r.memory.activations for r in results]
    compute = [r.time.compute for r in results]
    assert memory == sorted(memory, reverse=True) and len(set(memory)) == len(memory)
    assert compute == sorted(compute) and len(set(compute)) == len(compute)


def test_batch_level_overlap_hides_the_expert_all_to_all():
    work = Workload(seq_len=4096, global_batch_size=512)
    plan = Plan(pp=8, dp=32, ep=32, sharding="zero1", recompute="full", layers_per_stage=(7, 8, 8, 8, 8, 8, 8, 6))
    overlapped = estimate(DEEPSEEK, h100(32), plan, work).time.ep_comm
    serial = estimate(DEEPSEEK, h100(32), plan.model_copy(update={"ep_comm_overlap": False}), work).time.ep_comm
    assert serial > overlapped


def test_deepep_sends_each_token_once_per_remote_node_that_holds_one_of_its_experts():
    """Two DGX nodes, 16 experts (8 per node), top-2: a token misses the other node with probability
    C(8, 2)/C(16, 2) = 28/120, so it crosses the network 1 − 28/120 times, against k·(n − n₁)/n = 1 copy
    for NCCL's all-to-all; NVLink forwards k·(n₁ − 1)/n₁ copies in both."""
    eff = Efficiency.default()
    fabric = Fabric.of(h100(2), eff)
    copy = np.array([64e6])
    size, stride = np.array([16]), np.array([1])
    remote = 1 - 28 / 120
    expected = max(copy[0] * remote / fabric.inter_bw, copy[0] * 2 * 7 / 8 / fabric.intra_bw) \
        + 7 * fabric.intra_alpha + fabric.inter_alpha
    assert fabric.node_deduplicated_dispatch(copy, 2, 16, size, stride)[0] == pytest.approx(expected)
    assert fabric.all_to_all(2 * copy, size, stride)[0] > expected
    inside = np.array([8])  # one node: nothing to deduplicate, the same NVLink traffic as the all-to-all
    assert fabric.node_deduplicated_dispatch(copy, 2, 16, inside, stride)[0] == pytest.approx(
        fabric.all_to_all(2 * copy, inside, stride)[0])


def test_deepep_shortens_the_exposed_expert_exchange_across_nodes_only():
    plan = Plan(dp=16, ep=16, sharding="zero1", recompute="full", ep_comm_overlap=False)
    work = Workload(seq_len=4096, global_batch_size=64)
    deepep = work.model_copy(update={"moe_dispatcher": "deepep"})
    qwen = load_model("qwen3-30b-a3b")  # 128 experts, top-8
    assert estimate(qwen, h100(2), plan, deepep).time.ep_comm < estimate(qwen, h100(2), plan, work).time.ep_comm
    node = plan.model_copy(update={"dp": 8, "ep": 8})
    assert estimate(qwen, h100(1), node, deepep).time.ep_comm == pytest.approx(
        estimate(qwen, h100(1), node, work).time.ep_comm)


def test_the_busiest_expert_rank_sets_the_pace_and_holds_the_most_activations():
    """``moe_imbalance`` scales the busiest rank's routed tokens: its exchange (no shared experts to
    hide it behind: Qwen3-30B-A3B) doubles at 2x the mean, its routed activations grow linearly, and
    the load stops at ep (every token on one rank); without expert parallelism nothing changes."""
    qwen = load_model("qwen3-30b-a3b")
    plan = Plan(dp=8, ep=8, sharding="zero1", recompute="none", ep_comm_overlap=False)
    at = {x: estimate(qwen, h100(1), plan, Workload(seq_len=4096, global_batch_size=64, moe_imbalance=x)) for x in (1, 2, 3, 8, 100)}
    assert at[2].time.ep_comm == pytest.approx(2 * at[1].time.ep_comm)
    assert at[2].time.compute > at[1].time.compute
    step = at[2].memory.activations - at[1].memory.activations
    assert step > 0 and at[3].memory.activations - at[2].memory.activations == pytest.approx(step)
    assert at[100].step_time_s == at[8].step_time_s and at[100].memory.total == at[8].memory.total
    replicated = Plan(dp=8, sharding="zero1", recompute="full")
    assert estimate(qwen, h100(1), replicated, Workload(seq_len=4096, global_batch_size=64, moe_imbalance=2)) \
        .step_time_s == estimate(qwen, h100(1), replicated, Workload(seq_len=4096, global_batch_size=64)).step_time_s


def test_a_capacity_factor_caps_the_busiest_expert_rank_and_padding_fixes_it():
    """Token dropping (``moe_capacity_factor`` C): the busiest rank computes at most C times its share, so
    an imbalance of 2 under C = 1.25 costs what an imbalance of 1.25 does; padded to capacity every rank
    computes C times its share even when routing is balanced; dropless (None) leaves the imbalance."""
    qwen = load_model("qwen3-30b-a3b")
    plan = Plan(dp=8, ep=8, sharding="zero1", recompute="none", ep_comm_overlap=False)

    def at(**fields):
        return estimate(qwen, h100(1), plan, Workload(seq_len=4096, global_batch_size=64, **fields))

    capped = at(moe_imbalance=2.0, moe_capacity_factor=1.25)
    assert capped.step_time_s == at(moe_imbalance=1.25).step_time_s
    assert capped.memory.total == at(moe_imbalance=1.25).memory.total
    assert at(moe_capacity_factor=1.25, moe_pad_to_capacity=True).step_time_s == at(moe_imbalance=1.25).step_time_s
    assert at(moe_capacity_factor=1.25).step_time_s == at().step_time_s  # balanced: nothing to drop
    assert at(moe_imbalance=2.0).step_time_s > capped.step_time_s
    with pytest.raises(ValueError, match="give moe_capacity_factor too"):
        Workload(seq_len=4096, global_batch_size=64, moe_pad_to_capacity=True)
    with pytest.raises(ValueError, match="DeepEP"):
        Workload(seq_len=4096, global_batch_size=64, moe_capacity_factor=1.0, moe_pad_to_capacity=True,
                 moe_dispatcher="deepep")
    with pytest.raises(ValueError, match="torchtitan stack runs dropless MoE only"):
        Workload(seq_len=4096, global_batch_size=64, moe_capacity_factor=1.0, stack="torchtitan")


def test_usp_is_ulysses_inside_the_node_and_a_ring_across_nodes():
    """cp_comm a2a+p2p (USP) on 4 nodes with cp 16, tp 1: Ulysses over the 8 GPUs of a node (the largest
    u < cp inside the NVLink domain dividing the 32 heads and 8 KV heads), a ring across the 2 groups. Its
    exchange is Ulysses' all-to-alls over 8 plus one ring step (not 15) of K and V over the network; memory
    is ring attention's (the same activations, split by heads within a group)."""
    from parallelplan.constraints.collectives import fast_domain
    from parallelplan.constraints.usp import ulysses_degree

    model, cluster = load_model("llama-3.1-8b"), load_cluster("dgx-h100", nodes=4)
    work = Workload(seq_len=131072, global_batch_size=2)
    assert int(ulysses_degree(32, 8, np.array([1]), np.array([16]), fast_domain(cluster))[0]) == 8
    assert int(ulysses_degree(32, 8, np.array([2]), np.array([16]), fast_domain(cluster))[0]) == 4
    base = dict(cp=16, dp=2, sharding="zero1", recompute="full")
    ring, ulysses_only, usp = (estimate(model, cluster, Plan(**base, cp_comm=c), work) for c in ("p2p", "a2a", "a2a+p2p"))
    assert usp.memory.total == ring.memory.total
    assert ring.time.cp_comm != usp.time.cp_comm != ulysses_only.time.cp_comm
    assert usp.step_time_s < ulysses_only.step_time_s  # 8-way all-to-alls over NVLink beat 16-way across nodes


def test_ulysses_context_parallelism_prices_its_all_to_alls_by_hand():
    """cp_comm a2a (DeepSpeed-Ulysses, Jacobs et al. 2023 §3.1): per layer and pass, each GPU sends 7/8 of its
    sequence chunk's Q, K, V and attention output to the other 7 ranks of an NVLink cp group of 8, unhidden:
    forward + backward = 2 · L · (7/8 · T·(2·q + k + v)·2 bytes / NVLink bus + 7 α), per micro-batch; the
    attention's FLOPs and the memory per GPU are those of ring attention (the same work, split by heads)."""
    model, cluster = load_model("llama-3.1-8b"), load_cluster("dgx-h100", nodes=1)
    work = Workload(seq_len=65536, global_batch_size=2)
    ring = Plan(cp=8, sharding="fsdp", recompute="none")
    ulysses = ring.model_copy(update={"cp_comm": "a2a"})
    a, b = (estimate(model, cluster, p, work) for p in (ring, ulysses))
    eff = Efficiency.default()
    tokens = 65536 / 8
    volume = tokens * (2 * 4096 + 1024 + 1024) * 2  # q and the output 32·128 wide, k and v 8·128 (GQA), bf16
    bus = cluster.node.intra_node_bandwidth * eff.network_bus["intra_node"]
    per_pass = 32 * (7 / 8 * volume / bus + 7 * eff.latency_s["intra_node"])
    assert b.time.cp_comm == pytest.approx(2 * 2 * per_pass, rel=1e-9)  # 2 micro-batches, forward + backward
    assert b.time.compute == pytest.approx(a.time.compute, rel=1e-12)
    assert b.memory.total == pytest.approx(a.memory.total, rel=1e-12)
    assert not check(model, cluster, ulysses, work)


def test_ulysses_rules_name_the_heads_and_the_stack():
    model, cluster = load_model("llama-3.1-8b"), load_cluster("dgx-h100", nodes=2)
    work = Workload(seq_len=65536, global_batch_size=16)
    rules = {v.rule: v for v in check(model, cluster, Plan(cp=16, cp_comm="a2a"), work)}
    assert "a2a_heads_by_tp_cp" in rules and "8 KV heads do not split over tp·cp = 16" in rules["a2a_heads_by_tp_cp"].message
    plan = Plan(cp=8, dp=2, cp_comm="a2a", sharding="fsdp", recompute="full")
    titan = {v.rule for v in check(model, cluster, plan, work.model_copy(update={"stack": "torchtitan"}))}
    assert titan == {"cp_comm_offered_by_stack"}
    assert not check(model, cluster, plan, work)


def test_fp8_keeps_the_gemm_inputs_its_library_keeps():
    """Under fp8 the tensors kept for the weight gradients are the fp8 library's (stacks.json ``fp8``, with
    their sources): Transformer Engine (Megatron) keeps 1-byte copies of the norm outputs (the QKV and FC1
    inputs) and of the FC2 input, and the output projection a 1-byte copy of the attention output beside
    the core's bf16 one; torchao (torchtitan) saves the bf16 inputs themselves, as bf16 training does."""
    f = model_facts(LLAMA_8B)
    tp = 2
    layer = {}
    for stack in ("megatron", "torchtitan"):
        work = Workload(kind="pretrain", seq_len=4096, global_batch_size=256, stack=stack)
        for precision in ("bf16", "fp8"):
            plans = PlanArrays.from_plans([Plan(tp=tp, dp=4, sequence_parallel=True, precision=precision)])
            layer[stack, precision] = float(layer_activations(f, plans, work).dense_full[0])
    two_norm_outputs, fc2_input, projection_copy = 2 * f.hidden / tp, f.ffn / tp, f.out_width / tp
    assert layer["megatron", "bf16"] - layer["megatron", "fp8"] == pytest.approx(
        two_norm_outputs + fc2_input - projection_copy, rel=1e-12)
    assert layer["torchtitan", "fp8"] == layer["torchtitan", "bf16"]


def test_fp8_weights_are_fp8_parameters_with_the_distributed_optimizer_else_a_cache_beside_bf16():
    """Megatron with sharded states runs --fp8-param-gather (`plan launch` emits it): an fp8 weight and its
    transpose take a bf16 weight's 2 bytes. Plain DDP cannot: Transformer Engine then caches an fp8 copy and
    transpose (2 bytes) of every GEMM weight beside the bf16 one — the decoder layers' parameters, not the
    embedding and LM head, which run in 16 bits."""
    def weights(**fields):
        return estimate(LLAMA_8B, h100(1), Plan(dp=8, **fields), PRETRAIN).memory.weights

    assert weights(sharding="zero1", precision="fp8") == weights(sharding="zero1", precision="bf16")
    outside_layers = 2 * LLAMA_8B.vocab_size * LLAMA_8B.hidden_size + LLAMA_8B.hidden_size  # embedding, head, final norm
    cache = 2 * (LLAMA_8B.total_params - outside_layers)
    assert weights(precision="fp8") - weights(precision="bf16") == pytest.approx(cache, rel=1e-9)


def test_tf32_keeps_fp32_memory_and_runs_its_gemms_on_the_tf32_tensor_cores():
    """tf32 is fp32 training whose GEMMs round their inputs to TF32 in the tensor cores: every byte of
    memory is fp32's, and the layer's compute-bound GEMMs take fp32's time scaled by the two achieved
    rates (the TF32 peak at the 16-bit GEMM factor, `Efficiency.gemm_fraction`, against the fp32 peak)."""
    from parallelplan.constraints.compute import layer_times
    from parallelplan.constraints.structure import attention_keys

    a100 = load_cluster("dgx-a100")
    fp32, tf32 = (estimate(LLAMA_8B, a100, Plan(dp=8, sharding="fsdp", recompute="full", precision=p), PRETRAIN)
                  for p in ("fp32", "tf32"))
    assert tf32.memory == fp32.memory
    eff, gpu = Efficiency.default(), a100.gpu
    plans = PlanArrays.from_plans([Plan(dp=8, precision="fp32"), Plan(dp=8, precision="tf32")])
    times = layer_times(model_facts(LLAMA_8B), gpu, eff, plans, PRETRAIN, attention_keys(LLAMA_8B, 4096, causal=True))
    rate = {p: gpu.peak_flops[p] * eff.gemm_fraction(gpu.architecture, p) for p in ("fp32", "tf32")}
    assert eff.gemm_fraction(gpu.architecture, "tf32") == eff.gemm_fraction(gpu.architecture, "bf16")
    assert times.dense_gemm_forward[1] == pytest.approx(times.dense_gemm_forward[0] * rate["fp32"] / rate["tf32"], rel=1e-9)
    assert tf32.step_time_s < fp32.step_time_s / 3


def test_zero_bubble_fills_the_bubble_with_the_weight_gradient_passes():
    """ZB-H1's bubble is (pp − 1)(F + B − 2W) where 1F1B's is (pp − 1)(F + B) (Qi et al. 2024 §2; DeepSeek-V3
    report, Table 2): for 8 equal layers per stage it is 1F1B's less twice the other ranks' weight-gradient
    GEMMs, each as long as the forward GEMMs of the rank's layers."""
    from parallelplan.constraints.compute import layer_times
    from parallelplan.constraints.structure import attention_keys

    cluster = h100(1)
    plans = {s: Plan(pp=4, dp=2, sharding="zero1", schedule=s) for s in ("1f1b", "zero_bubble")}
    bubble = {s: estimate(LLAMA_8B, cluster, plan, PRETRAIN).time.bubble for s, plan in plans.items()}
    times = layer_times(model_facts(LLAMA_8B), cluster.gpu, Efficiency.default(), PlanArrays.from_plans([plans["1f1b"]]),
                        PRETRAIN, attention_keys(LLAMA_8B, PRETRAIN.seq_len, causal=True))
    weight_grad = (LLAMA_8B.num_layers // 4) * float(times.dense_gemm_forward[0])
    assert bubble["1f1b"] - bubble["zero_bubble"] == pytest.approx(2 * 3 * weight_grad, rel=1e-9)
    assert bubble["1f1b"] / 3 < bubble["zero_bubble"] < bubble["1f1b"]  # the ideal third needs B = 2F, W = F


def test_dualpipev_lays_its_chunks_in_a_v_and_prices_deepseeks_bubble():
    """DualPipeV on pp ranks: rank i holds chunks i and 2·pp − 1 − i (rank 0 the embedding and the LM head),
    every rank keeps 2·pp + 1 half-stage chunks of activations, and the bubble is DualPipe's
    (PP/2 − 1)(F&B + B − 3W) over 2·pp chunks of half a rank's work — half of the other ranks' t + B − 3W
    (DeepSeek-V3 report, Table 2; the DualPipe README)."""
    from parallelplan.constraints.evaluate import stage_costs
    from parallelplan.constraints.stages import virtual_stages

    pp = 4
    plan = Plan(tp=8, pp=pp, dp=2, vpp=2, schedule="dualpipev", sequence_parallel=True, sharding="zero1")
    work = Workload(seq_len=4096, global_batch_size=512)
    arrays = PlanArrays.from_plans([plan])
    chunks = virtual_stages(model_facts(LLAMA_70B), arrays)
    per_chunk = LLAMA_70B.num_layers // (2 * pp)
    assert [[start // per_chunk for start, _ in rank] for rank in chunks] == [[i, 2 * pp - 1 - i] for i in range(pp)]
    costs = stage_costs(LLAMA_70B, h100(8), work, arrays)
    assert costs.layout.first[0].tolist() == costs.layout.last[0].tolist() == [True] + [False] * (pp - 1)
    est = estimate(LLAMA_70B, h100(8), plan, work)
    assert est.memory.stage == 0 and est.memory.in_flight_microbatches == pytest.approx((2 * pp + 1) / 2)
    sends = np.asarray(costs.times.pp_comm[0])  # rank 0 and the rank where the V turns send once each way
    assert sends[0] == sends[-1] == pytest.approx(sends[1] / 2) and sends[1] == sends[2]
    t, b, w = (np.asarray(a[0]) for a in (costs.times.per_microbatch, costs.times.backward_compute, costs.times.weight_grad))
    others = np.arange(pp) != np.argmax(t)
    assert est.time.bubble == pytest.approx(max((t + b - 3 * w)[others].sum(), 0.0) / 2, rel=1e-9)
    one_f_one_b = estimate(LLAMA_70B, h100(8), Plan(tp=8, pp=pp, dp=2, sequence_parallel=True, sharding="zero1"), work)
    assert est.time.bubble < one_f_one_b.time.bubble / 2


def test_a_tf32_plans_fp32_lora_adapters_run_on_the_tf32_tensor_cores():
    """peft keeps unfused adapters in fp32; under a tf32 plan (PyTorch's TF32 override) their GEMMs take the
    TF32 rate (a rank large enough that they are compute-bound; thin adapters are bound by their bytes)."""
    from parallelplan.constraints import Peft
    from parallelplan.constraints.compute import Roofline, adapter_times

    a100, eff = load_cluster("dgx-a100"), Efficiency.default()
    work = Workload(kind="finetune", seq_len=4096, global_batch_size=64, peft=Peft(rank=4096, alpha=4096))
    plans = PlanArrays.from_plans([Plan(dp=8, precision=p, kernels="unfused", master_weights=False)
                                   for p in ("fp32", "tf32")])
    roof = Roofline(a100.gpu, eff, plans, work.stack)
    dense, _ = adapter_times(model_facts(LLAMA_8B), a100.gpu, eff, plans, work, roof, np.full(2, 4096.0))
    assert dense[1] < dense[0]
