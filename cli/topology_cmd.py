"""`plan topology`: a cluster as the cost model sees it — GPU, node, network, the bandwidth tiers and the
cost of collectives over growing groups (`constraints.describe_topology`) — for a preset or file given
with ``--cluster``, or for the node this machine is (read through NVML, sysfs and nvidia-smi; see
`hardware.detect`), shown first as a connection matrix like ``nvidia-smi topo -m``.

``--json`` prints the `constraints.TopologyReport`; for a detected node, ``{"detection": Detection,
"topology": TopologyReport | null}``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from parallelplan.cli.format import binary_size, gib, heading, quiet, table
from parallelplan.cli.options import DETECT_REF, cost_model, detection_snapshot, load_target_cluster

if TYPE_CHECKING:
    from parallelplan.constraints import TopologyReport
    from parallelplan.hardware import Detection


@click.command()
@click.option("--cluster", "-c", "cluster_ref",
              help="Cluster preset (see `plan presets`) or a cluster file [default: this machine's node].")
@click.option("--nodes", type=click.IntRange(min=1), help="Number of nodes [default: the cluster's; 1 detected node].")
@click.option("--gpus", type=click.IntRange(min=1), help="Total GPUs (whole nodes, or part of one node).")
@click.option("--snapshot", type=click.Path(file_okay=False, path_type=Path),
              help="Read a recorded snapshot folder instead of this machine (see --record).")
@click.option("--record", type=click.Path(path_type=Path),
              help="Also write what was read on this machine to this new folder (a snapshot to share or replay).")
@click.option("--message", "message_mib", type=click.IntRange(min=1), default=1024, show_default=True,
              help="Collective message size (MiB).")
@click.option("--efficiency", "efficiency_file", type=click.Path(dir_okay=False, path_type=Path),
              help="Efficiency-factor overrides (bus efficiencies, latencies).")
@click.option("--calibration", "calibration_file", type=click.Path(dir_okay=False, path_type=Path),
              envvar="PLAN_CALIBRATION", show_envvar=True,
              help="A calibration profile (`plan calibrate RUNS --out FILE`): its fitted bus efficiencies price the "
                   "collectives; --efficiency overrides it.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def topology(cluster_ref: str | None, nodes: int | None, gpus: int | None, snapshot: Path | None, record: Path | None,
             message_mib: int, efficiency_file: Path | None, calibration_file: Path | None, as_json: bool) -> None:
    """The interconnect of this machine's node, or of a cluster, and what collectives cost on it.

    \b
    Examples:
      plan topology                          # this machine: NVLink/NVSwitch, PCIe, NUMA, NICs
      plan topology --nodes 4 --json         # four such nodes
      plan topology --record my-node/        # ... and save what was read, to share or replay
      plan topology --snapshot my-node/      # replay a recorded node
      plan topology --cluster dgx-h100 --nodes 4
      plan topology --cluster gb200-nvl72 --gpus 144 --message 256
    """
    from parallelplan.constraints import describe_topology
    from parallelplan.hardware import DetectionError, detect_node, record_snapshot
    from parallelplan.hardware.detect import sized_cluster

    efficiency = cost_model(efficiency_file, calibration_file)["efficiency"]
    if cluster_ref not in (None, DETECT_REF):
        if snapshot or record:
            raise DetectionError("--snapshot and --record read a node; they do not go with --cluster")
        report = describe_topology(load_target_cluster(cluster_ref, nodes, gpus), message_bytes=message_mib * 2**20,
                                   efficiency=efficiency)
        click.echo(report.model_dump_json(indent=2) if as_json else render(report))
        return
    if snapshot and record:
        raise DetectionError("--record reads this machine; --snapshot replays another: give one of them")
    if record:
        record_snapshot(record)
        if not quiet():
            click.echo(f"note: recorded this node in {record}/ (replay it with --snapshot {record})", err=True)
    source = snapshot or record or detection_snapshot()
    detection = detect_node(source)
    report = None
    if detection.cluster is not None:
        report = describe_topology(sized_cluster(detection, nodes=nodes, gpus=gpus),
                                   message_bytes=message_mib * 2**20, efficiency=efficiency)
    if as_json:
        from parallelplan.cli.answers import NodeTopology

        click.echo(NodeTopology(detection=detection, topology=report).model_dump_json(indent=2))
    else:
        click.echo(render_detection(detection))
        if report is not None:
            click.echo("\n" + render(report))
    if detection.cluster is None:
        raise DetectionError(f"the node cannot be modelled: {detection.problem}")


def render_detection(detection: Detection) -> str:
    """The node as read: GPUs, the connection matrix with the network ports, and what each modelled
    fact was taken from."""
    facts = detection.facts
    where = facts.recorded or "this machine"
    lines = [heading(f"node read from {where} ({', '.join(facts.sources)})")]
    gpu_rows = [(f"GPU{g.index}", g.name, gib(g.memory_bytes) if g.memory_bytes else "?",
                 f"Gen{g.pcie_generation} x{g.pcie_width}" if g.pcie_generation and g.pcie_width else "?",
                 "?" if g.numa_node is None else str(g.numa_node), g.cpu_affinity or "?", g.bus_id or "?")
                for g in facts.gpus]
    lines.append(table(["GPU", "name", "memory", "PCIe max", "NUMA", "CPU affinity", "bus id"], gpu_rows))
    ports = [n for n in facts.nics or () if n.gpu_connections or n.name in detection.network_ports]
    if facts.gpu_connections:
        names = [f"GPU{g.index}" for g in facts.gpus]
        columns = names + [f"NIC{k}" for k in range(len(ports))]
        rows = [(name, *row, *(n.gpu_connections[i] if n.gpu_connections else "?" for n in ports))
                for i, (name, row) in enumerate(zip(names, facts.gpu_connections, strict=True))]
        lines += ["", table(["", *columns], rows)]
    if ports:
        nic_rows = [(f"NIC{k}", n.name, n.kind or "?", f"{n.rate * 8 / 1e9:.0f} Gb/s" if n.rate else "?",
                     {True: "active", False: "down", None: "?"}[n.active], "yes" if n.name in detection.network_ports else "")
                    for k, n in enumerate(ports)]
        lines += ["", table(["NIC", "device", "kind", "rate", "state", "carries GPU traffic"], nic_rows)]
    if detection.cluster is not None:
        lines += ["", f"modelled as: {detection.cluster.node.name}, NVLink domain {detection.nvlink_domain_size}, "
                      f"{detection.intra_node_bandwidth / 1e9:.0f} GB/s per GPU per direction"
                  + (f"; matches preset {detection.matching_preset}" if detection.matching_preset else "")]
    if not quiet():
        lines += ["", table(["fact", "taken from"], list(detection.provenance.items()))]
        lines += [f"warning: {w}" for w in detection.warnings]
    return "\n".join(lines)


def render(report: TopologyReport) -> str:
    c = report.cluster
    node, gpu = c.node, c.gpu
    peaks = ", ".join(f"{p} {v / 1e12:.0f}" for p, v in gpu.peak_flops.items())
    facts = [
        ("GPU", f"{gpu.name}: {gib(gpu.memory_bytes)}, HBM {gpu.hbm_bandwidth / 1e12:.2f} TB/s, dense TFLOP/s {peaks}"),
        ("node", f"{node.name}: {node.gpus_per_node} GPUs, {node.intra_node_fabric} {node.intra_node_bandwidth / 1e9:.0f} GB/s "
                 f"per GPU per direction"),
        ("NICs", f"{node.nics_per_node} x {node.nic_bandwidth * 8 / 1e9:.0f} Gb/s "
                 f"({node.nic_bandwidth_per_gpu * 8 / 1e9:.0f} Gb/s per GPU), {c.inter_node_fabric}, "
                 f"GPUDirect RDMA {'yes' if c.gpudirect_rdma else 'no'}, NVLink SHARP "
                 f"{'yes' if c.in_network_reduction else 'no'}, IB SHARP {'yes' if c.ib_sharp else 'no'}"),
        ("NUMA", f"{node.numa_nodes} node(s)" + (f", GPU -> NUMA {list(node.gpu_numa_nodes)}" if node.gpu_numa_nodes else "")),
        ("cluster", f"{c.num_nodes} node(s), {c.total_gpus} GPUs, NVLink domain {c.nvlink_domain_gpus} GPUs"),
    ]
    if node.cpu:
        facts.insert(2, ("CPU", node.cpu + (f", {gib(node.host_memory_bytes)} host memory" if node.host_memory_bytes else "")))
    lines = [heading(c.name), table(["part", "facts"], facts), ""]
    tiers = [(t.name, t.gpus, f"{t.bandwidth / 1e9:.0f}", f"{t.effective_bandwidth / 1e9:.0f}", f"{t.latency_s * 1e6:.1f}")
             for t in report.tiers]
    lines.append(table(["tier", "GPUs", "GB/s per GPU per dir", "NCCL-achievable GB/s", "latency us"], tiers,
                       right=(1, 2, 3, 4)))
    size = f"{report.message_bytes / 2**20:.0f} MiB"
    rows = [(g.size, g.domains, f"{1e3 * g.all_reduce_s:.2f}", f"{g.bus_bandwidth / 1e9:.0f}", f"{1e3 * g.all_gather_s:.2f}",
             f"{1e3 * g.all_to_all_s:.2f}") for g in report.groups]
    lines += ["", table(["group GPUs", "domains", f"all-reduce {size} ms", "bus GB/s", "all-gather ms", "all-to-all ms"],
                        rows, right=(0, 1, 2, 3, 4, 5))]
    lines += ["", protocols_text(report)]
    if not quiet():
        from parallelplan.constraints.collectives import ib_sharp, nvlink_sharp

        reduction = [name for name, on in (("NVLink SHARP inside the domain", nvlink_sharp(report.cluster)),
                                           ("IB SHARP across nodes", ib_sharp(report.cluster))) if on]
        lines += ["", "Groups are consecutive ranks (as TP, then CP and DP, are laid out); a group spanning several "
                      "domains runs a ring inside each and one per GPU across them over its own NIC"
                  + (f"; all-reduces use {' and '.join(reduction)} where faster" if reduction else "")
                  + ". Bus bandwidth is nccl-tests' busbw, comparable with all_reduce_perf."]
    return "\n".join(lines)


def protocols_text(report: TopologyReport) -> str:
    """Which NCCL protocol a ring all-reduce runs at which size, per group the report spans."""
    from parallelplan.constraints.collectives import NCCL_PROTOCOLS

    enabled = report.cluster.nccl_protocols
    per_group: dict[int, list[str]] = {}
    for r in report.protocols:
        span = f"{binary_size(r.from_bytes)}–{binary_size(r.to_bytes)}" if r.to_bytes else f"{binary_size(r.from_bytes)} and up"
        per_group.setdefault(r.size, []).append(f"{NCCL_PROTOCOLS[r.protocol]} {span}")
    where = "; ".join(f"over {size} GPUs {', '.join(spans)}" for size, spans in per_group.items())
    return (f"NCCL protocol of a ring all-reduce ({'the cluster sets NCCL_PROTO' if enabled else 'NCCL default'}): "
            f"{where}")
