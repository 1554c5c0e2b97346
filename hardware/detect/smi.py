"""Parsers for the text tools people already run: ``nvidia-smi topo -m`` (the connection matrix with
CPU/NUMA affinity and the NIC columns), ``nvidia-smi -q`` (per-GPU facts) and ``ibstat`` (RDMA ports).
They read both the live fallback output and outputs recorded from real machines; layouts vary across
driver versions (NIC columns named ``mlx5_0`` before the ``NIC0`` + legend form, the ``GPU NUMA ID``
column from R530 on, tabs turned into spaces when pasted), so the parsers key on content, not columns.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from parallelplan.hardware.detect.facts import GpuFacts, NicFacts, normal_bus_id

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_DEVICE = re.compile(r"^(GPU\d+|NIC\d+|[A-Za-z][\w.-]*)$")
_CODE = re.compile(r"^(X|NV\d+|PIX|PXB|PHB|NODE|SYS|SOC)$")
_TRAILING = ("CPU Affinity", "NUMA Affinity", "GPU NUMA ID")


LINK_LAYERS = {"InfiniBand": "infiniband", "Ethernet": "roce"}
"""An RDMA port's link layer → its kind (RoCE is RDMA over an Ethernet link layer); another value (AWS
EFA reads "Unknown") leaves the kind unknown."""


class ParseError(ValueError):
    """Text that is not the output of the tool it was given as."""


@dataclass
class TopoMatrix:
    """``nvidia-smi topo -m``: device names in column order (GPUs first), the code between every two
    devices, and per GPU its CPU affinity and NUMA node (None where printed as N/A)."""

    gpus: list[str]
    nics: list[str]
    codes: dict[tuple[str, str], str]
    cpu_affinity: dict[str, str | None] = field(default_factory=dict)
    numa: dict[str, int | None] = field(default_factory=dict)
    nic_names: dict[str, str] = field(default_factory=dict)

    def gpu_matrix(self) -> tuple[tuple[str, ...], ...]:
        return tuple(tuple(self.codes[(a, b)] for b in self.gpus) for a in self.gpus)

    def nic_connections(self, nic: str) -> tuple[str, ...]:
        return tuple(self.codes[(nic, g)] if (nic, g) in self.codes else self.codes[(g, nic)] for g in self.gpus)


def _na(token: str) -> str | None:
    return None if token.upper() in ("N/A", "") else token


def _is_header(tokens: list[str]) -> bool:
    """The column header: it names GPU0, and what follows its first name is not a connection code
    (a row reads ``GPU0  X  NV18 ...``; leading blanks may be lost when the output was pasted)."""
    return "GPU0" in tokens and len(tokens) > 1 and not _CODE.match(tokens[1])


def parse_topo_matrix(text: str) -> TopoMatrix:
    """The matrix of ``nvidia-smi topo -m``; ``SOC`` (drivers before R384) reads as ``SYS``."""
    lines = [_ANSI.sub("", line).rstrip() for line in text.splitlines()]
    header_at = next((k for k, line in enumerate(lines) if _is_header(line.split())), None)
    if header_at is None:
        raise ParseError("no header row with GPU0 (expected the output of `nvidia-smi topo -m`)")
    header = lines[header_at]
    trailing = sorted((header.find(name), name) for name in _TRAILING if name in header)
    devices = header[:trailing[0][0]].split() if trailing else header.split()
    unnamed = [d for d in devices if not _DEVICE.match(d)]
    if unnamed:
        raise ParseError(f"header columns {', '.join(unnamed)} are not device names (expected GPU0, NIC0, mlx5_0, ...)")
    gpus = [d for d in devices if d.startswith("GPU")]
    matrix = TopoMatrix(gpus=gpus, nics=[d for d in devices if not d.startswith("GPU")], codes={})
    for line in lines[header_at + 1:]:
        tokens = line.split()
        if not tokens or tokens[0] not in devices:
            if tokens and tokens[0].rstrip(":") == "Legend":
                break
            continue
        row, values = tokens[0], tokens[1:]
        codes, rest = values[:len(devices)], values[len(devices):]
        if len(codes) < len(devices) or not all(_CODE.match(c) for c in codes) or (rest and _CODE.match(rest[0])):
            raise ParseError(f"row {row}: expected {len(devices)} connection codes, got {' '.join(values)!r}")
        for column, code in zip(devices, codes, strict=True):
            matrix.codes[(row, column)] = "SYS" if code == "SOC" else code
        if row in gpus:
            named = dict(zip((name for _, name in trailing), rest, strict=False))
            matrix.cpu_affinity[row] = _na(named.get("CPU Affinity", ""))
            numa = _na(named.get("NUMA Affinity", ""))
            matrix.numa[row] = int(numa) if numa is not None and numa.isdigit() else None
    missing = [g for g in gpus if (g, g) not in matrix.codes]
    if missing:
        raise ParseError(f"no row for {', '.join(missing)} in the `nvidia-smi topo -m` output")
    for line in lines:
        legend = re.match(r"^\s*(NIC\d+):\s*(\S+)\s*$", line)
        if legend:
            matrix.nic_names[legend.group(1)] = legend.group(2)
    return matrix


def _sections(block: list[str]) -> dict[str, str]:
    """``nvidia-smi -q`` lines of one GPU → ``{"FB Memory Usage/Total": "81559 MiB", ...}``: the key
    path follows the indentation of the section titles."""
    values: dict[str, str] = {}
    stack: list[tuple[int, str]] = []
    for line in block:
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip())
        key, sep, value = line.strip().partition(" : ") if " : " in line else (line.strip().rstrip(":").strip(), "", "")
        while stack and stack[-1][0] >= indent:
            stack.pop()
        path = "/".join([s for _, s in stack] + [key.strip()])
        if sep:
            values[path] = value.strip()
        else:
            stack.append((indent, key.strip()))
    return values


def _int(text: str | None) -> int | None:
    match = re.match(r"^\s*(\d+)", text or "")
    return int(match.group(1)) if match else None


def parse_smi_query(text: str) -> list[GpuFacts]:
    """Per-GPU facts from ``nvidia-smi -q``: name, memory total, bus id, maximum PCIe generation and
    width, MIG, virtualization and C2C mode (fields a driver does not print stay None)."""
    blocks: list[tuple[str, list[str]]] = []
    for line in text.splitlines():
        head = re.match(r"^GPU ([0-9A-Fa-f]{4,8}:[0-9A-Fa-f]{2}:[0-9A-Fa-f]{2}\.[0-9A-Fa-f])\s*$", line.rstrip())
        if head:
            blocks.append((head.group(1), []))
        elif blocks:
            blocks[-1][1].append(line.rstrip())
    if not blocks:
        raise ParseError("no 'GPU 00000000:xx:00.0' section (expected the output of `nvidia-smi -q`)")
    gpus = []
    for index, (bus, lines) in enumerate(blocks):
        v = _sections(lines)
        memory = _int(v.get("FB Memory Usage/Total"))
        c2c = v.get("GPU C2C Mode")
        mig = v.get("MIG Mode/Current")
        virt = v.get("GPU Virtualization Mode/Virtualization Mode")
        gpus.append(GpuFacts(
            index=index, name=v.get("Product Name", "unknown"),
            memory_bytes=None if memory is None else memory * 2**20, bus_id=normal_bus_id(v.get("PCI/Bus Id", bus)),
            pcie_generation=_int(v.get("PCI/GPU Link Info/PCIe Generation/Max")),
            pcie_width=_int(v.get("PCI/GPU Link Info/Link Width/Max")),
            c2c_enabled=None if c2c in (None, "N/A") else c2c == "Enabled",
            mig_enabled=None if mig in (None, "N/A") else mig == "Enabled",
            virtualization=None if virt in (None, "N/A") else virt.lower().replace("-", "").replace(" ", "_")))
    return gpus


def parse_gpu_list(text: str) -> list[GpuFacts]:
    """GPU names from the ``GPU 0: NVIDIA GB200 (UUID: GPU-...)`` lines that ``nvidia-smi -L`` and
    ``nvidia-smi nvlink -s`` print."""
    gpus = [GpuFacts(index=int(m.group(1)), name=m.group(2).strip())
            for m in re.finditer(r"^GPU (\d+): (.+?) \(UUID: [^)]*\)", text, flags=re.MULTILINE)]
    if not gpus:
        raise ParseError("no 'GPU 0: <name> (UUID: ...)' line (expected `nvidia-smi -L` or `nvidia-smi nvlink -s`)")
    return gpus


def parse_ibstat(text: str) -> list[NicFacts]:
    """One `NicFacts` per port of ``ibstat``: ``Rate`` is in Gb/s, ``Link layer`` InfiniBand or
    Ethernet (RoCE)."""
    nics: list[NicFacts] = []
    device, port, fields = None, None, {}

    def flush() -> None:
        if device is not None and port is not None and fields:
            name = device if port == "1" else f"{device}:{port}"
            rate = fields.get("Rate")
            nics.append(NicFacts(
                name=name, kind=LINK_LAYERS.get(fields.get("Link layer", "")),
                rate=float(rate) * 1e9 / 8 if rate and re.match(r"^[\d.]+$", rate) else None,
                active=fields.get("State") == "Active"))

    for line in text.splitlines():
        ca = re.match(r"^CA '([^']+)'", line.strip())
        port_head = re.match(r"^Port (\d+):$", line.strip())
        if ca:
            flush()
            device, port, fields = ca.group(1), None, {}
        elif port_head:
            flush()
            port, fields = port_head.group(1), {}
        elif port is not None and ":" in line:
            key, _, value = line.strip().partition(":")
            fields[key.strip()] = value.strip()
    flush()
    if device is None:
        raise ParseError("no \"CA '...'\" section (expected the output of `ibstat`)")
    return nics
