"""What the UI needs that is not Gradio: one control per method parameter, mask and upload checks."""

from __future__ import annotations

import dataclasses
import functools
import re
import typing
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from ..errors import EditflowError
from ..images import open_checked, to_rgb
from ..limits import Limits
from ..methods.base import METHODS, MethodParams, coerce_value

MAX_UPLOAD_MB = 50  # Gradio refuses larger uploads outright
NOT_AN_IMAGE = "the upload is not an image: use a PNG, JPEG or WebP file"
NO_IMAGE = "upload an image first (PNG, JPEG or WebP; other files are not taken), or press 'shapes example'"
NATIVE_SIDE = {"shapes": 64, "flux": 1024, "sd3": 1024, "unet": 512}  # the UI's working size by model/family


def working_size(width: int, height: int, side: int) -> tuple[int, int]:
    """``(width, height)`` scaled down so the longer side is at most ``side`` (never up)."""
    scale = min(1.0, side / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


@dataclass(frozen=True)
class Control:
    """One parameter of a method: ``kind`` is "int", "float", "bool" or "text" (strings and
    optional values, typed as text and parsed like ``--set``)."""

    name: str
    kind: str
    default: Any
    help: str


def field_help(params: type[MethodParams]) -> dict[str, str]:
    """One-line help per field from the params docstring's ``name: text.`` (also ``a / b: text.``
    and ``a, b: text.``)."""
    names = {f.name for f in dataclasses.fields(params)}
    out: dict[str, str] = {}
    head = r"\w+(?:(?: /|,) \w+)*"
    for cls in params.__mro__:  # a subclass without its own docstring gets dataclass's signature text
        doc = cls.__dict__.get("__doc__") or ""
        if doc.startswith(cls.__name__ + "("):
            continue
        for match in re.finditer(rf"({head}): (.+?)(?= {head}: |$)", " ".join(doc.split())):
            for name in re.split(r" / |, ", match.group(1)):
                if name in names:
                    out.setdefault(name, match.group(2).strip())
    return out


@functools.lru_cache(maxsize=None)
def controls(method: str, family: str) -> tuple[Control, ...]:
    """The controls of ``method`` with its defaults for ``family`` (the paper's); built once."""
    params = METHODS[method].params
    params.for_family(family)  # the method runs on this family
    # the family's values before resolve(): a derived default (None) stays empty, with its help
    defaults = {f.name: f.default for f in dataclasses.fields(params)} | params.FAMILY_DEFAULTS.get(family, {})
    hints = typing.get_type_hints(params)
    helps = field_help(params)
    out = []
    for f in dataclasses.fields(params):
        kind = hints[f.name]
        optional = type(None) in typing.get_args(kind)
        value = defaults[f.name]
        name = "text" if optional or kind is str else {int: "int", float: "float", bool: "bool"}.get(kind, "text")
        out.append(Control(f.name, name, "" if value is None and name == "text" else value, helps.get(f.name, "")))
    return tuple(out)


def overrides(method: str, family: str, values: list[Any]) -> dict[str, Any]:
    """Parameter overrides from the controls' values (in :func:`controls` order): the ones that
    differ from the defaults, parsed and checked like ``--set`` (bad values raise a
    :class:`~editflow.errors.ParameterError` naming the parameter)."""
    params = METHODS[method].params
    out = {}
    for c, value in zip(controls(method, family), values):
        if value is None or (isinstance(value, str) and not value.strip()):
            continue
        if c.kind == "int" and isinstance(value, float) and value.is_integer():
            value = int(value)  # number boxes hand over floats
        text = str(value).strip() if c.kind != "bool" else str(bool(value))
        parsed = coerce_value(params, c.name, text)
        if parsed != c.default:
            out[c.name] = parsed
    params.for_family(family, **out)  # every value checked before the edit
    return out


def check_upload(file, limits: Limits) -> None:
    """An uploaded file (path or binary file object) before it is decoded: an image Pillow can
    identify (else :data:`NOT_AN_IMAGE`), of a size within ``limits.max_input_pixels`` read from
    its header (else the limit's refusal); raises :class:`EditflowError`."""
    open_checked(file, "the uploaded image", limits, not_image=NOT_AN_IMAGE).close()


def check_image(image: Any, limits: Limits | None = None) -> np.ndarray:
    """An uploaded image (PIL image or array ``[H, W]`` / ``[H, W, C]``, C in 1-4) as RGB uint8
    ``[H, W, 3]`` by :func:`editflow.images.to_rgb` (transparency composited on white), or an
    :class:`EditflowError` saying why not: nothing uploaded, not an image, or over
    ``limits.max_input_pixels`` (default :meth:`Limits.from_env`). Array values are clipped to 0..255."""
    limits = limits or Limits.from_env()
    if image is None:
        raise EditflowError(NO_IMAGE)
    if isinstance(image, Image.Image):
        limits.check_input(*image.size, "the uploaded image")
        return np.asarray(to_rgb(image))
    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.dtype.kind not in "biuf" or arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (2, 3, 4)):
        raise EditflowError(NOT_AN_IMAGE)
    limits.check_input(arr.shape[1], arr.shape[0], "the uploaded image")
    if arr.dtype != np.uint8:
        arr = np.clip(np.nan_to_num(arr.astype(np.float64)), 0, 255).astype(np.uint8)
    return np.asarray(to_rgb(Image.fromarray(arr)))  # L, LA, RGB or RGBA by its channels


def editor_parts(value: Any, limits: Limits | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """The image (:func:`check_image`) and the painted mask (union of the non-transparent pixels
    of every layer, or None when nothing is painted) of an image-editor value ``{"background",
    "layers", ...}``."""
    if not isinstance(value, dict):
        return check_image(value, limits), None
    image = check_image(value.get("background"), limits)
    mask = np.zeros(image.shape[:2], bool)
    for layer in value.get("layers") or []:
        layer = np.asarray(layer)
        if layer.ndim == 3 and layer.shape[2] == 4 and layer.shape[:2] == mask.shape:
            mask |= layer[..., 3] > 0
        elif layer.ndim == 3 and layer.shape[:2] == mask.shape:
            mask |= layer.max(axis=2) > 0
    return image, (mask if mask.any() else None)
