"""The one exception type of the `models` layer."""


class ModelError(ValueError):
    """Bad model input: the message names the field or reference, the value, and what would fix it."""
