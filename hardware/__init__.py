"""Hardware facts: `GPUSpec`, `NodeSpec`, `ClusterSpec`, presets with sources, cluster files, and the
node this machine is (`detect_cluster`)."""

from parallelplan.common.lazy import lazy_exports
from parallelplan.hardware.errors import HardwareError
from parallelplan.hardware.loader import load_cluster
from parallelplan.hardware.pools import Pool, PooledCluster, PoolLink
from parallelplan.hardware.presets import gpu_by_name as load_gpu
from parallelplan.hardware.presets import list_clusters, list_gpus
from parallelplan.hardware.prices import checked_price, default_price, price_offers
from parallelplan.hardware.spec import PRECISIONS, ClusterSpec, GPUSpec, NodeSpec

# detection (NVML, sysfs, its pydantic records) loads only when a command reads the machine
__getattr__, __dir__ = lazy_exports(__name__, dict.fromkeys(
    ("Detection", "DetectionError", "detect_cluster", "detect_node", "record_snapshot"), "parallelplan.hardware.detect"))

__all__ = [
    "PRECISIONS",
    "ClusterSpec",
    "Detection",
    "DetectionError",
    "GPUSpec",
    "HardwareError",
    "NodeSpec",
    "Pool",
    "PoolLink",
    "PooledCluster",
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
