"""One readable sentence from a pydantic ValidationError, naming every offending field and value.

Each layer wraps it in its own exception type (`models.ModelError`, `hardware.HardwareError`, ...), so a
user sees e.g. ``model dict: field 'hidden_size' = -1: Input should be greater than 0`` instead of a
traceback.
"""

from __future__ import annotations

from pydantic import ValidationError


def describe_validation_error(err: ValidationError, what: str) -> str:
    parts = []
    for item in err.errors(include_url=False):
        loc = ".".join(str(part) for part in item["loc"])
        msg = item["msg"].removeprefix("Value error, ")
        if item["type"] == "missing":
            parts.append(f"field '{loc}' is missing")
        elif item["type"] == "extra_forbidden":
            parts.append(f"field '{loc}' is not a known field")
        elif loc and not isinstance(item.get("input"), dict):
            parts.append(f"field '{loc}' = {item.get('input')!r}: {msg}")
        else:
            parts.append(f"field '{loc}': {msg}" if loc else msg)
    return f"{what}: " + "; ".join(parts)
