"""The charts `plan pareto --plot` and `plan estimate --plot` write (matplotlib, the ``plot`` extra; the page
draws the same two in its own script): a Pareto frontier over two of its objectives (a third as colour), and one plan's memory
per GPU and step time as stacked bars, each segment one term of `constraints.Estimate` — no number here
that the estimate does not hold."""

from __future__ import annotations

from pathlib import Path

AXES = {  # objective: (key of Solution.objective, axis label)
    "throughput": ("tokens_per_s", "tokens/s"),
    "cost": ("usd_per_million_tokens", "$ per million tokens"),
    "memory_headroom": ("memory_headroom_gib", "memory headroom per GPU, GiB"),
    "gpus": ("gpus", "GPUs"),
    "simplicity": ("simplicity", "simplicity (parallel dimensions used)"),
}
MEMORY_TERMS = ("weights", "gradients", "optimizer", "activations", "kv_cache", "overhead")
TIME_TERMS = ("compute", "tp_comm", "cp_comm", "ep_comm", "dp_comm", "pp_comm", "offload", "bubble", "optimizer", "decode")


def _pyplot():
    try:
        import matplotlib
    except ImportError as missing:
        raise ImportError(f"--plot needs matplotlib ({missing.name} is missing): pip install -e '.[plot]'") from None
    matplotlib.use("Agg")  # files only: no display
    import matplotlib.pyplot as plt

    return plt


def pareto_chart(front: list, objectives: list[str], title: str, path: Path) -> Path:
    """The frontier's plans over the first two objectives (the third, if any, as colour), numbered as the
    table numbers them."""
    plt = _pyplot()
    x_key, x_label = AXES[objectives[0]]
    y_key, y_label = AXES[objectives[1]]
    xs, ys = [s.objective[x_key] for s in front], [s.objective[y_key] for s in front]
    figure, axes = plt.subplots(figsize=(7, 4.5))
    if len(objectives) > 2:
        c_key, c_label = AXES[objectives[2]]
        points = axes.scatter(xs, ys, c=[s.objective[c_key] for s in front], cmap="viridis", zorder=3)
        figure.colorbar(points, ax=axes, label=c_label)
    else:
        axes.scatter(xs, ys, color="tab:blue", zorder=3)
    for i, (x, y) in enumerate(zip(xs, ys, strict=True)):
        axes.annotate(str(i + 1), (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    axes.set(xlabel=x_label, ylabel=y_label, title=title)
    axes.grid(alpha=0.3)
    return _save(figure, plt, path)


def estimate_chart(estimate, title: str, path: Path) -> Path:
    """Memory per GPU (GiB, against what the GPU can hold) and step time (s, exposed after overlap), each
    a stacked bar of its terms."""
    plt = _pyplot()
    figure, (memory, time) = plt.subplots(2, 1, figsize=(9, 4.5), constrained_layout=True)
    _stack(memory, {t: getattr(estimate.memory, t) / 2**30 for t in MEMORY_TERMS}, "memory per GPU, GiB")
    memory.axvline(estimate.memory.usable / 2**30, color="black", linestyle="--", label="usable")
    memory.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=7)
    _stack(time, {t: getattr(estimate.time, t) for t in TIME_TERMS}, "step time, s (exposed)")
    time.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=7)
    figure.suptitle(title)
    return _save(figure, plt, path)


def _stack(axes, terms: dict[str, float], label: str) -> None:
    left = 0.0
    for name, value in terms.items():
        if value > 0:
            axes.barh([0], [value], left=left, label=name.replace("_", " "))
            left += value
    axes.set(xlabel=label, yticks=[])


def _save(figure, plt, path: Path) -> Path:
    figure.savefig(path)  # the format from the extension (the CLI allows .svg, .png, .pdf)
    plt.close(figure)
    return path
