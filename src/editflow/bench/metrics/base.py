"""What every metric shares: image batches, masks, and offline-safe checkpoint loading."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch
from PIL import Image

from ...errors import EditflowError

ImageLike = "Image.Image | np.ndarray | str | os.PathLike"


def as_uint8(image) -> np.ndarray:
    """An RGB image as ``uint8 [H, W, 3]`` from a PIL image, array (uint8 or floats in [0, 1]) or path."""
    if isinstance(image, (str, os.PathLike)):
        from ...images import load_image

        image = load_image(image)
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[-1] != 3:
        raise EditflowError(f"an image must be H x W x 3, got shape {arr.shape}")
    if arr.dtype != np.uint8:
        arr = (np.clip(arr, 0, 1) * 255).round().astype(np.uint8)
    return arr


def batch(images) -> list[np.ndarray]:
    """A list of ``uint8 [H, W, 3]`` from one image or a sequence of them."""
    if isinstance(images, (Image.Image, str, os.PathLike)) or (isinstance(images, np.ndarray) and images.ndim == 3):
        return [as_uint8(images)]
    return [as_uint8(im) for im in images]


def masks(mask, n: int, shape: tuple[int, int]) -> list[np.ndarray | None]:
    """``n`` bool ``[H, W]`` masks (or ``None``s) from one mask or a sequence of them."""
    if mask is None:
        return [None] * n
    if isinstance(mask, np.ndarray) and mask.ndim == 2 or isinstance(mask, Image.Image):
        mask = [mask] * n
    out = []
    for m in mask:
        m = np.asarray(m.convert("L")) > 127 if isinstance(m, Image.Image) else np.asarray(m).astype(bool)
        if m.shape != shape:
            raise EditflowError(f"mask is {m.shape[1]}x{m.shape[0]} but the image is {shape[1]}x{shape[0]}")
        out.append(m)
    if len(out) != n:
        raise EditflowError(f"got {len(out)} masks for {n} images")
    return out


def resolve_checkpoint(name_or_path: str, option: str, loader, **kwargs):
    """Load ``name_or_path`` with ``loader`` (a ``from_pretrained``) without network access when
    offline; a checkpoint that cannot be found is one line naming it and the option to pass.
    Model weights load through safetensors only (``use_safetensors=True``: no unpickling)."""
    from transformers import PreTrainedModel

    owner = getattr(loader, "__self__", None)
    if isinstance(owner, type) and issubclass(owner, PreTrainedModel):
        kwargs.setdefault("use_safetensors", True)
    local = Path(name_or_path).expanduser()
    try:
        if local.exists():
            return loader(str(local), **kwargs)
        return loader(name_or_path, **kwargs)
    except (OSError, ValueError) as exc:
        if local.exists():
            raise EditflowError(f"cannot load the metric checkpoint at {local}: {exc}".splitlines()[0]) from None
        raise EditflowError(
            f"metric checkpoint {name_or_path!r} is not available offline: download it where there is network "
            f"(hf download {name_or_path}) or pass a local folder ({option})"
        ) from None


def to_device(model: torch.nn.Module, device) -> torch.nn.Module:
    return model.to(device or ("cuda" if torch.cuda.is_available() else "cpu")).eval()


def chunks(items: Sequence, size: int) -> Iterable[Sequence]:
    for i in range(0, len(items), size):
        yield items[i : i + size]
