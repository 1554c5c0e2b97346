"""Names a package exports but imports only when first asked for (PEP 562 module ``__getattr__``), so
that importing the package — which every `plan` command does — costs nothing it does not use."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from importlib import import_module
from typing import Any


def lazy_exports(package: str, exports: Mapping[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The ``__getattr__`` and ``__dir__`` of ``package``: ``exports`` maps each exported name to the
    module that defines it, imported on first access."""

    def __getattr__(name: str) -> Any:
        if name in exports:
            return getattr(import_module(exports[name]), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted(set(import_module(package).__dict__) | set(exports))

    return __getattr__, __dir__
