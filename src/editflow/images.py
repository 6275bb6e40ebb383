"""Image I/O: reading with clear errors, sizing to what a model accepts, atomic writes."""

from __future__ import annotations

import errno
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from .errors import EditflowError
from .limits import Limits

WRITABLE_SUFFIXES = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}


def open_checked(file, what: str, limits: Limits, not_image: str | None = None) -> Image.Image:
    """Open ``file`` (a path or a binary file object) lazily: only its header is read, and its size
    is checked against ``limits.max_input_pixels`` before any pixel is decoded (decompression
    bombs are refused). The caller closes the image. A file Pillow cannot identify raises
    :class:`EditflowError` with ``not_image`` (default: a line naming ``what`` and Pillow's reason)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit decides
            im = Image.open(file)
    except Image.DecompressionBombError:  # over Pillow's own bound, which stops the header read
        bound = 2 * (Image.MAX_IMAGE_PIXELS or 0)
        if bound < limits.max_input_pixels:  # the user raised our limit past Pillow's
            raise EditflowError(f"{what} is over Pillow's own decompression-bomb bound (2 x PIL.Image.MAX_IMAGE_PIXELS"
                                f" = {bound} pixels): make it smaller, or raise PIL.Image.MAX_IMAGE_PIXELS too") from None
        raise limits.refuse("max_input_pixels", f"{what} (over {bound} pixels)", bound + 1, "make it smaller") from None
    except Exception as exc:  # PIL raises many kinds (OSError, SyntaxError, ValueError ...) for broken files
        raise EditflowError(not_image or _unreadable(what, file, exc)) from None
    try:
        limits.check_input(*im.size, what)
    except EditflowError:
        im.close()
        raise
    return im


def _unreadable(what: str, file, exc: Exception) -> str:
    detail = " ".join(str(exc).replace(repr(str(file)), "").split()) or type(exc).__name__
    return f"{what} is not an image file that can be read (PNG, JPEG, WebP, ...): {detail}"


def open_image(path: str | os.PathLike, what: str = "input image", limits: Limits | None = None) -> Image.Image:
    """Decode an image file (:func:`open_checked` first), or raise :class:`EditflowError` naming
    the problem. Its EXIF orientation is applied, so a portrait photo is edited upright. The
    mode is kept (see :func:`to_rgb`)."""
    limits = limits or Limits.from_env()
    p = Path(path)
    if not p.exists():
        raise EditflowError(f"{what} not found: {p}")
    if p.is_dir():
        raise EditflowError(f"{what} is a folder, not a file: {p}")
    with open_checked(p, f"{what} {p}", limits) as im:
        try:
            im.load()
            return ImageOps.exif_transpose(im)
        except Exception as exc:  # a header Pillow reads over data it cannot decode (truncated, corrupt)
            raise EditflowError(_unreadable(f"{what} {p}", p, exc)) from None


def load_image(path: str | os.PathLike, limits: Limits | None = None) -> Image.Image:
    """An image file as upright RGB (:func:`open_image`, then :func:`to_rgb`)."""
    return to_rgb(open_image(path, "input image", limits))


def to_rgb(image: Image.Image) -> Image.Image:
    """One rule for every entry point (CLI, API, UI, datasets): an image as 8-bit RGB.

    * 16-bit and 32-bit greyscale (``I;16``, ``I``) are scaled from 0..65535, float images
      (``F``) from 0..1 (or 0..255 / 0..65535 when their values exceed the smaller range);
    * transparency (``RGBA``, ``LA``, ``PA``, palette transparency) is composited on white, as
      a viewer shows it: the hidden colours of transparent pixels are never edited;
    * every other mode is converted by Pillow.
    """
    if image.mode in HIGH_DEPTH_MODES:
        grey = Image.fromarray(np.round(grey_levels(image) * 255).astype(np.uint8))
        return grey.convert("RGB")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (image.mode == "P" and "transparency" in image.info):
        white = Image.new("RGBA", image.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, image.convert("RGBA")).convert("RGB")
    return image.convert("RGB")


HIGH_DEPTH_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")


def grey_levels(image: Image.Image) -> np.ndarray:
    """A one-channel image as float ``[H, W]`` in [0, 1], scaled by its mode's range (see :func:`to_rgb`)."""
    arr = np.asarray(image, dtype=np.float64)
    if image.mode == "F":
        top = float(np.nanmax(arr, initial=0.0))
        scale = 1.0 if top <= 1.0 else 255.0 if top <= 255.0 else 65535.0
    elif image.mode in HIGH_DEPTH_MODES:
        scale = 65535.0
    else:
        return np.asarray(image.convert("L"), dtype=np.float64) / 255.0
    return np.nan_to_num(np.clip(arr / scale, 0.0, 1.0))


def as_image(image: "Image.Image | str | os.PathLike", limits: Limits | None = None) -> Image.Image:
    """An image argument (PIL image or file path) as upright RGB, its size within ``limits``."""
    if isinstance(image, Image.Image):
        (limits or Limits.from_env()).check_input(*image.size, "input image")
        return to_rgb(ImageOps.exif_transpose(image))
    if isinstance(image, (str, os.PathLike)):
        return load_image(image, limits)
    raise EditflowError(f"image must be a PIL image or a file path, got {type(image).__name__}")


def load_mask(mask, size: tuple[int, int], limits: Limits | None = None) -> torch.Tensor:
    """A mask (image file, PIL image of any mode, 2-D array or tensor; white/nonzero = edit) as a
    bool ``[H, W]`` tensor at ``size = (width, height)``.

    It is binarised at its own resolution (half of its range: 16-bit masks by 65535, see
    :func:`grey_levels`), then resized; a pixel of the result is in when any source pixel under
    it is, so thin strokes survive downscaling. Its size is checked like an image's.
    """
    limits = limits or Limits.from_env()
    if isinstance(mask, (str, os.PathLike)):
        mask = open_image(mask, "mask file", limits)
    if isinstance(mask, Image.Image):
        limits.check_input(*mask.size, "mask")
        arr = grey_levels(mask)
    elif isinstance(mask, (np.ndarray, torch.Tensor)):
        arr = np.asarray(mask.detach().cpu() if isinstance(mask, torch.Tensor) else mask)
        if arr.ndim == 3 and arr.shape[0] == 1:
            arr = arr[0]
        if arr.ndim != 2:
            raise EditflowError(f"a mask array must be 2-D (H x W), got shape {tuple(arr.shape)}")
        if arr.dtype.kind not in "biuf":
            raise EditflowError(f"a mask array must hold numbers or booleans, got dtype {arr.dtype}")
        limits.check_input(arr.shape[1], arr.shape[0], "mask")
        arr = np.nan_to_num(arr.astype(np.float32))
        if arr.max(initial=0) > 1:
            arr = arr / 255.0
    else:
        raise EditflowError(f"mask must be an image file, a PIL image or a 2-D array, got {type(mask).__name__}")
    binary = torch.from_numpy((arr >= 0.5).astype(np.float32))[None, None]
    width, height = size
    resized = torch.nn.functional.interpolate(binary, size=(height, width), mode="area")
    return resized[0, 0] > 0


def fit_size(width: int, height: int, multiple: int) -> tuple[int, int]:
    """The nearest size whose sides are positive multiples of ``multiple`` (ties round up)."""

    def side(n: int) -> int:
        return max(multiple, (n + multiple // 2) // multiple * multiple)

    return side(width), side(height)


def to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB PIL image -> ``[1, 3, H, W]`` float32 in [-1, 1]."""
    arr = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(arr).permute(2, 0, 1)[None].contiguous()


def to_pil(image: torch.Tensor) -> Image.Image:
    """``[1, 3, H, W]`` or ``[3, H, W]`` in [-1, 1] -> RGB PIL image."""
    x = image[0] if image.dim() == 4 else image
    arr = ((x.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return Image.fromarray(arr.permute(1, 2, 0).numpy())


def _output_target(path: str | os.PathLike) -> Path:
    """An output path whose suffix is writable, that is not a folder, in a folder that exists."""
    p = Path(path)
    if p.suffix.lower() not in WRITABLE_SUFFIXES:
        raise EditflowError(f"output {p} must end in one of {', '.join(WRITABLE_SUFFIXES)}")
    if p.is_dir():
        raise EditflowError(f"output {p} is an existing folder: name a file inside it, e.g. {p / 'edited.png'}")
    if not p.parent.exists():
        raise EditflowError(f"output folder {p.parent} does not exist: create it first")
    return p


def check_output_path(path: str | os.PathLike) -> Path:
    """Validate an output path before any work is done: :func:`_output_target`, and that its
    folder takes a new file (tried with a temporary file, which also catches read-only file
    systems where permissions say yes)."""
    p = _output_target(path)
    try:
        fd, probe = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise EditflowError(f"cannot write to the output folder {p.parent} ({exc.strerror}): "
                            "choose a writable folder") from None
    return p


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def save_image(image: Image.Image, path: str | os.PathLike, **options) -> Path:
    """Write ``image`` atomically: to a temporary file beside ``path``, then rename (its own
    temporary file is the writability test: no separate probe); ``options`` go to PIL's writer
    (e.g. ``quality=75`` for JPEG)."""
    p = _output_target(path)
    return write_atomic(p, lambda fh, p: image.save(fh, format=WRITABLE_SUFFIXES[p.suffix.lower()], **options))


def write_atomic(path: str | os.PathLike, write) -> Path:
    """``write(file, path)`` into a temporary file beside ``path`` (in a folder that exists),
    fsynced, then renamed onto it; a failure leaves nothing behind and is one line."""
    p = Path(path)
    if p.is_dir() or not p.parent.is_dir():
        raise EditflowError(f"cannot write {p}: it is a folder or its folder does not exist; choose another path")
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
        with os.fdopen(fd, "wb") as fh:
            write(fh, p)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, p)
    except BaseException as exc:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            why = "the disk is full" if exc.errno == errno.ENOSPC else exc.strerror or str(exc)
            raise EditflowError(f"cannot write {p} ({why}): nothing was written; free space or choose "
                                "another path") from None
        raise
    return p


def side_by_side(images: list[Image.Image], gap: int = 4) -> Image.Image:
    """Images in a row (scaled to the first one's height), on white."""
    h = images[0].height
    scaled = [im if im.height == h else im.resize((round(im.width * h / im.height), h)) for im in images]
    canvas = Image.new("RGB", (sum(im.width for im in scaled) + gap * (len(scaled) - 1), h), "white")
    x = 0
    for im in scaled:
        canvas.paste(im, (x, 0))
        x += im.width + gap
    return canvas
