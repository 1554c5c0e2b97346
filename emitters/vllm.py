"""vLLM (0.33): the ``vllm serve`` command for an inference plan's degrees (flags: vLLM's own serve
parser, `vllm.entrypoints.cli.serve`, checked with its engine arguments in the validator tests).

TP, PP and DP sizes (uneven pipeline stages in ``VLLM_PP_LAYER_PARTITION``, vLLM's ``get_pp_indices``);
``--enable-expert-parallel`` when the plan has EP (vLLM's EP group is TP × DP, so the
plan's ep must equal tp·dp); ``--max-model-len`` = the prompt and output tokens, ``--max-num-seqs`` = its
concurrent sequences per data-parallel rank (vLLM applies it per DP engine); ``--kv-cache-dtype`` auto
(the model dtype) or fp8, the plan's ``kv_cache_dtype`` (as the cost model prices the cache); fp8 plans quantize the bf16 checkpoint online
(``--quantization fp8``); ``--gpu-memory-utilization`` = the plan's peak memory over the GPU's capacity,
at least vLLM's default 0.9 (vLLM fills the rest with KV-cache blocks), at most the usable share (< 1).
A serving plan's iteration budget as ``--max-num-batched-tokens`` (the chunked prefill it was priced with).
Speculative decoding with the model's multi-token-prediction module: ``--speculative-config`` method mtp
with the plan's draft tokens. Disaggregated serving (`emit_disaggregated`): prefill and decode instances of their own layouts, each
with ``--kv-transfer-config`` naming the NIXL connector (vLLM's ``NixlConnector``, ``kv_role`` kv_both:
the router decides which instance prefills), behind a router that sends each request to a prefill
instance, then to a decode instance.
Multi-node: replicas within a node spread over the nodes as data-parallel ranks
(``--data-parallel-size-local``, the first node's address, each node's start rank; nodes other than the
first run ``--headless``); a replica larger than a node runs on vLLM's multiprocessing backend across
nodes (``--nnodes``, ``--node-rank``, ``--master-addr``), one replica only.
"""

from __future__ import annotations

import json

from parallelplan.constraints.serving import max_memory_fraction
from parallelplan.emitters.environment import Variable, command, nccl_environment, script
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

TARGET = "vllm"
NAME = "vLLM"
CONSTRAINTS = {"fixed": {"sharding": "none", "cp": 1, "vpp": 1}, "memory_margin": 1 - max_memory_fraction()}
DEFAULT_UTILIZATION = 0.9  # vLLM's default --gpu-memory-utilization
RPC_PORT = 13345  # vLLM's default --data-parallel-rpc-port


KV_TRANSFER = {"kv_connector": "NixlConnector", "kv_role": "kv_both"}
"""vLLM's KV-transfer configuration for a disaggregated instance (vllm/distributed/kv_transfer: the NIXL
connector moves the prompt's blocks from the prefill instance's GPUs to the decode instance's)."""


def arguments(job: Job, port: int = PORT) -> list[str]:
    check(job, NAME, uneven_stages=True)
    p = job.plan
    if p.ep > 1 and p.ep != p.tp * p.dp:
        raise unsupported(NAME, f"ep {p.ep} with tp {p.tp} · dp {p.dp} (its expert-parallel group is TP × DP)",
                          f"solve with --fix ep={p.tp * p.dp} or ep=1")
    if job.model.moe is not None and p.ep == 1 and p.dp > 1 and p.etp != p.tp * p.dp:
        raise unsupported(NAME, f"experts split over etp {p.etp} under dp {p.dp} (without expert parallelism it "
                          f"splits them over TP × DP = {p.tp * p.dp})", f"solve with --fix etp={p.tp * p.dp}, or ep={p.tp * p.dp}")
    out = [f"--tensor-parallel-size={p.tp}", f"--pipeline-parallel-size={p.pp}", f"--data-parallel-size={p.dp}",
           f"--max-model-len={context_length(job)}", f"--max-num-seqs={sequences_per_replica(job)}", f"--dtype={dtype(job)}",
           f"--kv-cache-dtype={p.kv_cache_dtype}",
           f"--gpu-memory-utilization={memory_fraction(job, job.memory.total, DEFAULT_UTILIZATION)}",
           f"--port={port}"]
    if p.ep > 1:
        out.append("--enable-expert-parallel")
    if p.precision == "fp8":
        out.append("--quantization=fp8")
    if job.batched_tokens:  # the iteration budget the serving plan was priced with
        out.append(f"--max-num-batched-tokens={job.batched_tokens}")
    drafts = mtp_drafts(job, NAME)
    if drafts:
        out.append(f"--speculative-config={json.dumps({'method': 'mtp', 'num_speculative_tokens': drafts}, separators=(',', ':'))}")
    return out + node_arguments(job)


def node_arguments(job: Job) -> list[str]:
    p = job.plan
    if job.nodes == 1:
        return []
    replica = p.tp * p.pp
    if replica <= job.gpus_per_node:
        local = job.gpus_per_node // replica
        return [f"--data-parallel-size-local={local}", "--data-parallel-address=$MASTER_ADDR",
                f"--data-parallel-rpc-port={RPC_PORT}", f"--data-parallel-start-rank=$((NODE_RANK * {local}))"]
    if p.dp > 1:
        raise unsupported(NAME, f"dp {p.dp} with replicas of {replica} GPUs spanning nodes in one command",
                          "solve with --fix dp=1, or launch one replica per node group")
    return ["--distributed-executor-backend=mp", f"--nnodes={job.nodes}", "--node-rank=$NODE_RANK",
            "--master-addr=$MASTER_ADDR", f"--master-port={job.master_port}"]


def environment(job: Job) -> list[Variable]:
    """The NCCL settings, and uneven pipeline stages' layer counts."""
    stages = job.plan.layers_per_stage
    uneven = [Variable("VLLM_PP_LAYER_PARTITION", ",".join(map(str, stages)),
                       "the plan's layers per pipeline stage (vLLM's get_pp_indices)")] if stages else []
    return nccl_environment(job.cluster) + uneven


def serve_lines(job: Job, extra: list[str] = (), port: int = PORT) -> list[str]:
    words = ["vllm", "serve", "$MODEL", *arguments(job, port), *extra]
    body = model_lines(job) + node_rank_lines(job)
    if job.nodes > 1:
        body += ["HEADLESS=()", "if (( NODE_RANK > 0 )); then HEADLESS=(--headless); fi  # the API server runs on node 0",
                 ""]
        words.append("${HEADLESS[@]}")
    return body + ["exec " + command(words)]


def emit(job: Job) -> dict[str, str]:
    return {"serve.sh": script(job.summary, environment(job), serve_lines(job))}


def emit_disaggregated(prefill: Job, decode: Job, prefill_count: int, decode_count: int) -> dict[str, str]:
    """prefill.sh and decode.sh, one instance each (start ``prefill_count`` and ``decode_count`` of them on
    their own GPUs), and the router's note (module docstring)."""
    extra = [f"--kv-transfer-config={json.dumps(KV_TRANSFER, separators=(',', ':'))}"]
    return disaggregated_scripts(
        {role: script(job.summary, environment(job), serve_lines(job, extra, port))
         for role, job, port in (("prefill", prefill, PORT + 100), ("decode", decode, PORT + 200))},
        prefill_count, decode_count,
        router=["# vLLM ships no router of its own: put one in front that sends each request to a prefill",
                "# instance, then to a decode instance with the kv_transfer_params the prefill returned —",
                "# NVIDIA Dynamo, llm-d, or vLLM's examples/online_serving/disaggregated_serving proxy."])
