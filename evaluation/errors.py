"""The error raised for bad evaluation input."""


class EvaluationError(ValueError):
    """Bad input to an evaluation: a missing or malformed file, key, sample or argument, named in the message."""
