"""The structural rules a plan must satisfy to run — divisibility, topology, precision, consistency —
each named, explained and carrying the fix (`constraints.check` adds the memory rule).

The divisibility rules are those Megatron-Core enforces at start-up (``megatron/training/arguments.py``
``validate_args`` and the model-parallel initialisation): heads and KV heads by TP, layers by PP·VPP,
experts by EP, expert model parallelism inside the data × context × tensor ranks, sequence by 2·CP for
load-balanced causal context parallelism, global batch by DP × micro-batch, micro-batches by PP for the
interleaved schedule. Vocabularies are not checked: frameworks pad them to a multiple of 128·tp.
"""

from __future__ import annotations

import functools

from pydantic import BaseModel, ConfigDict

from parallelplan.constraints import attention
from parallelplan.constraints.collectives import fast_domain
from parallelplan.constraints.efficiency import stack_schedules, stacks
from parallelplan.constraints.fp8 import (
    bf16_layers_recipes,
    plan_recipe,
    recipe_facts,
    runnable_recipes,
    runs_on,
    stack_recipes,
)
from parallelplan.constraints.plan import OFFLOAD_SHARDING, PRECISIONS, SCHEDULE_NAMES, V_SCHEDULES, Plan, Workload
from parallelplan.constraints.usp import plan_ulysses_degree
from parallelplan.hardware import ClusterSpec
from parallelplan.models import ModelSpec


class Violation(BaseModel):
    """One broken rule: its name, what is wrong with this plan, and what would fix it."""

    model_config = ConfigDict(frozen=True)

    rule: str
    message: str
    fix: str


@functools.lru_cache(maxsize=1024)
def _divisors(n: int, limit: int | None = None) -> str:
    """The divisors of ``n`` up to ``limit``, for a rule's fix (cached: every rule call formats its fix, and
    the ladder of `plan optimize` checks hundreds of plans of one model)."""
    values = [d for d in range(1, n + 1) if n % d == 0 and (limit is None or d <= limit)]
    return ", ".join(map(str, values[:12])) + (" ..." if len(values) > 12 else "")


def schedule_advice(stack: str, schedule: str) -> str:
    """The fix for a schedule the stack does not run: one it runs, or a stack that runs this one."""
    others = [name for name in stacks() if schedule in stack_schedules(name)]
    return f"use schedule {' or '.join(stack_schedules(stack))}, or a stack that runs it ({', '.join(others)})"


def fp8_kv_cache_messages(workload: Workload, cluster: ClusterSpec) -> dict[str, str]:
    """Why an fp8 KV cache cannot be priced here, by rule: a workload that caches no keys and values, a GPU
    without fp8 (the rules below and the search's refusal of a pinned one share the words)."""
    return {"kv_cache_fp8_needs_serving": f"an fp8 KV cache is a serving setting; a {workload.kind} step caches "
                                          "no keys and values",
            "kv_cache_fp8_runs_on_gpu": f"an fp8 KV cache is priced on GPUs with fp8 support only, and "
                                        f"{cluster.gpu.display_name} has none"}


def structural_violations(model: ModelSpec, cluster: ClusterSpec, plan: Plan, workload: Workload, *,
                          allow_cross_domain: bool = False) -> list[Violation]:
    """The rules that need no cost model (divisibility, topology, precision, consistency)."""
    out: list[Violation] = []

    def rule(name: str, ok: bool, message: str, fix: str) -> None:
        if not ok:
            out.append(Violation(rule=name, message=message, fix=fix))

    gpus = cluster.total_gpus
    rule("world_size", plan.world_size == gpus,
         f"tp·pp·dp·cp = {plan.tp}·{plan.pp}·{plan.dp}·{plan.cp} = {plan.world_size} but the cluster has {gpus} GPUs",
         f"choose degrees whose product is {gpus} (e.g. dp = {max(gpus // (plan.tp * plan.pp * plan.cp), 1)})")
    heads = model.num_attention_heads
    rule("attention_heads_by_tp", heads % plan.tp == 0,
         f"{heads} attention heads do not split over tp = {plan.tp}",
         f"use tp in {_divisors(heads, 64)}")
    if model.mla is None and workload.kind == "inference":
        kv = model.num_kv_heads
        rule("kv_heads_by_tp", kv % plan.tp == 0 or plan.tp % kv == 0,
             f"{kv} KV heads neither split over tp = {plan.tp} nor replicate evenly over it (vLLM's "
             "QKVParallelLinear: tp divides the KV heads, or they divide tp and each is copied tp/heads times)",
             f"use tp in {_divisors(kv, 64)} or a multiple of {kv}")
    elif model.mla is None:
        kv = model.num_kv_heads
        rule("kv_heads_by_tp", kv % plan.tp == 0,
             f"{kv} KV heads do not split over tp = {plan.tp} (Megatron-Core requires num_query_groups % tp == 0)",
             f"use tp in {_divisors(kv, 64)}")
    if model.ffn_hidden_size and model.num_dense_layers:
        rule("ffn_by_tp", model.ffn_hidden_size % plan.tp == 0,
             f"MLP width {model.ffn_hidden_size} does not split over tp = {plan.tp}",
             f"use tp in {_divisors(model.ffn_hidden_size, 64)}")
    if plan.layers_per_stage is None:
        stages = plan.pp * plan.vpp
        rule("layers_by_pp", model.num_layers % stages == 0,
             f"{model.num_layers} layers do not split evenly into pp·vpp = {stages} stages",
             f"use pp·vpp in {_divisors(model.num_layers)} or give layers_per_stage")
    else:
        rule("layers_per_stage_sum", sum(plan.layers_per_stage) == model.num_layers,
             f"layers_per_stage sums to {sum(plan.layers_per_stage)}, the model has {model.num_layers} layers",
             "give one layer count per stage that add up to the model's layers")
        rule("layers_per_stage_vpp", plan.vpp == 1, "layers_per_stage with vpp > 1 is not supported",
             "use vpp 1 with explicit stages, or the default split with interleaving")
    m = workload.global_batch_size // max(plan.dp * plan.micro_batch_size, 1)
    rule("batch_by_dp_microbatch", workload.global_batch_size % (plan.dp * plan.micro_batch_size) == 0,
         f"global batch {workload.global_batch_size} is not a multiple of dp·micro_batch = {plan.dp * plan.micro_batch_size}",
         f"use a micro-batch dividing {workload.global_batch_size // plan.dp if workload.global_batch_size >= plan.dp else 1}, or a global batch that is a multiple of {plan.dp * plan.micro_batch_size}")
    if plan.schedule == "interleaved":
        rule("interleaved_needs_vpp", plan.vpp > 1 and plan.pp > 1,
             "the interleaved schedule needs pp > 1 and vpp > 1", "set vpp > 1 with pp > 1, or use 1f1b")
        rule("interleaved_microbatches_by_pp", m % plan.pp == 0,
             f"the interleaved schedule needs the {m} micro-batches to be a multiple of pp = {plan.pp}",
             "change the global batch or the micro-batch size")
    name = SCHEDULE_NAMES.get(plan.schedule, plan.schedule)
    runs = stack_schedules(workload.stack)
    rule("schedule_run_by_stack", plan.schedule in runs,
         f"the {workload.stack} stack does not run the {name} schedule; it runs "
         f"{', '.join(SCHEDULE_NAMES[s] for s in runs)}", schedule_advice(workload.stack, plan.schedule))
    rule("pipeline_schedule_needs_pp", plan.schedule not in ("zero_bubble", *V_SCHEDULES) or plan.pp > 1,
         f"the {name} schedule needs pipeline parallelism (pp > 1)", "use schedule 1f1b with pp 1, or raise pp")
    if plan.schedule in V_SCHEDULES:
        rule("v_schedule_two_chunks", plan.vpp == 2,
             f"{name} runs two model chunks per pipeline rank (a V: rank i holds chunks i and 2·pp − 1 − i), not vpp = {plan.vpp}",
             "set vpp 2")
        least = 2 * plan.pp - (plan.schedule == "zbv")
        rule("v_schedule_microbatches", m >= least,
             f"{name} needs at least {least} micro-batches (2·pp{' − 1' if plan.schedule == 'zbv' else ''}), the step has {m} "
             f"(torch.distributed.pipelining Schedule{'ZBVZeroBubble' if plan.schedule == 'zbv' else 'DualPipeV'}"
             f"{': its order is built for that many, and the cost model priced from it' if plan.schedule == 'zbv' else ''})",
             f"use a global batch of at least {least} micro-batches per replica, or a smaller pp")
    if plan.vpp > 1:
        rule("vpp_needs_interleaved", plan.schedule in ("interleaved", *V_SCHEDULES),
             f"vpp = {plan.vpp} needs the interleaved, DualPipeV or ZB-V schedule", "set schedule 'interleaved' or vpp 1")
    if model.moe is not None:
        experts = model.moe.num_experts
        rule("experts_by_ep", experts % plan.ep == 0,
             f"{experts} experts do not split over ep = {plan.ep}", f"use ep in {_divisors(experts)}")
        rule("expert_ffn_by_etp", model.moe.expert_ffn_hidden_size % plan.etp == 0,
             f"expert width {model.moe.expert_ffn_hidden_size} does not split over etp = {plan.etp}",
             f"use etp in {_divisors(model.moe.expert_ffn_hidden_size, 64)}")
        inner = plan.dp * plan.cp * plan.tp
        rule("expert_parallel_inside_dp_cp_tp", inner % (plan.ep * plan.etp) == 0,
             f"ep·etp = {plan.ep * plan.etp} must divide dp·cp·tp = {inner} (Megatron-Core's expert layout)",
             "lower ep or etp, or raise dp")
        rule("moe_tp_needs_sequence_parallel", plan.tp == 1 or plan.sequence_parallel or not workload.training,
             "Megatron-Core MoE training with tp > 1 requires sequence parallelism", "set sequence_parallel")
    else:
        rule("ep_without_experts", plan.ep == 1, f"ep = {plan.ep} but {model.name} has no experts", "set ep 1")
    if plan.cp > 1 and plan.cp_comm != "a2a":  # ring attention, alone or across USP's Ulysses groups
        rule("sequence_by_2cp", workload.seq_len % (2 * plan.cp) == 0,
             f"seq_len {workload.seq_len} is not a multiple of 2·cp = {2 * plan.cp} (load-balanced causal context parallelism)",
             f"use cp with 2·cp dividing {workload.seq_len}")
    if plan.cp > 1 and plan.cp_comm == "a2a":
        rule("sequence_by_cp", workload.seq_len % plan.cp == 0,
             f"seq_len {workload.seq_len} is not a multiple of cp = {plan.cp} (Ulysses splits the sequence evenly)",
             f"use cp dividing {workload.seq_len}")
        heads = {"attention heads": model.num_attention_heads,
                 "KV heads": model.num_attention_heads if model.mla is not None else model.num_kv_heads}
        for what, count in heads.items():
            rule("a2a_heads_by_tp_cp", count % (plan.tp * plan.cp) == 0,
                 f"{count} {what} do not split over tp·cp = {plan.tp * plan.cp} (cp_comm a2a gives each CP rank "
                 "1/cp of each TP rank's heads; Transformer Engine requires it)",
                 f"use cp_comm p2p, or tp·cp dividing {count}")
    if plan.cp > 1 and plan.cp_comm == "a2a+p2p":
        kv = model.num_attention_heads if model.mla is not None else model.num_kv_heads
        rule("usp_split", plan_ulysses_degree(model, plan, cluster) >= 2,
             f"cp_comm a2a+p2p needs a Ulysses group of u ranks, 1 < u < cp = {plan.cp} dividing it, with tp·u within the "
             f"{fast_domain(cluster)}-GPU fast domain and dividing the {model.num_attention_heads} attention and {kv} KV "
             "heads; none does",
             "use cp_comm p2p or a2a, or another cp")
    if plan.cp > 1:
        offered = stacks()[workload.stack]["cp_comms"]
        rule("cp_comm_offered_by_stack", plan.cp_comm in offered,
             f"the {workload.stack} stack has no context parallelism by {plan.cp_comm}",
             f"use cp_comm {' or '.join(offered)}, or another stack")
    if plan.offload_activations:
        stack = stacks()[workload.stack]
        rule("activation_offload_needs_training", workload.training,
             f"offload_activations: a {workload.kind} forward keeps no activations for a backward", "set offload_activations false")
        offering = [name for name, s in stacks().items() if s["activation_offload"]]
        rule("activation_offload_offered_by_stack", stack["activation_offload"],
             f"the {workload.stack} stack does not offload activations ({stack['mechanisms']['activation_offload']})",
             f"set offload_activations false, or run on the {' or '.join(offering)} stack")
        excludes = stack["activation_offload_excludes"]
        if "pipeline" in excludes:
            rule("activation_offload_without_pipeline", plan.pp == 1,
                 f"the {workload.stack} stack offloads activations without pipeline parallelism only (pp = {plan.pp}; "
                 "Megatron-Core's TransformerConfig refuses cpu_offloading with pipeline parallelism)",
                 "use pp 1 or offload_activations false")
        if "recompute" in excludes:
            rule("activation_offload_without_recompute", plan.recompute == "none",
                 f"the {workload.stack} stack offloads activations without recompute only (recompute {plan.recompute}; "
                 "Megatron-Core's TransformerConfig refuses cpu_offloading with activation recomputation)",
                 "use recompute none or offload_activations false")
    if workload.peft is not None and workload.peft.method == "qlora":
        rule("qlora_computes_in_16_or_32_bits", plan.precision != "fp8",
             "QLoRA dequantises its 4-bit weights to the compute dtype (bitsandbytes' bnb_4bit_compute_dtype); there are no fp8 GEMMs",
             "use precision bf16 (QLoRA's), fp16 or fp32")
    rule("sequence_parallel_needs_tp", plan.tp > 1 or not plan.sequence_parallel,
         "sequence parallelism needs tp > 1", "unset sequence_parallel or raise tp")
    if plan.sequence_parallel and plan.tp > 1:
        local = workload.seq_len // plan.cp
        rule("sequence_by_tp_with_sp", workload.seq_len % plan.cp == 0 and local % plan.tp == 0,
             f"sequence parallelism splits each rank's {local}-token sequence over tp = {plan.tp}, which does not divide it",
             f"use a sequence length that is a multiple of cp·tp = {plan.cp * plan.tp}")
    if plan.cp > 1:
        rule("cp_needs_flash_attention", plan.attention_kernel != "eager",
             "context parallelism runs ring attention inside the fused attention kernel (Transformer Engine); eager attention has none",
             "use attention_kernel 'flash' or cp 1")
    kernel, arch = plan.attention_kernel, cluster.gpu.architecture
    if kernel not in (attention.STACK_DEFAULT, "eager"):
        name, stack = attention.kernel_name(kernel), workload.stack
        fix = f"use attention_kernel in {', '.join(['flash', *attention.priced_kernels(stack, arch)])}"
        rule("attention_kernel_offered_by_stack",
             kernel in attention.offered_kernels(stack) or kernel == attention.default_kernel(stack, arch),
             f"the {stack} stack cannot be asked for {name}", fix)
        runs = attention.runs_on(kernel, arch)
        rule("attention_kernel_runs_on_gpu", runs and attention.speed_ratio(kernel, stack, arch) is not None,
             f"{name} has no published speed beside the {stack} stack's own kernel on {arch}, so it is not priced there"
             if runs else f"{name} does not run on {cluster.gpu.display_name} ({arch})", fix)
    if plan.recompute_layers is not None:
        per_rank = -(-model.num_layers // (plan.pp * plan.vpp))
        if plan.layers_per_stage is not None:
            per_rank = max(plan.layers_per_stage)
        rule("recompute_layers_within_stage", plan.recompute_layers <= per_rank,
             f"recompute_layers {plan.recompute_layers} exceeds the {per_rank} layers of a pipeline (virtual) stage",
             f"use recompute_layers ≤ {per_rank}, or leave it unset to recompute every layer")
    # the fast domain: the NVLink domain, or the node's GPUs where they share no NVLink (PCIe servers)
    domain = fast_domain(cluster)
    # CP may span domains: its ring passes K/V once per step, hidden behind attention, and is priced over
    # the network when it crosses it (ring attention across nodes is how 128K-token runs are laid out:
    # Llama 3, Dubey et al. 2024, §3.3.2); TP's per-layer collectives are not hidden that way.
    rule("tp_inside_nvlink", allow_cross_domain or plan.tp <= domain,
         f"tp = {plan.tp} spans beyond the {domain}-GPU NVLink domain: every layer's tensor-parallel collectives would cross the network",
         f"keep tp ≤ {domain}, or allow crossing the domain explicitly")
    gpu = cluster.gpu
    rule("precision_supported", gpu.supports(plan.precision),
         f"{gpu.display_name} has no {plan.precision} tensor cores",
         f"use one of {', '.join(p for p in PRECISIONS if gpu.supports(p))}")
    if plan.kv_cache_dtype == "fp8":
        why = fp8_kv_cache_messages(workload, cluster)
        rule("kv_cache_fp8_needs_serving", workload.kind == "inference", why["kv_cache_fp8_needs_serving"],
             "set kv_cache_dtype auto")
        rule("kv_cache_fp8_runs_on_gpu", gpu.supports("fp8"), why["kv_cache_fp8_runs_on_gpu"], "set kv_cache_dtype auto")
    if plan.precision == "fp8" and gpu.supports("fp8"):
        recipe = plan_recipe(plan.fp8_recipe, workload.stack)
        offered = stack_recipes(workload.stack)
        rule("fp8_recipe_offered_by_stack", recipe in offered,
             f"the {workload.stack} stack's fp8 library ({stacks()[workload.stack]['fp8']['library']}) has no {recipe} recipe",
             f"use fp8_recipe in {', '.join(offered)}")
        runnable = runnable_recipes(workload.stack, gpu.architecture)
        rule("fp8_recipe_runs_on_gpu", runs_on(recipe, gpu.architecture),
             f"the {recipe} fp8 recipe does not run on {gpu.display_name} ({gpu.architecture}): "
             f"{recipe_facts(recipe)['name'].split(':')[0]} runs on {', '.join(recipe_facts(recipe)['architectures'])}",
             f"use fp8_recipe in {', '.join(runnable)}" if runnable else "use precision bf16")
    if plan.fp8_bf16_layers:
        recipe, able = plan_recipe(plan.fp8_recipe, workload.stack), bf16_layers_recipes(workload.stack)
        rule("fp8_bf16_layers_recipe", recipe in able,
             f"the {workload.stack} stack keeps layers in bf16 under fp8 " + (f"with {', '.join(able)} scaling only, not {recipe}"
                                                                           if able else "with no recipe"),
             f"use fp8_recipe in {', '.join(able)}" if able else "use fp8_bf16_layers 0")
    if plan.sharding == "hsdp":
        rule("hsdp_shard_divides_dp", (plan.dp * plan.cp) % (plan.hsdp_shard_size or 1) == 0,
             f"hsdp_shard_size {plan.hsdp_shard_size} must divide dp·cp = {plan.dp * plan.cp}",
             f"use a shard size in {_divisors(plan.dp * plan.cp)}")
    rule("param_offload_needs_sharding", plan.offload != "params" or plan.sharding in OFFLOAD_SHARDING["params"],
         "offloading parameters needs ZeRO-3/FSDP/HSDP (DeepSpeed offload_param, FSDP CPUOffload)",
         "set sharding zero3 or fsdp")
    rule("optimizer_offload_needs_sharding", plan.offload != "optimizer" or plan.sharding in OFFLOAD_SHARDING["optimizer"],
         "offloading the optimizer needs ZeRO (DeepSpeed offload_optimizer, stage ≥ 1) or FSDP",
         "set sharding zero1 or higher, or offload none")
    rule("deepspeed_pipeline_zero1_only", plan.pp == 1 or plan.sharding not in ("zero2", "zero3"),
         f"DeepSpeed's pipeline engine supports ZeRO stage 1 only; sharding '{plan.sharding}' with pp = {plan.pp} does not start",
         "use zero1 with pipeline parallelism, or fsdp (torchtitan composes FSDP with pipelining)")
    return out


UNPRICEABLE = ("precision_supported", "layers_per_stage_sum", "qlora_computes_in_16_or_32_bits", "hsdp_shard_divides_dp")
"""Rules without which the cost model has no meaning (no tensor cores for the precision; stages that
do not hold the model; fp8 GEMMs that QLoRA does not run; HSDP shards that do not tile the data-parallel
ranks, leaving a fraction of a replica): `estimate` refuses such plans, `check` reports them alone."""
