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
A request spends n_p iterations in prefill (the q prompt tokens it computes — all isl, less those a
prefix cache holds (``prefix_hit_rate``) — over the iteration's free budget, B − d tokens) and osl − 1
decoding (the prefill's logits give the first token). With c requests running per replica in steady
state a share (osl − 1)/(n_p + osl − 1) of them decode, d = c·(osl − 1)/N, and each iteration takes
p = c·q/N prompt tokens, N = n_p + osl − 1 — solved as a fixed point in n_p. Then
    TPOT = T,  latency = TTFT + (osl − 1) · TPOT,  requests/s = replicas · c / latency  (Little's law),
    TTFT = T/2 + n_p · t_decode(d) + q · t_prefill(isl) / isl
— a request arrives halfway through an iteration on average, then its prompt's chunks ride n_p
iterations beside the decoding requests. A closed loop (``concurrency``: benchmark clients that send the
next request when one returns) sets c; an open loop (``request_rate``) sets the c that Little's law
gives, c = λ · latency(c), and saturates where that c exceeds what fits: then the queue grows without
bound and TTFT with it. What fits: the KV cache of c requests at their full isl + osl tokens beside the
weights, activations and runtime of the replica (`constraints.memory`), within the share of the GPU an
engine is given (`max_memory_fraction`), and at most the engine's ``max_num_seqs``. Prefill and decode
on separate GPUs are `constraints.disaggregated`.
With speculative decoding (`Speculation`: k draft tokens, a accepted on average) a decoding request
takes D = (osl − 1)/(1 + a) iterations instead of osl − 1, each feeding it k + 1 tokens (its share of the
budget) and costing the verification step plus the draft's k passes; TPOT = T/(1 + a).
A distribution of lengths (``Traffic.lengths``: classes of isl, osl and share) is priced by its classes:
the iteration carries their mean prompt chunk (each at its own prompt's per-token cost), decodes at the
decoding requests' mean context (each class weighted by its share and its decode iterations), n_p is
each class's own, TTFT and latency are the classes' means, and a running request holds its whole cache,
the classes weighted by how long each runs (share · osl); one class is the fixed lengths above.
Not modelled yet: queueing variance (the times are steady-state means, not percentiles).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from importlib import resources

from pydantic import BaseModel, ConfigDict, Field, model_validator

from parallelplan.constraints.efficiency import Efficiency
from parallelplan.constraints.errors import PlanError
from parallelplan.constraints.estimate import Estimate, MemoryBreakdown, estimate
from parallelplan.constraints.evaluate import decode_step_function
from parallelplan.constraints.plan import Plan, Workload
from parallelplan.constraints.runtime import RuntimeAllowance
from parallelplan.hardware import ClusterSpec
from parallelplan.models import ModelSpec

MAX_CONTEXT = 2**24
"""The longest request (prompt and output) priced: the cost model's longest sequence (`Workload.seq_len`)."""
FIXED_POINT_ROUNDS = 8
"""At most this many rounds of the prefill-iterations fixed point (n_p settles in two or three on every
case tried; it stops when a round leaves it unchanged)."""
BISECTION_ROUNDS = 40
"""Halvings of an open loop's concurrency interval: to 1e-12 of the largest that fits."""


class Speculation(BaseModel):
    """Speculative decoding: each iteration a draft proposes ``draft_tokens`` k tokens per request, the
    model verifies them in one step that feeds k + 1 tokens of each request, and on average ``accepted``
    of them are kept, so the step emits 1 + accepted tokens (Leviathan et al. 2023, ICML; Chen et al.
    2023). The draft is ``draft_layers`` layers of the model's own shape run once per draft token — one for
    DeepSeek-V3's multi-token-prediction module (DeepSeek-V3 report §2.2) and for an EAGLE head (Li et al.
    2024) — each pass costing that share of a decode step (its layers' weights and cache). The acceptance
    is the user's measurement (vLLM and SGLang report the mean acceptance length, 1 + accepted), as
    aiconfigurator's ``--nextn-accepted`` asks: it depends on the data, not on the layout."""

    model_config = ConfigDict(frozen=True)

    draft_tokens: int = Field(ge=1, le=16)
    accepted: float = Field(ge=0.0, allow_inf_nan=False)
    draft_layers: int = Field(default=1, ge=1)

    @model_validator(mode="after")
    def _accepted_within_drafts(self) -> Speculation:
        if self.accepted > self.draft_tokens:
            raise ValueError(f"accepted {self.accepted}: at most the {self.draft_tokens} draft tokens are kept per step")
        return self


class Lengths(BaseModel):
    """One class of requests of a length distribution: ``isl`` prompt and ``osl`` output tokens, a
    ``share`` of the requests (the shares need not add up to one: they are weights)."""

    model_config = ConfigDict(frozen=True)

    isl: int = Field(ge=1)
    osl: int = Field(ge=1)
    share: float = Field(gt=0.0, allow_inf_nan=False)


class Traffic(BaseModel):
    """Requests of ``isl`` prompt tokens and ``osl`` output tokens — or of a distribution of lengths,
    ``lengths`` (a histogram of `Lengths` classes: a dataset's, or a benchmark's random lengths), whose
    request-weighted means ``isl`` and ``osl`` then are (rounded) — at ``concurrency`` running requests
    for the deployment (a closed loop) or ``request_rate`` requests per second (an open loop) — or neither,
    for a search that asks how much load a layout takes within its latency targets; the engine's
    iteration budget and running-request limit (None: its default, `engine_defaults`);
    ``prefix_hit_rate``, the share of each prompt's tokens found in the engine's prefix cache (vLLM's
    automatic prefix caching, SGLang's radix cache: a shared system prompt, a chat's earlier turns), whose
    prefill is skipped — their KV cache is still held per request, as if unshared (a bound: shared blocks
    are held once); ``speculation``, speculative decoding (`Speculation`)."""

    model_config = ConfigDict(frozen=True)

    isl: int | None = Field(default=None, ge=1)
    osl: int | None = Field(default=None, ge=1)
    lengths: tuple[Lengths, ...] | None = Field(default=None, min_length=1)
    concurrency: int | None = Field(default=None, ge=1)
    request_rate: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    max_num_batched_tokens: int | None = Field(default=None, ge=1)
    max_num_seqs: int | None = Field(default=None, ge=1)
    prefix_hit_rate: float = Field(default=0.0, ge=0.0, lt=1.0)
    speculation: Speculation | None = None

    @model_validator(mode="after")
    def _one_load(self) -> Traffic:
        if self.lengths is not None:
            means = (round(self.mean_isl), round(self.mean_osl))
            if (self.isl, self.osl) not in ((None, None), means):
                raise ValueError(f"isl and osl are the distribution's means ({means[0]}, {means[1]}) when lengths are "
                                 "given: give lengths alone")
            object.__setattr__(self, "isl", means[0])
            object.__setattr__(self, "osl", means[1])
        elif self.isl is None or self.osl is None:
            raise ValueError("give the requests' lengths: isl and osl (prompt and output tokens), or a distribution "
                             "of them (lengths)")
        longest = self.longest.isl + self.longest.osl
        if longest > MAX_CONTEXT:
            raise ValueError(f"isl + osl = {longest} tokens: a request's context is at most {MAX_CONTEXT} "
                             "(the cost model's longest sequence)")
        if self.concurrency is not None and self.request_rate is not None:
            raise ValueError("give the load as concurrency (requests running at once) or request_rate "
                             "(requests per second), not both")
        return self

    @property
    def classes(self) -> tuple[Lengths, ...]:
        """The length classes, their shares adding up to one (one class of the fixed lengths)."""
        if self.lengths is None:
            return (Lengths(isl=self.isl, osl=self.osl, share=1.0),)
        total = sum(c.share for c in self.lengths)
        return tuple(c.model_copy(update={"share": c.share / total}) for c in self.lengths)

    @property
    def mean_isl(self) -> float:
        """The requests' mean prompt tokens (``isl`` is it rounded)."""
        return sum(c.share * c.isl for c in self.classes)

    @property
    def mean_osl(self) -> float:
        """The requests' mean output tokens (``osl`` is it rounded)."""
        return sum(c.share * c.osl for c in self.classes)

    @property
    def longest(self) -> Lengths:
        """The class of the longest requests (prompt and output): what an engine's context must hold."""
        return max(self.classes, key=lambda c: c.isl + c.osl)

    def prefilled_tokens(self, isl: int) -> int:
        """The prompt tokens a request of ``isl`` computes: those the prefix cache misses (at least one: the
        last prompt token's logits give the first output token)."""
        return max(1, round(isl * (1 - self.prefix_hit_rate)))


class ServedFigures(BaseModel):
    """What a deployment's users see in steady state, aggregated or disaggregated: its GPUs, the mean
    TTFT, TPOT and request latency, requests and output tokens per second (per GPU, per user), and
    whether an open loop's rate exceeds what it serves (``saturated``: the queue grows without bound)."""

    model_config = ConfigDict(frozen=True)

    gpus: int
    ttft_s: float
    tpot_s: float
    latency_s: float
    requests_per_s: float
    output_tokens_per_s: float
    output_tokens_per_s_per_gpu: float
    tokens_per_s_per_user: float
    saturated: bool


class ServingEstimate(ServedFigures):
    """An aggregated deployment in steady state (module docstring): its replicas, ``concurrency`` (the
    mean running requests: an open loop's need not be whole) and ``max_concurrency`` per replica, a
    request's prefill iterations; when ``saturated`` the figures are those at ``max_concurrency``."""

    replicas: int
    concurrency: float
    max_concurrency: int
    prefill_iterations: int


@cache
def engine_defaults() -> dict:
    return json.loads(resources.files("parallelplan.constraints").joinpath("data", "serving_engines.json").read_text())


def max_memory_fraction() -> float:
    """The most of a GPU's memory a serving engine is given (``data/serving_engines.json``, with its source)."""
    return engine_defaults()["max_memory_fraction"]["value"]


def default_limits(cluster: ClusterSpec, engine: str = "vllm") -> tuple[int, int]:
    """(max_num_batched_tokens, max_num_seqs) the engine takes on the cluster's GPU by default."""
    spec = engine_defaults()["engines"][engine]
    gpu = cluster.gpu
    large = gpu.memory_bytes >= spec["large_gpu_memory_gib"] * 2**30 and not any(
        name in gpu.name.lower() for name in spec["small_gpu_names"])
    size = "large" if large else "other"
    return spec["max_num_batched_tokens"][size], spec["max_num_seqs"][size]


@dataclass(frozen=True)
class Steady:
    """One replica's steady state at a concurrency: prefill iterations of a request, the time per output
    token (the iteration, over the tokens a decode step emits with speculation), TTFT and the request's
    latency (module docstring)."""

    prefill_iterations: int
    tpot_s: float
    ttft_s: float
    latency_s: float


class ServingReplica:
    """One replica of an inference layout under a traffic's lengths, priced once and asked per concurrency
    (`serve`, and the serving search of `solver.serving`, which asks many): what fits, a prompt's
    per-token prefill cost, the decode step of d running requests, the steady state of c running
    requests (module docstring)."""

    def __init__(self, model: ModelSpec, cluster: ClusterSpec, plan: Plan, traffic: Traffic, *,
                 efficiency: Efficiency | None = None, runtime: RuntimeAllowance | None = None) -> None:
        self.model, self.cluster, self.plan, self.traffic = model, cluster, plan, traffic
        self.costs = {"efficiency": efficiency, "runtime": runtime}
        budget, seqs = default_limits(cluster)
        self.budget, self.max_num_seqs = traffic.max_num_batched_tokens or budget, traffic.max_num_seqs or seqs
        self.classes = classes = traffic.classes
        longest = traffic.longest
        self.full = full = self.priced(longest.isl + longest.osl, 0, 1)  # one of the longest requests, whole
        budget_bytes = min(full.memory.usable, max_memory_fraction() * cluster.gpu.memory_bytes)
        free = budget_bytes - (full.memory.total - full.memory.kv_cache)
        if free < full.memory.kv_cache:
            raise PlanError(f"no request of {longest.isl} + {longest.osl} tokens fits beside the weights: "
                            f"{(full.memory.total - full.memory.kv_cache) / 2**30:.1f} GiB of "
                            f"{budget_bytes / 2**30:.1f} GiB an engine is given taken before its KV cache")
        # a running request holds its whole cache; the classes run in proportion to their decode time
        held = [c.share * c.osl for c in classes]
        held_length = sum(h * (c.isl + c.osl) for h, c in zip(held, classes, strict=True)) / sum(held)
        self.kv_request_bytes = full.memory.kv_cache * held_length / (longest.isl + longest.osl)
        self.max_concurrency = min(int(free // self.kv_request_bytes), self.max_num_seqs)
        self.kv_bytes_per_token = full.memory.kv_cache / (longest.isl + longest.osl)  # per GPU, the busiest
        per_token = {isl: self.priced(isl, 0, 1).step_time_s / isl for isl in {c.isl for c in classes}}
        self.prefilled = [traffic.prefilled_tokens(c.isl) for c in classes]  # each class's computed prompt
        service = [q * per_token[c.isl] for q, c in zip(self.prefilled, classes, strict=True)]
        self.prefill_s = sum(c.share * t for c, t in zip(classes, service, strict=True))  # a prompt's, mean
        self.prefill_s_squared = sum(c.share * t * t for c, t in zip(classes, service, strict=True))
        self.mean_prefilled = sum(c.share * q for c, q in zip(classes, self.prefilled, strict=True))
        spec = traffic.speculation
        self.fed = 1 + (spec.draft_tokens if spec else 0)  # tokens of each request a decode step feeds
        self.emitted = 1 + (spec.accepted if spec else 0.0)  # tokens of each request a decode step emits
        self.class_iterations = [(c.osl - 1) / self.emitted for c in classes]  # decoding, after the prefill's token
        self.decode_iterations = sum(c.share * d for c, d in zip(classes, self.class_iterations, strict=True))
        decoding = [c.share * max(c.osl - 1, 1) for c in classes]  # the decoding requests' mean context
        self.context = round(sum(w * (c.isl + c.osl // 2) for w, c in zip(decoding, classes, strict=True)) / sum(decoding))
        self._one_token = decode_step_function(model, cluster, plan, self.context, efficiency=efficiency,
                                               runtime=runtime)
        self._verify = self._one_token if self.fed == 1 else decode_step_function(
            model, cluster, plan, self.context, fed=self.fed, efficiency=efficiency, runtime=runtime)
        self._draft_share = (spec.draft_tokens * spec.draft_layers / model.num_layers) if spec else 0.0
        self._decode: dict[int, float] = {}

    def priced(self, seq_len: int, output_len: int, per_replica: int) -> Estimate:
        work = Workload(kind="inference", seq_len=seq_len, output_len=output_len,
                        global_batch_size=per_replica * self.plan.dp)
        return estimate(self.model, self.cluster, self.plan, work, **self.costs)

    def memory(self, concurrency: int) -> MemoryBreakdown:
        """Per GPU with ``concurrency`` running requests per replica, as `max_concurrency` counts them: the
        weights, activations and runtime beside one longest request, and the KV cache of ``concurrency``
        requests at the mean cache a running request holds (what an engine's pool is sized from)."""
        one = self.full.memory
        delta = round(concurrency * self.kv_request_bytes) - one.kv_cache
        return one.model_copy(update={"kv_cache": one.kv_cache + delta, "total": one.total + delta,
                                      "low": one.low + delta, "high": one.high + delta})

    def decode_step(self, decoding: float) -> float:
        """One decode iteration of ``decoding`` requests (rounded, at least one) at the mean context: a step
        feeding ``fed`` tokens of each, and with speculation the draft's passes (`Speculation`)."""
        d = max(round(decoding), 1)
        if d not in self._decode:
            self._decode[d] = self._verify(d) + (self._draft_share * self._one_token(d) if self._draft_share else 0.0)
        return self._decode[d]

    def tpot(self, decoding: float) -> float:
        """The time per output token of a request decoding beside ``decoding`` others alone: the iteration
        over the tokens it emits."""
        return self.decode_step(decoding) / self.emitted

    def steady(self, c: float) -> Steady:
        """The steady state of c running requests (module docstring), each class's prefill iterations found
        as a fixed point; the figures are means over the requests."""
        shares = [cls.share for cls in self.classes]
        n_p = [math.ceil(q / self.budget) for q in self.prefilled]
        for _ in range(FIXED_POINT_ROUNDS):
            iterations = sum(w * n for w, n in zip(shares, n_p, strict=True)) + self.decode_iterations
            decoding = c * self.decode_iterations / iterations
            decode = self.decode_step(decoding)
            step = decode + c * self.prefill_s / iterations
            n_p, settled = [math.ceil(q / max(self.budget - decoding * self.fed, 1.0)) for q in self.prefilled], n_p
            if n_p == settled:
                break
        mean_n_p = sum(w * n for w, n in zip(shares, n_p, strict=True))
        ttft = step / 2 + mean_n_p * decode + self.prefill_s
        return Steady(math.ceil(mean_n_p - 1e-9), step / self.emitted, ttft, ttft + self.decode_iterations * step)


def little_concurrency(rate: float, latency: Callable[[float], float], most: float) -> tuple[float, bool]:
    """The mean running requests c = rate · latency(c) of an open loop (Little's law), latency growing
    with c, found by bisection on [0, most]; (most, True) where even ``most`` cannot keep up (saturated)."""
    if rate * latency(most) > most * (1 + 1e-9):  # beyond rounding: a rate set by ``most`` itself is carried
        return most, True
    low, high = 0.0, most
    for _ in range(BISECTION_ROUNDS):
        mid = (low + high) / 2
        low, high = (low, mid) if mid >= rate * latency(mid) else (mid, high)
    return high, False


def serve(model: ModelSpec, cluster: ClusterSpec, plan: Plan, traffic: Traffic, *,
          efficiency: Efficiency | None = None, runtime: RuntimeAllowance | None = None) -> ServingEstimate:
    """The deployment of ``plan`` (an inference layout; dp replicas) under ``traffic`` (module docstring)."""
    replica = ServingReplica(model, cluster, plan, traffic, efficiency=efficiency, runtime=runtime)
    return replica_deployment(replica, traffic)


def replica_deployment(replica: ServingReplica, traffic: Traffic, workers: int = 1) -> ServingEstimate:
    """`serve` on a layout already priced (the search's), ``workers`` copies of it (each its plan's dp
    replicas: an expert-parallel layout's replicas step together), under ``traffic``'s load."""
    plan = replica.plan
    replicas, gpus = workers * plan.dp, workers * plan.world_size
    if traffic.concurrency is not None:
        c, saturated = float(min(-(-traffic.concurrency // replicas), replica.max_concurrency)), False
    elif traffic.request_rate is not None:
        c, saturated = little_concurrency(traffic.request_rate / replicas, lambda c: replica.steady(c).latency_s,
                                          float(replica.max_concurrency))
    else:
        raise PlanError("serve needs a load: give the traffic's concurrency or request_rate")
    s = replica.steady(c)
    requests = replicas * c / s.latency_s
    return ServingEstimate(replicas=replicas, gpus=gpus, concurrency=c, max_concurrency=replica.max_concurrency,
                           prefill_iterations=s.prefill_iterations, ttft_s=s.ttft_s, tpot_s=s.tpot_s,
                           latency_s=s.latency_s, requests_per_s=requests, output_tokens_per_s=requests * traffic.mean_osl,
                           output_tokens_per_s_per_gpu=requests * traffic.mean_osl / gpus, tokens_per_s_per_user=1 / s.tpot_s,
                           saturated=saturated)


__all__ = ["ServedFigures", "ServingEstimate", "ServingReplica", "Speculation", "Steady", "Traffic", "default_limits", "little_concurrency", "max_memory_fraction", "replica_deployment", "serve"]
