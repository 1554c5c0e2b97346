"""`plan validate` on what users actually have: a Megatron-LM argument list or launch script, a torchtitan
TOML or command line, an Accelerate YAML — each reader the inverse of its emitter on every emitter case
(the files our launch targets write, which the frameworks' own parsers accept in the validator tests), on
hand-written configs in the frameworks' documented forms, with their findings and bad input named."""

from __future__ import annotations

import pytest
import yaml
from click.testing import CliRunner

from parallelplan.cli.main import plan as plan_cli
from parallelplan.constraints import Plan
from parallelplan.emitters import EmitError, emit
from parallelplan.emitters.accelerate_reader import read_config as read_accelerate
from parallelplan.emitters.megatron_reader import read_arguments, words_from_text
from parallelplan.emitters.torchtitan_reader import read_config as read_torchtitan
from parallelplan.emitters.torchtitan_reader import sections_from_text
from tests.emitter_cases import accelerate_cases, megatron_cases, torchtitan_cases


def _same_plan(solution, read) -> None:
    p = solution.plan
    for field, value in read.plan_fields.items():  # every field the reader determines is the plan's
        assert value == getattr(p, field), field
    assert Plan.model_validate(p.model_dump() | read.plan_fields) == p
    assert read.findings == ()


@pytest.mark.parametrize("case", list(megatron_cases()))
def test_megatron_launch_scripts_read_back_to_their_plans(case):
    solution = megatron_cases()[case]
    read = read_arguments(words_from_text(emit(solution, "megatron")["launch.sh"]), solution.plan.world_size,
                          solution.model.num_layers)
    if solution.plan.attention_kernel == "flash3":  # --attention-backend flash: 2 or 3 by what is installed
        assert read.plan_fields["attention_kernel"] == "flash2" and any("FlashAttention-3" in n for n in read.notes)
        solution = solution.model_copy(update={"plan": solution.plan.model_copy(update={"attention_kernel": "flash2"})})
    _same_plan(solution, read)
    assert {"tp", "pp", "dp", "cp", "sharding", "recompute", "precision", "optimizer", "micro_batch_size"} <= set(read.plan_fields)
    assert read.global_batch_size == solution.workload.global_batch_size and read.seq_len == solution.workload.seq_len


@pytest.mark.parametrize("case", list(torchtitan_cases()))
def test_torchtitan_command_lines_read_back_to_their_plans(case):
    solution = torchtitan_cases()[case]
    read = read_torchtitan(sections_from_text(emit(solution, "torchtitan")["launch.sh"]), solution.plan.world_size,
                           solution.model.num_layers)
    _same_plan(solution, read)
    assert {"tp", "pp", "dp", "cp", "ep", "sharding", "recompute", "offload"} <= set(read.plan_fields)
    assert read.plan_fields.get("vpp", 1) == solution.plan.vpp
    assert read.global_batch_size == solution.workload.global_batch_size and read.seq_len == solution.workload.seq_len


@pytest.mark.parametrize("case", list(accelerate_cases()))
def test_accelerate_configs_read_back_to_their_plans(case):
    solution = accelerate_cases()[case]
    files = emit(solution, "accelerate")
    data = yaml.safe_load(next(text for name, text in files.items() if name.endswith(".yaml")))
    read = read_accelerate(data, solution.plan.world_size, solution.model.num_layers)
    _same_plan(solution, read)
    assert {"tp", "pp", "dp", "cp", "sharding", "precision"} <= set(read.plan_fields)


TORCHTITAN_TOML = """
[job]
description = "Llama 3 8B training"

[model]
name = "llama3"
flavor = "8B"

[training]
local_batch_size = 1
seq_len = 8192
global_batch_size = 64
mixed_precision_param = "bfloat16"

[parallelism]
data_parallel_replicate_degree = 2
data_parallel_shard_degree = -1
tensor_parallel_degree = 2
pipeline_parallel_degree = 1
context_parallel_degree = 1

[activation_checkpoint]
mode = "selective"
selective_ac_option = "op"
"""


def test_a_torchtitan_toml_in_its_documented_form():
    read = read_torchtitan(sections_from_text(TORCHTITAN_TOML), world_size=16)
    assert read.plan_fields.items() >= {"tp": 2, "dp": 8, "sharding": "hsdp", "hsdp_shard_size": 4, "recompute": "selective_mm",
                                     "precision": "bf16", "micro_batch_size": 1, "sequence_parallel": True}.items()
    assert (read.global_batch_size, read.seq_len) == (64, 8192)


def test_accelerate_fsdp1_strategies_and_the_process_count():
    base = {"distributed_type": "FSDP", "mixed_precision": "bf16", "num_processes": 16,
            "fsdp_config": {"fsdp_sharding_strategy": "HYBRID_SHARD", "fsdp_activation_checkpointing": True}}
    read = read_accelerate(base, world_size=16)
    assert read.plan_fields["sharding"] == "hsdp" and read.plan_fields["hsdp_shard_size"] == 8
    assert read.plan_fields["recompute"] == "full" and read.findings == ()
    grad_op = read_accelerate({**base, "fsdp_config": {"fsdp_sharding_strategy": "SHARD_GRAD_OP"}}, world_size=16)
    assert grad_op.plan_fields["sharding"] == "zero2"
    wrong = read_accelerate(base, world_size=8)
    assert [f.rule for f in wrong.findings] == ["accelerate_num_processes"]


def test_megatron_findings_and_flags_in_either_form():
    words = words_from_text("torchrun --nproc-per-node=8 pretrain_gpt.py --tensor-model-parallel-size 2 \\\n"
                            "  --pipeline-model-parallel-size=2 --num-layers 30 --micro-batch-size 2 --global-batch-size 30 "
                            "--recompute-granularity selective --recompute-modules core_attn mlp --fp16  # a comment")
    read = read_arguments(words, world_size=16, num_layers=32)
    assert read.plan_fields.items() >= {"tp": 2, "pp": 2, "dp": 4, "precision": "fp16", "recompute": "selective",
                                     "recompute_modules": ("core_attn", "mlp"), "micro_batch_size": 2}.items()
    assert sorted(f.rule for f in read.findings) == ["megatron_batch", "megatron_num_layers"]


def test_the_fp8_recipe_is_read_from_megatron_flags_and_torchtitan_converters():
    """Megatron's --fp8-recipe (its default, delayed, is the megatron stack's: a plan that names none);
    torchtitan's MX converter is fp8 with the mxfp8 recipe."""
    def recipe(*flags: str) -> str | None:
        return read_arguments(["--fp8-format", "hybrid", *flags], world_size=8).plan_fields["fp8_recipe"]

    assert (recipe(), recipe("--fp8-recipe", "delayed"), recipe("--fp8-recipe=tensorwise")) == (None, None, "tensorwise")
    read = read_torchtitan({"model": {"converters": ["quantize.linear.mx"]}}, world_size=8)
    assert (read.plan_fields["precision"], read.plan_fields["fp8_recipe"]) == ("fp8", "mxfp8")


@pytest.mark.parametrize("name, schedule", [("DualPipeV", "dualpipev"), ("ZBVZeroBubble", "zbv")])
def test_torchtitans_v_schedules_hold_two_chunks_per_rank_without_layers_per_stage(name, schedule):
    read = read_torchtitan({"parallelism": {"pipeline_parallel_degree": 4, "pipeline_parallel_schedule": name}},
                           world_size=8, num_layers=32)
    assert (read.plan_fields["schedule"], read.plan_fields["vpp"]) == (schedule, 2)


@pytest.mark.parametrize("reader,args,message", [
    (read_arguments, (["--fp8-format", "e4m3", "--fp8-recipe", "custom"], 8), "--fp8-recipe: invalid choice: 'custom'"),
    (read_arguments, (["--tensor-model-parallel-size", "two"], 8), "--tensor-model-parallel-size"),
    (read_arguments, (["--tensor-model-parallel-size", "3"], 8), "not divisible by tp·pp·cp"),
    (read_arguments, (["--optimizer", "muon"], 8), "--optimizer 'muon'"),
    (read_torchtitan, ({"parallelism": {"tensor_parallel_degree": "x"}}, 8), "tensor_parallel_degree must be an integer"),
    (read_torchtitan, ({"parallelism": {"data_parallel_shard_degree": 3}}, 8), "ParallelDims"),
    (read_torchtitan, ({"activation_checkpoint": {"mode": "most"}}, 8), "activation_checkpoint.mode"),
    (read_accelerate, ({"distributed_type": "TPU"}, 8), "distributed_type 'TPU'"),
    (read_accelerate, ({"distributed_type": "DEEPSPEED", "deepspeed_config": {"zero_stage": 5}}, 8), "zero_stage"),
])
def test_bad_configs_name_the_key(reader, args, message):
    with pytest.raises(EmitError, match=message.replace("(", r"\(").replace("·", "·")):
        reader(*args)


def _validate(*args: str):
    return CliRunner().invoke(plan_cli, ["validate", *args])


@pytest.mark.parametrize("target,flag,name", [("megatron", "--megatron", "launch.sh"), ("torchtitan", "--torchtitan", "launch.sh"),
                                              ("accelerate", "--accelerate", None)])
def test_plan_validate_reads_the_files_plan_launch_writes(tmp_path, target, flag, name):
    assert CliRunner().invoke(plan_cli, ["launch", "-m", "llama-3.1-8b", "--nodes", "2", "--target", target,
                                         "--out", str(tmp_path)]).exit_code == 0
    file = tmp_path / (name or next(p.name for p in tmp_path.iterdir() if p.suffix == ".yaml"))
    result = _validate("-m", "llama-3.1-8b", "--nodes", "2", flag, str(file))
    assert result.exit_code == 0, result.output
    assert "PASS" in result.output


def test_plan_validate_names_what_a_megatron_command_line_breaks(tmp_path):
    args = tmp_path / "args.txt"
    args.write_text("--tensor-model-parallel-size 3 --micro-batch-size 1 --global-batch-size 7 --bf16 --seq-length 2048\n")
    result = _validate("-m", "llama-3.1-8b", "--gpus", "6", "--megatron", str(args))
    assert result.exit_code == 1
    assert "x attention_heads_by_tp" in result.output and "x megatron_batch" in result.output
    assert "2048 tokens" in result.output  # the command line's --seq-length, not the default


def test_only_one_configuration_at_a_time(tmp_path):
    file = tmp_path / "a.txt"
    file.write_text("--bf16")
    result = _validate("-m", "llama-3.1-8b", "--megatron", str(file), "--torchtitan", str(file))
    assert result.exit_code == 2 and "give one of --torchtitan, --megatron, not several" in result.stderr
