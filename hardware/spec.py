"""Hardware facts: `GPUSpec`, `NodeSpec`, `ClusterSpec`. Frozen, validated, knowing nothing of models.

Units in code: bytes, bytes per second, FLOP per second. Fields also accept quantities with units
("81559 MiB", "450 GB/s", "400 Gb/s", "989.4 TFLOPS"; see `hardware.units`) so that data files and user
cluster files read like datasheets; they serialise back as plain numbers.

Bandwidth conventions (NVIDIA prints NVLink as the bidirectional total per GPU: "900 GB/s" on H100):
every bandwidth field here is PER DIRECTION. ``intra_node_bandwidth`` is what one GPU can send to its
peers at once (NVLink 4: 450 GB/s; PCIe Gen5 x16: 64 GB/s); ``nic_bandwidth`` is one NIC's line rate.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictInt, model_validator

from parallelplan.hardware.units import parse_bytes, parse_flops, parse_rate

COUNT_LIMIT = 2**31
PositiveInt = Annotated[StrictInt, Field(ge=1, le=COUNT_LIMIT)]
NonNegativeInt = Annotated[StrictInt, Field(ge=0, le=COUNT_LIMIT)]
"""Counts are strict integers (no "8", no true)."""
MAX_GPUS = 2**20
"""The largest cluster (and so the largest parallel degree) modelled: 1,048,576 GPUs, five times the
largest training clusters announced in 2026, and small enough that every count and product of degrees stays
exact in the solver's fixed-point tables."""

Bytes = Annotated[int, BeforeValidator(parse_bytes), Field(gt=0, le=2**60)]
Rate = Annotated[float, BeforeValidator(parse_rate), Field(ge=0, le=1e18)]
FlopRate = Annotated[float, BeforeValidator(parse_flops), Field(gt=0, le=1e21)]

Precision = Literal["fp32", "tf32", "bf16", "fp16", "fp8", "fp4"]
PRECISIONS: tuple[str, ...] = ("fp32", "tf32", "bf16", "fp16", "fp8", "fp4")


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class GPUSpec(_Frozen):
    """One accelerator. ``memory_bytes`` is the capacity the driver reports (NVML ``memory.total``) where a
    reading was found, else the datasheet figure; ``memory_basis`` says which. ``peak_flops`` are DENSE
    tensor-core peaks (no 2:4 sparsity) per precision; a precision the GPU lacks is absent.
    ``peak_flops_basis`` is set when the peaks are assumed rather than published (H800, H100 96 GB)."""

    name: str = Field(min_length=1)
    display_name: str
    vendor: Literal["nvidia", "amd"]
    architecture: str
    compute_capability: str | None = None
    form_factor: str
    memory_bytes: Bytes
    memory_basis: str
    memory_marketed_gb: float | None = None
    hbm_bandwidth: Rate
    peak_flops: dict[Precision, FlopRate]
    peak_flops_basis: str | None = None
    nvlink_generation: PositiveInt | None = None
    nvlink_bandwidth: Rate = 0.0
    pcie_generation: PositiveInt | None = None
    pcie_bandwidth: Rate
    tdp_w: PositiveInt | None = None
    source: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _consistent(self) -> GPUSpec:
        if "bf16" not in self.peak_flops and "fp16" not in self.peak_flops:
            raise ValueError(f"GPU {self.name}: peak_flops needs at least bf16 or fp16")
        if (self.nvlink_generation is None) != (self.nvlink_bandwidth == 0):
            raise ValueError(f"GPU {self.name}: nvlink_generation and nvlink_bandwidth go together")
        return self

    def supports(self, precision: str) -> bool:
        return precision in self.peak_flops

    @property
    def mfu_peak_flops(self) -> float:
        """The dense peak MFU is reported against for plans of every precision: bf16 (fp16 on GPUs without
        bf16) — the convention of PaLM's MFU (Chowdhery et al. 2022, appendix B) and of published runs, so
        that an fp8 or fp32 plan's MFU is comparable with a bf16 plan's."""
        return self.peak_flops.get("bf16", self.peak_flops.get("fp16"))


class NodeSpec(_Frozen):
    """One server (or, for GB200/GB300 NVL72, one compute tray of 4 GPUs).

    ``intra_node_fabric``: ``nvswitch`` (all-to-all NVLink through switches, also across trays of an
    NVL72 rack), ``nvlink_mesh`` (direct GPU-GPU links), ``nvlink_bridge`` (PCIe cards bridged in pairs),
    ``pcie`` (no NVLink: GPU traffic crosses PCIe and the host). ``gpu_numa_nodes`` gives the NUMA node
    of each GPU where documented. ``c2c_bandwidth`` is the Grace ↔ GPU NVLink-C2C link per direction."""

    name: str = Field(min_length=1)
    gpu: GPUSpec
    gpus_per_node: PositiveInt
    intra_node_fabric: Literal["nvswitch", "nvlink_mesh", "nvlink_bridge", "pcie"]
    intra_node_bandwidth: Rate
    nics_per_node: NonNegativeInt
    nic_bandwidth: Rate = 0.0
    numa_nodes: PositiveInt = 1
    gpu_numa_nodes: tuple[NonNegativeInt, ...] | None = None
    c2c_bandwidth: Rate | None = None
    cpu: str | None = None
    host_memory_bytes: Bytes | None = None
    source: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()

    @model_validator(mode="before")
    @classmethod
    def _gpu_by_name(cls, data: Any) -> Any:
        """``gpu`` may name a GPU preset ("h100-sxm-80gb") instead of spelling out a GPUSpec."""
        if isinstance(data, dict) and isinstance(data.get("gpu"), str):
            from parallelplan.hardware.presets import gpu_by_name

            data = {**data, "gpu": gpu_by_name(data["gpu"])}
        return data

    @model_validator(mode="after")
    def _consistent(self) -> NodeSpec:
        if self.gpu_numa_nodes is not None:
            if len(self.gpu_numa_nodes) != self.gpus_per_node:
                raise ValueError(
                    f"gpu_numa_nodes lists {len(self.gpu_numa_nodes)} GPUs but gpus_per_node is {self.gpus_per_node}"
                )
            if max(self.gpu_numa_nodes) >= self.numa_nodes:
                raise ValueError(f"gpu_numa_nodes refers to NUMA node >= numa_nodes ({self.numa_nodes})")
        if self.nics_per_node and self.nic_bandwidth == 0:
            raise ValueError("nics_per_node > 0 needs nic_bandwidth (e.g. '400 Gb/s')")
        if self.intra_node_bandwidth == 0 and self.gpus_per_node > 1:
            raise ValueError("intra_node_bandwidth must be > 0 when a node has several GPUs")
        return self

    @property
    def nic_bandwidth_per_gpu(self) -> float:
        """Scale-out bandwidth one GPU gets when every GPU of the node sends at once (bytes/s)."""
        return self.nics_per_node * self.nic_bandwidth / self.gpus_per_node


class ClusterSpec(_Frozen):
    """``num_nodes`` identical nodes. ``nvlink_domain_size`` is how many GPUs share one NVLink fabric
    (8 on DGX/HGX, 72 on GB200/GB300 NVL72, 2 for bridged PCIe pairs, 1 without NVLink); collectives
    inside a domain run at NVLink speed, across domains over the NICs. ``gpudirect_rdma``: NICs read and
    write GPU memory directly. ``in_network_reduction``: the NVSwitches reduce (NVLink SHARP, NVLS: third-
    generation NVSwitch and later; NCCL ≥ 2.17 uses it for all-reduce). ``ib_sharp``: the InfiniBand switches
    reduce (SHARP, reached by NCCL's CollNet through the SHARP plugin) — a property of the switches and their
    aggregation manager that no node can see, off unless the cluster description says so. Both price the
    all-reduce (`constraints.collectives.Fabric.all_reduce`). ``nccl_protocols``: the protocols NCCL may
    use for ring collectives (``NCCL_PROTO``: ll, ll128, simple); None is NCCL's default — LL and Simple
    everywhere, LL128 where NVLink joins the GPUs (`constraints.collectives.nccl_protocols`); a cluster
    whose jobs set NCCL_PROTO (e.g. Simple only) says so here, and its launch scripts set it."""

    name: str = Field(min_length=1)
    node: NodeSpec
    num_nodes: PositiveInt = 1
    inter_node_fabric: Literal["infiniband", "roce", "ethernet"]
    nvlink_domain_size: PositiveInt
    gpudirect_rdma: bool
    in_network_reduction: bool = False
    ib_sharp: bool = False
    nccl_protocols: tuple[Literal["ll", "ll128", "simple"], ...] | None = None
    source: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _consistent(self) -> ClusterSpec:
        per_node = self.node.gpus_per_node
        domain = self.nvlink_domain_size
        if domain % per_node and per_node % domain:
            raise ValueError(
                f"nvlink_domain_size {domain} must divide, or be a multiple of, gpus_per_node {per_node}"
            )
        if self.node.intra_node_fabric == "pcie" and domain != 1:
            raise ValueError("a node without NVLink (intra_node_fabric 'pcie') has nvlink_domain_size 1")
        if self.ib_sharp and self.inter_node_fabric != "infiniband":
            raise ValueError(f"ib_sharp is SHARP in InfiniBand switches; inter_node_fabric is {self.inter_node_fabric!r} "
                             "(set ib_sharp false, or inter_node_fabric 'infiniband')")
        protocols = self.nccl_protocols
        if protocols is not None and (not protocols or len(set(protocols)) < len(protocols)):
            raise ValueError(f"nccl_protocols {list(protocols)}: name each of ll, ll128, simple at most once, at "
                             "least one (or leave it out for NCCL's default)")
        if self.total_gpus > MAX_GPUS:
            raise ValueError(f"{self.num_nodes:,} nodes of {per_node} GPUs are {self.total_gpus:,} GPUs; plan models "
                             f"clusters of up to {MAX_GPUS:,} GPUs ({MAX_GPUS // per_node:,} such nodes)")
        if self.num_nodes > 1 and self.node.nics_per_node == 0:
            raise ValueError(f"{self.num_nodes} nodes need network cards: nics_per_node is 0")
        return self

    @property
    def total_gpus(self) -> int:
        return self.num_nodes * self.node.gpus_per_node

    @property
    def gpu(self) -> GPUSpec:
        return self.node.gpu

    @property
    def nvlink_domain_gpus(self) -> int:
        """GPUs that actually share one NVLink fabric in this cluster (a partial rack has fewer)."""
        return min(self.nvlink_domain_size, self.total_gpus)
