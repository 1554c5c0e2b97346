"""`load_cluster(ref, nodes=..., gpus=...)`: a preset name or alias, a JSON/YAML cluster file, a dict,
or a ClusterSpec → a validated `ClusterSpec` of the requested size.

A cluster file holds `ClusterSpec` fields (quantities may carry units, the node's ``gpu`` may name a GPU
preset), or ``base: <preset>`` plus the fields to change, merged key by key into the preset:

    base: dgx-h100
    num_nodes: 4
    node: {gpu: h200-sxm-141gb}
"""

from __future__ import annotations

import os
from typing import Any

from pydantic import ValidationError

from parallelplan.common.files import existing_path, looks_like_path, read_mapping
from parallelplan.common.validation import describe_validation_error
from parallelplan.hardware.errors import HardwareError
from parallelplan.hardware.pools import PooledCluster, is_pooled, pooled_cluster
from parallelplan.hardware.presets import (
    cluster_preset,
    gpu_by_name,
    preset_cluster_fields,
    unknown_cluster,
)
from parallelplan.hardware.spec import ClusterSpec


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _fields_from_dict(data: dict[str, Any]) -> dict[str, Any]:
    if is_pooled(data):
        return dict(data)
    data = dict(data)
    base = data.pop("base", None)
    if base is None:
        return data
    if not isinstance(base, str):
        raise HardwareError(f"field 'base' must name a cluster preset, got {base!r}")
    fields = preset_cluster_fields(base)
    base_gpu = fields["node"]["gpu"]
    new_gpu = data.get("node", {}).get("gpu") if isinstance(data.get("node"), dict) else None
    if isinstance(base_gpu, str) and isinstance(new_gpu, dict):
        # a partial GPU override ("gpu: {memory_bytes: 96 GB}") starts from the preset's GPU
        fields = {**fields, "node": {**fields["node"], "gpu": gpu_by_name(base_gpu).model_dump()}}
    return _merge(fields, data)


def _positive(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise HardwareError(f"{name} must be a positive integer, got {value!r}")
    return value


def _partial_node(fields: dict[str, Any], used: int, per_node: int, what: str) -> dict[str, Any]:
    """The cluster when a job uses ``used`` of each node's ``per_node`` GPUs (e.g. 4 GPUs of a DGX): each
    used GPU keeps its own NIC rail and NUMA placement (the first ``used`` GPUs, as CUDA_VISIBLE_DEVICES=0..k-1
    selects), and an NVLink domain spanning several nodes (NVL72) keeps its node count."""
    node = dict(fields["node"])
    domain = fields.get("nvlink_domain_size")
    if isinstance(domain, int) and domain >= per_node:
        if domain % per_node:
            raise HardwareError(f"{what}: cannot use {used} of {per_node} GPUs per node with an NVLink domain of {domain}")
        domain = domain // per_node * used
    elif isinstance(domain, int) and used % domain:
        raise HardwareError(f"{what}: {used} GPUs per node would split its NVLink groups of {domain}; use a multiple of {domain}")
    nics = node.get("nics_per_node")
    if isinstance(nics, int) and nics:
        node["nics_per_node"] = max(nics * used // per_node, 1)
    if isinstance(node.get("gpu_numa_nodes"), (list, tuple)):
        node["gpu_numa_nodes"] = list(node["gpu_numa_nodes"])[:used]
    node["gpus_per_node"] = used
    node["name"] = f"{node.get('name', 'node')} ({used} of {per_node} GPUs)"
    return {**fields, "node": node, "nvlink_domain_size": domain}


def _resize(fields: dict[str, Any], nodes: int | None, gpus: int | None, what: str) -> dict[str, Any]:
    """Size the cluster: ``nodes`` whole nodes; ``gpus`` in total (whole nodes, or one partly used node when
    fewer than a node's GPUs); both: ``gpus`` spread evenly over ``nodes`` nodes."""
    if nodes is None and gpus is None:
        return fields
    if nodes is not None:
        _positive(nodes, "nodes")
    if gpus is None:
        return {**fields, "num_nodes": nodes}
    _positive(gpus, "gpus")
    node = fields.get("node")
    per_node = node.get("gpus_per_node") if isinstance(node, dict) else None
    if isinstance(per_node, bool) or not isinstance(per_node, int) or per_node < 1:
        raise HardwareError(f"{what}: cannot size by GPU count without an integer node.gpus_per_node")
    if nodes is None:
        if gpus < per_node:
            return _partial_node({**fields, "num_nodes": 1}, gpus, per_node, what)
        if gpus % per_node:
            lower, upper = gpus // per_node * per_node, (gpus // per_node + 1) * per_node
            raise HardwareError(f"gpus={gpus} is not a multiple of the {per_node} GPUs per node of {what}; use {lower} "
                                f"or {upper}, or give nodes too to spread them evenly")
        return {**fields, "num_nodes": gpus // per_node}
    if gpus % nodes or gpus // nodes > per_node:
        raise HardwareError(f"gpus={gpus} cannot be spread evenly over {nodes} nodes of {per_node} GPUs each; give a "
                            f"multiple of {nodes} up to {nodes * per_node}")
    sized = {**fields, "num_nodes": nodes}
    return sized if gpus == nodes * per_node else _partial_node(sized, gpus // nodes, per_node, what)


def load_cluster(
    ref: str | os.PathLike[str] | dict[str, Any] | ClusterSpec,
    *,
    nodes: int | None = None,
    gpus: int | None = None,
) -> ClusterSpec | PooledCluster:
    """Resolve ``ref`` (see the module docstring) and size it: ``nodes`` whole nodes, or ``gpus`` in total
    (a multiple of the GPUs per node, or fewer than one node's: a partly used node), or both (``gpus``
    spread evenly over ``nodes`` nodes, e.g. nodes=2, gpus=4 uses 2 GPUs of each). A file or dict with
    ``pools`` is a heterogeneous cluster: a `PooledCluster` (`hardware.pools`), sized by its pools."""
    if isinstance(ref, ClusterSpec):
        fields, what = ref.model_dump(), f"cluster {ref.name}"
    elif isinstance(ref, dict):
        fields, what = _fields_from_dict(ref), "cluster dict"
    elif isinstance(ref, (str, os.PathLike)):
        text = os.fspath(ref).strip()
        if not text:
            raise HardwareError("cluster reference is empty; give a preset name (see `plan presets`) or a file")
        path = existing_path(text, HardwareError)
        if path is not None and path.is_file():
            fields, what = _fields_from_dict(read_mapping(path, HardwareError, "cluster fields")), str(path)
        elif path is not None:
            shadow = " (a preset of that name exists: run from another folder)" if cluster_preset(text) else ""
            raise HardwareError(f"{path} is a folder; pass a cluster file (JSON or YAML){shadow}")
        elif cluster_preset(text) is not None:
            fields, what = preset_cluster_fields(text), f"cluster preset {text}"
        elif looks_like_path(text):
            raise HardwareError(f"no such cluster file: {text}")
        else:
            raise unknown_cluster(text)
    else:
        raise HardwareError(
            f"cluster reference must be a preset name, a path or a dict; got {type(ref).__name__}"
        )
    if is_pooled(fields):
        if nodes is not None or gpus is not None:
            raise HardwareError(f"{what} has pools: size each pool in the file (pools[i].nodes), not with nodes/gpus")
        return pooled_cluster(fields, what)
    fields = _resize(fields, nodes, gpus, what)
    try:
        return ClusterSpec.model_validate(fields)
    except ValidationError as err:
        raise HardwareError(describe_validation_error(err, what)) from None
