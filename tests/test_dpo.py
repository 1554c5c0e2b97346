"""DPO (`Workload(kind="rlhf", algorithm="dpo")`, `constraints.dpo`) against what PyTorch measures.

Memory: a DPO step as TRL's DPOTrainer runs it — chosen and rejected concatenated, a frozen reference
scoring them under ``no_grad`` (a bf16 copy, or with LoRA the policy's own base with adapters disabled),
the DPO loss, backward, AdamW — under MemTracker in FakeTensorMode at real widths
(`reference.dpo_training_step_peak`); the plan models that recipe (one process, HF eager modules, no
master weights, gradients freed by ``zero_grad``).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from parallelplan.constraints import Peft, Plan, Workload, evaluate
from parallelplan.hardware import load_cluster
from parallelplan.models import load_model

FIXTURES = Path(__file__).parent / "fixtures" / "hf_configs"
CLUSTER = load_cluster("dgx-h100", nodes=1)
TOLERANCE = 0.01
"""The issue asks for 5%; these cases are measured within 0.01%."""


def dpo(seq_len: int, examples: int, peft: Peft | None = None) -> Workload:
    return Workload(kind="rlhf", algorithm="dpo", seq_len=seq_len, global_batch_size=examples, peft=peft)


# (fixture, layers, sequence length, examples per micro-batch, LoRA rank or None)
CASES = [
    ("llama", 4, 2048, 1, None),      # peak at the loss: the policy's logits over both sequences
    ("llama", 4, 1024, 2, None),
    ("qwen3_moe", 4, 1024, 1, None),  # peak in the optimizer step
    ("llama", 4, 2048, 1, 16),        # the reference is the policy's base, adapters disabled
    ("llama", 4, 4096, 2, 16),
]


@pytest.mark.slow
@pytest.mark.parametrize("family,layers,seq_len,batch,lora", CASES,
                         ids=[f"{c[0]}-L{c[1]}-s{c[2]}-b{c[3]}" + (f"-lora{c[4]}" if c[4] else "") for c in CASES])
def test_dpo_memory_matches_memtracker(family, layers, seq_len, batch, lora):
    from reference import dpo_training_step_peak, with_layers

    config = with_layers(json.loads((FIXTURES / family / "config.json").read_text()), layers)
    measured = dpo_training_step_peak(config, seq_len, batch=batch, lora_rank=lora)
    plan = Plan(dp=CLUSTER.total_gpus, micro_batch_size=batch, kernels="unfused", master_weights=False,
                persistent_grads=False)
    work = dpo(seq_len, batch * CLUSTER.total_gpus, Peft(rank=lora) if lora else None)
    memory = evaluate(load_model(config), CLUSTER, work, [plan]).memory
    ours = {part: float(getattr(memory, part)[0]) for part in ("weights", "gradients", "optimizer", "activations")}
    peak = sum(measured[kind] for kind in ("PARAM", "GRAD", "OPT", "ACT", "TEMP"))
    error = sum(ours.values()) / peak - 1
    assert abs(error) <= TOLERANCE, f"predicted {ours} vs measured {measured}: {100 * error:+.2f}%"
    assert ours["weights"] == measured["PARAM"]  # policy + reference copy, or one shared base with LoRA


def test_reference_copy_is_held_in_the_compute_dtype_and_sharded_like_the_weights():
    model = load_model("llama-3.1-8b")
    tune = Workload(kind="finetune", seq_len=2048, global_batch_size=64)
    for plan, share in ((Plan(dp=8), 1), (Plan(dp=8, sharding="zero3"), 8)):
        base = evaluate(model, CLUSTER, tune, [plan]).memory.weights[0]
        with_reference = evaluate(model, CLUSTER, dpo(2048, 32), [plan]).memory.weights[0]
        assert with_reference - base == pytest.approx(2 * model.total_params / share, rel=1e-6)
    lora = Peft()
    base = evaluate(model, CLUSTER, Workload(kind="finetune", seq_len=2048, global_batch_size=64, peft=lora), [Plan(dp=8)])
    assert evaluate(model, CLUSTER, dpo(2048, 32, lora), [Plan(dp=8)]).memory.weights[0] == base.memory.weights[0]


def test_dpo_runs_both_sequences_and_a_reference_forward():
    """32 pairs are the 64 sequences of a 64-sequence fine-tune, plus the reference's forward: a third more
    compute (forward 1 of the 3 a training pass costs); twice the activations per micro-batch."""
    model = load_model("llama-3.1-8b")
    plan = [Plan(dp=8)]
    tune = evaluate(model, CLUSTER, Workload(kind="finetune", seq_len=2048, global_batch_size=64), plan)
    pref = evaluate(model, CLUSTER, dpo(2048, 32), plan)
    assert pref.tokens_per_s[0] * pref.time.step[0] == tune.tokens_per_s[0] * tune.time.step[0]  # same tokens
    assert pref.time.compute[0] / tune.time.compute[0] == pytest.approx(4 / 3, rel=0.05)
    assert pref.model_flops_per_step / tune.model_flops_per_step == pytest.approx(4 / 3, rel=1e-9)
    pair = evaluate(model, CLUSTER, Workload(kind="finetune", seq_len=2048, global_batch_size=64), [Plan(dp=8, micro_batch_size=2)])
    assert pref.memory.activations[0] == pytest.approx(pair.memory.activations[0])


def test_algorithm_and_kind_go_together():
    with pytest.raises(ValueError, match="kind 'rlhf' needs one of dpo"):
        Workload(kind="rlhf", seq_len=2048, global_batch_size=8)
    with pytest.raises(ValueError, match="only it takes one"):
        Workload(kind="finetune", algorithm="dpo", seq_len=2048, global_batch_size=8)
    with pytest.raises(ValueError, match="algorithm"):
        Workload(kind="rlhf", algorithm="sft", seq_len=2048, global_batch_size=8)


def test_cli_prices_dpo():
    from click.testing import CliRunner

    from parallelplan.cli.main import plan

    result = CliRunner().invoke(plan, ["solve", "-m", "llama-3.1-8b", "-c", "dgx-h100", "--nodes", "1", "--kind", "rlhf",
                                       "--algorithm", "dpo", "--peft", "lora", "--seq-len", "2048", "--global-batch", "64"])
    assert result.exit_code == 0, result.output
    assert "rlhf (DPO: chosen + rejected per example; LoRA r=16 on all-linear)" in result.output
    bad = CliRunner().invoke(plan, ["solve", "-m", "llama-3.1-8b", "-c", "dgx-h100", "--nodes", "1", "--kind", "rlhf"])
    assert bad.exit_code == 2 and "algorithm" in bad.stderr
