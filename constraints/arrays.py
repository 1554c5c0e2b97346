"""Plans as columns of numpy arrays, so that one cost model serves both a single plan (`estimate`) and
hundreds of thousands of them at once (the solver's tables, the exhaustive oracle).

Categorical fields are stored as integer codes: the index of the value in the tuples of
`constraints.plan` (e.g. recompute 0 none, 1 selective, 2 selective_mm, 3 full). Every cost function takes a `PlanArrays`
and returns arrays of shape (n,) (or (n, stages)); a scalar `estimate` is the same computation on n = 1.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

import numpy as np

from parallelplan.constraints.plan import (
    ATTENTION_KERNELS,
    CP_COMMS,
    FP8_RECIPES,
    FP32_STORAGE,
    KERNELS,
    KV_CACHE_DTYPES,
    OFFLOADS,
    OPTIMIZERS,
    PRECISIONS,
    RECOMPUTE_MODULES,
    RECOMPUTES,
    SCHEDULES,
    SHARDINGS,
    Plan,
)

_CATEGORICAL = {
    "sharding": SHARDINGS,
    "recompute": RECOMPUTES,
    "precision": PRECISIONS,
    "optimizer": OPTIMIZERS,
    "offload": OFFLOADS,
    "schedule": SCHEDULES,
    "kernels": KERNELS,
    "attention_kernel": ATTENTION_KERNELS,
    "kv_cache_dtype": KV_CACHE_DTYPES,
    "cp_comm": CP_COMMS,
}
_BOOLEAN = ("sequence_parallel", "master_weights", "persistent_grads", "tp_comm_overlap", "ep_comm_overlap",
            "grad_reduce_overlap", "param_gather_overlap", "offload_activations")
_INTEGER = ("tp", "pp", "dp", "cp", "ep", "etp", "vpp", "micro_batch_size", "shard_group", "fp8_bf16_layers")
ALL_LAYERS = 2**30
"""``recompute_layers`` of a plan that recomputes every layer (Plan.recompute_layers None)."""
STACK_RECIPE = -1
"""``fp8_recipe`` code of a plan that takes its stack's default recipe (Plan.fp8_recipe None), or has none."""


def fp32_storage(p: PlanArrays) -> np.ndarray:
    """Plans that keep fp32 weights and activations (`FP32_STORAGE`: fp32, and tf32, whose GEMMs only round
    their inputs in the tensor cores)."""
    return np.isin(p.precision, [code("precision", x) for x in FP32_STORAGE])


def recipe_code(recipe: str | None) -> int:
    """The ``fp8_recipe`` column's code: the index in `FP8_RECIPES`, `STACK_RECIPE` for None."""
    return STACK_RECIPE if recipe is None else FP8_RECIPES.index(recipe)


def module_mask(modules: Sequence[str] | None) -> int:
    """``recompute_modules`` as a bit mask: bit i set when `RECOMPUTE_MODULES`[i] is recomputed."""
    return sum(1 << RECOMPUTE_MODULES.index(m) for m in modules or ())


def code(field: str, value: str) -> int:
    """The integer code of a categorical value (e.g. code("recompute", "full") == 3)."""
    return _CATEGORICAL[field].index(value)


@dataclass
class PlanArrays:
    """n plans, one numpy array per field (see the module docstring). ``layers_per_stage`` is an (n, P)
    array of explicit stage sizes (0 beyond a plan's own stages; an all-zero row takes the default
    split), or None when no plan of the batch gives them."""

    tp: np.ndarray
    pp: np.ndarray
    dp: np.ndarray
    cp: np.ndarray
    ep: np.ndarray
    etp: np.ndarray
    vpp: np.ndarray
    micro_batch_size: np.ndarray
    shard_group: np.ndarray
    recompute_layers: np.ndarray
    recompute_modules: np.ndarray  # bit mask over RECOMPUTE_MODULES (0 unless recompute is selective)
    fp8_recipe: np.ndarray  # index in FP8_RECIPES, STACK_RECIPE for the stack's default
    fp8_bf16_layers: np.ndarray  # layers at each end kept in bf16 (0 unless precision is fp8)
    sequence_parallel: np.ndarray
    sharding: np.ndarray
    recompute: np.ndarray
    precision: np.ndarray
    master_weights: np.ndarray
    optimizer: np.ndarray
    offload: np.ndarray
    schedule: np.ndarray
    kernels: np.ndarray
    attention_kernel: np.ndarray
    kv_cache_dtype: np.ndarray
    cp_comm: np.ndarray
    persistent_grads: np.ndarray
    tp_comm_overlap: np.ndarray
    ep_comm_overlap: np.ndarray
    grad_reduce_overlap: np.ndarray
    param_gather_overlap: np.ndarray
    offload_activations: np.ndarray
    layers_per_stage: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.tp)

    @classmethod
    def from_plans(cls, plans: Sequence[Plan]) -> PlanArrays:
        columns: dict[str, np.ndarray] = {}
        for name in _INTEGER:
            columns[name] = np.array([getattr(p, name) for p in plans], dtype=np.int64)
        columns["recompute_layers"] = np.array(
            [ALL_LAYERS if p.recompute_layers is None else p.recompute_layers for p in plans], dtype=np.int64)
        columns["recompute_modules"] = np.array([module_mask(p.recompute_modules) for p in plans], dtype=np.int64)
        columns["fp8_recipe"] = np.array([recipe_code(p.fp8_recipe) for p in plans], dtype=np.int64)
        for name in _BOOLEAN:
            columns[name] = np.array([getattr(p, name) for p in plans], dtype=bool)
        for name, values in _CATEGORICAL.items():
            columns[name] = np.array([values.index(getattr(p, name)) for p in plans], dtype=np.int64)
        explicit = [p.layers_per_stage for p in plans]
        if any(e is not None for e in explicit):
            width = max(len(e) for e in explicit if e is not None)
            matrix = np.zeros((len(plans), width), dtype=np.int64)  # a zero row: the default split
            for i, e in enumerate(explicit):
                if e is not None:
                    matrix[i, : len(e)] = e
            columns["layers_per_stage"] = matrix
        return cls(**columns)

    @classmethod
    def product(cls, **choices: Sequence[Any]) -> PlanArrays:
        """Every combination of the given values of `Plan` fields (categorical ones as their names), the
        other fields at `Plan`'s defaults. As in `Plan`: etp follows tp and the schedule follows vpp unless
        given; ``hsdp_shard_size`` (used with sharding "hsdp") sets the shard group; ``recompute_modules``
        values are tuples of module names (empty: the default core_attn). No layers_per_stage."""
        allowed = (set(_INTEGER) - {"shard_group"}) | set(_BOOLEAN) | set(_CATEGORICAL) | {
            "recompute_layers", "recompute_modules", "hsdp_shard_size", "fp8_recipe"}
        unknown = sorted(set(choices) - allowed)
        if unknown:
            raise ValueError(f"cannot enumerate {', '.join(unknown)}; fields: {', '.join(sorted(allowed))}")
        sizes = [len(values) for values in choices.values()]
        if not all(sizes):
            raise ValueError("every field enumerated needs at least one value")
        positions = np.indices(sizes).reshape(len(sizes), -1) if sizes else np.zeros((0, 1), dtype=np.int64)
        n = positions.shape[1]
        columns: dict[str, np.ndarray] = {}
        for (name, values), index in zip(choices.items(), positions, strict=True):
            if name in _CATEGORICAL:
                table = np.array([_CATEGORICAL[name].index(v) for v in values], dtype=np.int64)
            elif name == "recompute_layers":
                table = np.array([ALL_LAYERS if v is None else v for v in values], dtype=np.int64)
            elif name == "recompute_modules":
                table = np.array([module_mask(v) for v in values], dtype=np.int64)
            elif name == "fp8_recipe":
                table = np.array([recipe_code(v) for v in values], dtype=np.int64)
            else:
                table = np.array(values, dtype=bool if name in _BOOLEAN else np.int64)
            columns[name] = table[index]
        default = Plan()
        for name in _INTEGER + _BOOLEAN:
            if name not in columns and name not in ("etp", "shard_group"):
                columns[name] = np.full(n, getattr(default, name), dtype=bool if name in _BOOLEAN else np.int64)
        for name, values in _CATEGORICAL.items():
            if name not in columns and name != "schedule":
                columns[name] = np.full(n, values.index(getattr(default, name)), dtype=np.int64)
        columns.setdefault("recompute_layers", np.full(n, ALL_LAYERS, dtype=np.int64))
        # as in Plan: only an fp8 plan has a recipe
        recipes = columns.get("fp8_recipe", np.full(n, STACK_RECIPE, dtype=np.int64))
        columns["fp8_recipe"] = np.where(columns["precision"] == code("precision", "fp8"), recipes, STACK_RECIPE)
        columns["fp8_bf16_layers"] = np.where(columns["precision"] == code("precision", "fp8"), columns["fp8_bf16_layers"], 0)
        # as in Plan: selective recompute means core_attn unless modules are given; other modes have none
        selective = columns["recompute"] == code("recompute", "selective")
        modules = columns.get("recompute_modules", np.full(n, module_mask(("core_attn",)), dtype=np.int64))
        columns["recompute_modules"] = np.where(selective, np.where(modules > 0, modules, module_mask(("core_attn",))), 0)
        columns.setdefault("etp", columns["tp"].copy())
        columns.setdefault("schedule", np.where(columns["vpp"] > 1, code("schedule", "interleaved"), code("schedule", "1f1b")))
        hsdp = columns.pop("hsdp_shard_size", np.ones(n, dtype=np.int64))
        sharding = columns["sharding"]
        columns["shard_group"] = np.select(
            [sharding == code("sharding", "none"), sharding == code("sharding", "hsdp")],
            [np.ones(n, dtype=np.int64), hsdp], default=columns["dp"] * columns["cp"])
        return cls(**columns)

    def plan(self, i: int) -> Plan:
        """The `Plan` in row ``i``."""
        values: dict[str, Any] = {name: int(getattr(self, name)[i]) for name in _INTEGER if name != "shard_group"}
        values |= {name: bool(getattr(self, name)[i]) for name in _BOOLEAN}
        values |= {name: table[int(getattr(self, name)[i])] for name, table in _CATEGORICAL.items()}
        layers = int(self.recompute_layers[i])
        values["recompute_layers"] = None if layers == ALL_LAYERS else layers
        mask = int(self.recompute_modules[i])
        values["recompute_modules"] = tuple(m for j, m in enumerate(RECOMPUTE_MODULES) if mask >> j & 1) or None
        recipe = int(self.fp8_recipe[i])
        values["fp8_recipe"] = None if recipe == STACK_RECIPE else FP8_RECIPES[recipe]
        if values["sharding"] == "hsdp":
            values["hsdp_shard_size"] = int(self.shard_group[i])
        if self.layers_per_stage is not None and self.layers_per_stage[i].any():
            values["layers_per_stage"] = tuple(int(v) for v in self.layers_per_stage[i, : values["pp"]])
        return Plan(**values)

    @classmethod
    def concat(cls, parts: Sequence[PlanArrays]) -> PlanArrays:
        """The plans of ``parts`` one after the other."""
        out: dict[str, np.ndarray | None] = {}
        for f in fields(cls):
            values = [getattr(part, f.name) for part in parts]
            if f.name != "layers_per_stage":
                out[f.name] = np.concatenate(values)
            elif all(v is None for v in values):
                out[f.name] = None
            else:
                width = max(v.shape[1] for v in values if v is not None)
                out[f.name] = np.concatenate([np.zeros((len(part), width), dtype=np.int64) if v is None
                                              else np.pad(v, ((0, 0), (0, width - v.shape[1])))
                                              for part, v in zip(parts, values, strict=True)])
        return cls(**out)

    def bf16_ends(self) -> PlanArrays | None:
        """The plans as the layers they keep in bf16 run (`Plan.fp8_bf16_layers`): the fp8 rows that keep
        some turned bf16; None where no row keeps any."""
        keeps = self.fp8_bf16_layers > 0
        if not keeps.any():
            return None
        return replace(self, precision=np.where(keeps, code("precision", "bf16"), self.precision),
                       fp8_recipe=np.where(keeps, STACK_RECIPE, self.fp8_recipe), fp8_bf16_layers=np.zeros_like(self.fp8_bf16_layers))

    def take(self, index: np.ndarray) -> PlanArrays:
        """The plans at ``index`` (a boolean mask or integer positions)."""
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            out[f.name] = None if value is None else value[index]
        return PlanArrays(**out)
