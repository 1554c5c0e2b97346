"""Several models sharing a cluster (`solver.placement`), at once or taking turns on the same nodes: CP-SAT's
choice over the roles' tables equals brute force over every combination (hypothesis), the chosen roles'
plans are their tables' optima, a colocated group fits its GPUs' memory together, and bad or impossible
requests say why."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from parallelplan.constraints import RuntimeAllowance, Workload
from parallelplan.hardware import load_cluster
from parallelplan.models import load_model
from parallelplan.solver import Infeasible, Role, SolverInputError, place, solve
from parallelplan.solver.placement import brute_force, brute_force_parts, choose, choose_parts, nondominated_options

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


@st.composite
def part_tables(draw):
    """Parts of 1–3 roles, each role's options by node count: (step, resident, transient) triples, small
    values so that ties and the memory bound decide often."""
    total = draw(st.integers(2, 5))
    usable = draw(st.integers(5, 30))
    option = st.tuples(st.integers(1, 30), st.integers(0, 12), st.integers(0, 12))
    parts = []
    for _ in range(draw(st.integers(1, 3))):
        roles = draw(st.integers(1, 3))
        parts.append([{n: (draw(st.lists(option, max_size=3)) if roles > 1 else draw(st.lists(option, max_size=1)))
                       for n in range(1, total + 1)} for _ in range(roles)])
    return parts, total, usable


@settings(max_examples=300, deadline=None)
@given(part_tables())
def test_cp_sat_choice_with_colocated_groups_equals_brute_force(case):
    """Groups (roles taking turns on the same nodes: steps add, residents add, the largest transient on
    top must fit) and single roles: CP-SAT's criteria equal brute force's, and its choice is admissible
    and attains them."""
    parts, total, usable = case
    expected = brute_force_parts(parts, total, usable)
    found = choose_parts(parts, total, usable)
    if expected is None:
        assert found is None
        return
    key, choice, proved = found
    assert proved and key == expected[0]
    steps = []
    for part, (n, options) in zip(parts, choice, strict=True):
        picked = [table[n][o] for table, o in zip(part, options, strict=True)]
        if len(part) > 1:
            assert sum(p[1] for p in picked) + max(p[2] for p in picked) <= usable
        steps.append(sum(p[0] for p in picked))
    assert sum(n for n, _ in choice) <= total and (max(steps), sum(steps)) == key[:2]


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 6), st.integers(0, 6), st.integers(0, 6)), min_size=1, max_size=40))
def test_nondominated_options_are_the_pareto_set(rows):
    table = np.array(rows, dtype=np.int64)
    kept = set(nondominated_options(table).tolist())
    for i, row in enumerate(table):
        dominated = any(np.all(other <= row) and np.any(other < row) for other in table)
        if dominated:
            assert i not in kept
        else:  # one of each set of equal rows is kept
            assert any(np.array_equal(table[k], row) for k in kept)
    assert len({tuple(table[k]) for k in kept}) == len(kept)


def test_roles_colocated_on_one_node_take_turns_within_its_memory():
    """Three 8B fine-tuning roles in one group on a node and a reward model on the other: the group's step
    is the sum of its three, their weights, gradients and optimizer states plus the largest phase's
    activations fit one GPU (each role's plan has to give up some speed for it: alone each would run a
    faster plan), and the reward model gets a node of its own."""
    m8 = load_model("llama-3.1-8b")
    train = Workload(kind="finetune", seq_len=4096, global_batch_size=256)
    roles = [Role(name=name, model=m8, workload=train, group="ppo") for name in ("actor", "critic", "reference")]
    roles.append(Role(name="reward", model=m8, workload=Workload(kind="score", seq_len=4096, global_batch_size=256)))
    cluster = load_cluster("dgx-h100", nodes=2)
    placed = place(roles, cluster)
    group, reward = placed.roles[:3], placed.roles[3]
    assert {r.nodes for r in group} == {1} and reward.nodes == 1 and placed.optimal
    assert all(r.group == "ppo" for r in group) and reward.group is None
    assert placed.step_time_s == pytest.approx(sum(r.solution.estimate.step_time_s for r in group), rel=1e-12)
    assert placed.step_time_s >= reward.solution.estimate.step_time_s
    memories = [r.solution.estimate.memory for r in group]
    resident = [m.weights + m.gradients + m.optimizer for m in memories]
    usable = RuntimeAllowance.default().usable(cluster)
    assert sum(resident) + max(m.total - r for m, r in zip(memories, resident, strict=True)) <= usable
    alone = solve(m8, load_cluster("dgx-h100", nodes=1), train)
    assert all(r.solution.estimate.step_time_s > alone.estimate.step_time_s for r in group)
    assert any("group ppo" in line for line in placed.explanation)


def test_plan_place_colocates_and_refuses_bad_groups():
    from click.testing import CliRunner

    from parallelplan.cli.main import plan

    run = lambda *args: CliRunner().invoke(plan, ["place", "-m", "llama-3.1-8b", "-m", "llama-3.1-8b", "-m", "llama-3.1-8b",  # noqa: E731
                                                  "--name", "actor", "--name", "reference", "--name", "reward",
                                                  "-c", "dgx-h100", "--nodes", "4", "--global-batch", "256", *args])
    result = run("--colocate", "actor,reference", "--role-kind", "reference=score", "--role-kind", "reward=score",
                 "--kind", "finetune")
    assert result.exit_code == 0, result.output
    assert "actor+reference" in result.output and "score" in result.output
    for args, message in ((["--colocate", "actor,critic"], "no role named 'critic'"),
                          (["--colocate", "actor"], "name two or more roles"),
                          (["--colocate", "actor,reward", "--colocate", "reward,reference"], "already in group"),
                          (["--role-kind", "reward=serve"], "pretrain, finetune, inference or score")):
        bad = run(*args)
        assert bad.exit_code == 2 and message in bad.output, bad.output
