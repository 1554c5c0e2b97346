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

from hardware.errors import HardwareError
from hardware.presets import (
    cluster_preset,
    gpu_by_name,
    preset_cluster_fields,
    unknown_cluster,
)
from hardware.spec import ClusterSpec
from plan_common.files import existing_path, looks_like_path, read_mapping
from plan_common.validation import describe_validation_error


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _fields_from_dict(data: dict[str, Any]) -> dict[str, Any]:
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


def _resize(fields: dict[str, Any], nodes: int | None, gpus: int | None, what: str) -> dict[str, Any]:
    if nodes is not None and gpus is not None:
        raise HardwareError("give either nodes or gpus, not both")
    if nodes is not None:
        if isinstance(nodes, bool) or not isinstance(nodes, int) or nodes < 1:
            raise HardwareError(f"nodes must be a positive integer, got {nodes!r}")
        return {**fields, "num_nodes": nodes}
    if gpus is not None:
        if isinstance(gpus, bool) or not isinstance(gpus, int) or gpus < 1:
            raise HardwareError(f"gpus must be a positive integer, got {gpus!r}")
        node = fields.get("node")
        per_node = node.get("gpus_per_node") if isinstance(node, dict) else None
        if isinstance(per_node, bool) or not isinstance(per_node, int) or per_node < 1:
            raise HardwareError(f"{what}: cannot size by GPU count without an integer node.gpus_per_node")
        if gpus % per_node:
            lower, upper = gpus // per_node * per_node, (gpus // per_node + 1) * per_node
            options = f"{lower} or {upper}" if lower else f"{upper}"
            raise HardwareError(
                f"gpus={gpus} is not a multiple of the {per_node} GPUs per node of {what}; use {options}"
            )
        return {**fields, "num_nodes": gpus // per_node}
    return fields


def load_cluster(
    ref: str | os.PathLike[str] | dict[str, Any] | ClusterSpec,
    *,
    nodes: int | None = None,
    gpus: int | None = None,
) -> ClusterSpec:
    """Resolve ``ref`` (see the module docstring) and size it by ``nodes`` or total ``gpus``."""
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
    fields = _resize(fields, nodes, gpus, what)
    try:
        return ClusterSpec.model_validate(fields)
    except ValidationError as err:
        raise HardwareError(describe_validation_error(err, what)) from None
