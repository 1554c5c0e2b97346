"""The live NVML source (through ``pynvml``, the `nvidia-ml-py` bindings) and `read_nvml`, which turns
its answers — live or replayed — into `GpuFacts`, the GPU connection matrix and the P2P matrix.

Each method answers one question with a plain value and raises `Unsupported` where NVML does
(NOT_SUPPORTED on a pass-through VM's NVLinks, FUNCTION_NOT_FOUND on an old driver, ...). NVML
reference: https://docs.nvidia.com/deploy/nvml-api/ (nvmlDeviceGetNvLinkState, ...RemotePciInfo_v2,
...RemoteDeviceType, ...GetP2PStatus, ...GetTopologyCommonAncestor, ...GetCpuAffinity).
"""

from __future__ import annotations

import ctypes
import math
import os
from typing import Any

from parallelplan.hardware.detect.facts import GpuFacts, LinkFacts, normal_bus_id
from parallelplan.hardware.detect.recording import Unsupported, maybe
from parallelplan.hardware.errors import HardwareError


class NvmlUnavailable(HardwareError):
    """NVML cannot start: no NVIDIA driver, no library, no GPU."""


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class LiveNvml:
    """NVML on this machine. Construction initialises NVML or raises `NvmlUnavailable` saying why."""

    def __init__(self) -> None:
        try:
            import pynvml
        except ImportError as err:  # the dependency is declared; a broken install still gets a message
            raise NvmlUnavailable(f"the NVML bindings (nvidia-ml-py) cannot be imported: {err}") from None
        self._nvml = pynvml
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as err:
            raise NvmlUnavailable(f"NVML could not start ({_text(err)})") from None
        self._handles: dict[int, Any] = {}

    def _call(self, function: str, *args: Any) -> Any:
        """One NVML call; its failures — an NVML error, a function this nvidia-ml-py lacks, an argument
        its ctypes layer refuses — are `Unsupported`, so that one failing question never ends a reading."""
        try:
            return getattr(self._nvml, function)(*args)
        except self._nvml.NVMLError as err:
            raise Unsupported(f"{function}: {_text(err)}") from None
        except AttributeError:
            raise Unsupported(f"{function} is not in this nvidia-ml-py") from None
        except (ctypes.ArgumentError, TypeError) as err:
            raise Unsupported(f"{function}: {err}") from None

    def _handle(self, index: int) -> Any:
        if index not in self._handles:
            self._handles[index] = self._call("nvmlDeviceGetHandleByIndex", index)
        return self._handles[index]

    def driver_version(self) -> str:
        return _text(self._call("nvmlSystemGetDriverVersion"))

    def device_count(self) -> int:
        return int(self._call("nvmlDeviceGetCount"))

    def name(self, index: int) -> str:
        return _text(self._call("nvmlDeviceGetName", self._handle(index)))

    def memory_total(self, index: int) -> int:
        return int(self._call("nvmlDeviceGetMemoryInfo", self._handle(index)).total)

    def compute_capability(self, index: int) -> list[int]:
        return list(self._call("nvmlDeviceGetCudaComputeCapability", self._handle(index)))

    def bus_id(self, index: int) -> str:
        return _text(self._call("nvmlDeviceGetPciInfo", self._handle(index)).busId)

    def numa_node(self, index: int) -> int:
        """The GPU's OWN memory NUMA node, where GPU memory is a NUMA node (Grace: GH200, GB200;
        nvidia-smi's "GPU NUMA ID"); NOT_SUPPORTED elsewhere. Not the CPU side (sysfs gives that)."""
        return int(self._call("nvmlDeviceGetNumaNodeId", self._handle(index)))

    def cpu_affinity(self, index: int) -> list[int]:
        """The ideal CPU set as 64-bit mask words, word 0 holding CPUs 0-63."""
        words = max(1, math.ceil((os.cpu_count() or 1) / 64))
        return [int(w) for w in self._call("nvmlDeviceGetCpuAffinity", self._handle(index), words)]

    def pcie_max(self, index: int) -> list[int]:
        """[generation, lanes] the link can reach (the card's and the slot's maximum)."""
        handle = self._handle(index)
        return [int(self._call("nvmlDeviceGetMaxPcieLinkGeneration", handle)),
                int(self._call("nvmlDeviceGetMaxPcieLinkWidth", handle))]

    def c2c_enabled(self, index: int) -> bool:
        return bool(self._call("nvmlDeviceGetC2cModeInfoV", self._handle(index)).isC2cEnabled)

    def mig_enabled(self, index: int) -> bool:
        return self._call("nvmlDeviceGetMigMode", self._handle(index))[0] == self._nvml.NVML_DEVICE_MIG_ENABLE

    def virtualization(self, index: int) -> str:
        mode = self._call("nvmlDeviceGetVirtualizationMode", self._handle(index))
        names = {getattr(self._nvml, n): n.removeprefix("NVML_GPU_VIRTUALIZATION_MODE_").lower()
                 for n in dir(self._nvml) if n.startswith("NVML_GPU_VIRTUALIZATION_MODE_")}
        return names.get(mode, str(mode))

    def max_links(self) -> int:
        return int(self._nvml.NVML_NVLINK_MAX_LINKS)

    def nvlink(self, index: int, link: int) -> list[Any]:
        """[active, NVML version, remote PCI bus id, remote device type name] of one link; the version,
        remote id and type are None where NVML cannot tell them for an active link."""
        handle = self._handle(index)
        active = self._call("nvmlDeviceGetNvLinkState", handle, link) == self._nvml.NVML_FEATURE_ENABLED
        if not active:
            return [False, None, None, None]
        answers: list[Any] = [True]
        for function in ("nvmlDeviceGetNvLinkVersion", "nvmlDeviceGetNvLinkRemotePciInfo",
                         "nvmlDeviceGetNvLinkRemoteDeviceType"):
            try:
                answers.append(self._call(function, handle, link))
            except Unsupported:
                answers.append(None)
        version, remote, kind = answers[1:]
        types = {self._nvml.NVML_NVLINK_DEVICE_TYPE_GPU: "gpu", self._nvml.NVML_NVLINK_DEVICE_TYPE_SWITCH: "switch",
                 self._nvml.NVML_NVLINK_DEVICE_TYPE_IBMNPU: "ibmnpu"}
        return [True, None if version is None else int(version), None if remote is None else _text(remote.busId),
                None if kind is None else types.get(kind, "unknown")]

    def p2p_read(self, index: int, other: int) -> str:
        """Peer-to-peer read status between two GPUs in ``nvidia-smi topo -p2p r``'s codes."""
        # NVML_P2P_CAPS_INDEX_READ is 0; nvidia-ml-py 13.x defines it as the tuple (0,) (a stray comma),
        # which ctypes refuses, so the value of nvmlGpuP2PCapsIndex_t is written here.
        status = self._call("nvmlDeviceGetP2PStatus", self._handle(index), self._handle(other), 0)
        return P2P_CODES.get(int(status), "U")

    def common_ancestor(self, index: int, other: int) -> str:
        """The PCIe connection code of two GPUs (``nvidia-smi topo -m``'s PIX ... SYS)."""
        level = int(self._call("nvmlDeviceGetTopologyCommonAncestor", self._handle(index), self._handle(other)))
        return TOPOLOGY_CODES.get(level, "SYS")


P2P_CODES = {0: "OK", 1: "CNS", 2: "GNS", 3: "TNS", 4: "NS", 5: "NS", 6: "U"}
"""nvmlGpuP2PStatus_t → ``nvidia-smi topo -p2p`` legend (OK, chipset / GPU / topology not supported,
not supported, unknown); DISABLED_BY_REGKEY (4) shows as NS."""
TOPOLOGY_CODES = {0: "PIX", 10: "PIX", 20: "PXB", 30: "PHB", 40: "NODE", 50: "SYS"}
"""nvmlGpuTopologyLevel_t → ``nvidia-smi topo -m`` code (INTERNAL, a multi-GPU board, counts as PIX)."""


def _cpu_list(words: list[int]) -> str:
    """Mask words → ``0-55,112-167`` (the form ``nvidia-smi topo -m`` prints)."""
    cpus = [w * 64 + b for w, word in enumerate(words) for b in range(64) if word >> b & 1]
    ranges: list[list[int]] = []
    for cpu in cpus:
        if ranges and ranges[-1][1] == cpu - 1:
            ranges[-1][1] = cpu
        else:
            ranges.append([cpu, cpu])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in ranges)


def _links(nvml: Any, index: int) -> tuple[LinkFacts, ...] | None:
    """The GPU's links that exist (NVML answers their state); None when no link answered at all."""
    links = []
    for link in range(nvml.max_links()):
        answer = maybe(nvml.nvlink, index, link)
        if answer is None:
            continue
        active, version, remote, kind = answer
        links.append(LinkFacts(link=link, active=active, version=version,
                               remote_bus_id=None if remote is None else normal_bus_id(remote), remote_type=kind))
    return tuple(links) or None


def read_gpu(nvml: Any, index: int) -> GpuFacts:
    capability = maybe(nvml.compute_capability, index)
    pcie = maybe(nvml.pcie_max, index)
    affinity = maybe(nvml.cpu_affinity, index)
    bus = maybe(nvml.bus_id, index)
    return GpuFacts(
        index=index, name=nvml.name(index), memory_bytes=maybe(nvml.memory_total, index),
        compute_capability=None if capability is None else f"{capability[0]}.{capability[1]}",
        bus_id=None if bus is None else normal_bus_id(bus), memory_numa_node=maybe(nvml.numa_node, index),
        cpu_affinity=_cpu_list(affinity) if affinity else None,
        pcie_generation=None if pcie is None else pcie[0], pcie_width=None if pcie is None else pcie[1],
        c2c_enabled=maybe(nvml.c2c_enabled, index), mig_enabled=maybe(nvml.mig_enabled, index),
        virtualization=maybe(nvml.virtualization, index), nvlinks=_links(nvml, index))


def _connection(nvml: Any, gpus: tuple[GpuFacts, ...], i: int, j: int) -> str | None:
    """``NV<k>`` for k links between the two GPUs — direct links to j's bus id, or through NVSwitches
    (k = the fewer switch links of the two, as nvidia-smi reports ``NV18`` on a DGX H100) — else the
    PCIe code of their common ancestor; None when NVML cannot tell (an active link whose far end is of
    unknown type, or neither NVLink nor ancestor answered), so that ``nvidia-smi topo -m`` is read."""
    a, b = gpus[i], gpus[j]
    if a.nvlinks is not None and b.nvlinks is not None:
        if any(link.active and link.remote_type in (None, "unknown") for g in (a, b) for link in g.nvlinks):
            return None
        direct = sum(1 for link in a.nvlinks if link.active and link.remote_type == "gpu"
                     and link.remote_bus_id == b.bus_id)
        if direct:
            return f"NV{direct}"
        switched = [sum(1 for link in g.nvlinks if link.active and link.remote_type == "switch") for g in (a, b)]
        if min(switched):
            return f"NV{min(switched)}"
    return maybe(nvml.common_ancestor, i, j)


def _matrix(gpus: tuple[GpuFacts, ...], pair: Any) -> tuple[tuple[str, ...], ...] | None:
    rows = [[("X" if i == j else pair(i, j)) for j in range(len(gpus))] for i in range(len(gpus))]
    return None if any(code is None for row in rows for code in row) else tuple(tuple(row) for row in rows)


def read_nvml(nvml: Any) -> tuple[tuple[GpuFacts, ...], tuple[tuple[str, ...], ...] | None,
                                  tuple[tuple[str, ...], ...] | None]:
    """(GPUs, GPU connection matrix or None, P2P read matrix or None) from an NVML source."""
    gpus = tuple(read_gpu(nvml, index) for index in range(nvml.device_count()))
    connections = _matrix(gpus, lambda i, j: _connection(nvml, gpus, i, j))
    p2p = _matrix(gpus, lambda i, j: maybe(nvml.p2p_read, i, j))
    return gpus, connections, p2p
