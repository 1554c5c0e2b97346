"""Workload profiles (``data/profiles.json``): a named workload with its search settings and objective, each
default with why — `list_profiles()`, `load_profile(name)`, and `profile(name, model, cluster)`, which
runs the solver on it (`solve`; `solve_rl` for ``ppo`` and ``grpo``; `cheapest` for ``cost``) so that its
plan is proved optimal like any other. A caller's overrides (workload fields, pins) replace the profile's defaults.
"""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from parallelplan.constraints import Workload
from parallelplan.hardware import ClusterSpec
from parallelplan.models import ModelSpec
from parallelplan.solver.errors import SolverInputError


class Profile(BaseModel):
    """One profile: what it is for, its workload fields, pins, objective, the inputs it needs and why each
    default is what it is."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    summary: str
    workload: dict[str, Any]
    fixed: dict[str, Any] = {}
    objective: str
    needs: list[str] = []
    requires_moe: bool = False
    why: dict[str, str]

    def build_workload(self, overrides: dict[str, Any] | None = None) -> Workload:
        """The profile's workload with ``overrides`` on top; the global batch, when neither gives it, is
        4M tokens' worth (`cli.options.DEFAULT_BATCH_TOKENS`' rule, Llama 3's initial batch)."""
        fields = {**self.workload, **(overrides or {})}
        seq_len = fields.get("seq_len")
        if isinstance(seq_len, int) and seq_len > 0:
            fields.setdefault("global_batch_size", max(2**22 // seq_len, 1))
        try:
            return Workload(**fields)
        except ValidationError as err:
            first = err.errors(include_url=False)[0]
            where = ".".join(str(part) for part in first["loc"]) or "workload"
            raise SolverInputError(f"profile {self.name}: {where}: {first['msg']}") from None


@lru_cache(maxsize=1)
def _profiles() -> dict[str, Profile]:
    data = json.loads(resources.files("parallelplan.solver").joinpath("data", "profiles.json").read_text())
    return {name: Profile(name=name, **entry) for name, entry in data["profiles"].items()}


def list_profiles() -> list[Profile]:
    return list(_profiles().values())


def load_profile(name: str) -> Profile:
    profiles = _profiles()
    if name not in profiles:
        raise SolverInputError(f"unknown workload profile {name!r}; use one of {', '.join(profiles)}")
    return profiles[name]


def profile(name: str, model: ModelSpec, cluster: ClusterSpec | None = None, *,
            workload: dict[str, Any] | None = None, fixed: dict[str, Any] | None = None,
            tokens: float | None = None, deadline_hours: float | None = None, **options: Any):
    """Solve profile ``name`` for ``model``: a `Solution` on ``cluster``, or for ``cost`` a
    `solver.cheapest_cluster.Cheapest` over the priced presets (``tokens`` and ``deadline_hours`` needed; ``options``
    are `cheapest`'s), for ``ppo`` and ``grpo`` an `RLSolution` (``options`` `solve_rl`'s). ``workload`` and
    ``fixed`` override the profile's fields and pins; ``options`` go to `solve` otherwise."""
    from parallelplan.solver.cheapest_cluster import cheapest
    from parallelplan.solver.search import solve

    chosen = load_profile(name)
    if chosen.requires_moe and not model.is_moe:
        raise SolverInputError(f"profile {name} plans mixture-of-experts models; {model.name} is dense: use pretrain")
    work = chosen.build_workload(workload)
    pins = {**chosen.fixed, **(fixed or {})}
    if chosen.name == "cost":
        missing = [need for need, value in (("tokens", tokens), ("deadline_hours", deadline_hours)) if value is None]
        if missing:
            raise SolverInputError(f"profile cost needs {' and '.join(missing)}: how many tokens, by when?")
        if pins:
            raise SolverInputError("profile cost searches clusters with the default plan space: it takes no pins")
        return cheapest(model, work, tokens=tokens, deadline_hours=deadline_hours, **options)
    if cluster is None:
        raise SolverInputError(f"profile {name} plans on a cluster: give one")
    if work.rollout is not None:  # PPO / GRPO: several roles, each in its own space
        from parallelplan.solver.rl import solve_rl

        extra = [k for k, v in options.items() if k not in _RL_OPTIONS and v]
        if pins or extra:
            raise SolverInputError(f"profile {name} places several roles, each in its own search space: it takes no "
                                   f"{'pins' if pins else ', '.join(extra)}")
        return solve_rl(model, cluster, work, **{k: v for k, v in options.items() if k in _RL_OPTIONS})
    return solve(model, cluster, work, objective=chosen.objective, fixed=pins, **options)


_RL_OPTIONS = ("efficiency", "runtime", "time_limit_s", "critic", "reward", "placement", "nodes")
"""The keyword arguments of `profile` that `solve_rl` takes (the others are `solve`'s search options)."""
