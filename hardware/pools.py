"""Heterogeneous clusters: several pools of nodes, each homogeneous (its own GPU, node and network: a
`ClusterSpec`), joined by one link. A cluster file (or dict) with ``pools`` describes one:

    name: h100-and-a100
    pools:
      - {cluster: dgx-h100, nodes: 4}
      - {cluster: dgx-a100, nodes: 8, name: a100}
    link: {bandwidth: 100 GB/s}

Each pool names a cluster preset or file (``cluster``) and its size (``nodes`` or ``gpus``, as
`load_cluster` takes them); ``link.bandwidth`` is what the pools can exchange per direction in total
(the switches or the data-centre network between them), ``link.latency`` one hop's latency (default:
the network latency of `Efficiency.latency_s`, i.e. None here).
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from parallelplan.common.validation import describe_validation_error
from parallelplan.hardware.errors import HardwareError
from parallelplan.hardware.spec import ClusterSpec, Rate


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class PoolLink(_Frozen):
    """The link between the pools: total bandwidth per direction (bytes/s) and one hop's latency (s)."""

    bandwidth: Annotated[Rate, Field(gt=0)]
    latency: Annotated[float, Field(gt=0, lt=1)] | None = None


class Pool(_Frozen):
    """One homogeneous part of the cluster, with a name to report it by."""

    name: str = Field(min_length=1)
    cluster: ClusterSpec


class PooledCluster(_Frozen):
    """Two or more pools and the link between them."""

    name: str = Field(min_length=1)
    pools: tuple[Pool, ...] = Field(min_length=2)
    link: PoolLink

    @property
    def total_gpus(self) -> int:
        return sum(p.cluster.total_gpus for p in self.pools)


def is_pooled(fields: Any) -> bool:
    """Whether cluster fields (a file's or a dict's) describe pools."""
    return isinstance(fields, dict) and "pools" in fields


def pooled_cluster(fields: dict[str, Any], what: str) -> PooledCluster:
    """A `PooledCluster` from a file's or dict's fields (module docstring); `HardwareError` naming the field."""
    from parallelplan.hardware.loader import load_cluster

    unknown = sorted(set(fields) - {"name", "pools", "link"})
    if unknown:
        raise HardwareError(f"{what}: field {unknown[0]!r} is not a pooled-cluster field; use name, pools, link")
    pools = fields["pools"]
    if not isinstance(pools, list) or len(pools) < 2:
        raise HardwareError(f"{what}: pools must list two or more pools ({{cluster: <preset or file>, nodes: N}}); "
                            "one pool is an ordinary cluster")
    if "link" not in fields:
        raise HardwareError(f"{what}: link: give the bandwidth between the pools (e.g. link: {{bandwidth: 100 GB/s}}); "
                            "pools with no link cannot train one model together")
    built = []
    for i, entry in enumerate(pools):
        where = f"{what}: pools[{i}]"
        if not isinstance(entry, dict) or "cluster" not in entry:
            raise HardwareError(f"{where}: give {{cluster: <preset or file>, nodes: N}}")
        extra = sorted(set(entry) - {"cluster", "nodes", "gpus", "name"})
        if extra:
            raise HardwareError(f"{where}: field {extra[0]!r} is not a pool field; use cluster, nodes, gpus, name")
        for size in ("nodes", "gpus"):
            value = entry.get(size)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise HardwareError(f"{where}.{size} must be a positive integer (a pool has at least one GPU), got {value!r}")
        cluster = load_cluster(entry["cluster"], nodes=entry.get("nodes"), gpus=entry.get("gpus"))
        if not isinstance(cluster, ClusterSpec):
            raise HardwareError(f"{where}.cluster: a pool is one homogeneous cluster, not pools of its own")
        built.append({"name": entry.get("name") or f"{cluster.name} x{cluster.total_gpus}", "cluster": cluster})
    names = [b["name"] for b in built]
    if len(set(names)) != len(names):
        raise HardwareError(f"{what}: pools need distinct names (give name: ...), got {names}")
    try:
        return PooledCluster(name=fields.get("name") or " + ".join(names), pools=built, link=fields["link"])
    except ValidationError as err:
        raise HardwareError(describe_validation_error(err, what)) from None
