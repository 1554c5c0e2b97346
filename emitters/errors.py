"""The emitters' error type."""

from __future__ import annotations


class EmitError(ValueError):
    """A plan the target framework cannot express, or an unknown target or option; the message names the
    framework, the dimension and what would work instead."""
