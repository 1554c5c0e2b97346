"""The emitters without the frameworks installed: the files hold the plan's numbers, use only names the
frameworks define (`emitters/data/allowlists.json`), shell output passes `bash -n`, a plan a framework
cannot express is refused naming the framework and the dimension, and `plan launch` / `plan slurm` write
the files. The frameworks' own parsers check the same files in tests/test_emitters_validators.py."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from parallelplan.cli.main import plan
from parallelplan.emitters import EmitError, constraints, emit, list_targets
from parallelplan.emitters.environment import nccl_environment
from parallelplan.hardware import load_cluster
from parallelplan.models import load_model
from parallelplan.solver import solve
from tests.emitter_cases import (
    SERVE,
    WORK,
    _solve,
    accelerate_cases,
    command_words,
    deepspeed_cases,
    launcher_cases,
    megatron_cases,
    serving_cases,
    torchtitan_cases,
    trl_cases,
)

ALLOW = json.loads((Path(__file__).parent.parent / "emitters" / "data" / "allowlists.json").read_text())


def _flags(script: str, program: str) -> list[str]:
    """The ``--name`` flags of the ``program`` command in a script."""
    flags = []
    for word in command_words(script, program):
        if not word.startswith("--"):
            break  # the script and its own arguments follow the launcher's flags
        flags.append(word.split("=")[0])
    return flags


def test_targets_are_listed():
    assert list_targets() == ["accelerate", "deepspeed", "megatron", "sglang", "slurm", "torchrun", "torchtitan", "trl", "verl",
                              "vllm"]


@pytest.mark.parametrize("case", list(deepspeed_cases()))
def test_deepspeed_config_holds_the_plan(case):
    solution = deepspeed_cases()[case]
    files = emit(solution, "deepspeed")
    ds = json.loads(files["ds_config.json"])
    p = solution.plan
    assert ds["train_batch_size"] == solution.workload.global_batch_size == (
        ds["train_micro_batch_size_per_gpu"] * ds["gradient_accumulation_steps"] * p.dp)
    assert ds["train_micro_batch_size_per_gpu"] == p.micro_batch_size
    assert ("bf16" in ds) != ("fp16" in ds) and ds[p.precision]["enabled"] is True
    assert ds["zero_optimization"]["stage"] == {"none": 0, "zero1": 1, "zero2": 2, "zero3": 3, "fsdp": 3, "hsdp": 3}[p.sharding]
    assert ds["zero_optimization"].get("zero_hpz_partition_size") == (p.hsdp_shard_size if p.sharding == "hsdp" else None)
    assert ("offload_optimizer" in ds["zero_optimization"]) == (p.offload != "none")
    assert ("offload_param" in ds["zero_optimization"]) == (p.offload == "params")
    assert ds.get("tensor_parallel", {}).get("autotp_size", 1) == p.tp
    assert ("activation_checkpointing" in ds) == (p.recompute == "full")
    assert set(ds) <= set(ALLOW["deepspeed_top_level_keys"])
    assert set(ds.get("activation_checkpointing", {})) <= set(ALLOW["deepspeed_activation_checkpointing_keys"])
    assert set(_flags(files["launch.sh"], "deepspeed")) <= set(ALLOW["deepspeed_launcher_flags"])


def test_deepspeed_cases_span_its_dimensions():
    plans = [s.plan for s in deepspeed_cases().values()]
    assert {p.sharding for p in plans} >= {"none", "zero1", "zero2", "zero3", "hsdp"}
    assert {p.offload for p in plans} == {"none", "optimizer", "params"}
    assert {p.precision for p in plans} == {"bf16", "fp16"} and any(p.tp > 1 for p in plans)
    assert any(p.recompute == "full" for p in plans)


@pytest.mark.parametrize("target", ["torchrun", "slurm"])
@pytest.mark.parametrize("case", ["single node", "four nodes"])
def test_launchers_use_torchrun_flags_and_the_plan(target, case):
    solution = launcher_cases()[case]
    files = emit(solution, target, script="pretrain.py", script_args=("--lr", "3e-4"))
    script = files["launch.sh" if target == "torchrun" else "job.sbatch"]
    flags = _flags(script, "torchrun")
    assert set(flags) <= set(ALLOW["torchrun_flags"])
    assert f"--nproc-per-node={solution.cluster.node.gpus_per_node}" in script
    assert ("--standalone" in flags) == (solution.cluster.num_nodes == 1)
    assert "pretrain.py" in script and "3e-4" in script
    assert json.loads(files["plan.json"])["plan"] == solution.plan.model_dump(mode="json")
    if target == "slurm":
        directives = [line.split()[1].split("=")[0] for line in script.splitlines() if line.startswith("#SBATCH")]
        assert set(directives) <= set(ALLOW["sbatch_options"])
        assert f"#SBATCH --nodes={solution.cluster.num_nodes}" in script


MULTI_NODE = {"torchrun": lambda: launcher_cases()["four nodes"], "slurm": lambda: launcher_cases()["four nodes"],
              "deepspeed": lambda: deepspeed_cases()["hsdp"], "megatron": lambda: megatron_cases()["hsdp"],
              "torchtitan": lambda: torchtitan_cases()["zero2 cp"], "accelerate": lambda: accelerate_cases()["fsdp2 hsdp"],
              "vllm": lambda: serving_cases("vllm")["replicas over nodes"],
              "sglang": lambda: serving_cases("sglang")["replica over nodes"]}


@pytest.mark.parametrize("target", sorted(MULTI_NODE))
def test_scripts_are_valid_bash_with_known_nccl_variables(target, tmp_path):
    scripts = 0
    for name, content in emit(MULTI_NODE[target](), target).items():
        if content.startswith("#!"):
            path = tmp_path / name
            path.write_text(content)
            assert subprocess.run(["bash", "-n", str(path)], capture_output=True).returncode == 0
            exported = re.findall(r"^export (\w+)=(\S+)", content, re.M)
            assert exported and all(name in ALLOW["nccl_variables"] for name, _ in exported if name.startswith("NCCL_"))
            levels = [value for name, value in exported if name.endswith("_LEVEL")]
            assert all(v in ALLOW["nccl_level_values"] for v in levels)
            scripts += 1
    assert scripts == 1


def test_ib_sharp_turns_on_collnet_only_across_nodes():
    """A cluster that declares SHARP in its InfiniBand switches gets NCCL's CollNet (NCCL_COLLNET_ENABLE=1,
    research notes' table); one node, or a cluster without it, does not; NVLS is asked for on NVSwitch nodes
    with NVLink SHARP."""
    def names(cluster) -> set[str]:
        return {v.name for v in nccl_environment(cluster)}
    two = load_cluster("dgx-h100", nodes=2)
    assert "NCCL_COLLNET_ENABLE" in names(two.model_copy(update={"ib_sharp": True}))
    assert "NCCL_COLLNET_ENABLE" not in names(two)
    assert "NCCL_COLLNET_ENABLE" not in names(load_cluster("dgx-h100", nodes=1).model_copy(update={"ib_sharp": True}))
    assert "NCCL_NVLS_ENABLE" in names(two) and "NCCL_NVLS_ENABLE" not in names(load_cluster("dgx-a100", nodes=2))


def test_a_cluster_that_limits_nccls_protocols_exports_them_and_a_default_cluster_does_not():
    """NCCL_PROTO takes NCCL's own protocol names (LL, LL128, Simple, comma-separated; NCCL's tuning.cc parses
    them case-insensitively); the launch scripts set it only where the cluster file does."""
    cluster = load_cluster("dgx-h100", nodes=2)
    assert "NCCL_PROTO" not in {v.name for v in nccl_environment(cluster)}
    limited = {v.name: v.value for v in nccl_environment(cluster.model_copy(update={"nccl_protocols": ("ll", "simple")}))}
    assert limited["NCCL_PROTO"] == "LL,Simple" and "NCCL_PROTO" in ALLOW["nccl_variables"]


def _arguments(script: str, program: str) -> list[str]:
    """Every ``--name`` flag on the ``program`` command line (also after its positional words)."""
    return [w.split("=")[0] for w in command_words(script, program) if w.startswith("--")]


@pytest.mark.parametrize("case", list(megatron_cases()))
def test_megatron_flags_are_megatrons_and_hold_the_plan(case):
    solution = megatron_cases()[case]
    p = solution.plan
    text = emit(solution, "megatron")["launch.sh"]
    assert set(_arguments(text, "pretrain_gpt.py")) <= set(ALLOW["megatron_flags"])
    for flag in (f"--tensor-model-parallel-size={p.tp}", f"--pipeline-model-parallel-size={p.pp}",
                 f"--context-parallel-size={p.cp}", f"--micro-batch-size={p.micro_batch_size}",
                 f"--global-batch-size={solution.workload.global_batch_size}"):
        assert flag in text
    connections = re.search(r"^export CUDA_DEVICE_MAX_CONNECTIONS=(\d+)", text, re.M)
    fsdp = p.sharding in ("zero2", "zero3", "fsdp", "hsdp")
    hopper = solution.cluster.node.gpu.compute_capability.startswith("9")
    assert (connections.group(1) if connections else None) == ("8" if fsdp else "1" if (p.tp > 1 or p.cp > 1) and hopper
                                                              else None)


def test_megatron_cases_span_every_dimension():
    plans = [s.plan for s in megatron_cases().values()]
    assert all(any(getattr(p, d) > 1 for p in plans) for d in ("tp", "pp", "cp", "ep", "vpp", "dp"))
    assert any(p.etp != p.tp for p in plans) and any(p.sequence_parallel for p in plans)
    assert {p.sharding for p in plans} >= {"none", "zero1", "zero2", "fsdp", "hsdp"}
    assert {p.recompute for p in plans} == {"none", "selective", "full"} and any(p.recompute_layers for p in plans)
    assert "fp8" in {p.precision for p in plans} and any(p.layers_per_stage for p in plans)


@pytest.mark.parametrize("case", list(torchtitan_cases()))
def test_torchtitan_keys_are_torchtitans(case):
    solution = torchtitan_cases()[case]
    files = emit(solution, "torchtitan")
    words = command_words(files["launch.sh"], "torchtitan.train")
    assert words[:4] == ["--module", "plan_config", "--config", "plan"]
    assert words[-1].split(":")[1] in ALLOW["torchtitan_checkpoint_subcommands"]
    for word in words[4:-1]:
        section, key = word[2:].split("=")[0].split(".", 1)
        assert key.removeprefix("no_") in ALLOW["torchtitan_keys"][section], word
    compile(files["plan_config.py"], "plan_config.py", "exec")


@pytest.mark.parametrize("case", list(accelerate_cases()))
def test_accelerate_keys_are_accelerates(case):
    import yaml

    data = yaml.safe_load(emit(accelerate_cases()[case], "accelerate")["accelerate_config.yaml"])
    assert set(data) <= set(ALLOW["accelerate_top_level_keys"])
    for section in ("fsdp_config", "deepspeed_config", "megatron_lm_config", "parallelism_config", "fp8_config"):
        prefix = {"fp8_config": "fp8_"}.get(section, "")
        assert {prefix + key for key in data.get(section, {})} <= set(ALLOW["accelerate_section_keys"]), section
    assert data["num_processes"] == accelerate_cases()[case].cluster.total_gpus


@pytest.mark.parametrize("target", ["vllm", "sglang"])
def test_serving_flags_are_the_servers(target):
    for solution in serving_cases(target).values():
        text = emit(solution, target)["serve.sh"]
        program = "serve" if target == "vllm" else "sglang.launch_server"
        flags = set(_arguments(text, program)) - {"--headless"}
        assert flags <= set(ALLOW[f"{target}_{'serve_' if target == 'vllm' else ''}flags"])
        assert str(solution.workload.seq_len) in text and f"={solution.plan.tp}" in text


@pytest.mark.parametrize(("target", "make", "words"), [
    ("accelerate", lambda: _solve("mixtral-8x7b", 2, "megatron", {"ep": 4, "etp": 1, "sharding": "fsdp", "pp": 1}),
     "Accelerate cannot express ep 4 with fsdp"),
    ("torchtitan", lambda: _solve("mistral-7b", 1, "torchtitan"),
     "torchtitan 0.3.0 cannot express the model mistral-7b"),
    ("megatron", lambda: _solve("llama-3.1-8b", 1, "torchtitan", {"recompute": "selective_mm"}),
     "Megatron-LM cannot express torchtitan's per-op selective recompute"),
    ("vllm", lambda: launcher_cases()["single node"], "vLLM cannot express a training plan"),
    ("sglang", lambda: _solve("llama-3.1-8b", 1, "torchrun", {"sharding": "fsdp"}, workload=SERVE),
     "SGLang cannot express fsdp sharding"),
])
def test_targets_refuse_what_they_cannot_express(target, make, words):
    with pytest.raises(EmitError, match="cannot express") as error:
        emit(make(), target)
    assert words in str(error.value)


def test_a_tf32_plan_makes_the_scripts_fp32_gemms_tf32():
    """A tf32 plan launches the user's fp32 script with PyTorch's override (TORCH_ALLOW_TF32_CUBLAS_OVERRIDE; on
    ROCm also HIPBLASLT_ALLOW_TF32, which gates it); TRL sets TrainingArguments' tf32;
    Megatron-LM, which trains in 16 bits or fp8 here, refuses it by name."""
    nvidia = _solve("llama-3.2-1b", 1, "torchrun", {"precision": "tf32", "sharding": "fsdp"}, cluster="dgx-a100")
    assert "export TORCH_ALLOW_TF32_CUBLAS_OVERRIDE=1" in emit(nvidia, "torchrun")["launch.sh"]
    assert "TF32" not in emit(launcher_cases()["single node"], "torchrun")["launch.sh"]
    mi300x = load_cluster({"base": "dgx-h100", "num_nodes": 1, "node": {"gpu": "mi300x"}})
    amd = solve(load_model("llama-3.2-1b"), mi300x, WORK, fixed={"precision": "tf32", "sharding": "fsdp"})
    sbatch = emit(amd, "slurm")["job.sbatch"]
    assert "export HIPBLASLT_ALLOW_TF32=1" in sbatch and "export TORCH_ALLOW_TF32_CUBLAS_OVERRIDE=1" in sbatch
    trl = emit(trl_cases()["sft full tf32 on a100"], "trl")
    assert yaml.safe_load(trl["trl_config.yaml"])["tf32"] is True
    assert yaml.safe_load(trl["accelerate_config.yaml"])["mixed_precision"] == "no"  # a string: YAML reads a bare no as False
    with pytest.raises(EmitError, match="Megatron-LM cannot express tf32 GEMMs"):
        emit(nvidia, "megatron")


@pytest.mark.parametrize(("fixed", "words"), [
    ({"cp": 2}, "context parallelism (cp 2)"),
    ({"pp": 2, "cp": 1}, "pipeline stages in its config (pp 2"),
    ({"recompute": "selective", "cp": 1, "pp": 1, "sequence_parallel": False}, "recompute selective"),
])
def test_deepspeed_refuses_what_it_cannot_express(fixed, words):
    from parallelplan.constraints import Workload
    from parallelplan.hardware import load_cluster
    from parallelplan.models import load_model
    from parallelplan.solver import solve

    solution = solve(load_model("llama-3.1-8b"), load_cluster("dgx-h100", nodes=1), Workload(seq_len=4096, global_batch_size=64),
                     fixed=fixed)
    with pytest.raises(EmitError, match="DeepSpeed cannot express") as error:
        emit(solution, "deepspeed")
    assert words in str(error.value)


def test_constraints_keep_a_search_expressible():
    solution = _solve("llama-3.1-70b", 2, "deepspeed")
    emit(solution, "deepspeed")  # no EmitError
    assert constraints("deepspeed")["fixed"]["cp"] == 1
    assert constraints("torchrun") == {"fixed": {"offload_activations": False}}  # its script is the user's


def test_bad_options_and_targets():
    solution = launcher_cases()["single node"]
    with pytest.raises(EmitError, match="unknown target 'megatron-lm'"):
        emit(solution, "megatron-lm")
    with pytest.raises(EmitError, match="unknown emit option"):
        emit(solution, "torchrun", nodes=3)
    with pytest.raises(EmitError, match="time_limit must read"):
        emit(solution, "slurm", time_limit="two days")


def test_plan_launch_writes_the_files(tmp_path):
    out = tmp_path / "run"
    result = CliRunner().invoke(plan, ["launch", "--model", "llama-3.1-70b", "--cluster", "dgx-h100", "--nodes", "2",
                                       "--target", "deepspeed", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["ds_config.json", "launch.sh"]
    assert (out / "launch.sh").stat().st_mode & 0o111
    assert json.loads((out / "ds_config.json").read_text())["train_batch_size"] == 1024  # 4M tokens of 4096


def test_plan_launch_from_a_saved_solution_and_plan_slurm(tmp_path):
    saved = tmp_path / "plan.json"
    saved.write_text(launcher_cases()["four nodes"].model_dump_json())
    result = CliRunner().invoke(plan, ["launch", "--solution", str(saved), "--target", "torchrun", "--out", str(tmp_path / "a")])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "a" / "plan.json").read_text())["plan"] == launcher_cases()["four nodes"].plan.model_dump(mode="json")
    result = CliRunner().invoke(plan, ["slurm", "--solution", str(saved), "--partition", "gpu", "--time", "48:00:00",
                                       "--out", str(tmp_path / "b")])
    assert result.exit_code == 0, result.output
    text = (tmp_path / "b" / "job.sbatch").read_text()
    assert "#SBATCH --partition=gpu" in text and "#SBATCH --time=48:00:00" in text


def test_plan_launch_bad_input_exits_2(tmp_path):
    run = CliRunner().invoke
    assert "unknown target" in run(plan, ["launch", "-m", "llama-3.1-8b", "-c", "dgx-h100", "--target", "nope",
                                          "--out", str(tmp_path)]).output
    saved = tmp_path / "bad.json"
    saved.write_text("{}")
    result = run(plan, ["launch", "--solution", str(saved), "--target", "torchrun", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "not a `plan solve --json` output" in result.output
    result = run(plan, ["launch", "-m", "llama-3.1-8b", "-c", "dgx-h100", "--target", "deepspeed", "--fix", "cp=2",
                        "--out", str(tmp_path)])
    assert result.exit_code == 2 and "--fix cp=2: the deepspeed target can only run cp = 1" in result.output


def test_a_target_whose_stack_has_no_ulysses_refuses_it():
    """torchtitan's context parallelism is ring-style (stacks.json cp_comms); a plan with cp_comm a2a, which
    Megatron expresses as --cp-comm-type=a2a, is refused there naming the field and the fix."""
    solution = torchtitan_cases()["zero2 cp"]
    ulysses = solution.model_copy(update={"plan": solution.plan.model_copy(update={"cp_comm": "a2a"})})
    with pytest.raises(EmitError, match=r"torchtitan cannot express context parallelism by a2a \(cp_comm\); solve with --fix cp_comm=p2p"):
        emit(ulysses, "torchtitan")
    assert "--cp-comm-type=a2a" in emit(megatron_cases()["ulysses cp"], "megatron")["launch.sh"]


def test_trl_writes_the_adapters_and_refuses_what_its_scripts_do_not_run():
    from parallelplan.constraints import Peft, Workload
    from parallelplan.emitters import EmitError
    from parallelplan.hardware import load_cluster
    from parallelplan.models import load_model
    from parallelplan.solver import solve

    model, node = load_model("llama-3.1-8b"), load_cluster("dgx-h100", nodes=1)
    qlora = Workload(kind="finetune", seq_len=4096, global_batch_size=64, peft=Peft(method="qlora"))
    found = solve(model, node, qlora, fixed={"sharding": "fsdp", **constraints("trl")["fixed"]})
    files = emit(found, "trl")
    assert {"trl_config.yaml", "accelerate_config.yaml", "launch.sh"} == set(files)
    config = yaml.safe_load(files["trl_config.yaml"])
    assert config.items() >= {"use_peft": True, "load_in_4bit": True, "use_bnb_nested_quant": True,
                              "bnb_4bit_quant_storage": "bfloat16", "lora_target_modules": "all-linear",
                              "max_length": 4096}.items()
    assert "trl.scripts.sft" in files["launch.sh"] and "distributed_type: FSDP" in files["accelerate_config.yaml"]
    pretrain = solve(model, node, Workload(seq_len=4096, global_batch_size=64), fixed=constraints("trl")["fixed"])
    with pytest.raises(EmitError, match="TRL cannot express pretrain"):
        emit(pretrain, "trl")
    wide = solve(model, node, qlora.model_copy(update={"peft": Peft()}), fixed={"tp": 2})
    with pytest.raises(EmitError, match="tp 2"):
        emit(wide, "trl")
    odd = solve(model, node, qlora.model_copy(update={"peft": Peft(alpha=12.5)}), fixed=constraints("trl")["fixed"])
    with pytest.raises(EmitError, match="lora_alpha 12.5"):
        emit(odd, "trl")
