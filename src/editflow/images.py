"""Image I/O: reading with clear errors, sizing to what a model accepts, atomic writes."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from .errors import EditflowError

WRITABLE_SUFFIXES = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}


def load_image(path: str | os.PathLike) -> Image.Image:
    """Open an image file as RGB, or raise :class:`EditflowError` naming the problem."""
    p = Path(path)
    if not p.exists():
        raise EditflowError(f"input image not found: {p}")
    if p.is_dir():
        raise EditflowError(f"input image is a folder, not a file: {p}")
    try:
        with Image.open(p) as im:
            im.load()
            return im.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise EditflowError(f"{p} is not an image file that can be read (PNG, JPEG, WebP, ...): {exc}") from None


def as_image(image: "Image.Image | str | os.PathLike") -> Image.Image:
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, (str, os.PathLike)):
        return load_image(image)
    raise EditflowError(f"image must be a PIL image or a file path, got {type(image).__name__}")


def load_mask(mask, size: tuple[int, int]) -> torch.Tensor:
    """A mask (image file, PIL image of any mode, 2-D array or tensor; white/nonzero = edit) as a
    bool ``[H, W]`` tensor at ``size = (width, height)``.

    It is binarised at its own resolution (half of its range), then resized; a pixel of the
    result is in when any source pixel under it is, so thin strokes survive downscaling.
    """
    if isinstance(mask, (str, os.PathLike)):
        path = Path(mask)
        if not path.exists():
            raise EditflowError(f"mask file not found: {path}")
        try:
            mask = Image.open(path)
            mask.load()
        except (OSError, ValueError) as exc:
            raise EditflowError(f"mask file is not an image: {path} ({exc})") from None
    if isinstance(mask, Image.Image):
        arr = np.asarray(mask.convert("L"), dtype=np.float32) / 255.0
    elif isinstance(mask, (np.ndarray, torch.Tensor)):
        arr = np.asarray(mask.detach().cpu() if isinstance(mask, torch.Tensor) else mask, dtype=np.float32)
        if arr.ndim == 3 and arr.shape[0] == 1:
            arr = arr[0]
        if arr.ndim != 2:
            raise EditflowError(f"a mask array must be 2-D (H x W), got shape {tuple(arr.shape)}")
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


def check_output_path(path: str | os.PathLike) -> Path:
    """Validate an output path before any work is done (suffix, existing folder)."""
    p = Path(path)
    if p.suffix.lower() not in WRITABLE_SUFFIXES:
        raise EditflowError(f"output {p} must end in one of {', '.join(WRITABLE_SUFFIXES)}")
    if not p.parent.exists():
        raise EditflowError(f"output folder {p.parent} does not exist: create it first")
    return p


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def save_image(image: Image.Image, path: str | os.PathLike) -> Path:
    """Write ``image`` atomically: to a temporary file beside ``path``, then rename."""
    p = check_output_path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            image.save(fh, format=WRITABLE_SUFFIXES[p.suffix.lower()])
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
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
