"""One interface for live and recorded readings. A *source* is an object whose methods return plain
JSON values (numbers, strings, lists) or raise `Unsupported`; the live NVML, sysfs and command sources
implement it for real, `Replay` answers the same calls from a recorded snapshot, and `Recorder` wraps a
live source to keep every answer so that a machine's readings can be committed and replayed in tests.
"""

from __future__ import annotations

from typing import Any


class Unsupported(Exception):
    """The source cannot answer this call (NVML NOT_SUPPORTED, a missing sysfs file, not recorded)."""


def maybe(call: Any, *args: Any) -> Any:
    """``call(*args)``, or None when the source cannot answer it."""
    try:
        return call(*args)
    except Unsupported:
        return None


def call_key(method: str, args: tuple[Any, ...]) -> str:
    """The name a call is recorded under, e.g. ``nvlink(0, 3)`` or ``read('/proc/meminfo')``."""
    return f"{method}({', '.join(repr(a) for a in args)})"


class Recorder:
    """Forwards every call to ``inner`` and keeps its answer (or its `Unsupported`) in ``calls``."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.calls: dict[str, dict[str, Any]] = {}

    def __getattr__(self, method: str) -> Any:
        target = getattr(self._inner, method)

        def call(*args: Any) -> Any:
            key = call_key(method, args)
            try:
                value = target(*args)
            except Unsupported as err:
                self.calls[key] = {"unsupported": str(err)}
                raise
            self.calls[key] = {"value": value}
            return value

        return call


class Replay:
    """Answers calls from a recording (``{call_key: {"value": ...} | {"unsupported": reason}}``); a call
    that was never recorded is `Unsupported`, as it would be on a machine that could not answer it."""

    def __init__(self, calls: dict[str, dict[str, Any]]) -> None:
        self._calls = calls

    def __getattr__(self, method: str) -> Any:
        def call(*args: Any) -> Any:
            entry = self._calls.get(call_key(method, args))
            if entry is None:
                raise Unsupported(f"{call_key(method, args)} is not in the recording")
            if "unsupported" in entry:
                raise Unsupported(entry["unsupported"])
            return entry["value"]

        return call
