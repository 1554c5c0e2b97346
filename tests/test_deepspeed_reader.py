"""`emitters.deepspeed.read_config`: a user's ds_config.json read back into a plan — the inverse of the
emitter on every DeepSpeed case, DeepSpeed's own batch derivation (checked against `DeepSpeedConfig` itself
in the validators run), and bad input named by its key."""

from __future__ import annotations

import json

import pytest

from emitters import EmitError, emit
from emitters.deepspeed import STAGES, read_config
from tests.emitter_cases import deepspeed_cases
from tests.validators.shims import deepspeed_config

READ_BACK = ("tp", "dp", "micro_batch_size", "offload", "precision")


@pytest.mark.parametrize("case", list(deepspeed_cases()))
def test_reading_an_emitted_config_gives_the_plan_back(case):
    solution = deepspeed_cases()[case]
    read = read_config(json.loads(emit(solution, "deepspeed")["ds_config.json"]), solution.plan.world_size)
    p = solution.plan
    assert {k: read.plan_fields[k] for k in READ_BACK} == {k: getattr(p, k) for k in READ_BACK}
    assert STAGES[read.plan_fields["sharding"]] == STAGES[p.sharding]  # FSDP is written as ZeRO-3
    assert read.plan_fields.get("hsdp_shard_size") == p.hsdp_shard_size
    assert (read.plan_fields.get("recompute") == "full") == (p.recompute == "full")
    assert read.global_batch_size == solution.workload.global_batch_size
    assert read.findings == ()


BATCHES = [  # (given, dp) → DeepSpeed 0.19's derived (train, micro, accumulation)
    ({"train_batch_size": 64, "train_micro_batch_size_per_gpu": 2}, 8, (64, 2, 4)),
    ({"train_batch_size": 64, "gradient_accumulation_steps": 2}, 8, (64, 4, 2)),
    ({"train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 3}, 8, (48, 2, 3)),
    ({"train_batch_size": 32}, 8, (32, 4, 1)),
    ({"train_micro_batch_size_per_gpu": 4}, 8, (32, 4, 1)),
    ({"train_batch_size": 64, "train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 4}, 8, (64, 2, 4)),
    ({"train_batch_size": "auto", "train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 4}, 8, (64, 2, 4)),
]


@pytest.mark.parametrize(("given", "dp", "derived"), BATCHES)
def test_the_batch_follows_deepspeeds_derivation(given, dp, derived):
    read = read_config(given, dp)
    assert (read.global_batch_size, read.plan_fields["micro_batch_size"]) == derived[:2]
    assert read.findings == ()


@pytest.mark.validators
@pytest.mark.parametrize(("given", "dp", "derived"), [b for b in BATCHES if "auto" not in b[0].values()])
def test_deepspeed_derives_the_same_batch(given, dp, derived):
    config = deepspeed_config(given, dp)
    assert (config.train_batch_size, config.train_micro_batch_size_per_gpu, config.gradient_accumulation_steps) == derived


MISMATCH = {"train_batch_size": 60, "train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 2}


def test_a_mismatched_batch_is_a_finding_with_the_right_value():
    read = read_config(MISMATCH, 16)
    assert [f.rule for f in read.findings] == ["deepspeed_batch"]
    assert "set train_batch_size to 64" in read.findings[0].fix


@pytest.mark.validators
def test_deepspeed_rejects_the_mismatched_batch_too():
    with pytest.raises(AssertionError, match="train_batch_size is not equal"):
        deepspeed_config(MISMATCH, 16)


def test_autotp_divides_the_data_parallel_size_and_bad_values_are_named():
    read = read_config({"train_micro_batch_size_per_gpu": 1, "tensor_parallel": {"autotp_size": 4}}, 16)
    assert (read.plan_fields["tp"], read.plan_fields["dp"], read.global_batch_size) == (4, 4, 4)


@pytest.mark.parametrize(("data", "key"), [
    ({"zero_optimization": {"stage": 4}}, "zero_optimization.stage"),
    ({"zero_optimization": 3}, "zero_optimization must be an object"),
    ({"bf16": {"enabled": True}, "fp16": {"enabled": True}}, "bf16.enabled and fp16.enabled"),
    ({"train_batch_size": 0}, "train_batch_size"),
    ({"train_micro_batch_size_per_gpu": "2"}, "train_micro_batch_size_per_gpu"),
    ({"zero_optimization": {"stage": 3, "offload_param": {"device": "disk"}}}, "offload_param.device"),
    ({"tensor_parallel": {"autotp_size": 3}}, "tensor_parallel.autotp_size"),
])
def test_bad_input_names_the_key(data, key):
    with pytest.raises(EmitError, match=key.replace(".", r"\.")):
        read_config(data, 16)


def test_plan_validate_reads_a_deepspeed_config(tmp_path):
    from click.testing import CliRunner

    from cli.main import plan

    solution = deepspeed_cases()["zero1"]
    path = tmp_path / "ds_config.json"
    path.write_text(emit(solution, "deepspeed")["ds_config.json"])
    args = ["validate", "-m", "llama-3.1-8b", "-c", "dgx-h100", "--nodes", str(solution.cluster.num_nodes),
            "--seq-len", str(solution.workload.seq_len), "--deepspeed", str(path)]
    ok = CliRunner().invoke(plan, [*args, "--json"])
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.stdout)["plan"]["sharding"] == "zero1"
    path.write_text(json.dumps(json.loads(path.read_text()) | {"train_batch_size": 7}))
    bad = CliRunner().invoke(plan, args)
    assert bad.exit_code == 1 and "deepspeed_batch" in bad.stdout and "fix: set train_batch_size to" in bad.stdout
    path.write_text("{not json")
    broken = CliRunner().invoke(plan, args)
    assert broken.exit_code == 2 and "not valid JSON" in broken.stderr
