"""`Plan` (how a model runs: parallel degrees and execution choices) and `Workload` (what it runs).

Both are the cost model's inputs; the solver re-exports them. Conventions:
- World size = tp · pp · dp · cp. Expert parallelism lives inside it (Megatron-Core's convention):
  ``ep · etp`` must divide ``dp · cp · tp``; ``etp`` (expert tensor parallel) defaults to ``tp``.
- ``sharding`` of model states over the data-parallel group (dp · cp ranks, as Megatron's distributed
  optimizer and FSDP shard over DP × CP): ``zero1`` optimizer states and master weights, ``zero2`` +
  gradients, ``zero3``/``fsdp`` + parameters, ``hsdp`` = fsdp within groups of ``hsdp_shard_size``
  ranks, replicated across them. ``zero_stage`` is an alias (0–3) kept for DeepSpeed users.
- ``precision`` is the GEMM precision. With ``master_weights`` (the default, "mixed precision"), bf16 /
  fp16 / fp8 training keeps fp32 master weights, fp32 gradients for accumulation and reduction, and fp32
  optimizer states (Megatron-LM, DeepSpeed, FSDP's MixedPrecision); without, weights, gradients and
  states stay in the parameter dtype (plain ``model.to(bfloat16)`` training). fp8 keeps bf16 weights and
  activations (Transformer Engine casts per GEMM). ``tf32`` is fp32 training (fp32 weights, activations
  and states) whose GEMMs run on the TF32 tensor cores (PyTorch's ``allow_tf32``; Ampere and later). ``fp8_recipe`` is how fp8 GEMM inputs get their scales
  (`constraints.fp8`: delayed, tensorwise, rowwise, blockwise, mxfp8); None is the stack's own default
  (``stacks.json`` ``fp8.recipes``, first entry); only an fp8 plan has one. ``fp8_bf16_layers`` k keeps the
  model's first k and last k decoder layers in bf16 under fp8 (Megatron-LM ``--first-last-layers-bf16``;
  the ends are where fp8 training is most sensitive, Micikevicius et al. 2022 §4): they run and keep
  activations as a bf16 plan's, wherever the pipeline puts them (a serving plan's decode still prices every
  layer at the plan's precision).
- ``kernels``: ``fused`` = Megatron-Core / Transformer Engine (fused norms, fused SwiGLU, fused
  cross-entropy); ``unfused`` = PyTorch eager modules as HF ``transformers`` writes them (the recipe the
  memory tests measure). ``attention_kernel``: ``flash`` is the stack's own flash kernel, ``flash2``,
  ``flash3`` and ``cudnn`` name one (FlashAttention-2, FlashAttention-3, cuDNN fused attention: priced
  relative to the stack's, `constraints.attention`); none keeps an s² matrix; ``eager`` materialises it.
- ``kv_cache_dtype`` (serving): ``auto`` caches keys and values in the activations' dtype, ``fp8`` in one
  byte (vLLM's and SGLang's ``--kv-cache-dtype fp8`` / ``fp8_e4m3``, a per-tensor scale): half the cache,
  so twice the sequences in the same memory and half the bytes a decode step reads for them.
- ``recompute``: ``selective`` recomputes the modules in ``recompute_modules`` (Megatron-Core
  ``--recompute-granularity selective --recompute-modules ...``; the default, ``core_attn``, is the
  attention core of Korthikanti et al. 2022 §5; ``layernorm``, ``mla_up_proj``, ``mlp``, ``moe_act``,
  ``moe`` and ``shared_experts`` are Megatron-Core's other modules); ``selective_mm`` is
  PyTorch selective activation checkpointing with torchtitan's op policy (keep the outputs of attention
  and of every other matmul, recompute the rest); ``full`` keeps only each layer's input and recomputes the layer — on every layer, or on the
  first ``recompute_layers`` of each pipeline rank's layers (Megatron-Core ``--recompute-method block
  --recompute-num-layers``).
- ``cp_comm``: how context parallelism exchanges the sequence (Megatron-Core ``--cp-comm-type``): ``p2p``
  is ring attention (each rank keeps its 1/cp of the sequence and passes K and V around the ring, Liu et
  al. 2023); ``a2a`` is DeepSpeed-Ulysses (Jacobs et al. 2023): all-to-alls turn the sequence split into
  a head split before attention and back after, so each rank attends over the whole sequence with
  1/cp of the heads; ``a2a+p2p`` is USP, Ulysses inside groups of u ranks and a ring across them
  (`constraints.usp`).
- ``offload_activations``: what a micro-batch's layers store for the backward (after recompute) goes to
  pinned host memory as the forward produces it and comes back a layer ahead of the backward that needs
  it, on copy streams beside the compute (PyTorch's ``save_on_cpu`` with prefetch: torchtune's and TRL's
  ``activation_offloading``; Megatron-Core ``--cpu-offloading-num-layers``): the GPU keeps two layers'
  worth, the host the rest (`constraints.memory`), and the copies over PCIe cost what the passes' compute
  does not hide (`constraints.timing`).
- ``persistent_grads``: gradient buffers live across steps (DDP, FSDP, Megatron, DeepSpeed). A plain
  single-process loop with ``zero_grad(set_to_none=True)`` frees them each step (False).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, model_validator

from parallelplan.hardware.spec import MAX_GPUS

Degree = Annotated[StrictInt, Field(ge=1, le=MAX_GPUS)]
Count = Annotated[StrictInt, Field(ge=1, le=2**24)]  # tokens per sequence, sequences per step

SHARDINGS = ("none", "zero1", "zero2", "zero3", "fsdp", "hsdp")
OFFLOAD_SHARDING = {"optimizer": ("zero1", "zero2", "zero3", "fsdp", "hsdp"), "params": ("zero3", "fsdp", "hsdp")}
"""The shardings each offload runs on: ZeRO-Offload and ZeRO-Infinity (DeepSpeed offload_optimizer /
offload_param) and FSDP's CPUOffload move a sharding stage's partition to the host."""
RECOMPUTES = ("none", "selective", "selective_mm", "full")
RECOMPUTE_MODULES = ("core_attn", "layernorm", "mla_up_proj", "mlp", "moe_act", "moe", "shared_experts")
RecomputeModule = Literal["core_attn", "layernorm", "mla_up_proj", "mlp", "moe_act", "moe", "shared_experts"]
PRECISIONS = ("bf16", "fp16", "fp8", "fp32", "tf32")
FP32_STORAGE = ("fp32", "tf32")
"""Precisions that keep fp32 weights and activations: tf32 is fp32 training whose GEMMs round their inputs
to TF32 (10-bit mantissa, fp32 accumulation) in the tensor cores (PyTorch's allow_tf32)."""
FP8_RECIPES = ("delayed", "tensorwise", "rowwise", "blockwise", "mxfp8")
OPTIMIZERS = ("adamw", "adamw8bit", "adafactor", "lion", "sgd", "came")
OFFLOADS = ("none", "optimizer", "params")
SCHEDULES = ("1f1b", "interleaved", "zero_bubble", "dualpipev", "zbv")
V_SCHEDULES = ("dualpipev", "zbv")
"""Schedules whose two model chunks per rank run down and back up the ranks (a V): rank i holds chunks i and
2·pp − 1 − i, so rank 0 holds both the embedding and the LM head."""
SCHEDULE_NAMES = {"1f1b": "1F1B", "interleaved": "interleaved", "zero_bubble": "zero-bubble (ZB-H1)",
                  "dualpipev": "DualPipeV", "zbv": "ZB-V"}
"""Each schedule as the literature names it."""
KERNELS = ("fused", "unfused")
ATTENTION_KERNELS = ("flash", "flash2", "flash3", "cudnn", "eager")
KV_CACHE_DTYPES = ("auto", "fp8")
CP_COMMS = ("p2p", "a2a", "a2a+p2p")
WORKLOAD_KINDS = ("pretrain", "finetune", "inference", "score", "rlhf")
RL_ALGORITHMS = ("dpo", "ppo", "grpo")
"""Preference / RL algorithms (`Workload.algorithm`): DPO is one model's step (`constraints.dpo`); PPO and
GRPO are several roles' (`constraints.rl`, searched by `solver.solve_rl`)."""
GENERATING_ALGORITHMS = ("ppo", "grpo")
"""The algorithms whose step generates its training data (`Rollout`)."""
PEFT_METHODS = ("lora", "qlora")
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "q_a_proj", "q_b_proj", "kv_a_proj_with_mqa", "kv_b_proj",
                "gate_proj", "up_proj", "down_proj")
"""LoRA target modules, named as Llama / DeepSeek checkpoints in ``transformers`` name them (peft's
``target_modules``); ``all-linear`` (peft's shorthand) is every one the model has."""
STACKS = ("megatron", "megatron-2022", "torchtitan", "deepspeed", "maxtext", "custom")
"""The software stacks of ``data/stacks.json`` (`Workload.stack`)."""
_ZERO_STAGE_SHARDING = {0: "none", 1: "zero1", 2: "zero2", 3: "zero3"}


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Plan(_Frozen):
    """One way to run a model. Every field has a default; see the module docstring for conventions."""

    tp: Degree = 1
    pp: Degree = 1
    dp: Degree = 1
    cp: Degree = 1
    cp_comm: Literal["p2p", "a2a", "a2a+p2p"] = "p2p"
    ep: Degree = 1
    etp: Degree | None = None
    vpp: Degree = 1
    micro_batch_size: Degree = 1
    sequence_parallel: bool = False
    sharding: Literal["none", "zero1", "zero2", "zero3", "fsdp", "hsdp"] = "none"
    zero_stage: Annotated[StrictInt, Field(ge=0, le=3)] | None = None
    hsdp_shard_size: Degree | None = None
    recompute: Literal["none", "selective", "selective_mm", "full"] = "none"
    recompute_layers: Degree | None = None
    recompute_modules: tuple[RecomputeModule, ...] | None = None
    precision: Literal["bf16", "fp16", "fp8", "fp32", "tf32"] = "bf16"
    fp8_recipe: Literal["delayed", "tensorwise", "rowwise", "blockwise", "mxfp8"] | None = None
    fp8_bf16_layers: Annotated[StrictInt, Field(ge=0)] = 0
    master_weights: bool = True
    optimizer: Literal["adamw", "adamw8bit", "adafactor", "lion", "sgd", "came"] = "adamw"
    offload: Literal["none", "optimizer", "params"] = "none"
    offload_activations: bool = False
    schedule: Literal["1f1b", "interleaved", "zero_bubble", "dualpipev", "zbv"] | None = None
    layers_per_stage: tuple[Degree, ...] | None = None
    kernels: Literal["fused", "unfused"] = "fused"
    attention_kernel: Literal["flash", "flash2", "flash3", "cudnn", "eager"] = "flash"
    kv_cache_dtype: Literal["auto", "fp8"] = "auto"
    persistent_grads: bool = True
    tp_comm_overlap: bool = True
    ep_comm_overlap: bool = True
    grad_reduce_overlap: bool = True
    param_gather_overlap: bool = True

    @model_validator(mode="after")
    def _normalise(self) -> Plan:
        """Resolve the aliases (zero_stage, etp, schedule) so that one plan has one form."""
        if self.zero_stage is not None:
            implied = _ZERO_STAGE_SHARDING[self.zero_stage]
            if self.sharding not in ("none", implied) and not (self.zero_stage == 3 and self.sharding == "fsdp"):
                raise ValueError(f"zero_stage {self.zero_stage} contradicts sharding '{self.sharding}'")
            if self.sharding == "none":
                object.__setattr__(self, "sharding", implied)
        if self.etp is None:
            object.__setattr__(self, "etp", self.tp)
        if self.schedule is None:
            object.__setattr__(self, "schedule", "interleaved" if self.vpp > 1 else "1f1b")
        if self.sharding == "hsdp" and self.hsdp_shard_size is None:
            raise ValueError("sharding 'hsdp' needs hsdp_shard_size (the ranks each replica is sharded over)")
        if self.sharding != "hsdp" and self.hsdp_shard_size is not None:
            raise ValueError("hsdp_shard_size is only meaningful with sharding 'hsdp'")
        if self.recompute_layers is not None and self.recompute != "full":
            raise ValueError("recompute_layers applies to recompute 'full' only")
        if self.recompute == "selective":
            modules = self.recompute_modules or ("core_attn",)
            canonical = tuple(m for m in RECOMPUTE_MODULES if m in modules)
            object.__setattr__(self, "recompute_modules", canonical)
        elif self.recompute_modules is not None:
            raise ValueError("recompute_modules applies to recompute 'selective' only")
        if self.fp8_recipe is not None and self.precision != "fp8":
            raise ValueError(f"fp8_recipe applies to precision 'fp8' only (precision is '{self.precision}')")
        if self.fp8_bf16_layers and self.precision != "fp8":
            raise ValueError(f"fp8_bf16_layers applies to precision 'fp8' only (precision is '{self.precision}')")
        if self.layers_per_stage is not None and len(self.layers_per_stage) != self.pp:
            raise ValueError(f"layers_per_stage lists {len(self.layers_per_stage)} stages but pp is {self.pp}")
        return self

    @property
    def world_size(self) -> int:
        return self.tp * self.pp * self.dp * self.cp

    @property
    def shard_group(self) -> int:
        """Ranks that model states are sharded over (1 when unsharded): dp·cp, or the HSDP shard size."""
        if self.sharding == "none":
            return 1
        if self.sharding == "hsdp":
            assert self.hsdp_shard_size is not None
            return self.hsdp_shard_size
        return self.dp * self.cp


class Peft(_Frozen):
    """Parameter-efficient fine-tuning: LoRA (Hu et al. 2021) adds ``B·A`` (A: r × in, B: out × r, scaled by
    alpha / r) beside each targeted linear of every decoder layer and trains only those; the base stays
    frozen. QLoRA (Dettmers et al. 2023) also stores the frozen linears of the decoder layers in 4-bit NF4
    with double quantisation and computes in bf16. ``target_modules``: names from `LORA_TARGETS`, or
    ``("all-linear",)``, the QLoRA paper's choice (§4: adapters on every linear layer match full
    fine-tuning) and our default. Routed experts and the router stay frozen and un-adapted (transformers
    ≥ 5 stores routed experts as fused 3-D parameters, which peft's ``target_modules`` does not reach);
    shared experts are MLPs and take the MLP targets."""

    method: Literal["lora", "qlora"] = "lora"
    rank: Annotated[StrictInt, Field(ge=1, le=65536)] = 16
    alpha: Annotated[float, Field(gt=0.0, allow_inf_nan=False)] = 32.0
    target_modules: tuple[str, ...] = ("all-linear",)
    dropout: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0

    @model_validator(mode="after")
    def _known_targets(self) -> Peft:
        if not self.target_modules:
            raise ValueError("target_modules is empty: name at least one of all-linear, " + ", ".join(LORA_TARGETS))
        unknown = [t for t in self.target_modules if t not in (*LORA_TARGETS, "all-linear")]
        if unknown:
            raise ValueError(f"target_modules {', '.join(unknown)}: allowed are all-linear, {', '.join(LORA_TARGETS)}")
        return self


class Rollout(_Frozen):
    """What one PPO / GRPO step generates and trains on (`Workload.rollout`): each of the step's prompts
    (``global_batch_size``, of ``seq_len`` tokens) gets ``group_size`` responses of ``response_len``
    tokens; the policy then trains on those sequences in updates of ``mini_batch_size`` sequences
    (None: one update on all of them) for ``epochs`` passes. ``group_size`` None is the algorithm's
    usual default: 1 for PPO, 8 for GRPO (TRL's ``GRPOConfig.num_generations``; GRPO needs ≥ 2, its
    advantage is each response's reward against its group's). ``reward_model``: a learned reward model
    scores the responses (None: PPO yes, as in Ouyang et al. 2022; GRPO no, a rule or verifier scores
    them as in DeepSeek-R1 — no GPU time)."""

    response_len: Annotated[StrictInt, Field(ge=1, le=2**24)] = 1024
    group_size: Annotated[StrictInt, Field(ge=1, le=4096)] | None = None
    mini_batch_size: Count | None = None
    epochs: Annotated[StrictInt, Field(ge=1, le=64)] = 1
    reward_model: bool | None = None


class Workload(_Frozen):
    """What runs: ``seq_len`` tokens per sequence, ``global_batch_size`` sequences per optimizer step
    (for ``inference``: sequences served at once, each with a ``seq_len``-token context, the next token's
    logits computed at the last position only, as serving engines and ``generate`` do; for ``score``: one
    forward without gradients over ``global_batch_size`` full sequences, every position's log-probability
    computed and no KV cache kept — an RL step's reference, reward and critic forwards, or an evaluation).
    ``dropout`` is the hidden/attention dropout probability (0 in modern pre-training); ``train_mtp``
    trains DeepSeek-V3's multi-token-prediction modules too. ``stack`` is the software that runs it
    (``data/stacks.json``: its attention kernel and overlap mechanisms price the step; a launch target
    implies its stack). ``moe_dispatcher`` is how MoE tokens reach their experts' GPUs: ``alltoall``
    (NCCL all-to-alls of every routed copy: Megatron-Core's alltoall dispatcher, torchtitan's standard
    backend) or ``deepep`` (DeepEP: one copy per remote node, then NVLink; Megatron-Core's flex
    dispatcher, torchtitan's deepep backend) — where the stack offers it (``stacks.json``).
    ``moe_imbalance``: routed tokens on the busiest expert-parallel rank over the mean (1 = balanced, as
    the published benchmarks force with their balanced gates; learned routing measures more). That rank
    sets the pace: its expert GEMMs, permutations, activations and received tokens scale with it.
    ``moe_capacity_factor``: each expert takes at most that many times its balanced share of routed tokens
    and drops the rest (GShard / Switch Transformer token dropping; Megatron-Core
    ``--moe-expert-capacity-factor``); None is dropless. With ``moe_pad_to_capacity`` every expert computes
    exactly its capacity (``--moe-pad-expert-input-to-capacity``: static shapes, padding included).
    ``peft`` (fine-tuning and RLHF): train LoRA / QLoRA adapters on a frozen base (`Peft`).
    ``algorithm`` (``kind="rlhf"``): ``dpo`` (Rafailov et al. 2023) trains the policy on a chosen and a
    rejected sequence per example — ``global_batch_size`` counts examples (pairs) — beside a frozen
    reference model on the same GPUs (`constraints.dpo`); ``ppo`` (Schulman et al. 2017, as Ouyang et al.
    2022 run it: actor, critic, reference and reward models) and ``grpo`` (Shao et al. 2024, DeepSeekMath:
    actor and reference, ``group_size`` responses per prompt, no critic) generate their data each step
    (``rollout``, `Rollout`): ``seq_len`` is the prompt, ``global_batch_size`` the prompts per step, and
    the step's roles are placed and planned by `solver.solve_rl` (`constraints.rl`).
    ``output_len`` (kind inference): tokens each sequence generates after its ``seq_len``-token prompt —
    the decode after the prefill (`constraints.generation`), its KV cache held to the end; 0 prices the
    prefill alone. ``max_concurrency`` (kind inference): sequences one data-parallel replica holds at
    once (vLLM's ``--max-num-seqs``, SGLang's ``--max-running-requests``): its sequences run in waves of at
    most this many, the KV cache sized for one wave; None: all of them at once.
    ``example_len`` (training and score): the mean tokens of one example of a dataset whose examples are
    shorter than ``seq_len``; None: every sequence is ``seq_len`` tokens of data (pre-training's concatenated
    documents). Unpacked (``packing`` False, TRL's and torchtune's default) each sequence is one example padded
    to ``seq_len``: the padding is computed like data (every GEMM; attention too under SDPA or eager, whose
    masks skip no work) and throughput counts the examples' tokens only (padding to a batch's longest
    example costs between the example and ``seq_len``). Packed (``packing`` True: TRL ``packing=True``,
    torchtune ``packed=True``) the examples lie end to end in sequences of ``seq_len`` tokens, each
    attending within itself: flash-attention's variable-length kernel runs the attention core over the
    example's own keys (an eager kernel still computes the whole masked sequence). Examples of equal
    length are assumed: a spread of lengths l raises packed attention to Σl² / Σl keys per token."""

    kind: Literal["pretrain", "finetune", "inference", "score", "rlhf"] = "pretrain"
    seq_len: Count
    global_batch_size: Count
    dropout: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0
    train_mtp: bool = False
    stack: Literal["megatron", "megatron-2022", "torchtitan", "deepspeed", "maxtext", "custom"] = "megatron"
    moe_dispatcher: Literal["alltoall", "deepep"] = "alltoall"
    moe_imbalance: Annotated[float, Field(ge=1.0, allow_inf_nan=False)] = 1.0
    moe_capacity_factor: Annotated[float, Field(gt=0.0, le=64.0, allow_inf_nan=False)] | None = None
    moe_pad_to_capacity: bool = False
    peft: Peft | None = None
    algorithm: Literal["dpo", "ppo", "grpo"] | None = None
    output_len: Annotated[StrictInt, Field(ge=0, le=2**24)] = 0
    max_concurrency: Count | None = None
    rollout: Rollout | None = None
    example_len: Count | None = None
    packing: bool = False

    @model_validator(mode="after")
    def _stack_dispatches(self) -> Workload:
        if self.peft is not None and self.kind not in ("finetune", "rlhf"):
            raise ValueError(f"peft {self.peft.method!r} needs kind 'finetune' or 'rlhf', got kind {self.kind!r}")
        if self.algorithm in GENERATING_ALGORITHMS:
            rollout = self.rollout or Rollout()
            if self.algorithm == "grpo" and rollout.group_size == 1:
                raise ValueError("rollout.group_size: GRPO compares each response with the others of its prompt's "
                                 "group, so it needs at least 2 (TRL's default: 8)")
            if rollout.group_size is None or rollout.reward_model is None:
                grpo = self.algorithm == "grpo"
                rollout = rollout.model_copy(update={
                    "group_size": rollout.group_size or (8 if grpo else 1),
                    "reward_model": (not grpo) if rollout.reward_model is None else rollout.reward_model})
            object.__setattr__(self, "rollout", rollout)
            sequences = self.global_batch_size * rollout.group_size
            if rollout.mini_batch_size is not None and sequences % rollout.mini_batch_size:
                raise ValueError(f"rollout.mini_batch_size {rollout.mini_batch_size} must divide the step's {sequences} "
                                 f"sequences ({self.global_batch_size} prompts x {rollout.group_size} responses)")
        elif self.rollout is not None:
            raise ValueError(f"rollout: only kind 'rlhf' with algorithm {' or '.join(GENERATING_ALGORITHMS)} "
                             f"generates, got kind {self.kind!r}, algorithm {self.algorithm!r}")
        if self.max_concurrency is not None and self.kind != "inference":
            raise ValueError(f"max_concurrency: sequences served at once apply to kind 'inference', got kind {self.kind!r}")
        if self.output_len and self.kind != "inference":
            raise ValueError(f"output_len: generated tokens are priced for kind 'inference', got kind {self.kind!r}")
        if self.example_len is not None and (self.kind == "inference" or self.algorithm in GENERATING_ALGORITHMS):
            raise ValueError(f"example_len: examples shorter than seq_len apply to training and score datasets, not "
                             f"to kind {self.kind!r}{f' algorithm {self.algorithm!r}' if self.algorithm else ''}, "
                             "whose sequences are the prompt (and its response_len / output_len)")
        if self.example_len is not None and self.example_len > self.seq_len:
            raise ValueError(f"example_len {self.example_len} exceeds seq_len {self.seq_len}: a sequence holds at "
                             "least one example; raise seq_len to the longest example")
        if self.packing and self.example_len is None:
            raise ValueError("packing lays examples end to end in each sequence: give example_len, their mean tokens")
        if self.moe_pad_to_capacity and self.moe_capacity_factor is None:
            raise ValueError("moe_pad_to_capacity pads each expert to its capacity: give moe_capacity_factor too")
        if self.moe_pad_to_capacity and self.moe_dispatcher == "deepep":  # Megatron-Core TransformerConfig's check
            raise ValueError("moe_pad_to_capacity: DeepEP (Megatron-Core's flex dispatcher) does not pad to capacity; "
                             "use moe_dispatcher alltoall")
        if (self.kind == "rlhf") != (self.algorithm is not None):
            raise ValueError(f"algorithm: kind 'rlhf' needs one of {', '.join(RL_ALGORITHMS)}, and only it takes one "
                             f"(got kind {self.kind!r}, algorithm {self.algorithm!r})")
        from parallelplan.constraints.efficiency import stacks

        offered = stacks()[self.stack]["moe_dispatchers"]
        if self.moe_dispatcher not in offered:
            raise ValueError(f"moe_dispatcher {self.moe_dispatcher!r}: the {self.stack} stack offers "
                             f"{', '.join(offered)}")
        if self.moe_capacity_factor is not None and not stacks()[self.stack]["moe_token_dropping"]:
            dropping = [name for name, stack in stacks().items() if stack["moe_token_dropping"]]
            raise ValueError(f"moe_capacity_factor: the {self.stack} stack runs dropless MoE only; token dropping "
                             f"runs on {', '.join(dropping)}")
        return self

    @property
    def training(self) -> bool:
        return self.kind not in ("inference", "score")

    @property
    def data_tokens_per_sequence(self) -> int:
        """Tokens of data in one sequence: an unpacked example's own (the rest is padding), else all of them."""
        return self.example_len if self.example_len is not None and not self.packing else self.seq_len

    @property
    def data_tokens_per_step(self) -> int:
        """Tokens of data one step processes (what throughput and token budgets count)."""
        return self.global_batch_size * self.sequences_per_example * self.data_tokens_per_sequence

    @property
    def example_span(self) -> int:
        """Tokens one example's attention spans: the model's FLOPs per token of data."""
        return self.example_len or self.seq_len

    @property
    def attention_span(self) -> int:
        """Tokens a flash-attention kernel runs each query's attention over: a packed example's own, else
        the whole sequence (padding included)."""
        return self.example_len if self.packing and self.example_len is not None else self.seq_len

    @property
    def sequences_per_example(self) -> int:
        """Sequences one example of the global batch runs through the model: DPO's chosen and rejected, 2."""
        return 2 if self.algorithm == "dpo" else 1
