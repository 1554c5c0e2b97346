"""Several models sharing a cluster (`solver.placement`): CP-SAT's choice over the roles' step tables equals
brute force over every combination (hypothesis), the chosen roles' plans are their tables' optima, and bad
or impossible requests say why."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from parallelplan.constraints import Workload
from parallelplan.hardware import load_cluster
from parallelplan.models import load_model
from parallelplan.solver import Infeasible, Role, SolverInputError, place
from parallelplan.solver.placement import brute_force, choose

WORK = Workload(seq_len=4096, global_batch_size=512)


@st.composite
def tables(draw):
    total = draw(st.integers(2, 9))
    roles = draw(st.integers(2, 4))
    step = st.one_of(st.none(), st.integers(1, 60))  # small values: many ties, the tie-breaks decide
    return [{n: draw(step) for n in range(1, total + 1)} for _ in range(roles)], total


@settings(max_examples=300, deadline=None)
@given(tables())
def test_cp_sat_choice_equals_brute_force(case):
    role_tables, total = case
    expected = brute_force(role_tables, total)
    found = choose(role_tables, total)
    if expected is None:
        assert found is None
        return
    nodes, proved = found
    assert proved and nodes == expected and sum(nodes) <= total


def test_a_large_and_a_small_model_share_eight_nodes():
    """The 70B actor's step falls with every node it gets and the 8B reward model is fast on one: the
    slowest role is the actor on the 7 nodes left, and each role's plan is its table's optimum there."""
    roles = [Role(name="actor", model=load_model("llama-3.1-70b"), workload=WORK),
             Role(name="reward", model=load_model("llama-3.1-8b"), workload=WORK)]
    placed = place(roles, load_cluster("dgx-h100", nodes=8))
    tables = [{n: None if s is None else round(s * 1e9) for n, s in r.table.items()} for r in placed.roles]
    assert tuple(r.nodes for r in placed.roles) == brute_force(tables, 8) == (7, 1)
    assert placed.optimal and placed.nodes_used == 8
    for share in placed.roles:
        assert share.solution.optimal and share.gpus == 8 * share.nodes
        assert share.solution.estimate.step_time_s == pytest.approx(share.table[share.nodes], rel=1e-9)
    assert placed.step_time_s == max(r.solution.estimate.step_time_s for r in placed.roles)
    assert "actor" in placed.explanation[0]


def test_impossible_and_bad_requests_say_why():
    small = Role(name="a", model=load_model("llama-3.1-8b"), workload=WORK)
    with pytest.raises(SolverInputError, match="two or more roles"):
        place([small], load_cluster("dgx-h100", nodes=2))
    with pytest.raises(SolverInputError, match="unique"):
        place([small, small], load_cluster("dgx-h100", nodes=2))
    with pytest.raises(Infeasible, match="3 roles need at least 3 whole nodes"):
        place([small, small.model_copy(update={"name": "b"}), small.model_copy(update={"name": "c"})],
              load_cluster("dgx-h100", nodes=2))
    huge = Role(name="huge", model=load_model("llama-3.1-405b"), workload=WORK)
    with pytest.raises(Infeasible, match="role 'huge': llama-3.1-405b fits on no count"):
        place([huge, small], load_cluster("dgx-h100", nodes=2))


def test_plan_place_prints_the_split_and_its_json_round_trips():
    from click.testing import CliRunner

    from parallelplan.cli.main import plan
    from parallelplan.solver import Placement

    run = lambda *args: CliRunner().invoke(plan, ["place", *args])  # noqa: E731
    result = run("-m", "llama-3.1-70b", "-m", "llama-3.1-8b", "--name", "actor", "--name", "reward", "-c", "dgx-h100",
                 "--nodes", "4", "--seq-len", "4096", "--global-batch", "512", "--json")
    assert result.exit_code == 0, result.output
    placed = Placement.model_validate_json(result.stdout)
    assert [r.role for r in placed.roles] == ["actor", "reward"] and placed.nodes_used <= 4
    text = run("-m", "llama-3.1-70b", "-m", "llama-3.1-8b", "-c", "dgx-h100", "--nodes", "4", "--global-batch", "512")
    assert text.exit_code == 0 and "slowest step" in text.output and "llama-3.1-70b" in text.output
    impossible = run("-m", "llama-3.1-405b", "-m", "llama-3.1-8b", "-c", "dgx-h100", "--nodes", "2")
    assert impossible.exit_code == 1 and "role 'llama-3.1-405b'" in impossible.output
    assert run("-m", "llama-3.1-8b", "-m", "llama-3.1-8b", "--name", "x", "--nodes", "2").exit_code == 2
