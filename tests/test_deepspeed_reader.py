"""`emitters.deepspeed.read_config`: a user's ds_config.json read back into a plan — the inverse of the
emitter on every DeepSpeed case, DeepSpeed 0.19's own batch derivation (each case by hand, and through
`DeepSpeedConfig` itself in the `validators` tests), what DeepSpeed rejects as findings, and bad input named
by its key path."""

from __future__ import annotations

import json

import pytest

from parallelplan.constraints import Plan
from parallelplan.emitters import EmitError, ReadConfig, emit, read_config
from tests.emitter_cases import deepspeed_cases
from tests.validators.shims import deepspeed_config


def _emitted(case: str) -> tuple:
    solution = deepspeed_cases()[case]
    return solution, json.loads(emit(solution, "deepspeed")["ds_config.json"])


# -- the emitter's configs read back ---------------------------------------------------------------------------

@pytest.mark.parametrize("case", list(deepspeed_cases()))
def test_reading_an_emitted_config_gives_the_plan_back(case):
    solution, data = _emitted(case)
    p = solution.plan
    read = read_config(data, p.world_size)
    assert isinstance(read, ReadConfig)
    for field, value in read.plan_fields.items():  # every field it determines is the plan's
        assert value == ("zero3" if field == "sharding" and p.sharding == "fsdp" else getattr(p, field)), field
    assert {"tp", "dp", "micro_batch_size", "sharding", "offload", "precision", "master_weights",
            "optimizer"} <= set(read.plan_fields)
    assert ("grad_reduce_overlap" in read.plan_fields) == (p.sharding != "none")  # a ZeRO option
    assert (read.plan_fields.get("recompute") == "full") == (p.recompute == "full")
    assert read.plan_fields.get("hsdp_shard_size") == p.hsdp_shard_size
    assert Plan.model_validate(p.model_dump() | read.plan_fields) == p
    assert read.global_batch_size == solution.workload.global_batch_size
    assert read.findings == ()
    assert not [note for note in read.notes if note.startswith("not modelled")]  # the emitter writes only known keys


# -- the batch triple: DeepSpeed 0.19's _set_batch_related_parameters, then _batch_assertion -------------------

BATCHES = {  # name: (config, dp, what DeepSpeed derives (train, micro, accumulation), or "rejected"/"undetermined")
    "train and micro give accumulation": ({"train_batch_size": 64, "train_micro_batch_size_per_gpu": 2}, 8, (64, 2, 4)),
    "train and accumulation give micro": ({"train_batch_size": 64, "gradient_accumulation_steps": 2}, 8, (64, 4, 2)),
    "micro and accumulation give train": ({"train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 3}, 8,
                                          (48, 2, 3)),
    "train alone: no accumulation": ({"train_batch_size": 32}, 8, (32, 4, 1)),
    "micro alone: no accumulation": ({"train_micro_batch_size_per_gpu": 4}, 8, (32, 4, 1)),
    "all three, consistent": ({"train_batch_size": 64, "train_micro_batch_size_per_gpu": 2,
                               "gradient_accumulation_steps": 4}, 8, (64, 2, 4)),
    "micro alone ignores nothing else": ({"train_micro_batch_size_per_gpu": 1}, 1, (1, 1, 1)),
    "autotp: dp is a quarter": ({"train_batch_size": 32, "train_micro_batch_size_per_gpu": 2,
                                 "tensor_parallel": {"autotp_size": 4}}, 4, (32, 2, 4)),
    "train auto: derived": ({"train_batch_size": "auto", "train_micro_batch_size_per_gpu": 2,
                             "gradient_accumulation_steps": 4}, 8, (64, 2, 4)),
    "accumulation auto: derived": ({"train_batch_size": 64, "train_micro_batch_size_per_gpu": 2,
                                    "gradient_accumulation_steps": "auto"}, 8, (64, 2, 4)),
    "train and micro not dividing: floor, then the assertion": (
        {"train_batch_size": 60, "train_micro_batch_size_per_gpu": 2}, 8, "rejected"),
    "train and accumulation not dividing": ({"train_batch_size": 60, "gradient_accumulation_steps": 2}, 8, "rejected"),
    "train below dp: micro 0": ({"train_batch_size": 4}, 8, "rejected"),
    "train below micro × dp: accumulation 0": ({"train_batch_size": 8, "train_micro_batch_size_per_gpu": 2}, 8,
                                              "rejected"),
    "all three, inconsistent": ({"train_batch_size": 60, "train_micro_batch_size_per_gpu": 2,
                                 "gradient_accumulation_steps": 2}, 16, "rejected"),
    "accumulation alone": ({"gradient_accumulation_steps": 4}, 8, "undetermined"),
    "none of the three": ({}, 8, "undetermined"),
    "all auto (the HF Trainer's)": ({"train_batch_size": "auto", "train_micro_batch_size_per_gpu": "auto",
                                     "gradient_accumulation_steps": "auto"}, 8, "undetermined"),
}
_WORLD = {"autotp: dp is a quarter": 16}  # 16 GPUs, dp 4; the rest run on dp GPUs (no AutoTP)


def _world(name: str, dp: int) -> int:
    return _WORLD.get(name, dp)


@pytest.mark.parametrize("name", list(BATCHES))
def test_the_batch_follows_deepspeeds_derivation(name):
    data, dp, derived = BATCHES[name]
    read = read_config(data, _world(name, dp))
    assert read.plan_fields["dp"] == dp
    rules = [f.rule for f in read.findings]
    if derived == "undetermined":
        assert (read.global_batch_size, "micro_batch_size" in read.plan_fields, rules) == (None, False, [])
        assert any("the batch is not fixed" in note for note in read.notes)
    elif derived == "rejected":
        assert rules == ["deepspeed_batch"]
        assert read.global_batch_size == data["train_batch_size"]
    else:
        train, micro, accumulation = derived
        assert (read.global_batch_size, read.plan_fields["micro_batch_size"], rules) == (train, micro, [])
        assert train == micro * accumulation * dp
    assert ('"auto"' in " ".join(read.notes)) == ("auto" in data.values())


def _without_auto(data: dict) -> dict:
    """What DeepSpeed sees once the HF integration has dropped an "auto" it does not fill (not given)."""
    return {key: value for key, value in data.items() if value != "auto"}


@pytest.mark.validators
@pytest.mark.parametrize("name", list(BATCHES))
def test_deepspeed_derives_the_same_batch(name):
    data, dp, derived = BATCHES[name]
    data = _without_auto(data)
    if isinstance(derived, tuple):
        config = deepspeed_config(data, dp)
        assert (config.train_batch_size, config.train_micro_batch_size_per_gpu,
                config.gradient_accumulation_steps) == derived
    else:
        message = "has to be greater than 0|train_batch_size is not equal" if derived == "rejected" else "Either train_batch_size"
        with pytest.raises(AssertionError, match=message):
            deepspeed_config(data, dp)


MISMATCH = {"train_batch_size": 60, "train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 2}


def test_a_mismatched_batch_is_a_finding_with_the_right_value():
    read = read_config(MISMATCH, 16)
    assert [f.rule for f in read.findings] == ["deepspeed_batch"]
    assert "train_batch_size 60 != train_micro_batch_size_per_gpu 2" in read.findings[0].message
    assert read.findings[0].fix.startswith("set train_batch_size to 64 ")


@pytest.mark.parametrize(("data", "dp", "values"), [
    ({"train_batch_size": 60, "train_micro_batch_size_per_gpu": 2}, 8, "48 or 64"),
    ({"train_batch_size": 60, "gradient_accumulation_steps": 2}, 8, "48 or 64"),
    ({"train_batch_size": 4}, 8, "8 "),
    ({"train_batch_size": 8, "train_micro_batch_size_per_gpu": 2}, 8, "16 "),
])
def test_a_derivation_that_fails_names_the_values_that_divide(data, dp, values):
    (finding,) = read_config(data, dp).findings
    assert finding.fix.startswith(f"set train_batch_size to {values}")


@pytest.mark.validators
def test_deepspeed_rejects_the_mismatched_batch_and_accepts_the_fix():
    with pytest.raises(AssertionError, match="train_batch_size is not equal"):
        deepspeed_config(MISMATCH, 16)
    assert deepspeed_config(MISMATCH | {"train_batch_size": 64}, 16).gradient_accumulation_steps == 2
    for train in (48, 64):  # both values the fix names for a derivation that does not divide
        assert deepspeed_config({"train_batch_size": train, "train_micro_batch_size_per_gpu": 2}, 8).train_batch_size == train


# -- the rest of the config ------------------------------------------------------------------------------------

BATCH = {"train_micro_batch_size_per_gpu": 1}


def _fields(data: dict, world: int = 8) -> dict:
    return read_config(BATCH | data, world).plan_fields


def test_autotp_divides_the_world_into_the_data_parallel_size():
    read = read_config(BATCH | {"tensor_parallel": {"autotp_size": 4}}, 16)
    assert (read.plan_fields["tp"], read.plan_fields["dp"], read.global_batch_size) == (4, 4, 4)
    assert any("without one DeepSpeedConfig counts all 16" in note for note in read.notes)
    assert _fields({"tensor_parallel": {"autotp_size": 0}})["tp"] == 1  # DeepSpeed's default: AutoTP off


@pytest.mark.parametrize(("zero", "expected"), [
    ({}, {"sharding": "none", "offload": "none"}),
    ({"stage": 1}, {"sharding": "zero1", "grad_reduce_overlap": False}),  # DeepSpeed's default below stage 3
    ({"stage": 2, "overlap_comm": True}, {"sharding": "zero2", "grad_reduce_overlap": True}),
    ({"stage": 3}, {"sharding": "zero3", "grad_reduce_overlap": True}),  # on by default at stage 3
    ({"stage": 3, "zero_hpz_partition_size": 8}, {"sharding": "hsdp", "hsdp_shard_size": 8}),
    ({"stage": 3, "zero_hpz_partition_size": 1}, {"sharding": "zero3"}),
    ({"stage": 2, "zero_hpz_partition_size": 8}, {"sharding": "zero2"}),  # hpZ is ZeRO-3 only
    ({"stage": 2, "offload_optimizer": {"device": "cpu"}}, {"offload": "optimizer"}),
    ({"stage": 3, "offload_optimizer": {"device": "nvme"}, "offload_param": {"device": "nvme"}}, {"offload": "params"}),
    ({"stage": 3, "offload_param": {"device": "cpu"}}, {"offload": "params"}),
    ({"stage": 3, "offload_optimizer": {"device": "none"}}, {"offload": "none"}),
    ({"stage": 2, "offload_param": {"device": "cpu"}}, {"offload": "none"}),  # parameter offload is ZeRO-3 only
    ({"stage": 0, "offload_optimizer": {"device": "cpu"}}, {"offload": "none"}),  # offload needs ZeRO
    ({"stage": 2, "cpu_offload": True}, {"offload": "optimizer"}),  # the deprecated boolean
])
def test_zero_optimization_maps_to_the_plan(zero, expected):
    fields = _fields({"zero_optimization": zero})
    assert {key: fields.get(key) for key in expected} == expected
    if zero.get("stage", 0) == 0:
        assert "grad_reduce_overlap" not in fields  # DeepSpeed reduces after the backward pass at stage 0
    if fields["sharding"] != "hsdp":
        assert "hsdp_shard_size" not in fields


def test_ignored_and_approximated_settings_are_noted():
    notes = " ".join(read_config(BATCH | {"zero_optimization": {
        "stage": 3, "offload_param": {"device": "nvme"}, "zero_quantized_gradients": True}}, 8).notes)
    assert "NVMe offload is modelled as CPU offload" in notes
    assert "offload_param without offload_optimizer" in notes
    assert "not modelled: zero_optimization.zero_quantized_gradients" in notes
    notes = " ".join(read_config(BATCH | {"zero_optimization": {"stage": 2, "zero_hpz_partition_size": 4}}, 8).notes)
    assert "zero_hpz_partition_size 4 ignored" in notes and "overlap_comm not given" in notes
    assert "not modelled: compile, hybrid_engine" in read_config(BATCH | {"compile": {}, "hybrid_engine": {},
                                                                          "scheduler": {}}, 8).notes


@pytest.mark.parametrize(("data", "precision"), [
    ({}, "fp32"),
    ({"bf16": {"enabled": True}}, "bf16"),
    ({"bfloat16": {"enabled": True}}, "bf16"),  # DeepSpeed's old name
    ({"fp16": {"enabled": True, "loss_scale": 0}}, "fp16"),
    ({"bf16": {"enabled": False}, "fp16": {"enabled": True}}, "fp16"),
    ({"bf16": {"enabled": True}, "fp16": {"enabled": "auto"}}, "bf16"),
    ({"bf16": {"enabled": "auto"}, "fp16": {"enabled": "auto"}}, None),  # the HF Trainer's example config
    ({"torch_autocast": {"enabled": True, "dtype": "bfloat16"}}, "bf16"),
])
def test_precision(data, precision):
    read = read_config(BATCH | data, 8)
    assert read.plan_fields.get("precision") == precision
    assert read.plan_fields["master_weights"] is True
    if precision is None:
        assert any('"auto"' in note for note in read.notes)


@pytest.mark.parametrize(("optimizer", "expected"), [
    ({"type": "AdamW"}, "adamw"), ({"type": "Adam", "params": {"lr": "auto"}}, "adamw"), ({"type": "adam"}, "adamw"),
    ({"type": "Lion"}, "lion"), ({"type": "OneBitLamb"}, None), (None, None),
])
def test_the_optimizer_type(optimizer, expected):
    read = read_config(BATCH | ({"optimizer": optimizer} if optimizer else {}), 8)
    assert read.plan_fields.get("optimizer") == expected
    assert (expected is None) == any("optimizer left to the caller" in note for note in read.notes)


def test_activation_checkpointing_is_full_recompute_with_a_note():
    read = read_config(BATCH | {"activation_checkpointing": {"partition_activations": False}}, 8)
    assert read.plan_fields["recompute"] == "full"
    assert any("deepspeed.checkpointing" in note for note in read.notes)
    assert "recompute" not in _fields({})


def test_the_deprecated_boolean_zero_optimization_is_stage_1():
    assert _fields({"zero_optimization": True})["sharding"] == "zero1"


REMOVED = [({"elasticity": {"enabled": True}}, "elasticity"),
           ({"zero_optimization": {"stage": 3, "mics_shard_size": 8}}, "zero_optimization.mics_shard_size")]


@pytest.mark.parametrize(("data", "key"), REMOVED)
def test_keys_deepspeed_removed_are_findings(data, key):
    (finding,) = read_config(BATCH | data, 8).findings
    assert (finding.rule, finding.fix) == ("deepspeed_removed_key", f"remove {key}")


@pytest.mark.validators
@pytest.mark.parametrize(("data", "key"), REMOVED)
def test_deepspeed_rejects_the_removed_keys(data, key):
    dsc = pytest.importorskip("deepspeed.runtime.config")
    with pytest.raises(dsc.DeepSpeedConfigError, match=key.rsplit(".", 1)[-1]):
        deepspeed_config(BATCH | data, 8)


@pytest.mark.validators
def test_deepspeed_rejects_bf16_with_fp16():
    with pytest.raises(AssertionError, match="cannot be simultaneously enabled"):
        deepspeed_config(BATCH | {"bf16": {"enabled": True}, "fp16": {"enabled": True}}, 8)


# -- bad input: EmitError, one line naming the key path --------------------------------------------------------

BAD = [
    ({"zero_optimization": {"stage": 4}}, "zero_optimization.stage"),
    ({"zero_optimization": {"stage": "2"}}, "zero_optimization.stage"),
    ({"zero_optimization": {"stage": True}}, "zero_optimization.stage"),
    ({"zero_optimization": 3}, "zero_optimization"),
    ({"zero_optimization": {"stage": 3, "offload_param": "cpu"}}, "zero_optimization.offload_param"),
    ({"zero_optimization": {"stage": 3, "offload_param": {"device": "disk"}}}, "zero_optimization.offload_param.device"),
    ({"zero_optimization": {"stage": 2, "offload_optimizer": {"device": "gpu"}}},
     "zero_optimization.offload_optimizer.device"),
    ({"zero_optimization": {"stage": 3, "zero_hpz_partition_size": "8"}}, "zero_optimization.zero_hpz_partition_size"),
    ({"zero_optimization": {"stage": 2, "overlap_comm": "yes"}}, "zero_optimization.overlap_comm"),
    ({"bf16": {"enabled": True}, "fp16": {"enabled": True}}, "bf16.enabled and fp16.enabled"),
    ({"bfloat16": {"enabled": True}, "fp16": {"enabled": True}}, "bfloat16.enabled and fp16.enabled"),
    ({"bf16": {"enabled": "yes"}}, "bf16.enabled"),
    ({"fp16": True}, "fp16"),
    ({"train_batch_size": 0}, "train_batch_size"),
    ({"train_batch_size": 2.5}, "train_batch_size"),
    ({"train_batch_size": True}, "train_batch_size"),
    ({"train_micro_batch_size_per_gpu": "2"}, "train_micro_batch_size_per_gpu"),
    ({"gradient_accumulation_steps": -1}, "gradient_accumulation_steps"),
    ({"tensor_parallel": {"autotp_size": 3}}, "tensor_parallel.autotp_size"),
    ({"tensor_parallel": {"autotp_size": "2"}}, "tensor_parallel.autotp_size"),
    ({"tensor_parallel": 2}, "tensor_parallel"),
    ({"optimizer": "AdamW"}, "optimizer"),
    ({"optimizer": {"type": 3}}, "optimizer.type"),
    ({"activation_checkpointing": True}, "activation_checkpointing"),
    ({"sequence_parallel_size": 2}, "sequence_parallel_size"),
]


@pytest.mark.parametrize(("data", "key"), BAD)
def test_bad_input_names_the_key(data, key):
    with pytest.raises(EmitError) as raised:
        read_config(data, 16)
    message = str(raised.value)
    assert message.startswith(f"DeepSpeed config: {key} ") and "\n" not in message


def test_a_bad_value_is_shown_with_what_is_allowed():
    with pytest.raises(EmitError, match=r"zero_optimization\.stage must be 0, 1, 2 or 3, got 4"):
        read_config({"zero_optimization": {"stage": 4}}, 8)
    with pytest.raises(EmitError, match=r"tensor_parallel\.autotp_size must be a positive integer dividing the world "
                                        r"size 16, got 3"):
        read_config({"tensor_parallel": {"autotp_size": 3}}, 16)
    with pytest.raises(EmitError, match=r"offload_param\.device must be 'none' or 'cpu' or 'nvme', got 'disk'"):
        read_config({"zero_optimization": {"stage": 3, "offload_param": {"device": "disk"}}}, 8)


def test_plan_validate_reads_a_deepspeed_config(tmp_path):
    from click.testing import CliRunner

    from parallelplan.cli.main import plan

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
