"""`check()`: each rule, broken on purpose, is reported by name with a message that states the facts and a
fix; a valid plan breaks none; `estimate` refuses the plans it cannot price."""

from __future__ import annotations

import pytest

from parallelplan.constraints import Peft, Plan, PlanError, Workload, check, estimate
from parallelplan.constraints.rules import UNPRICEABLE
from parallelplan.hardware import load_cluster
from parallelplan.models import load_model

LLAMA_8B = load_model("llama-3.1-8b")      # 32 heads, 8 KV heads, MLP 14336, 32 layers
LLAMA_70B = load_model("llama-3.1-70b")
MIXTRAL = load_model("mixtral-8x7b")       # 8 experts of width 14336
DGX = load_cluster("dgx-h100", nodes=2)   # 16 GPUs, 8 per NVLink domain
WORK = Workload(seq_len=4096, global_batch_size=64)

# (rule, model, plan, workload, cluster, words the message must contain)
CASES = [
    ("world_size", LLAMA_8B, Plan(tp=8, dp=1), WORK, DGX, ["= 8", "16 GPUs"]),
    ("attention_heads_by_tp", load_model({"name": "odd", "hidden_size": 3072, "num_layers": 4, "num_attention_heads": 24,
                                          "num_kv_heads": 8, "ffn_hidden_size": 8192, "vocab_size": 32000}),
     Plan(tp=16), WORK, DGX, ["24 attention heads", "tp = 16"]),
    ("kv_heads_by_tp", LLAMA_8B, Plan(tp=16, sequence_parallel=True), WORK, DGX, ["8 KV heads", "tp = 16"]),
    ("ffn_by_tp", load_model({"name": "odd-mlp", "hidden_size": 4096, "num_layers": 4, "num_attention_heads": 32,
                              "num_kv_heads": 8, "ffn_hidden_size": 11000, "vocab_size": 32000}),
     Plan(tp=16, sequence_parallel=True), WORK, DGX, ["11000", "tp = 16"]),
    ("layers_by_pp", load_model({"name": "thirty", "hidden_size": 4096, "num_layers": 30, "num_attention_heads": 32,
                                 "num_kv_heads": 8, "ffn_hidden_size": 14336, "vocab_size": 32000}),
     Plan(pp=4, dp=4), WORK, DGX, ["30 layers", "pp·vpp = 4"]),
    ("layers_per_stage_sum", LLAMA_8B, Plan(pp=2, dp=8, layers_per_stage=(10, 10)), WORK, DGX, ["sums to 20", "32 layers"]),
    ("layers_per_stage_vpp", LLAMA_8B, Plan(pp=2, dp=8, vpp=2, layers_per_stage=(16, 16)), WORK, DGX, ["vpp > 1"]),
    ("batch_by_dp_microbatch", LLAMA_8B, Plan(dp=16, micro_batch_size=3), WORK, DGX, ["global batch 64", "48"]),
    ("interleaved_needs_vpp", LLAMA_8B, Plan(pp=2, dp=8, schedule="interleaved"), WORK, DGX, ["vpp > 1"]),
    ("interleaved_microbatches_by_pp", LLAMA_8B, Plan(pp=4, dp=4, vpp=2), Workload(seq_len=4096, global_batch_size=24),
     DGX, ["6 micro-batches", "pp = 4"]),
    ("pipeline_schedule_needs_pp", LLAMA_8B, Plan(dp=16, schedule="zero_bubble"), WORK, DGX, ["zero-bubble"]),
    ("schedule_run_by_stack", LLAMA_8B, Plan(pp=4, dp=4, vpp=2, schedule="zbv"), WORK, DGX,
     ["megatron stack does not run the ZB-V schedule", "1F1B, interleaved"]),
    ("kv_cache_fp8_needs_serving", LLAMA_8B, Plan(dp=16, kv_cache_dtype="fp8"), WORK, DGX, ["fp8 KV cache", "pretrain step"]),
    ("kv_cache_fp8_runs_on_gpu", LLAMA_8B, Plan(tp=8, dp=1, kv_cache_dtype="fp8"),
     Workload(kind="inference", seq_len=4096, output_len=128, global_batch_size=8), load_cluster("dgx-a100"),
     ["fp8 support only", "A100"]),
    ("vpp_needs_interleaved", LLAMA_8B, Plan(pp=2, dp=8, vpp=2, schedule="1f1b"), WORK, DGX, ["vpp = 2"]),
    ("v_schedule_two_chunks", LLAMA_8B, Plan(pp=2, dp=8, vpp=4, schedule="dualpipev"), WORK, DGX, ["two model chunks", "vpp = 4"]),
    ("v_schedule_microbatches", LLAMA_8B, Plan(pp=4, dp=4, vpp=2, micro_batch_size=4, schedule="dualpipev"), WORK, DGX,
     ["DualPipeV needs at least 8 micro-batches", "has 4"]),
    ("experts_by_ep", MIXTRAL, Plan(dp=16, ep=16), WORK, DGX, ["8 experts", "ep = 16"]),
    ("expert_ffn_by_etp", load_model({"name": "odd-moe", "hidden_size": 4096, "num_layers": 4, "num_attention_heads": 32,
                                      "num_kv_heads": 8, "vocab_size": 32000,
                                      "moe": {"num_experts": 8, "experts_per_token": 2, "expert_ffn_hidden_size": 1000}}),
     Plan(tp=16, sequence_parallel=True), WORK, DGX, ["expert width 1000", "etp = 16"]),
    ("expert_parallel_inside_dp_cp_tp", MIXTRAL, Plan(pp=16, ep=8), WORK, DGX, ["ep·etp = 8", "dp·cp·tp = 1"]),
    ("moe_tp_needs_sequence_parallel", MIXTRAL, Plan(tp=2, dp=8), WORK, DGX, ["sequence parallelism"]),
    ("ep_without_experts", LLAMA_8B, Plan(dp=16, ep=2), WORK, DGX, ["ep = 2", "no experts"]),
    ("sequence_by_2cp", LLAMA_8B, Plan(dp=8, cp=2), Workload(seq_len=4098, global_batch_size=64), DGX, ["4098", "2·cp = 4"]),
    ("sequence_by_cp", LLAMA_8B, Plan(dp=4, cp=4, cp_comm="a2a"), Workload(seq_len=4098, global_batch_size=64), DGX,
     ["4098", "cp = 4", "Ulysses"]),
    ("a2a_heads_by_tp_cp", LLAMA_8B, Plan(tp=2, dp=1, cp=8, cp_comm="a2a", sequence_parallel=True), WORK, DGX,
     ["8 KV heads", "tp·cp = 16"]),
    ("usp_split", LLAMA_8B, Plan(dp=8, cp=2, cp_comm="a2a+p2p"), WORK, DGX, ["a2a+p2p", "cp = 2"]),
    ("cp_comm_offered_by_stack", LLAMA_8B, Plan(dp=8, cp=2, cp_comm="a2a"),
     WORK.model_copy(update={"stack": "torchtitan"}), DGX, ["torchtitan", "by a2a"]),
    ("qlora_computes_in_16_or_32_bits", LLAMA_8B, Plan(dp=16, precision="fp8"),
     Workload(kind="finetune", seq_len=4096, global_batch_size=64, peft=Peft(method="qlora")), DGX, ["QLoRA", "fp8"]),
    ("sequence_parallel_needs_tp", LLAMA_8B, Plan(dp=16, sequence_parallel=True), WORK, DGX, ["tp > 1"]),
    ("tp_inside_nvlink", LLAMA_8B, Plan(tp=16, sequence_parallel=True), WORK, DGX, ["tp = 16", "8-GPU NVLink domain"]),
    ("precision_supported", LLAMA_8B, Plan(dp=16, precision="fp8"), WORK, load_cluster("dgx-a100", nodes=2), ["fp8"]),
    ("fp8_recipe_offered_by_stack", LLAMA_8B, Plan(dp=16, precision="fp8", fp8_recipe="delayed"),
     WORK.model_copy(update={"stack": "torchtitan"}), DGX, ["torchao float8", "no delayed recipe"]),
    ("fp8_recipe_runs_on_gpu", LLAMA_8B, Plan(dp=16, precision="fp8", fp8_recipe="mxfp8"), WORK, DGX,
     ["mxfp8", "H100", "blackwell"]),
    ("fp8_bf16_layers_recipe", LLAMA_8B, Plan(dp=16, precision="fp8", fp8_bf16_layers=1), WORK, DGX,
     ["megatron stack", "not delayed"]),
    ("attention_kernel_offered_by_stack", LLAMA_8B, Plan(dp=16, attention_kernel="cudnn"),
     WORK.model_copy(update={"stack": "torchtitan"}), DGX, ["torchtitan", "cuDNN fused attention"]),
    ("attention_kernel_runs_on_gpu", LLAMA_8B, Plan(dp=16, attention_kernel="flash3"), WORK, load_cluster("dgx-a100", nodes=2),
     ["FlashAttention-3", "A100"]),
    ("hsdp_shard_divides_dp", LLAMA_8B, Plan(dp=16, sharding="hsdp", hsdp_shard_size=3), WORK, DGX, ["hsdp_shard_size 3", "16"]),
    ("param_offload_needs_sharding", LLAMA_8B, Plan(dp=16, offload="params"), WORK, DGX, ["ZeRO-3"]),
    ("optimizer_offload_needs_sharding", LLAMA_8B, Plan(dp=16, offload="optimizer"), WORK, DGX, ["offloading the optimizer"]),
    ("deepspeed_pipeline_zero1_only", LLAMA_8B, Plan(pp=2, dp=8, sharding="zero2"), WORK, DGX, ["ZeRO stage 1 only", "pp = 2"]),
    ("sequence_by_tp_with_sp", LLAMA_8B, Plan(tp=8, dp=2, sequence_parallel=True), Workload(seq_len=4100, global_batch_size=64),
     DGX, ["4100-token", "tp = 8"]),
    ("cp_needs_flash_attention", LLAMA_8B, Plan(dp=8, cp=2, attention_kernel="eager"), WORK, DGX, ["ring attention"]),
    ("recompute_layers_within_stage", LLAMA_8B, Plan(pp=4, dp=4, recompute="full", recompute_layers=9), WORK, DGX,
     ["recompute_layers 9", "8 layers"]),
    ("memory_fits", LLAMA_70B, Plan(dp=16), WORK, DGX, ["GiB per GPU", "the GPU has"]),
    ("activation_offload_needs_training", LLAMA_8B, Plan(dp=16, offload_activations=True),
     Workload(kind="inference", seq_len=4096, global_batch_size=64), DGX, ["inference forward", "no activations"]),
    ("activation_offload_offered_by_stack", LLAMA_8B, Plan(dp=16, offload_activations=True),
     WORK.model_copy(update={"stack": "torchtitan"}), DGX, ["torchtitan stack does not offload", "activation checkpointing only"]),
    ("activation_offload_without_pipeline", LLAMA_8B, Plan(pp=2, dp=8, offload_activations=True), WORK, DGX,
     ["pp = 2", "Megatron-Core"]),
    ("activation_offload_without_recompute", LLAMA_8B, Plan(dp=16, recompute="full", offload_activations=True), WORK, DGX,
     ["recompute full", "Megatron-Core"]),
    ("host_memory_fits", LLAMA_70B, Plan(dp=16, sharding="zero1", offload="optimizer"), WORK,
     load_cluster("dgx-h100", nodes=2).model_copy(update={"node": DGX.node.model_copy(update={"host_memory_bytes": 64 * 2**30})}),
     ["in host memory", "the node has 64 GiB"]),
]


@pytest.mark.parametrize("rule,model,plan,workload,cluster,words", CASES, ids=[c[0] for c in CASES])
def test_each_rule_reports_its_violation(rule, model, plan, workload, cluster, words):
    violations = check(model, cluster, plan, workload)
    named = {v.rule: v for v in violations}
    assert rule in named, f"{rule} not reported; got {[v.rule for v in violations]}"
    violation = named[rule]
    for word in words:
        assert word in violation.message, f"{word!r} not in {violation.message!r}"
    assert violation.fix


def test_every_rule_has_a_case():
    """A new rule needs a test here: the rule names in the source are exactly the cases above."""
    import importlib
    import inspect
    import re

    check_module = importlib.import_module("parallelplan.constraints.check")  # the module: `constraints.check` is the function
    rules_module = importlib.import_module("parallelplan.constraints.rules")

    source = inspect.getsource(rules_module) + inspect.getsource(check_module)
    names = set(re.findall(r'rule\("([a-z0-9_]+)"', source)) | set(re.findall(r'rule="([a-z0-9_]+)"', source))
    assert names == {c[0] for c in CASES}


def test_a_valid_plan_breaks_no_rule():
    plan = Plan(tp=8, pp=1, dp=2, sequence_parallel=True, sharding="zero1", recompute="selective")
    assert check(LLAMA_8B, DGX, plan, WORK) == []
    moe = Plan(tp=2, dp=8, ep=8, etp=1, sequence_parallel=True, sharding="zero1", recompute="full")
    assert check(MIXTRAL, DGX, moe, WORK) == []


def test_fixes_name_values_that_work():
    (violation,) = [v for v in check(LLAMA_8B, DGX, Plan(tp=16, sequence_parallel=True), WORK) if v.rule == "kv_heads_by_tp"]
    assert violation.fix == "use tp in 1, 2, 4, 8"


def test_pcie_servers_count_the_node_as_the_fast_domain():
    """A PCIe server has no NVLink domain, but TP inside the node is what its users run."""
    l40s = load_cluster("pcie-l40s", nodes=2)  # 4 GPUs per node, no NVLink
    inside = check(LLAMA_8B, l40s, Plan(tp=4, dp=2, sequence_parallel=True), WORK)
    across = check(LLAMA_8B, l40s, Plan(tp=8, sequence_parallel=True), WORK)
    assert "tp_inside_nvlink" not in {v.rule for v in inside}
    assert "tp_inside_nvlink" in {v.rule for v in across}


def test_context_parallel_groups_may_span_nodes_and_their_ring_crosses_the_network():
    """Ring attention across nodes is a normal long-context layout (Llama 3 405B at 128K: tp 8, cp 16);
    once the CP group spans NVLink domains, its K/V ring steps run at the NIC's bandwidth."""
    from parallelplan.constraints.collectives import Fabric
    from parallelplan.constraints.efficiency import Efficiency

    long = Workload(seq_len=131072, global_batch_size=16)
    assert check(LLAMA_8B, load_cluster("dgx-h100", nodes=4), Plan(tp=8, cp=4, sequence_parallel=True, recompute="full"), long) == []
    fabric = Fabric.of(DGX, Efficiency.default())
    inside, across = fabric.ring_step(1e9, 4, 2), fabric.ring_step(1e9, 8, 2)  # 8 GPUs vs 16 GPUs spanned
    assert inside == pytest.approx(1e9 / fabric.intra_bw + fabric.intra_alpha)
    assert across == pytest.approx(1e9 / fabric.inter_bw + fabric.inter_alpha)
    short = Workload(seq_len=8192, global_batch_size=16)  # too little attention to hide a ring over the NIC
    narrow = estimate(LLAMA_70B, DGX, Plan(tp=2, cp=4, dp=2, sequence_parallel=True), short)
    wide = estimate(LLAMA_70B, DGX, Plan(tp=2, cp=8, sequence_parallel=True), short)
    assert narrow.time.cp_comm == 0 < wide.time.cp_comm


def test_crossing_the_nvlink_domain_can_be_allowed():
    plan = Plan(tp=16, sequence_parallel=True)
    assert "tp_inside_nvlink" in {v.rule for v in check(LLAMA_70B, DGX, plan, WORK)}
    assert "tp_inside_nvlink" not in {v.rule for v in check(LLAMA_70B, DGX, plan, WORK, allow_cross_domain=True)}


@pytest.mark.parametrize("rule", UNPRICEABLE)
def test_estimate_refuses_plans_it_cannot_price(rule):
    case = next(c for c in CASES if c[0] == rule)
    _, model, plan, workload, cluster, words = case
    with pytest.raises(PlanError) as error:
        estimate(model, cluster, plan, workload)
    assert all(word in str(error.value) for word in words)
