"""Write examples/shapes_scene.png, the main job's input: a world-version-2 scene (a large red circle
in the center, a small yellow square in the top left, gray background) whose uncaptioned detail
comes from numpy.random.default_rng([2026, 11, 30, 0]). Its scene graph is of the held-out split,
so the model never saw the source caption in training (the edit's target, the blue circle, is
of the train split).

    python scripts/make_example_scene.py [OUT.png]      # default: examples/shapes_scene.png
"""

import sys

import numpy as np
from PIL import Image

from editflow import world
from editflow.world.scene import sample_detail

OBJECTS = [("circle", "red", "large", "center"), ("square", "yellow", "small", "top left")]


def example_scene() -> world.Scene:
    rng = np.random.default_rng([2026, 11, 30, 0])
    objects = tuple(world.Obj(*o, **sample_detail(rng, o[2])) for o in OBJECTS)
    scene = world.Scene("gray", objects, version=2, grain=int(rng.integers(2**31)))
    assert world.split_of(scene) == "held_out"
    return scene


if __name__ == "__main__":
    scene = example_scene()
    Image.fromarray(world.render(scene, 64)).save(sys.argv[1] if len(sys.argv) > 1 else "examples/shapes_scene.png")
    print(world.caption(scene))
