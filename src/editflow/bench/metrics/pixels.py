"""Pixel metrics, whole-image or restricted to a region: MSE, PSNR, SSIM.

Two ways to restrict to a region, both offered because papers differ:

* ``"select"`` (editflow's default): average over the region's pixels only;
* ``"zero"`` (PIE-Bench's evaluation code): multiply both images by the region mask, so the
  rest is black in both, and average over the whole image.

Images are on the [0, 1] scale; PSNR in dB (``inf`` for identical images).
"""

from __future__ import annotations

import math

import numpy as np

from ...world import oracle
from .base import batch, masks


class PixelMetric:
    """Batched ``__call__(a, b, mask=None) -> list[float]``; ``region`` picks ``"select"`` or ``"zero"``."""

    name = "pixel"

    def __init__(self, region: str = "select"):
        if region not in ("select", "zero"):
            raise ValueError(f"region must be 'select' or 'zero', got {region!r}")
        self.region = region

    @classmethod
    def from_pretrained(cls, name_or_path: str | None = None, **kwargs) -> "PixelMetric":
        return cls(**kwargs)

    def __call__(self, a, b, mask=None) -> list[float]:
        xs, ys = batch(a), batch(b)
        if len(xs) != len(ys):
            raise ValueError(f"{len(xs)} images against {len(ys)}")
        ms = masks(mask, len(xs), xs[0].shape[:2])
        return [self._one(x, y, m) for x, y, m in zip(xs, ys, ms)]

    def _pair(self, x, y, m):
        if m is None or self.region == "select":
            return x, y, m
        keep = m[..., None].astype(np.uint8)
        return x * keep, y * keep, None

    def _one(self, x, y, m) -> float:
        raise NotImplementedError


class MSE(PixelMetric):
    name = "mse"

    def _one(self, x, y, m) -> float:
        return oracle.mse(*self._pair(x, y, m))


class PSNR(PixelMetric):
    name = "psnr"

    def _one(self, x, y, m) -> float:
        return oracle.psnr(*self._pair(x, y, m))


class SSIM(PixelMetric):
    """Gaussian-window SSIM (11 px, sigma 1.5); with ``"select"`` the SSIM map is averaged over the
    windows that lie wholly inside the region (nan if none does)."""

    name = "ssim"

    def _one(self, x, y, m) -> float:
        x, y, m = self._pair(x, y, m)
        smap = oracle.ssim_map(x, y)
        if m is None:
            return float(smap.mean())
        from numpy.lib.stride_tricks import sliding_window_view

        k = (m.shape[0] - smap.shape[0] + 1, m.shape[1] - smap.shape[1] + 1)
        inside = sliding_window_view(m, k).all(axis=(-2, -1))
        return float(smap[inside].mean()) if inside.any() else math.nan
