"""The charts of `plan pareto --plot` and `plan estimate --plot` (dashboard/charts.py): every frontier plan
is a point, every non-zero term of the estimate a bar segment named in the legend, the usable memory a
line; a file of another kind is refused before the search."""

from __future__ import annotations

import re

from click.testing import CliRunner

from parallelplan import Plan, Workload, estimate, load_cluster, load_model, pareto
from parallelplan.cli.main import plan
from parallelplan.dashboard.charts import MEMORY_TERMS, TIME_TERMS, estimate_chart, pareto_chart

MODEL, CLUSTER = load_model("llama-3.1-8b"), load_cluster("dgx-h100", nodes=2)


def test_every_frontier_plan_is_a_point(tmp_path):
    names = ["throughput", "memory_headroom", "simplicity"]
    front = pareto(MODEL, CLUSTER, Workload(seq_len=4096, global_batch_size=256), objectives=names)
    svg = pareto_chart(front, names, "front", tmp_path / "front.svg").read_text()
    marker = re.search(r'<g id="PathCollection_1">\s*<defs>\s*<path id="([^"]+)"', svg).group(1)
    assert svg.count(f'xlink:href="#{marker}"') == len(front) >= 2  # one marker drawn per plan
    assert "tokens/s" in svg and "memory headroom per GPU, GiB" in svg and "simplicity" in svg


def test_each_term_of_the_estimate_is_a_segment(tmp_path):
    est = estimate(MODEL, CLUSTER, Plan(tp=8, dp=2), Workload(seq_len=4096, global_batch_size=64))
    svg = estimate_chart(est, "plan", tmp_path / "plan.svg").read_text()
    shown = {t for t in (*MEMORY_TERMS, *TIME_TERMS) if f"<!-- {t.replace('_', ' ')} -->" in svg}
    nonzero = {t for t in MEMORY_TERMS if getattr(est.memory, t) > 0} | {t for t in TIME_TERMS if getattr(est.time, t) > 0}
    assert shown == nonzero and "<!-- usable -->" in svg


def test_the_cli_draws_and_refuses_other_files(tmp_path):
    out = tmp_path / "front.png"
    done = CliRunner().invoke(plan, ["pareto", "-m", "llama-3.2-1b", "-c", "dgx-h100", "--plot", str(out), "-q"])
    assert done.exit_code == 0 and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    refused = CliRunner().invoke(plan, ["estimate", "-m", "llama-3.2-1b", "--tp", "8", "--plot", str(tmp_path / "x.txt")])
    assert refused.exit_code == 2 and "write .svg, .png or .pdf" in refused.output and not (tmp_path / "x.txt").exists()
