"""`plan serve-plan`: the best way to serve a model on a cluster under latency targets (`solver.serve_plan`)
— a worker's layout, how many workers and requests each runs, aggregated or disaggregated — with its
TTFT, TPOT and throughput, the Pareto frontier on request, and the vLLM / SGLang launch files.

A separate command rather than ``plan solve --kind inference``: that one plans a fixed batch of
sequences generated at once (an offline job, RL rollouts: its makespan), this one a service under
traffic (requests arriving, latency targets, replicas). Exit 0 with a plan, 1 when no deployment meets
the targets (the explanation names the target, by how much, and what would meet it), 2 on bad input.
``--json`` prints `solver.serving.ServingSolution` (and the files with ``--emit``)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from parallelplan.cli.format import heading, quiet, table
from parallelplan.cli.options import MODEL_OPTIONS, cost_model, load_target_cluster, with_options

if TYPE_CHECKING:
    from parallelplan.solver.serving import ServingPlan, ServingSolution


DEFAULT_ISL, DEFAULT_OSL = 4000, 1000
"""Request lengths without --isl/--osl/--lengths: aiconfigurator's defaults, so the two tools answer alike."""


@click.command("serve-plan")
@click.option("--model", "-m", "model_ref", required=True, help="A model: preset, config.json, or HF repo id.")
@click.option("--cluster", "-c", "cluster_ref", help="A cluster preset or file [default: the detected node, else dgx-h100; said on stderr].")
@click.option("--nodes", type=click.IntRange(min=1), help="Nodes of the cluster [default: the preset's].")
@click.option("--gpus", type=click.IntRange(min=1), help="Total GPUs (instead of --nodes).")
@click.option("--isl", type=click.IntRange(min=1), help=f"Prompt tokens per request [default: {DEFAULT_ISL}].")
@click.option("--osl", type=click.IntRange(min=1), help=f"Output tokens per request [default: {DEFAULT_OSL}].")
@click.option("--lengths", "lengths_text", metavar="ISL:OSL:SHARE,...",
              help="A distribution of request lengths instead of --isl/--osl: classes of prompt and output tokens "
                   "with their shares, e.g. 1000:200:0.7,8000:500:0.3.")
@click.option("--mode", type=click.Choice(["batch", "streaming", "realtime"]), default="streaming", show_default=True,
              help="Default targets: batch none; streaming TTFT 2 s, TPOT 200 ms (MLPerf server); realtime 450 ms, "
                   "40 ms (MLPerf interactive). Means, not percentiles.")
@click.option("--ttft", type=click.FloatRange(min=0, min_open=True), help="Time-to-first-token target in ms (mean).")
@click.option("--tpot", type=click.FloatRange(min=0, min_open=True), help="Time-per-output-token target in ms (mean).")
@click.option("--rate", type=click.FloatRange(min=0, min_open=True),
              help="Requests per second to carry (open loop): the fewest GPUs that do [default: the most per GPU].")
@click.option("--concurrency", type=click.IntRange(min=1),
              help="Requests running at once (closed loop): the fewest GPUs that hold them (aggregated only).")
@click.option("--serving", type=click.Choice(["auto", "aggregated", "disaggregated"]), default="auto", show_default=True,
              help="Prefill and decode in one engine, on separate workers, or the better of both.")
@click.option("--prefix-hit-rate", type=click.FloatRange(0.0, 1.0, max_open=True), default=0.0, show_default=True,
              help="Share of each prompt found in the prefix cache (its prefill skipped).")
@click.option("--speculative-tokens", type=click.IntRange(1, 16),
              help="Speculative decoding: draft tokens proposed per step (the model's MTP module or an EAGLE head).")
@click.option("--accepted-tokens", type=click.FloatRange(min=0.0),
              help="With --speculative-tokens: draft tokens kept per step on average, as your engine measures it "
                   "(its mean acceptance length minus 1).")
@click.option("--fix", "fix", multiple=True, metavar="NAME=VALUE",
              help="Pin a worker field: tp, pp, ep, precision (bf16|fp8), kv_cache_dtype (auto|fp8); repeatable.")
@click.option("--pareto", is_flag=True, help="Also print the frontier of tokens/s per GPU against tokens/s per user.")
@click.option("--emit", "target", type=click.Choice(["vllm", "sglang"]), help="Write the best deployment's launch files.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), help="Folder for --emit's files.")
@with_options(MODEL_OPTIONS)
@click.option("--json", "as_json", is_flag=True, help="Print the ServingSolution as JSON.")
def serve_plan(model_ref: str, cluster_ref: str | None, nodes: int | None, gpus: int | None, isl: int | None,
               osl: int | None, lengths_text: str | None, mode: str,
               ttft: float | None, tpot: float | None, rate: float | None, concurrency: int | None, serving: str,
               prefix_hit_rate: float, speculative_tokens: int | None, accepted_tokens: float | None, fix: tuple[str, ...], pareto: bool, target: str | None, out_dir: Path | None,
               efficiency_file: Path | None, calibration_file: Path | None, allow_cross_domain: bool,
               memory_margin: float, as_json: bool) -> None:
    """Plan a serving deployment under latency targets.

    \b
    Examples:
      plan serve-plan -m qwen3-32b -c dgx-h100 --isl 4000 --osl 1000 --ttft 2000 --tpot 30
      plan serve-plan -m llama-3.1-8b --lengths 1000:200:0.7,8000:500:0.3 --rate 40
      plan serve-plan -m llama-3.1-70b -c dgx-h100 --mode realtime --rate 20 --emit vllm --out serve/
      plan serve-plan -m deepseek-v3 -c dgx-h200 --nodes 2 --serving disaggregated --pareto --json
      plan serve-plan -m deepseek-v3 -c dgx-h200 --nodes 2 --speculative-tokens 1 --accepted-tokens 0.8
    """
    from pydantic import ValidationError

    from parallelplan.cli.launch_cmd import show_files, write_files
    from parallelplan.cli.solve_cmd import parse_assignments, report_infeasible
    from parallelplan.common.validation import describe_validation_error
    from parallelplan.constraints import Traffic
    from parallelplan.constraints.serving import Speculation
    from parallelplan.emitters import emit_serving
    from parallelplan.models import load_model
    from parallelplan.solver import Infeasible, SolverInputError
    from parallelplan.solver.serving import serve_plan as search

    if rate is not None and concurrency is not None:
        raise SolverInputError("--rate and --concurrency both give the load: give one")
    if out_dir is not None and target is None:
        raise SolverInputError("--out writes --emit's files: give --emit vllm or --emit sglang")
    if allow_cross_domain:
        raise SolverInputError("--allow-cross-domain: serving workers keep tensor parallelism within the NVLink domain")
    model = load_model(model_ref)
    cluster = load_target_cluster(cluster_ref, nodes, gpus)
    if (speculative_tokens is None) != (accepted_tokens is None):
        raise SolverInputError("--speculative-tokens and --accepted-tokens go together: the draft length and the "
                               "mean tokens of it kept per step (your engine's acceptance length minus 1)")
    try:
        speculation = (Speculation(draft_tokens=speculative_tokens, accepted=accepted_tokens)
                       if speculative_tokens is not None else None)
        lengths = parse_lengths(lengths_text) if lengths_text else None
        if lengths and (isl is not None or osl is not None):
            raise SolverInputError("--lengths gives the distribution of --isl and --osl: give one or the other")
        sizes = {} if lengths else {"isl": isl or DEFAULT_ISL, "osl": osl or DEFAULT_OSL}
        traffic = Traffic(**sizes, lengths=lengths, request_rate=rate, concurrency=concurrency,
                          prefix_hit_rate=prefix_hit_rate, speculation=speculation)
    except ValidationError as err:
        raise SolverInputError(describe_validation_error(err, "traffic")) from None
    try:
        found = search(model, cluster, traffic, mode=mode, ttft_s=ttft / 1e3 if ttft else None,
                       tpot_s=tpot / 1e3 if tpot else None, serving=serving,
                       fixed=parse_assignments(fix, "--fix", ranged=False), pareto=pareto,
                       **cost_model(efficiency_file, calibration_file, memory_margin))
    except Infeasible as err:
        report_infeasible(err, as_json)
    files = emit_serving(found, target) if target else {}
    write_files(files, out_dir)
    if as_json:
        from parallelplan.cli.answers import ServingAnswer

        click.echo(ServingAnswer(solution=found, files=files).model_dump_json(indent=2))
        return
    click.echo(render(found))
    if files:
        click.echo("")
        show_files(files, out_dir)


def parse_lengths(text: str) -> tuple:
    """``ISL:OSL:SHARE,...`` as `Lengths` classes; a malformed class is named."""
    from parallelplan.constraints.serving import Lengths
    from parallelplan.solver import SolverInputError

    out = []
    for item in text.split(","):
        parts = item.strip().split(":")
        try:
            isl, osl, share = int(parts[0]), int(parts[1]), float(parts[2])
            if len(parts) != 3:
                raise ValueError
        except (ValueError, IndexError):
            raise SolverInputError(f"--lengths {item.strip()!r}: give each class as ISL:OSL:SHARE, e.g. 1000:200:0.7") from None
        out.append(Lengths(isl=isl, osl=osl, share=share))
    return tuple(out)


def render(found: ServingSolution) -> str:
    t, targets = found.traffic, found.targets
    bound = lambda s: f"{s * 1e3:g} ms" if s is not None else "none"  # noqa: E731
    load = (f"{t.request_rate:g} requests/s" if t.request_rate is not None else
            f"{t.concurrency} concurrent requests" if t.concurrency is not None else "the most each GPU serves")
    goal = "fewest GPUs" if found.objective == "gpus" else "most output tokens/s per GPU"
    sizes = f"{t.isl} + {t.osl} tokens per request" + (f" (means of {len(t.lengths)} classes)" if t.lengths else "")
    lines = [heading(f"{found.model.display_name or found.model.name} on {found.cluster.total_gpus} x "
                     f"{found.cluster.gpu.display_name}: {sizes}, {load}"),
             f"{targets.mode} targets: TTFT {bound(targets.ttft_s)}, TPOT {bound(targets.tpot_s)} (means); "
             f"objective: {goal}; {found.layouts} worker layouts searched in {found.solve_time_s:.2f} s", ""]
    rows = [("best" if p == found.best else "", *cells(p)) for p in (found.best_aggregated, found.best_disaggregated) if p]
    lines.append(table(HEADERS, rows, right=tuple(range(3, len(HEADERS)))))
    if found.frontier:
        lines += ["", "frontier (tokens/s per GPU against tokens/s per user; the TTFT target holds, TPOT is traded):",
                  table(HEADERS[1:], [cells(p) for p in found.frontier], right=tuple(range(2, len(HEADERS) - 1)))]
    if found.notes and not quiet():
        lines += [""] + [f"note: {n}" for n in found.notes]
    return "\n".join(lines)


HEADERS = ["", "serving", "workers", "GPUs", "req/replica", "TTFT ms", "TPOT ms", "tok/s/GPU", "tok/s/user", "req/s",
           "$/M tok"]


def cells(plan: ServingPlan) -> tuple:
    from parallelplan.solver.serving import describe_layout

    f = plan.figures
    split = plan.serving == "disaggregated"  # name each pool's role
    workers = "; ".join(f"{w.role + ' ' if split else ''}{w.count} x [{describe_layout(w.plan)}]" for w in plan.workers)
    per_replica = "/".join(str(w.concurrency) for w in plan.workers)
    return (plan.serving, workers, f.gpus, per_replica, f"{f.ttft_s * 1e3:,.0f}", f"{f.tpot_s * 1e3:.1f}",
            f"{f.output_tokens_per_s_per_gpu:,.0f}", f"{f.tokens_per_s_per_user:.1f}", f"{f.requests_per_s:.2f}",
            f"{plan.usd_per_million_tokens:.3f}")
