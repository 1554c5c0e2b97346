"""The objectives a search can optimise, as integer criteria (fixed point) that CP-SAT and the oracle
both decide on.

- ``throughput``: the step time (tokens per step are fixed by the workload), in nanoseconds.
- ``cost``: US dollars per step = step time × GPUs × price per GPU-hour / 3600, in nano-dollars; the price
  is the user's, else the median on-demand offer of the GPU (`hardware.prices`).
- ``memory_headroom``: the GPU's memory minus the plan's peak, maximised: the peak in bytes, minimised.
- ``gpus``: the GPU count (searched over cluster sizes): the fewest that fit, or that reach the
  throughput target when one is given.
- ``simplicity``: `simplicity_score`, minimised.
Ties on every objective asked for break deterministically by simplicity, then step time, then memory
(each unless asked for), then — inside a tolerance band — the banded objectives themselves, exactly (so a
plan slower and no smaller than another never wins a tie), then the plan's fields in the order of
`TIE_ORDER`, sequence parallelism and the stage sizes (smaller first).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from parallelplan.constraints import PlanArrays
from parallelplan.constraints.arrays import ALL_LAYERS, code, module_mask
from parallelplan.constraints.plan import V_SCHEDULES
from parallelplan.hardware import ClusterSpec, HardwareError, checked_price, default_price
from parallelplan.solver.errors import SolverInputError

if TYPE_CHECKING:
    from parallelplan.solver.candidates import Candidates

OBJECTIVES = ("throughput", "cost", "memory_headroom", "gpus", "simplicity")
WEIGHT_SCALE = 10**9
"""Fixed-point unit of a weighted score (1e-9 of one objective's optimum)."""
TIE_ORDER = ("tp", "pp", "cp", "cp_comm", "ep", "etp", "vpp", "micro_batch_size", "sharding", "recompute", "recompute_modules",
             "recompute_layers", "precision", "fp8_recipe", "optimizer", "offload", "offload_activations", "schedule", "dp")
SHARDING_COMPLEXITY = {"none": 0, "zero1": 1, "zero2": 2, "zero3": 2, "fsdp": 2, "hsdp": 3}


def simplicity_score(p: PlanArrays) -> np.ndarray:
    """How much a plan asks of its user, an integer (lower is simpler): one point per parallelism used
    besides data parallelism (tp, pp, cp, ep) and for interleaving or uneven stages; sharding none 0,
    zero1 1, zero2 / zero3 / fsdp 2, hsdp 3; recompute selective 1 (2 with modules beyond the attention
    core), full 2 (3 on some layers only), selective_mm 2; optimizer offload 2, parameter offload 3; fp8 1;
    an optimizer other than AdamW 1; the zero-bubble, DualPipeV and ZB-V schedules 1; Ulysses context parallelism (cp_comm a2a,
    not Megatron's default) 1, USP (a2a+p2p, two levels to set up) 2."""
    score = (p.tp > 1).astype(np.int64) + (p.pp > 1) + (p.cp > 1) + (p.ep > 1) + (p.vpp > 1)
    if p.layers_per_stage is not None:  # the search gives explicit stages only to uneven splits
        score = score + p.layers_per_stage.any(axis=1)
    for name, points in SHARDING_COMPLEXITY.items():
        score = score + points * (p.sharding == code("sharding", name))
    core = module_mask(("core_attn",))
    score = score + np.select(
        [p.recompute == code("recompute", "selective"), p.recompute == code("recompute", "full"),
         p.recompute == code("recompute", "selective_mm")],
        [1 + (p.recompute_modules != core), 2 + (p.recompute_layers != ALL_LAYERS), 2], default=0)
    score = score + 2 * (p.offload == code("offload", "optimizer")) + 3 * (p.offload == code("offload", "params"))
    score = score + (p.precision == code("precision", "fp8")) + (p.optimizer != code("optimizer", "adamw"))
    return (score + np.isin(p.schedule, [code("schedule", s) for s in ("zero_bubble", *V_SCHEDULES)])
            + (p.cp_comm == code("cp_comm", "a2a"))
            + 2 * (p.cp_comm == code("cp_comm", "a2a+p2p")))


@dataclass
class Criteria:
    """Per candidate: the integer criteria (minimised) and the readable values they come from."""

    step_ns: np.ndarray
    cost_nusd: np.ndarray
    memory_bytes: np.ndarray
    gpus: np.ndarray
    simplicity: np.ndarray
    tokens_per_s: np.ndarray
    usd_per_hour: np.ndarray
    plans: PlanArrays

    def tie_rank(self, rows: np.ndarray) -> np.ndarray:
        """The deterministic tie-break among ``rows`` (module docstring): each row's position, 0 first, in
        the order of the plan's fields (`TIE_ORDER`), sequence parallelism and stage sizes."""
        p = self.plans
        keys = [getattr(p, name)[rows] for name in TIE_ORDER] + [p.sequence_parallel[rows].astype(np.int64)]
        if p.layers_per_stage is not None:
            keys += list(p.layers_per_stage[rows].T)
        order = np.lexsort(keys[::-1])
        rank = np.empty(len(order), dtype=np.int64)
        rank[order] = np.arange(len(order))
        return rank

    def column(self, objective: str) -> np.ndarray:
        return {"throughput": self.step_ns, "cost": self.cost_nusd, "memory_headroom": self.memory_bytes,
                "gpus": self.gpus, "simplicity": self.simplicity}[objective]

    def values(self, row: int, usable: float) -> dict[str, float]:
        """The readable objective values of one candidate."""
        return {
            "tokens_per_s": float(self.tokens_per_s[row]),
            "step_time_s": float(self.step_ns[row]) / 1e9,
            "usd_per_hour": float(self.usd_per_hour[row]),
            "usd_per_million_tokens": float(self.usd_per_hour[row] / 3600 / self.tokens_per_s[row] * 1e6),
            "memory_headroom_gib": float((usable - self.memory_bytes[row]) / 2**30),
            "gpus": int(self.gpus[row]),
            "simplicity": int(self.simplicity[row]),
        }


UNPRICED = np.iinfo(np.int64).max // 4
"""The fixed-point value of a plan that cannot be priced (an infinite step) or whose value would not fit:
above every real value, and summable a few times without overflow."""


def fixed_point(values: np.ndarray, scale: float) -> np.ndarray:
    """``values`` × ``scale`` rounded to int64, `UNPRICED` where not finite or beyond it."""
    scaled = np.asarray(values, dtype=float) * scale
    usable = np.isfinite(scaled) & (scaled < UNPRICED)
    return np.where(usable, np.round(np.where(usable, scaled, 0)), UNPRICED).astype(np.int64)


def nanoseconds(seconds: float) -> int:
    """One step time in the fixed point every search decides on (`criteria`'s ``step_ns``)."""
    return int(fixed_point(np.array([seconds]), 1e9)[0])


def criteria(candidates: Candidates, price_per_gpu_hour: float | None) -> Criteria:
    e = candidates.evaluation
    step = e.time.step
    step_ns = fixed_point(step, 1e9)
    price = price_per_gpu_hour if price_per_gpu_hour is not None else 0.0
    usd_per_hour = candidates.gpus * price
    cost = fixed_point(step * usd_per_hour / 3600, 1e9)
    memory = np.ceil(e.memory.total).astype(np.int64)
    return Criteria(step_ns=step_ns, cost_nusd=cost, memory_bytes=memory, gpus=candidates.gpus.astype(np.int64),
                    simplicity=simplicity_score(candidates.plans).astype(np.int64), tokens_per_s=e.tokens_per_s,
                    usd_per_hour=usd_per_hour, plans=candidates.plans)


def weighted_score(crit: Criteria, weights: dict[str, float], rows: np.ndarray) -> np.ndarray:
    """Σ weight × objective / the objective's best over ``rows``, in `WEIGHT_SCALE` fixed point: each
    objective counts relative to its own optimum, so weights compare like with like."""
    score = np.zeros(len(rows))
    for name, weight in weights.items():
        column = crit.column(name)[rows]
        score += weight * column / max(int(column.min()), 1)
    return np.round(score * WEIGHT_SCALE).astype(np.int64)


def gpu_hour_price(cluster: ClusterSpec, given: float | None, *, required: bool) -> float | None:
    """The price per GPU-hour of the ``cost`` objective: the user's, else the median on-demand offer of the
    GPU (`hardware.default_price`); None when the GPU has no offer and ``required`` is False."""
    if given is not None:
        return checked_price(given, SolverInputError)
    try:
        return default_price(cluster.gpu)
    except HardwareError as err:
        if required:
            raise SolverInputError(str(err)) from None
        return None
