"""Time of NCCL-style collectives on the cluster's real topology (α-β model).

A process group is described by its size n and its stride s in the global rank order (Megatron-Core's
default order tp-cp-ep-dp-pp: TP ranks are adjacent, then CP, then DP; PP is outermost). GPUs form fast
domains of D = max(NVLink domain, GPUs per node) ranks — 8 on a DGX, 72 on an NVL72 rack, a PCIe server's
GPUs — joined by the intra-node bandwidth B₁; domains are joined by the NICs, B₂ per GPU. A group puts
n₁ = min(n, max(D // s, 1)) members in each of n₂ = ⌈n / n₁⌉ domains.

Ring reduce-scatter / all-gather of a buffer of M bytes, hierarchical (intra-domain ring, then one ring
per GPU across domains on its own NIC, as NCCL's multi-rail rings do; Thakur et al. 2005 for rings,
Jeaugey 2019 "Massively scale your deep learning training with NCCL 2.4" for the hierarchy):
    t = (n₁−1)/n₁ · M/(η₁B₁) + (n₂−1)/n₂ · (M/n₁)/(η₂B₂) + (n₁−1)·α₁ + (n₂−1)·α₂   (per protocol, below)
All-reduce is a reduce-scatter plus an all-gather (twice that). All-to-all: each GPU sends (n−1)/n of
M, its intra-domain share over B₁ and the rest over its NIC concurrently (the slower sets the time).
DeepEP's dispatch sends each token once per remote domain
that holds one of its experts, then over NVLink (`Fabric.node_deduplicated_dispatch`).
Point-to-point: M over B₁ within a domain, else over the NIC; a step of a ring (CP's K/V exchange) is as
slow as its slowest hop, so over the NIC once the group spans domains. η are NCCL bus efficiencies, α per-step
latencies (``Efficiency.network_bus``, ``Efficiency.latency_s``).

NCCL runs each ring collective on one of its protocols, the one its own tuning model finds fastest for the
message (``NCCL_PROTO`` limits the choice; `nccl_protocols`): LL (a flag with every 4 bytes of data: half
the bandwidth, the lowest latency), LL128 (120 data bytes per 128-byte line, over NVLink) and Simple. Each
has its data fraction f of the bus bandwidth, a base latency α₀ per call and its own per-step α₁, α₂
(``Efficiency.nccl_protocols``, NCCL's src/graph/tuning.cc values), so the ring above is
    t = min over enabled protocols of  (n₁−1)/n₁ · M/(f·η₁B₁) + (n₂−1)/n₂ · (M/n₁)/(f·η₂B₂) + α₀ + (n₁−1)·α₁ + (n₂−1)·α₂
— small messages (a decode step's, a tiny model's) go LL, large ones Simple.

In-network reduction changes what an all-reduce moves (`Fabric.all_reduce`; NCCL's tuner picks the faster
algorithm, so the time is the lesser). NVLink SHARP (NVLS, NCCL ≥ 2.17, third-generation NVSwitch and later,
`ClusterSpec.in_network_reduction`): each GPU's chunk is reduced by the switch from every member's copy
(multimem load-reduce) and multicast back, so a GPU sends and receives (1 + 1/n₁)·M instead of the ring's
2(n₁−1)/n₁·M — at its own efficiency η_nvls (NVIDIA/nccl issues #807, #895). Across domains NCCL's NVLSTree runs
that inside each domain and a tree over the NICs on each GPU's 1/n₁ (NCCL 2.18.1 release notes). IB SHARP
(`ClusterSpec.ib_sharp`, NCCL's CollNet through the SHARP plugin) reduces in the InfiniBand switches: each NIC
sends its M/n₁ once and receives the sum once, instead of 2(n₂−1)/n₂ of it. For reduce-scatter and all-gather
NVLS moves M one way and M/n the other against the ring's (n−1)/n·M each way (NVIDIA/nccl issue #1506): no
faster on bandwidth (it frees SMs, which this model does not price), so they stay rings. NVLS's own buffers
(16 channels × 2 × 8 steps × 128 KiB per member in NCCL's current src/transport/nvls.cc defaults, ≈ 256 MiB on
8 GPUs; ≈ 2.25 GiB logged by NCCL 2.18-era builds) are not priced in memory: no measurement here ties them
to a NCCL version.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from parallelplan.constraints.efficiency import Efficiency
from parallelplan.hardware import ClusterSpec


def ring_bytes(nbytes: np.ndarray, size: np.ndarray) -> np.ndarray:
    """Bytes each rank sends in a ring reduce-scatter or all-gather of ``nbytes`` over ``size`` ranks:
    (n−1)/n · M — the same total for the hierarchical ring, (n₁−1)/n₁·M + (n₂−1)/n₂·M/n₁ = (n−1)/n·M."""
    size_f = np.maximum(np.asarray(size, dtype=float), 1.0)
    return (size_f - 1) / size_f * nbytes


def fast_domain(cluster: ClusterSpec) -> int:
    """GPUs that share the fast interconnect (NVLink / the node's PCIe): the NVLink domain, at least a node,
    at most the cluster."""
    return min(max(cluster.nvlink_domain_gpus, cluster.node.gpus_per_node), cluster.total_gpus)


def nvlink_sharp(cluster: ClusterSpec) -> bool:
    """Whether the NVSwitches reduce (NVLS): the cluster says so and its GPUs meet in NVSwitches."""
    return cluster.in_network_reduction and cluster.node.intra_node_fabric == "nvswitch"


NCCL_PROTOCOLS = {"ll": "LL", "ll128": "LL128", "simple": "Simple"}
"""NCCL's protocols, each with the name ``NCCL_PROTO`` and NCCL's logs give it."""


def nccl_protocols(cluster: ClusterSpec) -> tuple[str, ...]:
    """The protocols NCCL may run ring collectives on: the cluster's ``NCCL_PROTO`` where it sets one, else
    NCCL's default — LL and Simple, and LL128 where NVLink joins NVIDIA GPUs of compute capability 7.0 or
    later (NVIDIA/nccl src/graph/tuning.cc: LL128 is enabled by default only over NVLink, 'other cases are
    not tested and may cause silent data corruption')."""
    if cluster.nccl_protocols is not None:
        return cluster.nccl_protocols
    gpu, capability = cluster.gpu, cluster.gpu.compute_capability
    ll128 = (gpu.vendor == "nvidia" and capability is not None and float(capability) >= 7.0
             and cluster.node.intra_node_fabric != "pcie")
    return ("ll", "ll128", "simple") if ll128 else ("ll", "simple")


def ib_sharp(cluster: ClusterSpec) -> bool:
    """Whether the InfiniBand switches reduce an all-reduce across nodes (SHARP, NCCL's CollNet)."""
    return cluster.ib_sharp and cluster.num_nodes > 1


@dataclass(frozen=True)
class Protocol:
    """One NCCL protocol's ring costs on a fabric (``Efficiency.nccl_protocols``): the fraction of the bus
    bandwidth it carries as data, its base latency per collective and per ring step inside and across
    the fast domains."""

    name: str
    bandwidth: float
    base_s: float
    intra_s: float
    inter_s: float


@dataclass(frozen=True)
class Fabric:
    domain: int
    intra_bw: float
    inter_bw: float
    intra_alpha: float
    inter_alpha: float
    nvls_bw: float = 0.0  # η_nvls·B₁ where the NVSwitches reduce (NVLS), else 0
    nvls_alpha: float = 0.0
    ib_sharp: bool = False
    protocols: tuple[Protocol, ...] = ()  # the ring collectives' (NCCL_PROTO)

    @classmethod
    def of(cls, cluster: ClusterSpec, eff: Efficiency) -> Fabric:
        domain = fast_domain(cluster)
        inter = cluster.node.nic_bandwidth_per_gpu * eff.network_bus["inter_node"]
        hop = "pcie_s" if cluster.node.intra_node_fabric == "pcie" else "nvlink_s"
        table, enabled = eff.nccl_protocols, nccl_protocols(cluster)
        return cls(
            domain=domain,
            intra_bw=cluster.node.intra_node_bandwidth * eff.network_bus["intra_node"],
            inter_bw=inter if inter > 0 else np.inf,
            intra_alpha=eff.latency_s["intra_node"],
            inter_alpha=eff.latency_s["inter_node"],
            nvls_bw=cluster.node.intra_node_bandwidth * eff.network_bus["nvls"] if nvlink_sharp(cluster) else 0.0,
            nvls_alpha=eff.latency_s["nvls"],
            ib_sharp=ib_sharp(cluster),
            protocols=tuple(Protocol(name, table[name]["bandwidth"], table[name]["base_s"], table[name][hop],
                                     table[name]["network_s"])
                            for name in NCCL_PROTOCOLS if name in enabled),
        )

    def split(self, size: np.ndarray, stride: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(members per domain, domains spanned) of groups of ``size`` ranks ``stride`` apart."""
        size = np.asarray(size, dtype=np.int64)
        per_domain = np.minimum(size, np.maximum(self.domain // np.maximum(stride, 1), 1))
        return per_domain, -(-size // per_domain)

    def _ring_parts(self, nbytes: np.ndarray, size: np.ndarray, stride: np.ndarray,
                    passes: int) -> tuple[np.ndarray, np.ndarray]:
        """(inside the domains, across them) of ``passes`` hierarchical ring passes on each enabled protocol
        (first axis, in ``protocols``' order), its base latency counted inside."""
        n1, n2 = self.split(size, stride)
        nbytes = np.asarray(nbytes, dtype=float)
        shape = (-1,) + (1,) * np.broadcast(nbytes, n1).ndim
        fraction, base, intra_s, inter_s = (np.array([getattr(p, name) for p in self.protocols]).reshape(shape)
                                            for name in ("bandwidth", "base_s", "intra_s", "inter_s"))
        intra = base + passes * ((n1 - 1) / n1 * nbytes / self.intra_bw / fraction + (n1 - 1) * intra_s)
        inter = passes * ((n2 - 1) / n2 * (nbytes / n1) / self.inter_bw / fraction + (n2 - 1) * inter_s)
        return intra, inter

    def ring_times(self, nbytes: np.ndarray, size: np.ndarray, stride: np.ndarray, passes: int) -> np.ndarray:
        """Each enabled protocol's time (first axis, in ``protocols``' order) for ``passes`` ring passes
        (1: reduce-scatter or all-gather, 2: all-reduce) of ``nbytes`` over the group."""
        intra, inter = self._ring_parts(nbytes, size, stride, passes)
        return intra + inter

    def reduce_scatter(self, nbytes: np.ndarray, size: np.ndarray, stride: np.ndarray) -> np.ndarray:
        """Ring reduce-scatter (equally, all-gather) of ``nbytes`` over the group (seconds), on the fastest
        of the enabled protocols: (n₁−1)/n₁·M/(f·η₁B₁) + (n₂−1)/n₂·(M/n₁)/(f·η₂B₂) + α₀ + (n₁−1)·α₁ + (n₂−1)·α₂
        with each protocol's data fraction f and latencies (``Efficiency.nccl_protocols``)."""
        return np.where(size > 1, self.ring_times(nbytes, size, stride, 1).min(axis=0), 0.0)

    def all_reduce(self, nbytes: np.ndarray, size: np.ndarray, stride: np.ndarray) -> np.ndarray:
        """All-reduce of ``nbytes`` over the group (seconds): the hierarchical ring — a reduce-scatter and an
        all-gather, 2(n₁−1)/n₁·M/(f·η₁B₁) inside each domain and 2(n₂−1)/n₂·(M/n₁)/(f·η₂B₂) across — on the
        fastest protocol; or, with Simple's ring parts (NVLS and CollNet run Simple only), each part replaced by
        its in-network form where the fabric has one and it is faster (module docstring): NVLS
        (1 + 1/n₁)·M/(η_nvls·B₁) + α_nvls inside, IB SHARP (M/n₁)/(η₂B₂) + 2α₂ across."""
        parts = self._ring_parts(nbytes, size, stride, 2)
        ring = (parts[0] + parts[1]).min(axis=0)
        simple = next((i for i, p in enumerate(self.protocols) if p.name == "simple"), None)
        if simple is not None and (self.nvls_bw > 0 or self.ib_sharp):
            n1, n2 = self.split(size, stride)
            intra, inter = parts[0][simple], parts[1][simple]
            if self.nvls_bw > 0:
                intra = np.where(n1 > 1, np.minimum(intra, (1 + 1 / n1) * nbytes / self.nvls_bw + self.nvls_alpha), intra)
            if self.ib_sharp:
                inter = np.where(n2 > 1, np.minimum(inter, nbytes / n1 / self.inter_bw + 2 * self.protocols[simple].inter_s),
                                 inter)
            ring = np.minimum(ring, intra + inter)
        return np.where(size > 1, ring, 0.0)

    def latency_bound_all_reduce(self, nbytes: np.ndarray, size: np.ndarray, stride: np.ndarray) -> np.ndarray:
        """All-reduce of a small message as inference engines run it inside the fast domain: one kernel
        that reads every peer's buffer over NVLink (one-shot: (n−1)·bytes per GPU) or reduce-scatters and
        all-gathers in place (two-shot: 2·(n−1)/n·bytes), whichever is faster, each after a barrier
        (vLLM's custom all-reduce, ``csrc/custom_all_reduce.cuh`` cross_device_reduce_1stage / 2stage;
        TensorRT-LLM's one- and two-shot kernels). A group across domains runs NCCL (`all_reduce`)."""
        n1, n2 = self.split(size, stride)
        size_f = np.asarray(size, dtype=float)
        one_shot = (size_f - 1) * nbytes / self.intra_bw + self.intra_alpha
        two_shot = 2 * (size_f - 1) / np.maximum(size_f, 1) * nbytes / self.intra_bw + 2 * self.intra_alpha
        inside = np.minimum(one_shot, two_shot)
        return np.where(size > 1, np.where(n2 > 1, self.all_reduce(nbytes, size, stride), inside), 0.0)

    def all_to_all(self, nbytes: np.ndarray, size: np.ndarray, stride: np.ndarray) -> np.ndarray:
        """Each GPU exchanges (n−1)/n of ``nbytes`` with the other members."""
        n1, n2 = self.split(size, stride)
        size_f = np.maximum(np.asarray(size, dtype=float), 1.0)
        intra = nbytes * (n1 - 1) / size_f / self.intra_bw
        inter = nbytes * (size_f - n1) / size_f / self.inter_bw
        latency = (n1 - 1) * self.intra_alpha + (n2 - 1) * self.inter_alpha
        return np.where(size > 1, np.maximum(intra, inter) + latency, 0.0)

    def node_deduplicated_dispatch(self, copy_bytes: np.ndarray, copies: int, experts: int, size: np.ndarray,
                                   stride: np.ndarray) -> np.ndarray:
        """DeepEP's dispatch (or its mirror, the combine) of tokens to ``copies`` of ``experts`` experts
        spread evenly over the group (DeepSeek-AI 2025, DeepEP README "normal kernels"; DeepSeek-V3
        report §3.2.2): a token crosses the network once per remote domain that holds one of its experts
        (to the GPU of the same local index there) and is forwarded over NVLink to the experts' GPUs.
        Under uniform routing a domain holding E/n₂ of the E experts receives none of a token's k with
        probability C(E − E/n₂, k) / C(E, k), so the expected remote domains per token are
        (n₂ − 1)·(1 − C(E − E/n₂, k)/C(E, k)), against (n − n₁)/n · k copies for NCCL's all-to-all.
        ``copy_bytes``: one copy of the GPU's tokens. The NIC and NVLink work concurrently."""
        n1, n2 = self.split(size, stride)
        per_domain = experts / n2
        untouched = np.ones_like(per_domain, dtype=float)
        for i in range(copies):  # C(E − E/n₂, k) / C(E, k) as a product of k ratios
            untouched = untouched * np.maximum(experts - per_domain - i, 0.0) / (experts - i)
        remote_domains = (n2 - 1) * (1 - untouched)
        inter = copy_bytes * remote_domains / self.inter_bw
        intra = copy_bytes * copies * (n1 - 1) / n1 / self.intra_bw
        latency = (n1 - 1) * self.intra_alpha + (n2 - 1) * self.inter_alpha
        return np.where(size > 1, np.maximum(intra, inter) + latency, 0.0)

    def ring_step(self, nbytes: np.ndarray, size: np.ndarray, stride: np.ndarray) -> np.ndarray:
        """One step of a ring over the group: every member sends ``nbytes`` to the next at once, and the
        step lasts as long as its slowest hop — over the NIC as soon as the group spans several domains
        (the ring's hops between domains), within the domain otherwise."""
        _, domains = self.split(size, stride)
        return np.where(domains > 1, nbytes / self.inter_bw + self.inter_alpha, nbytes / self.intra_bw + self.intra_alpha)

    def send(self, nbytes: np.ndarray, stride: np.ndarray) -> np.ndarray:
        """Point-to-point transfer to the rank ``stride`` away."""
        inside = stride < self.domain
        return np.where(inside, nbytes / self.intra_bw + self.intra_alpha, nbytes / self.inter_bw + self.inter_alpha)
