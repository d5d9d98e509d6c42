"""Small named exceptions for user mistakes.

Every error a user can cause by a bad input derives from :class:`FiltagError`.
The CLI prints such an error as one line (``filtag-kg: error: ...``) and exits
with code 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class FiltagError(Exception):
    """Base class of all errors caused by user input (exit code 2 in the CLI)."""


class UnknownModelError(FiltagError):
    """A model spec names no torchvision model, factory or model file."""


class WeightsError(FiltagError):
    """Weights cannot be found, downloaded or loaded into the model."""


class UnknownLayerError(FiltagError):
    """A layer name or pattern matches no convolutional layer of the model."""


class DataError(FiltagError):
    """A dataset folder, file list or class list is missing, empty or malformed."""


class TaggingError(FiltagError):
    """A tagging parameter is invalid (k, percent) or does not fit a layer."""


class ProfileError(FiltagError):
    """A profile or checkpoint is missing, corrupt or does not match the run."""


class OutputError(FiltagError):
    """An output folder or file cannot be written."""


class UnknownSynsetError(FiltagError):
    """A wnid or synset name is malformed or not in the WordNet source in use."""


def check_whole(option: str, value: object, minimum: int) -> None:
    """Refuse ``value`` for the option named ``option`` (as on the command line, e.g.
    ``--batch-size``) unless it is ``None`` or a whole number >= ``minimum``.

    Raises:
        FiltagError: one line naming the option, the value and what it takes.
    """
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < minimum):
        raise FiltagError(f"invalid {option} {value!r}; use a whole number >= {minimum}")


def check_positive(option: str, value: float) -> None:
    """Refuse ``value`` for ``option`` unless it is a finite number > 0.

    Raises:
        FiltagError: one line naming the option, the value and what it takes.
    """
    if isinstance(value, bool) or not (isinstance(value, (int, float)) and 0 < value < float("inf")):
        raise FiltagError(f"invalid {option} {value!r}; use a number > 0")
