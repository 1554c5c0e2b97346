"""Bytes of model states per parameter on one GPU: weights, gradients, fp32 master weights, optimizer
states, and how ZeRO / FSDP / HSDP shard each and offload removes them.

Per parameter (Rajbhandari et al. 2020, "ZeRO", §3; Megatron-LM ``theoretical_memory_usage.py``:
18 bytes per parameter without, 6 + 12/d with the distributed optimizer):
- working weights: 2 bytes (bf16, fp16, and fp8 training, which keeps bf16 weights and casts per GEMM),
  4 bytes (fp32); FSDP/HSDP with mixed precision keep none between uses (the fp32 shard is the master);
- with master weights (mixed precision): a 4-byte fp32 master copy, 4-byte fp32 gradients (Megatron
  accumulates and reduces gradients in fp32), and optimizer states in fp32; without: gradients and
  states in the weight dtype;
- optimizer states: AdamW 2 moments; 8-bit AdamW 2 one-byte moments (bitsandbytes block-wise
  quantisation, plus one fp32 absmax per 256-value block and moment); Lion 1 moment (Chen et al. 2023);
  SGD with momentum 1; Adafactor its factored second moment; CAME (Luo et al. 2023, the authors'
  ``came_pytorch``) a full first moment, the factored second moment and a factored confidence residual
  (`FactoredStates`, from the model's matrix shapes).
Sharding groups: ZeRO-1 shards master weights and optimizer states, ZeRO-2 also gradients, ZeRO-3 / FSDP
/ HSDP also weights; dense parameters over the data-parallel group (dp · cp, or the HSDP shard size),
routed experts over the expert-data-parallel group dp · cp · tp / (ep · etp) (Megatron-Core). Offloading
the optimizer moves master weights and optimizer states to the host; offloading parameters (ZeRO-Infinity,
FSDP CPU offload) also the weights, leaving only what is gathered for the layer being computed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from parallelplan.constraints.arrays import PlanArrays, code, fp32_storage
from parallelplan.constraints.plan import Plan

ADAM_8BIT_BLOCK = 256
"""Values per fp32 absmax in bitsandbytes' block-wise 8-bit optimizer states: its ``Optimizer2State``
allocates one absmax per 256 values (``blocksize = 256``), not the paper's 2048 (Dettmers et al. 2022, §2);
measured on the library's state tensors (tests/test_optimizer_states.py)."""


@dataclass(frozen=True)
class FactoredStates:
    """State elements per parameter of the optimizers that factor a matrix's statistics into a row and a
    column vector (r + c values instead of r·c; vectors keep a full one), from the model's matrix shapes
    (`constraints.structure.model_facts`). Adafactor (Shazeer & Stern 2018, torch.optim.Adafactor): the
    factored second moment, no first moment. CAME (Luo et al. 2023, ACL; ``came_pytorch.CAME``): a full
    first moment, the factored second moment and the factored confidence residual (vectors: a full second
    moment, no residual)."""

    adafactor: float
    came: float


@dataclass
class BytesPerParam:
    """(n,) arrays: bytes per parameter before sharding. ``weights`` is the compute copy (what GEMMs read
    and FSDP gathers); ``resident_weights`` what stays on the GPU of it between uses."""

    weights: np.ndarray
    resident_weights: np.ndarray
    grads: np.ndarray
    master: np.ndarray
    optimizer: np.ndarray


def bytes_per_param(p: PlanArrays, factored: FactoredStates) -> BytesPerParam:
    fp32 = fp32_storage(p)
    weights = np.where(fp32, 4.0, 2.0)
    mixed = p.master_weights & ~fp32
    state = np.where(mixed | fp32, 4.0, weights)
    grads = np.where(mixed, 4.0, weights)
    master = np.where(mixed, 4.0, 0.0)
    opt = p.optimizer
    moments = np.select(
        [opt == code("optimizer", "adamw"), opt == code("optimizer", "adamw8bit"), opt == code("optimizer", "lion"),
         opt == code("optimizer", "sgd"), opt == code("optimizer", "came")],
        [2.0 * state, 2.0 * (1.0 + 4.0 / ADAM_8BIT_BLOCK), state, state, factored.came * state],
        default=factored.adafactor * state,
    )
    # FSDP / HSDP with mixed precision shard the fp32 parameters themselves (the master copy) and cast
    # to the compute dtype only in the per-layer all-gather (FSDP2 MixedPrecisionPolicy, FSDP1
    # MixedPrecision): no resident low-precision copy. DeepSpeed ZeRO-3 keeps fp16/bf16 partitions too.
    fsdp = (p.sharding == code("sharding", "fsdp")) | (p.sharding == code("sharding", "hsdp"))
    resident = np.where(fsdp & mixed, 0.0, weights)
    return BytesPerParam(weights=weights, resident_weights=resident, grads=grads, master=master, optimizer=moments)


SERVED_FP8_WEIGHT_BYTES = 1.0
"""Bytes per GEMM weight an inference engine holds and reads for an fp8 plan: vLLM's and SGLang's
``--quantization fp8`` (a bf16 checkpoint quantized as it loads) and fp8 checkpoints (DeepSeek-V3's) keep
the linears' weights in fp8, with one fp32 scale per tensor, channel or 128 × 128 block (under 0.03% more);
the embedding, the LM head and the norms stay in the checkpoint's 16 bits (vLLM's Fp8Config quantizes
LinearBase layers only)."""


def served_gemm_weight_bytes(p: PlanArrays, weights: np.ndarray) -> np.ndarray:
    """Bytes per GEMM weight (decoder linears and experts) an inference engine holds and reads for each plan:
    `SERVED_FP8_WEIGHT_BYTES` for an fp8 plan, else ``weights`` (the plan's 16 or 32 bits)."""
    return np.where(p.precision == code("precision", "fp8"), SERVED_FP8_WEIGHT_BYTES, weights)


@dataclass(frozen=True)
class StateRecipe:
    """One plan's model states per parameter before sharding (`bytes_per_param` of the plan), in words."""

    bytes_per_param: float
    terms: str
    """e.g. "bf16 weights 2 + fp32 gradients 4 + fp32 master weights 4 + adamw states 8"."""

    def __str__(self) -> str:
        return f"{self.bytes_per_param:g} bytes per parameter ({self.terms})"


def state_recipe(plan: Plan, factored: FactoredStates) -> StateRecipe:
    """What ``plan`` (a `constraints.Plan`) keeps per parameter: Megatron / DeepSpeed mixed precision
    holds 18 bytes (2 + 4 + 4 + 8 with AdamW); FSDP/HSDP 16, its sharded fp32 parameters being the master
    copy (cast in each layer's all-gather, so no resident bf16 copy)."""
    per = bytes_per_param(PlanArrays.from_plans([plan]), factored)
    dtype = {2.0: "bf16" if plan.precision != "fp16" else "fp16", 4.0: "fp32"}
    weights, resident = float(per.weights[0]), float(per.resident_weights[0])
    grads, master, states = float(per.grads[0]), float(per.master[0]), float(per.optimizer[0])
    terms = [f"{dtype[weights]} weights {resident:g}" if resident else
             f"fp32 parameters {master:g}, the master copy gathered as {dtype[weights]} layer by layer,",
             f"{dtype[grads]} gradients {grads:g}"]
    if master and resident:
        terms.append(f"fp32 master weights {master:g}")
    terms.append(f"{plan.optimizer} states {states:g}")
    return StateRecipe(bytes_per_param=resident + grads + master + states, terms=" + ".join(terms))


def expert_data_parallel(p: PlanArrays) -> np.ndarray:
    """Ranks holding the same expert shard: dp · cp · tp / (ep · etp) (Megatron-Core's expert DP group)."""
    return np.maximum(p.dp * p.cp * p.tp // (p.ep * p.etp), 1)


@dataclass
class ShardDivisors:
    """What each state is divided by, for dense and for expert parameters ((n,) arrays)."""

    weights: np.ndarray
    grads: np.ndarray
    states: np.ndarray
    expert_weights: np.ndarray
    expert_grads: np.ndarray
    expert_states: np.ndarray


def shard_divisors(p: PlanArrays) -> ShardDivisors:
    s = p.sharding
    group = p.shard_group.astype(float)
    expert_group = np.minimum(expert_data_parallel(p), np.where(s == code("sharding", "hsdp"), group, np.inf))
    expert_group = np.where(s == code("sharding", "none"), 1.0, expert_group)
    shards_weights = (s == code("sharding", "zero3")) | (s == code("sharding", "fsdp")) | (s == code("sharding", "hsdp"))
    shards_grads = shards_weights | (s == code("sharding", "zero2"))
    shards_states = shards_grads | (s == code("sharding", "zero1"))
    one = np.ones_like(group)
    return ShardDivisors(
        weights=np.where(shards_weights, group, one),
        grads=np.where(shards_grads, group, one),
        states=np.where(shards_states, group, one),
        expert_weights=np.where(shards_weights, expert_group, one),
        expert_grads=np.where(shards_grads, expert_group, one),
        expert_states=np.where(shards_states, expert_group, one),
    )


def gathers_weights(p: PlanArrays) -> np.ndarray:
    """Plans whose weights are sharded and all-gathered per layer (ZeRO-3, FSDP, HSDP) or offloaded."""
    s = p.sharding
    return (s == code("sharding", "zero3")) | (s == code("sharding", "fsdp")) | (s == code("sharding", "hsdp")) | (
        p.offload == code("offload", "params")
    )


def optimizer_step_temporaries(p: PlanArrays, per: BytesPerParam) -> np.ndarray:
    """Bytes per parameter the optimizer step allocates transiently. PyTorch's foreach AdamW (the
    default on GPUs) builds one full list ``exp_avg_sq.sqrt()`` in the state dtype (torch.optim.adam
    ``_multi_tensor_adam``); foreach SGD and the fused optimizers of Megatron / Transformer Engine /
    DeepSpeed update in place. Only ``unfused`` plans run PyTorch's optimizers."""
    adamw = p.optimizer == code("optimizer", "adamw")
    unfused = p.kernels == code("kernels", "unfused")
    return np.where(adamw & unfused, per.optimizer / 2.0, 0.0)
