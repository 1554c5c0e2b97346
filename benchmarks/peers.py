"""Our cost model beside Calculon on the same cases, in one run.

Run from the repository root:  python -m benchmarks.peers [--calculon FOLDER]
Writes benchmarks/results/peers.json and peers.md.

Calculon (Isaev et al., SC'23; Apache-2.0) is a peer we run, never code we copy: it runs as its own
process from its own folder (``../shared/peers/calculon`` beside the repository, or ``--calculon`` /
``PLAN_CALCULON``), with its own dependencies (numpy, pandas, psutil: the ``test`` extra installs them),
as ``bin/calculon llm APPLICATION EXECUTION SYSTEM STATS.json``, and its step time is the ``total_time``
of the stats file it writes.

Cases (``benchmarks/data/korthikanti2022.json``):
- Calculon's validation set: the four Megatron-LM models of Korthikanti et al. 2022 (22B, 175B, 530B, 1T
  on A100 80GB), with full recompute and with sequence parallelism + selective recompute, each with the
  paper's measured iteration time (Table 5);
- dense cases both can express without a published time: Calculon's example execution, and the seqsel
  layouts on its H100 system — to see where the two models part.
Each case is one of Calculon's application files (hidden, feed-forward, heads, blocks, sequence) and
execution files (layout, batch, recompute, sequence parallelism, overlap); ours prices the same case,
translated field by field in `our_inputs` (a GPT-style model with the Megatron papers' 51,200-token
vocabulary and dropout 0.1; the megatron-2022 stack — Megatron-LM's fused kernels without flash
attention (selective recompute exists because the attention scores were materialised), pipeline sends
scattered over the TP ranks, no overlapped gradient reduction; the cluster preset of the system's GPU).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from parallelplan import Plan, Workload, estimate, load_cluster, load_model

DATA = Path(__file__).parent / "data" / "korthikanti2022.json"
RESULTS = Path(__file__).parent / "results"
DEFAULT_CALCULON = Path(__file__).resolve().parents[2] / "shared" / "peers" / "calculon"
RECOMPUTE = {"full": ("full", None), "attn_only": ("selective", ("core_attn",)), "none": ("none", None)}
"""Calculon's ``activation_recompute`` → our ``recompute`` and its modules."""
PRECISION = {"float16": "fp16", "bfloat16": "bf16", "float8": "fp8", "float32": "fp32"}


@dataclass
class Row:
    case: str
    recompute: str
    gpus: int
    layout: str
    published_s: float | None
    ours_s: float
    calculon_s: float
    ours_error: float | None
    calculon_error: float | None


def calculon_folder(given: str | None = None) -> Path:
    folder = Path(given or os.environ.get("PLAN_CALCULON") or DEFAULT_CALCULON)
    if not (folder / "bin" / "calculon").is_file():
        raise SystemExit(f"Calculon not found in {folder} (give --calculon FOLDER or PLAN_CALCULON)")
    return folder


def run_calculon(folder: Path, application: str, execution: str, system: str) -> float:
    """Calculon's step time (seconds) for one case, from its own process."""
    with tempfile.TemporaryDirectory() as scratch:
        stats = Path(scratch) / "stats.json"
        done = subprocess.run([sys.executable, "bin/calculon", "llm", application, execution, system, str(stats)],
                              cwd=folder, env={**os.environ, "PYTHONPATH": str(folder)}, capture_output=True, text=True)
        if done.returncode != 0 or not stats.is_file():
            raise RuntimeError(f"calculon llm {application} {execution} {system} failed:\n{done.stderr[-2000:]}")
        return float(json.loads(stats.read_text())["total_time"])


def our_inputs(application: dict, execution: dict, cluster: str, data: dict):
    """The case as our model, cluster, plan and workload (module docstring)."""
    model = load_model({
        "name": f"gpt-{application['num_blocks']}x{application['hidden']}", "architecture": "gpt",
        "hidden_size": application["hidden"], "num_layers": application["num_blocks"],
        "num_attention_heads": application["attn_heads"], "head_dim": application["attn_size"],
        "ffn_hidden_size": application["feedforward"], "vocab_size": data["vocab_size"],
        "max_position_embeddings": application["seq_size"], "position_embedding": "learned",
        "tie_word_embeddings": True, "qkv_bias": True, "attention_out_bias": True, "mlp_bias": True,
        "mlp_gated": False, "activation": "gelu", "norm_type": "layernorm", "norm_bias": True,
    })
    recompute, modules = RECOMPUTE[execution["activation_recompute"]]
    plan = Plan(tp=execution["tensor_par"], pp=execution["pipeline_par"], dp=execution["data_par"],
                vpp=execution["pipeline_interleaving"], micro_batch_size=execution["microbatch_size"],
                sequence_parallel=execution["tensor_par_comm_type"] == "rs_ag",
                sharding="zero1" if execution["optimizer_sharding"] else "none",
                recompute=recompute, recompute_modules=modules, precision=PRECISION[execution["datatype"]],
                attention_kernel="eager", tp_comm_overlap=execution["tensor_par_overlap"] != "none",
                grad_reduce_overlap=execution["data_par_overlap"])
    workload = Workload(seq_len=application["seq_size"], global_batch_size=execution["batch_size"], dropout=data["dropout"],
                        stack="megatron-2022")
    return model, load_cluster(cluster, gpus=execution["num_procs"]), plan, workload


def _row(folder: Path, name: str, application_file: str, execution_file: str, system: str, cluster: str,
         data: dict, published: float | None) -> Row:
    application = json.loads((folder / application_file).read_text())
    execution = json.loads((folder / execution_file).read_text())
    ours = estimate(*our_inputs(application, execution, cluster, data)).step_time_s
    theirs = run_calculon(folder, application_file, execution_file, system)
    layout = (f"tp {execution['tensor_par']} · pp {execution['pipeline_par']} · dp {execution['data_par']}"
              f"{', vpp ' + str(execution['pipeline_interleaving']) if execution['pipeline_interleaving'] > 1 else ''}, "
              f"batch {execution['batch_size']}/{execution['microbatch_size']}")
    return Row(case=name, recompute=execution["activation_recompute"], gpus=execution["num_procs"], layout=layout,
               published_s=published, ours_s=ours, calculon_s=theirs, ours_error=_error(ours, published),
               calculon_error=_error(theirs, published))


def _error(predicted: float, published: float | None) -> float | None:
    return None if published is None else (predicted - published) / published


def rows(folder: Path) -> list[Row]:
    data = json.loads(DATA.read_text())
    out = []
    for run in data["runs"]:
        for mode, seconds in run["seconds"].items():
            out.append(_row(folder, run["name"], f"models/{run['calculon_model']}.json",
                            f"validation/seqsel/tab5/{run['calculon_model']}_{mode}.json", data["calculon_system"],
                            data["cluster"], data, seconds))
    for case in data["unpublished"]:
        out.append(_row(folder, case["name"], f"models/{case['calculon_model']}.json", case["execution"],
                        case["calculon_system"], case["cluster"], data, None))
    return out


def summary(all_rows: list[Row]) -> dict:
    published = [r for r in all_rows if r.published_s is not None]
    return {
        "published_rows": len(published),
        "ours_mean_abs_error": statistics.fmean(abs(r.ours_error) for r in published),
        "calculon_mean_abs_error": statistics.fmean(abs(r.calculon_error) for r in published),
        "ours_max_abs_error": max(abs(r.ours_error) for r in published),
        "calculon_max_abs_error": max(abs(r.calculon_error) for r in published),
    }


def _pct(value: float | None) -> str:
    return "" if value is None else f"{100 * value:+.1f}%"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calculon", help="Calculon's folder [default: ../shared/peers/calculon]")
    args = parser.parse_args()
    all_rows = rows(calculon_folder(args.calculon))
    stats = summary(all_rows)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "peers.json").write_text(json.dumps({"summary": stats, "rows": [asdict(r) for r in all_rows]}, indent=2) + "\n")
    lines = ["# Our cost model beside Calculon", "",
             f"Korthikanti et al. 2022, {stats['published_rows']} runs: mean |error| ours "
             f"{100 * stats['ours_mean_abs_error']:.2f}%, Calculon {100 * stats['calculon_mean_abs_error']:.2f}% "
             f"(max {100 * stats['ours_max_abs_error']:.1f}% and {100 * stats['calculon_max_abs_error']:.1f}%).", "",
             "| case | recompute | GPUs | layout | published s | ours s | ours error | Calculon s | Calculon error |",
             "|---|---|---:|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {r.case} | {r.recompute} | {r.gpus} | {r.layout} | {'' if r.published_s is None else f'{r.published_s:.2f}'} "
              f"| {r.ours_s:.2f} | {_pct(r.ours_error)} | {r.calculon_s:.2f} | {_pct(r.calculon_error)} |" for r in all_rows]
    (RESULTS / "peers.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
