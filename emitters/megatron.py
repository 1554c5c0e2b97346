"""Megatron-LM (megatron-core 0.19): ``pretrain_gpt.py`` arguments, launched by torchrun, with the
environment Megatron asserts.

Flags are the ones `megatron.training.arguments.add_megatron_arguments` defines, checked by its own
``validate_args`` in the validator tests:
- the model (layers, widths, heads, GQA groups, head dim, MLA ranks, norms, activation, biases, tying,
  position embedding, MoE experts/top-k/shared experts/dense-layer pattern, MTP layers);
- parallelism: TP, PP, CP, EP, expert-TP, ``--sequence-parallel``; virtual stages as
  ``--num-layers-per-virtual-pipeline-stage`` (Megatron derives the virtual size from it); uneven stages as
  ``--decoder-first/last-pipeline-num-layers``;
- recompute: full on every layer (``uniform`` 1), full on the first k layers of each virtual stage
  (``block`` k), selective with ``--recompute-modules``;
- precision: ``--bf16``/``--fp16``; fp8 as bf16 with the plan's ``--fp8-recipe`` (``delayed``, Megatron's
  default, ``tensorwise``, ``blockwise``, ``mxfp8``) in Transformer Engine's format for it (``hybrid``, E4M3
  forward and E5M2 gradients, for the per-tensor recipes; ``e4m3`` throughout for the block recipes, as
  Transformer Engine's Float8BlockScaling and MXFP8BlockScaling default to), with ``--fp8-param-gather`` where states
  are sharded (fp8 parameters in place of bf16 ones and Transformer Engine's cached fp8 copy, as the cost
  model prices it: `constraints.memory.fp8_weight_cache`);
- sharding: ZeRO-1 is Megatron's distributed optimizer; ZeRO-2/3 and FSDP are Megatron-FSDP with
  ``optim_grads`` / ``optim_grads_params``; HSDP is Megatron-FSDP with as many optimizer instances as
  replicas; the plan's overlaps (gradient reduce, parameter gather, TP and EP communication);
- batch: micro and global batch; Megatron derives the gradient accumulation.
``CUDA_DEVICE_MAX_CONNECTIONS``: with TP or CP on GPUs before Blackwell (compute capability < 10) and no
FSDP, ``validate_args`` asserts it is 1 (one hardware queue keeps Megatron's communication kernels ordered
ahead of the GEMMs they overlap); with FSDP it asserts it is not 1.

Left to the user (they do not change the plan): the data, the tokenizer, the learning-rate schedule and
model-numerics flags such as the rotary base and the norm epsilon. Arguments given to ``launch.sh`` are
passed on to ``pretrain_gpt.py``; with none it trains on Megatron's mock data.
"""

from __future__ import annotations

from parallelplan.constraints.fp8 import target_recipe
from parallelplan.constraints.plan import FP32_STORAGE, V_SCHEDULES
from parallelplan.constraints.usp import plan_ulysses_degree
from parallelplan.emitters.environment import Variable, command, nccl_environment, script
from parallelplan.emitters.job import Job, unsupported
from parallelplan.emitters.torchrun import rendezvous_lines, torchrun_words

TARGET = "megatron"
SCRIPT = "pretrain_gpt.py"
CONSTRAINTS = {"ranges": {"recompute": ["none", "selective", "full"], "schedule": ["1f1b", "interleaved"]}}
OFFLOADS_ACTIVATIONS = True
"""``--cpu-offloading-num-layers`` (the megatron stack's rules keep it to pp 1 without recompute)."""
AGAIN = "solve for it with `plan launch --target megatron`"
FP8_FORMATS = {"delayed": "hybrid", "tensorwise": "hybrid", "blockwise": "e4m3", "mxfp8": "e4m3"}
"""Transformer Engine's fp8 format per recipe (module docstring): its recipes' defaults (docs,
features/low_precision_training: E5M2 gradients for the per-tensor recipes, E4M3 throughout for the block ones)."""
OPTIMIZERS = {"adamw": "adam", "lion": "lion", "sgd": "sgd"}  # Megatron's adam is AdamW (decoupled weight decay)
ACTIVATIONS = {"silu": "--swiglu", "relu2": "--squared-relu"}  # gated silu / plain squared ReLU; gelu is the default
FSDP_STRATEGY = {"zero2": "optim_grads", "zero3": "optim_grads_params", "fsdp": "optim_grads_params",
                 "hsdp": "optim_grads_params"}
BLACKWELL_MAJOR = 10


def check(job: Job) -> None:
    p, m, name = job.plan, job.model, "Megatron-LM"
    if not job.workload.training:
        raise unsupported(name, "an inference plan with pretrain_gpt.py", "use the vllm or sglang target")
    if p.recompute == "selective_mm":
        raise unsupported(name, "torchtitan's per-op selective recompute (selective_mm)", AGAIN)
    if p.schedule in ("zero_bubble", *V_SCHEDULES):
        raise unsupported(name, f"the {p.schedule} schedule in pretrain_gpt.py", AGAIN + " (1f1b or interleaved)")
    if p.optimizer not in OPTIMIZERS:
        raise unsupported(name, f"the {p.optimizer} optimizer", f"solve with --fix optimizer=adamw ({AGAIN})")
    if p.fp8_bf16_layers > m.num_layers // p.pp:  # TransformerConfig's bound on --num-layers-at-{start,end}-in-bf16
        raise unsupported(name, f"{p.fp8_bf16_layers} bf16 layers at each end (at most num_layers // pp = "
                                f"{m.num_layers // p.pp})", f"solve with --fix fp8_bf16_layers={m.num_layers // p.pp} or fewer")
    if p.offload == "params":
        raise unsupported(name, "parameter offload to the CPU", "solve without offload or with --range offload=optimizer")
    if p.precision in FP32_STORAGE or not p.master_weights:
        raise unsupported(name, "training without fp32 master weights" if not p.master_weights else f"{p.precision} GEMMs",
                          "solve with the default precision (bf16) and master weights")
    if p.precision == "fp8" and p.offload == "optimizer" and target_recipe(p.fp8_recipe, TARGET) != "delayed":
        raise unsupported(name, f"the {p.fp8_recipe} fp8 recipe with optimizer CPU offload (validate_args takes "
                                "--fp8-param-gather with --optimizer-cpu-offload under --fp8-recipe delayed only)",
                          "solve with --fix fp8_recipe=delayed")
    if p.kernels != "fused":
        raise unsupported(name, "unfused (eager PyTorch) kernels", "solve with the default --fix kernels=fused")
    if m.mlp_gated and m.activation != "silu" or not m.mlp_gated and m.activation not in ("gelu", "relu2"):
        raise unsupported(name, f"the {'gated ' if m.mlp_gated else ''}{m.activation} MLP activation",
                          "Megatron's GPT model offers SwiGLU, GeLU and squared ReLU")
    if m.parallel_residual or m.attention_sinks or m.position_embedding == "alibi":
        raise unsupported(name, "this architecture in its GPT model (parallel residual, attention sinks or ALiBi)",
                          "use the torchrun target with your own model code")
    if m.moe and (m.moe.router_bias or m.moe.expert_bias or m.moe.shared_expert_bias):
        raise unsupported(name, "biases in the router or experts of its MoE layers",
                          "use the torchrun target with your own model code")
    if p.layers_per_stage is not None and p.vpp > 1:
        raise unsupported(name, "uneven stages with virtual pipeline stages in these flags", AGAIN)
    if p.layers_per_stage is not None and p.pp > 2 and len(set(p.layers_per_stage[1:-1])) > 1:
        raise unsupported(name, f"the stage layout {list(p.layers_per_stage)} (only the first and last stage may differ)",
                          AGAIN)


def model_arguments(job: Job) -> list[str]:
    """The architecture of `job.model` in Megatron's GPT flags."""
    m, w = job.model, job.workload
    out = [f"--num-layers={m.num_layers}", f"--hidden-size={m.hidden_size}",
           f"--num-attention-heads={m.num_attention_heads}", f"--seq-length={w.seq_len}",
           f"--max-position-embeddings={max(w.seq_len, m.max_position_embeddings or 0)}",
           f"--normalization={'RMSNorm' if m.norm_type == 'rmsnorm' else 'LayerNorm'}",
           f"--attention-dropout={w.dropout}", f"--hidden-dropout={w.dropout}"]
    if m.ffn_hidden_size is not None:
        out.append(f"--ffn-hidden-size={m.ffn_hidden_size}")
    if m.mla is not None:
        a = m.mla
        out += ["--multi-latent-attention", f"--kv-lora-rank={a.kv_lora_rank}", f"--qk-head-dim={a.qk_nope_head_dim}",
                f"--qk-pos-emb-head-dim={a.qk_rope_head_dim}", f"--v-head-dim={a.v_head_dim}"]
        if a.q_lora_rank is not None:
            out.append(f"--q-lora-rank={a.q_lora_rank}")
    else:
        if m.num_kv_heads != m.num_attention_heads:
            out += ["--group-query-attention", f"--num-query-groups={m.num_kv_heads}"]
        if m.head_dim * m.num_attention_heads != m.hidden_size:
            out.append(f"--kv-channels={m.head_dim}")
    out.append("--position-embedding-type=" + {"rope": "rope", "learned": "learned_absolute", "none": "none"}[
        m.position_embedding])
    if m.qk_norm != "none":
        out.append("--qk-layernorm")
    if m.sliding_window is not None:
        out.append(f"--window-size={m.sliding_window},0")
    if m.activation in ACTIVATIONS:
        out.append(ACTIVATIONS[m.activation])
    if not (m.mlp_bias or m.attention_out_bias):
        out.append("--disable-bias-linear")
    if m.qkv_bias:
        out.append("--add-qkv-bias")
    if not m.tie_word_embeddings:
        out.append("--untie-embeddings-and-output-weights")
    if m.moe is not None:
        out += moe_arguments(job)
    if m.mtp_layers and w.train_mtp:
        out.append(f"--mtp-num-layers={m.mtp_layers}")
    return out


def moe_arguments(job: Job) -> list[str]:
    """Experts, routing and the dense/MoE layer pattern; with expert parallelism the all-to-all dispatcher,
    or the flex dispatcher on DeepEP (`Workload.moe_dispatcher`); the capacity factor and padding of token
    dropping (`Workload.moe_capacity_factor`)."""
    m, p = job.model.moe, job.plan
    out = [f"--num-experts={m.num_experts}", f"--moe-router-topk={m.experts_per_token}",
           f"--moe-ffn-hidden-size={m.expert_ffn_hidden_size}", "--moe-grouped-gemm",
           "--moe-router-load-balancing-type=aux_loss"]
    if p.ep > 1 and job.workload.moe_dispatcher == "deepep":
        out += ["--moe-token-dispatcher-type=flex", "--moe-flex-dispatcher-backend=deepep"]
    else:
        out.append(f"--moe-token-dispatcher-type={'alltoall' if p.ep > 1 else 'allgather'}")
    w = job.workload
    if w.moe_capacity_factor is not None:  # token dropping (dropless without)
        out.append(f"--moe-expert-capacity-factor={w.moe_capacity_factor:g}")
        if w.moe_pad_to_capacity:
            out.append("--moe-pad-expert-input-to-capacity")
    if m.num_shared_experts:
        out.append(f"--moe-shared-expert-intermediate-size={m.num_shared_experts * m.shared_expert_ffn_hidden_size}")
        if m.shared_expert_gate:
            out.append("--moe-shared-expert-gate")
    if m.dense_layers:
        out.append(f"--moe-layer-freq={layer_pattern(m.dense_layers, job.model.num_layers)}")
    if p.ep > 1 and p.ep_comm_overlap:
        out.append("--overlap-moe-expert-parallel-comm")
    return out


def layer_pattern(dense_layers: tuple[int, ...], layers: int) -> str:
    """Megatron's MoE layer pattern (a Python list expression; 1 = MoE layer, 0 = dense): compact when the
    dense layers lead, as in DeepSeek's first-k-dense layout."""
    k = len(dense_layers)
    if dense_layers == tuple(range(k)):
        return f"([0]*{k}+[1]*{layers - k})"
    return "[" + ",".join("0" if layer in dense_layers else "1" for layer in range(layers)) + "]"


def parallel_arguments(job: Job) -> list[str]:
    p, layers = job.plan, job.model.num_layers
    out = [f"--tensor-model-parallel-size={p.tp}", f"--pipeline-model-parallel-size={p.pp}",
           f"--context-parallel-size={p.cp}"]
    if p.cp > 1 and p.cp_comm != "p2p":  # p2p (ring attention) is Megatron-Core's default
        out.append(f"--cp-comm-type={p.cp_comm}")
    if p.cp > 1 and p.cp_comm == "a2a+p2p":  # USP: the Ulysses group size first, then the ring's
        u = plan_ulysses_degree(job.model, p, job.cluster)
        out += ["--hierarchical-context-parallel-sizes", str(u), str(p.cp // u)]
    if job.model.moe is not None:
        out += [f"--expert-model-parallel-size={p.ep}", f"--expert-tensor-parallel-size={p.etp}"]
    if p.sequence_parallel:
        out.append("--sequence-parallel")
        if p.tp_comm_overlap:
            out.append("--tp-comm-overlap")
    if p.vpp > 1:
        out.append(f"--num-layers-per-virtual-pipeline-stage={layers // (p.pp * p.vpp)}")
    if p.layers_per_stage is not None and len(set(p.layers_per_stage)) > 1:
        out += [f"--decoder-first-pipeline-num-layers={p.layers_per_stage[0]}",
                f"--decoder-last-pipeline-num-layers={p.layers_per_stage[-1]}"]
    return out


def recompute_arguments(job: Job) -> list[str]:
    p = job.plan
    if p.recompute == "full":
        if p.recompute_layers is None:
            return ["--recompute-granularity=full", "--recompute-method=uniform", "--recompute-num-layers=1"]
        return ["--recompute-granularity=full", "--recompute-method=block", f"--recompute-num-layers={p.recompute_layers}"]
    if p.recompute == "selective":
        return ["--recompute-granularity=selective", "--recompute-modules", *p.recompute_modules]
    if p.offload_activations:  # every layer's activations but the last one's go to the host (fewer than the layers)
        return [f"--cpu-offloading-num-layers={job.model.num_layers - 1}"]
    return []


def precision_arguments(job: Job) -> list[str]:
    p = job.plan
    out = ["--fp16"] if p.precision == "fp16" else ["--bf16"]
    if p.precision == "fp8":
        recipe = target_recipe(p.fp8_recipe, TARGET)
        out += [f"--fp8-format={FP8_FORMATS[recipe]}", f"--fp8-recipe={recipe}"]
        if p.fp8_bf16_layers:
            k = p.fp8_bf16_layers
            out += ["--first-last-layers-bf16", f"--num-layers-at-start-in-bf16={k}", f"--num-layers-at-end-in-bf16={k}"]
        if p.sharding != "none":  # fp8 parameters, no bf16 copy beside a cached fp8 one (constraints.memory.fp8_weight_cache)
            out.append("--fp8-param-gather")
    out.append(f"--attention-backend={ATTENTION_BACKENDS[p.attention_kernel]}")
    return out


ATTENTION_BACKENDS = {"flash": "auto", "flash2": "flash", "flash3": "flash", "cudnn": "fused", "eager": "unfused"}
"""Megatron-LM's --attention-backend (AttnBackend: flash, fused, unfused, local, auto) for each
`Plan.attention_kernel`: Transformer Engine's flash backend runs FlashAttention-3 on Hopper where the
flash-attn 3 package is installed and FlashAttention-2 otherwise (the job's Python environment decides
which), fused is cuDNN's, auto is TE's own choice (cuDNN on Hopper and Blackwell)."""


def optimizer_arguments(job: Job) -> list[str]:
    """Optimizer, sharding of the model states and the data-parallel overlaps."""
    p = job.plan
    out = [f"--optimizer={OPTIMIZERS[p.optimizer]}"]
    if p.sharding == "zero1":
        out.append("--use-distributed-optimizer")
    elif p.sharding in FSDP_STRATEGY:
        out += ["--use-megatron-fsdp", f"--data-parallel-sharding-strategy={FSDP_STRATEGY[p.sharding]}",
                "--ckpt-format=fsdp_dtensor"]  # the only checkpoint format Megatron-FSDP saves
        if p.sharding == "hsdp":
            out.append(f"--num-distributed-optimizer-instances={p.dp * p.cp // p.hsdp_shard_size}")
    if p.offload == "optimizer":
        out += ["--optimizer-cpu-offload", "--use-precision-aware-optimizer"]
    if p.grad_reduce_overlap and p.dp * p.cp > 1:
        out.append("--overlap-grad-reduce")
    if p.param_gather_overlap and p.sharding != "none" and p.dp * p.cp > 1:
        out.append("--overlap-param-gather")
    return out


def arguments(job: Job) -> list[str]:
    """Every ``pretrain_gpt.py`` flag the plan sets."""
    check(job)
    batch = [f"--micro-batch-size={job.plan.micro_batch_size}", f"--global-batch-size={job.workload.global_batch_size}"]
    return (model_arguments(job) + parallel_arguments(job) + recompute_arguments(job) + precision_arguments(job)
            + optimizer_arguments(job) + batch)


def mock_data_arguments(job: Job) -> list[str]:
    """What ``launch.sh`` passes when it is given no arguments: mock data with the model's vocabulary."""
    return ["--mock-data", "--tokenizer-type=NullTokenizer", f"--vocab-size={job.model.vocab_size}",
            "--train-iters=100", "--lr=3e-4"]


def environment(job: Job) -> list[Variable]:
    p, gpu = job.plan, job.cluster.node.gpu
    major = int((gpu.compute_capability or "9.0").split(".")[0])
    fsdp = p.sharding in FSDP_STRATEGY
    out = []
    if fsdp:
        out.append(Variable("CUDA_DEVICE_MAX_CONNECTIONS", "8", "Megatron-FSDP overlaps its gathers on several "
                                                                "hardware queues (validate_args rejects 1 with FSDP)"))
    elif (p.tp > 1 or p.cp > 1) and major < BLACKWELL_MAJOR:
        out.append(Variable("CUDA_DEVICE_MAX_CONNECTIONS", "1", f"one hardware queue keeps the TP/CP communication "
                                                                f"ahead of the GEMMs it overlaps on {gpu.architecture} "
                                                                "(validate_args asserts it)"))
    return out + nccl_environment(job.cluster)


def emit(job: Job) -> dict[str, str]:
    script_name = job.script or SCRIPT
    words = torchrun_words(job) + [script_name, *arguments(job), *job.script_args, "$@"]
    body = ["# Arguments to this script go on to " + script_name + " (your --data-path, --tokenizer-type/-model,",
            "# --save, --lr, --train-iters ...); with none it trains 100 steps on Megatron's mock data.",
            "if (( $# == 0 )); then",
            "  set -- " + " ".join(mock_data_arguments(job)),
            "fi",
            *rendezvous_lines(job), "exec " + command(words)]
    return {"launch.sh": script(job.summary, environment(job), body)}
