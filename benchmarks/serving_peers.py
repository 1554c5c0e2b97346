"""Our serving estimate beside NVIDIA's aiconfigurator on the same static batches, in one run (issue 20's
cases: Qwen3-32B and Llama-3.1-70B on H100, DeepSeek-V3 on H200).

Run from the repository root:  python -m benchmarks.serving_peers [--aiconfigurator PROGRAM]
Writes benchmarks/results/serving_peers.json and serving_peers.md.

aiconfigurator (ai-dynamo/aiconfigurator, Apache-2.0) is a peer we run, never code we copy: its own
process, from its own environment — ``python -m venv aic && aic/bin/pip install aiconfigurator==0.12.0``
installs it from the registry, and it runs offline from the model configs and kernel databases its wheel
ships — found as ``--aiconfigurator``, ``PLAN_AICONFIGURATOR`` or ``aiconfigurator`` on the PATH. Each
case is one ``aiconfigurator cli estimate --estimate-mode static`` call for the vLLM backend: a batch of
``batch`` prompts of ``isl`` tokens prefilled together, then ``osl`` tokens generated for all of them;
its TTFT is that prefill, its TPOT a generation step.

Ours prices the same layout with `estimate` and ``kind inference`` (`constraints.generation`: every
sequence of the batch decoded together, its KV cache held to the end), the node's GPUs as replicas of the
case's layout, each with a batch: TTFT is the step less its decode, TPOT the decode over its ``osl − 1``
steps (the prefill's logits give the first token), tokens/s per GPU the generated tokens over the step
and the GPUs. The layout must pass `check`'s rules (experts whole on each GPU, etp 1, with sequence
parallelism where Megatron-Core's MoE rule asks for it). Static batches check the two cost models term by term; the two searches
under TTFT/TPOT targets are set side by side in `benchmarks.serving_search`.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
from dataclasses import asdict, dataclass

from benchmarks.results_files import write_results
from parallelplan import Plan, Workload, check, estimate, load_cluster, load_model


@dataclass(frozen=True)
class Case:
    name: str
    model: str  # our preset
    peer_model: str  # the Hugging Face id aiconfigurator ships a config for
    cluster: str
    peer_system: str
    tp: int
    ep: int  # experts over ep GPUs, each whole (etp 1); attention over tp
    precision: str
    peer_quant: tuple[str, ...]  # aiconfigurator's flags for the same weights
    batch: int
    isl: int
    osl: int


CASES = (
    Case("Qwen3-32B, tp 4, bf16", "qwen3-32b", "Qwen/Qwen3-32B", "dgx-h100", "h100_sxm", 4, 1, "bf16", (), 64, 4000, 500),
    Case("Llama-3.1-70B, tp 8, bf16", "llama-3.1-70b", "meta-llama/Meta-Llama-3.1-70B", "dgx-h100", "h100_sxm", 8, 1,
         "bf16", (), 64, 4000, 500),
    Case("DeepSeek-V3, tp 8 ep 8, fp8", "deepseek-v3", "deepseek-ai/DeepSeek-V3", "hgx-h200", "h200_sxm", 8, 8, "fp8",
         ("--gemm-quant-mode", "fp8_block", "--moe-quant-mode", "fp8_block"), 32, 4000, 500),
)
PEER_FIELDS = {"ttft_ms": r"TTFT:\s+([\d.,]+) ms", "tpot_ms": r"TPOT:\s+([\d.,]+) ms",
               "tokens_per_s_per_gpu": r"tokens/s/gpu:\s+([\d.,]+)"}
"""The lines of aiconfigurator's estimate report each metric is read from."""


@dataclass
class Row:
    case: str
    ours_ttft_ms: float
    ours_tpot_ms: float
    ours_tokens_per_s_per_gpu: float
    ours_memory_gib: str
    peer_ttft_ms: float | None
    peer_tpot_ms: float | None
    peer_tokens_per_s_per_gpu: float | None
    peer_note: str


def ours(case: Case) -> tuple[float, float, float, str]:
    """(TTFT ms, TPOT ms, generated tokens/s per GPU, peak memory per GPU against the usable) of the static batch (module
    docstring), the node's GPUs as replicas of the layout that each take a batch. A layout that breaks a
    rule is an error, not a number."""
    model, cluster = load_model(case.model), load_cluster(case.cluster)
    replicas = cluster.total_gpus // case.tp
    work = Workload(kind="inference", seq_len=case.isl, output_len=case.osl, global_batch_size=case.batch * replicas)
    plan = Plan(tp=case.tp, dp=replicas, ep=case.ep, etp=1, precision=case.precision, sequence_parallel=case.ep > 1)
    broken = [v for v in check(model, cluster, plan, work) if v.rule != "memory_fits"]
    if broken:
        raise SystemExit(f"{case.name}: {'; '.join(v.message for v in broken)}")
    est = estimate(model, cluster, plan, work)
    decode = est.time.decode
    tokens = work.global_batch_size * case.osl / est.step_time_s
    memory = f"{est.memory.total / 2**30:.1f} of {est.memory.usable / 2**30:.1f}" + ("" if est.fits else ": does not fit")
    return (est.step_time_s - decode) * 1e3, decode / (case.osl - 1) * 1e3, tokens / cluster.total_gpus, memory


def peer(program: str, case: Case) -> tuple[dict[str, float], str]:
    """aiconfigurator's static estimate of the case: its metrics, and its warning when it finds no fit."""
    command = [program, "cli", "estimate", "--model-path", case.peer_model, "--system", case.peer_system,
               "--backend", "vllm", "--estimate-mode", "static", "--tp-size", str(case.tp), "--batch-size",
               str(case.batch), "--isl", str(case.isl), "--osl", str(case.osl), "--no-color", *case.peer_quant]
    if case.ep > 1:
        command += ["--moe-ep-size", str(case.ep), "--moe-tp-size", str(case.tp // case.ep)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    text = done.stdout + done.stderr
    found = {name: float(m.group(1).replace(",", "")) for name, pattern in PEER_FIELDS.items()
             if (m := re.search(pattern, text))}
    oom = re.search(r"OOM: [^\n]*", text)
    return found, oom.group(0)[:160] if oom else ("" if found else f"no estimate (exit {done.returncode})")


def peer_program(description: str) -> tuple[str, list[str]]:
    """The aiconfigurator program from the command line (``--aiconfigurator``, ``PLAN_AICONFIGURATOR``, the
    PATH) and its version lines; a clear error where it is not installed."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--aiconfigurator", default=os.environ.get("PLAN_AICONFIGURATOR") or shutil.which("aiconfigurator"),
                        help="the aiconfigurator program (module docstring says how to install it)")
    args = parser.parse_args()
    if not args.aiconfigurator:
        parser.error("aiconfigurator not found: install it in its own environment (python -m venv aic && "
                     "aic/bin/pip install aiconfigurator==0.12.0) and pass --aiconfigurator aic/bin/aiconfigurator")
    version = subprocess.run([args.aiconfigurator, "version"], capture_output=True, text=True).stdout.strip().splitlines()
    return args.aiconfigurator, version


def main() -> None:
    program, version = peer_program(__doc__.splitlines()[0])
    rows = []
    for case in CASES:
        ttft, tpot, tokens, memory = ours(case)
        found, note = peer(program, case)
        rows.append(Row(case.name, round(ttft, 1), round(tpot, 2), round(tokens, 1), memory,
                        found.get("ttft_ms"), found.get("tpot_ms"), found.get("tokens_per_s_per_gpu"), note))

    def ratio(a: float, b: float | None) -> str:
        return f"{a / b:.2f}" if b else "–"

    lines = ["# Static-batch serving: our estimate beside aiconfigurator (vLLM backend)", "",
             f"aiconfigurator: {version[-1] if version else '?'}; each case a batch of prompts prefilled together "
             "(TTFT) and then decoded together (TPOT); ours/theirs > 1 means we predict slower.", "",
             "| case | batch, ISL/OSL | TTFT ms ours / theirs | TPOT ms ours / theirs | tokens/s per GPU ours / theirs | ours/theirs TTFT, TPOT | our GiB per GPU | peer note |",
             "|---|---|---|---|---|---|---|---|"]
    for case, r in zip(CASES, rows, strict=True):
        lines.append(f"| {r.case} | {case.batch}, {case.isl}/{case.osl} | {r.ours_ttft_ms:,.0f} / {r.peer_ttft_ms or '–'} | "
                     f"{r.ours_tpot_ms:.2f} / {r.peer_tpot_ms or '–'} | {r.ours_tokens_per_s_per_gpu:,.0f} / {r.peer_tokens_per_s_per_gpu or '–'} | "
                     f"{ratio(r.ours_ttft_ms, r.peer_ttft_ms)}, {ratio(r.ours_tpot_ms, r.peer_tpot_ms)} | "
                     f"{r.ours_memory_gib} | {r.peer_note} |")
    write_results("serving_peers", {"aiconfigurator": version, "cases": [asdict(c) for c in CASES],
                                    "rows": [asdict(r) for r in rows]}, lines)


if __name__ == "__main__":
    main()
