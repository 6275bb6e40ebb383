"""Paste examples: an object of one scene put into the empty cell of another (ground truth for
subject-driven methods such as Personalize Anything).

The reference scene holds the object; the base scene has the object's cell empty and the same
background (latent tokens of this world's VAE are not context-free: an object's tokens cut from one
background decode wrongly on another, so a cross-background paste has no clean ground truth);
the expected result is the base scene with the object added.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from .captions import caption
from .render import object_mask, render
from .scene import Obj, Scene, sample_scene


@dataclass(frozen=True)
class PasteExample:
    reference: Scene
    index: int  # of the pasted object in reference.objects
    base: Scene
    result: Scene  # base with the object added

    @property
    def obj(self) -> Obj:
        return self.reference.objects[self.index]

    def images(self, size: int = 64) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(reference, base, expected result)`` renders."""
        return render(self.reference, size), render(self.base, size), render(self.result, size)

    def object_mask(self, size: int = 64) -> np.ndarray:
        """Bool ``[size, size]``: the object's pixels (in the reference and in the result)."""
        return object_mask(self.reference, self.index, size)

    @property
    def prompts(self) -> tuple[str, str, str]:
        """Canonical captions of the reference, the base and the result."""
        return caption(self.reference), caption(self.base), caption(self.result)


def sample_paste(rng: np.random.Generator, version: int = 1) -> PasteExample:
    """A random reference scene (1-3 objects), one of its objects, and a base scene with 1-3 other
    objects, that cell empty, and the reference's background (in version 2 its grain too; the
    pasted object keeps its offset, rotation and scale)."""
    reference = sample_scene(rng, version=version)
    index = int(rng.integers(len(reference.objects)))
    obj = reference.objects[index]
    while True:
        other = sample_scene(rng, version=version)
        objects = tuple(o for o in other.objects if o.position != obj.position)
        if objects:
            base = replace(reference, objects=objects)
            return PasteExample(reference, index, base, replace(base, objects=(*objects, obj)).in_reading_order())
