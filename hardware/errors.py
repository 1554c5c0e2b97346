"""The one exception type of the `hardware` layer."""


class HardwareError(ValueError):
    """Bad hardware input: the message names the field or reference, the value, and what would fix it."""
