"""The automatic (DiffEdit-style) edit mask."""

import numpy as np
import torch
from PIL import Image

import editflow
from editflow.masks import _close, auto_mask, edit_scores, token_mask_to_pixels
from editflow.models.base import NFE


def test_equal_prompts_give_an_empty_mask_in_one_call(tiny, source_latent):
    x, grid = source_latent
    before = tiny.counter.total.copy()
    mask = auto_mask(tiny, x, grid, "a red circle", "a red circle", torch.Generator().manual_seed(0), draws=4)
    assert mask.shape == (1, grid.num_tokens) and not mask.any()
    assert tiny.counter.total - before == NFE(1, 8)  # both prompts, all draws, one batched call


def test_scores_are_normalised_and_deterministic(tiny, source_latent):
    x, grid = source_latent
    a = edit_scores(tiny, x, grid, "a red circle", "a blue square", torch.Generator().manual_seed(1), draws=3)
    b = edit_scores(tiny, x, grid, "a red circle", "a blue square", torch.Generator().manual_seed(1), draws=3)
    assert torch.equal(a, b) and a.min() == 0 and a.max() == 1


def test_closing_fills_a_one_token_hole():
    m = torch.zeros(6, 6, dtype=torch.bool)
    m[1:5, 1:5] = True
    m[2, 2] = False
    closed = _close(m)
    expected = torch.zeros(6, 6, dtype=torch.bool)
    expected[1:5, 1:5] = True
    assert torch.equal(closed, expected)
    edge = torch.zeros(6, 6, dtype=torch.bool)
    edge[0:3, 0:2] = True  # a region on the border keeps its extent
    assert torch.equal(_close(edge), edge)


def test_auto_mask_beats_a_full_image_mask_on_shapes_edits():
    """IoU against the world's exact masks (the benchmark: 0.355 vs 0.167 over 100 edits; these 8
    held-out world-version-2 edits: 0.42 mean, 0.18 the lowest, a full-image mask 0.027). The bound
    is absolute: "twice a full-image mask" held at IoU 0.08."""
    from editflow import world
    from editflow.images import to_tensor
    from editflow.train.data import HELD_OUT_NAMESPACE, scene_rng

    model = editflow.load_model("shapes")
    grid = model.grid(64, 64)
    auto, full = [], []
    for i in range(8):
        ex = world.sample_edit(scene_rng(HELD_OUT_NAMESPACE, 9, i), ("color", "shape", "remove", "add")[i % 4], size=64,
                                version=2, split="held_out")
        x = model.encode_image(to_tensor(Image.fromarray(ex.source_image)))
        pixels = token_mask_to_pixels(auto_mask(model, x, grid, ex.source_prompt, ex.target_prompt,
                                                torch.Generator().manual_seed(i)), grid).numpy()
        auto.append((pixels & ex.mask).sum() / (pixels | ex.mask).sum())
        full.append(ex.mask.mean())
    assert np.mean(auto) >= 0.3 and min(auto) >= 0.15, (auto, full)
    assert np.mean(auto) > 5 * np.mean(full), (auto, full)


def test_edit_with_an_automatic_mask(tiny):
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    out = editflow.edit(tiny, image, "a red circle", "a blue square", method="kv_edit", seed=0, mask="auto",
                        steps=3, skip=0)
    assert 0 < out.stats["foreground_tokens"] <= 16
    again = editflow.edit(tiny, image, "a red circle", "a blue square", method="kv_edit", seed=0, mask="auto",
                          steps=3, skip=0)
    assert torch.equal(out.latents, again.latents)
