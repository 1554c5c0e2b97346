"""CP-SAT through its model proto: the few pieces the searches use — Boolean and bounded integer variables,
linear constraints, exactly-one, clauses and implications, assumptions, a linear objective — written into
OR-Tools' `CpModelProto` (the documented cp_model.proto) and solved by OR-Tools' `SolveWrapper`.

`ortools.sat.python.cp_model` builds the same proto behind an operator-overloading API, but imports pandas
on the way (for its pandas-series helpers), about 0.3 s of every `plan` command's cold start on a 2-core
machine (`benchmarks/cli_latency.py`, issue 16); `cp_model_helper`, the C++ binding both sit on, does not.

A linear expression here is a sequence of (variable, coefficient) pairs; a literal is a variable index, or
``~index`` (−index − 1, the proto's negation) for its negation.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ortools.sat.python import cp_model_helper as _cp

Terms = Sequence[tuple[int, int]]
"""A linear expression: (variable index, integer coefficient) pairs."""
INT_MAX = 2**62
"""A bound beyond every quantity the searches build (the proto's domains are int64)."""


class Model:
    """A CP-SAT model under construction (variables are indices into the proto's variables)."""

    def __init__(self) -> None:
        self.proto = _cp.CpModelProto()

    def int_var(self, low: int, high: int) -> int:
        variable = self.proto.variables.add()
        variable.domain.extend([int(low), int(high)])
        return len(self.proto.variables) - 1

    def bool_var(self) -> int:
        return self.int_var(0, 1)

    def linear(self, terms: Terms, low: int = -INT_MAX, high: int = INT_MAX) -> None:
        """low ≤ Σ coefficient · variable ≤ high."""
        constraint = self.proto.constraints.add().linear
        constraint.vars.extend([v for v, _ in terms])
        constraint.coeffs.extend([int(c) for _, c in terms])
        constraint.domain.extend([int(low), int(high)])

    def exactly_one(self, literals: Iterable[int]) -> None:
        self.proto.constraints.add().exactly_one.literals.extend(list(literals))

    def clause(self, literals: Iterable[int]) -> None:
        """At least one of ``literals`` holds (none given: the model is infeasible)."""
        self.proto.constraints.add().bool_or.literals.extend(list(literals))

    def implies(self, literal: int, consequence: int) -> None:
        """``literal`` ⇒ ``consequence``."""
        constraint = self.proto.constraints.add()
        constraint.enforcement_literal.append(literal)
        constraint.bool_and.literals.append(consequence)

    def assume(self, literals: Iterable[int]) -> None:
        """Replace the assumptions (literals taken as true, whose infeasible subsets `Result.core` reports)."""
        self.proto.assumptions.clear()
        self.proto.assumptions.extend(list(literals))

    def minimize(self, terms: Terms) -> None:
        objective = self.proto.objective
        objective.vars.clear()
        objective.coeffs.clear()
        objective.vars.extend([v for v, _ in terms])
        objective.coeffs.extend([int(c) for _, c in terms])


@dataclass(frozen=True)
class Result:
    """A solve's outcome: ``solution`` (a value per variable) when ``feasible``; ``optimal`` when proved;
    ``core``: assumption literals sufficient for infeasibility."""

    feasible: bool
    optimal: bool
    infeasible: bool
    solution: tuple[int, ...]
    core: tuple[int, ...]

    def value(self, terms: Terms) -> int:
        return sum(c * self.solution[v] for v, c in terms)


def solve(model: Model, *, time_limit_s: float | None = None, workers: int = 1) -> Result:
    parameters = _cp.SatParameters()
    parameters.num_workers = workers
    if time_limit_s is not None:
        parameters.max_time_in_seconds = time_limit_s
    wrapper = _cp.SolveWrapper()
    wrapper.set_parameters(parameters)
    response = wrapper.solve(model.proto)
    status = response.status
    feasible = status in (_cp.CpSolverStatus.OPTIMAL, _cp.CpSolverStatus.FEASIBLE)
    return Result(feasible=feasible, optimal=status == _cp.CpSolverStatus.OPTIMAL,
                  infeasible=status == _cp.CpSolverStatus.INFEASIBLE,
                  solution=tuple(response.solution) if feasible else (),
                  core=tuple(response.sufficient_assumptions_for_infeasibility))
