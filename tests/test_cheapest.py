"""`solver.cheapest_cluster`: the cheapest priced cluster and node count that trains N tokens by a deadline."""

from __future__ import annotations

import pytest

from parallelplan.constraints import Workload
from parallelplan.hardware import default_price, load_cluster
from parallelplan.models import load_model
from parallelplan.solver import Infeasible, SolverInputError, solve
from parallelplan.solver.cheapest_cluster import cheapest

MODEL = load_model("llama-3.2-1b")
WORK = Workload(seq_len=2048, global_batch_size=256)
PRESETS = ("dgx-h100", "dgx-a100", "pcie-l40s")


def test_cheapest_equals_the_cost_optimum_of_every_preset():
    """Independently: `solve` with the cost objective over each preset's node counts, then the cheapest."""
    tokens, hours = 5e9, 48.0
    found = cheapest(MODEL, WORK, tokens=tokens, deadline_hours=hours, clusters=PRESETS, max_nodes=4)
    totals = {}
    for name in PRESETS:
        try:
            best = solve(MODEL, load_cluster(name, nodes=4), WORK, objective="cost", node_counts=[1, 2, 4],
                         min_tokens_per_s=tokens / (hours * 3600))
        except Infeasible:
            continue
        totals[name] = best.objective["usd_per_million_tokens"] * tokens / 1e6
    assert found.best.total_usd == pytest.approx(min(totals.values()), rel=1e-6)
    assert found.best.cluster == min(totals, key=totals.get)
    for option in found.options:
        if option.total_usd is not None:
            assert option.total_usd == pytest.approx(totals[option.cluster], rel=1e-6)
            assert option.hours <= hours
        else:  # pruned by its bound, which no plan beats
            assert option.lower_bound_usd >= found.best.total_usd
    solution = found.best.solution
    assert solution is not None and solution.cluster.num_nodes == found.best.nodes
    speed = solution.objective["tokens_per_s"]
    assert tokens / speed / 3600 == pytest.approx(found.best.hours, rel=1e-6)


def test_lower_bound_is_the_matmuls_at_the_fastest_gemm_rate_and_holds():
    """The bound: 3 passes of the forward matmuls at the bf16 peak × GEMM efficiency; every option costs at
    least its bound, for full training and for LoRA (whose frozen backward runs about 2 passes)."""
    from parallelplan.constraints import Efficiency, Peft
    from parallelplan.solver.cheapest_cluster import matmul_flops_per_token

    found = cheapest(MODEL, WORK, tokens=1e9, deadline_hours=24, clusters=["dgx-h100"], max_nodes=1)
    gpu = load_cluster("dgx-h100").gpu
    counted = MODEL.flops(2048)
    rate = gpu.peak_flops["bf16"] * Efficiency.default().gemm_fraction(gpu.architecture, "bf16")
    expected = 3 * (counted.forward_per_token - counted.attention_scores) * 1e9 / rate / 3600 * default_price(gpu)
    assert found.best.lower_bound_usd == pytest.approx(expected)
    assert found.best.total_usd > found.best.lower_bound_usd
    lora = Workload(kind="finetune", seq_len=2048, global_batch_size=256, peft=Peft())
    assert matmul_flops_per_token(MODEL, lora) < matmul_flops_per_token(MODEL, WORK.model_copy(update={"kind": "finetune"}))
    tuned = cheapest(MODEL, lora, tokens=1e9, deadline_hours=24, clusters=PRESETS, max_nodes=2)
    assert all(o.total_usd >= o.lower_bound_usd for o in tuned.options if o.total_usd is not None)


def test_a_deadline_no_cluster_meets_is_infeasible_and_says_the_rate():
    with pytest.raises(Infeasible, match="tokens/s needed"):
        cheapest(MODEL, WORK, tokens=1e13, deadline_hours=1, clusters=PRESETS, max_nodes=2)


@pytest.mark.parametrize("kwargs,message", [
    (dict(tokens=0, deadline_hours=1), "tokens"),
    (dict(tokens=1e9, deadline_hours=-1), "deadline_hours"),
    (dict(tokens=1e9, deadline_hours=1, prices={"nope": 2.0}), "prices name nope"),
    (dict(tokens=1e9, deadline_hours=1, max_nodes=0), "max_nodes"),
])
def test_bad_input_is_named(kwargs, message):
    with pytest.raises(SolverInputError, match=message):
        cheapest(MODEL, WORK, clusters=PRESETS, **kwargs)


def test_user_prices_rank_the_presets():
    cheap_a100 = cheapest(MODEL, WORK, tokens=1e9, deadline_hours=24, clusters=("dgx-h100", "dgx-a100"), max_nodes=1,
                          prices={"dgx-a100": 0.01})
    assert cheap_a100.best.cluster == "dgx-a100" and cheap_a100.best.usd_per_gpu_hour == 0.01
