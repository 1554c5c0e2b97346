"""Hardware facts: `GPUSpec`, `NodeSpec`, `ClusterSpec`, presets with sources, cluster files."""

from hardware.errors import HardwareError
from hardware.loader import load_cluster
from hardware.presets import gpu_by_name as load_gpu
from hardware.presets import list_clusters, list_gpus
from hardware.spec import PRECISIONS, ClusterSpec, GPUSpec, NodeSpec

__all__ = [
    "PRECISIONS",
    "ClusterSpec",
    "GPUSpec",
    "HardwareError",
    "NodeSpec",
    "list_clusters",
    "list_gpus",
    "load_cluster",
    "load_gpu",
]
