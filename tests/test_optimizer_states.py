"""Optimizer-state bytes per parameter (`constraints.states.bytes_per_param`) against the state tensors the
real optimizers allocate: torch's AdamW, SGD with momentum and Adafactor, bitsandbytes' Lion and 8-bit
AdamW (which run on the CPU) and CAME from its authors' package (``came_pytorch``), each stepped once over a `transformers` Llama built from the fixture config at
reduced widths, its fp32 parameters the plan's (fp32: no master copy, states in fp32)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from parallelplan.constraints import Plan
from parallelplan.constraints.arrays import PlanArrays
from parallelplan.constraints.states import bytes_per_param
from parallelplan.constraints.structure import model_facts
from parallelplan.models import load_model

CONFIG = {**json.loads((Path(__file__).parent / "fixtures" / "hf_configs" / "llama" / "config.json").read_text()),
          "hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 2, "num_attention_heads": 4,
          "num_key_value_heads": 2, "head_dim": 64, "vocab_size": 1000, "bos_token_id": 0, "eos_token_id": 1}


def _optimizer(name: str, params: list):
    import torch

    if name == "came":
        return pytest.importorskip("came_pytorch").CAME(params, lr=2e-4)
    if name in ("lion", "adamw8bit"):
        bnb = pytest.importorskip("bitsandbytes")
        return bnb.optim.Lion(params) if name == "lion" else bnb.optim.AdamW8bit(params)
    return {"adamw": lambda: torch.optim.AdamW(params), "sgd": lambda: torch.optim.SGD(params, lr=0.1, momentum=0.9),
            "adafactor": lambda: torch.optim.Adafactor(params)}[name]()


# measured / formula − 1 allowed: 8-bit AdamW also keeps two 256-entry fp32 quantisation maps per tensor and
# 32-bit states for tensors under its min_8bit_size (4096 values: the norms), +1.2% on this small model
# and nothing at scale; the others are exact
@pytest.mark.slow
@pytest.mark.parametrize("name,tolerance", [("adamw", 1e-9), ("sgd", 1e-9), ("lion", 1e-9), ("adafactor", 1e-3),
                                            ("came", 1e-3), ("adamw8bit", 0.015)])
def test_state_bytes_per_parameter_are_the_optimizers_own(name, tolerance):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(transformers.AutoConfig.for_model(**CONFIG), dtype=torch.float32)
    params = list(model.parameters())
    for p in params:
        p.grad = torch.randn_like(p)
    optimizer = _optimizer(name, params)
    optimizer.step()
    state_bytes = sum(v.numel() * v.element_size() for state in optimizer.state.values() for v in state.values()
                      if torch.is_tensor(v) and v.dim() > 0)  # the step counters are scalars
    measured = state_bytes / sum(p.numel() for p in params)
    spec = load_model(CONFIG)
    assert spec.total_params == sum(p.numel() for p in params)
    per = bytes_per_param(PlanArrays.from_plans([Plan(precision="fp32", optimizer=name)]), model_facts(spec).factored_states)
    assert per.master[0] == 0
    assert measured / per.optimizer[0] - 1 == pytest.approx(0, abs=tolerance), f"{name}: {measured} vs {per.optimizer[0]}"
