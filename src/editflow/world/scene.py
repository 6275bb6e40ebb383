"""Vocabulary, scene graph and scene sampling of the shapes world.

A scene is a background colour (optionally with a faint texture) and 1-9 objects, each on its own
cell of a 3x3 grid. An object is a (shape, colour, size, position) tuple of vocabulary words. The
order of ``Scene.objects`` is the order a canonical caption mentions them; :func:`sample_scene`
uses reading order (top left to bottom right) and edits keep the order of the objects they keep.

Palettes: every object colour is at least 80 RGB units (Euclidean) from every background colour,
and the textures change a background by at most 14 per channel (< 25 units), so "differs from the
background" is a threshold test (see :mod:`editflow.world.oracle`).
"""

from __future__ import annotations

from dataclasses import dataclass

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


class WorldError(EditflowError, ValueError):
    """A scene, edit or caption that the shapes world cannot represent."""


def _check(word: str | None, vocabulary, what: str) -> None:
    if word not in vocabulary:
        raise WorldError(f"unknown {what} {word!r}: choose from {', '.join(map(str, vocabulary))}")


@dataclass(frozen=True)
class Obj:
    shape: str
    color: str
    size: str
    position: str

    def __post_init__(self) -> None:
        _check(self.shape, SHAPES, "shape")
        _check(self.color, COLORS, "colour")
        _check(self.size, SIZES, "size")
        _check(self.position, POSITIONS, "position")

    @property
    def cell(self) -> int:
        """Index of the object's grid cell in :data:`POSITIONS` (row-major)."""
        return POSITIONS.index(self.position)


@dataclass(frozen=True)
class Scene:
    background: str
    objects: tuple[Obj, ...]
    texture: str | None = None

    def __post_init__(self) -> None:
        _check(self.background, BACKGROUNDS, "background")
        if self.texture is not None:
            _check(self.texture, TEXTURES, "texture")
        object.__setattr__(self, "objects", tuple(self.objects))
        if not 1 <= len(self.objects) <= MAX_OBJECTS:
            raise WorldError(f"a scene holds 1 to {MAX_OBJECTS} objects, got {len(self.objects)}")
        cells = [o.position for o in self.objects]
        if len(set(cells)) != len(cells):
            raise WorldError(f"two objects share a grid cell: {', '.join(cells)}")

    def free_positions(self) -> list[str]:
        """Grid cells without an object, in reading order."""
        used = {o.position for o in self.objects}
        return [p for p in POSITIONS if p not in used]

    def in_reading_order(self) -> "Scene":
        """The same scene with its objects sorted top left to bottom right (the canonical order)."""
        return Scene(self.background, tuple(sorted(self.objects, key=lambda o: o.cell)), self.texture)

    def to_dict(self) -> dict:
        """JSON-ready dict: ``{"background", "texture", "objects": [{shape, color, size, position}]}``."""
        return {
            "background": self.background,
            "texture": self.texture,
            "objects": [
                {"shape": o.shape, "color": o.color, "size": o.size, "position": o.position} for o in self.objects
            ],
        }

    @classmethod
    def from_dict(cls, data: dict) -> "Scene":
        return cls(data["background"], tuple(Obj(**o) for o in data["objects"]), data.get("texture"))


def _pick(rng: np.random.Generator, options) -> str:
    options = list(options)
    return options[int(rng.integers(len(options)))]


def sample_object(rng: np.random.Generator, position: str) -> Obj:
    """A uniformly random shape, colour and size at ``position``."""
    return Obj(_pick(rng, SHAPES), _pick(rng, COLORS), _pick(rng, SIZES), position)


def sample_scene(
    rng: np.random.Generator, min_objects: int = 1, max_objects: int = 3, textures: bool = False
) -> Scene:
    """A random scene: uniform object count in [min, max], distinct cells, uniform attributes.

    With ``textures`` the background is plain, striped or dotted with equal probability.
    Objects come in reading order, so the canonical caption reads the grid left to right.
    """
    if not 1 <= min_objects <= max_objects <= MAX_OBJECTS:
        raise WorldError(f"need 1 <= min_objects <= max_objects <= {MAX_OBJECTS}, got {min_objects}, {max_objects}")
    n = int(rng.integers(min_objects, max_objects + 1))
    cells = sorted(int(c) for c in rng.choice(MAX_OBJECTS, size=n, replace=False))
    objects = tuple(sample_object(rng, POSITIONS[c]) for c in cells)
    background = _pick(rng, BACKGROUNDS)
    texture = _pick(rng, [None, *TEXTURES]) if textures else None
    return Scene(background, objects, texture)
