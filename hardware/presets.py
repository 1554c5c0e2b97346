"""GPU and cluster presets: ``hardware/data/gpus.json`` and ``hardware/data/clusters.json``.

Every entry carries its sources (vendor datasheets, MLPerf system descriptions, vendor user guides, NVML
readings posted in public issue threads). A GPU entry is a `GPUSpec` plus its ``aliases`` (short names
and the names NVML reports, e.g. "NVIDIA H100 80GB HBM3"); a cluster entry is a `ClusterSpec` plus its
``aliases`` and ``default_nodes`` (1 server, or one 18-tray rack for NVL72).
"""

from __future__ import annotations

import difflib
import json
from functools import lru_cache
from importlib import resources
from typing import Any

from pydantic import BaseModel, ConfigDict, PositiveInt

from parallelplan.common.files import alias_index
from parallelplan.hardware.errors import HardwareError
from parallelplan.hardware.spec import GPUSpec


class ClusterPreset(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    aliases: tuple[str, ...] = ()
    default_nodes: PositiveInt
    cluster: dict[str, Any]


def _read(filename: str) -> list[dict[str, Any]]:
    return json.loads(resources.files("parallelplan.hardware").joinpath("data", filename).read_text())


@lru_cache(maxsize=1)
def _gpus() -> tuple[dict[str, GPUSpec], dict[str, tuple[str, ...]], dict[str, str]]:
    specs, aliases = {}, {}
    for entry in _read("gpus.json"):
        entry = dict(entry)
        aliases[entry["name"]] = tuple(entry.pop("aliases", ()))
        specs[entry["name"]] = GPUSpec.model_validate(entry)
    return specs, aliases, alias_index(aliases, "GPU", HardwareError)


@lru_cache(maxsize=1)
def _clusters() -> tuple[dict[str, ClusterPreset], dict[str, str]]:
    presets = {p["name"]: ClusterPreset.model_validate(p) for p in _read("clusters.json")}
    return presets, alias_index({n: p.aliases for n, p in presets.items()}, "cluster", HardwareError)


def _not_found(kind: str, ref: str, index: dict[str, str], listing: str) -> HardwareError:
    close = difflib.get_close_matches(ref.lower(), list(index), n=5, cutoff=0.5)
    hint = f"did you mean {', '.join(sorted({index[c] for c in close}))}?" if close else "`plan presets` lists them"
    return HardwareError(f"unknown {kind} {ref!r}; {hint} ({listing})")


def list_gpus() -> list[str]:
    return sorted(_gpus()[0])


def list_clusters() -> list[str]:
    return sorted(_clusters()[0])


def gpu_by_name(name: str) -> GPUSpec:
    """The GPU preset called ``name`` or one of its aliases (case-insensitive)."""
    if not isinstance(name, str):
        raise HardwareError(f"a GPU name must be a string such as 'h100-sxm-80gb', got {name!r}")
    specs, _, index = _gpus()
    key = index.get(name.strip().lower())
    if key is None:
        raise _not_found("GPU", name, index, "GPU presets: " + ", ".join(sorted(specs)))
    return specs[key]


def cluster_preset(name: str) -> ClusterPreset | None:
    """The cluster preset called ``name`` or one of its aliases (case-insensitive), or None."""
    presets, index = _clusters()
    key = index.get(name.strip().lower())
    return None if key is None else presets[key]


def preset_cluster_fields(name: str) -> dict[str, Any]:
    """ClusterSpec fields of a preset at its default size (``num_nodes`` included)."""
    preset = cluster_preset(name)
    if preset is None:
        raise unknown_cluster(name)
    return {**preset.cluster, "num_nodes": preset.default_nodes}


def unknown_cluster(name: str) -> HardwareError:
    presets, index = _clusters()
    return _not_found("cluster", name, index, "cluster presets: " + ", ".join(sorted(presets)))


def cluster_aliases(name: str) -> tuple[str, ...]:
    return _clusters()[0][name].aliases


def gpu_aliases(name: str) -> tuple[str, ...]:
    return _gpus()[1][name]
