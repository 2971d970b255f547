"""The argument check the model builders share."""


def check_int(owner: str, name: str, value, minimum: int = 1, why: str = "") -> None:
    """`value` must be an int (not a bool) >= minimum:
    "<owner>: <name> must be an int >= <minimum><why>, got <value>"."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{owner}: {name} must be an int >= {minimum}{why}, got {value!r}")
