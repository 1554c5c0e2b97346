"""Architecture facts: `ModelSpec`, presets, HF ``config.json`` import, parameter and FLOP counts."""

from models.errors import ModelError
from models.flops import FlopsBreakdown, decode_flops_per_token
from models.loader import load_model
from models.params import ParamBreakdown
from models.presets import ModelPreset, get_preset, list_presets
from models.spec import MLASpec, ModelSpec, MoESpec

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
    "load_model",
]
