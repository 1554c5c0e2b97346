"""SLURM: an sbatch script that starts one torchrun per node with ``srun`` (c10d rendezvous on the first node
of the allocation, the same command on every node). Directives: ``--nodes``, ``--ntasks-per-node=1``,
``--gpus-per-node``, ``--exclusive`` (every CPU and all host memory of the node, ``--mem=0``), ``--time``, and
the partition and account when given."""

from __future__ import annotations

from parallelplan.emitters.environment import command, launch_environment, script
from parallelplan.emitters.job import Job
from parallelplan.emitters.torchrun import SCRIPT, plan_file, script_words, torchrun_words

TARGET = "slurm"


def directives(job: Job) -> list[str]:
    lines = [f"--job-name={job.job_name}", f"--nodes={job.nodes}", "--ntasks-per-node=1",
             f"--gpus-per-node={job.gpus_per_node}", "--exclusive", "--mem=0", f"--time={job.time_limit}",
             "--output=%x-%j.out"]
    if job.partition:
        lines.append(f"--partition={job.partition}")
    if job.account:
        lines.append(f"--account={job.account}")
    return [f"#SBATCH {line}" for line in lines]


def emit(job: Job) -> dict[str, str]:
    body = []
    if job.nodes > 1:
        body += ['MASTER_ADDR="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)"',
                 f"MASTER_PORT={job.master_port}", 'JOB_ID="$SLURM_JOB_ID"', "export MASTER_ADDR MASTER_PORT JOB_ID", ""]
    body.append("srun --kill-on-bad-exit=1 " + command(torchrun_words(job) + script_words(job, SCRIPT)))
    text = script(job.summary, launch_environment(job.plan, job.cluster), body)
    shebang, rest = text.split("\n", 1)
    return {"job.sbatch": "\n".join([shebang, *directives(job), rest]), "plan.json": plan_file(job)}
