"""Architecture facts: `ModelSpec`, presets, HF ``config.json`` import, parameter and FLOP counts."""

from parallelplan.models.errors import ModelError
from parallelplan.models.flops import FlopsBreakdown, decode_flops_per_token
from parallelplan.models.loader import load_hf_config, load_model
from parallelplan.models.params import ParamBreakdown
from parallelplan.models.presets import ModelPreset, get_preset, list_presets
from parallelplan.models.spec import MLASpec, ModelSpec, MoESpec

__all__ = [
    "FlopsBreakdown",
    "MLASpec",
    "ModelError",
    "ModelPreset",
    "ModelSpec",
    "MoESpec",
    "ParamBreakdown",
    "decode_flops_per_token",
    "get_preset",
    "list_presets",
    "load_hf_config",
    "load_model",
]
