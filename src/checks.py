"""Checks of the values that callers pass in, shared by the library's modules.

A bad value raises a ValueError naming the argument (`length must be ...`); the error carries
the argument's name in `.argument`, and those of the others its text names in `.mentions`, so
that the scripts can say `--length` instead.
"""

MAX_SEED = 2 ** 63 - 1  # seeds are int64


def is_number(value):
    """An int or float, not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_integer(value):
    """An int, not a bool."""
    return isinstance(value, int) and not isinstance(value, bool)


def bad_argument(name, requirement, value, mentions=()):
    """ValueError('NAME REQUIREMENT. Received: VALUE'), with .argument = NAME and .mentions =
    the names of the other arguments that REQUIREMENT names."""
    error = ValueError(f"{name} {requirement}. Received: {value!r}")
    error.argument, error.mentions = name, tuple(mentions)
    return error
