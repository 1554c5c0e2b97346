"""The reference side of the tests: HF `transformers` models built from a config dict, and what PyTorch
measures on them. Nothing here uses this project's formulas.

- Parameters: ``sum(p.numel())`` over the model built on the meta device (no memory is allocated).
- FLOPs: `torch.utils.flop_counter.FlopCounterMode` around one forward + backward of a causal-LM loss.
  FlopCounterMode has no formula for ``grouped_mm`` (transformers' default MoE path) nor for the CPU
  flash-SDPA kernel, so attention and experts run in their "eager" implementations. Dense models run on
  the meta device at their real widths; MoE routing is data-dependent, so MoE models run on real CPU
  tensors at reduced widths (the count is exact whatever the routing, since every token visits exactly
  top-k experts).
"""

from __future__ import annotations

import warnings
from typing import Any

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

warnings.filterwarnings("ignore", module="transformers")
transformers.logging.set_verbosity_error()


def build(config: dict[str, Any], device: str) -> Any:
    cfg = transformers.AutoConfig.for_model(**config)
    cfg._attn_implementation = "eager"
    cfg._experts_implementation = "eager"
    torch.manual_seed(0)
    with torch.device(device):
        return transformers.AutoModelForCausalLM.from_config(cfg)


def parameter_count(config: dict[str, Any]) -> int:
    model = build(config, "meta")
    return sum(p.numel() for p in model.parameters())


def training_flops(config: dict[str, Any], seq_len: int, *, device: str, batch: int = 1) -> int:
    """FLOPs FlopCounterMode counts for one forward + backward over ``batch`` sequences."""
    model = build(config, device)
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, config["vocab_size"], (batch, seq_len), generator=generator).to(device)
    with FlopCounterMode(display=False) as counter:
        model(input_ids=ids, labels=ids).loss.backward()
    return counter.get_total_flops()


def with_layers(config: dict[str, Any], layers: int, **overrides: Any) -> dict[str, Any]:
    """A copy of ``config`` with ``layers`` decoder layers (``layer_types`` cut to match) and overrides."""
    out = {**config, **overrides, "num_hidden_layers": layers}
    if "n_layer" in out:  # GPT-2 and legacy Falcon name the layer count n_layer
        out["n_layer"] = layers
    if isinstance(out.get("layer_types"), list):
        out["layer_types"] = out["layer_types"][:layers]
    return out
