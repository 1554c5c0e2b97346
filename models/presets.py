"""Model presets: data files under ``models/presets/``, one per model, each with its sources.

A preset file holds the model's architecture either as a HuggingFace ``config.json`` dict (``hf_config``,
parsed by `models.hf_config` exactly as a user's file would be) or, for models with no HF form (GPT-3,
Qwen 1, the GPT-4 estimate), as `ModelSpec` fields (``spec``); plus the official parameter counts as the
vendor stated them, for the tests and for display.
"""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources
from typing import Any

from pydantic import BaseModel, ConfigDict, model_validator

from parallelplan.common.files import alias_index
from parallelplan.models.errors import ModelError
from parallelplan.models.hf_config import spec_fields_from_hf
from parallelplan.models.spec import ModelSpec


class OfficialCounts(BaseModel):
    """Parameter counts as the vendor states them.

    ``total_unit`` / ``active_unit``: the value of the last digit as stated ("70B" → 1e9, "6.7B" → 1e8),
    so a reader knows how precise the figure is. ``checkpoint_total_params``: the element count of the
    released weights (e.g. HF safetensors metadata), with ``checkpoint_extra_elements`` stored there that
    are not parameters of the model (rotary buffers, a duplicated tied head) and the reason.
    ``active_excludes_input_embedding`` / ``total_excludes_embedding``: the vendor's figure leaves out
    the embedding (a convention some vendors use; the preset's notes give the arithmetic).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    stated: str
    total_params: int
    total_unit: float
    active_params: int | None = None
    active_unit: float | None = None
    active_excludes_input_embedding: bool = False
    total_excludes_embedding: bool = False
    checkpoint_total_params: int | None = None
    checkpoint_extra_elements: int = 0
    checkpoint_extra_reason: str | None = None
    checkpoint_source: str | None = None


class ModelPreset(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    display_name: str
    aliases: tuple[str, ...] = ()
    verification: str
    unverified_fields: tuple[str, ...] = ()
    source: tuple[str, ...]
    notes: tuple[str, ...] = ()
    official: OfficialCounts | None = None
    hf_config: dict[str, Any] | None = None
    spec: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _one_architecture(self) -> ModelPreset:
        if (self.hf_config is None) == (self.spec is None):
            raise ValueError(f"preset {self.name}: give exactly one of hf_config or spec")
        return self

    def to_spec(self) -> ModelSpec:
        from parallelplan.models.loader import build_spec

        meta = {"display_name": self.display_name, "source": self.source, "notes": self.notes}
        if self.hf_config is not None:
            fields = spec_fields_from_hf(self.hf_config, name=self.name)
        else:
            fields = {"name": self.name, **self.spec}
        fields.update(meta)
        return build_spec(fields, what=f"preset {self.name}")


@lru_cache(maxsize=1)
def _all_presets() -> dict[str, ModelPreset]:
    presets = {}
    for entry in sorted(resources.files("parallelplan.models").joinpath("presets").iterdir(), key=lambda p: p.name):
        if entry.name.endswith(".json"):
            preset = ModelPreset.model_validate(json.loads(entry.read_text()))
            presets[preset.name] = preset
    return presets


@lru_cache(maxsize=1)
def _index() -> dict[str, str]:
    """Lower-cased preset name or alias → preset name."""
    return alias_index({p.name: p.aliases for p in _all_presets().values()}, "preset", ModelError)


def list_presets() -> list[str]:
    """Names of the built-in model presets, sorted."""
    return sorted(_all_presets())


def get_preset(name: str) -> ModelPreset | None:
    """The preset called ``name`` or one of its aliases (case-insensitive), or None."""
    if not isinstance(name, str):
        raise ModelError(f"a preset name must be a string, got {name!r}")
    key = _index().get(name.strip().lower())
    return None if key is None else _all_presets()[key]


def preset_names_and_aliases() -> dict[str, str]:
    """Lower-cased name or alias → preset name (for "did you mean" suggestions)."""
    return dict(_index())
