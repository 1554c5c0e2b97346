"""`analyze_model`: everything `plan analyze` shows about a model, as one serialisable value.

Weight bytes per element: fp32 4, bf16/fp16 2, fp8 1 (per-tensor scales are negligible), fp4 as MXFP4
= 4.25 bits (4-bit E2M1 elements plus one 8-bit E8M0 scale per block of 32; OCP Microscaling Formats
specification v1.0, §5). KV cache per token in bf16 (2 bytes per element).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from parallelplan.models.flops import FlopsBreakdown, decode_flops_per_token
from parallelplan.models.params import ParamBreakdown
from parallelplan.models.spec import ModelSpec

WEIGHT_BYTES_PER_PARAM: dict[str, float] = {"fp32": 4.0, "bf16": 2.0, "fp16": 2.0, "fp8": 1.0, "fp4": 4.25 / 8}
KV_CACHE_BYTES_PER_ELEMENT = 2


class FlopsReport(BaseModel):
    model_config = ConfigDict(frozen=True)

    seq_len: int
    training_per_token: float
    training_per_token_causal: float
    prefill_per_token: float
    decode_per_token: float
    breakdown: FlopsBreakdown


class ModelReport(BaseModel):
    model_config = ConfigDict(frozen=True)

    model: ModelSpec
    attention_kind: str
    num_moe_layers: int
    total_params: int
    active_params: int
    total_params_with_mtp: int
    params: ParamBreakdown
    flops: FlopsReport
    weight_bytes: dict[str, int]
    kv_cache_bytes_per_token: int


def analyze_model(spec: ModelSpec, seq_len: int) -> ModelReport:
    """Parameters, FLOPs at ``seq_len`` (training with full and with causal-halved attention; inference
    prefill, causal; decoding one token against a ``seq_len`` context) and weight memory per precision."""
    full = spec.flops(seq_len)
    causal = spec.flops(seq_len, causal=True)
    return ModelReport(
        model=spec,
        attention_kind=spec.attention_kind,
        num_moe_layers=spec.num_moe_layers,
        total_params=spec.total_params,
        active_params=spec.active_params,
        total_params_with_mtp=spec.params.total_with_mtp,
        params=spec.params,
        flops=FlopsReport(
            seq_len=seq_len,
            training_per_token=full.training_per_token,
            training_per_token_causal=causal.training_per_token,
            prefill_per_token=causal.forward_per_token,
            decode_per_token=decode_flops_per_token(spec, seq_len),
            breakdown=full,
        ),
        weight_bytes={p: int(round(spec.total_params * b)) for p, b in WEIGHT_BYTES_PER_PARAM.items()},
        kv_cache_bytes_per_token=spec.kv_cache_elements_per_token * KV_CACHE_BYTES_PER_ELEMENT,
    )
