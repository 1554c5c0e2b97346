"""Reading a user's JSON or YAML file of fields, and telling paths from names, for every layer."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml


def read_mapping(path: Path, error: type[ValueError], what: str) -> dict[str, Any]:
    """The mapping in ``path`` (YAML for .yaml/.yml, else JSON). Every failure — unreadable, not text,
    not parseable, not a mapping of ``what`` — raises ``error`` (the caller layer's exception type) with
    one line naming the file and, for syntax errors, the line."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise error(f"{path}: cannot read it ({err})") from None
    try:
        data = yaml.safe_load(text) if path.suffix in (".yaml", ".yml") else json.loads(text)
    except json.JSONDecodeError as err:
        raise error(f"{path}: not valid JSON (line {err.lineno}, column {err.colno}: {err.msg})") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = getattr(err, "problem", None) or " ".join(str(err).split())
        raise error(f"{path}: not valid YAML ({where}{problem})") from None
    if not isinstance(data, dict):
        raise error(f"{path}: expected a mapping of {what}, got {type(data).__name__}")
    return data


def looks_like_path(text: str) -> bool:
    """A reference that names a file rather than a preset (used to say "no such file" instead of
    "unknown preset" when it does not exist)."""
    return text.endswith((".json", ".yaml", ".yml")) or text.startswith((".", "/", "~"))


def existing_path(text: str, error: type[ValueError]) -> Path | None:
    """``text`` as a path when something exists there, else None; an unusable path (too long, a
    permission error) raises ``error``."""
    try:
        path = Path(text).expanduser()
    except RuntimeError:  # ~user of a user this machine does not know
        raise error(f"not a usable path: {text[:80]}{'...' if len(text) > 80 else ''} (no such user's home "
                    "directory)") from None
    try:
        return path if path.exists() else None
    except OSError as err:
        raise error(f"not a usable path: {text[:80]}{'...' if len(text) > 80 else ''} ({err.strerror})") from None


def alias_index(entries: dict[str, tuple[str, ...]], kind: str, error: type[ValueError]) -> dict[str, str]:
    """Lower-cased name or alias → canonical name; an alias claimed twice is a data error."""
    index: dict[str, str] = {}
    for name, aliases in entries.items():
        for key in (name, *aliases):
            if index.setdefault(key.lower(), name) != name:
                raise error(f"{kind} alias {key!r} is claimed by {index[key.lower()]} and {name}")
    return index
