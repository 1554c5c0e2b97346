"""Solved plan → launch files and commands, one small module per framework, deciding nothing:

- `emit(solution, target, **options) -> dict[filename, content]` (options: `emitters.job.OPTIONS`); a PPO /
  GRPO step (`solver.RLSolution`) goes to the targets that run one (verl);
- `list_targets()`; `constraints(target)`: the pins, ranges and switches that keep a search inside what the
  target can express (`plan launch` solves with them); `rl_constraints(target)`: the same per role of an RL
  step (`solver.solve_rl`'s ``limits``);
- `EmitError` for a plan the framework cannot express, naming the framework and the dimension;
- `read_config(data, world_size) -> ReadConfig`: a user's DeepSpeed JSON read back into `Plan` fields, the
  global batch, findings and notes (`emitters.deepspeed`, loaded on first use).
"""

from __future__ import annotations

from importlib import import_module
from types import ModuleType
from typing import Any

from parallelplan.common.lazy import lazy_exports
from parallelplan.emitters.errors import EmitError

_TARGETS = ("accelerate", "deepspeed", "megatron", "sglang", "slurm", "torchrun", "torchtitan", "trl", "verl", "vllm")
"""One module per target, `emitters.<target>` (loaded on first use: catching `EmitError` costs nothing)."""


def list_targets() -> list[str]:
    return sorted(_TARGETS)


def _module(target: str) -> ModuleType:
    if target not in _TARGETS:
        raise EmitError(f"unknown target {target!r}; use one of {', '.join(list_targets())}")
    return import_module(f"parallelplan.emitters.{target}")


def constraints(target: str) -> dict[str, Any]:
    """Keyword arguments for `solver.solve` that keep the plan expressible by ``target`` (activations stay on
    the GPU unless the target writes their offload, ``OFFLOADS_ACTIVATIONS``)."""
    module = _module(target)
    found = getattr(module, "CONSTRAINTS", {})
    out = {key: dict(value) if isinstance(value, dict) else value for key, value in found.items()}
    if not getattr(module, "OFFLOADS_ACTIVATIONS", False):
        out["fixed"] = out.get("fixed", {}) | {"offload_activations": False}
    return out


def rl_constraints(target: str) -> dict[str, dict[str, Any]]:
    """Per role of a PPO / GRPO step, the pins and ranges that keep its search inside what ``target`` runs."""
    found = getattr(_module(target), "RL_CONSTRAINTS", None)
    if found is None:
        runs = [t for t in _TARGETS if getattr(_module(t), "RL_CONSTRAINTS", None) is not None]
        raise EmitError(f"the {target} target writes no PPO or GRPO step yet; use --target {' or '.join(runs)}")
    return {role: {k: dict(v) if isinstance(v, dict) else v for k, v in limits.items()} for role, limits in found.items()}


def single_model_targets() -> list[str]:
    """The targets that write a single model's plan (verl writes RL steps only)."""
    return [t for t in list_targets() if not getattr(_module(t), "RL_ONLY", False)]


def rl_placement(target: str) -> str | None:
    """The placement ``target`` runs an RL step in (verl: colocated), None when it runs either."""
    rl_constraints(target)
    return getattr(_module(target), "RL_PLACEMENT", None)


def emit(solution, target: str, **options: Any) -> dict[str, str]:
    """The files of ``target`` for a solved plan (`solver.Solution`) or RL step (`solver.RLSolution`)."""
    from parallelplan.emitters.job import Job

    module = _module(target)
    if hasattr(solution, "roles"):  # an RL step: several roles
        rl_constraints(target)  # a target that runs none says so
        if options:
            raise EmitError(f"{target} takes no launch options for an RL step, got {sorted(options)}")
        return module.emit_rl(solution)
    files = module.emit(Job.from_solution(solution, **options))  # the target's own refusals first
    if solution.plan.offload_activations and not getattr(module, "OFFLOADS_ACTIVATIONS", False):
        writers = [t for t in _TARGETS if getattr(_module(t), "OFFLOADS_ACTIVATIONS", False)]
        raise EmitError(f"{target} cannot express activations offloaded to host memory (offload_activations); solve "
                        f"with --fix offload_activations=false, or use --target {' or '.join(writers)}")
    _check_cp_comm(solution.plan, target)
    _check_attention_kernel(solution.plan, solution.cluster.gpu.architecture, target)
    if solution.plan.fp8_bf16_layers and target not in BF16_LAYER_TARGETS:
        raise EmitError(f"{target} cannot keep layers in bf16 under fp8 (fp8_bf16_layers); solve with --fix "
                        f"fp8_bf16_layers=0, or use --target {' or '.join(BF16_LAYER_TARGETS)}")
    _check_tuning(solution.workload, target)
    return files


SERVING_TARGETS = ("vllm", "sglang")


def emit_serving(solution, target: str, plan=None) -> dict[str, str]:
    """The files of ``target`` (vLLM or SGLang) for a serving deployment (`solver.ServingSolution`): its
    best, or ``plan`` (one of its `ServingPlan`s): ``serve.sh`` aggregated; ``prefill.sh``, ``decode.sh``
    and ``router.sh`` disaggregated."""
    from parallelplan.emitters.job import Job

    if target not in SERVING_TARGETS:
        raise EmitError(f"target {target!r} does not serve; a serving plan is written for {' or '.join(SERVING_TARGETS)}")
    module, chosen = _module(target), plan or solution.best
    jobs = [Job.from_worker(solution, worker) for worker in chosen.workers]
    if chosen.serving == "aggregated":
        return module.emit(jobs[0])
    prefill, decode = chosen.workers
    return module.emit_disaggregated(jobs[0], jobs[1], prefill.count, decode.count)


BF16_LAYER_TARGETS = ("megatron", "torchtitan")
"""The targets that write `Plan.fp8_bf16_layers` (Megatron-LM's --first-last-layers-bf16, torchtitan's fp8
converters told which layers to leave out)."""


def _check_attention_kernel(plan, architecture: str, target: str) -> None:
    """A plan that names an attention kernel must name one the target's stack runs on the GPU
    (`constraints.attention.priced_kernels`); ``flash`` (the stack's own) and ``eager`` every stack runs."""
    from parallelplan.constraints.attention import is_priced, priced_kernels
    from parallelplan.constraints.efficiency import stack_of_target

    stack = stack_of_target(target)
    if stack is not None and not is_priced(plan.attention_kernel, stack, architecture):
        priced = priced_kernels(stack, architecture)
        raise EmitError(f"{target} cannot be asked for attention kernel {plan.attention_kernel} on {architecture}; solve "
                        f"with --fix attention_kernel=flash (it runs {', '.join(['flash', *priced, 'eager'])})")


def _check_cp_comm(plan, target: str) -> None:
    """A plan's context-parallel exchange must be one the target's stack runs (``stacks.json`` ``cp_comms``)."""
    from parallelplan.constraints.efficiency import stack_of_target, stacks

    stack = stack_of_target(target)
    offered = stacks()[stack]["cp_comms"] if stack is not None else []
    if plan.cp > 1 and stack is not None and plan.cp_comm not in offered:
        raise EmitError(f"{target} cannot express context parallelism by {plan.cp_comm} (cp_comm); solve with "
                        f"--fix cp_comm={offered[0]} (it runs {' or '.join(offered)})")


def _check_tuning(workload, target: str) -> None:
    """Adapters, a preference loss and packed examples are written by the trl target only: elsewhere a
    LoRA / QLoRA, DPO or packed plan would launch as plain training, so it is refused by name."""
    what = [f"peft {workload.peft.method!r}"] if workload.peft is not None else []
    what += [f"algorithm {workload.algorithm!r}"] if workload.algorithm is not None else []
    what += ["packed examples (packing)"] if workload.packing else []
    if what and target != "trl":
        raise EmitError(f"{target} files for {' and '.join(what)} would run plain fine-tuning: use --target trl "
                        "(TRL's SFT and DPO scripts with peft; SFT packs)")


__getattr__, __dir__ = lazy_exports(__name__, {"ReadConfig": "parallelplan.emitters.reading",
                                                "read_config": "parallelplan.emitters.deepspeed"})
"""Names exported from a target's module, imported when first asked for."""

__all__ = ["EmitError", "ReadConfig", "constraints", "emit", "emit_serving", "list_targets", "read_config", "rl_constraints", "rl_placement",
           "single_model_targets"]
