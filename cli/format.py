"""Number formatting and aligned tables for people. Units are stated in every header or value."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from parallelplan.constraints import Workload


def count(n: float) -> str:
    """A parameter count: 70553706496 → '70.55 B'."""
    for scale, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {suffix}"
    return f"{n:.0f}"


def gib(n_bytes: float) -> str:
    """Bytes as binary gigabytes: '131.41 GiB'."""
    return f"{n_bytes / 2**30:.2f} GiB"


def binary_size(n_bytes: int) -> str:
    """A power-of-two byte count in its largest whole unit: 8 B, 64 KiB, 2 MiB, 1 GiB."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n_bytes >= scale and n_bytes % scale == 0:
            return f"{n_bytes // scale} {unit}"
    return f"{n_bytes} B"


def flops(n: float) -> str:
    """FLOPs: 4.543e11 → '454.31 GFLOP'."""
    for scale, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {prefix}FLOP"
    return f"{n:.0f} FLOP"


def plural(n: int, noun: str, nouns: str | None = None) -> str:
    """A count with its noun in the right number: '1 sequence', '64 sequences', '2 micro-batches'
    (``nouns``: the plural where it is not ``noun`` + 's')."""
    return f"{n} {noun if n == 1 else nouns or noun + 's'}"


def table(headers: Sequence[str], rows: Sequence[Sequence[object]], right: Sequence[int] = ()) -> str:
    """Columns aligned to their widest cell (styled cells measured without their colour codes); columns
    listed in ``right`` are right-aligned."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(click.unstyle(r[i])) for r in cells) for i in range(len(headers))]

    def pad(cell: str, width: int, align_right: bool) -> str:
        fill = " " * (width - len(click.unstyle(cell)))
        return fill + cell if align_right else cell + fill

    def line(row: list[str]) -> str:
        return "  ".join(pad(c, w, i in right) for i, (c, w) in enumerate(zip(row, widths, strict=True))).rstrip()

    rule = "  ".join("-" * w for w in widths).rstrip()
    return "\n".join([line(cells[0]), rule] + [line(r) for r in cells[1:]])


def side_by_side(left: str, right: str, gap: int = 4) -> str:
    """Two blocks of lines next to each other (the memory and the time breakdown, say)."""
    a, b = left.splitlines(), right.splitlines()
    width = max((len(click.unstyle(line)) for line in a), default=0) + gap
    rows = []
    for i in range(max(len(a), len(b))):
        line = a[i] if i < len(a) else ""
        pad = " " * (width - len(click.unstyle(line)))
        rows.append((line + pad + (b[i] if i < len(b) else "")).rstrip())
    return "\n".join(rows)


# -- terminal behaviour ------------------------------------------------------------------------------------
# click.echo drops ANSI styles when the stream is not a terminal (and when `plan --no-color` or NO_COLOR
# is set: `cli.main` turns the context's colour off), so styled text is safe to pipe.

def heading(text: str) -> str:
    return click.style(text, bold=True)


def good(text: str) -> str:
    return click.style(text, fg="green")


def bad(text: str) -> str:
    return click.style(text, fg="red", bold=True)


def quiet() -> bool:
    """``--quiet``: only the result, no notes, explanations or progress."""
    ctx = click.get_current_context(silent=True)
    return bool(ctx and ctx.meta.get("plan.quiet"))


@contextmanager
def progress(label: str) -> Iterator[Callable[[str], None] | None]:
    """A status line on stderr that rewrites itself, for searches that can take over a second, erased at
    the end; None (no reporting) when stderr is not a terminal or under ``--quiet``."""
    if quiet() or not sys.stderr.isatty():
        yield None
        return

    def report(status: str) -> None:
        click.echo("\r\033[K" + (f"{label}: {status}" if status else ""), nl=False, err=True, color=True)  # a terminal

    try:
        yield report
    finally:
        report("")


def fit_text(memory) -> str:
    """Whether a plan fits, against its memory range (`MemoryBreakdown.verdict`): yes, AT RISK or NO, with
    the range when it matters."""
    if memory.verdict == "yes":
        return good("yes") + f" (at most {gib(memory.high)} of {gib(memory.usable)})"
    if memory.verdict == "no":
        return bad("NO") + f": at least {gib(memory.low)}, {gib(memory.usable)} usable"
    return bad("AT RISK") + (f": {gib(memory.low)} to {gib(memory.high)} may be measured, {gib(memory.usable)} usable "
                             "(the runtime allowance and the activations' deviation; `plan calibrate` with measured "
                             "peaks narrows it)")


def risk_mark(memory) -> str:
    """`` at risk`` after a memory figure whose range reaches past the GPU (`MemoryBreakdown.verdict`)."""
    return " at risk" if memory.verdict == "at risk" else ""


def step_range(interval: tuple[float, float]) -> str:
    """The 80% step-time interval: '1.10–1.45'."""
    return f"{interval[0]:.3f}–{interval[1]:.3f}"


def software(workload, model) -> str:
    """The stack a workload is priced on, with its MoE dispatcher, routing balance and token dropping when the
    model has experts."""
    if model.moe is None:
        return workload.stack
    balance = ("balanced routing" if workload.moe_imbalance == 1
               else f"busiest expert rank {workload.moe_imbalance:g}x the mean")
    if workload.moe_capacity_factor is not None:
        padded = ", padded to it" if workload.moe_pad_to_capacity else ""
        balance += f", tokens dropped above {workload.moe_capacity_factor:g}x each expert's share{padded}"
    return f"{workload.stack} ({'DeepEP' if workload.moe_dispatcher == 'deepep' else 'all-to-all'} dispatch, {balance})"


def workload_kind(workload: Workload) -> str:
    """The workload's kind for a heading, with its algorithm and PEFT method:
    "rlhf (DPO: chosen + rejected per example; QLoRA r=64 on all-linear)"."""
    parts = []
    if workload.algorithm == "dpo":
        parts.append("DPO: chosen + rejected per example")
    if workload.peft is not None:
        method = {"lora": "LoRA", "qlora": "QLoRA"}[workload.peft.method]
        parts.append(f"{method} r={workload.peft.rank} on {', '.join(workload.peft.target_modules)}")
    if workload.example_len is not None:
        parts.append(f"examples of {workload.example_len} tokens, {'packed' if workload.packing else 'padded'}")
    return f"{workload.kind} ({'; '.join(parts)})" if parts else workload.kind
