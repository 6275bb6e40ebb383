"""What every editing method shares: the request it edits, its parameters, the registry.

A method is one params dataclass (the paper's defaults, per model family) and one function
``run(model, request, params, generator) -> latent tokens``. :func:`editflow.edit` does the rest
(image I/O, timing, NFE, memory), so method modules contain only their algorithm.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

import torch

from ..errors import ParameterError
from ..limits import Limits
from ..models.base import NFE, TokenGrid


@dataclass
class EditRequest:
    """One edit, already in latent space: clean source tokens ``x_src`` ``[1, N, C]`` on ``grid``.

    ``stats`` is filled by the method with what it measured besides the latents (e.g. the bytes
    its feature store held); :func:`editflow.edit` returns it as ``EditResult.stats``.
    """

    x_src: torch.Tensor
    grid: TokenGrid
    source_prompt: str
    target_prompt: str
    mask: torch.Tensor | None = None  # [1, N] token mask where a method takes one
    subjects: list["SubjectTokens"] = field(default_factory=list)  # extra references (multi-subject)
    stats: dict = field(default_factory=dict)
    cache: Any = None  # an editflow.methods.cache.InversionCache, for methods that can reuse an inversion


@dataclass
class SubjectTokens:
    """One more reference for methods that take several (Personalize Anything's multi-subject
    mode): clean tokens ``x`` ``[1, N, C]`` on the request's grid, its subject ``mask`` ``[1, N]``,
    the ``prompt`` that describes it, a ``shift`` ``(dx, dy)`` in tokens and its own ``tau``
    (``None``: the method's)."""

    x: torch.Tensor
    mask: torch.Tensor
    prompt: str = ""
    shift: tuple[int, int] = (0, 0)
    tau: float | None = None


def required_mask(req: EditRequest, method: str, what: str) -> torch.Tensor:
    """The request's token mask as bool ``[N]``, or a :class:`ParameterError` naming the fix when
    it is missing, of the wrong size or empty (for methods that need one)."""
    if req.mask is None:
        raise ParameterError(f"{method} needs a mask of {what}: pass mask=IMAGE (CLI: --mask PATH)")
    mask = req.mask.reshape(-1).bool()
    if mask.numel() != req.grid.num_tokens:
        raise ParameterError(f"mask has {mask.numel()} tokens but the image has {req.grid.num_tokens}")
    if not mask.any():
        raise ParameterError(f"the mask selects nothing: paint {what} white")
    return mask


@dataclass
class MethodParams:
    """Base of every method's params. Subclasses list per-family overrides in ``FAMILY_DEFAULTS``."""

    FAMILY_DEFAULTS: ClassVar[dict[str, dict[str, Any]]] = {}
    NEEDS_MASK: ClassVar[bool] = False  # the method edits only inside a mask the user gives
    TAKES_SUBJECTS: ClassVar[bool] = False  # the method takes extra reference subjects
    # Model families the method runs on: velocity-only methods run on all; methods that hook
    # attention need a transformer with hook points, some FLUX's own layer kinds.
    FAMILIES: ClassVar[tuple[str, ...]] = ("flux", "sd3", "unet")

    steps: int = 28

    @classmethod
    def for_family(cls, family: str, **overrides) -> "MethodParams":
        """The paper's defaults for ``family`` with ``overrides`` applied (unknown names fail,
        and so does a family the method does not run on, before any computation)."""
        check_family(cls, family)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise ParameterError(
                f"unknown parameter {unknown[0]!r} for {cls.__name__}: valid names are {', '.join(sorted(names))}"
            )
        values = dict(cls.FAMILY_DEFAULTS.get(family, {}))
        values.update(overrides)
        params = cls(**values)
        params.check_types()  # before resolve(), which computes with the values
        params.resolve(family)
        params.validate()
        return params

    def resolve(self, family: str) -> None:
        """Fill defaults that depend on the family or on other parameters (``None`` fields)."""

    def check_types(self) -> None:
        """Check every field against its annotation; numpy scalars become Python numbers, and
        floats must be finite (NaN and infinity are refused). Raises :class:`ParameterError`."""
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value = _plain(getattr(self, f.name))
            if not _matches(hints[f.name], value):
                raise ParameterError(f"parameter {f.name!r} must be {_type_name(hints[f.name])}, got {value!r}")
            if isinstance(value, float) and not math.isfinite(value):
                raise ParameterError(f"parameter {f.name!r} must be a finite number, got {value!r}")
            setattr(self, f.name, value)

    def validate(self) -> None:
        """Check ranges (:meth:`check_types` has run); raise :class:`ParameterError` naming the parameter."""
        if self.steps < 1:
            raise ParameterError(f"parameter 'steps' must be >= 1, got {self.steps}")

    def require_step_index(self, *names: str) -> None:
        """Each of ``names`` counts steps of the schedule from its noise end: ``0 <= value < steps``."""
        for name in names:
            value = getattr(self, name)
            if not 0 <= value < self.steps:
                raise ParameterError(f"parameter {name!r} must be in [0, steps), got {name}={value}, steps={self.steps}")

    def require_fraction(self, *names: str) -> None:
        """Each of ``names`` is a fraction: ``0 <= value <= 1``."""
        for name in names:
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ParameterError(f"parameter {name!r} must be in [0, 1], got {value}")

    def require_choice(self, name: str, choices: tuple[str, ...]) -> None:
        """``name`` is one of ``choices``."""
        value = getattr(self, name)
        if value not in choices:
            raise ParameterError(f"parameter {name!r} must be one of {', '.join(choices)}, got {value!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def check_family(params: type[MethodParams], family: str) -> None:
    """A :class:`ParameterError` naming what runs where, if ``params``' method does not run on ``family``."""
    if family in params.FAMILIES:
        return
    name = next((m.name for m in METHODS.values() if m.params is params), params.__name__)
    runs = sorted(m.name for m in METHODS.values() if family in m.params.FAMILIES)
    raise ParameterError(
        f"{name} does not run on {family} models (it supports {', '.join(params.FAMILIES)}); "
        f"methods for {family}: {', '.join(runs)}"
    )


def _plain(value):
    """numpy integers, floats and bools as Python's (``np.int64(2)`` is a fine ``steps``)."""
    if type(value).__module__ == "numpy" and getattr(value, "ndim", None) == 0:
        return value.item()
    return value


def _matches(kind, value) -> bool:
    args = typing.get_args(kind)
    if args:  # X | None
        return any(_matches(a, value) for a in args)
    if kind is type(None):
        return value is None
    if kind in (int, bool):
        return isinstance(value, kind) and (kind is bool or not isinstance(value, bool))
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, kind)


def _type_name(kind) -> str:
    args = [a for a in typing.get_args(kind) if a is not type(None)]
    base = args[0] if args else kind
    name = getattr(base, "__name__", str(base))
    return f"{name} or None" if args else name


def coerce_value(params_cls: type[MethodParams], name: str, text: str) -> Any:
    """Parse a command-line string into the type of ``params_cls.name`` (``--set name=value``)."""
    fields = {f.name: f for f in dataclasses.fields(params_cls)}
    if name not in fields:
        raise ParameterError(
            f"unknown parameter {name!r} for this method: valid names are {', '.join(sorted(fields))}"
        )
    kind = typing.get_type_hints(params_cls)[name]
    args = [a for a in typing.get_args(kind) if a is not type(None)]
    base = args[0] if args else kind
    if args and text.lower() in ("none", "null"):
        return None
    try:
        if base is bool:
            low = text.lower()
            if low not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(text)
            return low in ("true", "1", "yes")
        if base is int:
            return int(text)
        if base is float:
            return float(text)
        return base(text)
    except ValueError:
        raise ParameterError(f"parameter {name!r} expects {_type_name(kind)}, got {text!r}") from None


@dataclass(frozen=True)
class Method:
    """A registered method. ``peak_rows(params, n_subjects)``: the most batch rows one of its
    model calls evaluates (without CFG); ``None``: every call evaluates ``rows / calls`` of
    :attr:`expected_nfe` (rounded up). ``targets(model, req, target_prompts, params, generator)``:
    where the method can edit towards several target prompts in one pass, sharing the rows that do
    not depend on the target (latents ``[K, N, C]``), with ``target_rows(params, K)`` the most rows
    of one of its calls; ``None``: one edit per target."""

    name: str
    params: type[MethodParams]
    run: Callable[..., torch.Tensor]
    expected_nfe: Callable[[MethodParams], NFE]
    paper: str
    summary: str
    peak_rows: Callable[[MethodParams, int], int] | None = None
    targets: Callable[..., torch.Tensor] | None = None
    target_rows: Callable[[MethodParams, int], int] | None = None

    def rows_per_call(self, p: MethodParams, n_subjects: int = 0) -> int:
        if self.peak_rows is not None:
            return self.peak_rows(p, n_subjects)
        nfe = self.expected_nfe(p)
        return math.ceil(nfe.rows / max(nfe.calls, 1))


METHODS: dict[str, Method] = {}

CFG_FAMILIES = ("sd3", "unet")  # families whose calls evaluate each row twice (true classifier-free guidance)


def register(name: str, params: type[MethodParams], expected_nfe: Callable[[MethodParams], NFE], paper: str,
             peak_rows: Callable[[MethodParams, int], int] | None = None, targets: Callable[..., torch.Tensor] | None = None,
             target_rows: Callable[[MethodParams, int], int] | None = None):
    """Decorator: register ``run`` under ``name`` with its params class, NFE formula, citation and,
    where calls differ in size, its ``peak_rows``; where it edits several targets in one pass,
    ``targets`` and ``target_rows`` (see :class:`Method`)."""

    def wrap(run):
        summary = (run.__doc__ or "").strip().splitlines()[0] if run.__doc__ else ""
        METHODS[name] = Method(name, params, run, expected_nfe, paper, summary, peak_rows, targets, target_rows)
        return run

    return wrap


def check_work(m: Method, p: MethodParams, family: str, limits: Limits, extra_calls: int = 0,
               n_subjects: int = 0) -> None:
    """``limits`` on method ``m`` with params ``p`` on ``family``: its steps, its NFE formula plus
    ``extra_calls`` (e.g. the automatic mask's one call), and the rows of its largest call
    (doubled under CFG); raises :class:`~editflow.errors.LimitError`."""
    calls = m.expected_nfe(p).calls + extra_calls
    rows = m.rows_per_call(p, n_subjects) * (2 if family in CFG_FAMILIES else 1)
    limits.check_work(p.steps, calls, rows)


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise ParameterError(f"unknown method {name!r}: use one of {', '.join(sorted(METHODS))}")
    return METHODS[name]

