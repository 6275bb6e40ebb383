"""Personalize Anything: token placement, NFE, errors, and outpainting on the shapes model."""

import numpy as np
import pytest
import torch
from PIL import Image

import editflow
from editflow.errors import EditflowError, ParameterError
from editflow.methods import EditRequest, get_method
from editflow.methods.personalize_anything import shifted
from editflow.models.base import TokenGrid

PA = get_method("personalize_anything")


def test_shifted_moves_tokens_and_drops_the_ones_off_the_grid():
    grid = TokenGrid(64, 64, 4, 4)
    mask = torch.zeros(1, 16, dtype=torch.bool)
    mask[0, [5, 6, 7]] = True  # row 1, cols 1..3
    src, dst = shifted(mask, grid, dx=1, dy=2)
    assert src.tolist() == [5, 6] and dst.tolist() == [14, 15]  # row 1 -> 3; col 3 + 1 falls off
    src, dst = shifted(mask, grid, 0, 0)
    assert torch.equal(src, dst)


def test_nfe_and_the_replacement_phase(tiny, source_latent):
    x, grid = source_latent
    mask = torch.zeros(1, grid.num_tokens, dtype=torch.bool)
    mask[0, :4] = True
    p = PA.params.for_family("flux", steps=5, tau=0.0)  # replacement on every step
    before = tiny.counter.total.copy()
    out = PA.run(tiny, EditRequest(x, grid, "a cat", "a dog", mask=mask), p, torch.Generator().manual_seed(0))
    assert tiny.counter.total - before == PA.expected_nfe(p) == editflow.models.base.NFE(5, 10)
    # the last step starts from the reference's own tokens at t_{T-1}: they end close to the reference
    far = PA.run(tiny, EditRequest(x, grid, "a cat", "a dog", mask=mask), PA.params.for_family("flux", steps=5, tau=1.0),
                 torch.Generator().manual_seed(0))
    assert (out[:, :4] - x[:, :4]).abs().mean() < (far[:, :4] - x[:, :4]).abs().mean()


def test_errors_name_the_problem(tiny, source_latent):
    x, grid = source_latent
    with pytest.raises(ParameterError, match="needs a mask"):
        PA.run(tiny, EditRequest(x, grid, "a", "b"), PA.params.for_family("flux", steps=2), None)
    mask = torch.zeros(1, grid.num_tokens, dtype=torch.bool)
    mask[0, 0] = True
    with pytest.raises(ParameterError, match="off the image"):
        PA.run(tiny, EditRequest(x, grid, "a", "b", mask=mask), PA.params.for_family("flux", steps=2, shift_x=-1), None)
    image = Image.new("RGB", (64, 64))
    with pytest.raises(EditflowError, match="needs a mask"):
        editflow.edit(tiny, image, "a", "b", method="personalize_anything", steps=2)


def test_outpainting_keeps_the_known_region_on_the_shapes_model():
    """Known centre pasted until t = 0.1 (the paper's inpaint/outpaint mode): measured on held-out
    world-version-2 scenes 39.2 dB mean over 10 (min 34.7; these 3: 42.0); asserted >= 30 dB over 3."""
    from editflow import world
    from editflow.train.data import HELD_OUT_NAMESPACE, scene_rng

    model = editflow.load_model("shapes")
    known = np.zeros((64, 64), bool)
    known[16:48, 16:48] = True
    values = []
    for i in range(3):
        scene = world.sample_scene(scene_rng(HELD_OUT_NAMESPACE, 23, i), version=2, split="held_out")
        image = world.render(scene, 64)
        r = editflow.edit(model, Image.fromarray(image), world.caption(scene), world.caption(scene),
                          method="personalize_anything", seed=i, mask=known, tau=0.1)
        values.append(world.psnr(np.asarray(r.image), image, known))
    assert np.mean(values) >= 30.0, values


def test_patch_perturbation_shuffles_within_3x3_blocks(tiny, source_latent):
    from editflow.methods.personalize_anything import local_shuffle

    grid = TokenGrid(96, 96, 6, 6)
    src = torch.arange(36)
    out = local_shuffle(src, grid, torch.Generator().manual_seed(0))
    assert sorted(out.tolist()) == list(range(36)) and not torch.equal(out, src)
    block = lambda i: (i // 6 // 3, i % 6 // 3)  # noqa: E731
    assert all(block(a) == block(b) for a, b in zip(src.tolist(), out.tolist()))
    assert torch.equal(out, local_shuffle(src, grid, torch.Generator().manual_seed(0)))
    x, g4 = source_latent
    mask = torch.ones(1, g4.num_tokens, dtype=torch.bool)
    a = PA.run(tiny, EditRequest(x, g4, "a", "b", mask=mask), PA.params.for_family("flux", steps=3, tau=0.0, perturb=True),
               torch.Generator().manual_seed(1))
    b = PA.run(tiny, EditRequest(x, g4, "a", "b", mask=mask), PA.params.for_family("flux", steps=3, tau=0.0),
               torch.Generator().manual_seed(1))
    assert not torch.equal(a, b)


def test_grow_tokens_dilates_and_erodes_on_the_token_grid():
    from editflow.masks import grow_tokens

    grid = TokenGrid(40, 40, 5, 5)
    mask = torch.zeros(5, 5, dtype=torch.bool)
    mask[1:4, 1:4] = True
    assert grow_tokens(mask.reshape(1, -1), grid, 1).sum() == 25
    eroded = grow_tokens(mask.reshape(1, -1), grid, -1).reshape(5, 5)
    assert eroded.sum() == 1 and eroded[2, 2]
    assert torch.equal(grow_tokens(mask.reshape(1, -1), grid, 0).reshape(5, 5), mask)
    corner = torch.zeros(5, 5, dtype=torch.bool)
    corner[:2, :2] = True  # touches the border: eroding keeps the border side
    assert grow_tokens(corner.reshape(1, -1), grid, -1).reshape(5, 5).nonzero().tolist() == [[0, 0]]


def test_several_subjects_later_ones_win_and_each_adds_a_row(tiny, source_latent):
    """With tau = 0 every step starts from the pasted tokens, so the result lands near each
    subject's own tokens where it is pasted; where two masks overlap the later subject wins."""
    from editflow.methods import SubjectTokens

    x, grid = source_latent
    other = torch.flip(x, dims=[1]) + 2.0  # a second reference, far from the first
    everything = torch.ones(1, grid.num_tokens, dtype=torch.bool)
    part = torch.zeros(1, grid.num_tokens, dtype=torch.bool)
    part[0, :3] = True
    p = PA.params.for_family("flux", steps=6, tau=0.0)
    before = tiny.counter.total.copy()
    req = EditRequest(x, grid, "a cat", "a cat and a dog", mask=everything, subjects=[SubjectTokens(other, part, "a dog")])
    out = PA.run(tiny, req, p, torch.Generator().manual_seed(0))
    assert tiny.counter.total - before == editflow.models.base.NFE(6, 3 * 6)  # one more row per subject
    near = lambda a, b: (a - b).abs().mean()  # noqa: E731
    assert near(out[:, :3], other[:, :3]) < 0.5 * near(out[:, :3], x[:, :3])
    assert near(out[:, 3:], x[:, 3:]) < 0.5 * near(out[:, 3:], other[:, 3:])
    with pytest.raises(ParameterError, match="subject 1 is not on the image's token grid"):
        PA.run(tiny, EditRequest(x, grid, "a", "b", mask=everything, subjects=[SubjectTokens(other[:, :4], part[:, :4])]),
               p, torch.Generator().manual_seed(0))
    with pytest.raises(ParameterError, match="erodes the whole subject of subject 1"):
        PA.run(tiny, EditRequest(x, grid, "a", "b", mask=everything, subjects=[SubjectTokens(other, part)]),
               PA.params.for_family("flux", steps=2, mask_grow=-1), torch.Generator().manual_seed(0))


def test_subjects_through_the_api(tiny):
    image = Image.new("RGB", (64, 64), (200, 30, 30))
    small = Image.new("RGB", (32, 32), (30, 30, 200))  # resized to the main image's working size
    known = np.zeros((64, 64), bool)
    known[:, :32] = True
    subject = editflow.Subject(small, ~known, "a blue square", tau=0.0)
    r = editflow.edit(tiny, image, "a red square", "a red and a blue square", method="personalize_anything", steps=2,
                      mask=known, subjects=[subject])
    assert r.nfe == editflow.models.base.NFE(2, 6)
    with pytest.raises(EditflowError, match="flowedit takes no extra subjects"):
        editflow.edit(tiny, image, "a", "b", method="flowedit", subjects=[subject])
    with pytest.raises(EditflowError, match=r"editflow.Subject\(image, mask"):
        editflow.edit(tiny, image, "a", "b", method="personalize_anything", mask=known, subjects=[small])


def test_pasting_an_object_into_another_scene_on_the_shapes_model():
    """Multi-subject inpainting (benchmarks/personalize_paste.py, 50 held-out cases): the base
    scene is the main reference with all but the object's tokens known (tau 0.1), the reference
    scene a second subject (tau 0.1), the prompt names the result. Measured on the world-version-2
    model: 18/50 right with the subject and 0/50 without it (the prompt alone does not put the
    object into the hole), so the pasted reference causes it; pasting the reference's own tokens
    gets 17/50, this model's ceiling here. Asserted >= 12/50 and <= 2/10."""
    from benchmarks.personalize_paste import SEED_OFFSET, paste, right
    from editflow import world
    from editflow.train.data import HELD_OUT_NAMESPACE, scene_rng

    model = editflow.load_model("shapes")
    cases = [world.sample_paste(scene_rng(HELD_OUT_NAMESPACE, SEED_OFFSET, i), 2) for i in range(50)]
    with_subject = sum(right(paste(model, ex, ex.prompts[2], 0.1, i), ex.obj) for i, ex in enumerate(cases))
    without = sum(right(paste(model, ex, ex.prompts[2], None, i), ex.obj) for i, ex in enumerate(cases[:10]))
    assert with_subject >= 12 and without <= 2, (with_subject, without)
