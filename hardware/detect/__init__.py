"""Reading the node the planner runs on — NVML, sysfs, and nvidia-smi where NVML falls short — and
turning it into a `ClusterSpec` (`detect_cluster`), or replaying a recorded snapshot of a real machine
through the same code (``snapshot=FOLDER``; `hardware.detect.probe` describes the folder).
"""

from __future__ import annotations

import os
from pathlib import Path

from parallelplan.hardware.detect.classify import Detection, classify
from parallelplan.hardware.detect.probe import DetectionError, live_sources, load_snapshot, read_node, record_snapshot
from parallelplan.hardware.spec import ClusterSpec

__all__ = ["Detection", "DetectionError", "detect_cluster", "detect_node", "record_snapshot", "sized_cluster"]


def detect_node(snapshot: str | os.PathLike[str] | None = None) -> Detection:
    """This machine (or a recorded ``snapshot`` folder) read and interpreted. Raises `DetectionError`
    (a `HardwareError`) when nothing can be read — no driver, no GPU — with the way forward."""
    if snapshot is not None and not isinstance(snapshot, (str, os.PathLike)):
        raise DetectionError(f"snapshot must be a folder path (written by `plan topology --record DIR`), "
                             f"got {type(snapshot).__name__}")
    sources = load_snapshot(Path(snapshot)) if snapshot is not None else live_sources()
    return classify(read_node(sources))


def sized_cluster(detection: Detection, *, nodes: int | None = None, gpus: int | None = None) -> ClusterSpec:
    """The detected node's `ClusterSpec` sized like `load_cluster`; a node that cannot be modelled, or
    several nodes without a network port, is a `DetectionError` saying why and what to give instead."""
    from parallelplan.hardware.loader import load_cluster

    if detection.cluster is None:
        raise DetectionError(f"the detected node cannot be modelled: {detection.problem}")
    node = detection.cluster.node
    if node.nics_per_node == 0 and ((nodes or 1) > 1 or (gpus or 0) > node.gpus_per_node):
        raise DetectionError(f"the detected node has no network port for GPU traffic "
                             f"({detection.provenance.get('nics_per_node', 'none read')}), so it cannot be "
                             "one of several nodes; describe the cluster in a file (base: a preset, or "
                             "nics_per_node and nic_bandwidth) and pass it with --cluster")
    return load_cluster(detection.cluster, nodes=nodes, gpus=gpus)


def detect_cluster(*, nodes: int | None = None, gpus: int | None = None,
                   snapshot: str | os.PathLike[str] | None = None) -> ClusterSpec:
    """The detected node as a `ClusterSpec`, sized like `load_cluster` (``nodes`` such nodes, or
    ``gpus`` in total)."""
    return sized_cluster(detect_node(snapshot), nodes=nodes, gpus=gpus)
