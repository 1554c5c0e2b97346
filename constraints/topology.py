"""`describe_topology(cluster)`: the cluster as the cost model sees it — its bandwidth tiers (the NVLink /
PCIe domain, the network) and what collectives cost over groups of growing size, computed by the same α-β
model the step times use (`constraints.collectives`), and which NCCL protocol its ring all-reduce runs at
which message size (`protocol_ranges`). `plan topology` prints it.

Bus bandwidth is NCCL-tests' figure of merit (nccl-tests doc/PERFORMANCE.md): for an all-reduce of S bytes
in t seconds, busbw = S/t · 2(n−1)/n — comparable with a measured ``all_reduce_perf`` run.
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict

from parallelplan.constraints.collectives import Fabric
from parallelplan.constraints.efficiency import Efficiency
from parallelplan.constraints.errors import PlanError
from parallelplan.hardware import ClusterSpec

MESSAGE_BYTES = 2**30
"""The message the collective table prices: 1 GiB, large enough that bandwidth, not latency, dominates
(the regime of gradient buckets and gathered layers)."""


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True)


class Tier(_Frozen):
    """One level of the interconnect: ``gpus`` share it; bandwidth per GPU per direction as specified and
    as NCCL achieves it (× the bus efficiency), and the per-step latency."""

    name: str
    gpus: int
    bandwidth: float
    effective_bandwidth: float
    latency_s: float


class GroupCost(_Frozen):
    """Collectives over ``size`` consecutive ranks (stride 1), spanning ``domains`` fast domains."""

    size: int
    domains: int
    all_reduce_s: float
    all_gather_s: float
    all_to_all_s: float
    bus_bandwidth: float


class ProtocolRange(_Frozen):
    """NCCL's ring all-reduce over ``size`` consecutive ranks runs ``protocol`` for messages from
    ``from_bytes`` up to ``to_bytes`` (None: beyond), as the cost model prices the enabled protocols."""

    size: int
    protocol: str
    from_bytes: int
    to_bytes: int | None


class TopologyReport(_Frozen):
    cluster: ClusterSpec
    tiers: tuple[Tier, ...]
    message_bytes: int
    groups: tuple[GroupCost, ...]
    protocols: tuple[ProtocolRange, ...]


PROTOCOL_PROBES = 2 ** np.arange(3, 34)
"""The message sizes the protocol ranges are read at: 8 B to 8 GiB, powers of two."""


def protocol_ranges(fabric: Fabric, size: int) -> list[ProtocolRange]:
    """The fastest ring protocol of an all-reduce over ``size`` consecutive ranks at each probe size,
    merged into ranges (at power-of-two resolution)."""
    probes = PROTOCOL_PROBES.astype(float)
    best = fabric.ring_times(probes, np.full(len(probes), size), np.ones(len(probes), dtype=np.int64), 2).argmin(axis=0)
    out: list[ProtocolRange] = []
    for i, index in enumerate(best):
        name = fabric.protocols[index].name
        if out and out[-1].protocol == name:
            continue
        if out:
            out[-1] = out[-1].model_copy(update={"to_bytes": int(PROTOCOL_PROBES[i - 1])})
        out.append(ProtocolRange(size=size, protocol=name, from_bytes=int(PROTOCOL_PROBES[i]), to_bytes=None))
    return out


def group_sizes(total: int, domain: int) -> list[int]:
    """2, 4, 8, … up to the cluster, plus the fast domain and the whole cluster."""
    sizes = {2**i for i in range(1, total.bit_length()) if 2**i <= total} | {domain, total}
    return sorted(s for s in sizes if s > 1)


def describe_topology(cluster: ClusterSpec, *, message_bytes: int = MESSAGE_BYTES,
                      efficiency: Efficiency | None = None) -> TopologyReport:
    if isinstance(message_bytes, bool) or not isinstance(message_bytes, int) or message_bytes < 1:
        raise PlanError(f"message_bytes must be a positive integer (bytes), got {message_bytes!r}")
    eff = efficiency or Efficiency.default()
    fabric = Fabric.of(cluster, eff)
    node = cluster.node
    inside = "NVLink domain" if cluster.nvlink_domain_size > 1 else "node (PCIe)"
    tiers = [Tier(name=f"{inside}: {node.intra_node_fabric}", gpus=fabric.domain, bandwidth=node.intra_node_bandwidth,
                  effective_bandwidth=fabric.intra_bw, latency_s=fabric.intra_alpha)]
    if cluster.total_gpus > fabric.domain:
        tiers.append(Tier(name=f"network: {cluster.inter_node_fabric}, {node.nics_per_node} NICs per node",
                          gpus=cluster.total_gpus, bandwidth=node.nic_bandwidth_per_gpu,
                          effective_bandwidth=fabric.inter_bw, latency_s=fabric.inter_alpha))
    sizes = np.array(group_sizes(cluster.total_gpus, fabric.domain), dtype=np.int64)
    ones = np.ones_like(sizes)
    nbytes = np.full(len(sizes), float(message_bytes))
    gather = fabric.reduce_scatter(nbytes, sizes, ones)
    reduce = fabric.all_reduce(nbytes, sizes, ones)
    all_to_all = fabric.all_to_all(nbytes, sizes, ones)
    domains = fabric.split(sizes, ones)[1]
    groups = tuple(
        GroupCost(size=int(n), domains=int(d), all_reduce_s=float(r), all_gather_s=float(g), all_to_all_s=float(a),
                  bus_bandwidth=float(message_bytes / r * 2 * (n - 1) / n))
        for n, d, r, g, a in zip(sizes, domains, reduce, gather, all_to_all, strict=True))
    spans = sorted({fabric.domain, cluster.total_gpus} - {1})
    protocols = tuple(r for size in spans for r in protocol_ranges(fabric, size))
    return TopologyReport(cluster=cluster, tiers=tuple(tiers), message_bytes=message_bytes, groups=groups,
                          protocols=protocols)
