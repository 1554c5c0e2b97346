"""fp8 scaling recipes (`constraints.fp8`, ``data/fp8_recipes.json``): each recipe's quantization traffic,
kept inputs and weight cache follow the documented layouts (Transformer Engine's recipe pages, torchao's
MX tensors); the recipe is a searched dimension whose optimum equals exhaustive enumeration; bad recipes
are refused by name."""

from __future__ import annotations

import pytest

from parallelplan.constraints import Efficiency, Plan, PlanArrays, Workload, check, estimate
from parallelplan.constraints.activations import layer_activations
from parallelplan.constraints.compute import Roofline, layer_times
from parallelplan.constraints.fp8 import cast_bytes, recipe_facts
from parallelplan.constraints.structure import attention_keys, model_facts
from parallelplan.hardware import load_cluster
from parallelplan.models import load_model
from parallelplan.solver import Infeasible, SolverInputError, solve
from parallelplan.solver.exhaustive import oracle

LLAMA_8B = load_model("llama-3.1-8b")
H100, B200 = load_cluster("dgx-h100"), load_cluster("dgx-b200")
WORK = Workload(seq_len=4096, global_batch_size=64)


def _arrays(*plans: Plan) -> PlanArrays:
    return PlanArrays.from_plans(list(plans))


def _fp8(recipe: str | None, **fields) -> Plan:
    return Plan(**({"dp": 8} | fields), precision="fp8", fp8_recipe=recipe)


@pytest.mark.parametrize("cluster,stack,recipe,per_value", [
    # Transformer Engine on Hopper: every recipe writes the row-wise copy and a transposed one (TN-only fp8 GEMMs)
    (H100, "megatron", "delayed", 2 + 2 * 1),
    (H100, "megatron", "tensorwise", 2 * 2 + 2 * 1),  # the amax pass reads the input a second time
    (H100, "megatron", "blockwise", 2 + 2 * (1 + 4 / 128)),  # an fp32 scale per 128 values in each direction
    # on Blackwell the per-tensor recipes' two usages share one copy; MXFP8's blocks run along one direction
    (B200, "megatron", "delayed", 2 + 1),
    (B200, "megatron", "mxfp8", 2 + 2 * (1 + 1 / 32)),  # an E8M0 scale per 32 values
    # torchao keeps the bf16 input and quantizes again in backward: one copy in the forward
    (H100, "torchtitan", "rowwise", 2 + 1),
    (H100, "custom", "tensorwise", 2 * 2 + 1),
])
def test_quantization_moves_what_the_recipe_reads_and_writes(cluster, stack, recipe, per_value):
    work = WORK.model_copy(update={"stack": stack})
    p = _arrays(_fp8(recipe), Plan(dp=8))
    moved = cast_bytes(p, work, cluster.gpu, b=2.0)
    assert moved.tolist() == pytest.approx([per_value, 0.0])


def test_current_scaling_costs_one_more_read_of_every_gemm_input_than_delayed_scaling():
    """Transformer Engine's current-scaling page: the amax pass reads the tensor once more than the cast. The
    layer's forward grows by exactly that read of its four GEMM inputs (QKV and FC1 take the norm outputs,
    the output projection the attention output, FC2 the activation) at the memory-bound rate."""
    f, gpu, eff, tp = model_facts(LLAMA_8B), H100.gpu, Efficiency.default(), 2
    p = _arrays(_fp8("delayed", tp=tp, dp=4), _fp8("tensorwise", tp=tp, dp=4))
    times = layer_times(f, gpu, eff, p, WORK, attention_keys(LLAMA_8B, WORK.seq_len, causal=True))
    tokens = WORK.seq_len  # micro-batch 1, cp 1
    read = 2 * (2 * f.hidden + f.out_width / tp + f.ffn / tp) * tokens / Roofline(gpu, eff, p, WORK.stack).hbm
    assert times.dense_forward[1] - times.dense_forward[0] == pytest.approx(read, rel=1e-9)
    assert times.dense_backward[1] - times.dense_backward[0] == pytest.approx(2 * read, rel=1e-9)


def test_block_recipes_keep_their_scales_beside_the_fp8_inputs():
    """Transformer Engine keeps each GEMM input's column-wise fp8 copy for the weight gradient: 1 byte per
    value, and 1/32 byte more under MXFP8 (E8M0 per 32) and blockwise (fp32 per 128). The kept GEMM inputs
    of a layer: the two norm outputs (QKV, FC1), the FC2 input and the output projection's copy."""
    f, tp = model_facts(LLAMA_8B), 2
    kept = {}
    for recipe in ("delayed", "mxfp8"):
        p = _arrays(_fp8(recipe, tp=tp, dp=4, sequence_parallel=True))
        kept[recipe] = float(layer_activations(f, p, WORK).dense_full[0])
    inputs = 2 * f.hidden / tp + f.ffn / tp + f.out_width / tp
    assert kept["mxfp8"] - kept["delayed"] == pytest.approx(inputs / 32, rel=1e-12)


def test_the_weight_cache_holds_the_copies_the_gpu_and_recipe_need():
    """Without sharded states Transformer Engine caches each GEMM weight quantized beside the bf16 one: a
    row-wise and a transposed copy on Hopper (2 bytes), one shared copy on Blackwell (1 byte), both
    directions with their E8M0 scales under MXFP8 (2 + 2/32)."""
    outside_layers = 2 * LLAMA_8B.vocab_size * LLAMA_8B.hidden_size + LLAMA_8B.hidden_size

    def cache(cluster, recipe):
        fp8 = estimate(LLAMA_8B, cluster, _fp8(recipe), WORK).memory.weights
        bf16 = estimate(LLAMA_8B, cluster, Plan(dp=8), WORK).memory.weights
        return (fp8 - bf16) / (LLAMA_8B.total_params - outside_layers)

    assert cache(H100, "delayed") == pytest.approx(2.0, rel=1e-9)
    assert cache(B200, "delayed") == pytest.approx(1.0, rel=1e-9)
    assert cache(B200, "mxfp8") == pytest.approx(2 + 2 / 32, rel=1e-9)


@pytest.mark.validators
def test_mxfp8_scales_are_one_byte_per_32_values_as_torchao_lays_them_out():
    """torchao's MXTensor (the MX format's reference implementation in PyTorch, run on the CPU): 1-byte
    E4M3 elements and one 1-byte E8M0 scale per 32 values along a row — the data file's 1/32."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("torchao")
    from torchao.prototype.mx_formats.mx_tensor import MXTensor

    x = torch.randn(256, 512, dtype=torch.bfloat16)
    mx = MXTensor.to_mx(x, torch.float8_e4m3fn, 32)
    data = mx.qdata.numel() * mx.qdata.element_size()
    scales = mx.scale.numel() * mx.scale.element_size()
    assert data == x.numel()
    assert scales / x.numel() == recipe_facts("mxfp8")["scale_bytes_per_value"]


def test_recipes_the_stack_or_gpu_do_not_run_are_refused():
    assert {v.rule for v in check(LLAMA_8B, H100, _fp8("mxfp8"), WORK)} >= {"fp8_recipe_runs_on_gpu"}
    assert {v.rule for v in check(LLAMA_8B, B200, _fp8("blockwise"), WORK)} >= {"fp8_recipe_runs_on_gpu"}
    torchtitan = WORK.model_copy(update={"stack": "torchtitan"})
    assert {v.rule for v in check(LLAMA_8B, H100, _fp8("delayed"), torchtitan)} >= {"fp8_recipe_offered_by_stack"}
    assert not check(LLAMA_8B, B200, _fp8("mxfp8"), WORK)
    with pytest.raises(ValueError, match="fp8_recipe applies to precision 'fp8' only"):
        Plan(dp=8, fp8_recipe="delayed")
    with pytest.raises(SolverInputError, match="'mxfp8' does not run .* use one of delayed, tensorwise, blockwise"):
        solve(LLAMA_8B, H100, WORK, fixed={"fp8_recipe": "mxfp8"})
    with pytest.raises(SolverInputError, match="applies to precision fp8"):
        solve(LLAMA_8B, H100, WORK, fixed={"fp8_recipe": "delayed", "precision": "bf16"})


def test_an_infeasible_search_with_a_pinned_recipe_blames_what_conflicts():
    """70B on one node with tp 1 and pp 1 does not fit in any recipe: the explanation names memory, not the
    recipe every fp8 plan of the search has (a review found the recipe's pin matched no plan)."""
    with pytest.raises(Infeasible) as error:
        solve(load_model("llama-3.1-70b"), H100, WORK, fixed={"tp": 1, "pp": 1, "fp8_recipe": "delayed"})
    assert "fp8_recipe" not in str(error.value).split(".")[0] and "fit" in str(error.value)


@pytest.mark.parametrize("cluster,recipes", [(H100, ["delayed", "tensorwise", "blockwise"]),
                                             (B200, ["delayed", "tensorwise", "mxfp8"])])
def test_the_searched_recipe_is_the_exhaustive_optimum(cluster, recipes):
    """A recipe range pins the precision to fp8; CP-SAT's plan equals the oracle's over the same space."""
    model = load_model("llama-3.2-1b")
    limits = {"fixed": {"tp": 1, "pp": 1}, "ranges": {"fp8_recipe": recipes, "micro_batch_size": [1, 2, 4]}}
    found = solve(model, cluster, WORK, **limits)
    best = oracle(model, cluster, WORK, **limits)
    assert best is not None and found.plan.precision == "fp8" and found.plan.fp8_recipe in recipes
    assert found.estimate.step_time_s == pytest.approx(estimate(model, cluster, best.plan, WORK).step_time_s, rel=1e-9)
