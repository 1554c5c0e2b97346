"""`serve_plan(model, cluster, traffic, ...)`: the best way to serve a model on a cluster under latency
targets — the layout of a worker (TP, PP, EP with data-parallel attention, weights and KV-cache dtypes),
how many workers, how many requests each runs, and aggregated (prefill and decode in one engine) or
disaggregated (x prefill workers, y decode workers, the KV cache sent between them).

Every figure comes from `constraints.serving` (an aggregated engine in steady state) and
`constraints.disaggregated`; this module only searches. The space is small and its costs monotone, so
the search is exhaustive and exact without CP-SAT:
- layouts: every worker the serving rules admit (`constraints.rules`, less ``world_size``: workers take
  part of the cluster) — tp dividing the NVLink domain, pp stages (uneven where they must be) once tp fills the domain
  (pipeline stages across domains, tensor parallelism within, as vLLM's docs lay out a model too large
  for one node), for MoE models the experts over tp·k GPUs under k data-parallel attention replicas,
  by expert parallelism (vLLM's ``--enable-expert-parallel`` with ``--data-parallel-size``, SGLang's DP
  attention with ``--ep-size``) or by tensor parallelism (vLLM's default for DP without EP, SGLang's DP
  attention with MoE TP), each at the precisions and KV-cache dtypes asked
  (default: every one the GPU runs) — a few dozen;
- per layout, the largest concurrency within the targets, found by bisection: TTFT and TPOT grow with
  the requests running (each iteration carries more decode tokens and prompt chunk), and throughput with
  them, so the largest within the targets is the layout's best; the tests check it against a scan of
  every concurrency;
- disaggregated, every (prefill layout, decode layout, x, y) within the cluster's GPUs: the prefill
  pool's highest utilisation within the TTFT target, the decode pool's largest concurrency within TPOT.
Objectives: with no load given, the most output tokens/s per GPU (= the fewest $ per token on one GPU
type); with a load (``request_rate`` or ``concurrency``), the fewest GPUs that carry it within the
targets. Ties go to more tokens/s per user, then fewer GPUs, then the earlier layout (smaller tp, pp,
then bf16 before fp8). The Pareto frontier of tokens/s per GPU against tokens/s per user (the chart
aiconfigurator draws) sweeps each layout's concurrency.
A closed loop (``concurrency``) is searched aggregated only: a disaggregated deployment is priced at a
request rate (`constraints.disaggregated`).
"""

from __future__ import annotations

import itertools
import json
import math
import time
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Literal

from pydantic import BaseModel, ConfigDict

from parallelplan.constraints import Plan, PlanError, Workload
from parallelplan.constraints.collectives import fast_domain
from parallelplan.constraints.disaggregated import (
    DisaggregatedEstimate,
    Pools,
    disaggregate,
    prefill_utilization_within,
)
from parallelplan.constraints.efficiency import Efficiency
from parallelplan.constraints.estimate import MemoryBreakdown
from parallelplan.constraints.rules import structural_violations
from parallelplan.constraints.runtime import RuntimeAllowance
from parallelplan.constraints.serving import ServingEstimate, ServingReplica, Traffic, replica_deployment
from parallelplan.hardware import ClusterSpec, default_price
from parallelplan.models import ModelSpec
from parallelplan.solver.errors import Infeasible, SolverInputError

Mode = Literal["batch", "streaming", "realtime"]
Serving = Literal["auto", "aggregated", "disaggregated"]
SEARCHED = ("tp", "pp", "ep", "precision", "kv_cache_dtype")
"""The layout fields a user may pin (``fixed``)."""
NOT_SERVING_RULES = ("world_size",)
"""Rules the search does not hold a worker to: a worker takes part of the cluster."""


@cache
def serving_modes() -> dict:
    return json.loads(resources.files("parallelplan.solver").joinpath("data", "serving_modes.json").read_text())["modes"]


class Targets(BaseModel):
    """Mean TTFT and TPOT bounds in seconds (None: unbounded), from the mode's defaults
    (``data/serving_modes.json``) unless given."""

    model_config = ConfigDict(frozen=True)

    mode: Mode
    ttft_s: float | None
    tpot_s: float | None

    @classmethod
    def of(cls, mode: str, ttft_s: float | None = None, tpot_s: float | None = None) -> Targets:
        modes = serving_modes()
        if mode not in modes:
            raise SolverInputError(f"mode {mode!r}: use one of {', '.join(modes)}")
        for name, value in (("ttft", ttft_s), ("tpot", tpot_s)):
            if value is not None and not (value > 0 and math.isfinite(value)):
                raise SolverInputError(f"{name}: a latency target must be a positive number of seconds, got {value!r}")
        default = modes[mode]
        return cls(mode=mode, ttft_s=ttft_s if ttft_s is not None else default["ttft_s"],
                   tpot_s=tpot_s if tpot_s is not None else default["tpot_s"])

    def met(self, ttft_s: float, tpot_s: float) -> bool:
        return (self.ttft_s is None or ttft_s <= self.ttft_s * (1 + 1e-9)) and \
               (self.tpot_s is None or tpot_s <= self.tpot_s * (1 + 1e-9))


class Worker(BaseModel):
    """One pool of a deployment: ``count`` workers of ``plan`` (its dp replicas each an engine), each
    replica running at most ``concurrency`` requests, and each GPU's memory at that many (``memory``:
    what the engine's pool is sized from)."""

    model_config = ConfigDict(frozen=True)

    role: Literal["aggregated", "prefill", "decode"]
    plan: Plan
    count: int
    concurrency: int
    memory: MemoryBreakdown

    @property
    def gpus(self) -> int:
        return self.count * self.plan.world_size


class ServingPlan(BaseModel):
    """A deployment and what its users see: ``workers`` (one aggregated pool, or a prefill and a decode
    pool), the figures of ``aggregated`` (`ServingEstimate`) or ``disaggregated``
    (`DisaggregatedEstimate`), and the price of a million output tokens at the GPU's default price."""

    model_config = ConfigDict(frozen=True)

    serving: Literal["aggregated", "disaggregated"]
    workers: tuple[Worker, ...]
    aggregated: ServingEstimate | None = None
    disaggregated: DisaggregatedEstimate | None = None
    usd_per_million_tokens: float

    @property
    def figures(self) -> ServingEstimate | DisaggregatedEstimate:
        return self.aggregated or self.disaggregated

    @property
    def gpus(self) -> int:
        return self.figures.gpus


class ServingSolution(BaseModel):
    """The search's answer: ``best`` under the objective, the best of each serving kind searched, the
    Pareto frontier (tokens/s per GPU against tokens/s per user) when asked, and what was searched."""

    model_config = ConfigDict(frozen=True)

    model: ModelSpec
    cluster: ClusterSpec
    traffic: Traffic
    targets: Targets
    objective: Literal["throughput", "gpus"]
    best: ServingPlan
    best_aggregated: ServingPlan | None
    best_disaggregated: ServingPlan | None
    frontier: tuple[ServingPlan, ...] = ()
    layouts: int
    notes: tuple[str, ...] = ()
    solve_time_s: float = 0.0


@dataclass
class Request:
    """One search: its inputs and what it has priced."""

    model: ModelSpec
    cluster: ClusterSpec
    traffic: Traffic
    targets: Targets
    efficiency: Efficiency | None
    runtime: RuntimeAllowance | None

    @property
    def gpus(self) -> int:
        return self.cluster.total_gpus


def coupled(plan: Plan) -> bool:
    """Whether the plan's data-parallel replicas are one engine — its experts spread over them (by EP, or
    by expert TP across data-parallel attention) — so that more of it is another, larger layout rather
    than more copies (vLLM and SGLang shard a MoE model's experts over all of an engine's DP ranks)."""
    return plan.dp > 1 and (plan.ep > 1 or plan.etp > plan.tp)


def stages(layers: int, pp: int) -> tuple[int, ...] | None:
    """Layers per pipeline stage where pp does not divide them, the first stages taking one more (written
    to vLLM's ``VLLM_PP_LAYER_PARTITION``); None where it does."""
    if layers % pp == 0:
        return None
    return tuple(layers // pp + (i < layers % pp) for i in range(pp))


def worker_layouts(model: ModelSpec, cluster: ClusterSpec, fixed: dict) -> list[Plan]:
    """Every worker layout the serving rules admit (module docstring), in the tie-break order."""
    unknown = set(fixed) - set(SEARCHED)
    if unknown:
        raise SolverInputError(f"fixed: {', '.join(sorted(unknown))} cannot be pinned for serving; pin "
                               f"{', '.join(SEARCHED)}")
    gpu, gpus, domain = cluster.gpu, cluster.total_gpus, fast_domain(cluster)
    precisions = [p for p in ("bf16", "fp8") if gpu.supports(p)]
    caches = ["auto", "fp8"] if gpu.supports("fp8") else ["auto"]
    out = []
    for tp in (t for t in range(1, domain + 1) if domain % t == 0):
        for pp in (p for p in range(1, min(gpus // tp, model.num_layers) + 1) if (p == 1 or tp == domain) and gpus % (tp * p) == 0):
            groups = [(1, 1, tp)]  # (dp, ep, etp) of one worker
            if model.moe is not None and pp == 1:
                experts, width = model.moe.num_experts, model.moe.expert_ffn_hidden_size
                sizes = [k for k in range(1, gpus // tp + 1) if gpus % (tp * k) == 0]
                groups += [(k, tp * k, 1) for k in sizes if tp * k > 1 and experts % (tp * k) == 0]
                groups += [(k, 1, tp * k) for k in sizes if k > 1 and width % (tp * k) == 0]
            for (dp, ep, etp), precision, kv in itertools.product(groups, precisions, caches):
                plan = Plan(tp=tp, pp=pp, dp=dp, ep=ep, etp=etp, precision=precision,
                            kv_cache_dtype=kv, layers_per_stage=stages(model.num_layers, pp))
                if any(getattr(plan, name) != value for name, value in fixed.items()):
                    continue
                work = Workload(kind="inference", seq_len=128, global_batch_size=dp)
                if not [v for v in structural_violations(model, cluster, plan, work) if v.rule not in NOT_SERVING_RULES]:
                    out.append(plan)
    return out


def largest_within(most: int, ok, known: int = 1) -> int:
    """The largest c in [1, most] with ok(c), ok true up to some c and false beyond; 0 where ok(1) fails.
    ``known``: a c already known to pass, from which the search gallops (doubling) before it bisects."""
    if most < 1 or not ok(known):
        return 0
    low, high = known, most
    while low < high and 2 * low <= high and ok(2 * low):
        low *= 2
    high = min(high, 2 * low - 1) if low < high and 2 * low <= high else high
    while low < high:
        mid = (low + high + 1) // 2
        low, high = (mid, high) if ok(mid) else (low, mid - 1)
    return low


def aggregated_capacity(replica: ServingReplica, targets: Targets, known: int = 1) -> int:
    """The most requests a replica runs at once within the targets (0: not even one); ``known`` passes."""
    return largest_within(replica.max_concurrency, lambda c: targets.met(*_latencies(replica, c)), known)


def decode_capacity(replica: ServingReplica, targets: Targets) -> int:
    """The most requests a decode replica runs at once within the TPOT target."""
    return largest_within(replica.max_concurrency, lambda c: targets.met(0.0, replica.tpot(c)))


def _latencies(replica: ServingReplica, c: float) -> tuple[float, float]:
    steady = replica.steady(c)
    return steady.ttft_s, steady.tpot_s


def price_per_million(cluster: ClusterSpec, gpus: int, tokens_per_s: float) -> float:
    """USD per million output tokens at the GPU's default price (`hardware.default_price`)."""
    return default_price(cluster.gpu) * gpus / 3600 / tokens_per_s * 1e6 if tokens_per_s > 0 else math.inf


@dataclass
class Priced:
    """The layouts a search priced: each worker's replica model, and why the others hold no request."""

    replicas: dict[Plan, ServingReplica]
    misfits: dict[Plan, str]


def price_layouts(request: Request, layouts: list[Plan]) -> Priced:
    replicas, misfits = {}, {}
    for plan in layouts:
        try:
            replicas[plan] = ServingReplica(request.model, request.cluster, plan, request.traffic,
                                            efficiency=request.efficiency, runtime=request.runtime)
        except PlanError as error:
            misfits[plan] = str(error)
    return Priced(replicas, misfits)


def aggregated_plan(request: Request, replica: ServingReplica, capacity: int) -> Candidate | None:
    """The deployment of one layout at its ``capacity`` per replica: every worker that fits the cluster
    with no load, else the fewest workers that carry the load; None where the cluster is too small."""
    t, g = request.traffic, replica.plan.world_size
    most = 1 if coupled(replica.plan) else request.gpus // g
    if t.request_rate is not None:
        per_worker = replica.plan.dp * capacity / replica.steady(capacity).latency_s
        count, load = math.ceil(t.request_rate / per_worker * (1 - 1e-12)), t
    elif t.concurrency is not None:
        count, load = math.ceil(t.concurrency / (replica.plan.dp * capacity)), t
    else:
        count = most
        load = t.model_copy(update={"concurrency": capacity * replica.plan.dp * most})
    if count < 1 or count > most:
        return None
    figures = replica_deployment(replica, load, workers=count)
    if figures.saturated or not request.targets.met(figures.ttft_s, figures.tpot_s):
        return None
    return Candidate("aggregated", (("aggregated", replica, count, math.ceil(figures.concurrency)),), figures)


def disaggregated_plan(request: Request, pools: Pools, decode_capacity_: int) -> Candidate | None:
    """The best split of the cluster between ``pools``' prefill and decode workers (module docstring)."""
    t, targets = request.traffic, request.targets
    p, d = pools.prefill, pools.decode
    gp, gd = p.plan.world_size, d.plan.world_size
    decode_rate = d.plan.dp * decode_capacity_ / (d.decode_iterations * d.decode_step(decode_capacity_))
    best = None
    for x in range(1, (request.gpus - gd) // gp + 1):
        for y in split_candidates(request, pools, x, decode_rate):
            gpus = x * gp + y * gd
            prefill_rate = x * p.plan.dp * prefill_utilization_within(pools, targets.ttft_s, gpus) / p.prefill_s
            rate = min(prefill_rate, y * decode_rate)
            if t.request_rate is not None:
                if rate < t.request_rate * (1 - 1e-12):
                    continue
                rate = t.request_rate
            key = (-gpus, rate) if t.request_rate is not None else (rate / gpus, -gpus)
            if rate > 0 and (best is None or key > best[0]):
                best = (key, x, y, rate)
    if best is None:
        return None
    _, x, y, rate = best
    copies = 1 if t.request_rate is not None else request.gpus // (x * gp + y * gd)
    for k in range(copies, 0, -1):  # the best unit, copied over the cluster while its KV still travels in time
        figures = disaggregate(pools, k * x, k * y, k * rate)
        if not figures.saturated and targets.met(figures.ttft_s, figures.tpot_s):
            x, y = k * x, k * y
            break
    else:
        return None
    prompts = min(max(int(p.budget // p.mean_prefilled), 1), p.max_concurrency)  # the prompts one iteration computes
    return Candidate("disaggregated", (("prefill", p, x, prompts), ("decode", d, y, decode_capacity_)), figures)


def split_candidates(request: Request, pools: Pools, x: int, decode_rate: float) -> set[int]:
    """The decode worker counts y that can be best beside x prefill workers. With no load, tokens/s per
    GPU min(x·a, y·b)/(x·g_p + y·g_d) rises with y until the decode pool's rate y·b meets the prefill's
    x·a and falls after, on either side of the NVLink domain (where the KV transfer, and so a, changes):
    the y on each side of each balance point and of the domain's edge. With a load, the fewest y that
    carry it (more only adds GPUs and can only push the transfer off NVLink). The tests check this
    against every y."""
    p, d, t = pools.prefill, pools.decode, request.traffic
    gp, gd = p.plan.world_size, d.plan.world_size
    most = (request.gpus - x * gp) // gd
    if t.request_rate is not None:
        wanted = {math.ceil(t.request_rate / decode_rate * (1 - 1e-12))}
    else:
        edge = (pools.domain - x * gp) // gd
        wanted = {1, most, edge, edge + 1}
        for gpus in (pools.domain, pools.domain + 1):  # the prefill's rate inside and across the domain
            balance = x * p.plan.dp * prefill_utilization_within(pools, request.targets.ttft_s, gpus) / p.prefill_s / decode_rate
            wanted |= {math.floor(balance), math.ceil(balance)}
    return {y for y in wanted if 1 <= y <= most}


@dataclass(frozen=True)
class Candidate:
    """A deployment the search priced, before it is written out: each pool as (role, replica, workers,
    requests per replica), and its figures."""

    serving: Literal["aggregated", "disaggregated"]
    pools: tuple[tuple[str, ServingReplica, int, int], ...]
    figures: ServingEstimate | DisaggregatedEstimate


def written(candidate: Candidate, cluster: ClusterSpec) -> ServingPlan:
    """The `ServingPlan` of a candidate: each pool's memory at its requests, the price per token."""
    workers = tuple(Worker(role=role, plan=replica.plan, count=count, concurrency=concurrency,
                           memory=replica.memory(concurrency)) for role, replica, count, concurrency in candidate.pools)
    f = candidate.figures
    return ServingPlan(serving=candidate.serving, workers=workers, **{candidate.serving: f},
                       usd_per_million_tokens=price_per_million(cluster, f.gpus, f.output_tokens_per_s))


def rank(plan: Candidate | ServingPlan, objective: str) -> tuple:
    """The objective's order, ties to tokens/s per user, then fewer GPUs (module docstring); larger is better."""
    f = plan.figures
    first = -f.gpus if objective == "gpus" else f.output_tokens_per_s_per_gpu
    return first, f.tokens_per_s_per_user, -f.gpus


def serve_plan(model: ModelSpec, cluster: ClusterSpec, traffic: Traffic, *, mode: str = "streaming",
               ttft_s: float | None = None, tpot_s: float | None = None, serving: str = "auto",
               fixed: dict | None = None, pareto: bool = False, efficiency: Efficiency | None = None,
               runtime: RuntimeAllowance | None = None) -> ServingSolution:
    """The best serving deployment of ``model`` on ``cluster`` for ``traffic`` within the mode's (or the
    given) latency targets (module docstring); `Infeasible` says which target no layout meets, by how
    much, and what would."""
    start = time.perf_counter()
    if serving not in ("auto", "aggregated", "disaggregated"):
        raise SolverInputError(f"serving {serving!r}: use auto, aggregated or disaggregated")
    targets = Targets.of(mode, ttft_s, tpot_s)
    request = Request(model, cluster, traffic, targets, efficiency, runtime)
    layouts = worker_layouts(model, cluster, dict(fixed or {}))
    if not layouts:
        raise Infeasible(f"no worker layout of {model.name} on {cluster.gpu.display_name} satisfies the serving "
                         f"rules with {fixed}", [f"fixed {fixed}"], ["pin fewer fields, or values the rules admit"])
    priced = price_layouts(request, layouts)
    objective = "gpus" if traffic.request_rate is not None or traffic.concurrency is not None else "throughput"
    capacities = {plan: aggregated_capacity(r, targets) for plan, r in priced.replicas.items()}
    aggregated = [] if serving == "disaggregated" else [
        found for plan, r in priced.replicas.items() if capacities[plan]
        and (found := aggregated_plan(request, r, capacities[plan])) is not None]
    notes = []
    disaggregated = []
    if serving != "aggregated":
        why = disaggregation_refused(traffic, targets)
        if why and serving == "disaggregated":
            raise SolverInputError(f"{why}; or ask for --serving aggregated or auto")
        if why:
            notes.append(why)
        else:
            disaggregated = disaggregated_plans(request, priced)
    candidates = aggregated + disaggregated
    if not candidates:
        raise infeasible(request, priced, serving)

    def best_of(found: list[Candidate]) -> ServingPlan | None:
        return written(max(found, key=lambda p: rank(p, objective)), cluster) if found else None

    frontier = tuple(written(c, cluster) for c in pareto_frontier(request, priced, serving, capacities)) if pareto else ()
    return ServingSolution(model=model, cluster=cluster, traffic=traffic, targets=targets, objective=objective,
                           best=best_of(candidates), best_aggregated=best_of(aggregated),
                           best_disaggregated=best_of(disaggregated), frontier=frontier, layouts=len(layouts),
                           notes=tuple(notes), solve_time_s=time.perf_counter() - start)


def disaggregation_refused(traffic: Traffic, targets: Targets) -> str | None:
    """Why a disaggregated deployment is not searched for this request, or None."""
    if max(c.osl for c in traffic.classes) < 2:
        return "disaggregated not searched: with one output token the prefill does all the work"
    if traffic.concurrency is not None:
        return ("disaggregated not searched for a closed loop (--concurrency): its pools are priced at a "
                "request rate; give --rate")
    if targets.ttft_s is None:
        return ("disaggregated not searched without a TTFT target (batch mode): it separates prefill from "
                "decode to hold latency targets, and an aggregated engine batches both at full throughput")
    return None


def disaggregated_plans(request: Request, priced: Priced) -> list[Candidate]:
    """The best split of every (prefill, decode) layout pair that share their weights' and cache's dtypes."""
    decode_caps = {plan: decode_capacity(r, request.targets) for plan, r in priced.replicas.items()}
    eff = request.efficiency or Efficiency.default()
    found = (disaggregated_plan(request, Pools(prefill, decode, eff), decode_caps[decode.plan])
             for prefill, decode in pairs(priced) if decode_caps[decode.plan])
    return [plan for plan in found if plan is not None]


def describe_layout(plan: Plan) -> str:
    parts = [f"tp {plan.tp}"] + [f"{name} {getattr(plan, name)}" for name in ("pp", "dp", "ep") if getattr(plan, name) > 1]
    parts += [f"etp {plan.etp}"] if plan.etp > plan.tp else []  # experts split wider than attention
    return " ".join(parts) + f", {plan.precision} weights, {'fp8' if plan.kv_cache_dtype == 'fp8' else 'bf16'} KV cache"


def infeasible(request: Request, priced: Priced, serving: str) -> Infeasible:
    """Which target or limit no layout meets, by how much, and what would (the first that applies: nothing
    fits, a latency target missed even by one request, the load beyond the cluster)."""
    t, targets, cluster = request.traffic, request.targets, request.cluster
    if not priced.replicas:
        plan, why = next(iter(priced.misfits.items()))
        largest = max(priced.misfits, key=lambda p: (p.world_size, p.precision == "fp8"))
        return Infeasible(
            f"no worker layout of {request.model.name} holds one request of {t.isl} + {t.osl} tokens on "
            f"{cluster.gpu.display_name}: the largest ({describe_layout(largest)}) {priced.misfits[largest].split(': ', 1)[0]}: "
            f"{priced.misfits[largest].split(': ', 1)[-1]}",
            [f"memory: {why}"],
            ["fp8 weights and KV cache (--precision fp8 --kv-cache-dtype fp8)", "shorter requests (--isl/--osl)",
             "GPUs with more memory, or more GPUs per worker (pipeline stages across nodes)"])
    one = {plan: r.steady(1) for plan, r in priced.replicas.items()}
    fastest_ttft = min(one.items(), key=lambda kv: kv[1].ttft_s)
    fastest_tpot = min(one.items(), key=lambda kv: kv[1].tpot_s)
    conflicts, fixes = [], []
    if targets.ttft_s is not None and fastest_ttft[1].ttft_s > targets.ttft_s:
        s = fastest_ttft[1].ttft_s
        conflicts.append(f"TTFT ≤ {targets.ttft_s * 1e3:.0f} ms: the fastest layout ({describe_layout(fastest_ttft[0])}) "
                         f"takes {s * 1e3:.1f} ms for a {t.isl}-token prompt alone ({s / targets.ttft_s:.2f}x the target)")
        fixes += [f"--ttft {math.ceil(s * 1e3)} (ms) or more", "a prefix-cache hit rate (--prefix-hit-rate) or shorter prompts"]
    if targets.tpot_s is not None and fastest_tpot[1].tpot_s > targets.tpot_s:
        s = fastest_tpot[1].tpot_s
        conflicts.append(f"TPOT ≤ {targets.tpot_s * 1e3:.1f} ms: the fastest layout ({describe_layout(fastest_tpot[0])}) "
                         f"takes {s * 1e3:.1f} ms per token for one request ({s / targets.tpot_s:.2f}x the target)")
        fixes += [f"--tpot {math.ceil(s * 1e4) / 10} (ms) or more", "fp8 weights, or GPUs with more memory bandwidth"]
    if conflicts:
        return Infeasible("no layout meets the latency targets even with one request: " + "; ".join(conflicts),
                          conflicts, fixes)
    if not any(one[p].ttft_s <= (targets.ttft_s or math.inf) and one[p].tpot_s <= (targets.tpot_s or math.inf) for p in one):
        return Infeasible(
            f"no one layout meets both targets with one request: the fastest to the first token is "
            f"{describe_layout(fastest_ttft[0])}, the fastest per token {describe_layout(fastest_tpot[0])}",
            [f"TTFT ≤ {targets.ttft_s * 1e3:.0f} ms", f"TPOT ≤ {targets.tpot_s * 1e3:.1f} ms"],
            ["loosen one target (--ttft or --tpot)"])
    load = f"{t.request_rate:g} requests/s" if t.request_rate is not None else f"{t.concurrency} concurrent requests"
    needed = []
    for plan, replica in priced.replicas.items():
        capacity = aggregated_capacity(replica, targets)
        if capacity:
            per_worker = (plan.dp * capacity / replica.steady(capacity).latency_s if t.request_rate is not None
                          else plan.dp * capacity)
            needed.append((math.ceil((t.request_rate or t.concurrency) / per_worker) * plan.world_size, plan))
    gpus, plan = min(needed, key=lambda n: n[0])
    nodes = math.ceil(gpus / cluster.node.gpus_per_node)
    return Infeasible(
        f"{load} within the targets need {gpus} GPUs at least aggregated ({describe_layout(plan)} workers); the "
        f"cluster has {request.gpus}", [f"load {load}", f"cluster of {request.gpus} GPUs"],
        [f"{nodes} nodes (--nodes {nodes})", "a lower load", "looser targets (--ttft/--tpot)"]
        + (["disaggregated serving (--serving auto)"] if serving == "aggregated" else []))


def pareto_frontier(request: Request, priced: Priced, serving: str, capacities: dict[Plan, int]) -> list[Candidate]:
    """The deployments no other beats on both tokens/s per GPU and tokens/s per user (aiconfigurator's
    chart): every layout at concurrencies 1, 2, 4, … up to the most within the TTFT target (the TPOT
    target is what the chart trades, so it does not filter; ``capacities``, each layout's within both
    targets, is where that search starts), aggregated and, where searched,
    disaggregated at each decode concurrency; sorted by tokens/s per user."""
    loose = request.targets.model_copy(update={"tpot_s": None})
    sweep = Request(request.model, request.cluster, request.traffic.model_copy(update={"request_rate": None,
                    "concurrency": None}), loose, request.efficiency, request.runtime)
    points = []
    for plan, replica in priced.replicas.items() if serving != "disaggregated" else ():
        for c in doubling(aggregated_capacity(replica, loose, capacities.get(plan) or 1)):
            points.append(aggregated_plan(sweep, replica, c))
    if serving != "aggregated" and disaggregation_refused(sweep.traffic, loose) is None:
        eff = request.efficiency or Efficiency.default()
        for prefill, decode in pairs(priced):
            for c in doubling(decode.max_concurrency):
                points.append(disaggregated_plan(sweep, Pools(prefill, decode, eff), c))
    return non_dominated([p for p in points if p is not None])


def non_dominated(points: list[Candidate]) -> list[Candidate]:
    """The points no other beats on both tokens/s per GPU and tokens/s per user, one per distinct pair
    (the best by `rank`), sorted by tokens/s per user: sweep from the fastest per user down, keeping each
    point with more tokens/s per GPU than every faster one."""
    key = lambda p: (p.figures.tokens_per_s_per_user, p.figures.output_tokens_per_s_per_gpu)  # noqa: E731
    front, best_per_gpu = [], -math.inf
    for p in sorted(points, key=lambda p: (key(p), rank(p, "throughput")), reverse=True):
        if p.figures.output_tokens_per_s_per_gpu > best_per_gpu:
            front.append(p)
            best_per_gpu = p.figures.output_tokens_per_s_per_gpu
    return front[::-1]


def doubling(most: int) -> list[int]:
    """1, 2, 4, … below ``most``, and ``most``."""
    out = [c for c in (2**i for i in range(max(most, 1).bit_length())) if c < most]
    return out + [most] if most else []


def pairs(priced: Priced):
    """(prefill, decode) replicas of one weights and cache dtype: one checkpoint, one cache layout."""
    for (a, prefill), (b, decode) in itertools.product(priced.replicas.items(), repeat=2):
        if (a.precision, a.kv_cache_dtype) == (b.precision, b.kv_cache_dtype):
            yield prefill, decode
