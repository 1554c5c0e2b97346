"""Our serving search beside NVIDIA's aiconfigurator's ``default`` search on issue 20's cases, in one run:
Qwen3-32B and Llama-3.1-70B on 8 H100, DeepSeek-V3 on 16 H200, requests of 4000 + 1000 tokens under a
streaming target (TTFT ≤ 2 s, TPOT ≤ 30 ms: aiconfigurator's own defaults), aggregated and disaggregated.

Run from the repository root:  python -m benchmarks.serving_search [--aiconfigurator PROGRAM]
Writes benchmarks/results/serving_search.json and serving_search.md.

aiconfigurator is run as its own process (`benchmarks.serving_peers` says how to install it): ``cli
default --backend vllm`` on the case's GPUs, its best aggregated and disaggregated configurations read from
the ``best_config_topn.csv`` it saves (rank 1 of each, by tokens/s per GPU). Ours is `serve_plan` with the
weights and KV cache in the dtypes aiconfigurator chose for the case (bf16 for the dense models, fp8 for
DeepSeek-V3), so the layouts compare like for like; the figures of each are its own tool's prediction,
and the wall time of each search is measured around it (aiconfigurator's includes its start-up and its
report).
"""

from __future__ import annotations

import csv
import glob
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass

from benchmarks.results_files import write_results
from benchmarks.serving_peers import peer_program
from parallelplan import Traffic, load_cluster, load_model
from parallelplan.solver.serving import describe_layout, serve_plan


@dataclass(frozen=True)
class Case:
    name: str
    model: str
    peer_model: str
    cluster: str
    nodes: int
    peer_system: str
    precision: str
    kv_cache_dtype: str


CASES = (
    Case("Qwen3-32B, 8 x H100", "qwen3-32b", "Qwen/Qwen3-32B", "dgx-h100", 1, "h100_sxm", "bf16", "auto"),
    Case("Llama-3.1-70B, 8 x H100", "llama-3.1-70b", "meta-llama/Meta-Llama-3.1-70B", "dgx-h100", 1, "h100_sxm", "bf16",
         "auto"),
    Case("DeepSeek-V3, 16 x H200", "deepseek-v3", "deepseek-ai/DeepSeek-V3", "hgx-h200", 2, "h200_sxm", "fp8", "fp8"),
)
ISL, OSL, TTFT_MS, TPOT_MS = 4000, 1000, 2000, 30


@dataclass
class Side:
    layout: str
    gpus: int
    ttft_ms: float
    tpot_ms: float
    tokens_per_s_per_gpu: float
    tokens_per_s_per_user: float


@dataclass
class Row:
    case: str
    serving: str
    ours: Side | None
    theirs: Side | None


def ours(case: Case) -> tuple[dict[str, Side | None], float]:
    model, cluster = load_model(case.model), load_cluster(case.cluster, nodes=case.nodes)
    start = time.perf_counter()
    found = serve_plan(model, cluster, Traffic(isl=ISL, osl=OSL), ttft_s=TTFT_MS / 1e3, tpot_s=TPOT_MS / 1e3,
                       fixed={"precision": case.precision, "kv_cache_dtype": case.kv_cache_dtype})
    elapsed = time.perf_counter() - start
    out = {}
    for serving, plan in (("aggregated", found.best_aggregated), ("disaggregated", found.best_disaggregated)):
        if plan is None:
            out[serving] = None
            continue
        f = plan.figures
        layout = "; ".join(f"{w.role + ' ' if serving == 'disaggregated' else ''}{w.count} x {describe_layout(w.plan).split(',')[0]}"
                           for w in plan.workers)
        out[serving] = Side(layout, f.gpus, round(f.ttft_s * 1e3, 1), round(f.tpot_s * 1e3, 2),
                            round(f.output_tokens_per_s_per_gpu, 1), round(f.tokens_per_s_per_user, 1))
    return out, elapsed


def theirs(program: str, case: Case) -> tuple[dict[str, Side | None], float]:
    gpus = load_cluster(case.cluster, nodes=case.nodes).total_gpus
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        subprocess.run([program, "cli", "default", "--model-path", case.peer_model, "--total-gpus", str(gpus), "--system",
                        case.peer_system, "--backend", "vllm", "--isl", str(ISL), "--osl", str(OSL), "--ttft", str(TTFT_MS),
                        "--tpot", str(TPOT_MS), "--save-dir", folder, "--no-color"], capture_output=True, text=True,
                       timeout=1200)
        elapsed = time.perf_counter() - start
        out = {}
        for serving, sub in (("aggregated", "agg"), ("disaggregated", "disagg")):
            files = glob.glob(f"{folder}/**/{sub}/best_config_topn.csv", recursive=True)
            rows = list(csv.DictReader(open(files[0]))) if files else []
            out[serving] = _side(rows[0], sub) if rows else None
    return out, elapsed


def _side(row: dict[str, str], sub: str) -> Side:
    if sub == "agg":
        replicas = int(row["num_total_gpus"])
        layout = f"{row['parallel']} (bs {row['bs']})"
        gpus = replicas
    else:
        layout = f"prefill {row['(p)workers']} x {row['(p)parallel']}; decode {row['(d)workers']} x {row['(d)parallel']}"
        gpus = int(row["num_total_gpus"])
    return Side(layout, gpus, round(float(row["ttft"]), 1), round(float(row["tpot"]), 2),
                round(float(row["tokens/s/gpu"]), 1), round(float(row["tokens/s/user"]), 1))


def main() -> None:
    program, version = peer_program(__doc__.splitlines()[0])
    rows, times = [], []
    for case in CASES:
        mine, my_time = ours(case)
        peer, peer_time = theirs(program, case)
        times.append((case.name, round(my_time, 2), round(peer_time, 1)))
        rows += [Row(case.name, serving, mine[serving], peer[serving]) for serving in ("aggregated", "disaggregated")]

    def cell(side: Side | None, field: str, spec: str) -> str:
        return format(getattr(side, field), spec) if side else "–"

    lines = ["# Serving search: ours beside aiconfigurator's default search (vLLM backend)", "",
             f"aiconfigurator: {version[-1] if version else '?'}; requests of {ISL} + {OSL} tokens, TTFT ≤ {TTFT_MS} ms, "
             f"TPOT ≤ {TPOT_MS} ms; the best of each serving kind by tokens/s per GPU, each tool's own prediction.", "",
             "| case | serving | our layout | their layout | TTFT ms ours / theirs | TPOT ms ours / theirs | "
             "tokens/s/GPU ours / theirs | tokens/s/user ours / theirs |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r.case} | {r.serving} | {r.ours.layout if r.ours else '–'} | {r.theirs.layout if r.theirs else '–'} | "
                     f"{cell(r.ours, 'ttft_ms', ',.0f')} / {cell(r.theirs, 'ttft_ms', ',.0f')} | "
                     f"{cell(r.ours, 'tpot_ms', '.1f')} / {cell(r.theirs, 'tpot_ms', '.1f')} | "
                     f"{cell(r.ours, 'tokens_per_s_per_gpu', ',.0f')} / {cell(r.theirs, 'tokens_per_s_per_gpu', ',.0f')} | "
                     f"{cell(r.ours, 'tokens_per_s_per_user', '.1f')} / {cell(r.theirs, 'tokens_per_s_per_user', '.1f')} |")
    lines += ["", "| case | our search s | aiconfigurator's s |", "|---|---|---|"]
    lines += [f"| {name} | {mine:.2f} | {peer:.1f} |" for name, mine, peer in times]
    write_results("serving_search", {"aiconfigurator": version, "cases": [asdict(c) for c in CASES],
                                     "targets": {"isl": ISL, "osl": OSL, "ttft_ms": TTFT_MS, "tpot_ms": TPOT_MS},
                                     "rows": [asdict(r) for r in rows],
                                     "search_s": [{"case": n, "ours": m, "aiconfigurator": p} for n, m, p in times]},
                  lines)


if __name__ == "__main__":
    main()
