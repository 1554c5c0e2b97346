"""CP-SAT over a table of candidate plans: one Boolean per row, exactly one chosen; criteria are integer
columns (fixed point, `solver.objectives`), so CP-SAT and the oracle decide on the same numbers.

`Selection` builds the model apart from solving it: `forbid` rows, bound a criterion (`at_most`), then
`minimize` one criterion at a time — a lexicographic search adds each optimum (relaxed by its tolerance)
as a bound before the next, and a final stage on a unique tie rank picks exactly one plan.
`frontier` runs ε-constraint sweeps for Pareto sets, each point a proved optimum of its slice. The
composed searches build their own models (`solver.cpsat`) and share `one_per_table` and `minimize_in_turn`.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from parallelplan.solver.cpsat import Model, Result, Terms, solve


@dataclass(frozen=True)
class Optimum:
    row: int
    value: int
    proved: bool


class Selection:
    def __init__(self, rows: int, *, time_limit_s: float = 30.0, workers: int = 2):
        self.model = Model()
        self.x = [self.model.bool_var() for _ in range(rows)]
        self.model.exactly_one(self.x)
        self.time_limit_s = time_limit_s
        self.workers = workers

    def expression(self, column: np.ndarray) -> Terms:
        return list(zip(self.x, column.tolist(), strict=True))

    def forbid(self, rows: Sequence[int] | np.ndarray) -> None:
        for row in rows:
            self.model.linear([(self.x[int(row)], 1)], 0, 0)

    def at_most(self, column: np.ndarray, bound: int) -> None:
        self.model.linear(self.expression(column), high=int(bound))

    def minimize(self, column: np.ndarray) -> Optimum | None:
        """The row minimising ``column`` under the constraints so far (None when none is left)."""
        terms = self.expression(column)
        self.model.minimize(terms)
        result = solve(self.model, time_limit_s=self.time_limit_s, workers=self.workers)
        if not result.feasible:
            return None
        row = next(i for i, var in enumerate(self.x) if result.solution[var])
        return Optimum(row=row, value=result.value(terms), proved=result.optimal)


def lexicographic(selection: Selection, stages: Sequence[tuple[np.ndarray, float]], tie_rank: np.ndarray) -> Optimum | None:
    """Minimise each (column, tolerance) in turn — keeping every earlier one within (1 + tolerance) of
    its optimum — then the tie rank. ``proved`` holds when every stage was proved optimal."""
    proved = True
    first: Optimum | None = None
    for column, tolerance in stages:
        best = selection.minimize(column)
        if best is None:
            return None
        first = first or best
        proved &= best.proved
        selection.at_most(column, int(np.floor(best.value * (1 + tolerance))) if best.value > 0 else best.value)
    pick = selection.minimize(tie_rank)
    if pick is None:
        return None
    return Optimum(row=pick.row, value=first.value if first else pick.value, proved=proved and pick.proved)


def frontier(rows: int, objectives: Sequence[np.ndarray], tie_rank: np.ndarray, allowed: np.ndarray,
             time_limit_s: float, progress: Callable[[str], None] | None = None) -> list[tuple[int, bool]]:
    """Pareto set over 2 or 3 integer columns by ε-constraint sweeps: with the last column bounded by each
    of its levels (3 objectives), repeatedly minimise the first, then the second with the first held,
    and bound the second below the point found. Returns (row, proved) per non-dominated point."""
    first, second = objectives[0], objectives[1]
    third = objectives[2] if len(objectives) == 3 else None
    levels = sorted(set(third[allowed].tolist())) if third is not None else [None]
    points: dict[int, bool] = {}
    for level in levels:
        bound_second: int | None = None
        while True:
            selection = Selection(rows, time_limit_s=time_limit_s)
            selection.forbid(np.flatnonzero(~allowed))
            if level is not None:
                selection.at_most(third, level)
            if bound_second is not None:
                selection.at_most(second, bound_second)
            stages = [(first, 0.0), (second, 0.0)] + ([(third, 0.0)] if third is not None else [])
            best = lexicographic(selection, stages, tie_rank)
            if best is None:
                break
            points[best.row] = points.get(best.row, True) and best.proved
            bound_second = int(second[best.row]) - 1
            if progress is not None:
                where = f", slice {levels.index(level) + 1} of {len(levels)}" if level is not None else ""
                progress(f"{len(points)} Pareto points{where}")
    chosen = np.array(sorted(points), dtype=np.int64)
    matrix = np.stack([c[chosen] for c in objectives], axis=1)
    keep = [i for i in range(len(chosen))
            if not any(np.all(matrix[j] <= matrix[i]) and np.any(matrix[j] < matrix[i]) for j in range(len(chosen)))]
    return [(int(chosen[i]), points[int(chosen[i])]) for i in keep]


def minimize_in_turn(model: Model, stages: Sequence[Terms], time_limit_s: float, workers: int = 2) -> tuple[Result, bool] | None:
    """Minimise each expression in turn, fixing each optimum before the next (a lexicographic objective
    over a model built by the caller, as the composed searches build theirs); the last solve's result and
    whether every stage was proved, or None when the model has no solution."""
    proved = True
    result = None
    for stage in stages:
        model.minimize(stage)
        result = solve(model, time_limit_s=time_limit_s, workers=workers)
        if not result.feasible:
            return None
        proved &= result.optimal
        value = result.value(stage)
        model.linear(stage, value, value)
    return result, proved


Choices = list[list[tuple[int, int, int]]]
"""Per table, its (key, value, Boolean variable) entries."""


def one_per_table(model: Model, tables: Sequence[Mapping[int, int | None]]) -> tuple[Choices, int] | None:
    """A Boolean per table entry with a value (None: not allowed), exactly one chosen per table, and the
    largest chosen value as a variable (what the composed searches minimise first); None when a table
    has no allowed entry."""
    choices = [[(key, value, model.bool_var()) for key, value in table.items() if value is not None] for table in tables]
    if any(not c for c in choices):
        return None
    for c in choices:
        model.exactly_one(x for _, _, x in c)
    largest = model.int_var(0, max(v for c in choices for _, v, _ in c))
    for c in choices:  # largest ≥ the table's chosen value
        model.linear([(largest, 1)] + [(x, -v) for _, v, x in c], low=0)
    return choices, largest


def best_combination(tables: Sequence[Mapping[int, int | None]], admissible: Callable[[list[int]], bool],
                     key: Callable[[list[int], list[int]], tuple]) -> tuple[int, ...] | None:
    """Brute force over one entry per table (the entries with a value): the admissible combination of
    keys with the least ``key(keys, values)``; None when none is admissible — the composed searches'
    reference for CP-SAT in the tests."""
    options = [[(k, v) for k, v in table.items() if v is not None] for table in tables]
    best = None
    for combo in itertools.product(*options):
        keys, values = [k for k, _ in combo], [v for _, v in combo]
        if admissible(keys):
            rank = key(keys, values)
            if best is None or rank < best[0]:
                best = (rank, tuple(keys))
    return None if best is None else best[1]
