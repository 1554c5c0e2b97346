"""`check(model, cluster, plan, workload) -> list[Violation]`: every rule a plan breaks — the structural
rules of `constraints.rules` and, priced by the cost model, whether it fits in GPU memory. An empty list
means the plan can run."""

from __future__ import annotations

from parallelplan.constraints.efficiency import Efficiency
from parallelplan.constraints.estimate import Estimate, estimate
from parallelplan.constraints.evaluate import evaluate
from parallelplan.constraints.peft import workload_state_recipe
from parallelplan.constraints.plan import SHARDINGS, Plan, Workload
from parallelplan.constraints.rules import UNPRICEABLE, Violation, structural_violations
from parallelplan.constraints.runtime import RuntimeAllowance
from parallelplan.hardware import ClusterSpec
from parallelplan.models import ModelSpec

GIB = 2**30


def check(model: ModelSpec, cluster: ClusterSpec, plan: Plan, workload: Workload, *,
          allow_cross_domain: bool = False, efficiency: Efficiency | None = None,
          runtime: RuntimeAllowance | None = None) -> list[Violation]:
    return check_and_estimate(model, cluster, plan, workload, allow_cross_domain=allow_cross_domain,
                              efficiency=efficiency, runtime=runtime)[0]


def check_and_estimate(model: ModelSpec, cluster: ClusterSpec, plan: Plan, workload: Workload, *,
                       allow_cross_domain: bool = False, efficiency: Efficiency | None = None,
                       runtime: RuntimeAllowance | None = None) -> tuple[list[Violation], Estimate | None]:
    """`check`'s violations and the `Estimate` its memory rule priced (None when a rule of `UNPRICEABLE`
    makes the plan unpriceable), for callers that report both."""
    out = structural_violations(model, cluster, plan, workload, allow_cross_domain=allow_cross_domain)
    if any(v.rule in UNPRICEABLE for v in out):
        return out, None
    est = estimate(model, cluster, plan, workload, efficiency=efficiency, runtime=runtime)
    mem = est.memory
    host_capacity = cluster.node.host_memory_bytes
    if host_capacity and mem.host * cluster.node.gpus_per_node > host_capacity:
        out.append(Violation(
            rule="host_memory_fits",
            message=(f"the offloads keep {mem.host / GIB:.1f} GiB per GPU in host memory, "
                     f"{mem.host * cluster.node.gpus_per_node / GIB:,.0f} GiB per node of {cluster.node.gpus_per_node} GPUs; "
                     f"the node has {host_capacity / GIB:,.0f} GiB"),
            fix="offload less (offload_activations false, offload none), shard the states over more GPUs, or recompute",
        ))
    if mem.total > mem.usable:
        out.append(Violation(
            rule="memory_fits",
            message=(f"stage {mem.stage} needs {mem.total / GIB:.1f} GiB per GPU (weights {mem.weights / GIB:.1f}, "
                     f"gradients {mem.gradients / GIB:.1f}, optimizer {mem.optimizer / GIB:.1f}, activations "
                     f"{mem.activations / GIB:.1f}, KV cache {mem.kv_cache / GIB:.1f}, runtime "
                     f"{mem.overhead / GIB:.1f}); the GPU has {mem.usable / GIB:.1f} GiB"),
            fix=_memory_fix(model, cluster, plan, workload, efficiency, runtime),
        ))
    return out, est


def _memory_fix(model: ModelSpec, cluster: ClusterSpec, plan: Plan, workload: Workload, efficiency: Efficiency | None,
                runtime: RuntimeAllowance | None) -> str:
    """The single changes that make the plan fit, each priced by the cost model (one batch), smallest
    footprint first; when none does alone, the levers to combine. A change counts when it breaks no rule
    the plan does not already break (the plan's other violations have fixes of their own)."""
    def rules(p: Plan) -> set[str]:
        return {v.rule for v in structural_violations(model, cluster, p, workload, allow_cross_domain=True)}

    already = rules(plan)
    candidates = [(what, changed) for what, changed in _levers(model, plan) if rules(changed) <= already]
    if candidates:
        result = evaluate(model, cluster, workload, [c for _, c in candidates], efficiency=efficiency, runtime=runtime)
        fitting = sorted((float(result.memory.total[i]), what) for i, (what, _) in enumerate(candidates) if result.fits[i])
        if fitting:
            return "; ".join(f"{what} ({total / GIB:.1f} GiB)" for total, what in fitting[:4])
    if not workload.training:
        return "no single change fits: raise tp or pp together, serve fewer sequences at once, or use more GPUs"
    recipe = workload_state_recipe(model, plan, workload)
    states = recipe.bytes_per_param * model.total_params
    capacity = cluster.total_gpus * cluster.gpu.memory_bytes
    if states > capacity:
        needed = int(-(-states // cluster.gpu.memory_bytes))
        return (f"the model states alone need {states / 1e12:.2f} TB at {recipe}; the {cluster.total_gpus} GPUs hold {capacity / 1e12:.2f} TB even "
                f"fully sharded: use at least {needed} GPUs, or 8-bit optimizer states / optimizer offload")
    return ("no single change fits: combine recompute, sharding, 8-bit optimizer states and more tp/pp, "
            "or use more GPUs")


def selective_ladder(model: ModelSpec) -> list[tuple[str, ...]]:
    """Selective-recompute module sets from cheap to thorough, keeping the ones that apply to the model:
    norms and the attention core; + the MoE activation and MLA's up-projections; + whole MLP/MoE blocks."""
    cheap = ["core_attn", "layernorm"]
    medium = cheap + (["moe_act"] if model.moe else []) + (["mla_up_proj"] if model.mla else [])
    blocks = medium + (["mlp"] if model.num_dense_layers else []) + (["moe"] if model.moe else [])
    ladder = [tuple(cheap), tuple(medium), tuple(blocks)]
    return [m for i, m in enumerate(ladder) if m not in ladder[:i]]


def _levers(model: ModelSpec, plan: Plan) -> list[tuple[str, Plan]]:
    """One-change variants of ``plan`` that lower memory (same GPU count)."""
    out = []

    def lever(what: str, **update) -> None:
        changed = Plan.model_validate(plan.model_dump() | update)
        if changed != plan:
            out.append((what, changed))

    if plan.recompute in ("none", "selective"):
        current = set(plan.recompute_modules or ())
        for modules in selective_ladder(model):
            if set(modules) - current:
                lever(f"recompute selective ({', '.join(modules)})", recompute="selective", recompute_modules=modules)
        lever("recompute full", recompute="full", recompute_modules=None, recompute_layers=None)
    if plan.recompute == "full" and plan.recompute_layers is not None:
        lever("recompute every layer", recompute_layers=None)
    if plan.dp * plan.cp > 1:
        for sharding in ("zero1", "zero2", "fsdp"):
            if SHARDINGS.index(sharding) > SHARDINGS.index(plan.sharding):
                lever(f"sharding {sharding}", sharding=sharding, zero_stage=None, hsdp_shard_size=None)
    if plan.micro_batch_size > 1:
        lever("micro-batch 1", micro_batch_size=1)
    if plan.tp > 1 and not plan.sequence_parallel:
        lever("sequence parallelism", sequence_parallel=True)
    if plan.optimizer == "adamw":
        lever("8-bit AdamW", optimizer="adamw8bit")
    if plan.offload == "none" and plan.sharding != "none":
        lever("offload the optimizer to the CPU", offload="optimizer")
    if plan.dp % 2 == 0:
        lever(f"tp {2 * plan.tp} (dp {plan.dp // 2})", tp=2 * plan.tp, dp=plan.dp // 2, etp=None, layers_per_stage=None,
              sequence_parallel=plan.sequence_parallel or plan.tp == 1)
        lever(f"pp {2 * plan.pp} (dp {plan.dp // 2})", pp=2 * plan.pp, dp=plan.dp // 2, layers_per_stage=None)
    return out
