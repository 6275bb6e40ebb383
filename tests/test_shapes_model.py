"""The built-in trained shapes model: a genuine FluxPipeline folder that draws and edits its world.

Quality here is checked on a few held-out scenes with bounds well under what
``benchmarks/shapes_quality.py`` measured on 200 (see the folder's MODEL.md); a model that lost
its text conditioning, its VAE or its editing would fail them.
"""

import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import editflow
from editflow import world
from editflow.images import to_pil, to_tensor
from editflow.models.zoo import SHAPES_DIR
from editflow.train.data import HELD_OUT_NAMESPACE, scene_rng

# Lower bounds on a few held-out scenes, set well under the benchmark in MODEL.md (200 captions:
# colour 94%, shape 84%, position 94%; 100 colour edits: FlowEdit right 92%, 35.9 dB outside the mask).
COLOR_BOUND, SHAPE_BOUND, POSITION_BOUND = 0.75, 0.6, 0.75
EDIT_BOUND = 0.6


@pytest.fixture(scope="module")
def shapes():
    return editflow.load_model("shapes", device="cpu")


def test_folder_is_safetensors_only_small_and_documented():
    files = [p for p in SHAPES_DIR.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) < 60 * 2**20
    assert not [p for p in files if p.suffix in (".bin", ".pt", ".pth", ".pkl", ".ckpt")]
    assert len([p for p in files if p.suffix == ".safetensors"]) == 4  # transformer, vae, two text encoders
    card = (SHAPES_DIR / "MODEL.md").read_text()
    for measured in ("object colour accuracy", "object shape accuracy", "object position accuracy",
                     "reconstruction PSNR", "colour edit, flowedit", "colour edit, ode_inversion"):
        assert measured in card, measured


def test_loads_offline_with_diffusers_in_a_fresh_process():
    code = ("import sys; from diffusers import FluxPipeline; p = FluxPipeline.from_pretrained(sys.argv[1]); "
            "print(type(p).__name__, type(p.transformer).__name__, p.vae.config.latent_channels)")
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    out = subprocess.run([sys.executable, "-c", code, str(SHAPES_DIR)], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[-3:] == ["FluxPipeline", "FluxTransformer2DModel", "16"]


def test_is_the_default_model(shapes):
    assert editflow.load_model(device="cpu").name == "shapes" == shapes.name


def _roundtrip(model, image: np.ndarray) -> np.ndarray:
    return np.asarray(to_pil(model.decode(model.encode_image(to_tensor(Image.fromarray(image))), model.grid(64, 64))))


def test_reconstruction_of_held_out_scenes_is_above_30_db(shapes):
    for i in range(4):
        image = world.render(world.sample_scene(scene_rng(HELD_OUT_NAMESPACE, 99, i)), 64)
        assert world.psnr(_roundtrip(shapes, image), image) > 30.0


def test_draws_held_out_captions(shapes):
    scores = []
    for i in range(12):
        scene = world.sample_scene(scene_rng(HELD_OUT_NAMESPACE, 98, i))
        image = editflow.generate(shapes, world.caption(scene), 64, 64, steps=28, seed=i)
        scores.append(world.read_scene_accuracy(np.asarray(image), scene))
    mean = {k: float(np.mean([s[k] for s in scores])) for k in ("color", "shape", "position", "background_correct")}
    assert mean["color"] >= COLOR_BOUND and mean["position"] >= POSITION_BOUND, mean
    assert mean["shape"] >= SHAPE_BOUND and mean["background_correct"] >= 0.9, mean


def test_flowedit_changes_the_colour_and_keeps_the_rest(shapes):
    right, outside = [], []
    for i in range(6):
        ex = world.sample_edit(scene_rng(HELD_OUT_NAMESPACE, 97, i), "color", size=64)
        result = editflow.edit(shapes, Image.fromarray(ex.source_image), ex.source_prompt, ex.target_prompt,
                               method="flowedit", seed=i)
        scores = world.edit_scores(ex, np.asarray(result.image))
        right.append(scores["color_correct"])
        outside.append(scores["psnr_outside_mask_vs_source"])
    assert np.mean(right) >= EDIT_BOUND and np.mean(outside) > 25.0, (right, outside)


def test_flowedit_with_equal_prompts_returns_the_source(shapes):
    ex = world.sample_edit(scene_rng(HELD_OUT_NAMESPACE, 96, 0), "color", size=64)
    result = editflow.edit(shapes, Image.fromarray(ex.source_image), ex.source_prompt, ex.source_prompt,
                           method="flowedit", seed=0)
    # FlowEdit's velocity difference is zero, so the latent is the source's: output = VAE round trip
    assert np.array_equal(np.asarray(result.image), _roundtrip(shapes, ex.source_image))
