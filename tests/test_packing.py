"""Examples shorter than the sequence (`Workload.example_len`, ``packing``): padded examples cost the full
sequence and count their own tokens; packed examples under flash attention cost what the same examples
as separate sequences cost (whose FLOPs and memory the cost model's other tests check against PyTorch);
under an eager kernel the mask skips no work."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from parallelplan.cli.main import plan as cli
from parallelplan.constraints import Plan, Workload, estimate
from parallelplan.emitters import EmitError, emit
from parallelplan.hardware import load_cluster
from parallelplan.models import load_model
from parallelplan.solver import solve
from parallelplan.solver.cheapest_cluster import matmul_flops_per_token
from parallelplan.solver.exhaustive import oracle

LLAMA_8B = load_model("llama-3.1-8b")
H100 = load_cluster("dgx-h100", nodes=1)
SEQ, EXAMPLE = 4096, 512
FSDP = Plan(dp=8, micro_batch_size=1, sharding="fsdp")


def model_flops(e) -> float:
    """The model FLOPs of one step on the node's 8 GPUs, from the estimate's per-GPU rate."""
    return e.model_tflops_per_gpu * 1e12 * 8 * e.step_time_s


def finetune(**fields) -> Workload:
    return Workload(kind="finetune", seq_len=fields.pop("seq_len", SEQ), global_batch_size=fields.pop("batch", 64),
                    **fields)


def test_packed_examples_cost_what_the_same_examples_as_sequences_cost():
    """8 examples of 512 packed into each 4096-token sequence under flash attention are, token for token,
    the computation of 8 separate 512-token sequences: the same step, memory, throughput and model FLOPs."""
    packed = estimate(LLAMA_8B, H100, FSDP, finetune(example_len=EXAMPLE, packing=True))
    separate = estimate(LLAMA_8B, H100, FSDP.model_copy(update={"micro_batch_size": SEQ // EXAMPLE}),
                        finetune(seq_len=EXAMPLE, batch=64 * SEQ // EXAMPLE))
    assert packed.step_time_s == pytest.approx(separate.step_time_s, rel=1e-9)
    assert packed.memory.total == pytest.approx(separate.memory.total, rel=1e-9)
    assert packed.tokens_per_s == pytest.approx(separate.tokens_per_s, rel=1e-9)
    assert model_flops(packed) == pytest.approx(model_flops(separate), rel=1e-9)
    full = estimate(LLAMA_8B, H100, FSDP, finetune())
    assert packed.step_time_s < full.step_time_s  # attention over 512 keys, not 4096


def test_padded_examples_cost_the_full_sequence_and_count_their_own_tokens():
    padded = estimate(LLAMA_8B, H100, FSDP, finetune(example_len=EXAMPLE))
    full = estimate(LLAMA_8B, H100, FSDP, finetune())
    assert padded.step_time_s == pytest.approx(full.step_time_s, rel=1e-12)
    assert padded.memory.total == full.memory.total
    assert padded.tokens_per_s == pytest.approx(full.tokens_per_s * EXAMPLE / SEQ, rel=1e-12)
    data_tokens = 64 * EXAMPLE
    assert model_flops(padded) == pytest.approx(data_tokens * LLAMA_8B.flops_per_token(EXAMPLE), rel=1e-9)
    assert any(note.startswith("Data: examples of 512 tokens, each padded to 4096 (88%") for note in padded.notes)


def test_an_eager_kernel_computes_the_whole_masked_sequence():
    """The block-diagonal mask of packed examples saves no work in a materialised attention: the step is
    the full sequence's, and all its tokens are data."""
    eager = FSDP.model_copy(update={"attention_kernel": "eager", "kernels": "unfused"})
    packed = estimate(LLAMA_8B, H100, eager, finetune(example_len=EXAMPLE, packing=True))
    full = estimate(LLAMA_8B, H100, eager, finetune())
    assert packed.step_time_s == pytest.approx(full.step_time_s, rel=1e-12)
    assert packed.tokens_per_s == pytest.approx(full.tokens_per_s, rel=1e-12)


def test_padding_is_priced_in_budgets_and_cluster_bounds():
    """A token budget counts data tokens, so padding multiplies the matmul FLOPs each one needs."""
    padded, full = finetune(example_len=EXAMPLE), finetune()
    assert matmul_flops_per_token(LLAMA_8B, padded) == pytest.approx(
        matmul_flops_per_token(LLAMA_8B, full) * SEQ / EXAMPLE, rel=1e-12)
    assert padded.data_tokens_per_step == 64 * EXAMPLE and full.data_tokens_per_step == 64 * SEQ


@pytest.mark.parametrize("packing", [False, True])
def test_the_solvers_plan_for_short_examples_is_the_oracles(packing):
    """Exhaustive enumeration of the same cost model (data parallelism over the node pinned, every other
    dimension free) agrees with CP-SAT's choice."""
    workload = finetune(example_len=EXAMPLE, packing=packing, batch=16)
    fixed = {"dp": 8, "tp": 1, "pp": 1}
    expected = oracle(LLAMA_8B, H100, workload, fixed=fixed)
    found = solve(LLAMA_8B, H100, workload, fixed=fixed, node_counts=[1])
    assert found.optimal and found.plan == expected.plan
    assert found.estimate.tokens_per_s == pytest.approx(
        estimate(LLAMA_8B, H100, found.plan, workload).tokens_per_s, rel=1e-9)


@pytest.mark.parametrize("fields,message", [
    ({"example_len": SEQ + 1}, "example_len 4097 exceeds seq_len 4096"),
    ({"packing": True}, "packing lays examples end to end"),
    ({"kind": "inference", "example_len": 100}, "example_len: examples shorter than seq_len apply to training"),
])
def test_bad_examples_are_named(fields, message):
    with pytest.raises(ValueError, match=message):
        Workload(kind=fields.pop("kind", "finetune"), seq_len=SEQ, global_batch_size=8, **fields)


def test_cli_takes_example_len_and_packing_and_names_bad_input():
    ok = CliRunner().invoke(cli, ["solve", "-m", "llama-3.1-8b", "-c", "dgx-h100", "--kind", "finetune", "--seq-len",
                                  "4096", "--example-len", "600", "--packing", "--json"])
    assert ok.exit_code == 0, ok.output
    bad = CliRunner().invoke(cli, ["solve", "-m", "llama-3.1-8b", "-c", "dgx-h100", "--packing"])
    assert bad.exit_code == 2 and bad.output.strip().count("\n") == 0
    assert "packing" in bad.output and "example_len" in bad.output


def test_only_trl_writes_packed_examples():
    found = solve(LLAMA_8B, H100, finetune(example_len=EXAMPLE, packing=True))
    with pytest.raises(EmitError, match="packed examples"):
        emit(found, "torchrun")
