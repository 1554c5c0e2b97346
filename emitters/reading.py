"""What a framework's own configuration says about a plan: the result every reader returns
(`emitters.deepspeed.read_config`, `emitters.megatron_reader.read_arguments`,
`emitters.torchtitan_reader.read_config`, `emitters.accelerate_reader.read_config`), each the inverse of its
target's emitter, for `plan validate` to check what users actually run."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from parallelplan.constraints import Violation


@dataclass(frozen=True)
class ReadConfig:
    """What a configuration says about a plan.

    ``plan_fields``: the `constraints.Plan` fields the configuration determines (a field it leaves open is
    absent); ``global_batch_size``: sequences per optimizer step, None when the configuration does not fix
    it; ``findings``: `constraints.Violation` for what the framework itself rejects or what makes the plan
    inconsistent; ``notes``: what the reader assumed or left out ("auto" values, keys it does not model);
    ``seq_len``: tokens per sequence where the configuration sets them."""

    plan_fields: dict[str, Any]
    global_batch_size: int | None
    findings: tuple[Violation, ...]
    notes: tuple[str, ...]
    seq_len: int | None = field(default=None)
