"""From what a node reports (`NodeFacts`) to what the cost model needs (`ClusterSpec`): the GPU preset,
the NVLink fabric and its bandwidth, the network ports that serve the GPUs, GPUDirect RDMA, NUMA.

Rules (each field's origin is kept in `Detection.provenance`):

- NVLink domain: GPUs joined by NVLink form groups; when every group is fully connected with the same
  link count per pair, a group is the domain. It is an NVSwitch fabric when a GPU reaches more peers
  with that many links than it has links (18 per pair to 7 peers needs 126 links; an H100 has 18), or
  when NVML reports the links ending at a switch (two SXM GPUs joined by all their links are a slice
  of a switch board); PCIe cards joined in pairs are bridged; otherwise a direct mesh. Uneven NVLink (a DGX-1 style hybrid cube mesh) is modelled as PCIe, with a warning.
- Bandwidth per GPU per direction: NVSwitch and bridge — links × per-link bandwidth; mesh — links to
  all peers × per-link; PCIe — GT/s × lanes / 8 (`hardware/data/links.json`).
- Network: the RDMA ports at their highest line rate that share a PCIe switch with a GPU (PIX/PXB, the
  rail NICs NCCL picks); without that placement, every active RDMA port at the highest rate; without
  RDMA, the fastest physical Ethernet ports.
- What a node cannot see — NVLink SHARP, the size of a multi-tray NVLink domain (NVL72) — comes from
  the cluster preset the node matches (same GPU, count, fabric and bandwidth), and is marked so.
"""

from __future__ import annotations

import json
from collections import Counter
from functools import lru_cache
from importlib import resources
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from parallelplan.common.validation import describe_validation_error
from parallelplan.hardware.detect.facts import NicFacts, NodeFacts, nvlink_count, shares_pcie_switch
from parallelplan.hardware.errors import HardwareError
from parallelplan.hardware.presets import cluster_preset, gpu_by_name, list_clusters, list_gpus, preset_cluster_fields
from parallelplan.hardware.spec import ClusterSpec, GPUSpec
from parallelplan.hardware.units import parse_rate


@lru_cache(maxsize=1)
def _links() -> dict[str, Any]:
    return json.loads(resources.files("parallelplan.hardware").joinpath("data", "links.json").read_text())


def nvlink_link_bandwidth(generation: int) -> float | None:
    """One NVLink link of ``generation``, bytes/s per direction (None for a generation not in the data)."""
    rate = _links()["nvlink_per_link"]["per_direction"].get(str(generation))
    return None if rate is None else parse_rate(rate)


def pcie_bandwidth(generation: int, lanes: int) -> float | None:
    """GT/s × lanes / 8 bytes/s per direction (the presets' convention), None for an unknown generation."""
    rate = _links()["pcie_transfer_rate"]["gt_per_s"].get(str(generation))
    return None if rate is None else rate * 1e9 * lanes / 8


def nvml_nvlink_generation(version: int) -> int | None:
    """NVML's ``nvmlNvlinkVersion_t`` (``NVML_NVLINK_VERSION_4_0`` = 6, ...) → the NVLink generation,
    read from the constants' names in the installed bindings."""
    import pynvml

    for name in dir(pynvml):
        if name.startswith("NVML_NVLINK_VERSION_") and getattr(pynvml, name) == version and name[-1].isdigit():
            return int(name.removeprefix("NVML_NVLINK_VERSION_").split("_")[0])
    return None


def architecture_nvlink_generation(gpu: GPUSpec) -> int | None:
    """The NVLink generation of the GPU presets of ``gpu``'s architecture (A100 PCIe: Ampere → 3), for
    PCIe cards whose own preset has no NVLink because the bridge is optional."""
    generations = {load.nvlink_generation for load in map(gpu_by_name, list_gpus())
                   if load.architecture == gpu.architecture and load.nvlink_generation}
    return generations.pop() if len(generations) == 1 else None


class Detection(BaseModel):
    """The reading of one node and what it means. ``cluster`` is None when the node cannot be modelled,
    with ``problem`` saying why and what to do."""

    model_config = ConfigDict(frozen=True)

    facts: NodeFacts
    gpu_preset: str | None = None
    links_per_gpu: int = 0
    nvlink_generation: int | None = None
    network_ports: tuple[str, ...] = ()
    matching_preset: str | None = None
    provenance: dict[str, str] = {}
    warnings: tuple[str, ...] = ()
    cluster: ClusterSpec | None = None
    problem: str | None = None

    @property
    def fabric(self) -> str | None:
        return None if self.cluster is None else self.cluster.node.intra_node_fabric

    @property
    def nvlink_domain_size(self) -> int:
        return 1 if self.cluster is None else self.cluster.nvlink_domain_size

    @property
    def intra_node_bandwidth(self) -> float:
        return 0.0 if self.cluster is None else self.cluster.node.intra_node_bandwidth


class _Unmodelled(Exception):
    """A node the cost model cannot represent; the message is the user-facing reason."""


def _gpu(facts: NodeFacts) -> tuple[str, GPUSpec]:
    names = Counter(g.name for g in facts.gpus)
    if len(names) > 1:
        listing = ", ".join(f"{count}x {name}" for name, count in names.items())
        raise _Unmodelled(f"mixed GPU models ({listing}); the planner models identical GPUs: describe the GPUs "
                          "you will train on with --cluster PRESET or a cluster file")
    if any(g.mig_enabled for g in facts.gpus):
        raise _Unmodelled("MIG is enabled: the planner places work on whole GPUs; disable MIG "
                          "(nvidia-smi -mig 0) or give --cluster")
    name = facts.gpus[0].name
    try:
        gpu = gpu_by_name(name)
    except HardwareError:
        raise _Unmodelled(f"GPU {name!r} has no preset (GPU presets: {', '.join(list_gpus())}); write a cluster file "
                          "whose node.gpu spells out its GPUSpec and pass it with --cluster") from None
    memory = {g.memory_bytes for g in facts.gpus} - {None}
    if len(memory) == 1 and memory != {gpu.memory_bytes}:
        gpu = gpu.model_copy(update={"memory_bytes": memory.pop(), "memory_basis": "NVML memory.total on this node"})
    return gpu.name, gpu


def _groups(matrix: tuple[tuple[str, ...], ...]) -> list[list[int]]:
    """Connected components of the NVLink graph."""
    seen: set[int] = set()
    groups = []
    for start in range(len(matrix)):
        if start in seen:
            continue
        group, todo = [], [start]
        while todo:
            i = todo.pop()
            if i in seen:
                continue
            seen.add(i)
            group.append(i)
            todo += [j for j, code in enumerate(matrix[i]) if j != i and nvlink_count(code)]
        groups.append(sorted(group))
    return groups


def _fabric(facts: NodeFacts, gpu: GPUSpec, notes: dict[str, str], warnings: list[str]) -> tuple[str, int, int, int | None]:
    """(fabric, NVLink group size, links per GPU, NVLink generation)."""
    matrix = facts.gpu_connections
    if len(facts.gpus) > 1 and matrix is None:
        warnings.append("the GPU connections could not be read (neither NVML nor nvidia-smi topo -m): modelled as PCIe")
        return "pcie", 1, 0, None
    groups = _groups(matrix) if matrix else [[0]]
    pair_links = {nvlink_count(matrix[i][j]) for g in groups for i in g for j in g if i != j} if matrix else set()
    if not pair_links:
        return "pcie", 1, 0, None
    sizes = {len(g) for g in groups}
    if len(sizes) > 1 or len(pair_links) > 1 or 0 in pair_links:
        warnings.append("NVLink joins the GPUs unevenly (not equal, fully connected groups): TP and CP are "
                        "priced at PCIe bandwidth; describe the node in a cluster file for a finer model")
        return "pcie", 1, 0, None
    size, links = sizes.pop(), pair_links.pop()
    generation = _generation(facts, gpu, notes)
    max_links = round(gpu.nvlink_bandwidth / nvlink_link_bandwidth(generation)) if generation and gpu.nvlink_bandwidth else None
    switched = any(link.remote_type == "switch" for g in facts.gpus for link in g.nvlinks or ())
    if switched or (max_links is not None and links * (size - 1) > max_links):
        notes["intra_node_fabric"] = ("NVML: links end at NVSwitch" if switched else
                                      f"{links} links to each of {size - 1} peers exceed the {max_links} links of one {gpu.display_name}")
        return "nvswitch", size, links, generation
    if size == 2 and "pcie" in gpu.form_factor.lower():
        notes["intra_node_fabric"] = f"NVLink only within pairs ({links} links) of PCIe cards: bridged"
        return "nvlink_bridge", 2, links, generation
    if size == 2 and links == max_links:
        notes["intra_node_fabric"] = (f"2 {gpu.form_factor} GPUs joined by all their {links} links: a slice of "
                                      "an NVSwitch baseboard")
        return "nvswitch", 2, links, generation
    notes["intra_node_fabric"] = f"direct NVLink mesh of {size} GPUs, {links} links per pair"
    return "nvlink_mesh", size, links * (size - 1), generation


def _generation(facts: NodeFacts, gpu: GPUSpec, notes: dict[str, str]) -> int | None:
    versions = {link.version for g in facts.gpus for link in g.nvlinks or () if link.active and link.version}
    from_nvml = {nvml_nvlink_generation(v) for v in versions} - {None}
    if gpu.nvlink_generation:
        if from_nvml and from_nvml != {gpu.nvlink_generation}:
            notes["nvlink_generation"] = (f"NVML reports NVLink {sorted(from_nvml)}, the {gpu.name} preset "
                                          f"{gpu.nvlink_generation}; the preset's is used")
        return gpu.nvlink_generation
    if len(from_nvml) == 1:
        notes["nvlink_generation"] = "NVML nvmlDeviceGetNvLinkVersion"
        return from_nvml.pop()
    generation = architecture_nvlink_generation(gpu)
    if generation:
        notes["nvlink_generation"] = f"NVLink generation of the {gpu.architecture} presets"
    return generation


def _pcie(facts: NodeFacts, gpu: GPUSpec, notes: dict[str, str]) -> float:
    links = [(g.pcie_generation, g.pcie_width) for g in facts.gpus]
    rates = [pcie_bandwidth(gen, width) for gen, width in links if gen and width]
    if len(rates) == len(links) and None not in rates:
        slowest = min(links, key=lambda link: pcie_bandwidth(*link))
        notes["intra_node_bandwidth"] = f"PCIe Gen{slowest[0]} x{slowest[1]} (slowest GPU link, NVML/nvidia-smi)"
        return min(rates)
    notes["intra_node_bandwidth"] = f"PCIe of the {gpu.name} preset (link generation and width not read)"
    return gpu.pcie_bandwidth


def _network(nics: tuple[NicFacts, ...] | None, notes: dict[str, str]) -> tuple[list[NicFacts], str]:
    """The ports that carry GPU traffic off the node, and the fabric they form."""
    if not nics:
        notes["nics_per_node"] = "no network port was read"
        return [], "ethernet"
    usable = [n for n in nics if n.active is not False and n.rate]
    rdma = [n for n in usable if n.kind in ("infiniband", "roce")]
    rails = [n for n in rdma if shares_pcie_switch(n.gpu_connections)]
    chosen = rails or rdma or [n for n in usable if n.kind == "ethernet"]
    if not chosen:
        unknown = [n.name for n in nics if not n.rate]
        notes["nics_per_node"] = ("no active network port with a known line rate"
                                  + (f" ({', '.join(unknown)}: no rate in the reading)" if unknown else ""))
        return [], "ethernet"
    top = max(n.rate for n in chosen)
    chosen = [n for n in chosen if n.rate == top]
    why = ("RDMA ports sharing a PCIe switch with a GPU" if rails else "active RDMA ports" if rdma else "Ethernet ports")
    notes["nics_per_node"] = f"{why} at {top * 8 / 1e9:.0f} Gb/s: {', '.join(n.name for n in chosen)}"
    kinds = {n.kind for n in chosen}
    return chosen, "infiniband" if kinds == {"infiniband"} else "roce" if "ethernet" not in kinds else "ethernet"


def _node_key(fields: dict[str, Any]) -> tuple[Any, ...]:
    node = fields["node"]
    gpu = node["gpu"] if isinstance(node["gpu"], str) else node["gpu"]["name"]
    return (gpu, node["gpus_per_node"], node["intra_node_fabric"], parse_rate(node["intra_node_bandwidth"]))


def matching_preset(fields: dict[str, Any]) -> str | None:
    """The cluster preset whose node has the same GPU, GPU count, fabric and bandwidth (and, where the
    node's network was read, the same ports), else None."""
    key, node = _node_key(fields), fields["node"]
    same = {name: preset_cluster_fields(name)["node"] for name in list_clusters()
            if _node_key(preset_cluster_fields(name)) == key}
    networked = [name for name, base in same.items() if (base["nics_per_node"], parse_rate(base.get("nic_bandwidth", 0)))
                 == (node["nics_per_node"], node["nic_bandwidth"])]
    return (networked or list(same) or [None])[0]


def _spec_fields(facts: NodeFacts, gpu: GPUSpec, notes: dict[str, str], warnings: list[str]) -> tuple[dict[str, Any], Any]:
    fabric, size, links, generation = _fabric(facts, gpu, notes, warnings)
    if fabric == "pcie":
        bandwidth = _pcie(facts, gpu, notes)
    else:
        per_link = nvlink_link_bandwidth(generation) if generation else None
        if per_link is None:
            raise _Unmodelled(f"the NVLink generation of {gpu.name} is unknown, so its {links} links have no "
                              "bandwidth; give --cluster")
        bandwidth = links * per_link
        notes["intra_node_bandwidth"] = f"{links} NVLink {generation} links x {per_link / 1e9:.0f} GB/s per direction"
    ports, network = _network(facts.nics, notes)
    numa = [g.numa_node for g in facts.gpus]
    host_numa = facts.host.numa_nodes
    known_numa = all(n is not None for n in numa)
    numa_nodes = host_numa or (max(numa) + 1 if known_numa else 1)
    notes["numa_nodes"] = ("sysfs /sys/devices/system/node" if host_numa else
                           "highest GPU NUMA node + 1 (host not read)" if known_numa else "not read: 1 assumed")
    node = {
        "name": f"{len(facts.gpus)}x {gpu.display_name} ({fabric})", "gpu": gpu.model_dump(),
        "gpus_per_node": len(facts.gpus), "intra_node_fabric": fabric, "intra_node_bandwidth": bandwidth,
        "nics_per_node": len(ports), "nic_bandwidth": ports[0].rate if ports else 0.0, "numa_nodes": numa_nodes,
        "gpu_numa_nodes": numa if known_numa and max(numa) < numa_nodes else None,
        "cpu": facts.host.cpu, "host_memory_bytes": facts.host.memory_bytes,
    }
    fields = {"name": "detected", "node": node, "num_nodes": 1, "inter_node_fabric": network,
              "nvlink_domain_size": size, "gpudirect_rdma": False, "in_network_reduction": False}
    return fields, (ports, generation, links)


def _from_preset(fields: dict[str, Any], facts: NodeFacts, ports: list[NicFacts], notes: dict[str, str]) -> str | None:
    """Fill what the node cannot show from the preset it matches: NVLink SHARP, an NVLink domain that
    spans trays, and GPUDirect RDMA when the snapshot did not record the host."""
    preset = matching_preset(fields)
    base = preset_cluster_fields(preset) if preset else None
    unrated_rails = [n.name for n in facts.nics or () if not n.rate and shares_pcie_switch(n.gpu_connections)]
    if base is not None and not ports and base["node"]["nics_per_node"] and (unrated_rails or facts.nics is None):
        node = fields["node"]
        node["nics_per_node"] = len(unrated_rails) or base["node"]["nics_per_node"]
        node["nic_bandwidth"] = parse_rate(base["node"]["nic_bandwidth"])
        fields["inter_node_fabric"] = base["inter_node_fabric"]
        notes["nics_per_node"] = ((f"{len(unrated_rails)} ports share a PCIe switch with a GPU ({', '.join(unrated_rails)}); "
                                   "their rate and fabric were not recorded") if unrated_rails else
                                  "no network port was recorded") + f": taken from preset {preset}"
        rdma_ports = fields["inter_node_fabric"] in ("infiniband", "roce")
    else:
        rdma_ports = any(p.kind in ("infiniband", "roce") for p in ports)
    evidence = facts.host.gpudirect_rdma
    if evidence:
        fields["gpudirect_rdma"] = rdma_ports
        notes["gpudirect_rdma"] = f"peer-memory module loaded ({', '.join(evidence)})" + ("" if rdma_ports else ", but no RDMA port")
    elif evidence is not None:
        notes["gpudirect_rdma"] = ("no nvidia-peermem / nv_peer_mem (the files NCCL checks are absent): off; NCCL "
                                   "can also reach GPU memory through DMA-BUF (open kernel modules, Linux >= 5.12), "
                                   "which this reading cannot establish")
    elif base is not None:
        fields["gpudirect_rdma"] = base["gpudirect_rdma"] and rdma_ports
        notes["gpudirect_rdma"] = f"host not recorded: taken from preset {preset}"
    else:
        notes["gpudirect_rdma"] = "host not recorded: off"
    c2c = base["node"].get("c2c_bandwidth") if base is not None else None
    if c2c and not any(g.c2c_enabled is False for g in facts.gpus):
        fields["node"]["c2c_bandwidth"] = parse_rate(c2c)
        notes["c2c_bandwidth"] = f"NVLink-C2C rate of preset {preset} (NVML reports the mode, not the rate)"
    if base is not None:
        fields["in_network_reduction"] = base["in_network_reduction"]
        notes["in_network_reduction"] = f"not visible to NVML: taken from preset {preset}"
        if base["nvlink_domain_size"] > fields["node"]["gpus_per_node"] == base["node"]["gpus_per_node"]:
            fields["nvlink_domain_size"] = base["nvlink_domain_size"]
            notes["nvlink_domain_size"] = (f"NVLink continues across {base['nvlink_domain_size'] // base['node']['gpus_per_node']} "
                                           f"nodes in preset {preset} (a node sees only its own GPUs)")
    else:
        notes["in_network_reduction"] = "not visible to NVML and no preset matches: off"
    return preset


def classify(facts: NodeFacts) -> Detection:
    """Interpret one node's facts; never raises for a node it cannot model (``problem`` says why)."""
    notes: dict[str, str] = {}
    warnings = list(facts.warnings)
    refused = sorted({f"GPU{i}-GPU{j} {code}" for i, row in enumerate(facts.p2p or ()) for j, code in enumerate(row)
                      if i < j and code != "OK"})
    if refused:
        warnings.append(f"peer-to-peer access is not supported between {', '.join(refused[:4])}"
                        f"{' ...' if len(refused) > 4 else ''}: NCCL stages those transfers through host memory, "
                        "slower than the link bandwidth modelled")
    if any(g.virtualization == "passthrough" for g in facts.gpus):
        warnings.append("GPU passed through to a virtual machine: NVLinks and PCIe placement may be hidden")
    try:
        preset_gpu, gpu = _gpu(facts)
        notes["gpu"] = f"GPU name {facts.gpus[0].name!r} is preset {preset_gpu}"
        fields, (ports, generation, links) = _spec_fields(facts, gpu, notes, warnings)
        matched = _from_preset(fields, facts, ports, notes)
        if matched:
            fields["node"]["name"] += f", like {cluster_preset(matched).cluster['node']['name']}"
        if fields["node"]["nics_per_node"] == 0:
            warnings.append("no network port for GPU traffic was found: plans stay on this node (--nodes 1)")
        fields["source"] = [facts.recorded or "detected on this machine", "read from: " + ", ".join(facts.sources)]
        fields["notes"] = [f"{k}: {v}" for k, v in notes.items()] + warnings
        try:
            cluster = ClusterSpec.model_validate(fields)
        except ValidationError as err:
            raise _Unmodelled(describe_validation_error(err, "detected node")) from None
    except _Unmodelled as why:
        return Detection(facts=facts, provenance=notes, warnings=tuple(warnings), problem=str(why))
    return Detection(facts=facts, gpu_preset=preset_gpu, links_per_gpu=links, nvlink_generation=generation,
                     network_ports=tuple(p.name for p in ports), matching_preset=matched, provenance=notes,
                     warnings=tuple(warnings), cluster=cluster)
