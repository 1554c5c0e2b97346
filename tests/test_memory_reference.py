"""Peak training memory predicted by the cost model (`constraints.evaluate`) against what PyTorch measures.

Method (the reference is `tests.reference.training_step_peak`): a `transformers` model built from the real
config of a published model, cut to a few layers at its real widths, trains two steps under PyTorch's
`MemTracker` inside `FakeTensorMode` on the CPU (nothing is allocated, so real widths are free); the peak
snapshot of the second step (weights + gradients + optimizer states + activations + temporaries) is the
measurement. The plan models that exact recipe: one process (no parallelism), ``kernels="unfused"``
(HF's eager modules, SDPA or eager attention, transformers' default ``grouped_mm`` experts), no master
weights (``from_config(dtype=...)`` trains in the parameter dtype: AdamW keeps 2 states and SGD one momentum
buffer in that dtype), and gradients freed by ``zero_grad()`` (``persistent_grads=False``). The CUDA/NCCL
runtime allowance is not part of the measurement and not compared.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from reference import training_step_peak, with_layers

from parallelplan.constraints import Plan, Workload, evaluate
from parallelplan.constraints.uncertainty import activation_deviation
from parallelplan.hardware import load_cluster
from parallelplan.models import load_model

FIXTURES = Path(__file__).parent / "fixtures" / "hf_configs"
TOLERANCE = 0.05
"""The issue asks for 10%; the model is measured within 0.1% on dense and 3.3% on MoE here, so 5% keeps
head-room for PyTorch's allocator details while catching any real regression."""

CLUSTER = load_cluster("dgx-h100", nodes=1)
MOE_FAMILIES = ("qwen3_moe", "mixtral")


def hf_config(family: str) -> dict:
    return json.loads((FIXTURES / family / "config.json").read_text())


def predicted_peak(config: dict, seq_len: int, *, batch: int = 1, dtype: str = "bfloat16", optimizer: str = "adamw",
                   checkpointing: bool = False, attention: str = "sdpa") -> tuple[int, object]:
    plan = Plan(
        dp=CLUSTER.total_gpus, micro_batch_size=batch, kernels="unfused",
        attention_kernel="eager" if attention == "eager" else "flash",
        precision="fp32" if dtype == "float32" else "bf16", master_weights=False, optimizer=optimizer,
        persistent_grads=False, recompute="full" if checkpointing else "none",
    )
    workload = Workload(kind="pretrain", seq_len=seq_len, global_batch_size=batch * CLUSTER.total_gpus)
    arrays = evaluate(load_model(config), CLUSTER, workload, [plan]).memory  # no ranges: they are made from this
    memory = SimpleNamespace(**{part: int(getattr(arrays, part)[0]) for part in ("weights", "gradients", "optimizer", "activations")})
    return memory.weights + memory.gradients + memory.optimizer + memory.activations, memory


# (fixture, layers, sequence length, options): Llama-3.1-8B (GQA 32/8, SwiGLU, vocab 128256),
# Qwen3-30B-A3B (128 experts, top-8, QK-norm) and Mixtral-8x7B (8 experts, top-2), at their real widths.
CASES = [
    ("llama", 4, 1024, dict()),                                       # peak in the optimizer step
    ("llama", 4, 4096, dict(batch=2)),                                # peak at the loss (logits)
    ("llama", 4, 1024, dict(batch=8)),
    ("llama", 4, 4096, dict(batch=2, checkpointing=True)),
    ("llama", 4, 4096, dict(batch=4, dtype="float32")),
    ("llama", 4, 4096, dict(batch=2, optimizer="sgd")),
    ("llama", 4, 2048, dict(batch=2, attention="eager")),             # s² score matrices kept
    ("llama", 4, 2048, dict(batch=4, dtype="float32", optimizer="sgd", checkpointing=True)),
    ("qwen3_moe", 4, 4096, dict(batch=2)),
    ("qwen3_moe", 8, 4096, dict(batch=2)),
    ("qwen3_moe", 4, 4096, dict(batch=2, checkpointing=True)),
    ("qwen3_moe", 4, 2048, dict(batch=2, optimizer="sgd")),
    ("mixtral", 2, 2048, dict(batch=2, optimizer="sgd")),             # peak inside an MoE layer's backward
]


def measure(family: str, layers: int, seq_len: int, options: dict) -> tuple[dict, int, object]:
    """(MemTracker's peak by category, the predicted tensor bytes, the predicted breakdown) of one case."""
    config = with_layers(hf_config(family), layers)
    measured = training_step_peak(config, seq_len, **options)
    predicted, memory = predicted_peak(config, seq_len, **options)
    return measured, predicted, memory


def deviations(measured: dict, predicted: int) -> tuple[float, float | None]:
    """predicted / measured − 1 of a case's peak tensors, and (predicted − measured) over the measured
    activations and temporaries — the deviation as a share of the part that is not exact (weights,
    gradients and states are); None for a peak that holds none (`benchmarks.memory_reference`)."""
    peak = sum(measured[kind] for kind in ("PARAM", "GRAD", "OPT", "ACT", "TEMP"))
    transient = measured["ACT"] + measured["TEMP"]
    return predicted / peak - 1, (predicted - peak) / transient if transient else None


@pytest.mark.slow
@pytest.mark.parametrize("family,layers,seq_len,options", CASES,
                         ids=[f"{c[0]}-L{c[1]}-s{c[2]}-" + "-".join(f"{k}={v}" for k, v in c[3].items()) for c in CASES])
def test_peak_training_memory_matches_memtracker(family, layers, seq_len, options):
    measured, predicted, memory = measure(family, layers, seq_len, options)
    measured_peak = sum(measured[kind] for kind in ("PARAM", "GRAD", "OPT", "ACT", "TEMP"))
    error, of_activations = deviations(measured, predicted)
    # every estimate's memory range is as wide as the class's recorded deviations (constraints/data/uncertainty.json)
    smallest, largest = activation_deviation(moe=family in MOE_FAMILIES)
    of_activations = 0.0 if of_activations is None else of_activations
    assert smallest - 0.002 <= of_activations <= largest + 0.002, (
        f"{100 * of_activations:+.2f}% of the activations is outside the recorded [{100 * smallest:+.2f}%, "
        f"{100 * largest:+.2f}%]: rerun python -m benchmarks.memory_reference --update-intervals")
    assert abs(error) <= TOLERANCE, (
        f"predicted {predicted / 2**20:.0f} MiB vs measured {measured_peak / 2**20:.0f} MiB ({100 * error:+.1f}%); "
        f"measured {', '.join(f'{k} {v / 2**20:.0f}' for k, v in measured.items() if v)} MiB; predicted weights "
        f"{memory.weights / 2**20:.0f}, gradients {memory.gradients / 2**20:.0f}, optimizer {memory.optimizer / 2**20:.0f}, "
        f"activations {memory.activations / 2**20:.0f} MiB"
    )
    # the parameters themselves are exact, whatever the phase of the peak
    assert memory.weights == measured["PARAM"]


@pytest.mark.slow
def test_activation_terms_scale_like_the_measurement():
    """The per-layer activation term alone: adding layers adds what MemTracker measures per layer."""
    base, more = (with_layers(hf_config("qwen3_moe"), n) for n in (4, 8))
    measured = [training_step_peak(c, 4096, batch=2)["ACT"] for c in (base, more)]
    predicted = [predicted_peak(c, 4096, batch=2)[1].activations for c in (base, more)]
    per_layer_measured = (measured[1] - measured[0]) / 4
    per_layer_predicted = (predicted[1] - predicted[0]) / 4
    assert per_layer_predicted == pytest.approx(per_layer_measured, rel=0.01)
