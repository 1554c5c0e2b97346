"""Hardware facts: `GPUSpec`, `NodeSpec`, `ClusterSpec`, presets with sources, cluster files, and the
node this machine is (`detect_cluster`)."""

from parallelplan.hardware.detect import Detection, DetectionError, detect_cluster, detect_node, record_snapshot
from parallelplan.hardware.errors import HardwareError
from parallelplan.hardware.loader import load_cluster
from parallelplan.hardware.presets import gpu_by_name as load_gpu
from parallelplan.hardware.presets import list_clusters, list_gpus
from parallelplan.hardware.prices import checked_price, default_price, price_offers
from parallelplan.hardware.spec import PRECISIONS, ClusterSpec, GPUSpec, NodeSpec

__all__ = [
    "PRECISIONS",
    "ClusterSpec",
    "Detection",
    "DetectionError",
    "GPUSpec",
    "HardwareError",
    "NodeSpec",
    "checked_price",
    "default_price",
    "detect_cluster",
    "detect_node",
    "list_clusters",
    "list_gpus",
    "load_cluster",
    "load_gpu",
    "price_offers",
    "record_snapshot",
]
