"""Reading a user's JSON or YAML file of fields, with errors that say where the file is broken."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml


def read_mapping(path: Path, error: type[ValueError], what: str) -> dict[str, Any]:
    """The mapping in ``path`` (YAML for .yaml/.yml, else JSON); ``error`` (the caller layer's exception
    type) names the file and the line when it does not parse or is not a mapping of ``what``."""
    text = path.read_text()
    try:
        data = yaml.safe_load(text) if path.suffix in (".yaml", ".yml") else json.loads(text)
    except json.JSONDecodeError as err:
        raise error(f"{path}: not valid JSON (line {err.lineno}, column {err.colno}: {err.msg})") from None
    except yaml.YAMLError as err:
        raise error(f"{path}: not valid YAML ({err})") from None
    if not isinstance(data, dict):
        raise error(f"{path}: expected a JSON object of {what}, got {type(data).__name__}")
    return data
