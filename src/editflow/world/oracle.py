"""Oracle metrics for the shapes world: pixel metrics and an analytic scene reader (numpy, no weights).

Images are uint8 ``[H, W, 3]``; metrics work on the [0, 1] scale.

- ``mse(a, b, mask) = mean((a - b)^2)`` over the masked pixels and all channels;
  ``psnr = 10 log10(1 / mse)`` (inf when equal, nan when the mask selects nothing).
- ``ssim``: Wang et al. (2004) with an 11x11 Gaussian window (sigma 1.5), ``K1 = 0.01``,
  ``K2 = 0.03``, ``L = 1``, "valid" filtering (no padding), averaged over the map and the channels:
  ``SSIM = (2 mu_a mu_b + C1)(2 s_ab + C2) / ((mu_a^2 + mu_b^2 + C1)(s_a^2 + s_b^2 + C2))``,
  ``C1 = (K1 L)^2``, ``C2 = (K2 L)^2``.

Reader (:func:`read_object`), at a known grid cell:

1. background estimate ``bg`` = per-channel median of the cell's border ring (objects keep a
   margin of 0.1 cell, textures mark at most a third of the pixels);
2. foreground = pixels farther than :data:`FOREGROUND_DISTANCE` (half the smallest object/background
   colour distance) from ``bg``; ``present`` when its opening by a 2x2 square (which drops
   scattered noise pixels) covers at least 30% of the smallest template (coverage >= 1/2);
3. colour = the majority nearest-palette name over the foreground eroded by one pixel (the
   anti-aliased rim mixes with the background), or the whole foreground if erosion empties it;
4. coverage ``alpha = clip(<p - bg, c - bg> / |c - bg|^2, 0, 1)`` with ``c`` the median core
   colour, kept within one pixel of the foreground (so faint texture marks do not count); it is
   compared with each template ``t`` (the exact coverage of every shape, at the given size or
   both, rendered at that cell, shifted so its centroid meets alpha's, by at most a quarter cell)
   by the soft IoU ``sum(min(alpha, t)) / sum(max(alpha, t))``; shape, size and ``iou`` are the
   best template's. On rendered ground truth ``alpha`` is the coverage itself, so the right
   template scores ~1 and the reader is exact (tested at 64 px, also exact at 32 and 128).

Version 2 (objects offset, rotated and jittered; grain on the background) changes three steps:

1. ``bg`` is a plane ``a + b y + c x`` per channel fitted to the ring by least squares, refitted on
   the 70% of ring pixels nearest the first fit (the grain is smooth, so a plane follows it across
   a cell; a stray rim pixel in the ring is dropped);
4. the templates are every shape at both sizes (scale 1) rotated over its symmetry period in steps
   of :data:`ANGLE_STEP` degrees, drawn once at 4x resolution and placed with quarter-pixel
   precision so that their centroid meets alpha's before box-filtering;
5. the object is ``readable`` only when the best soft IoU reaches :data:`MIN_READ_IOU`; below it
   shape and size are None (a blob is not read as its nearest template).

Preservation of uncaptioned detail (version 2), in :func:`edit_scores`:

- ``structure_iou``: soft IoU of alpha (no shifting) with the ground truth's exact coverage of the
  edited object (colour, shape, size and move edits): it is high only when the object kept its
  offset, rotation and scale; ``structure_kept`` is ``structure_iou >= STRUCTURE_MIN_IOU``;
- ``grain_corr``: Pearson correlation of the brightness (channel mean) of ``edited`` and of the
  ground truth over the background at least one pixel away from every object; for background
  edits ``structure_kept`` is ``grain_corr >= GRAIN_MIN_CORR``. Add and remove edits have no
  structure score (an added object's detail cannot be known; a removal leaves nothing to keep).
- ``others_kept``: the fraction of untouched objects read right with ``structure_iou`` at least
  :data:`STRUCTURE_MIN_IOU` against their exact coverage.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw

from .edits import EditExample
from .render import SUPERSAMPLE, cell_box, draw_shape, object_coverage
from .scene import BACKGROUNDS, COLORS, EXTENT_V2, GRID, POSITIONS, SHAPES, SIZES, Obj, Scene, WorldError

_PALETTE_NAMES = tuple(COLORS)
_PALETTE = np.array([COLORS[n] for n in _PALETTE_NAMES], dtype=np.float64)
_BACKGROUND_NAMES = tuple(BACKGROUNDS)
_BACKGROUND_PALETTE = np.array([BACKGROUNDS[n] for n in _BACKGROUND_NAMES], dtype=np.float64)
FOREGROUND_DISTANCE = 0.5 * min(math.dist(c, b) for c in COLORS.values() for b in BACKGROUNDS.values())
MIN_PRESENT_FRACTION = 0.3
ANGLE_STEP = 6.0  # degrees between version-2 templates
SYMMETRY = {"circle": 360.0, "square": 90.0, "cross": 90.0, "star": 72.0, "triangle": 120.0, "heart": 360.0}
MIN_READ_IOU = 0.5
STRUCTURE_MIN_IOU = 0.7
GRAIN_MIN_CORR = 0.5


def _pair(a, b) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        raise WorldError(f"images differ in shape: {a.shape} vs {b.shape}")
    return a.astype(np.float64) / 255.0, b.astype(np.float64) / 255.0


def mse(a, b, mask: np.ndarray | None = None) -> float:
    """Mean squared error on the [0, 1] scale over ``mask`` (bool ``[H, W]``) or all pixels; nan if empty."""
    x, y = _pair(a, b)
    d = (x - y) ** 2
    if mask is not None:
        d = d[np.asarray(mask, dtype=bool)]
    return float(d.mean()) if d.size else float("nan")


def psnr(a, b, mask: np.ndarray | None = None) -> float:
    """``10 log10(1 / mse)`` in dB on the [0, 1] scale; inf when equal on the mask, nan if it is empty."""
    m = mse(a, b, mask)
    if math.isnan(m):
        return m
    return float("inf") if m == 0 else 10.0 * math.log10(1.0 / m)


def _gaussian(size: int = 11, sigma: float = 1.5) -> np.ndarray:
    x = np.arange(size) - (size - 1) / 2
    w = np.exp(-(x**2) / (2 * sigma**2))
    return w / w.sum()


def _filter(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Separable 'valid' filtering of ``[H, W, C]`` along H and W."""
    from numpy.lib.stride_tricks import sliding_window_view

    x = sliding_window_view(x, len(w), axis=0) @ w  # [H', W, C]
    return sliding_window_view(x, len(w), axis=1) @ w  # [H', W', C]


def ssim(a, b) -> float:
    """Mean SSIM over the Gaussian-window map and the channels (1.0 when equal)."""
    return float(ssim_map(a, b).mean())


def ssim_map(a, b) -> np.ndarray:
    """The SSIM map ``[H', W']`` ('valid' Gaussian windows), averaged over the channels."""
    x, y = _pair(a, b)
    if x.ndim == 2:
        x, y = x[..., None], y[..., None]
    w = _gaussian(min(11, *x.shape[:2]))
    c1, c2 = 0.01**2, 0.03**2
    mx, my = _filter(x, w), _filter(y, w)
    sxx = _filter(x * x, w) - mx * mx
    syy = _filter(y * y, w) - my * my
    sxy = _filter(x * y, w) - mx * my
    smap = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
    return smap.mean(axis=-1)


def _nearest(rgb: np.ndarray, palette: np.ndarray) -> np.ndarray:
    return np.argmin(((rgb[..., None, :] - palette) ** 2).sum(-1), axis=-1)


def _erode(mask: np.ndarray) -> np.ndarray:
    """4-neighbour erosion (outside the array counts as background)."""
    p = np.pad(mask, 1)
    return mask & p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]


def _dilate(mask: np.ndarray) -> np.ndarray:
    """4-neighbour dilation."""
    p = np.pad(mask, 1)
    return mask | p[:-2, 1:-1] | p[2:, 1:-1] | p[1:-1, :-2] | p[1:-1, 2:]


def _open2x2(mask: np.ndarray) -> np.ndarray:
    """Morphological opening with a 2x2 square: the union of the 2x2 blocks that fit inside ``mask``."""
    fits = mask[:-1, :-1] & mask[1:, :-1] & mask[:-1, 1:] & mask[1:, 1:]
    out = np.zeros_like(mask)
    for dy in (0, 1):
        for dx in (0, 1):
            out[dy:dy + fits.shape[0], dx:dx + fits.shape[1]] |= fits
    return out


def _shift(mask: np.ndarray, dy: int, dx: int) -> np.ndarray:
    out = np.zeros_like(mask)
    h, w = mask.shape
    src = mask[max(-dy, 0):h - max(dy, 0), max(-dx, 0):w - max(dx, 0)]
    out[max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = src
    return out


def _centroid(weights: np.ndarray) -> np.ndarray:
    yy, xx = np.indices(weights.shape)
    total = weights.sum()
    return np.array([(yy * weights).sum(), (xx * weights).sum()]) / total


@lru_cache(maxsize=1024)
def _template(shape: str, size_word: str, position: str, image_size: int) -> np.ndarray:
    y0, y1, x0, x1 = cell_box(position, image_size)
    t = object_coverage(Obj(shape, _PALETTE_NAMES[0], size_word, position), image_size)[y0:y1, x0:x1].astype(np.float64)
    t.flags.writeable = False
    return t


def _image(image) -> np.ndarray:
    img = np.asarray(image)
    if img.ndim != 3 or img.shape[2] != 3 or img.shape[0] != img.shape[1]:
        raise WorldError(f"expected a square RGB image [S, S, 3], got shape {img.shape}")
    return img.astype(np.float64)


def _soft_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = float(np.maximum(a, b).sum())
    return float(np.minimum(a, b).sum()) / union if union > 0 else 0.0


def _ring(crop: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Border pixels of ``crop`` ``[N, 3]`` and their ``(y, x)`` indices ``[N, 2]``."""
    h, w = crop.shape[:2]
    yy, xx = np.indices((h, w))
    edge = (yy == 0) | (yy == h - 1) | (xx == 0) | (xx == w - 1)
    return crop[edge], np.stack([yy[edge], xx[edge]], -1)


def _background_plane(crop: np.ndarray) -> np.ndarray:
    """``[h, w, 3]``: per channel, the plane fitted to the ring, refitted on its 70% nearest pixels."""
    values, where = _ring(crop)
    design = np.concatenate([np.ones((len(where), 1)), where.astype(np.float64)], 1)
    coef = np.linalg.lstsq(design, values, rcond=None)[0]
    keep = np.argsort(np.linalg.norm(design @ coef - values, axis=-1))[: int(0.7 * len(values))]
    coef = np.linalg.lstsq(design[keep], values[keep], rcond=None)[0]
    h, w = crop.shape[:2]
    yy, xx = np.indices((h, w))
    return np.stack([np.ones((h, w)), yy, xx], -1) @ coef


@lru_cache(maxsize=8)
def _bank_v2(image_size: int) -> tuple[list[tuple[str, str]], np.ndarray, np.ndarray]:
    """Version-2 templates: ``(shape, size)`` labels, 4x-resolution coverage ``[N, H, H]`` (float) and
    their centroids ``[N, 2]`` in continuous 4x-pixel coordinates (pixel j's centre at j + 0.5)."""
    cell = image_size / GRID * SUPERSAMPLE
    side = int(math.ceil(cell)) + 2 * SUPERSAMPLE
    labels, masks = [], []
    for z in SIZES:
        r = EXTENT_V2[z] / 2 * cell
        for shape in SHAPES:
            for angle in np.arange(0.0, SYMMETRY[shape], ANGLE_STEP if shape != "circle" else 360.0):
                canvas = Image.new("L", (side, side), 0)
                draw_shape(ImageDraw.Draw(canvas), shape, side / 2, side / 2, r, 255, float(angle))
                labels.append((shape, z))
                masks.append(np.asarray(canvas, dtype=np.float32) / 255.0)
    masks = np.stack(masks)
    centroids = np.stack([_centroid(m) + 0.5 for m in masks])
    masks.flags.writeable = False
    return labels, masks, centroids


def _match_v2(alpha: np.ndarray, sizes: tuple[str, ...], image_size: int) -> tuple[float, str, str]:
    """Best ``(soft IoU, shape, size)`` of the version-2 templates placed at alpha's centroid."""
    labels, masks, centroids = _bank_v2(image_size)
    h, w = alpha.shape
    target = 4.0 * (_centroid(alpha) + 0.5)  # alpha's centroid in continuous 4x coordinates
    side = masks.shape[1]
    best = (-1.0, None, None)
    for (shape, z), m, c in zip(labels, masks, centroids):
        if z not in sizes:
            continue
        sy, sx = (int(v) for v in np.rint(target - c))
        canvas = np.zeros((h * SUPERSAMPLE, w * SUPERSAMPLE), dtype=np.float32)
        ys, xs = max(sy, 0), max(sx, 0)
        ye, xe = min(sy + side, canvas.shape[0]), min(sx + side, canvas.shape[1])
        if ye <= ys or xe <= xs:
            continue
        canvas[ys:ye, xs:xe] = m[ys - sy:ye - sy, xs - sx:xe - sx]
        iou = _soft_iou(canvas.reshape(h, SUPERSAMPLE, w, SUPERSAMPLE).mean(axis=(1, 3)), alpha)
        if iou > best[0]:
            best = (iou, shape, z)
    return best


def _alpha(crop: np.ndarray, bg: np.ndarray, fg: np.ndarray) -> tuple[np.ndarray, str]:
    """Coverage estimate and majority palette colour of the foreground ``fg`` of ``crop`` over ``bg``."""
    core = _erode(fg) if _erode(fg).any() else fg
    votes = np.bincount(_nearest(crop[core], _PALETTE), minlength=len(_PALETTE_NAMES))
    color = _PALETTE_NAMES[int(np.argmax(votes))]
    ink = np.median(crop[core] - bg[core], axis=0)
    alpha = ((crop - bg) @ ink) / max(float(ink @ ink), 1e-9)
    return np.clip(alpha, 0.0, 1.0) * _dilate(fg), color  # rims stay, faint texture marks elsewhere go


def _absent() -> dict:
    return {"present": False, "color": None, "shape": None, "size": None, "iou": 0.0, "readable": False,
            "alpha": None}


def read_object(image, position: str, size_word: str | None = None, version: int = 1) -> dict:
    """Read the object at grid cell ``position``: ``{present, color, shape, size, iou, readable, alpha}``
    (see the module docstring; ``alpha`` is the coverage estimate over the cell's box, for scoring).

    ``color``/``shape``/``size`` are None and ``iou`` is 0.0 when nothing is present; in version 2
    ``shape``/``size`` are also None when the best template's IoU is below :data:`MIN_READ_IOU`.
    """
    img = _image(image)
    if position not in POSITIONS:
        raise WorldError(f"unknown position {position!r}: choose from {', '.join(POSITIONS)}")
    sizes = SIZES if size_word is None else (size_word,)
    y0, y1, x0, x1 = cell_box(position, img.shape[0])
    crop = img[y0:y1, x0:x1]
    if version == 2:
        bg = _background_plane(crop)
    else:
        bg = np.broadcast_to(np.median(_ring(crop)[0], axis=0), crop.shape)
    fg = np.linalg.norm(crop - bg, axis=-1) > FOREGROUND_DISTANCE
    if version == 2:
        r = min(EXTENT_V2[z] for z in sizes) / 2 * (y1 - y0)
        smallest = float(np.pi * r * r) * 0.35  # the thinnest outline (a star) covers ~35% of its disk
    else:
        smallest = min(float((_template(s, z, position, img.shape[0]) >= 0.5).sum()) for s in SHAPES for z in sizes)
    if _open2x2(fg).sum() < max(1, MIN_PRESENT_FRACTION * smallest):  # the opening drops scattered noise
        return _absent()
    alpha, color = _alpha(crop, bg, fg)
    if version == 2:
        iou, shape, z = _match_v2(alpha, sizes, img.shape[0])
        readable = iou >= MIN_READ_IOU
        return {"present": True, "color": color, "shape": shape if readable else None,
                "size": z if readable else None, "iou": iou, "readable": readable, "alpha": alpha}
    centre, limit = _centroid(alpha), (y1 - y0) // 4
    best = (-1.0, None, None)
    for shape in SHAPES:
        for z in sizes:
            t = _template(shape, z, position, img.shape[0])
            dy, dx = np.clip(np.rint(centre - _centroid(t)).astype(int), -limit, limit)
            iou = _soft_iou(_shift(t, int(dy), int(dx)), alpha)
            if iou > best[0]:
                best = (iou, shape, z)
    return {"present": True, "color": color, "shape": best[1], "size": best[2], "iou": best[0], "readable": True,
            "alpha": alpha}


def read_background(image) -> str:
    """Nearest background name to the per-channel median of the image's outer pixel ring."""
    return _BACKGROUND_NAMES[int(_nearest(np.median(_ring(_image(image))[0], axis=0), _BACKGROUND_PALETTE))]


def structure_iou(alpha: np.ndarray | None, obj: Obj, image_size: int) -> float:
    """Soft IoU of a read coverage ``alpha`` (over ``obj``'s cell box) with ``obj``'s exact coverage
    (version 2, not shifted); 0.0 when nothing was read."""
    if alpha is None:
        return 0.0
    y0, y1, x0, x1 = cell_box(obj.position, image_size)
    return _soft_iou(alpha, object_coverage(obj, image_size, 2)[y0:y1, x0:x1].astype(np.float64))


def _check_object(image, obj: Obj, version: int = 1) -> dict:
    r = read_object(image, obj.position, version=version)
    out = {
        "position": obj.position,
        "present": r["present"],
        "readable": r["readable"],
        "color_correct": r["color"] == obj.color,
        "shape_correct": r["shape"] == obj.shape,
        "size_correct": r["size"] == obj.size,
    }
    out["position_correct"] = out["present"] and out["color_correct"]
    out["correct"] = out["position_correct"] and out["shape_correct"] and out["size_correct"]
    if version == 2:
        out["structure_iou"] = structure_iou(r["alpha"], obj, np.asarray(image).shape[0])
    return out


def grain_corr(edited, truth, scene: Scene) -> float:
    """Pearson correlation of the brightness of ``edited`` and ``truth`` over ``scene``'s background
    at least one pixel from every object (nan when that region is constant in either image)."""
    size = np.asarray(truth).shape[0]
    touched = np.zeros((size, size), dtype=bool)
    for obj in scene.objects:
        touched |= object_coverage(obj, size, scene.version) > 0
    where = _erode(~touched)  # no subpixel of any object, and not next to one
    a = np.asarray(edited, dtype=np.float64).mean(-1)[where]
    b = np.asarray(truth, dtype=np.float64).mean(-1)[where]
    a, b = a - a.mean(), b - b.mean()
    denom = math.sqrt(float((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / denom) if denom > 0 else float("nan")


def read_scene_accuracy(image, scene: Scene) -> dict:
    """How well ``image`` shows ``scene`` (text-to-image evaluation).

    Per object (``objects``): present, color/shape/size_correct, position_correct (present at its
    cell with the right colour), correct (all of them). Means over objects: ``color``, ``shape``,
    ``size``, ``position``, ``object``; plus ``background_correct``, ``extra_objects`` (objects
    read on cells the scene leaves empty) and ``all_correct``.
    """
    objects = [_check_object(image, o, scene.version) for o in scene.objects]
    extra = sum(read_object(image, p, version=scene.version)["present"] for p in scene.free_positions())
    out = {
        key: float(np.mean([o[f"{key}_correct"] for o in objects]))
        for key in ("color", "shape", "size", "position")
    }
    out["object"] = float(np.mean([o["correct"] for o in objects]))
    out["background_correct"] = read_background(image) == scene.background
    out["extra_objects"] = int(extra)
    out["all_correct"] = out["object"] == 1.0 and out["background_correct"] and extra == 0
    out["readable"] = float(np.mean([o["readable"] for o in objects]))
    out["objects"] = objects
    return out


def edit_scores(example: EditExample, edited) -> dict:
    """Preservation, fidelity and attribute accuracy of ``edited`` (uint8 ``[H, W, 3]``) for ``example``.

    Pixel metrics: ``psnr_outside_mask_vs_source``, ``mse_outside_mask_vs_source``,
    ``psnr_inside_mask_vs_target``, ``psnr_vs_target``, ``ssim_vs_target``. Attributes, read by
    :func:`read_object`: for colour/shape/size/add/move edits the target object's ``present``,
    ``color_correct``, ``shape_correct``, ``size_correct`` (and ``vacated`` for move: the old cell
    is empty); ``removed`` for remove; ``background_correct`` for background. ``edit_correct`` is
    all of those; ``others_correct`` the fraction of the untouched objects still read right (nan
    if none). Version 2 adds ``structure_iou`` / ``structure_kept``, ``grain_corr`` and
    ``others_kept`` (module docstring).
    """
    edited = np.asarray(edited)
    src, tgt, mask = example.source_image, example.target_image, example.mask
    out = {
        "psnr_outside_mask_vs_source": psnr(edited, src, ~mask),
        "mse_outside_mask_vs_source": mse(edited, src, ~mask),
        "psnr_inside_mask_vs_target": psnr(edited, tgt, mask),
        "psnr_vs_target": psnr(edited, tgt),
        "ssim_vs_target": ssim(edited, tgt),
    }
    edit = example.edit
    version = edit.target.version
    kept = list(edit.target.objects)
    if edit.kind == "background":
        out["background_correct"] = read_background(edited) == edit.target.background
        out["edit_correct"] = out["background_correct"]
    elif edit.kind == "remove":
        out["removed"] = not read_object(edited, edit.source.objects[edit.index].position, version=version)["present"]
        out["edit_correct"] = out["removed"]
    else:
        r = _check_object(edited, kept.pop(edit.index), version)
        out.update({k: r[k] for k in ("present", "color_correct", "shape_correct", "size_correct")})
        out["edit_correct"] = r["correct"]
        if edit.kind == "move":
            out["vacated"] = not read_object(edited, edit.source.objects[edit.index].position, version=version)["present"]
            out["edit_correct"] = out["edit_correct"] and out["vacated"]
        if version == 2 and edit.kind != "add":
            out["structure_iou"] = r["structure_iou"]
            out["structure_kept"] = r["structure_iou"] >= STRUCTURE_MIN_IOU
    others = [_check_object(edited, o, version) for o in kept]
    out["others_correct"] = float(np.mean([o["correct"] for o in others])) if others else float("nan")
    if version == 2:
        out["grain_corr"] = grain_corr(edited, tgt, edit.target)
        if edit.kind == "background":
            out["structure_kept"] = bool(out["grain_corr"] >= GRAIN_MIN_CORR)
        kept_ok = [o["correct"] and o["structure_iou"] >= STRUCTURE_MIN_IOU for o in others]
        out["others_kept"] = float(np.mean(kept_ok)) if kept_ok else float("nan")
    return out
