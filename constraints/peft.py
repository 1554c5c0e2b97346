"""What a parameter-efficient fine-tune (`Workload.peft`, `Peft`) changes in the cost model.

LoRA (Hu et al. 2021, §4.1): beside each targeted linear W (in × out) of every decoder layer, A (in × r) and
B (r × out) with y = W·x + (alpha/r)·B·A·x; only A and B train, everything else is frozen. QLoRA (Dettmers
et al. 2023) also stores the frozen linears of the decoder layers in 4-bit NF4 and dequantises each to
bf16 for its GEMM.

- Parameters: the base is held for its weights only (no gradient, master copy or optimizer state); the
  adapters hold everything. peft keeps adapters in fp32 on a bf16/fp16 model (``autocast_adapter_dtype``,
  on by default), so with ``kernels="unfused"`` (HF + peft) an adapter parameter is 4 + 4 bytes of weight
  and gradient plus the optimizer's moments in fp32; fused stacks (NeMo, torchtune) keep adapters in the
  model dtype and follow the plan's mixed-precision recipe. Under tensor parallelism an adapter splits
  like its base: a column-parallel linear's B by tp (A whole), a row-parallel linear's A by tp (B whole).
- QLoRA bytes: `NF4_BYTES_PER_PARAM`. What bitsandbytes replaces is every ``nn.Linear`` of the decoder
  layers — attention projections, dense MLPs, shared experts and the router; the embedding, the LM head
  (``llm_int8_skip_modules``) and the norms stay in the model dtype, and so do routed experts, which
  ``transformers`` ≥ 5 stores as fused 3-D parameters rather than linears.
- FLOPs and time: a frozen linear's backward computes the input gradient only (one GEMM instead of two);
  the adapters' small GEMMs run forward and backward in full; attention's core is unchanged. The adapters
  are memory-bound: unfused, peft casts each targeted linear's input to fp32, and adds, scales and casts
  back the output in fp32 (`adapter_elementwise_bytes`). QLoRA dequantises each 4-bit weight once per
  pass (forward, backward, recompute): it reads the NF4 bytes and writes bf16 ones.
- Activations (`activation_delta`): a frozen linear keeps no input for a weight gradient, and a frozen
  norm no normalised copy for its weight's; each adapter keeps what its own GEMMs need — A its (fp32) input,
  B the rank-r product.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from parallelplan.constraints.activations import activation_bytes
from parallelplan.constraints.arrays import PlanArrays, code
from parallelplan.constraints.errors import PlanError
from parallelplan.constraints.plan import LORA_TARGETS, Peft
from parallelplan.constraints.stages import StageLayout, StageParams
from parallelplan.constraints.states import BytesPerParam, FactoredStates, StateRecipe, bytes_per_param
from parallelplan.constraints.structure import ModelFacts

NF4_BYTES_PER_PARAM = 0.5 + 1 / 64 + 4 / (64 * 256)
"""Bytes per 4-bit weight: two NF4 codes per byte; one 8-bit absmax per 64-weight block; one fp32 absmax
per 256 of those (QLoRA's double quantisation, Dettmers et al. 2023 §3: 8/64 + 32/(64·256) = 0.127 bits
of constants per parameter; bitsandbytes ``quantize_4bit(blocksize=64, compress_statistics=True)``,
whose packed tensors tests/test_peft.py measures)."""

ADAPTER_BYTES_UNFUSED = 4.0
"""peft's adapters on a 16-bit model are fp32 (``autocast_adapter_dtype=True``, peft ≥ 0.12)."""

MLP_TARGETS = ("gate_proj", "up_proj", "down_proj")


class PeftTargetError(PlanError):
    """A LoRA target the model does not have."""


@dataclass(frozen=True)
class Adapters:
    """The adapted linears of one decoder layer: (in, out, TP split) of each, and the rank."""

    rank: int
    attention: tuple[tuple[int, int, str], ...]
    attention_names: tuple[str, ...]  # the adapted attention linears' names, in the same order
    mlp: tuple[str, ...]  # adapted MLP linears (of the dense MLP and of the shared experts)
    quantized: bool
    dropout: float

    def mlp_matmuls(self, f: ModelFacts, width: int) -> tuple[tuple[int, int, str], ...]:
        """The adapted linears of an MLP of ``width`` (gate and up read the hidden state, down the FFN)."""
        if not width:
            return ()
        names = MLP_TARGETS if f.gated else MLP_TARGETS[1:]
        return tuple(mm for name, mm in zip(names, f.mlp_matmuls(width), strict=True) if name in self.mlp)

    def dense_layer(self, f: ModelFacts) -> tuple[tuple[int, int, str], ...]:
        return self.attention + self.mlp_matmuls(f, f.ffn)

    def moe_layer(self, f: ModelFacts) -> tuple[tuple[int, int, str], ...]:
        return self.attention + self.mlp_matmuls(f, f.shared_ffn)


def attention_names(f: ModelFacts) -> tuple[str, ...]:
    """The module names of the attention matmuls (`ModelFacts.attention_matmuls`' order)."""
    if not f.latent_width:
        return ("q_proj", "k_proj", "v_proj", "o_proj")
    if len(f.attention_matmuls) == 5:  # MLA with a compressed query
        return ("q_a_proj", "q_b_proj", "kv_a_proj_with_mqa", "kv_b_proj", "o_proj")
    return ("q_proj", "kv_a_proj_with_mqa", "kv_b_proj", "o_proj")


def linear_names(f: ModelFacts) -> tuple[str, ...]:
    """Every LoRA target this model has."""
    has_mlp = f.ffn or f.shared_ffn
    mlp = (MLP_TARGETS if f.gated else MLP_TARGETS[1:]) if has_mlp else ()
    return attention_names(f) + mlp


@lru_cache(maxsize=64)
def adapters(f: ModelFacts, peft: Peft) -> Adapters:
    """Resolve ``peft.target_modules`` on this model; a name it lacks is a `PeftTargetError`."""
    names = linear_names(f)
    wanted = set(names) if "all-linear" in peft.target_modules else set(peft.target_modules)
    missing = sorted(wanted - set(names), key=LORA_TARGETS.index)
    if missing:
        raise PeftTargetError(f"peft.target_modules: {', '.join(missing)} not in this model; it has all-linear, "
                              + ", ".join(names))
    pairs = [(name, mm) for name, mm in zip(attention_names(f), f.attention_matmuls, strict=True) if name in wanted]
    return Adapters(rank=peft.rank, attention=tuple(mm for _, mm in pairs), attention_names=tuple(n for n, _ in pairs),
                    mlp=tuple(n for n in MLP_TARGETS if n in wanted),
                    quantized=peft.method == "qlora", dropout=peft.dropout)


def split_widths(mm: tuple[int, int, str], tp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(in, out) widths of a linear on one GPU."""
    k, n, mode = mm
    one = np.ones_like(tp, dtype=float)
    return (k / tp if mode == "row" else k * one), (n / tp if mode == "column" else n * one)


def adapter_params(a: Adapters, mms: tuple, tp: np.ndarray) -> np.ndarray:
    """Adapter parameters of ``mms`` on one GPU: r·in + r·out, each side split as its base splits."""
    total = np.zeros_like(tp, dtype=float)
    for mm in mms:
        k, n = split_widths(mm, tp)
        total = total + a.rank * (k + n)
    return total


def linear_params(mms: tuple, tp: np.ndarray) -> np.ndarray:
    """Weight elements of ``mms`` on one GPU."""
    total = np.zeros_like(tp, dtype=float)
    for mm in mms:
        k, n = split_widths(mm, tp)
        total = total + k * n
    return total


def quantized_layer_params(f: ModelFacts, tp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Weights one GPU stores in NF4 per (dense, MoE) layer under QLoRA: the layer's linears but routed experts."""
    attention = linear_params(f.attention_matmuls, tp)
    dense = attention + (linear_params(f.mlp_matmuls(f.ffn), tp) if f.ffn else 0.0)
    moe = attention + (linear_params(f.mlp_matmuls(f.shared_ffn), tp) if f.shared_ffn else 0.0) + f.hidden * f.experts
    return dense, moe


def base_weight_bytes(p: PlanArrays) -> np.ndarray:
    """Bytes of a frozen base weight kept in the model dtype, the activations' (4 in fp32, else 2: bf16,
    fp16, and fp8 training, which keeps bf16 weights)."""
    return activation_bytes(p)


@dataclass
class PeftParams:
    """What one GPU of each rank class holds under PEFT, (n, C) arrays: ``adapters`` (trained, sharded like
    dense parameters), the frozen base's bytes (dense and expert, sharded over their groups), and the
    bytes of the largest unit FSDP / ZeRO-3 gathers with the layer being computed (`constraints.memory`)."""

    adapters: np.ndarray
    adapter_layer: np.ndarray  # adapters of the stage's largest layer
    frozen_dense_bytes: np.ndarray
    frozen_expert_bytes: np.ndarray
    gathered_bytes: np.ndarray
    dequantized_bytes: np.ndarray  # (n, 1): QLoRA's one transient bf16 copy of the largest 4-bit weight


def peft_params(f: ModelFacts, a: Adapters, p: PlanArrays, layout: StageLayout, params: StageParams) -> PeftParams:
    tp = p.tp[:, None].astype(float)
    dense_adapters = adapter_params(a, a.dense_layer(f), tp)
    moe_adapters = adapter_params(a, a.moe_layer(f), tp)
    adapters = layout.dense_layers * dense_adapters + layout.moe_layers * moe_adapters
    wb = base_weight_bytes(p)[:, None]
    if a.quantized:
        dense_q, moe_q = quantized_layer_params(f, tp)
    else:
        dense_q = moe_q = np.zeros_like(tp)
    quantized = layout.dense_layers * dense_q + layout.moe_layers * moe_q
    saving = wb - NF4_BYTES_PER_PARAM  # bytes a quantised weight saves
    frozen_dense = wb * params.dense - saving * quantized
    layer_bytes = np.maximum(np.where(layout.dense_layers > 0, wb * params.dense_layer - saving * dense_q, 0.0),
                             np.where(layout.moe_layers > 0, wb * params.moe_layer - saving * moe_q, 0.0))
    unit = np.maximum(layer_bytes, wb * np.maximum(params.embedding, params.head))
    largest_adapters = np.maximum(np.where(layout.dense_layers > 0, dense_adapters, 0.0),
                                  np.where(layout.moe_layers > 0, moe_adapters, 0.0))
    valid = layout.valid
    largest = 0.0
    if a.quantized:
        mms = f.attention_matmuls + (f.mlp_matmuls(f.ffn) if f.ffn else ()) + (
            f.mlp_matmuls(f.shared_ffn) if f.shared_ffn else ())
        largest = np.max([linear_params((mm,), tp) for mm in mms], axis=0)
    return PeftParams(dequantized_bytes=wb * largest * np.ones_like(tp),adapters=np.where(valid, adapters, 0.0), adapter_layer=np.where(valid, largest_adapters, 0.0),
                      frozen_dense_bytes=np.where(valid, frozen_dense, 0.0),
                      frozen_expert_bytes=np.where(valid, wb * params.expert, 0.0),
                      gathered_bytes=np.where(valid, layer_bytes + unit, 0.0))


def adapter_bytes(p: PlanArrays) -> np.ndarray:
    """Bytes of an adapter element (weights and the activations its GEMMs read and write): fp32 unfused
    (peft), the activation dtype fused."""
    fused = p.kernels == code("kernels", "fused")
    return np.where(fused, base_weight_bytes(p), ADAPTER_BYTES_UNFUSED)


def adapter_bytes_per_param(p: PlanArrays, factored: FactoredStates) -> BytesPerParam:
    """Model states per adapter parameter: fused stacks follow the plan's recipe (`states.bytes_per_param`);
    unfused (peft) adapters are fp32 parameters — 4 bytes of weight, 4 of gradient, the optimizer's
    moments in fp32, no separate master copy."""
    per = bytes_per_param(p, factored)
    fused = p.kernels == code("kernels", "fused")
    state = np.where((per.master > 0) | (per.weights == 4.0), 4.0, per.weights)  # the plan's state dtype
    four = np.full(len(p), ADAPTER_BYTES_UNFUSED)
    return BytesPerParam(weights=np.where(fused, per.weights, four),
                         resident_weights=np.where(fused, per.resident_weights, four),
                         grads=np.where(fused, per.grads, four), master=np.where(fused, per.master, 0.0),
                         optimizer=np.where(fused, per.optimizer, per.optimizer * ADAPTER_BYTES_UNFUSED / state))


def adapter_elementwise_bytes(a: Adapters, mms: tuple, p: PlanArrays, tp: np.ndarray) -> np.ndarray:
    """Forward bytes per token the adapters of ``mms`` move outside their GEMMs on one GPU. Unfused (peft
    ``lora.Linear.forward``): the input cast to fp32 (read b, write 4 bytes per input element; none when the
    model is fp32), dropout when on (read, write, 1-byte mask), then on the output B·A·x scaled (read and
    write 4 bytes), added to the base output in fp32 (read b + 4, write 4) and cast back (read 4, write b).
    Fused: dropout likewise, and the product added to the base output (read 2·b, write b), the scaling
    folded into the GEMM."""
    b = base_weight_bytes(p)
    fused = p.kernels == code("kernels", "fused")
    ab = adapter_bytes(p)
    cast = np.where(fused | (b >= ADAPTER_BYTES_UNFUSED), 0.0, b + ADAPTER_BYTES_UNFUSED)
    drop = 2.0 * ab + 1.0 if a.dropout > 0 else 0.0
    total = np.zeros_like(tp, dtype=float)
    for mm in mms:
        k, n = split_widths(mm, tp)
        output = np.where(fused, 3.0 * b, 8.0 + (b + 8.0) + (4.0 + b))
        total = total + (cast + drop) * k + output * n
    return total


def norm_freed(f: ModelFacts, b: np.ndarray, fused: np.ndarray) -> np.ndarray:
    """Bytes per token a norm with a frozen weight, feeding frozen linears, keeps less than a trained one:
    its output (the linears' input, b·h) and, unfused RMSNorm (``weight * x.to(dtype)``), the cast
    normalised copy its weight gradient would read (b·h); LayerNorm's backward reads its input and
    statistics either way."""
    copy = 0.0 if f.norm_is_layernorm else 1.0
    return np.where(fused, b * f.hidden, (1.0 + copy) * b * f.hidden)


def first_layer_saving(f: ModelFacts, b: np.ndarray, fused: np.ndarray) -> np.ndarray:
    """Bytes per token the first layer's input norm keeps less under PEFT: its input comes from the frozen
    embedding and needs no gradient, so the norm saves nothing — unfused RMSNorm its fp32 copy and 1/σ
    (4·h + 4), LayerNorm its input and statistics (b·h + 8), fused its input and 1/σ (b·h + 4)."""
    unfused = np.where(f.norm_is_layernorm, b * f.hidden + 8.0, 4.0 * f.hidden + 4.0)
    return np.where(fused, b * f.hidden + 4.0, unfused)


def activation_delta(f: ModelFacts, a: Adapters, p: PlanArrays, routed_share: np.ndarray
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bytes per token that PEFT adds to (negative: removes from) one layer's full-training activations
    (`constraints.activations`), per GPU: (attention block, dense MLP block, MoE block).
    ``routed_share``: routed token copies per token on this GPU (k · load · etp/tp for hidden-sized tensors
    is applied inside).

    Frozen weights keep no inputs for weight gradients: each norm's output and normalised copy
    (`norm_freed`), unfused QK-norm's cast copy (b per element), and the down projection's input (b·f;
    fused: the FC2 input), unless an adapter keeps them. Adapters keep their input for A's weight gradient
    — fused ones the shared tensor (kept once, b per element), unfused ones an fp32 copy each (4 per
    element; the tensor itself, once, when the model is fp32); with dropout each its dropped-out input and
    a 1-byte mask instead — and the rank-r product A·x for B's. Routed experts (frozen, un-adapted) drop
    their gathered inputs (b·h per routed token copy) and the down projection's input (b·f_e)."""
    b = activation_bytes(p)
    fused = p.kernels == code("kernels", "fused")
    tp = p.tp.astype(float)
    sp_div = np.where(p.sequence_parallel, tp, 1.0)
    ab = adapter_bytes(p)
    own_copy = ~fused & (b < ADAPTER_BYTES_UNFUSED)
    dropout = a.dropout > 0

    def kept(mms: tuple, width: np.ndarray) -> np.ndarray:
        """What the adapters of ``mms``, all reading one input of ``width`` elements per token, keep."""
        if not mms:
            return np.zeros_like(b)
        count = len(mms)
        inputs = (ab + 1.0) * width * count if dropout else np.where(own_copy, ab * width * count, b * width)
        return inputs + ab * a.rank * count

    h = f.hidden
    freed = norm_freed(f, b, fused) / sp_div
    fed_by_hidden = lambda mm: mm[0] == h and mm[2] != "row"  # noqa: E731 - reads the layer's (normed) input
    hidden_fed = tuple(mm for mm in a.attention if fed_by_hidden(mm))
    attention = -freed + kept(hidden_fed, h / sp_div)
    attention = attention - np.where(fused, 0.0, b * f.qk_norm_width) / tp
    for mm in a.attention:
        if fed_by_hidden(mm):
            continue
        # the input (attention output, MLA latents) is kept by its producer; an adapter adds a copy or only r
        width = split_widths(mm, tp)[0]
        attention = attention + kept((mm,), width) - np.where(own_copy | dropout, 0.0, b * width)

    def mlp(width: int) -> np.ndarray:
        if not width:
            return -freed
        adapted = a.mlp_matmuls(f, width)
        fed = tuple(mm for mm in adapted if mm[2] == "column")
        down = tuple(mm for mm in adapted if mm[2] == "row")
        out = -freed + kept(fed, h / sp_div) - b * width / tp  # the down projection's input goes ...
        return out + kept(down, width / tp)  # ... unless its adapter keeps it

    dense = mlp(f.ffn) if f.ffn else np.zeros_like(b)
    if f.experts:
        gathered = np.where(fused, b * h * p.etp / tp, b * h / tp)
        moe = mlp(f.shared_ffn) - routed_share * (gathered + b * f.expert_ffn / tp)
    else:
        moe = np.zeros_like(b)
    return attention, dense, moe


def training_flops_per_token(spec, seq_len: int, peft: Peft, *, causal: bool = False) -> float:
    """Training FLOPs per token of a LoRA fine-tune (`models.flops` conventions): the forward of the base
    and the adapters; backward twice the attention core and the adapters (input and weight gradients),
    once every frozen linear (input gradients only) — except in layer 0, whose input (the frozen embedding's
    output) needs no gradient: its frozen linears fed by the hidden state skip backward, their adapters' A
    compute the weight gradient only, and the attention core skips the gradients of un-adapted Q, K, V.
    Exact (FlopCounterMode, tests/test_peft.py) while some of layer 0's Q, K, V is adapted."""
    from parallelplan.constraints.structure import model_facts
    from parallelplan.models.flops import count_flops

    f = model_facts(spec)
    a = adapters(f, peft)
    base = count_flops(spec, seq_len, causal=causal)
    one = np.ones(1)
    flops = lambda mms: float(sum(2 * k * n for k, n, _ in mms))  # noqa: E731
    per_layer = lambda mms: float(adapter_params(a, mms, one)[0]) * 2  # noqa: E731
    adapter_forward = (spec.num_dense_layers * per_layer(a.dense_layer(f))
                       + spec.num_moe_layers * per_layer(a.moe_layer(f)))
    fed = tuple(mm for mm in f.attention_matmuls if mm[0] == f.hidden and mm[2] != "row")
    fed_adapted = tuple(mm for mm in a.attention if mm[0] == f.hidden and mm[2] != "row")
    layer0_frozen = flops(fed)
    layer0_a = float(sum(2 * a.rank * k for k, _, _ in fed_adapted))
    # layer 0's attention core: the gradients of un-adapted Q, K or V (no gradient flows into them) are
    # not computed; each is one forward-equivalent of Q·Kᵀ (dQ, dK) or P·V (dV), dP as long as Q or K needs one
    layer0_core = 0.0
    if not f.latent_width:
        grad = {name: name in a.attention_names for name in ("q_proj", "k_proj", "v_proj")}
        per_layer = base.attention_scores / spec.num_layers
        qk, pv = per_layer * f.q_width / (f.q_width + f.out_width), per_layer * f.out_width / (f.q_width + f.out_width)
        layer0_core = (qk * (not grad["q_proj"]) + qk * (not grad["k_proj"]) + pv * (not grad["v_proj"])
                       + pv * (not (grad["q_proj"] or grad["k_proj"])))
    forward = base.forward_per_token + adapter_forward
    backward = (2 * base.attention_scores - layer0_core + (base.forward_per_token - base.attention_scores - layer0_frozen)
                + 2 * adapter_forward - layer0_a)
    return forward + backward


def trained_parameters(spec, peft: Peft | None) -> float:
    """The parameters that train, over the whole model: every one without PEFT, else the adapters'."""
    if peft is None:
        return float(spec.total_params)
    from parallelplan.constraints.structure import model_facts

    f = model_facts(spec)
    a = adapters(f, peft)
    one = np.ones(1)
    return float(spec.num_dense_layers * adapter_params(a, a.dense_layer(f), one)[0]
                 + spec.num_moe_layers * adapter_params(a, a.moe_layer(f), one)[0])


def state_recipe(spec, plan, peft: Peft) -> StateRecipe:
    """What a PEFT plan keeps per parameter of the model, before sharding, in words: the frozen base's
    weights (NF4 for QLoRA's decoder linears) and the adapters' weights, gradients and optimizer states
    (`adapter_bytes_per_param`), averaged over the model's parameters."""
    from parallelplan.constraints.structure import model_facts

    f = model_facts(spec)
    a = adapters(f, peft)
    p = PlanArrays.from_plans([plan])
    trained = trained_parameters(spec, peft)
    dense_q, moe_q = quantized_layer_params(f, np.ones(1))
    quantized = float(spec.num_dense_layers * dense_q[0] + spec.num_moe_layers * moe_q[0]) if a.quantized else 0.0
    base = float(base_weight_bytes(p)[0])
    per = adapter_bytes_per_param(p, f.factored_states)
    adapter = float(per.resident_weights[0] + per.grads[0] + per.master[0] + per.optimizer[0])
    total = base * (spec.total_params - quantized) + NF4_BYTES_PER_PARAM * quantized + adapter * trained
    dtype = "fp32" if base == 4.0 else "16-bit"
    frozen = (f"frozen {dtype} base {base:g}" if not quantized else
              f"frozen base: {quantized / 1e9:.2f}B NF4 weights {NF4_BYTES_PER_PARAM:.3f} + the rest {dtype} {base:g}")
    terms = f"{frozen}; {trained / 1e6:.1f}M {peft.method} adapter parameters {adapter:g} each"
    return StateRecipe(bytes_per_param=total / spec.total_params, terms=terms)


def workload_state_recipe(spec, plan, workload) -> StateRecipe:
    """The plan's model states per parameter for ``workload``: `state_recipe` under PEFT, else
    `states.state_recipe` (every parameter trained)."""
    from parallelplan.constraints import states
    from parallelplan.constraints.structure import model_facts

    if workload.peft is not None:
        return state_recipe(spec, plan, workload.peft)
    return states.state_recipe(plan, model_facts(spec).factored_states)
