"""`plan topology`: a cluster as the cost model sees it — GPU, node, network, the bandwidth tiers and the
cost of collectives over growing groups (`constraints.describe_topology`). ``--json`` prints the
`constraints.TopologyReport`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from cli.format import gib, heading, quiet, table
from cli.options import load_efficiency, load_target_cluster

if TYPE_CHECKING:
    from constraints import TopologyReport


@click.command()
@click.option("--cluster", "-c", "cluster_ref",
              help="Cluster preset (see `plan presets`) or a cluster file [default: dgx-h100, said on stderr].")
@click.option("--nodes", type=click.IntRange(min=1), help="Number of nodes [default: the cluster's].")
@click.option("--gpus", type=click.IntRange(min=1), help="Total GPUs (whole nodes, or part of one node).")
@click.option("--message", "message_mib", type=click.IntRange(min=1), default=1024, show_default=True,
              help="Collective message size (MiB).")
@click.option("--efficiency", "efficiency_file", type=click.Path(dir_okay=False, path_type=Path),
              help="Efficiency-factor overrides (bus efficiencies, latencies).")
@click.option("--json", "as_json", is_flag=True, help="Print the constraints.TopologyReport as JSON.")
def topology(cluster_ref: str | None, nodes: int | None, gpus: int | None, message_mib: int,
             efficiency_file: Path | None, as_json: bool) -> None:
    """The interconnect of a cluster and what collectives cost on it.

    \b
    Examples:
      plan topology --cluster dgx-h100 --nodes 4
      plan topology --cluster gb200-nvl72 --gpus 144 --message 256
      plan topology --cluster my-cluster.yaml --json
    """
    from constraints import describe_topology

    cluster = load_target_cluster(cluster_ref, nodes, gpus)
    report = describe_topology(cluster, message_bytes=message_mib * 2**20, efficiency=load_efficiency(efficiency_file))
    click.echo(report.model_dump_json(indent=2) if as_json else render(report))


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
                 f"GPUDirect RDMA {'yes' if c.gpudirect_rdma else 'no'}, in-network reduction "
                 f"{'yes' if c.in_network_reduction else 'no'}"),
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
    if not quiet():
        lines += ["", "Groups are consecutive ranks (as TP, then CP and DP, are laid out); a group spanning several "
                      "domains runs a ring inside each and one per GPU across them over its own NIC. Bus bandwidth is "
                      "nccl-tests' busbw, comparable with all_reduce_perf."]
    return "\n".join(lines)
