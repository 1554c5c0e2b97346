"""The solver's exception types: bad input to a search, and a search with no feasible plan."""

from __future__ import annotations

from typing import Any


class SolverInputError(ValueError):
    """A search request that cannot be run as given (an unknown variable, a value of the wrong type); the
    message names the field and the allowed values."""


class Infeasible(ValueError):
    """No plan satisfies every constraint. ``conflicts``: the smallest set of the request's constraints that
    cannot hold together, in words; ``suggestions``: changes that make the problem feasible, each checked."""

    def __init__(self, message: str, conflicts: list[str], suggestions: list[str], details: dict[str, Any] | None = None):
        super().__init__(message)
        self.conflicts = conflicts
        self.suggestions = suggestions
        self.details = details or {}
