"""PPO and GRPO steps (`constraints.rl`, `solver.solve_rl`): the roles each algorithm runs, the placements'
choices against brute force, every phase priced by the cost model it is an instance of, and the scoring
and generation memory against what PyTorch's MemTracker measures on HF models."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from parallelplan.cli.main import plan as cli
from parallelplan.constraints import (
    Peft,
    Plan,
    PlanError,
    Rollout,
    RuntimeAllowance,
    Workload,
    check,
    estimate,
    evaluate,
    rl,
)
from parallelplan.hardware import load_cluster
from parallelplan.models import load_model
from parallelplan.solver import Infeasible, SolverInputError, solve, solve_rl
from parallelplan.solver.objectives import fixed_point
from parallelplan.solver.placement import MIB
from parallelplan.solver.rl import brute_force_split, choose_split, role_options, shares

FIXTURES = Path(__file__).parent / "fixtures" / "hf_configs"
LLAMA_8B = load_model("llama-3.1-8b")
H100 = load_cluster("dgx-h100", nodes=1)


def step(algorithm: str, prompts: int = 64, prompt_len: int = 1024, **rollout) -> Workload:
    return Workload(kind="rlhf", algorithm=algorithm, seq_len=prompt_len, global_batch_size=prompts,
                    rollout=Rollout(**rollout))


# -- the step's roles and workloads ---------------------------------------------------------------------

def test_each_algorithm_runs_its_roles():
    assert rl.roles(step("ppo")) == ("rollout", "actor", "critic", "reference", "reward")
    assert rl.roles(step("grpo")) == ("rollout", "actor", "reference")  # a rule scores GRPO's responses
    assert rl.roles(step("grpo", reward_model=True)) == ("rollout", "actor", "reference", "reward")
    lora = Workload(kind="rlhf", algorithm="grpo", seq_len=512, global_batch_size=8, peft=Peft())
    assert rl.roles(lora) == ("rollout", "actor")  # the base with the adapter disabled is the reference
    assert step("ppo").rollout.group_size == 1 and step("grpo").rollout.group_size == 8


def test_phase_workloads_cover_prompt_and_response():
    w = step("grpo", prompts=32, prompt_len=512, response_len=1536, group_size=4, mini_batch_size=64, epochs=2)
    gen, score, train = rl.generation_workload(w), rl.scoring_workload(w), rl.training_workload(w, "actor")
    assert (gen.kind, gen.seq_len, gen.output_len, gen.global_batch_size) == ("inference", 512, 1536, 128)
    assert (score.kind, score.seq_len, score.global_batch_size) == ("score", 2048, 128)
    assert (train.kind, train.seq_len, train.global_batch_size) == ("finetune", 2048, 64)
    assert rl.updates(w) == 2 * 128 // 64


# -- the choices against brute force --------------------------------------------------------------------

phase_times = st.tuples(*(st.integers(0, 10**6),) * 3)


@st.composite
def split_tables(draw):
    total = draw(st.integers(2, 7))
    roles = draw(st.integers(1, min(4, total)))
    tables = []
    for _ in range(roles):
        counts = draw(st.sets(st.integers(1, total), min_size=1, max_size=total))
        tables.append({n: draw(phase_times) for n in sorted(counts)})
    return tables, total


@settings(max_examples=150, deadline=None)
@given(split_tables())
def test_choose_split_equals_brute_force(case):
    tables, total = case
    expected = brute_force_split(tables, total)
    found = choose_split(tables, total)
    if expected is None:
        assert found is None
    else:
        assert found is not None and found[2]
        assert (found[0], found[1]) == expected


def _oracle_colocated(options, usable_mib: int) -> int | None:
    """Least Σ step ns over every combination of every role's plans that fits together (Σ resident +
    largest transient ≤ usable): each role's plans first reduced to the fastest per (resident, transient)
    pair, which loses no combination's optimum; then the full product."""
    reduced = []
    for o in options:
        best: dict[tuple[int, int], int] = {}
        for t, r, m in o.table().tolist():
            best[(r, m)] = min(t, best.get((r, m), t))
        reduced.append([(t, r, m) for (r, m), t in best.items()])
    least = None
    for combo in itertools.product(*reduced):
        if sum(c[1] for c in combo) + max(c[2] for c in combo) <= usable_mib:
            total = sum(c[0] for c in combo)
            least = total if least is None or total < least else least
    return least


def test_colocated_choice_is_the_oracle_when_memory_binds():
    """GRPO for Llama 3.1 8B on 2 H100s: the roles' fastest plans do not fit together, so CP-SAT trades
    speed for memory; its step equals the brute-force optimum over every combination of plans."""
    cluster = load_cluster("dgx-h100", gpus=2)
    w = step("grpo", prompts=16, prompt_len=1024, response_len=2048)
    found = solve_rl(LLAMA_8B, cluster, w, placement="colocated")
    assert "CP-SAT chose" in found.explanation[1] and found.optimal
    usable_mib = int(RuntimeAllowance.default().usable(cluster) // MIB)
    options = [role_options(r, LLAMA_8B, cluster, w) for r in rl.roles(w)]
    oracle = _oracle_colocated(options, usable_mib)
    chosen = sum(int(fixed_point(np.array([sum(r.phases.values())]), 1e9)[0]) for r in found.roles)
    assert chosen == oracle


def test_split_choice_is_the_oracle():
    """GRPO with a reward model, 4 roles on one 8-GPU node: each on 1, 2 or 4 GPUs of it (5 is no share);
    the step equals brute force over every count of every role's fastest plans (the search itself skips
    the counts the other roles' least shares leave no room for)."""
    cluster = load_cluster("dgx-h100", nodes=1)
    w = step("grpo", prompts=16, response_len=512, reward_model=True)
    found = solve_rl(LLAMA_8B, cluster, w, placement="split")
    assert shares(cluster) == [1, 2, 4, 8]
    tables = []
    for role in rl.roles(w):
        table = {}
        for g in (1, 2, 4):  # a role may take up to 8 − 3 GPUs
            o = role_options(role, found.models[role], load_cluster(cluster, gpus=g), w)
            if len(o):
                o = o.fastest()
                table[g] = tuple(int(v) for v in fixed_point(np.array([o.generate[0], o.score[0], o.train[0]]), 1e9))
        tables.append(table)
    (best, _, _), counts = brute_force_split(tables, 8)
    assert counts == tuple(r.gpus for r in found.roles) and sum(counts) <= 8
    assert found.step_time_s - found.phases["sync"] == pytest.approx(best / 1e9, abs=1e-8)


def test_split_skips_only_counts_the_other_roles_leave_no_room_for():
    """PPO of a 70B actor and critic on 8 nodes: each trained role needs 16 GPUs at least, so neither is
    searched beyond what the other four roles leave at their least — and the split chosen equals brute
    force over every share of every role."""
    from parallelplan.solver.rl import _Cache, _models, _on, _split_counts

    model, cluster = load_model("llama-3.1-70b"), load_cluster("dgx-h100", nodes=8)
    w = step("ppo", prompts=256, response_len=512, mini_batch_size=128)
    found = solve_rl(model, cluster, w, placement="split")
    models, names = _models(model, None, None), rl.roles(w)
    counts, least = _split_counts(names, models, cluster, _Cache(w, None, None, {}), {})
    assert least["actor"] == least["critic"] == 16
    for name in names:
        assert max(counts[name]) <= 64 - sum(least[o] for o in names if o != name) < 64 - 4
    tables = []
    for name in names:
        table = {}
        for g in [g for g in shares(cluster) if g <= 64 - 4]:
            o = role_options(name, models[name], _on(cluster, g), w)
            if len(o):
                o = o.fastest()
                table[g] = tuple(int(v) for v in fixed_point(np.array([o.generate[0], o.score[0], o.train[0]]), 1e9))
        tables.append(table)
    (best, _, _), expected = brute_force_split(tables, 64)
    assert tuple(r.gpus for r in found.roles) == expected
    assert found.step_time_s - found.phases["sync"] == pytest.approx(best / 1e9, abs=1e-8)


# -- every phase priced by its own cost model --------------------------------------------------------------

@pytest.fixture(scope="module")
def ppo_step():
    cluster = load_cluster("dgx-h100", nodes=2)
    return cluster, step("ppo", prompts=64, response_len=512), solve_rl(LLAMA_8B, cluster, step("ppo", prompts=64, response_len=512))


def test_every_phase_is_its_workloads_estimate(ppo_step):
    cluster, w, found = ppo_step
    # the critic and the reward model score with a value head (one output per token), the actor with its LM head
    assert found.models["critic"].head_width == found.models["reward"].head_width == 1
    assert found.models["actor"].head_width == LLAMA_8B.vocab_size
    for role in found.roles:
        on = cluster if role.nodes is None else load_cluster(cluster, nodes=role.nodes)
        for phase, seconds in role.phases.items():
            work = rl.training_workload(w, role.role) if phase == "train" else (
                rl.generation_workload(w) if phase == "generate" else rl.scoring_workload(w))
            est = estimate(found.models[role.role], on, role.plan, work)
            per_step = rl.updates(w) if phase == "train" else 1
            assert seconds == pytest.approx(per_step * est.step_time_s, rel=1e-9)
            assert est.fits and not [v for v in check(found.models[role.role], on, role.plan, work) if v.severity == "error"]
    total = sum(found.phases.values())
    assert found.step_time_s == pytest.approx(total, rel=1e-12)
    rollout = next(r for r in found.roles if r.role == "rollout")
    generate = rollout.estimates["generate"]
    assert generate.time.decode > 0 and generate.memory.kv_cache > 0  # the rollout decodes with a KV cache


def test_a_lora_actor_scores_twice_as_its_own_reference():
    """With a LoRA adapter there is no reference model: the actor runs the reference's forward itself, its
    adapter disabled, so its score phase is two scoring forwards on its plan."""
    w = Workload(kind="rlhf", algorithm="grpo", seq_len=512, global_batch_size=16, peft=Peft(),
                 rollout=Rollout(response_len=256))
    found = solve_rl(LLAMA_8B, H100, w, placement="colocated")
    roles = {r.role: r for r in found.roles}
    assert "reference" not in roles
    actor = roles["actor"]
    once = estimate(LLAMA_8B, H100, actor.plan, rl.scoring_workload(w)).step_time_s
    assert actor.phases["score"] == pytest.approx(2 * once, rel=1e-9)


def test_memory_per_phase_holds_every_role_and_fits(ppo_step):
    _, _, found = ppo_step
    for phase, used in found.memory_per_phase.items():
        active = [r for r in found.roles if phase in r.phases]
        if found.placement == "colocated":
            assert used == sum(r.resident_bytes for r in found.roles) + max(r.transient_bytes for r in active)
        else:
            assert used == max(r.resident_bytes + r.transient_bytes for r in active)
        assert used <= found.usable_bytes


def test_split_runs_a_phases_roles_at_once_and_colocated_one_after_the_other():
    cluster = load_cluster("dgx-h100", nodes=5)
    w = step("ppo", prompts=64, response_len=512)
    split = solve_rl(LLAMA_8B, cluster, w, placement="split")
    colocated = solve_rl(LLAMA_8B, cluster, w, placement="colocated")
    assert split.phases["score"] == max(r.phases.get("score", 0) for r in split.roles)
    assert colocated.phases["score"] == pytest.approx(sum(r.phases.get("score", 0) for r in colocated.roles))
    best = solve_rl(LLAMA_8B, cluster, w)
    assert best.step_time_s == min(split.step_time_s, colocated.step_time_s)


# -- memory against MemTracker ------------------------------------------------------------------------------

SCORE_CASES = [("llama", 4, 2048, 1), ("llama", 4, 1024, 4), ("qwen3_moe", 4, 2048, 1), ("qwen3_moe", 4, 1024, 4)]
TOLERANCE = 0.02
"""The issue asks for 5%; these cases are measured within 1.5% (scoring) and 2% (generation)."""


def _config(family: str, layers: int) -> dict:
    from reference import with_layers

    return with_layers(json.loads((FIXTURES / family / "config.json").read_text()), layers)


@pytest.mark.slow
@pytest.mark.parametrize("family,layers,seq_len,batch", SCORE_CASES, ids=[f"{c[0]}-s{c[2]}-b{c[3]}" for c in SCORE_CASES])
def test_scoring_forward_memory_matches_memtracker(family, layers, seq_len, batch):
    from reference import scoring_forward_peak

    config = _config(family, layers)
    measured = scoring_forward_peak(config, seq_len, batch=batch)
    work = Workload(kind="score", seq_len=seq_len, global_batch_size=8 * batch)
    memory = evaluate(load_model(config), H100, work, [Plan(dp=8, micro_batch_size=batch, kernels="unfused")]).memory
    ours = float(memory.weights[0] + memory.activations[0])
    peak = sum(measured[k] for k in ("PARAM", "BUFFER", "ACT", "TEMP"))
    assert memory.kv_cache[0] == 0 and memory.weights[0] == measured["PARAM"]
    assert abs(ours / peak - 1) <= TOLERANCE, f"{ours} vs {measured}"


def test_a_frozen_models_fsdp_shard_is_resident_in_the_compute_dtype():
    """A reference or reward model under FSDP has no optimizer and so no fp32 master copy: each GPU keeps
    its eighth of the weights in bf16 besides the units gathered for compute, a layer and the prefetched
    next, of which the LM head (with the final norm) is the largest here. Training holds no bf16 shard: its
    sharded fp32 parameters are the master copy, counted with the optimizer."""
    plan = Plan(dp=8, sharding="fsdp")
    frozen = estimate(LLAMA_8B, H100, plan, Workload(kind="score", seq_len=1024, global_batch_size=8))
    h, f, kv, vocab = 4096, 14336, 8 * 128, 128256
    layer = h * (h + 2 * kv + h) + 3 * h * f + 2 * h  # q, k, v, o; gate, up, down; two RMSNorms
    head = vocab * h + h
    assert frozen.memory.weights == pytest.approx(2 * LLAMA_8B.total_params / 8 + 2 * (layer + head), rel=1e-9)


@pytest.mark.slow
@pytest.mark.parametrize("family", ["llama", "qwen3_moe"])
def test_generation_memory_and_kv_cache_match_memtracker(family):
    from reference import generation_peak

    config = _config(family, 4)
    measured, cache = generation_peak(config, 512, 16, batch=2)
    work = Workload(kind="inference", seq_len=512, output_len=16, global_batch_size=16)
    memory = evaluate(load_model(config), H100, work, [Plan(dp=8, micro_batch_size=2, kernels="unfused")]).memory
    # the cache holds the prompt and the generated tokens but the last (its keys are written by the step after)
    per_token = memory.kv_cache[0] / (2 * (512 + 16))
    assert cache == 2 * (512 + 16 - 1) * per_token
    ours = float(memory.weights[0] + memory.activations[0])
    peak = sum(measured[k] for k in ("PARAM", "BUFFER", "ACT", "TEMP"))
    assert abs(ours / peak - 1) <= TOLERANCE, f"{ours} vs {measured}"


# -- bad input ----------------------------------------------------------------------------------------------

def test_bad_rollouts_and_pins_are_named():
    with pytest.raises(ValueError, match="group_size"):
        step("grpo", group_size=0)
    with pytest.raises(ValueError, match="GRPO .* at least 2"):
        step("grpo", group_size=1)
    with pytest.raises(ValueError, match="mini_batch_size 7 must divide"):
        step("ppo", prompts=64, mini_batch_size=7)
    with pytest.raises(ValueError, match="rollout: only kind 'rlhf'"):
        Workload(kind="finetune", seq_len=512, global_batch_size=8, rollout=Rollout())
    cluster = load_cluster("dgx-h100", nodes=4)
    with pytest.raises(SolverInputError, match="actor = 64 is more than the cluster's 32 GPUs"):
        solve_rl(LLAMA_8B, cluster, step("ppo"), gpus={"actor": 64})
    with pytest.raises(SolverInputError, match="actor = 12: a role takes a power of two"):
        solve_rl(LLAMA_8B, cluster, step("ppo"), gpus={"actor": 12})
    with pytest.raises(SolverInputError, match="'critic' is not a role of this step"):
        solve_rl(LLAMA_8B, cluster, step("grpo"), gpus={"critic": 1})
    with pytest.raises(PlanError, match="solve_rl"):
        estimate(LLAMA_8B, H100, Plan(dp=8), step("ppo"))
    with pytest.raises(SolverInputError, match="solve_rl"):
        solve(LLAMA_8B, H100, step("grpo"))


@pytest.mark.parametrize("args,message", [
    (["--algorithm", "grpo", "--group-size", "0"], "rollout.group_size"),
    (["--algorithm", "ppo", "--role-gpus", "actor=16"], "gpus: actor = 16 is more than the cluster's 8 GPUs"),
    (["--algorithm", "ppo", "--tp", "2"], "--tp: a PPO/GRPO step"),
])
def test_cli_bad_rl_input_is_one_line_and_exit_2(args, message):
    result = CliRunner().invoke(cli, ["solve", "-m", "llama-3.1-8b", "-c", "dgx-h100", "--nodes", "1", "--kind", "rlhf",
                                      "--seq-len", "512", "--global-batch", "8", *args])
    assert result.exit_code == 2 and message in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_a_step_that_fits_nowhere_names_the_role_and_a_checked_change():
    with pytest.raises(Infeasible) as err:
        solve_rl(load_model("llama-3.1-70b"), H100, step("grpo", prompts=16, response_len=512))
    assert any("actor fits no plan" in c and "TiB" in c for c in err.value.conflicts)
    assert any(s.startswith("a LoRA adapter on the actor") for s in err.value.suggestions)
    lora = Workload(kind="rlhf", algorithm="grpo", seq_len=1024, global_batch_size=16, peft=Peft(),
                    rollout=Rollout(response_len=512))
    assert solve_rl(load_model("llama-3.1-70b"), H100, lora).step_time_s > 0  # the suggestion, checked


def test_cli_plans_a_grpo_step():
    result = CliRunner().invoke(cli, ["solve", "-m", "llama-3.1-8b", "-c", "dgx-h100", "--nodes", "1", "--kind", "rlhf",
                                      "--algorithm", "grpo", "--seq-len", "512", "--global-batch", "16",
                                      "--response-len", "512", "--json"])
    assert result.exit_code == 0, result.output
    found = json.loads(result.output)
    assert found["placement"] == "colocated" and [r["role"] for r in found["roles"]] == ["rollout", "actor", "reference"]
    assert found["step_time_s"] == pytest.approx(sum(found["phases"].values()))


# -- the verl launch files ------------------------------------------------------------------------------------

def test_verl_writes_the_solved_step_and_refuses_what_it_cannot_run():
    from parallelplan.emitters import EmitError, emit, rl_constraints

    cluster = load_cluster("dgx-h100", nodes=2)
    w = step("grpo", prompts=64, response_len=1024, group_size=4, mini_batch_size=128)
    found = solve_rl(LLAMA_8B, cluster, w, placement="colocated", limits=rl_constraints("verl"))
    text = emit(found, "verl")["run_verl.sh"]
    roles = {r.role: r.plan for r in found.roles}
    for setting in ("algorithm.adv_estimator=grpo", "data.train_batch_size=64", "data.max_response_length=1024",
                    "actor_rollout_ref.actor.ppo_mini_batch_size=32",  # 128 sequences = 32 prompts' groups of 4
                    f"actor_rollout_ref.rollout.tensor_model_parallel_size={roles['rollout'].tp}",
                    "actor_rollout_ref.rollout.n=4", "trainer.nnodes=2",
                    f"actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu={roles['actor'].micro_batch_size}"):
        assert setting in text, setting
    assert all(p.tp == p.pp == p.ep == 1 for role, p in roles.items() if role != "rollout")  # verl's FSDP backend
    split = solve_rl(LLAMA_8B, load_cluster("dgx-h100", nodes=3), w, placement="split")
    with pytest.raises(EmitError, match="verl cannot express the split placement"):
        emit(split, "verl")
    with pytest.raises(EmitError, match="learned reward model"):
        emit(solve_rl(LLAMA_8B, load_cluster("dgx-h100", nodes=2), step("ppo", prompts=64, response_len=512),
                      placement="colocated", limits=rl_constraints("verl")), "verl")
    with pytest.raises(EmitError, match="writes no PPO or GRPO step yet; use --target verl"):
        emit(found, "trl")
