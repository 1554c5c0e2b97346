"""The dry-run's error type."""

from __future__ import annotations


class DryRunError(ValueError):
    """A dry-run that cannot start: torch or transformers missing, a model without a `transformers` class,
    a plan dimension the dry-run does not build yet, or a run over its time limit. The message names the
    field or the fix."""
