"""Captions from scene graphs, their paraphrases, and the parser that reads them back.

Canonical caption (objects in ``Scene.objects`` order, "in the", background last)::

    a large red circle in the top left and a small blue square in the center, on a gray background

An object phrase is always ``a SIZE COLOR SHAPE in|at the POSITION``; the background phrase is
``a [striped|dotted] BACKGROUND background``. A :class:`Style` varies only the words around them:
the order objects are mentioned in, "in the" / "at the", an optional prefix ("a picture of ..."),
and where the background goes ("..., on|with|against a gray background" or "a gray background with
..."). Every attribute is named exactly once, in lowercase vocabulary words, so
:func:`parse_caption` recovers the scene from any caption this module writes.

Edits phrase source and target with one style (:func:`restyle_for_edit`), so the two prompts differ
only in the edited words.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

import numpy as np

from .scene import BACKGROUNDS, COLORS, POSITIONS, SHAPES, SIZES, TEXTURES, Obj, Scene, WorldError

PREFIXES = ("", "a picture of ", "an image of ", "a drawing of ", "a photo of ")
PREPOSITIONS = ("in the", "at the")
BACKGROUND_WORDS = ("on", "with", "against")


@dataclass(frozen=True)
class Style:
    """How a caption is phrased; ``order`` lists indices into ``Scene.objects`` (None: as stored)."""

    order: tuple[int, ...] | None = None
    prefix: str = ""
    preposition: str = "in the"
    background_word: str = "on"
    background_first: bool = False


CANONICAL = Style()


def sample_style(rng: np.random.Generator, n_objects: int) -> Style:
    """A uniformly random phrasing for a scene of ``n_objects`` objects."""
    return Style(
        order=tuple(int(i) for i in rng.permutation(n_objects)),
        prefix=PREFIXES[int(rng.integers(len(PREFIXES)))],
        preposition=PREPOSITIONS[int(rng.integers(len(PREPOSITIONS)))],
        background_word=BACKGROUND_WORDS[int(rng.integers(len(BACKGROUND_WORDS)))],
        background_first=bool(rng.integers(4) == 0),
    )


def _join(phrases: list[str]) -> str:
    return phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]


def caption(scene: Scene, rng: np.random.Generator | None = None, style: Style | None = None) -> str:
    """Describe ``scene``: canonical without ``rng``/``style``, else a paraphrase (``style`` wins)."""
    if style is None:
        style = CANONICAL if rng is None else sample_style(rng, len(scene.objects))
    order = range(len(scene.objects)) if style.order is None else style.order
    if sorted(order) != list(range(len(scene.objects))):
        raise WorldError(f"style order {tuple(order)} is not a permutation of the scene's {len(scene.objects)} objects")
    objects = _join([
        f"a {o.size} {o.color} {o.shape} {style.preposition} {o.position}"
        for o in (scene.objects[i] for i in order)
    ])
    texture = f"{TEXTURES[scene.texture]} " if scene.texture else ""
    background = f"a {texture}{scene.background} background"
    if style.background_first:
        return f"{style.prefix}{background} with {objects}"
    return f"{style.prefix}{objects}, {style.background_word} {background}"


def restyle_for_edit(style: Style, kind: str, index: int | None, rng: np.random.Generator) -> Style:
    """The target's style for an edit of a scene captioned with ``style``: same words, same order.

    ``remove`` drops the removed object from the order; ``add`` mentions the new object (``index``
    in the target) at a random place in the order; other kinds keep the order. A style without an
    order (canonical) follows the target's object order, which edits keep (see ``edits``).
    """
    if style.order is None:
        return style
    order = style.order
    if kind == "remove":
        order = tuple(j - (j > index) for j in order if j != index)
    elif kind == "add":
        shifted = [j + (j >= index) for j in order]
        slot = int(rng.integers(len(shifted) + 1))
        order = tuple(shifted[:slot] + [index] + shifted[slot:])
    return replace(style, order=order)


def _alternatives(words) -> str:
    return "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))


_OBJECT_RE = re.compile(
    rf"\ba ({_alternatives(SIZES)}) ({_alternatives(COLORS)}) ({_alternatives(SHAPES)}) "
    rf"(?:in|at) the ({_alternatives(POSITIONS)})\b"
)
_TEXTURE_OF = {adjective: name for name, adjective in TEXTURES.items()}
_BACKGROUND_RE = re.compile(rf"\ba (?:({_alternatives(_TEXTURE_OF)}) )?({_alternatives(BACKGROUNDS)}) background\b")
_FILLER = {w for phrase in (*PREFIXES, *BACKGROUND_WORDS, "and", "with") for w in phrase.split()}


def object_spans(text: str) -> list[tuple[int, int, Obj]]:
    """``(start, end, object)`` of every object phrase in ``text`` (character offsets, in order).

    The phrase is ``a SIZE COLOR SHAPE in|at the POSITION``; matching ignores case.
    """
    return [(m.start(), m.end(), Obj(m[3], m[2], m[1], m[4])) for m in _OBJECT_RE.finditer(text.lower())]


def parse_caption(text: str) -> Scene:
    """The scene a caption describes, objects in the order mentioned; :class:`WorldError` if unreadable.

    Accepts every caption :func:`caption` writes (any style); anything left over besides the
    connecting words ("a picture of", "and", "on", "with", ...) is an error.
    """
    lowered = text.strip().lower()
    objects = [obj for _, _, obj in object_spans(lowered)]
    backgrounds = list(_BACKGROUND_RE.finditer(lowered))
    if not objects or len(backgrounds) != 1:
        raise WorldError(f"cannot parse caption {text!r}: need at least one object and exactly one background")
    rest = _BACKGROUND_RE.sub(" ", _OBJECT_RE.sub(" ", lowered)).replace(",", " ").split()
    unknown = [w for w in rest if w not in _FILLER]
    if unknown:
        raise WorldError(f"cannot parse caption {text!r}: unexpected words {' '.join(unknown)!r}")
    texture_word, background = backgrounds[0][1], backgrounds[0][2]
    return Scene(background, tuple(objects), _TEXTURE_OF.get(texture_word))
