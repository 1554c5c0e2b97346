"""SGLang (0.5): the ``sglang.launch_server`` command for an inference plan's degrees (flags: SGLang's
`ServerArgs.add_cli_args`, checked with ``ServerArgs.from_cli_args`` in the validator tests).

TP, PP and DP sizes (SGLang's world is dp·tp·pp); ``--ep-size`` for the plan's EP; ``--context-length`` =
the workload's context, ``--max-running-requests`` = its concurrent sequences per data-parallel rank
(each DP worker's scheduler applies it); ``--kv-cache-dtype`` auto, or fp8_e4m3 for the plan's fp8 cache;
fp8 plans quantize online
(``--quantization fp8``); ``--mem-fraction-static`` = the plan's weights and KV cache over the GPU's
capacity (SGLang's static pool holds exactly those), at least 0.8. Multi-node: the same command on every
node with ``--nnodes``, ``--node-rank`` and ``--dist-init-addr`` of the first node.
"""

from __future__ import annotations

from parallelplan.emitters.environment import command, nccl_environment, script
from parallelplan.emitters.job import Job, unsupported
from parallelplan.emitters.serving import PORT, check, dtype, memory_fraction, model_lines, sequences_per_replica
from parallelplan.emitters.torchrun import node_rank_lines

TARGET = "sglang"
NAME = "SGLang"
CONSTRAINTS = {"fixed": {"sharding": "none", "cp": 1, "vpp": 1}}
MIN_STATIC_FRACTION = 0.8
KV_CACHE_DTYPES = {"auto": "auto", "fp8": "fp8_e4m3"}
"""SGLang's --kv-cache-dtype for each `Plan.kv_cache_dtype` (its choices name the fp8 format)."""


def arguments(job: Job) -> list[str]:
    check(job, NAME)
    p, w = job.plan, job.workload
    if p.ep > 1 and p.tp % p.ep:
        raise unsupported(NAME, f"ep {p.ep} with tp {p.tp} (its experts are split inside the TP group)",
                          f"solve with --fix ep={p.tp} or ep=1")
    static = job.memory.weights + job.memory.kv_cache
    out = [f"--tp-size={p.tp}", f"--pp-size={p.pp}", f"--dp-size={p.dp}", f"--ep-size={p.ep}",
           f"--context-length={w.seq_len}", f"--max-running-requests={sequences_per_replica(job)}", f"--dtype={dtype(job)}",
           f"--kv-cache-dtype={KV_CACHE_DTYPES[p.kv_cache_dtype]}", f"--mem-fraction-static={memory_fraction(job, static, MIN_STATIC_FRACTION)}",
           f"--port={PORT}"]
    if p.precision == "fp8":
        out.append("--quantization=fp8")
    if job.nodes > 1:
        out += [f"--nnodes={job.nodes}", "--node-rank=$NODE_RANK", f"--dist-init-addr=$MASTER_ADDR:{job.master_port}"]
    return out


def emit(job: Job) -> dict[str, str]:
    words = ["python3", "-m", "sglang.launch_server", "--model-path=$MODEL", *arguments(job)]
    body = model_lines(job) + node_rank_lines(job) + ["exec " + command(words)]
    return {"serve.sh": script(job.summary, nccl_environment(job.cluster), body)}
