"""Limits on the work one edit may do, shared by the API, the CLI, the UI and ``bench run``.

Every limit is checked before any model call, and a request over one is refused with one line
that names the limit and how to raise it. The defaults never bite a paper-default edit at 2
megapixels on FLUX (28-50 steps, at most a few hundred model calls, a handful of rows a call).

=================  ==========  =========================================================
limit              default     what it bounds
=================  ==========  =========================================================
max_input_pixels   16777216    an image or mask file as read (4096 x 4096), checked from
                               its header before it is decoded (decompression bombs)
max_pixels         4194304     the size the model edits at (2048 x 2048), after rounding
                               to the model's pixel multiple
max_steps          1000        the schedule length (``steps``)
max_rows           64          batch rows in one model call (FlowEdit's ``2 n_avg``; CFG
                               families evaluate twice the rows)
max_nfe            2000        model calls in one edit (the method's NFE formula)
max_prompt_chars   10000       characters in one prompt
=================  ==========  =========================================================

Raising one on purpose: ``editflow edit ... --limit max_steps=5000`` (also ``bench run`` and
``ui``), ``editflow.edit(..., limits=editflow.Limits(max_steps=5000))``, or the environment
variable ``EDITFLOW_LIMIT_MAX_STEPS=5000`` (read by :meth:`Limits.from_env`, which every entry
point starts from).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Mapping

from .errors import LimitError, ParameterError

ENV_PREFIX = "EDITFLOW_LIMIT_"
SEED_MAX = 2**64 - 1  # torch.Generator.manual_seed takes seeds in [0, 2**64 - 1]


@dataclass(frozen=True)
class Limits:
    """The bounds on one edit (see the module docstring for each)."""

    max_input_pixels: int = 4096 * 4096
    max_pixels: int = 2048 * 2048
    max_steps: int = 1000
    max_rows: int = 64
    max_nfe: int = 2000
    max_prompt_chars: int = 10_000

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ParameterError(f"limit {f.name} must be a positive whole number, got {value!r}")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "Limits":
        """The defaults, with any ``EDITFLOW_LIMIT_<NAME>`` variable of ``environ`` applied."""
        environ = os.environ if environ is None else environ
        values = {}
        for f in dataclasses.fields(cls):
            var = ENV_PREFIX + f.name.upper()
            if var in environ:
                values[f.name] = _whole(environ[var], var)
        return cls(**values)

    def updated(self, pairs: list[str] | None) -> "Limits":
        """These limits with ``NAME=VALUE`` pairs applied (``--limit max_steps=5000``)."""
        values = {}
        names = [f.name for f in dataclasses.fields(self)]
        for pair in pairs or []:
            name, sep, text = pair.partition("=")
            name = name.strip()
            if not sep or name not in names:
                raise ParameterError(f"--limit expects NAME=VALUE with NAME one of {', '.join(names)}, got {pair!r}")
            values[name] = _whole(text, f"--limit {name}")
        return dataclasses.replace(self, **values)

    def refuse(self, name: str, what: str, needed: int, fix: str) -> LimitError:
        """The one-line refusal: what is over which limit, the fix, and how to raise the limit."""
        return LimitError(
            f"{what} is over the limit {name}={getattr(self, name)}: {fix}, or raise the limit on purpose "
            f"(--limit {name}={needed} for edit, bench run, ui and vital-layers; limits=editflow.Limits({name}={needed}) "
            f"in Python; {ENV_PREFIX}{name.upper()}={needed} for every command)"
        )

    def check_input(self, width: int, height: int, what: str) -> None:
        """An image or mask of ``width x height`` as read: not empty, not over ``max_input_pixels``."""
        if width < 1 or height < 1:
            raise LimitError(f"{what} is {width}x{height} pixels: it holds no pixel, pass a real image")
        if width * height > self.max_input_pixels:
            raise self.refuse("max_input_pixels", f"{what} ({width}x{height} = {width * height} pixels)",
                              width * height, "make it smaller")

    def check_working(self, width: int, height: int, model: str,
                      fix: str = "resize the image first (2 megapixels suit FLUX and SD3)") -> None:
        """The size the model works at (an edit's image after rounding, a generation's size)."""
        if width * height > self.max_pixels:
            raise self.refuse("max_pixels", f"working at {width}x{height} ({width * height} pixels) on {model}",
                              width * height, fix)

    def check_work(self, steps: int, calls: int, rows_per_call: int) -> None:
        """A method's schedule length, its model calls (its NFE formula) and the batch rows of
        its largest call (CFG included); see :func:`editflow.methods.base.check_work`."""
        if steps > self.max_steps:
            raise self.refuse("max_steps", f"steps={steps}", steps, "use fewer steps")
        if calls > self.max_nfe:
            raise self.refuse("max_nfe", f"an edit of {calls} model calls", calls, "use fewer steps")
        if rows_per_call > self.max_rows:
            raise self.refuse("max_rows", f"{rows_per_call} batch rows in one model call", rows_per_call,
                              "lower n_avg or the number of subjects (the rows evaluated together)")

    def check_prompt(self, text, what: str) -> str:
        """A prompt: a ``str`` that encodes as UTF-8 (no lone surrogates) within ``max_prompt_chars``."""
        if not isinstance(text, str):
            raise ParameterError(f"{what} must be a string, got {type(text).__name__}")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ParameterError(f"{what} is not valid text (character {exc.start} cannot be encoded as UTF-8; "
                                 "non-UTF-8 bytes on a command line arrive this way): retype it") from None
        if len(text) > self.max_prompt_chars:
            raise self.refuse("max_prompt_chars", f"{what} ({len(text)} characters)", len(text), "shorten it")
        return text


def check_seed(seed, what: str = "seed") -> int:
    """A seed as an ``int`` in ``[0, SEED_MAX]`` (numpy integers accepted), or a :class:`ParameterError`."""
    import numbers

    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise ParameterError(f"{what} must be a whole number in [0, 2**64 - 1], got {seed!r}")
    if not 0 <= int(seed) <= SEED_MAX:
        raise ParameterError(f"{what} must be in [0, 2**64 - 1] (torch's seed range), got {int(seed)}")
    return int(seed)


def _whole(text: str, where: str) -> int:
    try:
        return int(str(text).strip().replace("_", ""))
    except ValueError:
        raise ParameterError(f"{where} expects a whole number, got {text!r}") from None
