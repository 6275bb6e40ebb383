"""User-facing errors.

Every problem a user can cause (bad file, unknown model, bad parameter) raises
:class:`EditflowError` with a one-line message that names the problem and the fix. The CLI
prints that line and exits non-zero; library users catch it like any exception.
"""


class EditflowError(Exception):
    """A problem with the user's input or environment, explained in one line."""


class ModelNotAvailableError(EditflowError):
    """A model id or path that cannot be loaded here."""


class ParameterError(EditflowError, ValueError):
    """An unknown parameter name or a value of the wrong type or range."""


class LimitError(ParameterError):
    """A request over one of :class:`editflow.limits.Limits` (too many pixels, steps, rows or calls)."""
