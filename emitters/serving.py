"""What the serving targets (vLLM, SGLang) share: the model reference, the memory fraction the plan
needs and the checks of an inference plan's degrees."""

from __future__ import annotations

import math

from parallelplan.constraints.plan import FP32_STORAGE
from parallelplan.constraints.serving import max_memory_fraction
from parallelplan.emitters.errors import EmitError
from parallelplan.emitters.job import Job, unsupported
from parallelplan.models import ModelSpec
from parallelplan.models.presets import get_preset

PORT = 8000


def model_reference(job: Job) -> str:
    """The Hugging Face repo id of the job's model (`repo_id`)."""
    return repo_id(job.model)


def repo_id(model: ModelSpec) -> str:
    """The Hugging Face repo id: the preset's alias that names one, the model's own name when it is one,
    else "" (the script asks for it)."""
    preset = get_preset(model.name)
    repos = [alias for alias in (preset.aliases if preset else ()) if "/" in alias]
    if repos:
        return repos[0]
    return model.name if "/" in model.name else ""


def model_lines(job: Job) -> list[str]:
    """Shell lines that set ``MODEL`` (a default when the repo id is known)."""
    repo = model_reference(job)
    if repo:
        return [f'MODEL="${{MODEL:-{repo}}}"  # or a local checkpoint folder']
    return [f'MODEL="${{MODEL:?set MODEL to the Hugging Face repo or local folder of {job.model.name}}}"']


def memory_fraction(job: Job, used_bytes: int, floor: float) -> float:
    """``used_bytes`` of the plan over the GPU's capacity, rounded up to a hundredth, at least ``floor``
    (the engine's own default: a larger pool only adds concurrency) and at most the share an engine is
    given (`constraints.serving.max_memory_fraction`, < 1); a plan that needs more is refused with the
    margin that would solve it."""
    capacity, most = job.cluster.node.gpu.memory_bytes, max_memory_fraction()
    need = math.ceil(100 * used_bytes / capacity) / 100
    if need > most:
        raise EmitError(f"the plan needs {need:.2f} of the GPU's memory; a serving engine is given at most {most} "
                        f"(constraints/data/serving_engines.json): solve with --memory-margin {1 - most:.2f}, or use "
                        "plan serve-plan, whose plans fit it")
    return min(max(floor, need), most)


def context_length(job: Job) -> int:
    """The longest request the engine admits: the prompt and the tokens it generates (vLLM's
    ``--max-model-len``, SGLang's ``--context-length`` count both)."""
    return job.workload.seq_len + job.workload.output_len


def sequences_per_replica(job: Job) -> int:
    """The concurrent sequences of one data-parallel replica, the limit each engine takes per DP rank
    (vLLM's ``--max-num-seqs``: every DP rank is an engine core with its own scheduler; SGLang's
    ``--max-running-requests``: without DP attention every DP worker's scheduler applies it whole). The
    workload's sequences split over dp, the most loaded replica taking the remainder, at most the
    workload's ``max_concurrency``: what the cost model prices the KV cache at
    (`constraints.memory.concurrent_sequences`), so the engine admits what the plan fits."""
    sequences = -(-job.workload.global_batch_size // job.plan.dp)
    return min(sequences, job.workload.max_concurrency or sequences)


def dtype(job: Job) -> str:
    """The weights' dtype flag value: fp8 plans keep bf16 checkpoints and quantize online."""
    return "float16" if job.plan.precision == "fp16" else "bfloat16"


def check(job: Job, name: str, *, uneven_stages: bool = False) -> None:
    """Refuse what the target cannot serve; ``uneven_stages``: it takes pipeline stages of different
    layer counts (vLLM's ``VLLM_PP_LAYER_PARTITION``)."""
    p = job.plan
    if job.workload.kind != "inference":
        what = "a training plan" if job.workload.training else f"a {job.workload.kind} plan"
        raise unsupported(name, what, "solve with --kind inference")
    if p.sharding != "none":
        raise unsupported(name, f"{p.sharding} sharding (serving replicates the weights over dp)",
                          f"solve for it with `plan launch --target {name.lower()}`")
    if p.cp > 1:
        raise unsupported(name, f"context parallelism (cp {p.cp}) for these plans", "solve with --fix cp=1")
    if p.vpp > 1:
        raise unsupported(name, "virtual pipeline stages", "solve with --fix vpp=1")
    if not uneven_stages and p.layers_per_stage is not None and len(set(p.layers_per_stage)) > 1:
        raise unsupported(name, "uneven pipeline stages", "solve with a pp that divides the layers, or use --target vllm")
    if p.precision in FP32_STORAGE:
        raise unsupported(name, f"{p.precision} serving in this emitter", "solve with --range precision=bf16,fp8")



def disaggregated_scripts(scripts: dict[str, str], prefill_count: int, decode_count: int, *,
                          router: list[str]) -> dict[str, str]:
    """The prefill and decode scripts of a disaggregated deployment and ``router.sh``: how many of each to
    start, then the router's lines."""
    head = ["#!/usr/bin/env bash", f"# Start {prefill_count} prefill instance(s) (prefill.sh) and {decode_count} "
            "decode instance(s) (decode.sh), each on its own GPUs; then the router:", "set -euo pipefail", ""]
    return {"prefill.sh": scripts["prefill"], "decode.sh": scripts["decode"], "router.sh": "\n".join(head + router) + "\n"}


def mtp_drafts(job: Job, name: str) -> int:
    """The draft tokens of the job's speculative decoding (0: none), which these targets run with the model's
    own multi-token-prediction module; a model without one is refused (its draft model is the user's)."""
    spec = job.speculation
    if spec is None:
        return 0
    if not job.model.mtp_layers:
        raise unsupported(name, f"speculative decoding for {job.model.name}, which has no multi-token-prediction "
                          "module (its draft model is yours to name)",
                          "plan without --speculative-tokens and add the engine's draft-model flags")
    return spec.draft_tokens
