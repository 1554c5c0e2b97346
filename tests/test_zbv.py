"""ZB-V's step, rebuilt from the schedule torch runs: torch.distributed.pipelining's ScheduleZBVZeroBubble
gives each rank's order of forward (F), input-gradient (I) and weight-gradient (W) passes over its two
chunks; simulated with the passes' dependencies (a chunk's F after the previous chunk's F, its I after the
next chunk's I and its own F, its W after its I) and random per-chunk times, every rank finishes at
2m(F + B + W) plus the largest of `constraints.timing.zbv_forms` — the closed form the cost model prices —
and holds at most 2·pp chunks' activations (F run, W not yet)."""

from __future__ import annotations

import random

import numpy as np
import pytest

from parallelplan.constraints import Plan, PlanArrays
from parallelplan.constraints.timing import pipeline_bubble, zbv_forms

schedules = pytest.importorskip("torch.distributed.pipelining.schedules")

KIND = {"FORWARD": "F", "BACKWARD_INPUT": "I", "BACKWARD_WEIGHT": "W"}


def torch_order(pp: int, microbatches: int) -> dict[int, list[tuple[str, int, int]]]:
    """Each rank's (pass, chunk, micro-batch) in the order torch's ZB-V schedule runs them (its
    per-rank calculation, which needs no process group: the pipeline size, micro-batches and chunks)."""
    schedule = object.__new__(schedules.ScheduleZBVZeroBubble)
    schedule.pp_group_size, schedule._n_microbatches, schedule.num_stages = pp, microbatches, 2 * pp
    return {rank: [(KIND[a.computation_type.name], a.stage_index, a.microbatch_index)
                   for a in schedule._calculate_single_rank_operations(rank) if a is not None] for rank in range(pp)}


def simulate(pp: int, microbatches: int, times: dict[str, float]) -> tuple[float, int]:
    """(when the last rank finishes, the most chunk activations a rank holds) running torch's order."""
    order, chunks = torch_order(pp, microbatches), 2 * pp
    finished: dict[tuple[str, int, int], float] = {}
    clock, position, held, peak = dict.fromkeys(order, 0.0), dict.fromkeys(order, 0), dict.fromkeys(order, 0), 0
    while any(position[r] < len(order[r]) for r in order):
        progressed = False
        for rank, passes in order.items():
            while position[rank] < len(passes):
                kind, chunk, mb = passes[position[rank]]
                needs = {"F": [("F", chunk - 1, mb)] if chunk else [],
                         "I": [("F", chunk, mb)] + ([("I", chunk + 1, mb)] if chunk < chunks - 1 else []),
                         "W": [("I", chunk, mb)]}[kind]
                if any(n not in finished for n in needs):
                    break
                clock[rank] = max([clock[rank]] + [finished[n] for n in needs]) + times[kind]
                finished[(kind, chunk, mb)] = clock[rank]
                held[rank] += {"F": 1, "I": 0, "W": -1}[kind]
                peak = max(peak, held[rank])
                position[rank] += 1
                progressed = True
        assert progressed, "the order deadlocks"
    return max(clock.values()), peak


@pytest.mark.parametrize("pp", [2, 3, 4, 6, 8])
def test_the_closed_form_is_torchs_zbv_step(pp):
    rng = random.Random(pp)
    for microbatches in (2 * pp - 1, 2 * pp, 3 * pp + 1):
        for _ in range(3):
            times = {"F": rng.uniform(0.5, 2.0), "I": rng.uniform(0.5, 2.0), "W": rng.uniform(0.2, 2.0)}
            step, peak = simulate(pp, microbatches, times)
            forms = zbv_forms(np.array([pp]))[0]
            bubble = float((forms @ np.array([times["F"], times["I"], times["W"]])).max())
            assert step == pytest.approx(2 * microbatches * sum(times.values()) + bubble, rel=1e-12)
            assert peak == 2 * pp  # a 1F1B first stage's pp micro-batches, in chunks of half a stage


def test_equal_times_leave_pp_minus_one_passes_idle_a_sixth_of_1f1b():
    for pp in (2, 4, 8):
        forms = zbv_forms(np.array([pp]))[0]
        assert forms.sum(axis=1).max() == pp - 1  # 1F1B: (pp − 1)·(F + B + W) per two chunks = 6(pp − 1) passes


def test_the_cost_model_prices_balanced_ranks_by_the_closed_form():
    """Balanced ranks of per-micro-batch time t = 2(F + B + W), backward 2(B + W), weight gradient 2W: the
    bubble `pipeline_bubble` prices from the other pp − 1 ranks is the closed form on (F, B, W)."""
    pp, f, b, w = 4, 1.3, 1.1, 0.7
    plans = PlanArrays.from_plans([Plan(pp=pp, vpp=2, schedule="zbv")])
    others = np.array([(pp - 1) * 2 * (f + b + w)])
    bubble = pipeline_bubble(plans, others, np.array([(pp - 1) * 2 * (b + w)]), np.array([(pp - 1) * 2 * w]))
    assert bubble[0] == pytest.approx(float((zbv_forms(np.array([pp]))[0] @ np.array([f, b, w])).max()))


def test_zbv_needs_two_chunks_and_the_micro_batches_its_order_is_built_for():
    from parallelplan.constraints import Workload, check
    from parallelplan.hardware import load_cluster
    from parallelplan.models import load_model

    model, cluster = load_model("llama-3.1-8b"), load_cluster("dgx-h100", nodes=2)
    work = Workload(seq_len=4096, global_batch_size=64, stack="torchtitan")  # torch's ScheduleZBVZeroBubble
    rules = {v.rule: v.message for v in check(model, cluster, Plan(pp=4, dp=4, vpp=2, micro_batch_size=4, schedule="zbv"), work)}
    assert "ZB-V needs at least 7 micro-batches (2·pp − 1), the step has 4" in rules["v_schedule_microbatches"]
    assert not check(model, cluster, Plan(pp=4, dp=4, vpp=2, micro_batch_size=2, schedule="zbv", sharding="zero1"), work)
    assert "v_schedule_two_chunks" in {v.rule for v in check(model, cluster, Plan(pp=4, dp=4, vpp=1, schedule="zbv"), work)}
