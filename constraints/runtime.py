"""The runtime allowance: GPU memory that is not tensors but decides real OOMs (``data/runtime.json``).

- CUDA context (driver, lazily loaded kernels): a constant per process.
- NCCL buffers: per peer connection, ``channels × bytes per peer-channel``. Ring collectives (TP, CP,
  data-parallel gradient reduction) and pipeline send/receive connect each GPU to one peer per channel
  and direction; the expert all-to-all connects it to ep − 1 peers (NVIDIA/nccl issues #986, #1685).
  Point-to-point channels per peer follow NCCL's ``ncclTopoGetNchannels`` (src/graph/paths.cc): all the
  fast-domain channels while every peer shares the NVLink domain, else the network's share — one
  channel per 14 GB/s of the GPU's NIC bandwidth, at least one per NIC — for every peer, since NCCL
  takes the minimum over the peers.
- Allocator fragmentation and miscellaneous temporaries: a fraction of activation memory.
A ``memory_margin`` (the user's choice, 0 by default) holds that fraction of the GPU's memory free: a plan
fits when its peak stays within the rest (`usable`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from importlib import resources

import numpy as np

from parallelplan.constraints.arrays import PlanArrays
from parallelplan.constraints.collectives import fast_domain
from parallelplan.hardware import ClusterSpec
from parallelplan.hardware.units import parse_bytes, parse_rate


@dataclass(frozen=True)
class RuntimeAllowance:
    cuda_context_bytes: float
    nccl_channels: int
    nccl_bytes_per_peer_channel: float
    nccl_net_bandwidth_per_channel: float
    fragmentation: float
    memory_margin: float = 0.0

    def __post_init__(self) -> None:
        margin = self.memory_margin
        if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not 0.0 <= margin < 1.0:
            raise ValueError(f"memory_margin must be a fraction of GPU memory in [0, 1), got {margin!r}")

    def usable(self, cluster: ClusterSpec) -> float:
        """Bytes a plan may take on one GPU: its memory less the margin."""
        return cluster.gpu.memory_bytes * (1.0 - self.memory_margin)

    @classmethod
    def default(cls) -> RuntimeAllowance:
        data = json.loads(resources.files("parallelplan.constraints").joinpath("data", "runtime.json").read_text())
        return cls(
            cuda_context_bytes=parse_bytes(data["cuda_context_bytes"]["value"]),
            nccl_channels=int(data["nccl_channels"]["value"]),
            nccl_bytes_per_peer_channel=parse_bytes(data["nccl_bytes_per_peer_channel"]["value"]),
            nccl_net_bandwidth_per_channel=parse_rate(data["nccl_net_bandwidth_per_channel"]["value"]),
            fragmentation=float(data["fragmentation_of_activations"]["value"]),
        )

    def net_channels_per_peer(self, cluster: ClusterSpec) -> int:
        """Point-to-point channels NCCL opens to a peer across the network."""
        per_gpu = cluster.node.nic_bandwidth_per_gpu
        return max(1, math.ceil(per_gpu / self.nccl_net_bandwidth_per_channel)) if per_gpu > 0 else self.nccl_channels

    def nccl_bytes(self, p: PlanArrays, cluster: ClusterSpec) -> np.ndarray:
        """NCCL buffer bytes on one GPU, (n,): ring peers at full channels, all-to-all peers at the
        channels the EP group's span allows (see the module docstring)."""
        rings = (p.tp > 1).astype(int) + (p.cp > 1) + (p.dp * p.cp > 1) + (p.pp > 1)
        domain = fast_domain(cluster)
        a2a_channels = np.where(p.ep * p.etp > domain, self.net_channels_per_peer(cluster), self.nccl_channels)
        a2a = np.where(p.ep > 1, (p.ep - 1) * a2a_channels, 0)
        return (rings * self.nccl_channels + a2a) * self.nccl_bytes_per_peer_channel

    def fixed_bytes(self, p: PlanArrays, cluster: ClusterSpec) -> np.ndarray:
        """CUDA context plus NCCL buffers, (n,)."""
        return self.cuda_context_bytes + self.nccl_bytes(p, cluster)
