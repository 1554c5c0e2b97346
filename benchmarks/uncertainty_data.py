"""The one writer of constraints/data/uncertainty.json: each benchmark that measures residuals
(`published_runs`, `memory_reference`, with ``--update-intervals``) rewrites its own section, dated."""

from __future__ import annotations

import json
import time
from pathlib import Path

PATH = Path(__file__).parents[1] / "constraints" / "data" / "uncertainty.json"


def write_section(section: str, command: str, what: str, key: str, rows: list[dict]) -> None:
    data = json.loads(PATH.read_text())
    data[section] = {"source": f"{command} ({time.strftime('%Y-%m-%d')}): {what}", key: rows}
    PATH.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n")
