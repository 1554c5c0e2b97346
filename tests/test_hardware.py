"""Hardware presets, units, cluster loading and sizing, and bad input."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from parallelplan.hardware import ClusterSpec, HardwareError, list_clusters, list_gpus, load_cluster, load_gpu
from parallelplan.hardware.units import UnitError, parse_bytes, parse_flops, parse_rate


def test_units():
    assert parse_bytes("81559 MiB") == 81559 * 2**20
    assert parse_bytes("80 GB") == 80 * 10**9
    assert parse_bytes("1.5 GiB") == 3 * 2**29
    assert parse_rate("450 GB/s") == 450e9
    assert parse_rate("400 Gb/s") == parse_rate("400Gbps") == 50e9
    assert parse_flops("989.4 TFLOPS") == pytest.approx(989.4e12)
    assert parse_flops(1e15) == 1e15
    for bad in ("80 GX", "fast", -1, True, None, "nan", "inf GB"):
        with pytest.raises(UnitError):
            parse_bytes(bad)


def test_gpu_presets_are_self_consistent():
    """Datasheet structure: fp16 = bf16, tf32 = bf16 / 2, fp8 = 2 × bf16 (dense), within the
    rounding of the printed figures (B200's TF32 is printed as 2.2 PF sparse for 2.25); visible memory
    close to the marketed size."""
    assert len(list_gpus()) >= 17
    for name in list_gpus():
        gpu = load_gpu(name)
        peaks = gpu.peak_flops
        assert peaks["fp16"] == peaks["bf16"], name
        if "tf32" in peaks:
            assert peaks["tf32"] == pytest.approx(peaks["bf16"] / 2, rel=0.025), name
        if "fp8" in peaks:
            assert peaks["fp8"] == pytest.approx(2 * peaks["bf16"], rel=0.02), name
        assert 0.9 * gpu.memory_marketed_gb * 1e9 <= gpu.memory_bytes <= 1.1 * gpu.memory_marketed_gb * 2**30, name
        assert gpu.source and gpu.memory_basis, name


def test_known_gpu_figures():
    h100 = load_gpu("h100")
    assert h100.name == "h100-sxm-80gb"
    assert h100.memory_bytes == 81559 * 2**20
    assert h100.peak_flops["bf16"] == pytest.approx(989.4e12)
    assert h100.nvlink_bandwidth == 450e9  # 900 GB/s bidirectional
    assert load_gpu("NVIDIA H100 80GB HBM3") == h100  # the name NVML reports
    assert not load_gpu("a100").supports("fp8") and load_gpu("b200").supports("fp4")
    assert load_gpu("h800").peak_flops_basis  # assumed peaks are labelled
    with pytest.raises(HardwareError, match="did you mean"):
        load_gpu("h1000")


def test_required_cluster_presets():
    for name in ("dgx-a100", "dgx-h100", "dgx-h800", "hgx-h200", "dgx-b200", "gb200-nvl72", "gb300-nvl72",
                 "pcie-h100", "pcie-l40s"):
        cluster = load_cluster(name)
        assert cluster.source and cluster.node.source, name
    assert load_cluster("dgx-h200").name == "hgx-h200"


def test_cluster_sizing():
    assert load_cluster("dgx-h100").total_gpus == 8
    assert load_cluster("dgx-h100", nodes=4).total_gpus == 32
    rack = load_cluster("gb200-nvl72")
    assert (rack.num_nodes, rack.total_gpus, rack.nvlink_domain_gpus) == (18, 72, 72)
    two = load_cluster("gb200-nvl72", gpus=144)
    assert (two.num_nodes, two.nvlink_domain_gpus) == (36, 72)
    assert load_cluster("gb200-nvl72", nodes=2).nvlink_domain_gpus == 8
    assert load_cluster("dgx-h100").node.nic_bandwidth_per_gpu == 50e9  # 400 Gb/s per GPU


def test_partly_used_nodes_keep_each_gpus_links():
    four = load_cluster("dgx-h100", gpus=4)  # 4 GPUs of one DGX
    assert (four.num_nodes, four.total_gpus, four.nvlink_domain_gpus) == (1, 4, 4)
    assert four.node.gpu_numa_nodes == (0, 0, 0, 0) and four.node.nic_bandwidth_per_gpu == 50e9
    spread = load_cluster("dgx-h100", nodes=2, gpus=4)  # 2 GPUs of each of 2 nodes
    assert (spread.num_nodes, spread.node.gpus_per_node, spread.nvlink_domain_size) == (2, 2, 2)
    assert spread.node.nic_bandwidth_per_gpu == 50e9 and "2 of 8 GPUs" in spread.node.name
    assert load_cluster("dgx-h100", nodes=2, gpus=16) == load_cluster("dgx-h100", nodes=2)
    trays = load_cluster("gb200-nvl72", nodes=18, gpus=36)  # 2 of each tray's 4 GPUs: the rack is still one domain
    assert trays.nvlink_domain_gpus == 36


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: load_cluster("dgx-h100", gpus=12), "not a multiple of the 8 GPUs per node.*use 8 or 16"),
        (lambda: load_cluster("dgx-h100", nodes=2, gpus=5), "cannot be spread evenly over 2 nodes"),
        (lambda: load_cluster("dgx-h100", nodes=2, gpus=32), "cannot be spread evenly over 2 nodes"),
        (lambda: load_cluster("dgx-h100", nodes=0), "nodes must be a positive integer"),
        (lambda: load_cluster("dgx-h10"), "did you mean.*dgx-h100"),
        (lambda: load_cluster("./missing.yaml"), "no such cluster file"),
        (lambda: load_cluster({"base": "dgx-h100", "node": {"nic_bandwidth": "fast"}}), "node.nic_bandwidth.*'fast'"),
        (lambda: load_cluster({"base": "dgx-h100", "nvlink_domain_size": 3}), "nvlink_domain_size 3"),
        (lambda: load_cluster({"base": "pcie-h100", "nvlink_domain_size": 8}), "nvlink_domain_size 1"),
        (lambda: load_cluster({"base": "dgx-h100", "node": {"nics_per_node": 0}}, nodes=2), "nics_per_node is 0"),
        (lambda: load_cluster({"base": "dgx-h100", "node": {"gpu": "tpu-v5"}}), "unknown GPU 'tpu-v5'"),
        (lambda: load_cluster({"base": "dgx-h100", "fabric": "ib"}), "'fabric' is not a known field"),
        (lambda: load_cluster({"base": "dgx-h100", "inter_node_fabric": "ib"}), "inter_node_fabric.*'infiniband'"),
        (lambda: load_cluster(3.5), "must be a preset name"),
        (lambda: load_cluster(""), "cluster reference is empty"),
        (lambda: load_cluster("a" * 300), "not a usable path"),
        (lambda: load_cluster({"base": "dgx-h100", "num_nodes": True}), "'num_nodes' = True: Input should be a valid integer"),
        (lambda: load_cluster({"base": "dgx-h100", "node": {"gpu": {"memory_bytes": 10**400}}}), "memory_bytes.*out of range"),
        (lambda: load_cluster({"name": "x", "node": "dgx", "inter_node_fabric": "infiniband", "nvlink_domain_size": 8,
                               "gpudirect_rdma": True}, gpus=8), "without an integer node.gpus_per_node"),
        (lambda: load_gpu(5), "must be a string"),
    ],
)
def test_bad_cluster_input_is_named(call, message):
    with pytest.raises(HardwareError, match=message):
        call()


def test_cluster_files(tmp_path):
    yaml_file = tmp_path / "mine.yaml"
    yaml_file.write_text("base: dgx-h100\nnum_nodes: 4\nnode:\n  gpu: h200\n  nic_bandwidth: 200 Gb/s\n")
    cluster = load_cluster(yaml_file)
    assert (cluster.total_gpus, cluster.gpu.name, cluster.node.nic_bandwidth) == (32, "h200-sxm-141gb", 25e9)
    assert cluster.node.gpus_per_node == 8 and cluster.inter_node_fabric == "infiniband"
    json_file = tmp_path / "mine.json"
    json_file.write_text(cluster.model_dump_json())
    assert load_cluster(json_file) == cluster
    assert load_cluster(json_file, nodes=1).total_gpus == 8
    bad = tmp_path / "bad.json"
    bad.write_text("{nope")
    with pytest.raises(HardwareError, match="not valid JSON"):
        load_cluster(bad)
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("base: [dgx-h100\n")
    with pytest.raises(HardwareError, match="not valid YAML"):
        load_cluster(bad_yaml)


def test_partial_gpu_override_starts_from_the_preset_gpu():
    cluster = load_cluster({"base": "dgx-h100", "node": {"gpu": {"name": "h100-capped", "memory_bytes": "70 GiB"}}})
    assert cluster.gpu.name == "h100-capped" and cluster.gpu.memory_bytes == 70 * 2**30
    assert cluster.gpu.peak_flops == load_gpu("h100").peak_flops


@st.composite
def cluster_dicts(draw: st.DrawFn) -> dict:
    if draw(st.booleans()):
        return {"base": draw(st.sampled_from(list_clusters())), "num_nodes": draw(st.integers(1, 64))}
    per_node = draw(st.sampled_from([1, 2, 4, 8]))
    fabric = draw(st.sampled_from(["nvswitch", "nvlink_mesh", "nvlink_bridge", "pcie"]))
    domain = 1 if fabric == "pcie" else per_node * draw(st.sampled_from([1, 2, 9]))
    nics = draw(st.integers(1, 8))
    return {
        "name": "generated",
        "num_nodes": draw(st.integers(1, 32)),
        "node": {
            "name": "node",
            "gpu": draw(st.sampled_from(list_gpus())),
            "gpus_per_node": per_node,
            "intra_node_fabric": fabric,
            "intra_node_bandwidth": f"{draw(st.integers(1, 900))} GB/s",
            "nics_per_node": nics,
            "nic_bandwidth": f"{draw(st.sampled_from([100, 200, 400, 800]))} Gb/s",
        },
        "inter_node_fabric": draw(st.sampled_from(["infiniband", "roce", "ethernet"])),
        "nvlink_domain_size": domain,
        "gpudirect_rdma": draw(st.booleans()),
    }


@settings(max_examples=200, deadline=None)
@given(cluster_dicts())
def test_clusterspec_round_trips_through_json(data):
    cluster = load_cluster(data)
    again = ClusterSpec.model_validate_json(cluster.model_dump_json())
    assert again == cluster
    assert load_cluster(json.loads(cluster.model_dump_json())) == cluster
    assert again.total_gpus == cluster.num_nodes * cluster.node.gpus_per_node
