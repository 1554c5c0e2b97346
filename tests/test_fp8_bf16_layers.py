"""The first and last layers kept in bf16 under fp8 (`Plan.fp8_bf16_layers`, Megatron-LM's
--first-last-layers-bf16): which ranks hold them, that they cost what bf16 layers cost (a plan that keeps
every layer in bf16 is exactly the bf16 plan), the recipes a stack allows it under, the solver's pin, and
Megatron's own parser on the flags the emitter writes."""

from __future__ import annotations

import pytest

from parallelplan.constraints import Plan, PlanArrays, Workload, check, estimate
from parallelplan.constraints.stages import stage_layout
from parallelplan.constraints.structure import model_facts
from parallelplan.emitters import EmitError, emit
from parallelplan.emitters.megatron_reader import read_arguments, words_from_text
from parallelplan.hardware import load_cluster
from parallelplan.models import load_model
from parallelplan.solver import SolverInputError, solve

LLAMA_8B = load_model("llama-3.1-8b")  # 32 layers
H100 = load_cluster("dgx-h100")
WORK = Workload(seq_len=4096, global_batch_size=64)


def _per_rank(model, plan: Plan) -> list[tuple[int, int]]:
    """(layers kept in bf16, of them MoE) on each pipeline rank, rank 0 first."""
    layout = stage_layout(model_facts(model), PlanArrays.from_plans([plan]), merge=False)
    return [(int(a), int(b)) for a, b in zip(layout.bf16_layers[0], layout.bf16_moe_layers[0], strict=True)]


@pytest.mark.parametrize("fields, expected", [
    ({"pp": 4}, [(1, 0), (0, 0), (0, 0), (1, 0)]),  # 8 layers a rank: the first on rank 0, the last on rank 3
    ({"pp": 4, "k": 10}, [(8, 0), (2, 0), (2, 0), (8, 0)]),  # more than a rank holds: it spills to the next
    ({"pp": 2, "vpp": 2, "k": 3}, [(3, 0), (3, 0)]),  # interleaved: chunk 0 on rank 0, the last chunk on rank 1
    ({"pp": 4, "vpp": 2, "schedule": "dualpipev"}, [(2, 0), (0, 0), (0, 0), (0, 0)]),  # a V: both ends on rank 0
    ({"pp": 2, "layers_per_stage": (2, 30), "k": 3}, [(2, 0), (4, 0)]),  # uneven stages
])
def test_the_kept_layers_sit_on_the_ranks_that_hold_the_models_ends(fields, expected):
    k = fields.pop("k", 1)
    plan = Plan(**fields, precision="fp8", fp8_recipe="tensorwise", fp8_bf16_layers=k)
    assert _per_rank(LLAMA_8B, plan) == expected


def test_moe_ends_are_counted_by_their_kind():
    """DeepSeek-V3's first three layers are dense, the rest MoE: four at each end are 3 dense + 1 MoE first,
    4 MoE last."""
    v3 = load_model("deepseek-v3")
    plan = Plan(pp=2, ep=8, precision="fp8", fp8_recipe="blockwise", fp8_bf16_layers=4)
    assert _per_rank(v3, plan) == [(4, 1), (4, 4)]


@pytest.mark.parametrize("fields", [{"pp": 2, "tp": 2, "dp": 2, "sequence_parallel": True, "sharding": "zero1"},
                                    {"dp": 8, "sharding": "fsdp", "recompute": "full"},
                                    {"pp": 4, "vpp": 2, "dp": 2, "recompute": "selective"}])
def test_keeping_every_layer_in_bf16_is_the_bf16_plan(fields):
    """k at least half the layers: every layer runs and keeps its activations as in bf16 (the LM head and
    attention already do under fp8), and no fp8 weight cache remains — to the byte and the nanosecond."""
    bf16 = estimate(LLAMA_8B, H100, Plan(**fields), WORK)
    kept = estimate(LLAMA_8B, H100, Plan(**fields, precision="fp8", fp8_recipe="tensorwise", fp8_bf16_layers=16), WORK)
    assert kept.step_time_s == pytest.approx(bf16.step_time_s, rel=1e-12)
    assert kept.memory.total == pytest.approx(bf16.memory.total, rel=1e-12)


def test_one_layer_at_each_end_costs_a_share_of_the_fp8_gain():
    plain = estimate(LLAMA_8B, H100, Plan(dp=8, sharding="fsdp"), WORK)
    fp8 = Plan(dp=8, sharding="fsdp", precision="fp8", fp8_recipe="tensorwise")
    fast = estimate(LLAMA_8B, H100, fp8, WORK)
    ends = estimate(LLAMA_8B, H100, fp8.model_copy(update={"fp8_bf16_layers": 1}), WORK)
    gain, lost = plain.step_time_s - fast.step_time_s, ends.step_time_s - fast.step_time_s
    assert lost == pytest.approx(gain * 2 / 32, rel=0.1)  # 2 of 32 layers give their GEMM gain back


def test_recipes_a_stack_cannot_keep_layers_under_break_a_rule():
    delayed = Plan(dp=8, sharding="fsdp", precision="fp8", fp8_bf16_layers=1)  # Megatron's default recipe
    rules = {v.rule: v for v in check(LLAMA_8B, H100, delayed, WORK)}
    assert "not delayed" in rules["fp8_bf16_layers_recipe"].message and "tensorwise" in rules["fp8_bf16_layers_recipe"].fix
    maxtext = {v.rule: v for v in check(LLAMA_8B, H100, delayed, WORK.model_copy(update={"stack": "maxtext"}))}
    assert "with no recipe" in maxtext["fp8_bf16_layers_recipe"].message
    with pytest.raises(ValueError, match="fp8_bf16_layers applies to precision 'fp8' only"):
        Plan(dp=8, fp8_bf16_layers=1)


def test_the_solver_keeps_the_pin_under_a_recipe_that_allows_it():
    found = solve(LLAMA_8B, H100, WORK, fixed={"fp8_bf16_layers": 1})
    assert found.plan.precision == "fp8" and found.plan.fp8_bf16_layers == 1
    assert found.plan.fp8_recipe in ("tensorwise", "blockwise") and not check(LLAMA_8B, H100, found.plan, WORK)
    with pytest.raises(SolverInputError, match="keeps layers in bf16 under fp8, but the precision given is bf16"):
        solve(LLAMA_8B, H100, WORK, fixed={"fp8_bf16_layers": 1, "precision": "bf16"})


def test_megatron_writes_the_flags_and_reads_them_back_and_other_targets_refuse():
    found = solve(LLAMA_8B, H100, WORK, fixed={"fp8_bf16_layers": 2, "pp": 2, "sharding": "zero1"})
    script = emit(found, "megatron")["launch.sh"]
    assert "--first-last-layers-bf16" in script and "--num-layers-at-end-in-bf16=2" in script
    read = read_arguments(words_from_text(script), found.plan.world_size, LLAMA_8B.num_layers)
    assert read.plan_fields["fp8_bf16_layers"] == 2
    with pytest.raises(EmitError, match="torchrun cannot keep layers in bf16 under fp8.*megatron or torchtitan"):
        emit(found, "torchrun")
    too_many = solve(LLAMA_8B, H100, WORK, fixed={"fp8_bf16_layers": 9, "pp": 4, "sharding": "zero1"})
    with pytest.raises(EmitError, match="at most num_layers // pp = 8"):
        emit(too_many, "megatron")


def test_the_ladder_prices_the_fp8_risks_remedy_on_the_compound_plan():
    from parallelplan.solver import optimize

    start = Plan(dp=8, sharding="fsdp")
    ladder = optimize(LLAMA_8B, H100, WORK, start, techniques=["fp8", "fp8_recipe"])
    final = ladder.final.plan
    assert final.precision == "fp8"
    note = next(r for r in ladder.risks if r.technique == "fp8_bf16_layers")
    with_ends = estimate(LLAMA_8B, H100, final.model_copy(update={"fp8_bf16_layers": 1}), WORK)
    assert f"{with_ends.step_time_s / ladder.final.step_time_s - 1:+.1%} step time" in note.text
