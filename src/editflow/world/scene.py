"""Vocabulary, scene graph and scene sampling of the shapes world.

A scene is a background colour (optionally with a faint texture) and 1-9 objects, each on its own
cell of a 3x3 grid. An object is a (shape, colour, size, position) tuple of vocabulary words. The
order of ``Scene.objects`` is the order a canonical caption mentions them; :func:`sample_scene`
uses reading order (top left to bottom right) and edits keep the order of the objects they keep.

World versions. In version 1 a caption determines its image. Version 2 adds detail that no caption
names, drawn from the seed, so that an edit can be told from a regeneration:

- per object (:class:`Obj` fields, in cell units and degrees): an offset ``(dx, dy)`` of its centre
  from the cell centre, a rotation ``angle`` and a size jitter ``scale``;
- per scene: ``grain``, the seed of a smooth random brightness field over the background.

Version-2 geometry (``render``): outlines are normalised to the unit disk, so any rotation keeps an
object inside the disk of radius ``R = EXTENT_V2[size] / 2 * scale`` around its centre, and offsets
are bounded by ``|dx|, |dy| <= 1/2 - MARGIN_V2 - R`` so that every object stays inside its cell with
a margin of :data:`MARGIN_V2` cells: masks stay exact and cells never touch.

Held-out split. :func:`split_of` puts 1 in :data:`HELD_OUT_EVERY` scene graphs (background, texture
and the set of captioned objects, detail ignored) in ``"held_out"`` by a CRC32 of its canonical
caption; training draws only ``"train"`` graphs and benchmarks only ``"held_out"`` ones, so no
held-out caption ever occurs in training (by construction, not by chance).

Palettes: every object colour is at least 80 RGB units (Euclidean) from every background colour,
and the textures change a background by at most 14 per channel (< 25 units), so "differs from the
background" is a threshold test (see :mod:`editflow.world.oracle`).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, replace

import numpy as np

from ..errors import EditflowError

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "heart", "cross")

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (240, 210, 40),
    "orange": (245, 130, 30),
    "purple": (140, 60, 190),
    "pink": (245, 130, 190),
    "white": (245, 245, 245),
    "black": (15, 15, 15),
}

BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "gray": (128, 128, 128),
    "beige": (222, 205, 165),
    "navy": (30, 45, 110),
    "brown": (110, 75, 50),
}

SIZES: tuple[str, ...] = ("small", "large")

# Row-major 3x3 grid: index i is row i // 3, column i % 3.
POSITIONS: tuple[str, ...] = (
    "top left", "top", "top right",
    "left", "center", "right",
    "bottom left", "bottom", "bottom right",
)

# Texture name -> the adjective captions use ("on a striped gray background").
TEXTURES: dict[str, str] = {"stripes": "striped", "dots": "dotted"}

GRID = 3
MAX_OBJECTS = GRID * GRID

VERSIONS = (1, 2)
EXTENT_V2 = {"large": 0.72, "small": 0.52}  # diameter of an object's bounding disk, in cells (scale 1)
MARGIN_V2 = 0.05  # least background between an object's disk and its cell's edge, in cells
SCALE_RANGE = (0.92, 1.08)  # size jitter (uniform)
SPLITS = ("train", "held_out")
HELD_OUT_EVERY = 8


class WorldError(EditflowError, ValueError):
    """A scene, edit or caption that the shapes world cannot represent."""


def _check(word: str | None, vocabulary, what: str) -> None:
    if word not in vocabulary:
        raise WorldError(f"unknown {what} {word!r}: choose from {', '.join(map(str, vocabulary))}")


def offset_bound(size: str, scale: float = 1.0) -> float:
    """Largest ``|dx|`` (and ``|dy|``), in cells, that keeps a version-2 object of ``size`` in its cell."""
    return 0.5 - MARGIN_V2 - EXTENT_V2[size] / 2 * scale


_NO_DETAIL = {"dx": 0.0, "dy": 0.0, "angle": 0.0, "scale": 1.0}
DETAIL_FIELDS = tuple(_NO_DETAIL)


@dataclass(frozen=True)
class Obj:
    """An object: captioned words (shape, colour, size, position) and uncaptioned detail.

    Detail (world version 2; zero in version 1): centre offset ``dx, dy`` from the cell centre in
    cells (x right, y down), rotation ``angle`` in degrees (clockwise on screen), size jitter ``scale``.
    """

    shape: str
    color: str
    size: str
    position: str
    dx: float = 0.0
    dy: float = 0.0
    angle: float = 0.0
    scale: float = 1.0

    def __post_init__(self) -> None:
        _check(self.shape, SHAPES, "shape")
        _check(self.color, COLORS, "colour")
        _check(self.size, SIZES, "size")
        _check(self.position, POSITIONS, "position")
        for name in DETAIL_FIELDS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
                raise WorldError(f"object detail {name} must be a finite number, got {value!r}")
            object.__setattr__(self, name, float(value))
        if not SCALE_RANGE[0] - 1e-9 <= self.scale <= SCALE_RANGE[1] + 1e-9 and self.has_detail:
            raise WorldError(f"object scale {self.scale} is outside {SCALE_RANGE}")
        if self.has_detail and max(abs(self.dx), abs(self.dy)) > offset_bound(self.size, self.scale) + 1e-9:
            raise WorldError(f"object offset ({self.dx:.3f}, {self.dy:.3f}) leaves its cell: a {self.size} object "
                             f"of scale {self.scale:.3f} may move at most {offset_bound(self.size, self.scale):.3f} cells")

    @property
    def cell(self) -> int:
        """Index of the object's grid cell in :data:`POSITIONS` (row-major)."""
        return POSITIONS.index(self.position)

    @property
    def has_detail(self) -> bool:
        return any(getattr(self, k) != v for k, v in _NO_DETAIL.items())

    @property
    def words(self) -> tuple[str, str, str, str]:
        """What a caption says of the object: ``(shape, color, size, position)``."""
        return self.shape, self.color, self.size, self.position

    def to_dict(self) -> dict:
        out = {"shape": self.shape, "color": self.color, "size": self.size, "position": self.position}
        out.update({k: getattr(self, k) for k in DETAIL_FIELDS if getattr(self, k) != _NO_DETAIL[k]})
        return out


@dataclass(frozen=True)
class Scene:
    """Background, objects and (version 2) the background's grain seed.

    ``version`` selects the geometry (see the module docstring): version 1 objects carry no detail
    and its scenes no grain; version 2 scenes have no captioned texture (the grain is their texture).
    """

    background: str
    objects: tuple[Obj, ...]
    texture: str | None = None
    version: int = 1
    grain: int | None = None

    def __post_init__(self) -> None:
        _check(self.background, BACKGROUNDS, "background")
        if self.texture is not None:
            _check(self.texture, TEXTURES, "texture")
        check_version(self.version)
        object.__setattr__(self, "objects", tuple(self.objects))
        if not 1 <= len(self.objects) <= MAX_OBJECTS:
            raise WorldError(f"a scene holds 1 to {MAX_OBJECTS} objects, got {len(self.objects)}")
        cells = [o.position for o in self.objects]
        if len(set(cells)) != len(cells):
            raise WorldError(f"two objects share a grid cell: {', '.join(cells)}")
        if self.version == 1 and (self.grain is not None or any(o.has_detail for o in self.objects)):
            raise WorldError("a version-1 scene has no uncaptioned detail: use version=2 for offsets, rotation, "
                             "scale or grain")
        if self.version == 2 and self.texture is not None:
            raise WorldError("a version-2 scene has no captioned texture (its grain is its texture)")
        if self.version == 2 and self.grain is None:
            raise WorldError("a version-2 scene needs a grain seed (an integer in [0, 2**32))")
        if self.grain is not None and not (isinstance(self.grain, int) and 0 <= self.grain < 2**32):
            raise WorldError(f"grain must be an integer seed in [0, 2**32), got {self.grain!r}")

    def free_positions(self) -> list[str]:
        """Grid cells without an object, in reading order."""
        used = {o.position for o in self.objects}
        return [p for p in POSITIONS if p not in used]

    def in_reading_order(self) -> "Scene":
        """The same scene with its objects sorted top left to bottom right (the canonical order)."""
        return replace(self, objects=tuple(sorted(self.objects, key=lambda o: o.cell)))

    def graph_key(self) -> str:
        """What captions can say of the scene, order-free: background, texture, objects' words."""
        words = sorted(o.words for o in self.objects)
        return "|".join([self.background, self.texture or "", *(" ".join(w) for w in words)])

    def to_dict(self) -> dict:
        """JSON-ready dict: ``{"background", "texture", "objects": [{shape, color, size, position, detail...}]}``
        plus ``version`` and ``grain`` for version 2 (object detail keys only where not zero)."""
        out = {"background": self.background, "texture": self.texture, "objects": [o.to_dict() for o in self.objects]}
        if self.version != 1:
            out.update(version=self.version, grain=self.grain)
        return out

    @classmethod
    def from_dict(cls, data: dict) -> "Scene":
        return cls(data["background"], tuple(Obj(**o) for o in data["objects"]), data.get("texture"),
                   data.get("version", 1), data.get("grain"))


def split_of(scene: Scene) -> str:
    """``"held_out"`` for 1 in :data:`HELD_OUT_EVERY` scene graphs (CRC32 of :meth:`Scene.graph_key`), else ``"train"``."""
    return "held_out" if zlib.crc32(scene.graph_key().encode()) % HELD_OUT_EVERY == 0 else "train"


def check_version(version: int) -> int:
    if version not in VERSIONS:
        raise WorldError(f"unknown world version {version!r}: choose from {', '.join(map(str, VERSIONS))}")
    return version


def training_split(version: int) -> str | None:
    """The split training draws from: ``"train"`` in version 2; every graph in version 1 (no split)."""
    return "train" if version == 2 else None


def held_out_split(version: int) -> str | None:
    """The split benchmarks draw from: ``"held_out"`` in version 2; version 1 has none (its benchmarks
    use a seed namespace training never used instead)."""
    return "held_out" if version == 2 else None


def check_split(split: str | None) -> str | None:
    if split is not None and split not in SPLITS:
        raise WorldError(f"unknown split {split!r}: choose from {', '.join(SPLITS)}")
    return split


def _pick(rng: np.random.Generator, options) -> str:
    options = list(options)
    return options[int(rng.integers(len(options)))]


def sample_detail(rng: np.random.Generator, size: str) -> dict:
    """Version-2 detail of an object of ``size``: uniform scale, angle in [0, 360), offset within bounds."""
    scale = float(rng.uniform(*SCALE_RANGE))
    bound = offset_bound(size, scale)
    dx, dy = (float(v) for v in rng.uniform(-bound, bound, size=2))
    return {"dx": dx, "dy": dy, "angle": float(rng.uniform(0.0, 360.0)), "scale": scale}


def sample_object(rng: np.random.Generator, position: str, version: int = 1) -> Obj:
    """A uniformly random shape, colour and size at ``position`` (with random detail in version 2)."""
    shape, color, size = _pick(rng, SHAPES), _pick(rng, COLORS), _pick(rng, SIZES)
    detail = sample_detail(rng, size) if version == 2 else {}
    return Obj(shape, color, size, position, **detail)


MAX_SPLIT_TRIES = 1000


def sample_scene(
    rng: np.random.Generator, min_objects: int = 1, max_objects: int = 3, textures: bool = False,
    version: int = 1, split: str | None = None,
) -> Scene:
    """A random scene: uniform object count in [min, max], distinct cells, uniform attributes.

    With ``textures`` the background is plain, striped or dotted with equal probability (version 1;
    version 2 has grain instead). Objects come in reading order, so the canonical caption reads the
    grid left to right. With ``split`` the scene is redrawn until :func:`split_of` agrees.
    """
    if not 1 <= min_objects <= max_objects <= MAX_OBJECTS:
        raise WorldError(f"need 1 <= min_objects <= max_objects <= {MAX_OBJECTS}, got {min_objects}, {max_objects}")
    check_version(version)
    if version == 2 and textures:
        raise WorldError("version-2 scenes have grain instead of captioned textures: drop textures")
    check_split(split)
    for _ in range(MAX_SPLIT_TRIES):
        n = int(rng.integers(min_objects, max_objects + 1))
        cells = sorted(int(c) for c in rng.choice(MAX_OBJECTS, size=n, replace=False))
        objects = tuple(sample_object(rng, POSITIONS[c], version) for c in cells)
        background = _pick(rng, BACKGROUNDS)
        texture = _pick(rng, [None, *TEXTURES]) if textures else None
        grain = int(rng.integers(2**32)) if version == 2 else None
        scene = Scene(background, objects, texture, version, grain)
        if split is None or split_of(scene) == split:
            return scene
    raise WorldError(f"no {split} scene in {MAX_SPLIT_TRIES} draws")
