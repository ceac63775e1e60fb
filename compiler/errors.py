"""User-facing errors.

Every error a user can cause (a bad file, a bad recipe, a wrong input) is a ``SqueezerError`` whose
message is one line naming what is wrong and where. The CLI prints that line and exits non-zero;
the traceback is shown only with ``--debug``.
"""


class SqueezerError(Exception):
    """Base class of all errors caused by the user's input."""


class ModelLoadError(SqueezerError):
    """A model file is missing, truncated, or not a model."""


class UnsupportedOperatorError(SqueezerError):
    """The model holds operators squeezer cannot import; the message lists every one."""


class ArtifactError(SqueezerError):
    """A ``.sqz`` artifact is missing, tampered with, truncated or from an incompatible version."""


class InputError(SqueezerError):
    """Inputs given at run time do not match the model's signature."""


class VerificationError(SqueezerError):
    """The compiled module disagrees with the reference beyond tolerance."""


class RecipeError(SqueezerError):
    """A compression recipe is malformed: unknown method or field, wrong type."""


class TuningError(SqueezerError):
    """A tuning run cannot start or go on: bad budget, unreachable tracker, unusable records."""
