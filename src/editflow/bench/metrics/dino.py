"""DINO metrics (Caron et al. 2021) through transformers' ``ViTModel``.

* :class:`DinoSimilarity` (DINO): cosine between the class tokens of the source and edited images
  (the DreamBooth-style subject/structure similarity; default ``facebook/dino-vits16``).
* :class:`Dinov2Similarity` (DINOv2): the same cosine on DINOv2's class token (Stable Flow's
  vital-layer similarity; default ``facebook/dinov2-base``).
* :class:`StructureDistance` (PIE-Bench's "structure distance", after Tumanyan et al., Splicing
  ViT Features, 2022): ``mse(S_a, S_b)`` with ``S = cos(k_i, k_j)`` the self-similarity of the
  last block's keys over all tokens (class token included, heads concatenated); PIE-Bench loads
  ``dino_vitb8`` from torch.hub (here ``facebook/dino-vitb8``), resizes the shorter side to 224,
  and applies ImageNet normalisation to 0-255 values (its code never divides by 255);
  ``pixel_range=255`` (the default) reproduces that, ``pixel_range=1`` is the textbook input.
  Lower is better; 0 for identical images.

Preprocessing: DINO resizes to the model's size (bicubic); structure distance resizes the shorter
side to 224 (longer side at most 480) as PIE-Bench's ``Resize(224, max_size=480)`` does on its
0-255 float tensor: bilinear with antialiasing (``resize="bilinear"``, torchvision 0.17+'s tensor
default, the pie-bench protocol's choice; torchvision 0.15-0.16 did not antialias tensors:
``resize="bilinear-noaa"``) or, the default kept for earlier runs' sake, PIL's bicubic
(``resize="bicubic"``). Both use ImageNet mean/std.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from .base import batch, chunks, resolve_checkpoint, to_device

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def preprocess(images: list[np.ndarray], size: int, shorter_side: bool = False, pixel_range: float = 1.0,
               max_size: int = 480) -> torch.Tensor:
    """Resize (square ``size``, or the shorter side to ``size`` keeping the aspect, longer side at
    most ``max_size``), scale pixels to ``[0, pixel_range]``, ImageNet-normalise."""
    out = []
    for a in images:
        im = Image.fromarray(a)
        if shorter_side:
            w, h = im.size
            s = min(size / min(w, h), max_size / max(w, h))
            im = im.resize((round(w * s), round(h * s)), Image.BICUBIC)
        else:
            im = im.resize((size, size), Image.BICUBIC)
        out.append(torch.from_numpy(np.asarray(im, dtype=np.float32) * (pixel_range / 255.0)).permute(2, 0, 1))
    x = torch.stack(out)
    return (x - torch.tensor(IMAGENET_MEAN)[:, None, None]) / torch.tensor(IMAGENET_STD)[:, None, None]


class _Dino:
    DEFAULT = "facebook/dino-vits16"
    SIZE: int | None = None  # input side; None: the checkpoint's

    def __init__(self, model, size: int | None = None, batch_size: int = 16):
        self.model = model
        self.size = size or self.SIZE or model.config.image_size
        self.batch_size = batch_size

    @classmethod
    def load(cls, name_or_path: str):
        from transformers import ViTModel

        return resolve_checkpoint(name_or_path, f"--metric-model {cls.name}=PATH", ViTModel.from_pretrained,
                                  add_pooling_layer=False)

    @classmethod
    def from_pretrained(cls, name_or_path: str | None = None, device=None, **kwargs):
        return cls(to_device(cls.load(name_or_path or cls.DEFAULT), device), **kwargs)

    @property
    def device(self):
        return next(self.model.parameters()).device


class DinoSimilarity(_Dino):
    """DINO: ``cos(cls(source), cls(edited))`` per pair."""

    name = "dino"

    @torch.no_grad()
    def features(self, images: list[np.ndarray]) -> torch.Tensor:
        out = []
        for part in chunks(images, self.batch_size):
            x = preprocess(list(part), self.size).to(self.device)
            out.append(self.model(pixel_values=x).last_hidden_state[:, 0].float())
        return torch.nn.functional.normalize(torch.cat(out), dim=-1)

    def __call__(self, a, b) -> list[float]:
        xs, ys = batch(a), batch(b)
        if len(xs) != len(ys):
            raise ValueError(f"{len(xs)} images against {len(ys)}")
        return (self.features(xs) * self.features(ys)).sum(-1).cpu().tolist()


class Dinov2Similarity(DinoSimilarity):
    """DINOv2 (Oquab et al. 2023): class-token cosine, as Stable Flow scores its layer bypasses
    (default ``facebook/dinov2-base``, 224 px input; the position embeddings are interpolated)."""

    name = "dinov2"
    DEFAULT = "facebook/dinov2-base"
    SIZE = 224

    @classmethod
    def load(cls, name_or_path: str):
        from transformers import Dinov2Model

        return resolve_checkpoint(name_or_path, "--metric-model dinov2=PATH; vital-layers: --similarity-model PATH",
                                  Dinov2Model.from_pretrained)


RESIZES = ("bilinear", "bilinear-noaa", "bicubic")


def resize_shorter_side(images: list[np.ndarray], size: int, pixel_range: float, antialias: bool,
                        max_size: int = 480) -> torch.Tensor:
    """torchvision's ``Resize(size, max_size)`` on float tensors (bilinear), then ImageNet-normalised:
    the shorter side becomes ``size`` (``int(size * long / short)`` the longer), unless the longer
    would pass ``max_size``, which then wins. All images must share a size."""
    x = torch.from_numpy(np.stack(images).astype(np.float32) * (pixel_range / 255.0)).permute(0, 3, 1, 2)
    h, w = x.shape[-2:]
    short, long = min(h, w), max(h, w)
    new_short, new_long = size, int(size * long / short)
    if new_long > max_size:
        new_short, new_long = int(max_size * new_short / new_long), max_size
    out = (new_short, new_long) if h <= w else (new_long, new_short)
    x = torch.nn.functional.interpolate(x, size=out, mode="bilinear", align_corners=False, antialias=antialias)
    return (x - torch.tensor(IMAGENET_MEAN)[:, None, None]) / torch.tensor(IMAGENET_STD)[:, None, None]


class StructureDistance(_Dino):
    """PIE-Bench structure distance: MSE between last-layer key self-similarity matrices."""

    name = "structure_distance"
    DEFAULT = "facebook/dino-vitb8"

    def __init__(self, model, size: int = 224, batch_size: int = 1, pixel_range: float = 255.0,
                 resize: str = "bicubic"):
        super().__init__(model, size, batch_size)
        if resize not in RESIZES:
            raise ValueError(f"resize must be one of {RESIZES}, got {resize!r}")
        self.pixel_range, self.resize = pixel_range, resize

    def _inputs(self, images) -> torch.Tensor:
        if self.resize == "bicubic":
            return preprocess(list(images), self.size, shorter_side=True, pixel_range=self.pixel_range)
        return resize_shorter_side(list(images), self.size, self.pixel_range, antialias=self.resize == "bilinear")

    @torch.no_grad()
    def self_similarity(self, images: list[np.ndarray]) -> torch.Tensor:
        keys = []
        handle = _last_key_projection(self.model).register_forward_hook(lambda mod, inp, out: keys.append(out))
        sims = []
        try:
            for part in chunks(images, self.batch_size):
                keys.clear()
                x = self._inputs(part)
                self.model(pixel_values=x.to(self.device), interpolate_pos_encoding=True)
                k = torch.nn.functional.normalize(keys[-1].float(), dim=-1)  # [B, T, D] (heads concatenated)
                sims.append(k @ k.transpose(1, 2))
        finally:
            handle.remove()
        return torch.cat(sims)

    def __call__(self, a, b) -> list[float]:
        xs, ys = batch(a), batch(b)
        if len(xs) != len(ys):
            raise ValueError(f"{len(xs)} images against {len(ys)}")
        return ((self.self_similarity(xs) - self.self_similarity(ys)) ** 2).mean(dim=(1, 2)).cpu().tolist()


def _last_key_projection(model) -> torch.nn.Module:
    """The last block's key projection (transformers 5 ``layers[-1].attention.k_proj``; older
    releases ``encoder.layer[-1].attention.attention.key``)."""
    if hasattr(model, "layers"):
        return model.layers[-1].attention.k_proj
    return model.encoder.layer[-1].attention.attention.key
