"""Edits: one change to a scene graph, with source/target images, prompts and the exact edit mask.

Kinds and what they change (everything else is kept, objects keep their order):

- ``color``, ``shape``, ``size``: one attribute of object ``index`` (a different value).
- ``background``: the background colour (the texture stays); ``index`` is None.
- ``add``: a random new object on a free cell, inserted into the tuple in reading order;
  ``index`` is its place in the *target*. Needs a free cell.
- ``remove``: object ``index`` goes. Needs at least 2 objects (scenes are never empty).
- ``move``: object ``index`` goes to a random free cell. Needs a free cell.

The mask (:func:`edit_mask`) is the union of the changed regions: for object edits the union of the
object's masks (:func:`~editflow.world.render.object_mask`) in source and target (both cells for
``move``); for ``background`` every pixel not fully covered by objects (the objects' anti-aliased
rims included, since they blend with the background). Rendering box-filters 4x supersampling, so
these masks are exact: the target equals the source on every pixel outside the mask, with no
dilation.

Version 2 keeps every uncaptioned detail the edit does not name: the edited object keeps its
offset, rotation and scale through ``color``, ``shape`` and ``move`` (a moved object keeps its
offset within its new cell); a ``size`` edit keeps rotation and scale and scales the offset by the
ratio of the two sizes' offset bounds (so it stays inside the cell); an added object gets random
detail (no method can know it, so its structure is not scored); the background's grain is never
changed, by a background edit neither.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from .captions import caption, restyle_for_edit, sample_style
from .render import background_mask, object_mask, render
from .scene import (
    BACKGROUNDS,
    COLORS,
    MAX_OBJECTS,
    MAX_SPLIT_TRIES,
    SHAPES,
    SIZES,
    Scene,
    WorldError,
    check_split,
    offset_bound,
    sample_object,
    sample_scene,
    split_of,
)

EDIT_KINDS: tuple[str, ...] = ("color", "shape", "size", "background", "add", "remove", "move")


@dataclass(frozen=True)
class Edit:
    kind: str
    source: Scene
    target: Scene
    index: int | None  # the changed object: in source, or in target for "add"; None for "background"


@dataclass
class EditExample:
    kind: str
    source_image: np.ndarray  # [H, W, 3] uint8
    target_image: np.ndarray  # [H, W, 3] uint8, the ground truth
    source_prompt: str
    target_prompt: str
    mask: np.ndarray  # [H, W] bool, where the target may differ from the source
    edit: Edit


def check_kind(kind: str) -> str:
    if kind not in EDIT_KINDS:
        raise WorldError(f"unknown edit kind {kind!r}: choose from {', '.join(EDIT_KINDS)}")
    return kind


def _other(rng: np.random.Generator, options, current: str) -> str:
    rest = [o for o in options if o != current]
    return rest[int(rng.integers(len(rest)))]


def make_edit(scene: Scene, kind: str, rng: np.random.Generator) -> Edit:
    """Change exactly one thing of ``scene`` (see the module docstring); :class:`WorldError` if impossible."""
    check_kind(kind)
    objects = list(scene.objects)
    if kind == "background":
        return Edit(kind, scene, replace(scene, background=_other(rng, BACKGROUNDS, scene.background)), None)
    free = scene.free_positions()
    if kind in ("add", "move") and not free:
        raise WorldError(f"cannot {kind}: all {MAX_OBJECTS} cells are taken")
    if kind == "add":
        new = sample_object(rng, free[int(rng.integers(len(free)))], scene.version)
        index = sum(o.cell < new.cell for o in objects)  # reading-order slot (exact when objects are sorted)
        objects.insert(index, new)
        return Edit(kind, scene, replace(scene, objects=tuple(objects)), index)
    if kind == "remove" and len(objects) < 2:
        raise WorldError("cannot remove the only object: a scene keeps at least one")
    index = int(rng.integers(len(objects)))
    old = objects[index]
    if kind == "remove":
        del objects[index]
    elif kind == "move":
        objects[index] = replace(old, position=free[int(rng.integers(len(free)))])
    else:  # kind names the attribute
        options = {"color": COLORS, "shape": SHAPES, "size": SIZES}[kind]
        value = _other(rng, options, getattr(old, kind))
        if kind == "size":  # the offset scales with the bound, so the object stays in its cell
            ratio = offset_bound(value, old.scale) / offset_bound(old.size, old.scale)
            objects[index] = replace(old, size=value, dx=old.dx * ratio, dy=old.dy * ratio)
        else:
            objects[index] = replace(old, **{kind: value})
    return Edit(kind, scene, replace(scene, objects=tuple(objects)), index)


def edit_mask(edit: Edit, size: int = 64) -> np.ndarray:
    """Bool ``[size, size]``: the union of the regions ``edit`` changes (exact, see the module docstring)."""
    if edit.kind == "background":
        return background_mask(edit.source, size)
    mask = np.zeros((size, size), dtype=bool)
    if edit.kind != "add":
        mask |= object_mask(edit.source, edit.index, size)
    if edit.kind != "remove":
        mask |= object_mask(edit.target, edit.index, size)
    return mask


def make_example(edit: Edit, size: int = 64, rng: np.random.Generator | None = None) -> EditExample:
    """Render ``edit`` and caption it: canonical prompts without ``rng``, else one paraphrase style for both."""
    if rng is None:
        source_prompt, target_prompt = caption(edit.source), caption(edit.target)
    else:
        style = sample_style(rng, len(edit.source.objects))
        source_prompt = caption(edit.source, style=style)
        target_prompt = caption(edit.target, style=restyle_for_edit(style, edit.kind, edit.index, rng))
    return EditExample(
        kind=edit.kind,
        source_image=render(edit.source, size),
        target_image=render(edit.target, size),
        source_prompt=source_prompt,
        target_prompt=target_prompt,
        mask=edit_mask(edit, size),
        edit=edit,
    )


def sample_edit(
    rng: np.random.Generator,
    kind: str | None = None,
    size: int = 64,
    textures: bool = False,
    paraphrase: bool = False,
    version: int = 1,
    split: str | None = None,
) -> EditExample:
    """A random scene (2-3 objects for ``remove``, else 1-3), a random edit of ``kind`` (any if None), rendered.

    Prompts are canonical captions, or with ``paraphrase`` one random style for source and target.
    With ``split`` both the source and the target scene belong to it (redrawn until they do).
    """
    if kind is None:
        kind = EDIT_KINDS[int(rng.integers(len(EDIT_KINDS)))]
    check_kind(kind)
    check_split(split)
    for _ in range(MAX_SPLIT_TRIES):
        scene = sample_scene(rng, min_objects=2 if kind == "remove" else 1, max_objects=3, textures=textures,
                             version=version, split=split)
        edit = make_edit(scene, kind, rng)
        if split is None or split_of(edit.target) == split:
            return make_example(edit, size, rng if paraphrase else None)
    raise WorldError(f"no {kind} edit with both scenes in {split} in {MAX_SPLIT_TRIES} draws")
