"""The JSON `plan <command> --json` prints where it is not one of the planner's own models as they stand,
as pydantic models: the serving search with its launch files, a detected node with its topology, and a
PPO / GRPO step without the parts too large to print. A command prints one of these (``model_dump_json``);
the HTTP API declares it as that command's answer (`dashboard.endpoints`)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from parallelplan.constraints import Estimate, TopologyReport
from parallelplan.hardware import Detection
from parallelplan.models import ModelSpec
from parallelplan.solver import RLRole, RLSolution
from parallelplan.solver.serving import ServingSolution


class RLRoleSummary(RLRole):
    """An `solver.RLRole` without the cost model's full estimates of its workloads."""

    estimates: dict[str, Estimate] = Field(default_factory=dict, exclude=True)


class RLSummary(RLSolution):
    """A `solver.RLSolution` without each role's full estimates and the models' specs (`solve_rl` in
    Python keeps both)."""

    models: dict[str, ModelSpec] = Field(default_factory=dict, exclude=True)
    roles: tuple[RLRoleSummary, ...]

    @classmethod
    def of(cls, found: RLSolution) -> RLSummary:
        return cls.model_validate(found, from_attributes=True)


class ServingAnswer(BaseModel):
    """`plan serve-plan`: the search's answer and the launch files of ``--emit`` (none without it)."""

    model_config = ConfigDict(frozen=True)

    solution: ServingSolution
    files: dict[str, str]


class NodeTopology(BaseModel):
    """`plan topology` on a detected node: what detection read, and the topology of the cluster it makes
    (None when the node cannot be modelled)."""

    model_config = ConfigDict(frozen=True)

    detection: Detection
    topology: TopologyReport | None
