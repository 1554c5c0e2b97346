"""The two files every benchmark leaves in benchmarks/results/: its record as JSON and its table as Markdown
(printed too)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"


def write_results(name: str, record: Any, lines: list[str]) -> None:
    """``results/<name>.json`` (the record) and ``results/<name>.md`` (the lines), the lines printed."""
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(record, indent=2) + "\n")
    text = "\n".join(lines)
    (RESULTS / f"{name}.md").write_text(text + "\n")
    print(text)
