"""verl (0.9): ``run_verl.sh``, the ``python3 -m verl.trainer.main_ppo`` command of a PPO or GRPO step
(`solver.solve_rl`'s colocated placement: verl's hybrid engine runs every role on every GPU in turn), its
settings as verl's Hydra overrides of ``ppo_trainer.yaml`` (checked in the validator tests by Hydra's own
composition of that config, which rejects an unknown key, and by ``verl.utils.config.validate_config``).

The FSDP backend, so the search keeps the trained and scoring roles to data parallelism (``RL_CONSTRAINTS``):
FSDP over all of the role's GPUs (``fsdp_size=-1``), HSDP over one node's (``fsdp_size`` = its GPUs) or
replicated (``fsdp_size=1``); HF's modules (``kernels="unfused"``); gradient checkpointing for full
recompute; fp32 master weights (verl's ``model_dtype`` fp32 with bf16 compute). The rollout is vLLM with
tensor parallelism (``rollout.tensor_model_parallel_size``; the engines fill the GPUs data-parallel), its
memory fraction (``gpu_memory_utilization``) the room the other roles' resident states leave it within the
usable memory (rounded down to a hundredth, as vLLM takes a fraction of the whole GPU), and ``max_num_seqs``
the sequences a replica decodes at once (the plan's waves, else all its sequences; vLLM's default is 256).
The reference holds its weights in bf16 (``ref.fsdp_config.model_dtype``; verl's default fp32 is for the
trained roles' master copy); PPO's reference enters through the KL penalty in the reward
(``algorithm.use_kl_in_reward``), GRPO's through the KL loss (``actor.use_kl_loss``): verl builds a
reference only for one of them. Micro-batches:
``ppo_micro_batch_size_per_gpu`` (training), ``log_prob_micro_batch_size_per_gpu`` (scoring); verl counts
``train_batch_size`` and ``ppo_mini_batch_size`` in prompts, so a mini-batch must hold whole groups.
Not expressed: the split placement (verl colocates), a learned reward model (verl 0.9 serves it through an
inference engine of its own: use a rule or verifier, ``--no-reward-model``), Megatron's backend.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from parallelplan.constraints import Plan, rl
from parallelplan.emitters.environment import command, nccl_environment, script
from parallelplan.emitters.errors import EmitError
from parallelplan.emitters.job import unsupported
from parallelplan.emitters.serving import repo_id

if TYPE_CHECKING:
    from parallelplan.solver import RLSolution

TARGET = "verl"
NAME = "verl"
_FSDP_ROLE = {"fixed": {"tp": 1, "pp": 1, "cp": 1, "ep": 1, "vpp": 1, "kernels": "unfused", "offload": "none",
                        "offload_activations": False},
              "ranges": {"sharding": ["none", "fsdp", "hsdp"], "recompute": ["none", "full"]},
              "allow_partial_recompute": False}
RL_CONSTRAINTS: dict[str, dict[str, Any]] = {
    "rollout": {"fixed": {"pp": 1, "cp": 1, "ep": 1, "vpp": 1, "sharding": "none"}},
    "actor": _FSDP_ROLE, "critic": _FSDP_ROLE, "reference": _FSDP_ROLE,
}
"""Each role's pins and ranges in a search for verl (`solver.solve_rl`'s ``limits``)."""
RL_ONLY = True
"""verl writes PPO / GRPO steps only (`emitters.single_model_targets`)."""
RL_PLACEMENT = "colocated"
"""verl's hybrid engine runs every role on every GPU."""


def _fsdp_size(plan: Plan, role: str) -> int:
    """verl's ``fsdp_size`` for a role's plan: -1 (all its GPUs), a node's GPUs (HSDP), 1 (replicated)."""
    if plan.tp * plan.pp * plan.cp * plan.ep > 1 or plan.sharding not in ("none", "fsdp", "hsdp") or \
            plan.recompute not in ("none", "full") or plan.recompute_layers is not None or plan.offload != "none":
        raise unsupported(NAME, f"the {role}'s plan ({plan.tp=}, {plan.pp=}, {plan.cp=}, {plan.ep=}, sharding "
                                f"{plan.sharding}, recompute {plan.recompute}, offload {plan.offload}) on its FSDP backend",
                          "plan launch --target verl searches what it runs")
    return {"fsdp": -1, "hsdp": plan.hsdp_shard_size, "none": 1}[plan.sharding]


def overrides(solution: RLSolution) -> list[str]:
    """verl's Hydra overrides (``key=value``) for the solved step; ``$MODEL``, ``$CRITIC_MODEL``,
    ``$TRAIN_FILES`` and ``$VAL_FILES`` stand for what the script sets."""
    w, cluster = solution.workload, solution.cluster
    r = rl.rollout_of(w)
    roles = {role.role: role for role in solution.roles}
    if solution.placement != "colocated":
        raise unsupported(NAME, "the split placement (its hybrid engine runs every role on every GPU)",
                          "solve with --placement colocated")
    if "reward" in roles:
        raise unsupported(NAME, "a learned reward model (verl 0.9 serves it through an inference engine of its own)",
                          "score with a rule or verifier: --no-reward-model")
    groups, rem = divmod(r.mini_batch_size or rl.sequences(w), r.group_size)
    if rem:
        raise unsupported(NAME, f"a mini-batch of {r.mini_batch_size} sequences, not whole groups of {r.group_size} "
                                "(ppo_mini_batch_size counts prompts)", f"give --mini-batch a multiple of {r.group_size}")
    actor, rollout = roles["actor"], roles["rollout"]
    if rollout.plan.pp * rollout.plan.cp * rollout.plan.ep > 1 or rollout.plan.sharding != "none":
        raise unsupported(NAME, "a rollout with pipeline, context or expert parallelism, or sharded weights",
                          "plan launch --target verl searches what it runs")
    capacity = cluster.node.gpu.memory_bytes
    residents = solution.memory_per_phase["generate"] - rollout.transient_bytes
    memory_fraction = math.floor(100 * (solution.usable_bytes - residents) / capacity) / 100
    concurrency = rollout.max_concurrency or math.ceil(rl.sequences(w) / rollout.plan.dp)
    out = [f"algorithm.adv_estimator={'grpo' if w.algorithm == 'grpo' else 'gae'}",
           "data.train_files=$TRAIN_FILES", "data.val_files=$VAL_FILES",
           f"data.train_batch_size={w.global_batch_size}", f"data.max_prompt_length={w.seq_len}",
           f"data.max_response_length={r.response_len}",
           "actor_rollout_ref.model.path=$MODEL",
           f"actor_rollout_ref.model.enable_gradient_checkpointing={actor.plan.recompute == 'full'}",
           f"actor_rollout_ref.actor.ppo_mini_batch_size={groups}",
           f"actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu={actor.plan.micro_batch_size}",
           f"actor_rollout_ref.actor.ppo_epochs={r.epochs}",
           f"actor_rollout_ref.actor.fsdp_config.fsdp_size={_fsdp_size(actor.plan, 'actor')}",
           f"actor_rollout_ref.actor.use_kl_loss={w.algorithm == 'grpo'}",
           f"algorithm.use_kl_in_reward={w.algorithm == 'ppo'}",
           "actor_rollout_ref.rollout.name=vllm",
           f"actor_rollout_ref.rollout.tensor_model_parallel_size={rollout.plan.tp}",
           f"actor_rollout_ref.rollout.n={r.group_size}",
           f"actor_rollout_ref.rollout.gpu_memory_utilization={memory_fraction}",
           f"actor_rollout_ref.rollout.max_num_seqs={concurrency}",
           f"actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu={actor.plan.micro_batch_size}"]
    if w.peft is not None:
        if w.peft.method != "lora":
            raise unsupported(NAME, f"{w.peft.method} (4-bit base weights)", "use --peft lora")
        targets = ",".join(w.peft.target_modules)
        out += [f"actor_rollout_ref.model.lora_rank={w.peft.rank}", f"actor_rollout_ref.model.lora_alpha={w.peft.alpha:g}",
                f"actor_rollout_ref.model.target_modules={targets if targets == 'all-linear' else '[' + targets + ']'}"]
    if "reference" in roles:
        ref = roles["reference"].plan
        out += ["actor_rollout_ref.ref.fsdp_config.model_dtype=bf16",
                f"actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu={ref.micro_batch_size}",
                f"actor_rollout_ref.ref.fsdp_config.fsdp_size={_fsdp_size(ref, 'reference')}"]
    elif w.peft is not None:  # the actor with its adapter disabled computes the reference's log-probabilities
        out.append(f"actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu={actor.plan.micro_batch_size}")
    if "critic" in roles:
        critic = roles["critic"].plan
        out += ["critic.model.path=$CRITIC_MODEL",
                f"critic.model.enable_gradient_checkpointing={critic.recompute == 'full'}",
                f"critic.ppo_micro_batch_size_per_gpu={critic.micro_batch_size}",
                f"critic.fsdp.fsdp_size={_fsdp_size(critic, 'critic')}"]
    out += [f"trainer.n_gpus_per_node={cluster.node.gpus_per_node}", f"trainer.nnodes={cluster.num_nodes}"]
    return out


def emit_rl(solution: RLSolution) -> dict[str, str]:
    """``run_verl.sh`` for a solved PPO / GRPO step."""
    settings = overrides(solution)
    actor = solution.models["actor"]
    summary = (f"{solution.algorithm.upper()} step of {actor.display_name or actor.name} on {solution.cluster.num_nodes} x "
               f"{solution.cluster.node.name}: {solution.step_time_s:.1f} s per step predicted ("
               + ", ".join(f"{k} {v:.1f} s" for k, v in solution.phases.items()) + ")")
    repo = repo_id(actor)
    body = [f'MODEL="${{MODEL:-{repo}}}"  # or a local checkpoint folder' if repo else
            f'MODEL="${{MODEL:?set MODEL to the Hugging Face repo or local folder of {actor.name}}}"']
    if "critic" in solution.models:
        critic = repo_id(solution.models["critic"])
        body.append(f'CRITIC_MODEL="${{CRITIC_MODEL:-{critic or "$MODEL"}}}"  # the critic: a value head on this model')
    body += ['TRAIN_FILES="${TRAIN_FILES:?set TRAIN_FILES to the prompts, a parquet file in the verl data format}"',
             'VAL_FILES="${VAL_FILES:-$TRAIN_FILES}"']
    if solution.cluster.num_nodes > 1:
        body.append(f"# {solution.cluster.num_nodes} nodes: start Ray on each first (ray start --head here, "
                    "ray start --address=<this node>:6379 on the others), then run this script here")
    body.append(command(["python3", "-m", "verl.trainer.main_ppo", *settings]))
    return {"run_verl.sh": script(summary, nccl_environment(solution.cluster), body)}


def emit(job) -> dict[str, str]:
    raise EmitError("verl runs PPO and GRPO steps, several models at once: plan one with --kind rlhf --algorithm "
                    "ppo|grpo (plan launch --target verl solves it)")
