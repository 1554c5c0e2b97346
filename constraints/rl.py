"""A PPO or GRPO step (`Workload.algorithm` ppo / grpo, `Rollout`) as its roles' phases — what each role
runs, on which workload, and what moving the new weights to the generator costs. `solver.solve_rl` places
the roles and plans each one; every phase is priced by the cost model it is an instance of.

One step, synchronous (verl's and OpenRLHF's default): for B prompts of L tokens and G responses each
(S = B·G sequences of L + R tokens):
1. generate — the rollout engine (vLLM / SGLang in verl and OpenRLHF) runs the actor's current weights:
   the prefill of the S prompts and the decode of R tokens of each (`constraints.generation`, an
   inference workload with ``output_len`` R);
2. score — forwards over the S full sequences, no gradients, no KV cache (``use_cache=False``): the actor
   (the old log-probabilities), the reference (its log-probabilities for the KL penalty; with a peft
   adapter no model of its own: the actor runs a second forward with the adapter disabled, verl's and
   TRL's way, `scoring_forwards`), the critic (PPO's values) and
   the reward model (when one scores: PPO's learned reward; GRPO's rule or verifier costs no GPU time);
3. train — the actor and, for PPO, the critic: ``epochs`` passes over the S sequences in updates of
   ``mini_batch_size`` (a fine-tune workload of that batch, priced per optimizer step, times the
   updates); the critic and the reward model carry a value head, one output per token, in place of the
   LM head (`ModelSpec.with_value_head`);
4. sync — the trained weights reach the generator: on shared GPUs (colocated) every GPU gathers the
   compute-dtype weights from the training shards (verl's FSDP → vLLM resharding gathers each tensor
   in full), an all-gather of 2Ψ bytes over the GPUs; on separate GPUs (split) the actor's first rank
   broadcasts them to the engines over the network (OpenRLHF's NCCL broadcast, pipelined: 2Ψ bytes
   over one NIC's bandwidth, plus a hop's latency; over NVLink on a one-node cluster).
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from parallelplan.constraints.collectives import Fabric
from parallelplan.constraints.efficiency import Efficiency
from parallelplan.constraints.plan import Rollout, Workload
from parallelplan.hardware import ClusterSpec

RoleName = Literal["rollout", "actor", "critic", "reference", "reward"]
ROLES: tuple[RoleName, ...] = ("rollout", "actor", "critic", "reference", "reward")
PHASES = ("generate", "sync", "score", "train")
TRAINED = ("actor", "critic")


def multi_role(w: Workload) -> str | None:
    """Why one model's estimate or search cannot price ``w`` (a PPO / GRPO step has several roles), or None."""
    if w.rollout is None:
        return None
    return (f"algorithm {w.algorithm!r} is a step of several models (rollout, actor, critic, reference, reward): "
            "plan it with solve_rl / `plan solve --kind rlhf`, or price one role's workload")


def rollout_of(w: Workload) -> Rollout:
    """The step's `Rollout` (its defaults resolved by `Workload`)."""
    if w.rollout is None:
        raise ValueError(f"workload: algorithm {w.algorithm!r} does not generate; PPO and GRPO do")
    return w.rollout


def roles(w: Workload) -> tuple[RoleName, ...]:
    """The roles of the step, in `ROLES` order (module docstring)."""
    r = rollout_of(w)
    present = {"rollout": True, "actor": True, "critic": w.algorithm == "ppo", "reference": w.peft is None,
               "reward": bool(r.reward_model)}
    return tuple(name for name in ROLES if present[name])


def scoring_forwards(w: Workload, role: RoleName) -> int:
    """Forwards over the step's sequences that ``role`` runs in the score phase: one, and the actor a
    second with a peft adapter (the reference's log-probabilities, its adapter disabled)."""
    return 2 if role == "actor" and w.peft is not None else 1


def sequences(w: Workload) -> int:
    """Sequences the step generates and trains on: prompts × group size."""
    return w.global_batch_size * rollout_of(w).group_size


def updates(w: Workload) -> int:
    """Optimizer steps per RL step: epochs × sequences / mini-batch."""
    r = rollout_of(w)
    return r.epochs * (sequences(w) // (r.mini_batch_size or sequences(w)))


def _shared(w: Workload) -> dict:
    """What every phase keeps of the step's workload: its stack and MoE routing."""
    return {"stack": w.stack, "moe_dispatcher": w.moe_dispatcher, "moe_imbalance": w.moe_imbalance,
            "moe_capacity_factor": w.moe_capacity_factor, "moe_pad_to_capacity": w.moe_pad_to_capacity}


def generation_workload(w: Workload, concurrency: int | None = None) -> Workload:
    """The rollout: prefill of the prompts, decode of the responses, in waves of ``concurrency``
    sequences per replica (None: all at once)."""
    return Workload(kind="inference", seq_len=w.seq_len, output_len=rollout_of(w).response_len,
                    global_batch_size=sequences(w), max_concurrency=concurrency, **_shared(w))


def scoring_workload(w: Workload) -> Workload:
    """A forward over the full sequences: every position's log-probability (or value, or reward), no KV cache."""
    return Workload(kind="score", seq_len=w.seq_len + rollout_of(w).response_len, global_batch_size=sequences(w),
                    **_shared(w))


def training_workload(w: Workload, role: RoleName) -> Workload:
    """One optimizer update of a trained role on a mini-batch of full sequences; the actor takes the
    step's peft adapter, the critic trains in full."""
    r = rollout_of(w)
    return Workload(kind="finetune", seq_len=w.seq_len + r.response_len, global_batch_size=r.mini_batch_size or sequences(w),
                    dropout=w.dropout, peft=w.peft if role == "actor" else None, **_shared(w))


def sync_time(weight_bytes: float, cluster: ClusterSpec, gpus: int, placement: Literal["colocated", "split"],
              efficiency: Efficiency) -> float:
    """Seconds to bring ``weight_bytes`` (the actor's compute-dtype weights) to the generator (module
    docstring, step 4): an all-gather over ``gpus`` GPUs when colocated, a pipelined broadcast over the
    network when split."""
    fabric = Fabric.of(cluster, efficiency)
    if placement == "colocated":
        return float(fabric.reduce_scatter(np.array(weight_bytes), np.array(gpus), np.array(1)))
    if cluster.num_nodes == 1 or not np.isfinite(fabric.inter_bw):  # the engines are on the same node
        return weight_bytes / fabric.intra_bw + fabric.intra_alpha
    return weight_bytes / fabric.inter_bw + fabric.inter_alpha


__all__ = ["PHASES", "ROLES", "TRAINED", "generation_workload", "multi_role", "roles", "rollout_of", "scoring_workload",
           "scoring_forwards", "sequences", "sync_time", "training_workload", "updates"]
