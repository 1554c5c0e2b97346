"""The techniques `plan optimize` may change (``data/techniques.json``: effort class, fields, risk and its
source) and the plans one change of a technique leads to from a given plan (`moves`).

A move changes the technique's own fields and whatever the change forces on the others: a new tp keeps
sequence parallelism on where it can be (the solver's default: it never costs time or memory) and takes
etp along when etp followed tp; a new pp resets the stages to the even split (1F1B, or zero-bubble where
the plan ran it); a new degree leaves dp the GPUs the others leave; activation offload on a stack that
offloads without recompute only (Megatron-Core) turns recompute off. Whether the moved plan obeys every
rule and fits is not decided here: `solver.ladder` prices and checks every move.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Any

from pydantic import ValidationError

from parallelplan.constraints import Plan, Workload
from parallelplan.constraints.attention import STACK_DEFAULT, priced_kernels, speed_ratio
from parallelplan.constraints.check import selective_ladder
from parallelplan.constraints.efficiency import stack_schedules, stacks
from parallelplan.constraints.fp8 import plan_recipe, runnable_recipes
from parallelplan.constraints.plan import OFFLOAD_SHARDING, SHARDINGS, V_SCHEDULES
from parallelplan.hardware import ClusterSpec, load_cluster
from parallelplan.models import ModelSpec
from parallelplan.solver.errors import SolverInputError
from parallelplan.solver.space import DEFAULTS, MAX_VPP, SearchSpace, cp_candidates, tp_domain, uneven_splits

MAX_EFFORTS = ("low", "medium", "high")
OPTIMIZER_TECHNIQUES = ("adamw8bit", "adafactor", "lion", "sgd", "came")
"""Techniques that swap the optimizer (each sets ``optimizer`` to its own name)."""
SCHEDULE_TECHNIQUES = ("interleaved", "zero_bubble", "dualpipev", "zbv")
"""Techniques that change the pipeline schedule (each to the schedule of its own name)."""


@dataclass(frozen=True)
class Risk:
    text: str
    source: str


@dataclass(frozen=True)
class Technique:
    """One entry of ``data/techniques.json``."""

    name: str
    effort: str
    effort_rank: int
    fields: tuple[str, ...]
    changes_math: bool
    summary: str
    risk: Risk | None


@dataclass(frozen=True)
class Move:
    """``plan`` (on ``cluster``) is the plan one change of ``technique`` leads to; ``change`` says it in words."""

    technique: Technique
    plan: Plan
    cluster: ClusterSpec
    change: str


@lru_cache(maxsize=1)
def _catalog() -> dict[str, Any]:
    return json.loads(resources.files("parallelplan.solver").joinpath("data/techniques.json").read_text())


@lru_cache(maxsize=1)
def catalog() -> dict[str, Technique]:
    """Every technique, in the catalog's order (the ladder's tie-break order)."""
    data = _catalog()
    ranks = {name: effort["rank"] for name, effort in data["efforts"].items()}
    return {name: Technique(name=name, effort=t["effort"], effort_rank=ranks[t["effort"]], fields=tuple(t["fields"]),
                            changes_math=t["changes_math"], summary=t["summary"],
                            risk=Risk(**t["risk"]) if t["risk"] else None)
            for name, t in data["techniques"].items()}


def effort_label(effort: str) -> str:
    return _catalog()["efforts"][effort]["label"]


def chosen_techniques(cluster: ClusterSpec, stack: str, goal: str, max_effort: str, only: Sequence[str] | None = None,
                      skip: Sequence[str] = ()) -> tuple[list[Technique], list[Technique], list[str]]:
    """(the techniques the user accepts, those of them within ``max_effort`` — the ladder's —, notes on
    those left out): ``only`` (names; default every technique but ``default_off``, which the memory goal
    takes CPU offload from, and the schedules ``stack`` does not run), less ``skip``. Unknown names, fp8
    named for a GPU without fp8 and a schedule named that the stack does not run are `SolverInputError`s."""
    data, every = _catalog(), catalog()
    if max_effort not in MAX_EFFORTS:
        raise SolverInputError(f"max_effort {max_effort!r}: use one of {', '.join(MAX_EFFORTS)}")
    for what, names in (("techniques", only or ()), ("skip", skip)):
        unknown = [n for n in names if n not in every]
        if unknown:
            raise SolverInputError(f"{what}: unknown technique {', '.join(map(repr, unknown))}; "
                                   f"the techniques are {', '.join(every)}")
    for precision in ("fp8", "tf32"):
        if only is not None and precision in only and not cluster.gpu.supports(precision):
            raise SolverInputError(f"techniques: {precision} needs {precision} tensor cores, which the {cluster.gpu.name} "
                                   f"lacks; leave {precision} out")
    runs = stack_schedules(stack)
    unrun = [n for n in SCHEDULE_TECHNIQUES if n not in runs]
    named_unrun = [n for n in only or () if n in unrun]
    if named_unrun:
        raise SolverInputError(f"techniques: the {stack} stack does not run {', '.join(named_unrun)} (it runs "
                               f"{', '.join(runs)}); leave {'them' if len(named_unrun) > 1 else 'it'} out or choose "
                               f"a stack that runs {'them' if len(named_unrun) > 1 else 'it'}")
    default_off = set(data["default_off"]) - ({"offload"} if goal == "memory" else set())
    names = list(only) if only is not None else [n for n in every if n not in default_off and n not in unrun]
    if "nodes" in names and goal != "cost":
        names.remove("nodes")  # fewer nodes only ever lengthen the step and shrink memory by nothing
    efforts = set(data["max_effort"][max_effort])
    notes = [f"left out: {', '.join(unrun)} — schedules the {stack} stack does not run"] if only is None and unrun else []
    above = [n for n in names if every[n].effort not in efforts and n not in skip]
    if above:
        notes.append(f"left out above --max-effort {max_effort}: {', '.join(above)}")
    for precision in ("fp8", "tf32"):
        if precision in names and not cluster.gpu.supports(precision):
            names.remove(precision)
            notes.append(f"{precision} left out: the {cluster.gpu.name} has no {precision} tensor cores")
    accepted = [every[n] for n in names if n not in skip]
    return accepted, [t for t in accepted if t.effort in efforts], notes


class _Context:
    """What the move generators share: the model, cluster, workload and the search space's domains."""

    def __init__(self, model: ModelSpec, cluster: ClusterSpec, workload: Workload, allow_cross_domain: bool,
                 node_counts: Sequence[int]):
        self.model, self.cluster, self.workload = model, cluster, workload
        self.tps = tp_domain(SearchSpace(model, cluster, workload, allow_cross_domain=allow_cross_domain))
        self.node_counts = node_counts


def moves(model: ModelSpec, cluster: ClusterSpec, workload: Workload, plan: Plan, techniques: Sequence[Technique], *,
          allow_cross_domain: bool = False, node_counts: Sequence[int] = ()) -> list[Move]:
    """Every plan one change of one of ``techniques`` leads to from ``plan`` (on ``cluster``; ``nodes``
    moves to each of ``node_counts`` below it), distinct and different from ``plan``."""
    ctx = _Context(model, cluster, workload, allow_cross_domain, node_counts)
    out: list[Move] = []
    seen = {(plan, cluster.total_gpus)}
    for technique in techniques:
        for change, update, sized in _GENERATORS[technique.name](ctx, plan, technique.name):
            try:
                moved = Plan.model_validate(plan.model_dump(exclude={"zero_stage"}) | update)
            except ValidationError:
                continue
            if moved.sharding != "none" and moved.dp * moved.cp == 1 and moved.offload == "none":
                # one data-parallel rank has nothing to shard over: the search space's form of the plan
                moved = Plan.model_validate(moved.model_dump(exclude={"zero_stage"}) | {"sharding": "none",
                                                                                      "hsdp_shard_size": None})
                change += f", sharding {plan.sharding} → none (one data-parallel rank)"
            key = (moved, (sized or cluster).total_gpus)
            if key not in seen:
                seen.add(key)
                out.append(Move(technique, moved, sized or cluster, change))
    return out


Change = tuple[str, dict[str, Any], "ClusterSpec | None"]


def _switch_on(ctx: _Context, plan: Plan, name: str) -> Iterator[Change]:
    if not getattr(plan, name):
        yield f"{name.replace('_', ' ')} on", {name: True}, None


def _sequence_parallel(ctx: _Context, plan: Plan, name: str) -> Iterator[Change]:
    if plan.tp > 1 and not plan.sequence_parallel:
        yield "sequence parallelism on", {"sequence_parallel": True}, None


def _recompute_text(plan: Plan) -> str:
    if plan.recompute == "selective":
        return f"selective ({', '.join(plan.recompute_modules or ())})"
    if plan.recompute == "full" and plan.recompute_layers is not None:
        return f"full on {plan.recompute_layers} layers per stage"
    return plan.recompute


def _recompute(ctx: _Context, plan: Plan, name: str) -> Iterator[Change]:
    before = _recompute_text(plan)
    options: list[dict[str, Any]] = [{"recompute": "none"}, {"recompute": "selective_mm"}, {"recompute": "full"}]
    options += [{"recompute": "selective", "recompute_modules": m} for m in selective_ladder(ctx.model)]
    per_stage = -(-ctx.model.num_layers // (plan.pp * plan.vpp))
    if plan.layers_per_stage:
        per_stage = max(plan.layers_per_stage)
    options += [{"recompute": "full", "recompute_layers": k} for k in range(1, per_stage)]
    for option in options:
        update = {"recompute_modules": None, "recompute_layers": None} | option
        after = _recompute_text(Plan.model_validate({"recompute": update["recompute"],
                                                     "recompute_modules": update["recompute_modules"],
                                                     "recompute_layers": update["recompute_layers"]}))
        yield f"recompute {before} → {after}", update, None


def _micro_batch(ctx: _Context, plan: Plan, name: str) -> Iterator[Change]:
    for size in DEFAULTS["micro_batch_size"]:
        yield f"micro-batch {plan.micro_batch_size} → {size}", {"micro_batch_size": size}, None


def _sharding(ctx: _Context, plan: Plan, name: str) -> Iterator[Change]:
    node = ctx.cluster.node.gpus_per_node
    for sharding in SHARDINGS:
        size = node if sharding == "hsdp" else None
        if sharding != plan.sharding or size != plan.hsdp_shard_size:
            shown = f"hsdp (shards of {node})" if sharding == "hsdp" else sharding
            yield f"sharding {plan.sharding} → {shown}", {"sharding": sharding, "hsdp_shard_size": size}, None


def _offload(ctx: _Context, plan: Plan, name: str) -> Iterator[Change]:
    """Another offload; one that needs a sharding stage the plan lacks brings the least that runs it (ZeRO-1
    for the optimizer, FSDP for the parameters), as ZeRO-Offload does on a single data-parallel rank."""
    for offload in ("none", "optimizer", "params"):
        needs = OFFLOAD_SHARDING.get(offload, ())
        if needs and plan.sharding not in needs:
            yield (f"offload {plan.offload} → {offload}, sharding {plan.sharding} → {needs[0]}",
                   {"offload": offload, "sharding": needs[0], "hsdp_shard_size": None}, None)
        else:
            yield f"offload {plan.offload} → {offload}", {"offload": offload}, None


def _offload_activations(ctx: _Context, plan: Plan, name: str) -> Iterator[Change]:
    """On or off; turned on where the stack offloads without recompute only (Megatron-Core), recompute goes."""
    if plan.offload_activations:
        yield "activation offload off", {"offload_activations": False}, None
    elif "recompute" in stacks()[ctx.workload.stack]["activation_offload_excludes"] and plan.recompute != "none":
        yield (f"activation offload on, recompute {_recompute_text(plan)} → none (the {ctx.workload.stack} stack "
               "offloads without recompute only)",
               {"offload_activations": True, "recompute": "none", "recompute_modules": None, "recompute_layers": None}, None)
    else:
        yield "activation offload on", {"offload_activations": True}, None


PRECISION_MOVES = {"fp8": ("bf16", "fp16", "fp32", "tf32"), "bf16": ("fp16", "fp32", "tf32"), "tf32": ("fp32",)}
"""The precisions each precision technique moves from: towards fewer bits per GEMM input, never back."""


def _precision(ctx: _Context, plan: Plan, name: str) -> Iterator[Change]:
    if ctx.cluster.gpu.supports(name) and plan.precision in PRECISION_MOVES[name]:
        yield f"precision {plan.precision} → {name}", {"precision": name}, None


def _fp8_recipe(ctx: _Context, plan: Plan, name: str) -> Iterator[Change]:
    """An fp8 plan's other recipes that its stack and GPU run."""
    if plan.precision == "fp8":
        current = plan_recipe(plan.fp8_recipe, ctx.workload.stack)
        for recipe in runnable_recipes(ctx.workload.stack, ctx.cluster.gpu.architecture):
            if recipe != current:
                yield f"fp8 recipe {current} → {recipe}", {"fp8_recipe": recipe}, None


def _optimizer(ctx: _Context, plan: Plan, name: str) -> Iterator[Change]:
    yield f"optimizer {plan.optimizer} → {name}", {"optimizer": name}, None


def _attention_kernel(ctx: _Context, plan: Plan, name: str) -> Iterator[Change]:
    """Eager attention to the stack's flash kernel or a faster one; a flash kernel to a faster one the stack
    offers on this GPU (`constraints.attention`: all keep the same memory, so only speed moves)."""
    stack, arch, current = ctx.workload.stack, ctx.cluster.gpu.architecture, plan.attention_kernel

    def ratio(kernel: str) -> float:
        return speed_ratio(kernel, stack, arch) or 0.0

    named = priced_kernels(stack, arch)
    targets = ([STACK_DEFAULT] + [k for k in named if ratio(k) > 1.0] if current == "eager"
               else [k for k in named if ratio(k) > ratio(current)])
    for kernel in targets:
        yield f"attention kernel {current} → {kernel}", {"attention_kernel": kernel}, None


def _setting(field: str, value: str) -> Any:
    def generate(ctx: _Context, plan: Plan, name: str) -> Iterator[Change]:
        yield f"{field.replace('_', ' ')} {getattr(plan, field)} → {value}", {field: value}, None
    return generate


def _interleaved(ctx: _Context, plan: Plan, name: str) -> Iterator[Change]:
    if plan.pp > 1:
        for vpp in range(2, MAX_VPP + 1):
            if ctx.model.num_layers % (plan.pp * vpp) == 0:
                yield (f"interleaved schedule, vpp {plan.vpp} → {vpp}",
                       {"vpp": vpp, "schedule": "interleaved", "layers_per_stage": None}, None)


def _zero_bubble(ctx: _Context, plan: Plan, name: str) -> Iterator[Change]:
    if plan.pp > 1:
        stages = plan.layers_per_stage if plan.vpp == 1 else None
        yield f"schedule {plan.schedule} → zero_bubble", {"schedule": "zero_bubble", "vpp": 1, "layers_per_stage": stages}, None


def _v_schedule(ctx: _Context, plan: Plan, name: str) -> Iterator[Change]:
    """DualPipeV or ZB-V (``name``) where the layers split into 2·pp equal chunks."""
    if plan.pp > 1 and ctx.model.num_layers % (2 * plan.pp) == 0:
        yield f"schedule {plan.schedule} → {name}", {"schedule": name, "vpp": 2, "layers_per_stage": None}, None


def _uneven_stages(ctx: _Context, plan: Plan, name: str) -> Iterator[Change]:
    if plan.pp > 1:
        schedule = plan.schedule if plan.schedule not in ("interleaved", *V_SCHEDULES) else "1f1b"
        splits = list(uneven_splits(ctx.model.num_layers, plan.pp))
        if ctx.model.num_layers % plan.pp == 0:
            splits.append(None)  # back to the even split
        for split in splits:
            shown = ",".join(map(str, split)) if split else "even"
            yield f"stages → {shown}", {"layers_per_stage": split, "vpp": 1, "schedule": schedule}, None


def _dp(gpus: int, tp: int, pp: int, cp: int) -> int | None:
    return gpus // (tp * pp * cp) if gpus % (tp * pp * cp) == 0 else None


def _tp(ctx: _Context, plan: Plan, name: str) -> Iterator[Change]:
    for tp in ctx.tps:
        dp = _dp(ctx.cluster.total_gpus, tp, plan.pp, plan.cp)
        if tp != plan.tp and dp:
            sp = tp > 1 and (ctx.workload.seq_len // plan.cp) % tp == 0
            etp = tp if plan.etp == plan.tp else plan.etp
            yield f"tp {plan.tp} → {tp} (dp {plan.dp} → {dp})", {"tp": tp, "dp": dp, "sequence_parallel": sp, "etp": etp}, None


def _pp(ctx: _Context, plan: Plan, name: str) -> Iterator[Change]:
    for pp in range(1, ctx.model.num_layers + 1):
        dp = _dp(ctx.cluster.total_gpus, plan.tp, pp, plan.cp)
        if pp != plan.pp and dp and ctx.model.num_layers % pp == 0:
            schedule = "zero_bubble" if plan.schedule == "zero_bubble" and pp > 1 else "1f1b"
            yield (f"pp {plan.pp} → {pp} (dp {plan.dp} → {dp})",
                   {"pp": pp, "dp": dp, "vpp": 1, "schedule": schedule, "layers_per_stage": None}, None)


def _cp(ctx: _Context, plan: Plan, name: str) -> Iterator[Change]:
    for cp in cp_candidates(ctx.workload.seq_len, ctx.cluster.total_gpus):
        dp = _dp(ctx.cluster.total_gpus, plan.tp, plan.pp, cp)
        if cp != plan.cp and dp:
            sp = plan.tp > 1 and (ctx.workload.seq_len // cp) % plan.tp == 0
            yield (f"cp {plan.cp} → {cp} (dp {plan.dp} → {dp})",
                   {"cp": cp, "dp": dp, "sequence_parallel": sp, "cp_comm": plan.cp_comm if cp > 1 else "p2p"}, None)


def _ep(ctx: _Context, plan: Plan, name: str) -> Iterator[Change]:
    """Another expert-parallel degree, or the experts' own tensor parallelism (etp 1 or tp)."""
    moe = ctx.model.moe
    if moe is not None:
        for ep in range(1, moe.num_experts + 1):
            if moe.num_experts % ep == 0 and ep != plan.ep:
                yield f"ep {plan.ep} → {ep}", {"ep": ep}, None
        for etp in sorted({1, plan.tp} - {plan.etp}):
            yield f"expert tp {plan.etp} → {etp}", {"etp": etp}, None


def _nodes(ctx: _Context, plan: Plan, name: str) -> Iterator[Change]:
    nodes = ctx.cluster.num_nodes
    for n in ctx.node_counts:
        if n < nodes and (plan.dp * n) % nodes == 0:
            dp = plan.dp * n // nodes
            yield (f"nodes {nodes} → {n} (dp {plan.dp} → {dp})", {"dp": dp},
                   load_cluster(ctx.cluster, nodes=n))


_GENERATORS = {
    "sequence_parallel": _sequence_parallel,
    "tp_comm_overlap": _switch_on, "grad_reduce_overlap": _switch_on, "param_gather_overlap": _switch_on,
    "ep_comm_overlap": _switch_on,
    "recompute": _recompute, "micro_batch": _micro_batch, "sharding": _sharding, "offload": _offload,
    "offload_activations": _offload_activations,
    "bf16": _precision, "fp8": _precision, "tf32": _precision, "fp8_recipe": _fp8_recipe,
    **dict.fromkeys(OPTIMIZER_TECHNIQUES, _optimizer),
    "fused_kernels": _setting("kernels", "fused"), "flash_attention": _attention_kernel,
    "interleaved": _interleaved, "zero_bubble": _zero_bubble, "dualpipev": _v_schedule, "zbv": _v_schedule, "uneven_stages": _uneven_stages,
    "tp": _tp, "pp": _pp, "cp": _cp, "ep": _ep, "nodes": _nodes,
}
"""Each technique's move generator: (change in words, the Plan fields it sets, the resized cluster or None)."""
