"""SGLang (0.5): the ``sglang.launch_server`` command for an inference plan's degrees (flags: SGLang's
`ServerArgs.add_cli_args`, checked with ``ServerArgs.from_cli_args`` in the validator tests).

TP, PP and DP sizes (SGLang's world is dp·tp·pp); ``--ep-size`` for the plan's EP; an expert-parallel plan
whose experts span its data-parallel replicas (ep = tp·dp, or expert TP etp = tp·dp) is SGLang's
data-parallel attention: one engine of ``--tp-size`` tp·dp with ``--attn-dp-size`` dp (attention
replicated dp ways, tp-way within each) and the experts over ``--ep-size`` (1: split by TP); ``--context-length`` = the prompt and output tokens, ``--max-running-requests`` = its concurrent sequences per data-parallel rank
(each DP worker's scheduler applies it); ``--kv-cache-dtype`` auto, or fp8_e4m3 for the plan's fp8 cache;
fp8 plans quantize online
(``--quantization fp8``); ``--mem-fraction-static`` = the plan's weights and KV cache over the GPU's
capacity (SGLang's static pool holds exactly those), at least 0.8, at most the usable share (< 1).
A serving plan's iteration budget as ``--chunked-prefill-size`` (the serving model prices vLLM's default
budget, which SGLang is told). Speculative decoding with the model's multi-token-prediction module: ``--speculative-algorithm NEXTN``,
the plan's draft tokens as steps of one chain. Multi-node: the same command on every node with ``--nnodes``, ``--node-rank`` and ``--dist-init-addr``
of the first node. Disaggregated serving (`emit_disaggregated`): prefill and decode servers
(``--disaggregation-mode``, the KV cache moved by NIXL, ``--disaggregation-transfer-backend nixl``) and
SGLang's router in PD mode (``sglang_router.launch_router --pd-disaggregation``, SGLang's PD
disaggregation docs).
"""

from __future__ import annotations

from parallelplan.constraints.serving import max_memory_fraction
from parallelplan.emitters.environment import command, nccl_environment, script
from parallelplan.emitters.job import Job, unsupported
from parallelplan.emitters.serving import (
    PORT,
    check,
    context_length,
    disaggregated_scripts,
    dtype,
    memory_fraction,
    model_lines,
    mtp_drafts,
    sequences_per_replica,
)
from parallelplan.emitters.torchrun import node_rank_lines

TARGET = "sglang"
NAME = "SGLang"
CONSTRAINTS = {"fixed": {"sharding": "none", "cp": 1, "vpp": 1}, "memory_margin": 1 - max_memory_fraction()}
MIN_STATIC_FRACTION = 0.8
KV_CACHE_DTYPES = {"auto": "auto", "fp8": "fp8_e4m3"}
"""SGLang's --kv-cache-dtype for each `Plan.kv_cache_dtype` (its choices name the fp8 format)."""


def parallel_arguments(job: Job) -> list[str]:
    """TP, PP, DP and EP sizes; an EP spanning the replicas as data-parallel attention (module docstring)."""
    p = job.plan
    if p.dp > 1 and (p.ep > 1 and p.ep == p.tp * p.dp or p.ep == 1 and p.etp == p.tp * p.dp):
        return [f"--tp-size={p.tp * p.dp}", f"--pp-size={p.pp}", f"--attn-dp-size={p.dp}", f"--ep-size={p.ep}"]
    if p.ep > 1 and p.tp % p.ep:
        raise unsupported(NAME, f"ep {p.ep} with tp {p.tp} · dp {p.dp} (its experts are split inside the TP group, "
                          "or over TP × DP with data-parallel attention)",
                          f"solve with --fix ep={p.tp} or ep=1")
    return [f"--tp-size={p.tp}", f"--pp-size={p.pp}", f"--dp-size={p.dp}", f"--ep-size={p.ep}"]


def arguments(job: Job, port: int = PORT) -> list[str]:
    check(job, NAME)
    p = job.plan
    static = job.memory.weights + job.memory.kv_cache
    out = [*parallel_arguments(job), f"--context-length={context_length(job)}",
           f"--max-running-requests={sequences_per_replica(job)}", f"--dtype={dtype(job)}",
           f"--kv-cache-dtype={KV_CACHE_DTYPES[p.kv_cache_dtype]}",
           f"--mem-fraction-static={memory_fraction(job, static, MIN_STATIC_FRACTION)}", f"--port={port}"]
    if p.precision == "fp8":
        out.append("--quantization=fp8")
    if job.batched_tokens:  # the iteration budget the serving plan was priced with (vLLM's default)
        out.append(f"--chunked-prefill-size={job.batched_tokens}")
    drafts = mtp_drafts(job, NAME)
    if drafts:  # NEXTN: the model's MTP module as the draft, one chain of drafts per step
        out += ["--speculative-algorithm=NEXTN", f"--speculative-num-steps={drafts}", "--speculative-eagle-topk=1",
                f"--speculative-num-draft-tokens={drafts + 1}"]
    if job.nodes > 1:
        out += [f"--nnodes={job.nodes}", "--node-rank=$NODE_RANK", f"--dist-init-addr=$MASTER_ADDR:{job.master_port}"]
    return out


def server_lines(job: Job, extra: list[str] = (), port: int = PORT) -> list[str]:
    words = ["python3", "-m", "sglang.launch_server", "--model-path=$MODEL", *arguments(job, port), *extra]
    return model_lines(job) + node_rank_lines(job) + ["exec " + command(words)]


def emit(job: Job) -> dict[str, str]:
    return {"serve.sh": script(job.summary, nccl_environment(job.cluster), server_lines(job))}


def emit_disaggregated(prefill: Job, decode: Job, prefill_count: int, decode_count: int) -> dict[str, str]:
    """prefill.sh and decode.sh, one server each (start ``prefill_count`` and ``decode_count`` of them on
    their own GPUs), and router.sh: SGLang's router in PD mode over their addresses."""
    ports = {"prefill": PORT + 100, "decode": PORT + 200}
    scripts = {role: script(job.summary, nccl_environment(job.cluster),
                            server_lines(job, [f"--disaggregation-mode={role}", "--disaggregation-transfer-backend=nixl"],
                                         ports[role]))
               for role, job in (("prefill", prefill), ("decode", decode))}
    router = [f'PREFILL="${{PREFILL:?set PREFILL to the prefill servers, e.g. http://host1:{ports["prefill"]}}}"',
              f'DECODE="${{DECODE:?set DECODE to the decode servers, e.g. http://host2:{ports["decode"]}}}"',
              "args=(--pd-disaggregation --host 0.0.0.0 --port 8000)",
              'for url in $PREFILL; do args+=(--prefill "$url"); done',
              'for url in $DECODE; do args+=(--decode "$url"); done',
              'exec python3 -m sglang_router.launch_router "${args[@]}"']
    return disaggregated_scripts(scripts, prefill_count, decode_count, router=router)
