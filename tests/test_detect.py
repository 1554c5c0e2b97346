"""Topology detection driven through snapshots of real machines (tests/fixtures/topology/*/SOURCES.md
cites each output): public ``nvidia-smi`` outputs of an 8x H100 SXM HGX, a DGX A100, an 8x L40S PCIe box,
8 bridged H100 NVL cards and a GB200 tray, and the NVML + sysfs answers recorded by ``plan topology
--record`` on a real H100 (a pass-through VM), replayed through the same code as live NVML."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from parallelplan.cli.main import plan
from parallelplan.hardware import DetectionError, detect_cluster, detect_node, load_cluster
from parallelplan.hardware.detect.host import pci_connection
from parallelplan.hardware.detect.probe import load_snapshot, read_node
from parallelplan.hardware.detect.recording import Recorder, Replay
from parallelplan.hardware.detect.smi import ParseError, parse_ibstat, parse_smi_query, parse_topo_matrix

SNAPSHOTS = Path(__file__).parent / "fixtures" / "topology"
DESCRIPTIVE = ("name", "source", "notes")


def hardware_fields(cluster) -> dict:
    """A cluster's facts the cost model uses: everything but names, sources, notes and the CPU prose."""
    fields = cluster.model_dump(exclude=set(DESCRIPTIVE))
    fields["node"] = {k: v for k, v in fields["node"].items() if k not in (*DESCRIPTIVE, "cpu", "host_memory_bytes")}
    return fields


def test_detected_hgx_h100_is_the_dgx_h100_preset():
    detection = detect_node(SNAPSHOTS / "dgx-h100")
    assert detection.problem is None and detection.matching_preset == "dgx-h100"
    assert hardware_fields(detection.cluster) == hardware_fields(load_cluster("dgx-h100"))
    # read from the outputs: GPU, count, fabric (18 links to 7 peers exceed 18 links), bandwidth, NUMA, the
    # 8 rail NICs; copied from the matched preset, and said: NIC rate and fabric, GPUDirect RDMA, NVLS
    assert detection.fabric == "nvswitch" and detection.links_per_gpu == 18
    for copied in ("nics_per_node", "gpudirect_rdma", "in_network_reduction"):
        assert "taken from preset dgx-h100" in detection.provenance[copied]
    assert detection.cluster.node.gpu_numa_nodes == (0, 0, 0, 0, 1, 1, 1, 1)
    assert "mlx5_0, mlx5_1, mlx5_2, mlx5_3, mlx5_6, mlx5_7, mlx5_8, mlx5_9" in detection.provenance["nics_per_node"]
    assert "preset dgx-h100" in detection.provenance["in_network_reduction"]  # what NVML cannot see is said


def test_dgx_a100_nvswitch_and_rail_nics_from_an_old_style_matrix():
    detection = detect_node(SNAPSHOTS / "dgx-a100")
    cluster = detection.cluster
    assert (detection.fabric, cluster.nvlink_domain_size, cluster.node.intra_node_bandwidth) == ("nvswitch", 8, 300e9)
    assert cluster.node.nics_per_node == 8 and detection.matching_preset == "dgx-a100"
    assert cluster.node.gpu_numa_nodes == (3, 3, 1, 1, 7, 7, 5, 5) and cluster.node.numa_nodes == 8  # NPS4
    assert any("outputs of two machines" in w for w in detection.warnings)  # -q and matrix come from two posts


def test_l40s_pcie_box_has_no_nvlink_domain():
    detection = detect_node(SNAPSHOTS / "pcie-l40s")
    node = detection.cluster.node
    assert (node.intra_node_fabric, detection.cluster.nvlink_domain_size) == ("pcie", 1)
    assert node.intra_node_bandwidth == 32e9  # Gen4 x16 from nvidia-smi -q
    assert node.nics_per_node == 0 and any("plans stay on this node" in w for w in detection.warnings)


def test_bridged_h100_nvl_pairs_form_domains_of_two():
    detection = detect_node(SNAPSHOTS / "pcie-h100nvl-bridged")
    assert (detection.fabric, detection.nvlink_domain_size, detection.intra_node_bandwidth) == ("nvlink_bridge", 2, 300e9)
    with pytest.raises(Exception, match="NVLink groups of 2"):
        load_cluster(detection.cluster, gpus=3)


def test_gb200_tray_keeps_the_rack_wide_nvlink_domain():
    detection = detect_node(SNAPSHOTS / "gb200")
    assert detection.fabric == "nvswitch" and detection.intra_node_bandwidth == 900e9
    assert detection.nvlink_domain_size == 72 and "18 nodes" in detection.provenance["nvlink_domain_size"]
    assert detection.cluster.node.gpu_numa_nodes == (0, 0, 1, 1)


def test_recorded_h100_replays_nvml_and_sysfs_and_agrees_with_its_nvidia_smi():
    detection = detect_node(SNAPSHOTS / "h100-vm")
    facts = detection.facts
    assert facts.sources == ("NVML", "sysfs") and facts.recorded.startswith("recorded snapshot h100-vm")
    (gpu,) = facts.gpus
    queried = parse_smi_query((SNAPSHOTS / "h100-vm" / "nvidia-smi-q.txt").read_text())[0]
    for field in ("name", "memory_bytes", "bus_id", "pcie_generation", "pcie_width"):
        assert getattr(gpu, field) == getattr(queried, field), field
    assert gpu.nvlinks is None and gpu.numa_node is None  # NVML said NOT_SUPPORTED: nothing guessed
    assert gpu.virtualization == queried.virtualization == "passthrough"
    assert facts.host.gpudirect_rdma == () and not detection.cluster.gpudirect_rdma
    assert detection.cluster.node.intra_node_fabric == "pcie" and detection.cluster.total_gpus == 1
    with pytest.raises(DetectionError, match="no network port for GPU traffic .*--cluster"):
        detect_cluster(nodes=2, snapshot=SNAPSHOTS / "h100-vm")


def test_recording_a_replay_asks_only_recorded_questions():
    """Recorder and Replay are one interface: reading a recorded node through a recorder asks exactly
    questions the recording answers, and gets the recorded answers."""
    folder = SNAPSHOTS / "h100-vm"
    recorded = {name: json.loads((folder / name).read_text()) for name in ("nvml.json", "sysfs.json")}
    sources = load_snapshot(folder)
    sources.nvml, sources.files = Recorder(Replay(recorded["nvml.json"])), Recorder(Replay(recorded["sysfs.json"]))
    facts = read_node(sources)
    for recorder, name in ((sources.nvml, "nvml.json"), (sources.files, "sysfs.json")):
        asked = {key: answer for key, answer in recorder.calls.items() if key in recorded[name]}
        assert asked == recorded[name]  # every recorded answer is used, unchanged
        assert all("not in the recording" in answer.get("unsupported", "")
                   for key, answer in recorder.calls.items() if key not in recorded[name])
    assert facts == detect_node(folder).facts


def test_nvml_that_cannot_list_gpus_is_a_clear_error(tmp_path):
    (tmp_path / "SOURCES.md").write_text("an NVML recording with no answers\n")
    (tmp_path / "nvml.json").write_text("{}")
    with pytest.raises(DetectionError, match="--cluster"):
        detect_node(tmp_path)
    (tmp_path / "nvml.json").write_text('{"device_count()": {"value": null}}')
    with pytest.raises(DetectionError, match="wrong shape.*--record"):
        detect_node(tmp_path)
    unlabelled = tmp_path / "unlabelled"
    unlabelled.mkdir()
    (unlabelled / "nvidia-smi-topo-m.txt").write_text((SNAPSHOTS / "gb200" / "nvidia-smi-topo-m.txt").read_text())
    with pytest.raises(DetectionError, match="SOURCES.md is missing"):
        detect_node(unlabelled)
    with pytest.raises(DetectionError, match="no such folder"):
        detect_node(tmp_path / "missing")
    with pytest.raises(DetectionError, match="snapshot must be a folder path"):
        detect_cluster(snapshot=123)


def test_this_machine_without_a_driver_says_the_way_forward(monkeypatch):
    import pynvml

    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        pass
    else:
        pytest.skip("this machine has an NVIDIA driver: the no-driver path is not reachable here")
    with pytest.raises(DetectionError, match="no NVIDIA GPU detected.*--cluster PRESET"):
        detect_node()
    monkeypatch.setenv("PLAN_DETECT", "auto")
    result = CliRunner().invoke(plan, ["topology"])
    assert result.exit_code == 2 and "--cluster" in result.stderr and "Traceback" not in result.output
    fallback = CliRunner().invoke(plan, ["estimate", "-m", "llama-3.1-8b", "--tp", "8"])
    assert fallback.exit_code == 0 and "using dgx-h100" in fallback.stderr


def test_parsers_on_real_outputs_and_on_wrong_input():
    ibstat = parse_ibstat((SNAPSHOTS / "ibstat-h100" / "ibstat.txt").read_text())
    infiniband = [n for n in ibstat if n.kind == "infiniband"]
    assert len(infiniband) == 8 and {n.rate for n in infiniband} == {400e9 / 8} and all(n.active for n in infiniband)
    assert [(n.name, n.kind, n.rate) for n in ibstat if n.kind == "roce"] == [("mlx5_bond_0", "roce", 200e9 / 8)]
    ansi = parse_topo_matrix((SNAPSHOTS / "dgx-h100" / "nvidia-smi-topo-m.txt").read_text())
    assert ansi.nic_names["NIC11"] == "mlx5_11" and ansi.cpu_affinity["GPU4"] == "56-111,168-223"
    spaces = parse_topo_matrix((SNAPSHOTS / "pcie-l40s" / "nvidia-smi-topo-m.txt").read_text())
    assert spaces.gpu_matrix()[0][4] == "SYS" and spaces.numa["GPU7"] == 1
    eight = parse_smi_query((SNAPSHOTS / "dgx-h100" / "nvidia-smi-q.txt").read_text())
    assert len(eight) == 8 and {g.memory_bytes for g in eight} == {81559 * 2**20} and eight[7].bus_id == "0000:db:00.0"
    # a device column of any name (a bonded port) keeps the columns after it in place (the DGX A100
    # output with its last NIC renamed, an edit made here)
    renamed = (SNAPSHOTS / "dgx-a100" / "nvidia-smi-topo-m.txt").read_text().replace("mlx5_11", "mlx5_bond_0")
    bonded = parse_topo_matrix(renamed)
    assert bonded.nics[-1] == "mlx5_bond_0" and bonded.cpu_affinity["GPU7"] == "80-95,208-223"
    for parse, text in ((parse_topo_matrix, "GPU0 X\n"), (parse_smi_query, "hello"), (parse_ibstat, "Port 1:\n")):
        with pytest.raises(ParseError):
            parse(text)


def test_pcie_codes_from_sysfs_paths():
    """``nvidia-smi topo -m`` semantics from device paths: one switch between → PIX, nested switches →
    PXB, only the root complex shared → PHB, other root complex → NODE on one NUMA node, else SYS."""
    root = "/sys/devices/pci0000:00/0000:00:01.0"
    switch = f"{root}/0000:01:00.0"
    assert pci_connection(f"{switch}/0000:02:00.0/0000:03:00.0", f"{switch}/0000:02:01.0/0000:04:00.0", 0, 0) == "PIX"
    assert pci_connection(f"{switch}/0000:02:00.0/0000:03:00.0/0000:05:00.0/0000:06:00.0",
                          f"{switch}/0000:02:01.0/0000:04:00.0", 0, 0) == "PXB"
    assert pci_connection(f"{root}/0000:01:00.0", "/sys/devices/pci0000:00/0000:00:02.0/0000:07:00.0", 0, 0) == "PHB"
    assert pci_connection(f"{root}/0000:01:00.0", "/sys/devices/pci0000:40/0000:40:01.0/0000:41:00.0", 0, 0) == "NODE"
    assert pci_connection(f"{root}/0000:01:00.0", "/sys/devices/pci0000:80/0000:80:01.0/0000:81:00.0", 0, 1) == "SYS"


def test_commands_use_the_detected_node_when_no_cluster_is_given(monkeypatch):
    snapshot = SNAPSHOTS / "dgx-a100"
    monkeypatch.setenv("PLAN_DETECT", str(snapshot))
    runner = CliRunner()
    solved = runner.invoke(plan, ["solve", "-m", "llama-3.1-8b", "--json"])
    assert solved.exit_code == 0, solved.output
    assert "using the detected node" in solved.stderr
    assert json.loads(solved.stdout)["cluster"] == detect_cluster(snapshot=snapshot).model_dump(mode="json")
    explicit = runner.invoke(plan, ["estimate", "-m", "llama-3.1-8b", "--cluster", "detect", "--nodes", "2", "--tp", "8"])
    assert explicit.exit_code == 0, explicit.output
    report = runner.invoke(plan, ["topology", "--snapshot", str(SNAPSHOTS / "gb200"), "--json"])
    assert report.exit_code == 0, report.output
    data = json.loads(report.stdout)
    assert data["detection"]["cluster"] == detect_cluster(snapshot=SNAPSHOTS / "gb200").model_dump(mode="json")
    assert data["topology"]["tiers"][0]["gpus"] == 4  # one tray read: the rack's other trays are --nodes away
    table = runner.invoke(plan, ["topology", "--snapshot", str(SNAPSHOTS / "dgx-h100")])
    assert table.exit_code == 0 and "NV18" in table.output and "matches preset dgx-h100" in table.output
    monkeypatch.setenv("PLAN_DETECT", "off")
    assert "using dgx-h100" in runner.invoke(plan, ["estimate", "-m", "llama-3.1-8b", "--tp", "8"]).stderr


def _nvml_answers(folder: Path) -> dict:
    """NVML answers TRANSCRIBED from a snapshot's cited ``nvidia-smi -q`` and ``topo -m`` outputs — what
    NVML would have answered on that machine (NVLinks to a peer GPU's bus id for ``NV<k>`` between two
    GPUs only, to NVSwitches when a GPU has NV<k> to every peer) — because no multi-GPU NVML recording is
    at hand. Its PCIe entries are the matrix's own codes handed back as common-ancestor answers, so what
    this checks is the NVLink reading: direct links and links through switches give the matrix's NV<k>."""
    topo = parse_topo_matrix((folder / "nvidia-smi-topo-m.txt").read_text())
    gpus = parse_smi_query((folder / "nvidia-smi-q.txt").read_text())
    bus = [gpus[i % len(gpus)].bus_id.replace("0000:", f"{i:04x}:", 1) for i in range(len(topo.gpus))]
    matrix = topo.gpu_matrix()
    calls: dict = {"device_count()": {"value": len(bus)}, "max_links()": {"value": 18}}
    for i, row in enumerate(matrix):
        peers = [j for j, code in enumerate(row) if j != i and code.startswith("NV")]
        links = max((int(row[j][2:]) for j in peers), default=0)
        switched = len(peers) > 1
        for key, value in (("name", gpus[0].name), ("memory_total", gpus[0].memory_bytes), ("bus_id", bus[i]),
                           ("pcie_max", [gpus[0].pcie_generation, gpus[0].pcie_width])):
            calls[f"{key}({i})"] = {"value": value}
        for link in range(18):
            answer = ([True, 6, "0000:f0:00.0", "switch"] if switched else [True, 6, bus[peers[0]], "gpu"]) \
                if link < links else None
            calls[f"nvlink({i}, {link})"] = {"value": answer} if answer else {"unsupported": "NOT_SUPPORTED"}
        for j, code in enumerate(row):
            if j != i and not code.startswith("NV"):
                calls[f"common_ancestor({i}, {j})"] = {"value": code}
    return calls


@pytest.mark.parametrize("machine", ["dgx-h100", "pcie-h100nvl-bridged"])
def test_nvml_reader_and_topo_parser_agree(machine):
    from parallelplan.hardware.detect.nvml_source import read_nvml

    folder = SNAPSHOTS / machine
    gpus, connections, _ = read_nvml(Replay(_nvml_answers(folder)))
    assert connections == parse_topo_matrix((folder / "nvidia-smi-topo-m.txt").read_text()).gpu_matrix()
    assert len(gpus) == 8 and all(len(g.nvlinks) == (18 if machine == "dgx-h100" else 12) for g in gpus)


def test_record_without_a_driver_is_bad_input(tmp_path):
    import pynvml

    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        pass
    else:
        pytest.skip("this machine has an NVIDIA driver")
    result = CliRunner().invoke(plan, ["topology", "--record", str(tmp_path / "node")])
    assert result.exit_code == 2 and "no NVIDIA GPU detected" in result.stderr
    assert not (tmp_path / "node").exists()


@settings(max_examples=200, deadline=None)
@given(st.sampled_from([2, 4, 8]), st.data())
def test_any_nvlink_matrix_gives_a_valid_cluster_or_says_why(gpus, data):
    """Equal, fully connected NVLink groups of H100 SXM GPUs become the domain (NVSwitch when the links to
    all peers exceed the GPU's 18, mesh otherwise); anything uneven is priced as PCIe with a warning;
    never an exception."""
    from parallelplan.hardware.detect.classify import classify
    from parallelplan.hardware.detect.facts import GpuFacts, NodeFacts

    group = data.draw(st.sampled_from([k for k in (1, 2, 4, 8) if gpus % k == 0]))
    links = data.draw(st.integers(1, 18))
    matrix = [["X" if i == j else (f"NV{links}" if i // group == j // group else "SYS") for j in range(gpus)]
              for i in range(gpus)]
    uneven = data.draw(st.booleans()) and gpus > 2
    if uneven:
        i, j = data.draw(st.sampled_from([(i, j) for i in range(gpus) for j in range(gpus) if i < j]))
        matrix[i][j] = matrix[j][i] = "PIX" if matrix[i][j].startswith("NV") else f"NV{links}"
    facts = NodeFacts(gpus=tuple(GpuFacts(index=k, name="NVIDIA H100 80GB HBM3", pcie_generation=5, pcie_width=16)
                                 for k in range(gpus)), gpu_connections=tuple(map(tuple, matrix)))
    detection = classify(facts)
    assert detection.problem is None and detection.cluster is not None
    node, domain = detection.cluster.node, detection.cluster.nvlink_domain_size
    if uneven or group == 1:
        assert (node.intra_node_fabric, domain, node.intra_node_bandwidth) == ("pcie", 1, 64e9)
        assert uneven == any("unevenly" in w for w in detection.warnings)
    else:
        # SXM GPUs: never bridged cards; two of them joined by all 18 links are a slice of an NVSwitch board
        expected = "nvswitch" if links * (group - 1) > 18 or (group == 2 and links == 18) else "nvlink_mesh"
        per_gpu = links * (group - 1) if expected == "nvlink_mesh" else links
        assert (node.intra_node_fabric, domain, node.intra_node_bandwidth) == (expected, group, per_gpu * 25e9)
