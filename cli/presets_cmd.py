"""`plan presets`: the built-in models, GPUs, clusters and software stacks."""

from __future__ import annotations

import json

import click

from parallelplan.cli.format import count, table


@click.command()
@click.option("--kind", type=click.Choice(["all", "models", "gpus", "clusters", "stacks"]), default="all", show_default=True,
              help="Which presets to list.")
@click.option("--json", "as_json", is_flag=True, help="Print the presets as JSON.")
def presets(kind: str, as_json: bool) -> None:
    """List the built-in model, GPU and cluster presets and the software stacks (--stack).

    \b
    Examples:
      plan presets
      plan presets --kind gpus
      plan presets --kind models --json
      plan presets --kind stacks
    """
    sections = {"models": _models, "gpus": _gpus, "clusters": _clusters, "stacks": _stacks}
    chosen = list(sections) if kind == "all" else [kind]
    data = {name: sections[name]() for name in chosen}
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    out = []
    if "models" in data:
        rows = [(m["name"], m["architecture"] + (" (ESTIMATE)" if m["is_estimate"] else ""), count(m["total_params"]),
                 count(m["active_params"]) if m["active_params"] != m["total_params"] else "", ", ".join(m["aliases"]))
                for m in data["models"]]
        out.append(table(["model", "architecture", "params", "active", "aliases"], rows, right=(2, 3)))
    if "gpus" in data:
        rows = [(g["name"], f"{g['memory_bytes'] / 2**30:.1f}", f"{g['peak_flops'].get('bf16', 0) / 1e12:.0f}",
                 f"{g['peak_flops']['fp8'] / 1e12:.0f}" if "fp8" in g["peak_flops"] else "-",
                 f"{g['hbm_bandwidth'] / 1e12:.2f}", f"{g['nvlink_bandwidth'] / 1e9:.0f}" if g["nvlink_bandwidth"] else "-")
                for g in data["gpus"]]
        out.append(table(["gpu", "memory GiB", "bf16 TFLOP/s", "fp8 TFLOP/s", "HBM TB/s", "NVLink GB/s/dir"],
                         rows, right=(1, 2, 3, 4, 5)))
    if "clusters" in data:
        rows = [(c["name"], c["node"]["gpu"]["name"], f"{c['num_nodes']} x {c['node']['gpus_per_node']}",
                 c["node"]["intra_node_fabric"], c["inter_node_fabric"], f"{c['nic_gbit_s_per_gpu']:.0f}",
                 c["nvlink_domain_size"])
                for c in data["clusters"]]
        out.append(table(["cluster", "gpu", "nodes x gpus", "in node", "between nodes", "NIC Gb/s per GPU",
                          "NVLink domain"], rows, right=(5, 6)))
    if "stacks" in data:
        rows = [(name, s["attention_kernel_name"], f"{s['attention']['hopper']:g}", ", ".join(s["attention_kernels"]),
                 ", ".join(f"{kind} {value:g}" for kind, value in s["overlap"].items()), ", ".join(s["fp8"]["recipes"]),
                 ", ".join(s["targets"]) or "-")
                for name, s in data["stacks"].items()]
        out.append(table(["stack", "attention kernel", "attention, Hopper", "attention kernels offered",
                          "overlap (fraction hidden)", "fp8 recipes (default first)", "launch targets"], rows))
    click.echo("\n\n".join(out))


def _models() -> list[dict]:
    from parallelplan.models import get_preset, list_presets

    rows = []
    for name in list_presets():
        preset = get_preset(name)
        spec = preset.to_spec()
        rows.append({
            "name": name, "display_name": preset.display_name, "aliases": list(preset.aliases),
            "architecture": spec.architecture, "is_estimate": spec.is_estimate,
            "total_params": spec.total_params, "active_params": spec.active_params,
            "official": preset.official.model_dump() if preset.official else None,
            "verification": preset.verification, "source": list(preset.source),
        })
    return rows


def _gpus() -> list[dict]:
    from parallelplan.hardware import list_gpus, load_gpu
    from parallelplan.hardware.presets import gpu_aliases

    return [{**load_gpu(n).model_dump(), "aliases": list(gpu_aliases(n))} for n in list_gpus()]


def _clusters() -> list[dict]:
    from parallelplan.hardware import ClusterSpec, list_clusters
    from parallelplan.hardware.presets import cluster_aliases, preset_cluster_fields

    rows = []
    for name in list_clusters():
        cluster = ClusterSpec.model_validate(preset_cluster_fields(name))
        rows.append({**cluster.model_dump(), "aliases": list(cluster_aliases(name)),
                     "nic_gbit_s_per_gpu": cluster.node.nic_bandwidth_per_gpu * 8 / 1e9})
    return rows


def _stacks() -> dict[str, dict]:
    """The software stacks of constraints/data/stacks.json, with their factors as the cost model uses them."""
    from parallelplan.constraints.efficiency import Efficiency, stacks

    eff = Efficiency.default()
    return {name: {**stack, "attention": eff.attention[name], "overlap": eff.overlap[name]} for name, stack in stacks().items()}
