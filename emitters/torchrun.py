"""torchrun (`torch.distributed.run`, torch 2.13): the launch command, single node (``--standalone``) or
multi-node with the c10d rendezvous (the same command on every node, so it also suits ``srun``), and
``plan.json`` for the training script to read its layout from (torchrun itself parallelises nothing).
Flags: torch's own parser (`torch.distributed.run.get_args_parser`)."""

from __future__ import annotations

import json

from parallelplan.emitters.environment import command, launch_environment, script
from parallelplan.emitters.job import Job

TARGET = "torchrun"
SCRIPT = "train.py"
RDZV_ID = "${JOB_ID:-plan}"


def torchrun_words(job: Job) -> list[str]:
    """The torchrun command up to the script."""
    words = ["torchrun", f"--nproc-per-node={job.gpus_per_node}"]
    if job.nodes == 1:
        words.append("--standalone")
    else:
        words += [f"--nnodes={job.nodes}", "--rdzv-backend=c10d", "--rdzv-endpoint=$MASTER_ADDR:$MASTER_PORT",
                  f"--rdzv-id={RDZV_ID}"]
    return words


def script_words(job: Job, default: str) -> list[str]:
    """The training script (``default`` unless the job names one) and its arguments."""
    return [job.script or default, *job.script_args]


def rendezvous_lines(job: Job) -> list[str]:
    """Shell lines that set the rendezvous address (multi-node only)."""
    if job.nodes == 1:
        return []
    return [': "${MASTER_ADDR:?set MASTER_ADDR to the address of the first node}"',
            f'MASTER_PORT="${{MASTER_PORT:-{job.master_port}}}"', ""]


def node_rank_lines(job: Job) -> list[str]:
    """Multi-node launchers run once per node with its rank: shell lines asking for the first node's address
    and this node's rank (none on one node)."""
    if job.nodes == 1:
        return []
    return [f"# Run this on each of the {job.nodes} nodes with NODE_RANK = 0 .. {job.nodes - 1} (0 on MASTER_ADDR).",
            ': "${MASTER_ADDR:?set MASTER_ADDR to the address of the node with NODE_RANK 0}"',
            ': "${NODE_RANK:?set NODE_RANK to the index of this node}"']


def plan_file(job: Job) -> str:
    """The layout for the training script: the plan's fields plus the batch arithmetic."""
    data = {"plan": job.plan.model_dump(mode="json"), "workload": job.workload.model_dump(mode="json"),
            "gradient_accumulation_steps": job.gradient_accumulation, "world_size": job.cluster.total_gpus}
    return json.dumps(data, indent=2) + "\n"


def emit(job: Job) -> dict[str, str]:
    body = ["# Run this on every node (the same command on each)." if job.nodes > 1 else "# Single node.",
            *rendezvous_lines(job), "exec " + command(torchrun_words(job) + script_words(job, SCRIPT))]
    return {"launch.sh": script(job.summary, launch_environment(job.plan, job.cluster), body), "plan.json": plan_file(job)}
