"""Number formatting and aligned tables for people. Units are stated in every header or value."""

from __future__ import annotations

from collections.abc import Sequence


def count(n: float) -> str:
    """A parameter count: 70553706496 → '70.55 B'."""
    for scale, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {suffix}"
    return f"{n:.0f}"


def gib(n_bytes: float) -> str:
    """Bytes as binary gigabytes: '131.41 GiB'."""
    return f"{n_bytes / 2**30:.2f} GiB"


def flops(n: float) -> str:
    """FLOPs: 4.543e11 → '454.31 GFLOP'."""
    for scale, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {prefix}FLOP"
    return f"{n:.0f} FLOP"


def table(headers: Sequence[str], rows: Sequence[Sequence[object]], right: Sequence[int] = ()) -> str:
    """Columns aligned to their widest cell; columns listed in ``right`` are right-aligned."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def line(row: list[str]) -> str:
        return "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(cells[0]), rule] + [line(r) for r in cells[1:]])
