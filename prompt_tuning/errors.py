"""Expected failures: bad configuration, files or data.  The CLIs print these as one line and exit non-zero.

Anything else (a bug) keeps its traceback.  `UserError` subclasses ValueError so code that caught the
ValueErrors these used to be keeps working.
"""
import numpy as np


class UserError(ValueError):
    """A mistake in what the user gave (config, files, data), with a message that names the culprit."""


class NonFiniteError(UserError):
    """Training produced a non-finite loss or gradient, or saw token ids outside the model's vocabulary."""


class ResumeMismatchError(UserError):
    """MODEL_DIR holds a run whose identity differs from this configuration's."""


def check_finite(value, what: str):
    """`value` (a host array) unchanged, or UserError naming `what` when it holds NaN or inf."""
    array = np.asarray(value)
    if np.issubdtype(array.dtype, np.floating) and not np.all(np.isfinite(array)):
        bad = int(array.size - np.isfinite(array).sum())
        raise UserError(f"{what} holds {bad} non-finite value(s) (NaN or inf) of {array.size}")
    return value


def one_line(exc: BaseException) -> str:
    """The first line of an exception's message, whitespace-collapsed (orbax/TensorStore messages are long)."""
    text = str(exc).strip().split("\n")[0] or type(exc).__name__
    return " ".join(text.split())
