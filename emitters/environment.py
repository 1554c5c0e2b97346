"""NCCL and CUDA environment recommendations derived from the cluster, each with its one-line reason, and
their rendering as shell exports. Variable names and values: NCCL user guide's environment variables and
the `NCCL_PARAM` defaults in NCCL's source (see the research notes' table); each recommendation is one
NCCL would not pick by itself, or one a framework asserts."""

from __future__ import annotations

import shlex
from dataclasses import dataclass

from parallelplan.constraints import Plan
from parallelplan.constraints.collectives import NCCL_PROTOCOLS, ib_sharp, nvlink_sharp
from parallelplan.hardware import ClusterSpec


@dataclass(frozen=True)
class Variable:
    name: str
    value: str
    reason: str


def nccl_environment(cluster: ClusterSpec) -> list[Variable]:
    """The NCCL settings the cluster's fabric calls for."""
    out = []
    node = cluster.node
    if cluster.num_nodes > 1 and cluster.inter_node_fabric in ("infiniband", "roce"):
        out.append(Variable("NCCL_IB_HCA", "mlx5", f"use the RDMA NICs ({cluster.inter_node_fabric}) for inter-node "
                                                   "traffic, never the management Ethernet"))
        if cluster.gpudirect_rdma and 2 * node.nics_per_node >= node.gpus_per_node:
            out.append(Variable("NCCL_NET_GDR_LEVEL", "PXB", "GPUDirect RDMA between a GPU and a NIC behind the same PCIe "
                                                              "switches (the node has one NIC per GPU or per GPU pair)"))
    if nvlink_sharp(cluster):
        out.append(Variable("NCCL_NVLS_ENABLE", "1", "NVLink SHARP: all-reduce inside the NVSwitch "
                                                     "(NCCL's default 2 enables it only where it detects support)"))
    if ib_sharp(cluster):
        out.append(Variable("NCCL_COLLNET_ENABLE", "1", "IB SHARP: all-reduce inside the InfiniBand switches through "
                                                         "NCCL's CollNet (needs the SHARP plugin and aggregation manager)"))
    if cluster.nccl_protocols is not None:
        out.append(Variable("NCCL_PROTO", ",".join(NCCL_PROTOCOLS[p] for p in cluster.nccl_protocols),
                            "the cluster's protocols (its nccl_protocols): NCCL picks among these only, as priced"))
    if node.intra_node_fabric == "pcie":
        out.append(Variable("NCCL_P2P_LEVEL", "PXB", "no NVLink: peer-to-peer only between GPUs under one PCIe switch, "
                                                     "through host memory otherwise"))
    return out


_TF32_OVERRIDE = Variable("TORCH_ALLOW_TF32_CUBLAS_OVERRIDE", "1", "tf32 plan: PyTorch's float32 matmuls on the "
                          "TF32 tensor cores whatever the script sets torch.backends.cuda.matmul.allow_tf32 to")
TF32_OVERRIDES = {
    "nvidia": [_TF32_OVERRIDE],
    "amd": [Variable("HIPBLASLT_ALLOW_TF32", "1", "tf32 plan: PyTorch on ROCm lets hipBLASLt use TF32 for float32 "
                     "matmuls only with this set (a gate: the override below turns it on)"), _TF32_OVERRIDE],
}
"""The variables that make a plain PyTorch script's fp32 GEMMs TF32, per GPU vendor (read by PyTorch's
``at::Context`` — aten/src/ATen/Context.cpp, allowTF32CuBLAS — at start-up: on ROCm HIPBLASLT_ALLOW_TF32
gates TF32, which the override then turns on)."""


def launch_environment(plan: Plan, cluster: ClusterSpec) -> list[Variable]:
    """What a launcher of the user's own PyTorch script sets: the NCCL settings, and for a tf32 plan the
    variable that turns its fp32 GEMMs to TF32."""
    return nccl_environment(cluster) + (TF32_OVERRIDES[cluster.gpu.vendor] if plan.precision == "tf32" else [])


HERE = 'HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"  # the folder of this script and its files'
"""The line that lets a script name the files written beside it as ``$HERE/...`` from any directory."""


def exports(variables: list[Variable]) -> list[str]:
    """``export NAME=value  # reason`` lines."""
    return [f"export {v.name}={shlex.quote(v.value)}  # {v.reason}" for v in variables]


def script(summary: str, variables: list[Variable], body: list[str]) -> str:
    """A bash script: what it runs, strict mode, the environment with reasons, then ``body``."""
    head = ["#!/usr/bin/env bash", f"# {summary}", "# Written by `plan launch`; every setting below comes from the solved plan.",
            "set -euo pipefail", ""]
    return "\n".join(head + exports(variables) + ([""] if variables else []) + body) + "\n"


def command(words: list[str], indent: str = "  ") -> str:
    """A shell command, one argument group per line; words holding ``$`` stay double-quoted for expansion."""
    rendered = [f'"{w}"' if "$" in w else shlex.quote(w) for w in words]
    return (" \\\n" + indent).join(rendered)
