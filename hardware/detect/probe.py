"""Where the facts come from: this machine (NVML, sysfs, and ``nvidia-smi topo -m`` when NVML cannot
report the links), or a recorded snapshot folder read through the same interface. `read_node` merges
the sources into one `NodeFacts`; `record_snapshot` reads this machine and writes what it read.

A snapshot folder holds any of (each file the raw answer of a real machine, never edited):

- ``nvml.json``: NVML calls and their answers, as `Recorder` kept them (``plan topology --record``);
- ``sysfs.json``: sysfs/procfs reads and their answers, likewise;
- ``nvidia-smi-topo-m.txt``, ``nvidia-smi-q.txt``, ``ibstat.txt``: those commands' outputs;
- ``nvidia-smi-L.txt`` or ``nvidia-smi-nvlink-s.txt``: GPU names, where no ``-q`` output exists;
- ``SOURCES.md`` (required): where every file came from; its first line labels the snapshot.
"""

from __future__ import annotations

import json
import platform
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from parallelplan.hardware.detect.facts import GpuFacts, HostFacts, NicFacts, NodeFacts, nvlink_count
from parallelplan.hardware.detect.host import LiveFiles, gpu_placement, read_host, read_nics
from parallelplan.hardware.detect.nvml_source import LiveNvml, NvmlUnavailable, read_nvml
from parallelplan.hardware.detect.recording import Recorder, Replay, Unsupported, maybe
from parallelplan.hardware.detect.smi import (
    ParseError,
    TopoMatrix,
    parse_gpu_list,
    parse_ibstat,
    parse_smi_query,
    parse_topo_matrix,
)
from parallelplan.hardware.errors import HardwareError

NVML_FILE, FILES_FILE, SOURCES_FILE = "nvml.json", "sysfs.json", "SOURCES.md"
TOPO_FILE, QUERY_FILE, IBSTAT_FILE = "nvidia-smi-topo-m.txt", "nvidia-smi-q.txt", "ibstat.txt"
LIST_FILES = ("nvidia-smi-L.txt", "nvidia-smi-nvlink-s.txt")


class DetectionError(HardwareError):
    """The node could not be read or modelled; the message says why and what to do instead."""


@dataclass
class Sources:
    """The readers of one node: an NVML source, a files source (sysfs/procfs), command outputs (the
    topo matrix is fetched only when needed), and the snapshot's label (None when live)."""

    nvml: Any | None
    files: Any | None
    topo_text: Callable[[], str | None]
    query_text: str | None = None
    list_text: str | None = None
    ibstat_text: str | None = None
    label: str | None = None


def _run_topo() -> str | None:
    """``nvidia-smi topo -m`` on this machine, or None when it is missing or fails."""
    binary = shutil.which("nvidia-smi")
    if binary is None:
        return None
    try:
        done = subprocess.run([binary, "topo", "-m"], capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 and done.stdout.strip() else None


def live_sources() -> Sources:
    """This machine; `DetectionError` with the way forward when NVML cannot start (no driver, no GPU)."""
    try:
        nvml = LiveNvml()
    except NvmlUnavailable as err:
        raise DetectionError(f"no NVIDIA GPU detected on this machine: {err}. Name the hardware instead: "
                             "--cluster PRESET (see `plan presets`) or a cluster file") from None
    return Sources(nvml=nvml, files=LiveFiles(), topo_text=_run_topo)


def _read_text(folder: Path, name: str) -> str | None:
    path = folder / name
    try:
        return path.read_text(encoding="utf-8") if path.is_file() else None
    except (OSError, UnicodeDecodeError) as err:
        raise DetectionError(f"{path}: cannot read it ({err})") from None


def _read_calls(folder: Path, name: str) -> Replay | None:
    text = _read_text(folder, name)
    if text is None:
        return None
    try:
        calls = json.loads(text)
    except json.JSONDecodeError as err:
        raise DetectionError(f"{folder / name}: not valid JSON (line {err.lineno}: {err.msg})") from None
    if not isinstance(calls, dict) or not all(isinstance(v, dict) for v in calls.values()):
        raise DetectionError(f"{folder / name}: expected {{call: {{value|unsupported}}}} as `plan topology --record` writes")
    return Replay(calls)


def load_snapshot(folder: str | Path) -> Sources:
    """A recorded snapshot folder (see the module docstring) as `Sources`."""
    path = Path(folder).expanduser()
    if not path.is_dir():
        raise DetectionError(f"snapshot {folder}: no such folder (a snapshot is a folder written by "
                             "`plan topology --record DIR`, or one holding nvidia-smi outputs and SOURCES.md)")
    sources_md = _read_text(path, SOURCES_FILE)
    if sources_md is None or not sources_md.strip():
        raise DetectionError(f"snapshot {folder}: {SOURCES_FILE} is missing; it says where the readings came from")
    label = next(line.strip().lstrip("#").strip() for line in sources_md.splitlines() if line.strip())
    topo = _read_text(path, TOPO_FILE)
    return Sources(nvml=_read_calls(path, NVML_FILE), files=_read_calls(path, FILES_FILE), topo_text=lambda: topo,
                   query_text=_read_text(path, QUERY_FILE),
                   list_text=next((t for t in (_read_text(path, n) for n in LIST_FILES) if t is not None), None),
                   ibstat_text=_read_text(path, IBSTAT_FILE),
                   label=f"recorded snapshot {path.name}: {label}")


def _parsed(text: str | None, parse: Callable[[str], Any], what: str) -> Any:
    if text is None:
        return None
    try:
        return parse(text)
    except ParseError as err:
        raise DetectionError(f"{what}: {err}") from None


def _with_topo(gpus: tuple[GpuFacts, ...], topo: TopoMatrix) -> tuple[GpuFacts, ...]:
    """Fill each GPU's NUMA node and CPU affinity from the matrix where the other sources had none."""
    return tuple(g.model_copy(update={
        "numa_node": g.numa_node if g.numa_node is not None else topo.numa.get(f"GPU{g.index}"),
        "cpu_affinity": g.cpu_affinity or topo.cpu_affinity.get(f"GPU{g.index}")}) for g in gpus)


def _device(nic: NicFacts) -> str:
    """The RDMA device of a port (``mlx5_0:2`` → ``mlx5_0``), as the matrix names it."""
    return nic.name.partition(":")[0]


def _topo_nics(nics: list[NicFacts], topo: TopoMatrix) -> list[NicFacts]:
    """Attach the matrix's NIC-to-GPU codes by device name; NICs only the matrix names are added."""
    by_name = {topo.nic_names.get(column, column): column for column in topo.nics}
    merged = [nic.model_copy(update={"gpu_connections": topo.nic_connections(by_name[_device(nic)])})
              if nic.gpu_connections is None and _device(nic) in by_name else nic for nic in nics]
    known = {_device(nic) for nic in nics}
    merged += [NicFacts(name=name, gpu_connections=topo.nic_connections(column))
               for name, column in by_name.items() if name not in known]
    return merged


def _gpus_from_text(sources: Sources, used: list[str], warnings: list[str]) -> tuple[tuple[GpuFacts, ...], TopoMatrix | None]:
    """GPUs from ``nvidia-smi -q`` (or, lacking it, the names of ``-L`` / ``nvlink -s``), counted by the
    topo matrix when there is one. A snapshot may pair a matrix with the ``-q`` of another machine of the
    same model (public posts rarely carry both): the model's facts then stand for every GPU, said in a
    warning."""
    topo = _parsed(sources.topo_text(), parse_topo_matrix, "nvidia-smi topo -m")
    gpus = _parsed(sources.query_text, parse_smi_query, "nvidia-smi -q")
    if gpus is not None:
        used.append("nvidia-smi -q")
    else:
        gpus = _parsed(sources.list_text, parse_gpu_list, "nvidia-smi -L")
        if gpus is None:
            raise DetectionError("no GPU reading: the snapshot has neither nvml.json, nvidia-smi-q.txt nor a GPU list")
        used.append("nvidia-smi GPU list")
    if topo is not None:
        used.append("nvidia-smi topo -m")
        models = {g.name for g in gpus}
        if len(topo.gpus) != len(gpus) and len(models) == 1:
            warnings.append(f"the GPU facts cover {len(gpus)} x {gpus[0].name}, the matrix {len(topo.gpus)} GPUs (outputs "
                            "of two machines, or a cut output): the model's facts stand for every GPU")
            gpus = [gpus[0].model_copy(update={"index": k, "bus_id": None}) for k in range(len(topo.gpus))]
    return tuple(gpus), topo


def read_node(sources: Sources) -> NodeFacts:
    """One node's facts: NVML first, ``nvidia-smi -q`` when there is no NVML reading, the topo matrix
    where NVML could not report the links, sysfs for NICs and the host (``ibstat`` in its absence).
    A snapshot whose recorded answers do not have the shape the live sources give is a
    `DetectionError` naming the snapshot."""
    if sources.label is None:
        return _read_node(sources)
    try:
        return _read_node(sources)
    except (TypeError, ValueError, IndexError, KeyError, AttributeError) as err:
        if isinstance(err, DetectionError):
            raise
        raise DetectionError(f"{sources.label}: an answer has the wrong shape ({type(err).__name__}: {err}); "
                             "record the node again with `plan topology --record DIR`") from None


def _read_node(sources: Sources) -> NodeFacts:
    used, warnings = [], []
    connections = p2p = topo = None
    if sources.nvml is not None:
        try:
            gpus, connections, p2p = read_nvml(sources.nvml)
        except Unsupported as err:
            raise DetectionError(f"NVML could not list the GPUs ({err}); name the hardware with --cluster PRESET "
                                 "(see `plan presets`) or a cluster file") from None
        used.append("NVML")
        if not gpus:
            raise DetectionError("NVML reports no GPU on this machine; name the hardware with --cluster PRESET "
                                 "(see `plan presets`)")
    else:
        gpus, topo = _gpus_from_text(sources, used, warnings)
    if len(gpus) > 1 and (connections is None or any(g.nvlinks is None for g in gpus)):
        try:
            topo = topo or _parsed(sources.topo_text(), parse_topo_matrix, "nvidia-smi topo -m")
        except DetectionError as err:  # NVML's reading stands; the fallback only fills its gaps
            warnings.append(f"{err}: the fallback matrix is not used")
        if topo is not None and len(topo.gpus) != len(gpus):
            warnings.append(f"nvidia-smi topo -m lists {len(topo.gpus)} GPUs, NVML {len(gpus)}: matrix not used")
            topo = None
        if topo is not None and sources.nvml is not None:
            used.append("nvidia-smi topo -m")
            if any(nvlink_count(code) for row in topo.gpu_matrix() for code in row):
                warnings.append("NVML did not report the NVLinks that `nvidia-smi topo -m` shows: read from the matrix")
    if topo is not None:
        connections = topo.gpu_matrix()
        gpus = _with_topo(gpus, topo)
    host, nics = HostFacts(), []
    if sources.files is not None:
        paths, numa = gpu_placement(sources.files, [g.bus_id for g in gpus])
        gpus = tuple(g if g.numa_node is not None or n is None else g.model_copy(update={"numa_node": n})
                     for g, n in zip(gpus, numa, strict=True))
        nics = list(read_nics(sources.files, paths, [g.numa_node for g in gpus]))
        host = read_host(sources.files)
        used.append("sysfs")
    elif sources.ibstat_text is not None:
        nics = _parsed(sources.ibstat_text, parse_ibstat, "ibstat")
        used.append("ibstat")
    if topo is not None:
        nics = _topo_nics(nics, topo)
    return NodeFacts(gpus=gpus, gpu_connections=connections, p2p=p2p, nics=tuple(nics) if nics or sources.files
                     or sources.ibstat_text else None, host=host, sources=tuple(used), recorded=sources.label,
                     warnings=tuple(warnings))


def record_snapshot(folder: str | Path) -> NodeFacts:
    """Read this machine through recorders and write the snapshot folder (``plan topology --record``);
    the folder must be new or empty."""
    path = Path(folder).expanduser()
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise DetectionError(f"--record {folder}: give a new or empty folder")
    live = live_sources()
    nvml, files = Recorder(live.nvml), Recorder(live.files)
    topo_text = _run_topo()
    facts = read_node(Sources(nvml=nvml, files=files, topo_text=lambda: topo_text))
    path.mkdir(parents=True, exist_ok=True)
    (path / NVML_FILE).write_text(json.dumps(nvml.calls, indent=1, sort_keys=True) + "\n")
    (path / FILES_FILE).write_text(json.dumps(files.calls, indent=1, sort_keys=True) + "\n")
    if topo_text is not None:
        (path / TOPO_FILE).write_text(topo_text)
    driver = maybe(live.nvml.driver_version) or "version not reported"
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    (path / SOURCES_FILE).write_text(
        f"Recorded by `plan topology --record` on {platform.node() or 'an unnamed host'} at {stamp}\n\n"
        f"- {NVML_FILE}: NVML answers (driver {driver}), through nvidia-ml-py\n"
        f"- {FILES_FILE}: sysfs and procfs reads\n"
        + (f"- {TOPO_FILE}: `nvidia-smi topo -m`\n" if topo_text is not None else ""))
    return facts
