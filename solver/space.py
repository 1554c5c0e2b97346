"""The search space: the values each plan variable may take for a model, a cluster and a workload, and the
enumeration of every structurally valid plan in it as `PlanArrays` (numpy columns).

Default domains (a variable pinned with ``fixed`` takes only that value; ``ranges`` replaces a default
domain by the listed values, or by the values within ``(low, high)`` for integer degrees):
- ``tp``: divisors of the attention heads that also divide the KV heads (not for MLA), the dense MLP width
  and the expert width, at most the fast domain (the NVLink domain, or a PCIe server's node) unless
  crossing it is allowed;
- ``cp``: powers of two with ``seq_len`` divisible by 2·cp into chunks of at least one attention tile
  (`ATTENTION_TILE_TOKENS`), across domains too (its ring is priced over the network when it crosses one);
- ``cp_comm`` (cp > 1): p2p (ring attention), and from `LONG_CONTEXT_TOKENS` on also a2a (Ulysses, with
  tp·cp dividing the attention and KV heads) and a2a+p2p (USP, where a Ulysses group fits,
  `constraints.usp`), as far as the workload's stack offers them (``stacks.json`` ``cp_comms``);
- ``pp``: 1 … layers; ``dp`` = GPUs / (tp·pp·cp), whole;
- ``ep``: divisors of the experts with ep·etp dividing dp·cp·tp; ``etp``: 1 or tp (MoE models only);
- ``vpp`` (interleaved schedule): 2 … 8 with every virtual stage holding the same number of layers and the
  micro-batches a multiple of pp;
- ``layers_per_stage``: the even split when layers divide pp·vpp; with uneven stages allowed (vpp 1,
  pp ≥ 2), also lighter first and last stages — the middle stages hold ⌈L/pp⌉ or ⌈L/pp⌉ + 1 layers and
  the first and last share the rest (each keeping ≥ 1 layer), since they also carry the embedding and the
  LM head (Megatron's ``--decoder-first/last-pipeline-num-layers``);
- ``micro_batch_size``: 1, 2, 4, 8, 16 dividing the per-replica batch;
- ``sequence_parallel``: on whenever tp > 1 allows it — in the cost model it never costs time or memory
  (pin it or give a range to search it);
- ``sharding``: none, zero1 and fsdp; zero2 with pp = 1 (DeepSpeed's pipeline engine takes ZeRO-1 only);
  hsdp sharded over one node's GPUs when dp·cp spans several nodes; none when dp·cp = 1 unless states are
  offloaded (ZeRO-Offload on a single replica: offload takes a sharding stage); zero3 (DeepSpeed)
  when asked for — FSDP shards the same states with less resident memory;
- ``recompute``: none; selective with Megatron's module ladder (`constraints.check.selective_ladder`);
  full on every layer; and full on the fewest layers per virtual stage that fit (found after pricing,
  `solver.candidates`);
- for a workload without a backward (inference, score) only recompute none and the shardings that shard
  weights (none, fsdp, hsdp): the others would price the same plans again;
- ``offload_activations``: off, and on too for training sequences of 32K tokens or more on a stack that
  offloads activations (`offload_activations_domain`);
- ``fp8_recipe`` (fp8 plans): the stack's default recipe; a pinned or ranged recipe pins the precision to
  fp8 where it is not given (`constraints.fp8`);
- ``precision``: bf16; ``optimizer``: adamw; ``offload``: none; ``schedule``: 1f1b, interleaved when
  vpp > 1 — open fp8, other optimizers, CPU offload, zero_bubble, dualpipev or zbv (vpp 2, at least 2·pp,
  for ZB-V 2·pp − 1, micro-batches) with ``ranges`` (an infeasible search
  says which of them would make it feasible).
Fixed for every plan searched: fused kernels, flash attention, fp32 master weights, persistent gradient
buffers and every communication overlap on (Megatron-Core's production settings).
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydantic import TypeAdapter, ValidationError

from parallelplan.constraints.arrays import ALL_LAYERS, STACK_RECIPE, PlanArrays, code, module_mask, recipe_code
from parallelplan.constraints.attention import is_priced, priced_kernels
from parallelplan.constraints.check import selective_ladder
from parallelplan.constraints.collectives import fast_domain
from parallelplan.constraints.efficiency import stack_schedules, stacks
from parallelplan.constraints.fp8 import bf16_layers_recipes, runnable_recipes, stack_recipes
from parallelplan.constraints.plan import RECOMPUTE_MODULES, RECOMPUTES, V_SCHEDULES, Plan, Workload
from parallelplan.constraints.rl import multi_role
from parallelplan.constraints.rules import fp8_kv_cache_messages, schedule_advice
from parallelplan.constraints.usp import ulysses_degree
from parallelplan.hardware import ClusterSpec
from parallelplan.models import ModelSpec
from parallelplan.solver.errors import SolverInputError

MAX_VPP = 8
DEFAULTS: dict[str, tuple] = {
    "micro_batch_size": (1, 2, 4, 8, 16),
    "vpp": tuple(range(1, MAX_VPP + 1)),
    "sequence_parallel": (False, True),
    "sharding": ("none", "zero1", "zero2", "fsdp", "hsdp"),
    "recompute": ("none", "selective", "full"),
    "precision": ("bf16",),
    "optimizer": ("adamw",),
    "offload": ("none",),
    "schedule": ("1f1b", "interleaved"),
}
"""The default domains of the execution choices (module docstring); the rules then narrow them per plan."""
SEARCHED = (
    "tp", "pp", "dp", "cp", "ep", "etp", "vpp", "micro_batch_size", "sequence_parallel", "sharding",
    "hsdp_shard_size", "recompute", "recompute_modules", "recompute_layers", "precision", "optimizer", "offload",
    "schedule", "layers_per_stage", "cp_comm", "offload_activations", "fp8_recipe",
)
"""Plan fields the search ranges over (``fixed`` and ``ranges`` accept these)."""
SETTINGS = ("kernels", "attention_kernel", "kv_cache_dtype", "master_weights", "persistent_grads", "tp_comm_overlap", "ep_comm_overlap",
            "grad_reduce_overlap", "param_gather_overlap", "fp8_bf16_layers")
"""Plan fields held at one value in a search (``fixed`` may set them)."""


@dataclass(frozen=True)
class SearchSpace:
    """What may vary: the pins, the ranges and the structural options of one search."""

    model: ModelSpec
    cluster: ClusterSpec
    workload: Workload
    fixed: dict[str, Any] = field(default_factory=dict)
    ranges: dict[str, Any] = field(default_factory=dict)
    allow_uneven_stages: bool = True
    allow_cross_domain: bool = False
    allow_partial_recompute: bool = True  # full recompute of only some layers (Megatron's block method)
    widen: bool = False  # ranges add to the default domains instead of replacing them (`relaxed`)

    def __post_init__(self) -> None:
        if multi_role(self.workload):
            raise SolverInputError(multi_role(self.workload))
        fixed = dict(self.fixed)
        if "zero_stage" in fixed:  # DeepSpeed's name for the sharding
            stage = _validated("zero_stage", fixed.pop("zero_stage"), "fixed")
            fixed["sharding"] = ("none", "zero1", "zero2", "zero3")[stage]
        for kind, given in (("fixed", fixed), ("ranges", self.ranges)):
            allowed = SEARCHED + SETTINGS if kind == "fixed" else SEARCHED
            for name, value in given.items():
                if name not in allowed:
                    raise SolverInputError(f"{kind}: {name!r} is not a plan variable; use one of {', '.join(allowed)}")
                if kind == "fixed":
                    fixed[name] = _validated(name, value, kind)
                elif not (isinstance(value, tuple) and len(value) == 2 and all(type(v) is int for v in value)):
                    if not isinstance(value, (list, tuple)) or not value:
                        raise SolverInputError(f"ranges: {name} needs a non-empty list of values or a (low, high) "
                                               f"pair of integers, got {value!r}")
                    for v in value:
                        _validated(name, v, kind)
        _pin_fp8_for_recipes(self.cluster, self.workload, fixed, self.ranges)
        _check_attention_kernel(self.cluster, self.workload, fixed)
        _check_schedules(self.workload, fixed, self.ranges)
        _check_kv_cache_dtype(self.cluster, self.workload, fixed)
        object.__setattr__(self, "fixed", fixed)
        peft = self.workload.peft
        if peft is not None and peft.method == "qlora" and fixed.get("precision") == "fp8":
            raise SolverInputError("fixed: precision 'fp8' with peft 'qlora': QLoRA dequantises its 4-bit weights to a "
                                   "16- or 32-bit compute dtype; use precision bf16, fp16 or fp32")
        try:
            self.default_plan()
        except ValidationError as err:
            raise SolverInputError(f"fixed: {err.errors(include_url=False)[0]['msg']}") from None

    # -- domains ------------------------------------------------------------------------------------

    @property
    def fast_domain(self) -> int:
        return fast_domain(self.cluster)

    def domain(self, name: str, default: Sequence[Any]) -> list[Any]:
        """The values of ``name``: the pin, else the range (a list, or (low, high) for integers), else
        ``default``."""
        if name in self.fixed:
            return [self.fixed[name]]
        given = self.ranges.get(name)
        if given is None:
            return list(default)
        values = self.range_values(name)
        return list(default) + [v for v in values if v not in default] if self.widen else values

    def default_domain(self, name: str) -> list[Any]:
        """`domain` of a field over its default values (`DEFAULTS`; the schedules among them the stack runs,
        `constraints.rules` schedule_run_by_stack)."""
        default = DEFAULTS[name]
        if name == "schedule":
            default = tuple(s for s in default if s in stack_schedules(self.workload.stack))
        return self.domain(name, default)

    def range_values(self, name: str) -> list[Any]:
        """The values a range admits (a list, or the candidates within (low, high) for integers)."""
        given = self.ranges[name]
        if isinstance(given, tuple) and len(given) == 2 and all(type(v) is int for v in given):
            low, high = given
            return [v for v in _integer_candidates(name, self, high) if low <= v <= high]
        return [tuple(v) if isinstance(v, list) else v for v in given]

    def relaxed(self) -> SearchSpace:
        """The space without pins or ranges, but holding every value they name (for diagnosing an
        infeasible search: each pin and range becomes a constraint there)."""
        ranges: dict[str, Any] = {name: self.range_values(name) for name in self.ranges}
        for name, value in self.fixed.items():
            if name in SEARCHED:
                ranges[name] = list(ranges.get(name, [])) + [value]
        return SearchSpace(self.model, self.cluster, self.workload, fixed=self.settings(), ranges=ranges,
                           allow_uneven_stages=self.allow_uneven_stages, allow_cross_domain=self.allow_cross_domain,
                           allow_partial_recompute=self.allow_partial_recompute, widen=True)

    def settings(self) -> dict[str, Any]:
        return {name: self.fixed[name] for name in SETTINGS if name in self.fixed}

    def default_plan(self) -> Plan:
        """A plan with the settings (fp8 where they keep layers in bf16 under fp8)."""
        return Plan(**self.settings(), **({"precision": "fp8"} if self.fixed.get("fp8_bf16_layers") else {}))


def _pin_fp8_for_recipes(cluster: ClusterSpec, workload: Workload, fixed: dict[str, Any], ranges: dict[str, Any]) -> None:
    """A pinned or ranged ``fp8_recipe`` asks for fp8: it pins the precision to fp8 where the precision is
    not given, and is refused (SolverInputError, with the values that run) where the precision given has
    no fp8 or where the stack or the GPU does not run the recipe. Pinned ``fp8_bf16_layers`` (a setting of
    fp8 plans only) pins fp8, and is refused beside any other precision."""
    if fixed.get("fp8_bf16_layers"):
        precisions = [fixed["precision"]] if "precision" in fixed else list(ranges.get("precision", ["fp8"]))
        if precisions != ["fp8"]:
            raise SolverInputError(f"fp8_bf16_layers {fixed['fp8_bf16_layers']} keeps layers in bf16 under fp8, but "
                                   f"the precision given is {', '.join(precisions)}; pin precision fp8 or drop it")
        fixed["precision"] = "fp8"
    named = ([fixed["fp8_recipe"]] if "fp8_recipe" in fixed else []) + list(ranges.get("fp8_recipe", []))
    if not named:
        return
    precisions = [fixed["precision"]] if "precision" in fixed else list(ranges.get("precision", []))
    if precisions and "fp8" not in precisions:
        raise SolverInputError(f"fp8_recipe {', '.join(named)} applies to precision fp8, but the precision given is "
                               f"{', '.join(precisions)}; add fp8 to the precisions or drop the recipe")
    if not precisions:
        fixed["precision"] = "fp8"
    gpu = cluster.gpu
    runnable = runnable_recipes(workload.stack, gpu.architecture)
    for recipe in named:
        if recipe not in runnable:
            raise SolverInputError(f"fp8_recipe {recipe!r} does not run on the {workload.stack} stack with "
                                   f"{gpu.display_name} ({gpu.architecture}); use one of {', '.join(runnable) or 'none: no fp8 here'}")


def _check_attention_kernel(cluster: ClusterSpec, workload: Workload, fixed: dict[str, Any]) -> None:
    """A pinned attention kernel the stack does not offer, or that is not priced on the GPU
    (`constraints.attention`), is refused with the kernels that are."""
    kernel, arch = fixed.get("attention_kernel"), cluster.gpu.architecture
    if kernel is not None and not is_priced(kernel, workload.stack, arch):
        priced = priced_kernels(workload.stack, arch)
        raise SolverInputError(f"attention_kernel {kernel!r} is not offered by the {workload.stack} stack on "
                               f"{cluster.gpu.display_name} ({cluster.gpu.architecture}); use one of "
                               f"{', '.join(['flash', *priced, 'eager'])}")


def _check_schedules(workload: Workload, fixed: dict[str, Any], ranges: dict[str, Any]) -> None:
    """A pinned or ranged schedule the stack does not run is refused with the ones it runs."""
    for kind, named in (("fixed", [fixed.get("schedule")]), ("ranges", list(ranges.get("schedule", [])))):
        for schedule in named:
            if schedule is not None and schedule not in stack_schedules(workload.stack):
                raise SolverInputError(f"{kind}: schedule {schedule!r} is not run by the {workload.stack} stack; "
                                       f"{schedule_advice(workload.stack, schedule)}")


def _check_kv_cache_dtype(cluster: ClusterSpec, workload: Workload, fixed: dict[str, Any]) -> None:
    """A pinned fp8 KV cache on a workload that caches nothing, or on a GPU without fp8, is refused
    (`constraints.rules` kv_cache_fp8_*: a setting every plan of the search shares)."""
    if fixed.get("kv_cache_dtype") != "fp8":
        return
    why = fp8_kv_cache_messages(workload, cluster)
    for rule, broken in (("kv_cache_fp8_needs_serving", workload.kind != "inference"),
                         ("kv_cache_fp8_runs_on_gpu", not cluster.gpu.supports("fp8"))):
        if broken:
            raise SolverInputError(f"fixed: kv_cache_dtype 'fp8': {why[rule]} (use kv_cache_dtype auto)")


def _validated(name: str, value: Any, kind: str) -> Any:
    """``value`` checked against the `Plan` field's type (e.g. tp a positive integer, sharding one of its
    names); SolverInputError naming the field and what it accepts otherwise."""
    annotation = int if name == "zero_stage" else Plan.model_fields[name].annotation
    try:
        checked = TypeAdapter(annotation).validate_python(value, strict=name != "recompute_modules")
    except ValidationError as err:
        raise SolverInputError(f"{kind}: {name} = {value!r}: {err.errors(include_url=False)[0]['msg']}") from None
    if checked is None or (isinstance(checked, int) and not isinstance(checked, bool) and not 0 <= checked <= 2**20) \
            or (name == "zero_stage" and checked not in (0, 1, 2, 3)):
        raise SolverInputError(f"{kind}: {name} = {value!r} is out of range")
    return tuple(checked) if isinstance(checked, list) else checked


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def _integer_candidates(name: str, space: SearchSpace, high: int) -> list[int]:
    """All values an integer variable may take up to ``high`` (for ranges)."""
    if name in ("micro_batch_size",):
        return [2**i for i in range(int(math.log2(max(high, 1))) + 1)]
    return list(range(1, high + 1))


def tp_domain(space: SearchSpace) -> list[int]:
    """The tp values the model's widths admit, within the pin or range."""
    m = space.model
    limit = m.num_attention_heads if space.allow_cross_domain else min(space.fast_domain, m.num_attention_heads)
    widths = [m.num_attention_heads] + ([m.num_kv_heads] if m.mla is None else [])
    if m.ffn_hidden_size and m.num_dense_layers:
        widths.append(m.ffn_hidden_size)
    if m.moe is not None:
        widths.append(m.moe.expert_ffn_hidden_size)
    return [d for d in space.domain("tp", range(1, limit + 1)) if 1 <= d <= limit and all(w % d == 0 for w in widths)]


ATTENTION_TILE_TOKENS = 128
"""Query rows per thread block of the fused attention kernels (FlashAttention-2, Dao 2023, §3.3: blocks of
128 for head dimensions up to 128; FlashAttention-3 and cuDNN's fused attention likewise). The cost model
prices attention at one efficiency whatever the length of the chunk a rank computes, which holds while each
of context parallelism's 2·cp load-balanced chunks fills at least one such block."""


def cp_candidates(seq_len: int, gpus: int) -> list[int]:
    """The default cp values: powers of two up to the GPUs whose 2·cp chunks of the sequence are whole and
    at least `ATTENTION_TILE_TOKENS` long (the search and the oracle share them; a range or a pin may go
    beyond)."""
    return [c for c in (2**i for i in range(21)) if c <= gpus
            and (c == 1 or (seq_len % (2 * c) == 0 and seq_len // (2 * c) >= ATTENTION_TILE_TOKENS))]


def _cp_domain(space: SearchSpace) -> list[int]:
    """The cp values the sequence admits, within the pin or range; CP groups may span NVLink domains
    (rule tp_inside_nvlink: only TP must stay inside)."""
    limit, seq = space.cluster.total_gpus, space.workload.seq_len
    return [c for c in space.domain("cp", cp_candidates(seq, limit))
            if 1 <= c <= limit and (c == 1 or seq % (2 * c) == 0)]


# -- enumeration --------------------------------------------------------------------------------------

def degree_combinations(space: SearchSpace) -> list[tuple[int, int, int, int, int, int]]:
    """(tp, cp, pp, dp, ep, etp) with tp·cp·pp·dp = GPUs and every divisibility rule on degrees."""
    m, gpus = space.model, space.cluster.total_gpus
    tps = tp_domain(space)
    cps = _cp_domain(space)
    pps = space.domain("pp", range(1, m.num_layers + 1))
    out = []
    for tp, cp, pp in itertools.product(tps, cps, pps):
        if gpus % (tp * cp * pp):
            continue
        dp = gpus // (tp * cp * pp)
        if ("dp" in space.fixed or "dp" in space.ranges) and dp not in space.domain("dp", [dp]):
            continue
        if m.moe is None:
            eps, etps = space.domain("ep", [1]), space.domain("etp", [tp])
        else:
            eps = space.domain("ep", _divisors(m.moe.num_experts))
            etps = space.domain("etp", sorted({1, tp}))
        for ep, etp in itertools.product(eps, etps):
            if m.moe is None and ep != 1:
                continue
            if m.moe is not None and (m.moe.num_experts % ep or (dp * cp * tp) % (ep * etp)
                                      or m.moe.expert_ffn_hidden_size % etp):
                continue
            out.append((tp, cp, pp, dp, ep, etp))
    return out


def stage_layouts(space: SearchSpace, pp: int) -> list[tuple[int, tuple[int, ...] | None]]:
    """(vpp, layers_per_stage) options of a pp-deep pipeline (module docstring)."""
    layers = space.model.num_layers
    out: list[tuple[int, tuple[int, ...] | None]] = []
    if "layers_per_stage" in space.fixed or "layers_per_stage" in space.ranges:
        given = [tuple(s) for s in space.domain("layers_per_stage", []) if len(s) == pp and sum(s) == layers]
        if not space.widen:
            return [(1, stages) for stages in given]
        out = [(1, stages) for stages in given]
    vpps = space.default_domain("vpp") if pp > 1 else [1]
    for vpp in vpps:
        if vpp >= 1 and layers % (pp * vpp) == 0:
            out.append((vpp, None))
    if space.allow_uneven_stages and 1 in vpps:
        out += [(1, stages) for stages in uneven_splits(layers, pp)]
    return list(dict.fromkeys(out))


@functools.cache
def uneven_splits(layers: int, pp: int) -> tuple[tuple[int, ...], ...]:
    """Stage splits with lighter first and last stages (module docstring): middle stages of ⌈L/pp⌉ or
    ⌈L/pp⌉ + 1 layers, the first and last sharing the rest, each between 1 and a middle stage."""
    if pp < 2:
        return ()
    out = []
    base = -(-layers // pp)
    for middle in (base, base + 1):
        rest = layers - (pp - 2) * middle
        for first in range(1, middle + 1):
            last = rest - first
            if 1 <= last <= middle and (first, last) != (middle, middle):
                out.append((first,) + (middle,) * (pp - 2) + (last,))
    return tuple(out)


@dataclass(frozen=True)
class Execution:
    """One combination of the per-plan execution choices (codes as in `constraints.arrays`)."""

    micro_batch_size: int
    sequence_parallel: bool
    sharding: int
    hsdp_shard_size: int
    recompute: int
    recompute_modules: int
    precision: int
    optimizer: int
    offload: int
    zero_bubble: bool
    cp_comm: int = 0
    offload_activations: bool = False
    fp8_recipe: int = STACK_RECIPE
    v_schedule: bool = False  # a V on the structure's two chunks per rank (vpp 2): ZB-V with zero_bubble, else DualPipeV


LONG_CONTEXT_TOKENS = 32_768
"""Sequences from which the default search also tries Ulysses (cp_comm a2a) beside ring attention: the
long-context regime where the two compete (Jacobs et al. 2023 train 256K–1M tokens with it). Below it
the search keeps to ring attention, Megatron's default — each choice doubles the priced plans of every
cp > 1 structure (DeepSeek-V3 on 2,048 H100 at 4K tokens: 0.8 → 1.4 s); ``ranges`` opens it anywhere."""


def cp_comm_domain(space: SearchSpace) -> list[str]:
    """The cp_comm values searched (module docstring): the pin or range, else p2p and, for sequences of
    at least `LONG_CONTEXT_TOKENS`, a2a and a2a+p2p (USP) — as far as the stack offers them; p2p always
    stands for "no context parallelism" too (the cp = 1 plans)."""
    offered = stacks()[space.workload.stack]["cp_comms"]
    default = ("p2p", "a2a", "a2a+p2p") if space.workload.seq_len >= LONG_CONTEXT_TOKENS else ("p2p",)
    return [c for c in space.domain("cp_comm", default) if c in offered or c == "p2p"]


def offload_activations_domain(space: SearchSpace) -> list[bool]:
    """The offload_activations values searched: the pin or range, else off and, for training sequences of at
    least `LONG_CONTEXT_TOKENS` on a stack that offloads activations, on (the long-context regime where
    activations, not states, fill the GPU; ``ranges`` opens it anywhere). Off where nothing is trained."""
    w = space.workload
    default = [False, True] if w.seq_len >= LONG_CONTEXT_TOKENS and stacks()[w.stack]["activation_offload"] else [False]
    return space.domain("offload_activations", default if w.training else [False])


def fp8_recipe_domain(space: SearchSpace) -> list[str | None]:
    """The fp8 recipes an fp8 plan takes: the pin or range, else the stack's default (None); the default
    is left out where a range also names it (one plan, one form). With layers kept in bf16
    (``fp8_bf16_layers``), only recipes the stack keeps them under: by default its own where it may, else each
    of those that runs on the GPU."""
    stack = space.workload.stack
    default = stack_recipes(stack)[0]
    if space.fixed.get("fp8_bf16_layers"):  # only the recipes that keep layers in bf16 (rules.fp8_bf16_layers_recipe)
        able = bf16_layers_recipes(stack)
        runnable = [r for r in runnable_recipes(stack, space.cluster.gpu.architecture) if r in able]
        values = space.domain("fp8_recipe", [None] if default in runnable else runnable)
        return [v for v in values if (default if v is None else v) in able]
    values = space.domain("fp8_recipe", [None])
    return [v for v in values if v is not None or default not in values]


def executions(space: SearchSpace) -> list[Execution]:
    """Every combination of micro-batch, SP, sharding, recompute, precision, optimizer, offload and
    schedule choice; the plan-dependent rules are applied by `enumerate_plans`."""
    gpu = space.cluster.gpu
    shardings = space.default_domain("sharding")
    recomputes = space.default_domain("recompute")
    ladder = [tuple(modules) for modules in space.domain("recompute_modules", selective_ladder(space.model))]
    variants = []
    for mode in recomputes:
        if mode == "selective":
            variants += [(code("recompute", mode), module_mask(modules)) for modules in ladder]
        elif mode in RECOMPUTES:
            variants.append((code("recompute", mode), 0))
    if not space.workload.training:  # no backward, no optimizer: recompute and ZeRO-1/2 change nothing
        none = code("recompute", "none")
        if any(mode == none for mode, _ in variants):
            variants = [(mode, modules) for mode, modules in variants if mode == none]
        if "none" in shardings:
            shardings = [s for s in shardings if s not in ("zero1", "zero2")]
    hsdp_sizes = space.domain("hsdp_shard_size", [space.cluster.node.gpus_per_node])
    # a vpp > 1 layout is interleaved, or with vpp 2 DualPipeV where asked for; the others pick 1f1b or
    # zero_bubble here
    # (the 1f1b execution stands for the interleaved layouts too: `_valid` keeps its vpp-1 plans only where
    # 1f1b itself is asked for)
    domain = space.default_domain("schedule")
    flat = [s for s in domain if s != "interleaved"]
    if "interleaved" in domain and "1f1b" not in flat or not flat:
        flat.append("1f1b")
    cp_comms = cp_comm_domain(space)
    recipes = [recipe_code(r) for r in fp8_recipe_domain(space)]
    out = []
    for mbs, sp, sharding, (recompute, modules), precision, optimizer, offload, schedule, cp_comm, host in itertools.product(
            space.default_domain("micro_batch_size"), space.default_domain("sequence_parallel"),
            shardings, variants, space.default_domain("precision"), space.default_domain("optimizer"),
            space.default_domain("offload"), flat, cp_comms, offload_activations_domain(space)):
        if not gpu.supports(precision):
            continue
        for size, recipe in itertools.product(hsdp_sizes if sharding == "hsdp" else [1],
                                              recipes if precision == "fp8" else [STACK_RECIPE]):
            out.append(Execution(mbs, bool(sp), code("sharding", sharding), size, recompute, modules,
                                 code("precision", precision), code("optimizer", optimizer), code("offload", offload),
                                 schedule in ("zero_bubble", "zbv"), code("cp_comm", cp_comm), bool(host), recipe,
                                 schedule in V_SCHEDULES))
    return out


Structure = tuple[int, int, int, int, int, int, int, "tuple[int, ...] | None"]
"""(tp, cp, pp, dp, ep, etp, vpp, layers_per_stage): the degrees and the pipeline layout of a plan."""


def structures(space: SearchSpace) -> list[Structure]:
    """Every valid combination of degrees and pipeline layout."""
    return [(tp, cp, pp, dp, ep, etp, vpp, stages)
            for tp, cp, pp, dp, ep, etp in degree_combinations(space)
            for vpp, stages in stage_layouts(space, pp)]


def enumerate_plans(space: SearchSpace, rows: list[Structure] | None = None,
                    execs: list[Execution] | None = None) -> PlanArrays:
    """Every structurally valid plan of the space (module docstring) as columns, or of the given
    structures and execution choices."""
    return enumerate_with_structure(space, rows, execs)[0]


def enumerate_with_structure(space: SearchSpace, rows: list[Structure] | None = None,
                             execs: list[Execution] | None = None) -> tuple[PlanArrays, np.ndarray]:
    """`enumerate_plans`, with the index into ``rows`` of each plan's structure."""
    rows = structures(space) if rows is None else rows
    execs = executions(space) if execs is None else execs
    pairs = valid_pairs(space, rows, execs)
    return materialize(space, rows, execs, *pairs), pairs[0]


def _columns(rows: list[Structure], execs: list[Execution]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], np.ndarray]:
    """The structures' degree columns, the executions' choice columns, and the structures' stage layouts
    ((rows, widest pipeline) layers, 0-padded)."""
    structure = {name: np.array([r[i] for r in rows], dtype=np.int64)
                 for i, name in enumerate(("tp", "cp", "pp", "dp", "ep", "etp", "vpp"))}
    choice = {name: np.array([getattr(x, name) for x in execs]) for name in Execution.__dataclass_fields__}
    width = max((len(r[7]) for r in rows if r[7] is not None), default=0)
    stages = np.zeros((len(rows), width), dtype=np.int64)
    for i, r in enumerate(rows):
        if r[7] is not None:
            stages[i, : len(r[7])] = r[7]
    return structure, choice, stages


def valid_pairs(space: SearchSpace, rows: list[Structure], execs: list[Execution]) -> tuple[np.ndarray, np.ndarray]:
    """(structure index, execution index) of every structurally valid plan, in structure-major order: the
    plan-level rules evaluated once over the rows × executions grid (numpy broadcasting), nothing else
    materialised."""
    if not rows or not execs:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    structure, choice, _ = _columns(rows, execs)
    grid = {name: values[:, None] for name, values in structure.items()} | {name: values[None, :] for name, values in choice.items()}
    valid = np.broadcast_to(_valid(space, grid), (len(rows), len(execs)))
    s_idx, e_idx = np.nonzero(valid)
    return s_idx.astype(np.int64), e_idx.astype(np.int64)


def materialize(space: SearchSpace, rows: list[Structure], execs: list[Execution], s_idx: np.ndarray,
                e_idx: np.ndarray) -> PlanArrays:
    """The plans of the given (structure, execution) pairs as columns."""
    if len(s_idx) == 0:
        return _empty()
    structure, choice, stages = _columns(rows, execs)
    col = {name: values[s_idx] for name, values in structure.items()} | {name: values[e_idx] for name, values in choice.items()}
    return _plan_arrays(space, col, stages[s_idx] if stages.shape[1] else None)


def least_memory_recomputes(execs: list[Execution]) -> list[tuple[int, int]]:
    """The (recompute, modules) choices of ``execs`` among which any plan's least memory lies: full
    recompute and the most thorough selective module set (one of the two keeps least; every other
    recompute choice keeps more than both), or every choice when neither is searched."""
    choices = list(dict.fromkeys((e.recompute, e.recompute_modules) for e in execs))
    selective = [m for r, m in choices if r == code("recompute", "selective")]
    thorough = max(selective, key=lambda mask: bin(mask).count("1"), default=None)
    full = [(r, m) for r, m in choices if r == code("recompute", "full")]  # first: it usually keeps least
    least = full + [(r, m) for r, m in choices if r == code("recompute", "selective") and m == thorough]
    return least or choices


def least_memory_executions(space: SearchSpace) -> list[Execution]:
    """The execution choices among which a structure's smallest memory lies: the smallest micro-batch
    (memory never falls with a larger one: in-flight micro-batches × size is capped by the replica's batch),
    full recompute and the most thorough selective module set (one of the two keeps least; every other
    recompute choice keeps more than both), and every value of the other choices. Offloading activations,
    every recompute choice: a stack that offloads without recompute only (Megatron-Core) makes recompute
    none with offload keep less than full recompute without."""
    execs = executions(space)
    if not execs:  # e.g. a pinned cp_comm the stack does not offer
        return []
    smallest = min(e.micro_batch_size for e in execs)
    execs = [e for e in execs if e.micro_batch_size == smallest]
    least = least_memory_recomputes([e for e in execs if not e.offload_activations])
    return [e for e in execs if e.offload_activations or (e.recompute, e.recompute_modules) in least]


def _valid(space: SearchSpace, c: dict[str, np.ndarray]) -> np.ndarray:
    """The plan-level rules of `constraints.rules` on the combined columns."""
    m, w = space.model, space.workload
    replicas = c["dp"] * c["micro_batch_size"]
    ok = (w.global_batch_size % replicas == 0) & (c["micro_batch_size"] <= np.maximum(w.global_batch_size // c["dp"], 1))
    micro = w.global_batch_size // replicas
    sp_possible = (c["tp"] > 1) & ((w.seq_len // c["cp"]) % c["tp"] == 0)
    ok &= sp_possible | ~c["sequence_parallel"]
    if m.moe is not None:
        ok &= (c["tp"] == 1) | c["sequence_parallel"]
    if "sequence_parallel" not in space.fixed and "sequence_parallel" not in space.ranges:
        ok &= c["sequence_parallel"] == sp_possible  # on wherever it can be: it never costs time or memory
    data = c["dp"] * c["cp"]
    s = c["sharding"]
    ok &= (s == code("sharding", "none")) | (data > 1) | (c["offload"] != code("offload", "none"))
    ok &= (c["pp"] == 1) | ~np.isin(s, [code("sharding", "zero2"), code("sharding", "zero3")])
    hsdp = s == code("sharding", "hsdp")
    ok &= ~hsdp | ((c["hsdp_shard_size"] > 1) & (c["hsdp_shard_size"] < data) & (data % c["hsdp_shard_size"] == 0))
    ok &= (c["offload"] == code("offload", "none")) | (s != code("sharding", "none"))
    schedules = space.default_domain("schedule")
    v = c["v_schedule"]
    interleaved = (c["vpp"] > 1) & ~v
    ok &= ~interleaved | (("interleaved" in schedules) & ~c["zero_bubble"] & (micro % c["pp"] == 0))
    ok &= (c["vpp"] > 1) | c["zero_bubble"] | (("1f1b" in schedules) & ~v)
    ok &= ~c["zero_bubble"] | (c["pp"] > 1)
    ok &= ~v | ((c["vpp"] == 2) & (c["pp"] > 1) & (micro >= 2 * c["pp"] - c["zero_bubble"]))  # rules.v_schedule_*
    # context parallelism's exchange: one way without it (no duplicate plans); Ulysses splits the heads
    a2a = c["cp_comm"] == code("cp_comm", "a2a")
    kv_heads = m.num_attention_heads if m.mla is not None else m.num_kv_heads
    ok &= ~a2a | ((c["cp"] > 1) & (w.seq_len % c["cp"] == 0) & (m.num_attention_heads % (c["tp"] * c["cp"]) == 0)
                  & (kv_heads % (c["tp"] * c["cp"]) == 0))
    ok &= a2a | (c["cp"] == 1) | (w.seq_len % (2 * c["cp"]) == 0)
    usp = c["cp_comm"] == code("cp_comm", "a2a+p2p")  # rules.usp_split
    if usp.any():
        ok &= ~usp | (ulysses_degree(m.num_attention_heads, kv_heads, c["tp"], c["cp"], space.fast_domain) >= 2)
    offered = [code("cp_comm", x) for x in stacks()[w.stack]["cp_comms"]]
    ok &= (c["cp"] == 1) | np.isin(c["cp_comm"], offered)
    if w.peft is not None and w.peft.method == "qlora":  # rules.qlora_computes_in_16_or_32_bits
        ok &= c["precision"] != code("precision", "fp8")
    stack = stacks()[w.stack]  # rules.activation_offload_*
    offloading = c["offload_activations"]
    ok &= ~offloading | (w.training and stack["activation_offload"])
    if "pipeline" in stack["activation_offload_excludes"]:
        ok &= ~offloading | (c["pp"] == 1)
    if "recompute" in stack["activation_offload_excludes"]:
        ok &= ~offloading | (c["recompute"] == code("recompute", "none"))
    return ok


def _plan_arrays(space: SearchSpace, c: dict[str, np.ndarray], layers_per_stage: np.ndarray | None) -> PlanArrays:
    n = len(c["tp"])
    default = space.default_plan()
    const = lambda value, dtype=np.int64: np.full(n, value, dtype=dtype)  # noqa: E731
    schedule = np.select([c["v_schedule"] & c["zero_bubble"], c["v_schedule"], c["vpp"] > 1, c["zero_bubble"]],
                         [code("schedule", "zbv"), code("schedule", "dualpipev"), code("schedule", "interleaved"),
                          code("schedule", "zero_bubble")],
                         default=code("schedule", "1f1b"))
    data = c["dp"] * c["cp"]
    s = c["sharding"]
    shard_group = np.select([s == code("sharding", "none"), s == code("sharding", "hsdp")], [const(1), c["hsdp_shard_size"]],
                            default=data)
    recompute_layers = const(ALL_LAYERS)
    if "recompute_layers" in space.fixed:
        recompute_layers = np.where(c["recompute"] == code("recompute", "full"), space.fixed["recompute_layers"], ALL_LAYERS)
    return PlanArrays(
        tp=c["tp"], pp=c["pp"], dp=c["dp"], cp=c["cp"], ep=c["ep"], etp=c["etp"], vpp=c["vpp"],
        micro_batch_size=c["micro_batch_size"].astype(np.int64), shard_group=shard_group.astype(np.int64),
        recompute_layers=recompute_layers.astype(np.int64), recompute_modules=c["recompute_modules"].astype(np.int64),
        sequence_parallel=c["sequence_parallel"].astype(bool), sharding=s.astype(np.int64),
        recompute=c["recompute"].astype(np.int64), precision=c["precision"].astype(np.int64),
        fp8_recipe=c["fp8_recipe"].astype(np.int64), fp8_bf16_layers=const(default.fp8_bf16_layers),
        master_weights=const(default.master_weights, bool), optimizer=c["optimizer"].astype(np.int64),
        offload=c["offload"].astype(np.int64), schedule=schedule.astype(np.int64),
        kernels=const(code("kernels", default.kernels)), attention_kernel=const(code("attention_kernel", default.attention_kernel)),
        kv_cache_dtype=const(code("kv_cache_dtype", default.kv_cache_dtype)),
        persistent_grads=const(default.persistent_grads, bool), tp_comm_overlap=const(default.tp_comm_overlap, bool),
        ep_comm_overlap=const(default.ep_comm_overlap, bool), grad_reduce_overlap=const(default.grad_reduce_overlap, bool),
        param_gather_overlap=const(default.param_gather_overlap, bool), cp_comm=c["cp_comm"].astype(np.int64),
        offload_activations=c["offload_activations"].astype(bool),
        layers_per_stage=layers_per_stage,
    )


def _empty() -> PlanArrays:
    return PlanArrays.product(tp=[1]).take(np.zeros(0, dtype=bool))


__all__ = ["LONG_CONTEXT_TOKENS", "SEARCHED", "SETTINGS", "SearchSpace", "enumerate_plans", "RECOMPUTE_MODULES", "uneven_splits"]
