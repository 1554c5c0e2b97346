"""The host around the GPUs, read from sysfs and procfs (Linux kernel ABI: Documentation/ABI/stable/
sysfs-class-infiniband, sysfs-class-net, sysfs-bus-pci; proc(5)): network ports and their line rates,
GPUDirect RDMA, NUMA nodes, CPU model and memory, and where GPUs and NICs sit on PCIe.

`LiveFiles` reads this machine; a `Replay` of its recorded calls reads a snapshot through the same
methods (`hardware.detect.recording`).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from parallelplan.hardware.detect.facts import HostFacts, NicFacts, normal_bus_id
from parallelplan.hardware.detect.recording import Unsupported, maybe
from parallelplan.hardware.detect.smi import LINK_LAYERS

PEER_MEMORY_PATHS = (
    "/sys/kernel/mm/memory_peers/nv_mem/version",
    "/sys/kernel/mm/memory_peers/nv_mem_nc/version",
    "/sys/module/nvidia_peermem/version",
)
"""The files whose presence NCCL takes as GPUDirect RDMA support (nv_peer_mem / nvidia-peermem loaded):
NCCL src/transport/net_ib.cc, ``ncclIbGdrSupport``."""


class LiveFiles:
    """Files of this machine, under ``root`` (``/``)."""

    def __init__(self, root: str = "/") -> None:
        self._root = Path(root)

    def _path(self, path: str) -> Path:
        return self._root / path.lstrip("/")

    def read(self, path: str) -> str:
        try:
            return self._path(path).read_text(errors="replace").strip()
        except OSError as err:
            raise Unsupported(f"{path}: {err.strerror}") from None

    def read_lines(self, path: str, prefixes: list[str]) -> list[str]:
        """The lines of ``path`` that start with one of ``prefixes`` (e.g. /proc/cpuinfo's model names)."""
        try:
            with self._path(path).open(errors="replace") as handle:
                return [line.rstrip("\n") for line in handle if line.startswith(tuple(prefixes))]
        except OSError as err:
            raise Unsupported(f"{path}: {err.strerror}") from None

    def listdir(self, path: str) -> list[str]:
        try:
            return sorted(os.listdir(self._path(path)))
        except OSError as err:
            raise Unsupported(f"{path}: {err.strerror}") from None

    def realpath(self, path: str) -> str:
        target = self._path(path)
        if not target.exists():
            raise Unsupported(f"{path}: no such file")
        return "/" + str(target.resolve().relative_to(self._root.resolve()))


def _numa(files: Any, path: str) -> int | None:
    value = maybe(files.read, path)
    return int(value) if value is not None and value.lstrip("-").isdigit() and int(value) >= 0 else None


def _rate(text: str | None) -> float | None:
    """``400 Gb/sec (4X NDR)`` → bytes/s."""
    match = re.match(r"^\s*([\d.]+)\s*Gb/sec", text or "")
    return float(match.group(1)) * 1e9 / 8 if match else None


def _rdma_ports(files: Any) -> list[NicFacts]:
    nics = []
    for device in maybe(files.listdir, "/sys/class/infiniband") or []:
        base = f"/sys/class/infiniband/{device}"
        bus = maybe(files.realpath, f"{base}/device")
        for port in maybe(files.listdir, f"{base}/ports") or []:
            layer = maybe(files.read, f"{base}/ports/{port}/link_layer")
            state = maybe(files.read, f"{base}/ports/{port}/state")
            nics.append(NicFacts(
                name=device if port == "1" else f"{device}:{port}", kind=LINK_LAYERS.get(layer or ""),
                rate=_rate(maybe(files.read, f"{base}/ports/{port}/rate")),
                active=None if state is None else state.endswith("ACTIVE"),
                numa_node=_numa(files, f"{base}/device/numa_node"), bus_id=bus))
    return nics


def _ethernet_ports(files: Any) -> list[NicFacts]:
    """Physical Ethernet interfaces (ARPHRD_ETHER, type 1) that are not RDMA devices (those are the
    RoCE ports above): virtual interfaces have no ``device`` link."""
    nics = []
    for name in maybe(files.listdir, "/sys/class/net") or []:
        base = f"/sys/class/net/{name}"
        bus = maybe(files.realpath, f"{base}/device")
        if bus is None or maybe(files.read, f"{base}/type") != "1" or maybe(files.listdir, f"{base}/device/infiniband"):
            continue
        speed = maybe(files.read, f"{base}/speed")
        megabits = int(speed) if speed is not None and speed.isdigit() else None
        nics.append(NicFacts(name=name, kind="ethernet", rate=None if not megabits else megabits * 1e6 / 8,
                             active=maybe(files.read, f"{base}/operstate") == "up",
                             numa_node=_numa(files, f"{base}/device/numa_node"), bus_id=bus))
    return nics


def pci_connection(a: str, b: str, numa_a: int | None, numa_b: int | None) -> str:
    """The ``nvidia-smi topo -m`` code between two PCI devices from their sysfs paths
    (``/sys/devices/pci0000:00/0000:00:01.0/0000:01:00.0``): different root complexes are NODE on one
    NUMA node, else SYS; only the root complex shared is PHB; below a shared bridge, PIX when each
    device is at most a switch (upstream + downstream port) away from it, else PXB."""
    pa, pb = Path(a).parts, Path(b).parts
    root = next((k for k, part in enumerate(pa) if part.startswith("pci")), None)
    if root is None or len(pb) <= root or pa[root] != pb[root]:
        return "NODE" if numa_a is not None and numa_a == numa_b else "SYS"
    shared = 0
    while root + 1 + shared < min(len(pa), len(pb)) and pa[root + 1 + shared] == pb[root + 1 + shared]:
        shared += 1
    if shared == 0:
        return "PHB"
    below_a, below_b = len(pa) - (root + 1 + shared), len(pb) - (root + 1 + shared)
    return "PIX" if max(below_a, below_b) <= 2 else "PXB"


def gpu_placement(files: Any, bus_ids: list[str | None]) -> tuple[list[str | None], list[int | None]]:
    """Each GPU's sysfs PCI path and NUMA node (None where the bus id or the file is missing)."""
    paths, numa = [], []
    for bus in bus_ids:
        base = f"/sys/bus/pci/devices/{normal_bus_id(bus)}" if bus else None
        paths.append(maybe(files.realpath, base) if base else None)
        numa.append(_numa(files, f"{base}/numa_node") if base else None)
    return paths, numa


def read_nics(files: Any, gpu_paths: list[str | None], gpu_numa: list[int | None]) -> tuple[NicFacts, ...]:
    """RDMA ports and physical Ethernet ports, each with its connection code to every GPU when the
    PCI paths of all are known."""
    nics = []
    for nic in _rdma_ports(files) + _ethernet_ports(files):
        codes = None
        if nic.bus_id and all(gpu_paths):
            codes = tuple(pci_connection(nic.bus_id, path, nic.numa_node, numa)
                          for path, numa in zip(gpu_paths, gpu_numa, strict=True))
        bus = Path(nic.bus_id).name if nic.bus_id else None
        nics.append(nic.model_copy(update={"gpu_connections": codes, "bus_id": bus}))
    return tuple(nics)


def _cpu_numa_nodes(files: Any) -> int | None:
    """NUMA nodes that hold CPUs (``/sys/devices/system/node/has_cpu``, a CPU-list such as ``0-1``):
    Grace systems add memory-only nodes for GPU memory, which are not sockets; without that file, the
    ``nodeN`` folders."""
    listed = maybe(files.read, "/sys/devices/system/node/has_cpu")
    if listed and re.fullmatch(r"[\d,-]+", listed):
        return sum(int(b) - int(a) + 1 if b else 1 for a, _, b in (part.partition("-") for part in listed.split(",")))
    nodes = maybe(files.listdir, "/sys/devices/system/node")
    return (sum(1 for n in nodes if re.fullmatch(r"node\d+", n)) or None) if nodes is not None else None


def read_host(files: Any) -> HostFacts:
    cpu_lines = maybe(files.read_lines, "/proc/cpuinfo", ["model name", "physical id"]) or []
    models = [line.partition(":")[2].strip() for line in cpu_lines if line.startswith("model name")]
    sockets = {line.partition(":")[2].strip() for line in cpu_lines if line.startswith("physical id")}
    memory = maybe(files.read_lines, "/proc/meminfo", ["MemTotal:"]) or []
    kib = re.findall(r"(\d+)\s*kB", memory[0]) if memory else []
    evidence = tuple(path for path in PEER_MEMORY_PATHS if maybe(files.read, path) is not None)
    return HostFacts(
        numa_nodes=_cpu_numa_nodes(files),
        cpu=(f"{len(sockets)}x {models[0]}" if len(sockets) > 1 else models[0]) if models else None,
        memory_bytes=int(kib[0]) * 1024 if kib else None,
        gpudirect_rdma=evidence)
