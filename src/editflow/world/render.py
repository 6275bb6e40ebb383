"""Deterministic, anti-aliased rendering of scenes, and exact per-object masks.

Geometry (image side ``S``): cell ``(row, col)`` spans ``[col S/3, (col+1) S/3)`` horizontally and
likewise vertically; an object is centred in its cell with half-extent ``r = 0.4 S/3`` (large, so
it spans 0.8 of a cell) or ``r = 0.225 S/3`` (small, 0.45 of a cell). Every shape lies inside the
square ``centre +- r``, so objects never touch and each cell keeps a background margin of at least
0.1 of a cell.

Anti-aliasing is 4x4 supersampling with a box filter: the scene is drawn without anti-aliasing at
``4 S`` and every output pixel is the mean of its 16 subpixels. A box filter has no support outside
the pixel, so an output pixel changes only if one of its own subpixels changes. That makes masks
exact: :func:`object_mask` is the set of pixels with any subpixel inside the object, and an edit
changes no pixel outside the union of the masks of what it changes (no dilation needed).

Version 2 (see :mod:`.scene`): outlines scaled to the unit disk, the object's centre at the cell
centre plus ``(dx, dy)`` cells, rotated by ``angle`` degrees (clockwise on screen, about the centre),
bounding-disk radius ``EXTENT_V2[size] / 2 * scale`` cells. The background is its colour plus a grain
field ``g`` in [-1, 1] times :data:`GRAIN_DELTA` on every channel (a brightness change), drawn from
``grain``: ``g(u, v) = sum_k a_k cos(2 pi (f_k . (u, v)) + phi_k) / sum_k |a_k|`` over
:data:`GRAIN_WAVES` plane waves with integer frequencies ``f_k`` of norm 1 to 2 cycles per image and
``(u, v)`` in [0, 1). An edit of the background colour keeps the field; edits never change it.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw

from .scene import BACKGROUNDS, COLORS, EXTENT_V2, GRID, POSITIONS, Obj, Scene

SUPERSAMPLE = 4
EXTENT = {"large": 0.8, "small": 0.45}  # version 1: object width as a fraction of a cell
TEXTURE_DELTA = 14  # per-channel change of a texture mark (lighter on dark backgrounds, darker on light)
GRAIN_DELTA = 16  # version 2: the grain's peak change per channel
GRAIN_WAVES = 4


def _star(points: int = 5, inner: float = 0.45) -> list[tuple[float, float]]:
    out = []
    for k in range(2 * points):
        radius = 1.0 if k % 2 == 0 else inner
        angle = math.pi * k / points
        out.append((radius * math.sin(angle), -radius * math.cos(angle)))
    return out


def _heart(n: int = 48) -> list[tuple[float, float]]:
    """The classic curve x = 16 sin^3 t, y = 13 cos t - 5 cos 2t - 2 cos 3t - cos 4t, fitted to [-1, 1]^2."""
    pts = [
        (16 * math.sin(t) ** 3, -(13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t)))
        for t in (2 * math.pi * k / n for k in range(n))
    ]
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    cx, cy = (max(xs) + min(xs)) / 2, (max(ys) + min(ys)) / 2
    half = max(max(xs) - min(xs), max(ys) - min(ys)) / 2
    return [((x - cx) / half, (y - cy) / half) for x, y in pts]


def _cross(arm: float = 0.34) -> list[tuple[float, float]]:
    a = arm
    return [(-a, -1), (a, -1), (a, -a), (1, -a), (1, a), (a, a), (a, 1), (-a, 1), (-a, a), (-1, a), (-1, -a), (-a, -a)]


# Unit outlines in [-1, 1]^2 (y down); the circle is drawn as an ellipse.
POLYGONS: dict[str, list[tuple[float, float]]] = {
    "square": [(-0.85, -0.85), (0.85, -0.85), (0.85, 0.85), (-0.85, 0.85)],
    "triangle": [(0.0, -0.95), (1.0, 0.8), (-1.0, 0.8)],
    "star": _star(),
    "heart": _heart(),
    "cross": _cross(),
}


def _disk(outline: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """``outline`` scaled so its farthest vertex lies on the unit circle."""
    far = max(math.hypot(x, y) for x, y in outline)
    return [(x / far, y / far) for x, y in outline]


# Version 2: the same outlines inside the unit disk (so that any rotation stays inside it).
POLYGONS_V2: dict[str, list[tuple[float, float]]] = {name: _disk(p) for name, p in POLYGONS.items()}


def object_frame(obj: Obj, size: int, version: int = 1) -> tuple[float, float, float]:
    """Centre ``(cx, cy)`` and half-extent ``r`` of ``obj`` in pixels of an image of side ``size``.

    Version 2: the centre includes the offset and ``r`` (the bounding disk's radius) the scale.
    """
    row, col = divmod(POSITIONS.index(obj.position), GRID)
    cell = size / GRID
    if version == 1:
        return (col + 0.5) * cell, (row + 0.5) * cell, EXTENT[obj.size] * cell / 2
    return (col + 0.5 + obj.dx) * cell, (row + 0.5 + obj.dy) * cell, EXTENT_V2[obj.size] * obj.scale * cell / 2


def draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, fill, angle: float = 0.0,
               version: int = 2) -> None:
    """Draw ``shape`` centred at ``(cx, cy)`` with half-extent ``r`` (pixels), rotated by ``angle``
    degrees (clockwise on screen, about the centre), with the outlines of world ``version``."""
    if shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
        return
    c, s = math.cos(math.radians(angle)), math.sin(math.radians(angle))  # angle 0: exactly (1, 0)
    unit = POLYGONS if version == 1 else POLYGONS_V2
    draw.polygon([(cx + r * (c * x - s * y), cy + r * (s * x + c * y)) for x, y in unit[shape]], fill=fill)


def cell_box(position: str, size: int) -> tuple[int, int, int, int]:
    """Pixel box ``(y0, y1, x0, x1)`` (half-open) of the pixels that touch cell ``position``."""
    row, col = divmod(POSITIONS.index(position), GRID)
    cell = size / GRID
    return (
        int(math.floor(row * cell)), int(math.ceil((row + 1) * cell)),
        int(math.floor(col * cell)), int(math.ceil((col + 1) * cell)),
    )


def _draw(draw: ImageDraw.ImageDraw, obj: Obj, hi: int, fill, version: int = 1) -> None:
    cx, cy, r = object_frame(obj, hi, version)
    draw_shape(draw, obj.shape, cx, cy, r, fill, obj.angle if version == 2 else 0.0, version)


def grain_field(grain: int, size: int) -> np.ndarray:
    """Float ``[size, size]`` in [-1, 1]: the smooth random field of seed ``grain`` (module docstring),
    sampled at pixel centres of an image of side ``size``."""
    rng = np.random.default_rng([7, grain])
    freqs = [(fx, fy) for fx in range(-2, 3) for fy in range(0, 3) if 1 <= math.hypot(fx, fy) <= 2 and (fy > 0 or fx > 0)]
    u = (np.arange(size) + 0.5) / size
    field = np.zeros((size, size))
    total = 0.0
    for k in rng.choice(len(freqs), size=GRAIN_WAVES, replace=False):
        fx, fy = freqs[int(k)]
        a, phi = rng.uniform(0.5, 1.0), rng.uniform(0, 2 * math.pi)
        field += a * np.cos(2 * math.pi * (fx * u[None, :] + fy * u[:, None]) + phi)
        total += a
    return field / total


@lru_cache(maxsize=64)
def _background(background: str, texture: str | None, size: int) -> Image.Image:
    """The supersampled background canvas (cached; callers copy it)."""
    hi = size * SUPERSAMPLE
    base = np.array(BACKGROUNDS[background], dtype=np.int16)
    rgb = np.broadcast_to(base, (hi, hi, 3)).copy()
    if texture is not None:
        yy, xx = np.mgrid[0:hi, 0:hi]
        period = hi / 8
        if texture == "stripes":  # diagonal bands, one third of each period
            marks = ((xx + yy) % period) < period / 3
        else:  # "dots": a dot of radius period/8 at the centre of each period x period tile
            dy = (yy % period) - period / 2
            dx = (xx % period) - period / 2
            marks = dx * dx + dy * dy < (period / 8) ** 2
        sign = 1 if base.mean() < 128 else -1
        rgb[marks] += sign * TEXTURE_DELTA
    return Image.fromarray(rgb.clip(0, 255).astype(np.uint8), "RGB")


@lru_cache(maxsize=64)
def _grain_canvas(background: str, grain: int, size: int) -> Image.Image:
    """The supersampled version-2 background: colour plus grain (computed at ``size``, repeated per subpixel,
    so that a background pixel is exactly ``colour + GRAIN_DELTA * g`` rounded)."""
    base = np.array(BACKGROUNDS[background], dtype=np.float64)
    rgb = np.rint(base + GRAIN_DELTA * grain_field(grain, size)[..., None]).clip(0, 255).astype(np.uint8)
    return Image.fromarray(rgb.repeat(SUPERSAMPLE, 0).repeat(SUPERSAMPLE, 1), "RGB")


def render(scene: Scene, size: int = 64) -> np.ndarray:
    """``[size, size, 3]`` uint8 image of ``scene`` (deterministic, 4x4 box-filtered supersampling)."""
    if scene.version == 2:
        canvas = _grain_canvas(scene.background, scene.grain, size).copy()
    else:
        canvas = _background(scene.background, scene.texture, size).copy()
    draw = ImageDraw.Draw(canvas)
    for obj in scene.objects:
        _draw(draw, obj, size * SUPERSAMPLE, COLORS[obj.color], scene.version)
    return np.asarray(canvas.reduce(SUPERSAMPLE))


@lru_cache(maxsize=1024)
def _coverage(obj: Obj, size: int, version: int = 1) -> np.ndarray:
    hi = size * SUPERSAMPLE
    canvas = Image.new("L", (hi, hi), 0)
    _draw(ImageDraw.Draw(canvas), obj, hi, 255, version)
    sub = np.asarray(canvas, dtype=np.float32).reshape(size, SUPERSAMPLE, size, SUPERSAMPLE) / 255.0
    out = sub.mean(axis=(1, 3))
    out.flags.writeable = False
    return out


def object_coverage(obj: Obj, size: int = 64, version: int = 1) -> np.ndarray:
    """Float ``[size, size]`` in [0, 1]: the fraction of each pixel's subpixels that ``obj`` covers."""
    return _coverage(obj, size, version)


def object_mask(scene: Scene, index: int, size: int = 64) -> np.ndarray:
    """Bool ``[size, size]``: pixels that object ``index`` of ``scene`` covers at all (coverage > 0)."""
    return _coverage(scene.objects[index], size, scene.version) > 0


def background_mask(scene: Scene, size: int = 64) -> np.ndarray:
    """Bool ``[size, size]``: pixels with any background subpixel, i.e. not fully covered by objects.

    This is exactly where a change of background colour shows, anti-aliased object rims included.
    """
    covered = np.zeros((size, size), dtype=np.float32)
    for obj in scene.objects:
        covered += _coverage(obj, size, scene.version)
    return covered < 1.0
