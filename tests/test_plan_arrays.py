"""`PlanArrays`: the column form of plans that the vectorized cost model, the solver and the oracle use.
Enumerating with `product` and reading rows back with `plan` round-trip through `from_plans`."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from parallelplan.constraints import Plan, PlanArrays


def test_product_enumerates_every_combination_with_plan_defaults():
    grid = PlanArrays.product(tp=[1, 2, 4], pp=[1, 2], vpp=[1, 3], sharding=["none", "zero1", "hsdp"],
                              hsdp_shard_size=[4], recompute=["full"], recompute_layers=[None, 2], precision=["bf16", "fp8"])
    assert len(grid) == 3 * 2 * 2 * 3 * 2 * 2
    plans = [grid.plan(i) for i in range(len(grid))]
    assert len({p.model_dump_json() for p in plans}) == len(plans)
    again = PlanArrays.from_plans(plans)
    for field in dataclasses.fields(grid):
        assert np.array_equal(getattr(grid, field.name), getattr(again, field.name)), field.name


def test_rows_follow_plans_conventions():
    grid = PlanArrays.product(tp=[8], vpp=[1, 2], dp=[4], cp=[2], sharding=["zero1"])
    first, second = grid.plan(0), grid.plan(1)
    assert first.etp == 8 and first.schedule == "1f1b" and second.schedule == "interleaved"
    assert list(grid.shard_group) == [8, 8]  # dp · cp
    assert first == Plan(tp=8, dp=4, cp=2, sharding="zero1")


def test_mixed_explicit_and_default_stages():
    arrays = PlanArrays.from_plans([Plan(pp=2, layers_per_stage=(3, 5)), Plan(pp=4)])
    assert arrays.layers_per_stage.tolist() == [[3, 5], [0, 0]]
    assert arrays.plan(0).layers_per_stage == (3, 5) and arrays.plan(1).layers_per_stage is None


def test_product_rejects_what_it_cannot_enumerate():
    with pytest.raises(ValueError, match="cannot enumerate layers_per_stage"):
        PlanArrays.product(layers_per_stage=[(1, 2)])
    with pytest.raises(ValueError, match="at least one value"):
        PlanArrays.product(tp=[])
