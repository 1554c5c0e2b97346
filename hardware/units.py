"""Quantities with units as people write them ("81559 MiB", "450 GB/s", "400 Gb/s", "989.4 TFLOPS"),
turned into the canonical units the code uses: bytes, bytes per second, FLOP per second.

SI prefixes are powers of 1000 (GB = 1e9 bytes), binary prefixes powers of 1024 (GiB = 2**30).
A lower-case ``b`` is a bit (network rates: 400 Gb/s = 50e9 bytes/s), an upper-case ``B`` a byte.
Plain numbers are taken as already canonical.
"""

from __future__ import annotations

import math
import re

_NUMBER = r"([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)"
_SI = {"": 1.0, "k": 1e3, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15}
_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}


class UnitError(ValueError):
    """A quantity string that does not parse; the message says which forms are accepted."""


def _parse(value: object, what: str, pattern: re.Pattern[str], examples: str, scale: dict[str, float]) -> float:
    """Number × the scale of its unit; a plain number (or numeric string) is already canonical."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise UnitError(f"expected {what} (e.g. {examples}), got {value!r}")
    if isinstance(value, str):
        match = pattern.match(value)
        if match is not None:
            number = float(match.group(1)) * scale[match.group(2)]
        else:
            try:
                number = float(value)
            except ValueError:
                raise UnitError(f"cannot read {value!r} as {what}; write it like {examples}") from None
    else:
        try:
            number = float(value)
        except OverflowError:
            raise UnitError(f"{what} {value!r} is out of range") from None
    if not math.isfinite(number) or number < 0:
        raise UnitError(f"{what} must be a finite number >= 0, got {value!r}")
    return number


_BYTE_SCALE = {**{p + "B": v for p, v in _SI.items()}, **{p + "B": v for p, v in _BINARY.items()}}
_RATE_SCALE = {
    **{p + "B/s": v for p, v in _SI.items()},
    **{p + "b/s": v / 8 for p, v in _SI.items()},
    **{p + "bps": v / 8 for p, v in _SI.items()},
}
_FLOPS_SCALE = {p + suffix: v for p, v in _SI.items() for suffix in ("FLOPS", "FLOPs", "FLOP/s")}

_BYTES = re.compile(rf"^\s*{_NUMBER}\s*((?:Ki|Mi|Gi|Ti|k|K|M|G|T|P)?B)\s*$")
_RATE = re.compile(rf"^\s*{_NUMBER}\s*((?:k|K|M|G|T|P)?(?:B/s|b/s|bps))\s*$")
_FLOPS = re.compile(rf"^\s*{_NUMBER}\s*((?:k|K|M|G|T|P)?FLOP(?:S|s|/s))\s*$")


def parse_bytes(value: object) -> int:
    """'81559 MiB' → 85520809984; '80 GB' → 80e9; plain numbers are bytes."""
    return int(round(_parse(value, "a size in bytes", _BYTES, "'80 GiB', '81559 MiB' or '141 GB'", _BYTE_SCALE)))


def parse_rate(value: object) -> float:
    """Bandwidth in bytes/s: '450 GB/s' → 4.5e11; '400 Gb/s' or '400 Gbps' → 5e10 (bits / 8)."""
    return _parse(value, "a bandwidth", _RATE, "'450 GB/s' (bytes) or '400 Gb/s' (bits)", _RATE_SCALE)


def parse_flops(value: object) -> float:
    """Throughput in FLOP/s: '989.4 TFLOPS' → 9.894e14."""
    return _parse(value, "a FLOP rate", _FLOPS, "'989.4 TFLOPS' or '2.25 PFLOPS'", _FLOPS_SCALE)
