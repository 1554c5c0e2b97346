"""Disaggregated serving: prompts prefilled on x prefill workers, their KV cache sent to y decode workers,
which generate the rest (DistServe: Zhong et al. 2024, OSDI §3; Splitwise: Patel et al. 2024, ISCA), as
vLLM's NixlConnector and SGLang's ``--disaggregation-mode`` run it behind a router that sends each request
to a prefill worker, then to a decode worker. A worker is an inference layout (a `Plan`, its dp replicas
each an engine); both roles are priced by `constraints.serving.ServingReplica`. An open loop of λ
requests per second (``Traffic.request_rate``):

- Prefill: each replica computes one prompt's q tokens (those its prefix cache misses) at a prompt's
  per-token cost, S = q · t_prefill(isl) / isl — compute-bound, so batching prompts into one iteration
  does not shorten a token's share. The x · dp_p replicas share the arrivals, each busy a share
  ρ = λ · E[S] / (x · dp_p) of the time; a request waits in an M/G/1 queue (Poisson arrivals, the service
  times of the length classes), on average ρ · E[S²] / (2 E[S] (1 − ρ)) (the Pollaczek–Khinchine
  formula; ρ · S / (2(1 − ρ)) for one length).
- KV transfer: the prompt's cache, isl tokens, from the prefill replica's GPUs to the decode replica's,
  every GPU moving its shard at once over its own link: isl · (the larger side's bytes per token per
  GPU) / link (`collectives.Fabric.send`: NVLink where the deployment fits one NVLink domain, the NIC
  otherwise) — after the prefill, not overlapped with it (vLLM's NixlConnector reads the finished blocks).
      TTFT = E[S] + ρ · E[S²] / (2 E[S] (1 − ρ)) + transfer   (the prompt's mean isl tokens sent)
- Decode: the first token came from the prefill; the decode replicas run D = osl − 1 iterations of every
  running request ((osl − 1)/(1 + a) with speculative decoding) and no prompt chunk. With c running
  requests per replica an iteration takes t_decode(c) at the mean context (`ServingReplica.decode_step`),
  TPOT = t_decode(c)/(1 + a), a request holds its slot D · t_decode(c), so Little's law gives
  c = λ / (y · dp_d) · D · t_decode(c); beyond what fits (the KV cache of c whole requests) the loop
  saturates.
The targets met at the highest load a pool takes: `prefill_utilization_within` (the ρ whose TTFT is the
target) and the decode search's largest c whose step is within the TPOT target (`solver.serving`).
"""

from __future__ import annotations

import numpy as np

from parallelplan.constraints.collectives import Fabric, fast_domain
from parallelplan.constraints.efficiency import Efficiency
from parallelplan.constraints.errors import PlanError
from parallelplan.constraints.serving import ServedFigures, ServingReplica, little_concurrency


class DisaggregatedEstimate(ServedFigures):
    """A disaggregated deployment in steady state (module docstring): its pools, each pool's load
    (``prefill_utilization`` ρ, ``decode_concurrency`` c per decode replica) and a prompt's KV transfer."""

    prefill_workers: int
    decode_workers: int
    prefill_utilization: float
    decode_concurrency: float
    max_decode_concurrency: int
    kv_transfer_s: float


class Pools:
    """A prefill layout and a decode layout priced for one traffic's lengths, and one prompt's KV transfer
    between them (module docstring), within an NVLink domain and across the network."""

    def __init__(self, prefill: ServingReplica, decode: ServingReplica, efficiency: Efficiency) -> None:
        if max(c.osl for c in prefill.traffic.classes) < 2:
            raise PlanError("osl 1: the prefill gives the only output token, so a "
                            "decode pool has nothing to do; serve it aggregated")
        self.prefill, self.decode = prefill, decode
        cluster = prefill.cluster
        self.domain = fast_domain(cluster)
        per_gpu = prefill.traffic.mean_isl * max(prefill.kv_bytes_per_token, decode.kv_bytes_per_token)
        sends = Fabric.of(cluster, efficiency).send(np.array([per_gpu, per_gpu]), np.array([1, self.domain]))
        self._inside, self._across = float(sends[0]), float(sends[1])

    def transfer_s(self, gpus: int) -> float:
        """One prompt's KV cache from its prefill GPUs to its decode GPUs, over NVLink when the deployment's
        ``gpus`` fit one NVLink domain, else over the NIC."""
        return self._inside if gpus <= self.domain else self._across

    def ttft_s(self, utilization: float, gpus: int) -> float:
        s = self.prefill.prefill_s
        return s + utilization * self.residual_s / (2 * (1 - utilization)) + self.transfer_s(gpus)

    @property
    def residual_s(self) -> float:
        """E[S²]/E[S] of the prompts' prefill times (S itself for one length)."""
        return self.prefill.prefill_s_squared / self.prefill.prefill_s


def prefill_utilization_within(pools: Pools, ttft_target_s: float, gpus: int) -> float:
    """The highest prefill utilisation ρ whose TTFT is within the target: E[S] + ρ·R/(2(1 − ρ)) + transfer
    = T gives ρ = 2r/(1 + 2r), r = (T − transfer − E[S])/R, R = E[S²]/E[S]; 0 where even an idle prefill
    misses it."""
    s = pools.prefill.prefill_s
    r = (ttft_target_s - pools.transfer_s(gpus) - s) / pools.residual_s
    return 2 * r / (1 + 2 * r) if r > 0 else 0.0


def disaggregate(pools: Pools, prefill_workers: int, decode_workers: int, request_rate: float) -> DisaggregatedEstimate:
    """The deployment of ``prefill_workers`` prefill and ``decode_workers`` decode workers at
    ``request_rate`` requests per second (module docstring)."""
    p, d = pools.prefill, pools.decode
    osl = d.traffic.mean_osl
    gpus = prefill_workers * p.plan.world_size + decode_workers * d.plan.world_size
    prefill_capacity = prefill_workers * p.plan.dp / p.prefill_s
    utilization = min(request_rate / prefill_capacity, 1.0)
    per_replica = request_rate / (decode_workers * d.plan.dp)
    held = lambda c: d.decode_iterations * d.decode_step(c)  # noqa: E731 - how long a request holds its slot
    c, saturated = little_concurrency(per_replica, held, float(d.max_concurrency))
    served = min(request_rate, prefill_capacity, decode_workers * d.plan.dp * c / held(c))
    saturated = saturated or utilization >= 1.0
    ttft = pools.ttft_s(utilization, gpus) if utilization < 1.0 else float("inf")
    return DisaggregatedEstimate(
        prefill_workers=prefill_workers, decode_workers=decode_workers, gpus=gpus, prefill_utilization=utilization,
        decode_concurrency=c, max_decode_concurrency=d.max_concurrency, kv_transfer_s=pools.transfer_s(gpus),
        ttft_s=ttft, tpot_s=d.tpot(c), latency_s=ttft + held(c), requests_per_s=served,
        output_tokens_per_s=served * osl, output_tokens_per_s_per_gpu=served * osl / gpus,
        tokens_per_s_per_user=1 / d.tpot(c), saturated=saturated)


__all__ = ["DisaggregatedEstimate", "Pools", "disaggregate", "prefill_utilization_within"]
