"""The cost model's one exception type."""


class PlanError(ValueError):
    """A plan the cost model cannot price (e.g. a precision the GPU lacks); the message names the rule,
    the value and the fix."""
