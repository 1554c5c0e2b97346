"""What a node reports about itself, before any interpretation: the readings of NVML, of `nvidia-smi`
and of sysfs/procfs, merged into one `NodeFacts`. Every field that a source could not tell is None
(never a guess); `hardware.detect.classify` turns the facts into a `ClusterSpec`.

Connection codes between two devices are those of ``nvidia-smi topo -m``: ``X`` (self), ``NV<k>``
(k bonded NVLinks), ``PIX`` (at most one PCIe bridge), ``PXB`` (several bridges), ``PHB`` (through a
host bridge), ``NODE`` (between host bridges of one NUMA node), ``SYS`` (across the SMP interconnect).
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict

_NVLINK = re.compile(r"NV(\d+)$")


def shares_pcie_switch(codes: tuple[str, ...] | None) -> bool:
    """A port with ``PIX`` or ``PXB`` to some GPU: behind the same PCIe switch (the rail NICs NCCL
    pairs with GPUs)."""
    return bool(codes) and any(code in ("PIX", "PXB") for code in codes)


def nvlink_count(code: str) -> int:
    """Bonded NVLinks in a connection code (``NV18`` → 18), 0 for a PCIe path."""
    match = _NVLINK.match(code)
    return int(match.group(1)) if match else 0


def normal_bus_id(bus_id: str) -> str:
    """PCI address as sysfs writes it (``0000:18:00.0``) from NVML's 8-digit-domain form
    (``00000000:18:00.0``) or nvidia-smi's upper case."""
    parts = bus_id.strip().lower().split(":")
    if len(parts) == 3 and all(parts):
        return f"{int(parts[0], 16):04x}:{parts[1]}:{parts[2]}"
    return ":".join(["0000", *parts]) if len(parts) == 2 else ":".join(parts)


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class LinkFacts(_Frozen):
    """One NVLink of a GPU as NVML reports it. ``version`` is NVML's ``nvmlNvlinkVersion_t`` value;
    ``remote_type`` says whether the far end is a GPU or an NVSwitch."""

    link: int
    active: bool
    version: int | None = None
    remote_bus_id: str | None = None
    remote_type: Literal["gpu", "switch", "ibmnpu", "unknown"] | None = None


class GpuFacts(_Frozen):
    """One GPU. ``numa_node`` is the CPU-side NUMA node it is attached to (sysfs, or the matrix's
    "NUMA Affinity"); ``memory_numa_node`` the node its own memory forms on Grace systems (NVML,
    "GPU NUMA ID"). ``nvlinks`` is None when NVML could not tell (unsupported call, pass-through VM)."""

    index: int
    name: str
    memory_bytes: int | None = None
    compute_capability: str | None = None
    bus_id: str | None = None
    numa_node: int | None = None
    memory_numa_node: int | None = None
    cpu_affinity: str | None = None
    pcie_generation: int | None = None
    pcie_width: int | None = None
    c2c_enabled: bool | None = None
    mig_enabled: bool | None = None
    virtualization: str | None = None
    nvlinks: tuple[LinkFacts, ...] | None = None


class NicFacts(_Frozen):
    """One network port. ``kind``: ``infiniband`` (IB link layer), ``roce`` (an RDMA device on an
    Ethernet link layer), ``ethernet`` (no RDMA), None when only the name is known. ``rate`` is the line rate in bytes/s per direction.
    ``gpu_connections`` holds the connection code to each GPU (same order as the GPUs) when known."""

    name: str
    kind: Literal["infiniband", "roce", "ethernet"] | None = None
    rate: float | None = None
    active: bool | None = None
    numa_node: int | None = None
    bus_id: str | None = None
    gpu_connections: tuple[str, ...] | None = None


class HostFacts(_Frozen):
    """The host around the GPUs. ``gpudirect_rdma`` lists the evidence found for GPUDirect RDMA
    (the peer-memory paths NCCL checks); None when the source could not look."""

    numa_nodes: int | None = None
    cpu: str | None = None
    memory_bytes: int | None = None
    gpudirect_rdma: tuple[str, ...] | None = None


class NodeFacts(_Frozen):
    """Everything read from one node. ``gpu_connections[i][j]`` is the connection code between GPU i
    and GPU j; ``p2p[i][j]`` the peer-to-peer read status (``OK`` or nvidia-smi's reason code).
    ``sources`` names what each part was read from; ``recorded`` labels a replayed snapshot (what
    machine, when, from where) and is None for a live reading."""

    gpus: tuple[GpuFacts, ...]
    gpu_connections: tuple[tuple[str, ...], ...] | None = None
    p2p: tuple[tuple[str, ...], ...] | None = None
    nics: tuple[NicFacts, ...] | None = None
    host: HostFacts = HostFacts()
    sources: tuple[str, ...] = ()
    recorded: str | None = None
    warnings: tuple[str, ...] = ()
