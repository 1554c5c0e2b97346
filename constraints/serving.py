"""`serve(model, cluster, plan, traffic)`: a serving deployment in steady state — each of the plan's dp
replicas running continuous batching with chunked prefill, as vLLM's engine schedules it — and what its
users see: time to the first token (TTFT), time per output token (TPOT, the inter-token latency), the
request latency, and the tokens and requests per second of the deployment, per GPU and per user.

One engine iteration runs every decoding request's next token and a chunk of prompt tokens, at most
``max_num_batched_tokens`` in all (`Traffic`, the engine's default from ``data/serving_engines.json``).
Its time is the decode step of the d decoding requests at the mean context (`constraints.generation`:
weights and KV cache read once, the collectives of d tokens) plus the p prompt tokens' prefill at the
per-token cost of a whole prompt's prefill (`constraints.timing`: compute-bound, the weights already read
by the step) — the stall-free batching of Sarathi-Serve (Agrawal et al. 2024, OSDI, §4):
    T(d, p) = t_decode(d, isl + osl/2) + p · t_prefill(isl) / isl
A request spends n_p iterations in prefill (its prompt over the iteration's free budget, B − d tokens)
and osl − 1 decoding (the prefill's logits give the first token). With c requests running per replica
in steady state a share (osl − 1)/(n_p + osl − 1) of them decode, d = c·(osl − 1)/N, and each iteration
takes p = c·isl/N prompt tokens, N = n_p + osl − 1 — solved as a fixed point in n_p. Then
    TPOT = T,  latency = TTFT + (osl − 1) · TPOT,  requests/s = replicas · c / latency  (Little's law),
    TTFT = T/2 + n_p · t_decode(d) + isl · t_prefill(isl) / isl
— a request arrives halfway through an iteration on average, then its prompt's chunks ride n_p
iterations beside the decoding requests. A closed loop (``concurrency``: benchmark clients that send the next request when one
returns) sets c; an open loop (``request_rate``) sets the c that Little's law gives, c = λ · latency(c),
and saturates where that c exceeds what fits: then the queue grows without bound and TTFT with it.
What fits: the KV cache of c requests at their full isl + osl tokens beside the weights, activations and
runtime of the replica (`constraints.memory`), and at most the engine's ``max_num_seqs``.
Not modelled yet: prefix caching, speculative decoding, disaggregated prefill and decode, queueing
variance (the times are steady-state means), and distributions of lengths.
"""

from __future__ import annotations

import json
import math
from functools import cache
from importlib import resources

from pydantic import BaseModel, ConfigDict, Field, model_validator

from parallelplan.constraints.efficiency import Efficiency
from parallelplan.constraints.errors import PlanError
from parallelplan.constraints.estimate import estimate
from parallelplan.constraints.plan import Plan, Workload
from parallelplan.constraints.runtime import RuntimeAllowance
from parallelplan.hardware import ClusterSpec
from parallelplan.models import ModelSpec

FIXED_POINT_ROUNDS = 8
"""Rounds of the prefill-iterations fixed point (n_p settles in two or three on every case tried)."""
BISECTION_ROUNDS = 40
"""Halvings of an open loop's concurrency interval: to 1e-12 of the largest that fits."""


class Traffic(BaseModel):
    """Requests of ``isl`` prompt tokens and ``osl`` output tokens, at ``concurrency`` running requests
    for the deployment (a closed loop) or ``request_rate`` requests per second (an open loop); the engine's
    iteration budget and running-request limit (None: its default, `engine_defaults`)."""

    model_config = ConfigDict(frozen=True)

    isl: int = Field(ge=1)
    osl: int = Field(ge=1)
    concurrency: int | None = Field(default=None, ge=1)
    request_rate: float | None = Field(default=None, gt=0)
    max_num_batched_tokens: int | None = Field(default=None, ge=1)
    max_num_seqs: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _one_load(self) -> Traffic:
        if (self.concurrency is None) == (self.request_rate is None):
            raise ValueError("give the load as concurrency (requests running at once) or request_rate "
                             "(requests per second), one of them")
        return self


class ServingEstimate(BaseModel):
    """The deployment in steady state (module docstring); ``concurrency`` (the mean running requests: an
    open loop's need not be whole) and ``max_concurrency`` per replica; ``saturated`` when an open loop's rate exceeds what the replicas serve (the figures are
    then those at ``max_concurrency``, and TTFT grows with the queue)."""

    model_config = ConfigDict(frozen=True)

    replicas: int
    gpus: int
    concurrency: float
    max_concurrency: int
    prefill_iterations: int
    ttft_s: float
    tpot_s: float
    latency_s: float
    requests_per_s: float
    output_tokens_per_s: float
    output_tokens_per_s_per_gpu: float
    tokens_per_s_per_user: float
    saturated: bool


@cache
def engine_defaults() -> dict:
    return json.loads(resources.files("parallelplan.constraints").joinpath("data", "serving_engines.json").read_text())


def default_limits(cluster: ClusterSpec, engine: str = "vllm") -> tuple[int, int]:
    """(max_num_batched_tokens, max_num_seqs) the engine takes on the cluster's GPU by default."""
    spec = engine_defaults()["engines"][engine]
    gpu = cluster.gpu
    large = gpu.memory_bytes >= spec["large_gpu_memory_gib"] * 2**30 and not any(
        name in gpu.name.lower() for name in spec["small_gpu_names"])
    size = "large" if large else "other"
    return spec["max_num_batched_tokens"][size], spec["max_num_seqs"][size]


def serve(model: ModelSpec, cluster: ClusterSpec, plan: Plan, traffic: Traffic, *,
          efficiency: Efficiency | None = None, runtime: RuntimeAllowance | None = None) -> ServingEstimate:
    """The deployment of ``plan`` (an inference layout; dp replicas) under ``traffic`` (module docstring)."""
    replicas, gpus = plan.dp, plan.tp * plan.pp * plan.cp * plan.dp
    budget, seqs = default_limits(cluster)
    budget, seqs = traffic.max_num_batched_tokens or budget, traffic.max_num_seqs or seqs
    costs = {"efficiency": efficiency, "runtime": runtime}

    def priced(seq_len: int, output_len: int, per_replica: int):
        work = Workload(kind="inference", seq_len=seq_len, output_len=output_len, global_batch_size=per_replica * replicas)
        return estimate(model, cluster, plan, work, **costs)

    full = priced(traffic.isl + traffic.osl, 0, 1)  # one request per replica at its full length
    free = full.memory.usable - (full.memory.total - full.memory.kv_cache)
    if free < full.memory.kv_cache:
        raise PlanError(f"no request of {traffic.isl} + {traffic.osl} tokens fits beside the weights: "
                        f"{(full.memory.total - full.memory.kv_cache) / 2**30:.1f} GiB of "
                        f"{full.memory.usable / 2**30:.1f} GiB taken before its KV cache")
    max_concurrency = min(int(free // full.memory.kv_cache), seqs)
    prefill_per_token = priced(traffic.isl, 0, 1).step_time_s / traffic.isl
    context = traffic.isl + traffic.osl // 2

    @cache
    def decode_step(decoding: int) -> float:  # one step of `decoding` requests per replica at the mean context
        return priced(context - 1, 2, decoding).time.decode

    def steady(c: float) -> tuple[int, float, float, float]:
        """(prefill iterations, iteration time, TTFT, request latency) of c running requests per replica."""
        n_p = math.ceil(traffic.isl / budget)
        for _ in range(FIXED_POINT_ROUNDS):
            iterations = n_p + traffic.osl - 1
            decoding = c * (traffic.osl - 1) / iterations
            decode = decode_step(max(round(decoding), 1))
            step = decode + c * traffic.isl / iterations * prefill_per_token
            n_p = math.ceil(traffic.isl / max(budget - decoding, 1.0))
        ttft = step / 2 + n_p * decode + traffic.isl * prefill_per_token
        return n_p, step, ttft, ttft + (traffic.osl - 1) * step

    def latency(c: float) -> float:
        return steady(c)[3]

    saturated = False
    if traffic.concurrency is not None:
        c = float(min(-(-traffic.concurrency // replicas), max_concurrency))
    else:
        rate = traffic.request_rate / replicas
        if rate * latency(max_concurrency) > max_concurrency:
            c, saturated = float(max_concurrency), True
        else:  # c = rate · latency(c): bisection, latency growing with c
            low, high = 0.0, float(max_concurrency)
            for _ in range(BISECTION_ROUNDS):
                mid = (low + high) / 2
                low, high = (low, mid) if mid >= rate * latency(mid) else (mid, high)
            c = high
    n_p, step, ttft, total = steady(c)
    requests = replicas * c / total
    return ServingEstimate(replicas=replicas, gpus=gpus, concurrency=c, max_concurrency=max_concurrency,
                           prefill_iterations=n_p, ttft_s=ttft, tpot_s=step, latency_s=total, requests_per_s=requests,
                           output_tokens_per_s=requests * traffic.osl,
                           output_tokens_per_s_per_gpu=requests * traffic.osl / gpus, tokens_per_s_per_user=1 / step,
                           saturated=saturated)


__all__ = ["ServingEstimate", "Traffic", "default_limits", "serve"]
