"""FlowEdit's invariants on the tiny pipeline and on a linear stand-in model."""

import pytest
import torch

import editflow
from editflow.methods import EditRequest, get_method
from editflow.models.base import NFE, CallCounter, Cond, TokenGrid

FLOWEDIT = get_method("flowedit")


def _run(model, x, grid, src, tar, seed=0, **params):
    p = FLOWEDIT.params.for_family(model.family, **params)
    before = model.counter.total.copy()
    out = FLOWEDIT.run(model, EditRequest(x, grid, src, tar), p, torch.Generator().manual_seed(seed))
    return out, model.counter.total - before, p


@pytest.mark.parametrize("seed", [0, 1, 12345])
def test_equal_prompts_return_the_input(tiny, source_latent, seed):
    x, grid = source_latent
    out, _, _ = _run(tiny, x, grid, "a red circle", "a red circle", seed=seed, source_guidance=3.0, target_guidance=3.0)
    assert (out - x).abs().max().item() < 1e-5


def test_equal_prompts_with_averaging_return_the_input(tiny, source_latent):
    x, grid = source_latent
    out, _, _ = _run(tiny, x, grid, "a cat", "a cat", n_avg=3, steps=10, source_guidance=2.0, target_guidance=2.0)
    assert (out - x).abs().max().item() < 1e-5


def test_different_prompts_change_the_latent(tiny, source_latent):
    x, grid = source_latent
    out, _, _ = _run(tiny, x, grid, "a red circle", "a blue square")
    assert (out - x).abs().max().item() > 1e-2


def test_n_max_zero_returns_input(tiny, source_latent):
    x, grid = source_latent
    out, nfe, _ = _run(tiny, x, grid, "a red circle", "a blue square", n_max=0)
    assert torch.equal(out, x)
    assert nfe == NFE(0, 0)


@pytest.mark.parametrize("steps,n_max,n_min,n_avg", [(28, 24, 0, 1), (10, 8, 3, 1), (12, 12, 2, 3), (6, 5, 5, 2)])
def test_nfe_is_what_the_algorithm_implies(tiny, source_latent, steps, n_max, n_min, n_avg):
    x, grid = source_latent
    _, nfe, p = _run(tiny, x, grid, "a red circle", "a blue square", steps=steps, n_max=n_max, n_min=n_min, n_avg=n_avg)
    # (n_max - n_min) batched steps of 2 n_avg rows, then n_min target-only steps.
    assert nfe == NFE(calls=n_max, rows=2 * n_avg * (n_max - n_min) + n_min)
    assert FLOWEDIT.expected_nfe(p) == nfe


def test_default_n_max_keeps_the_paper_fraction(tiny):
    assert FLOWEDIT.params.for_family("flux").n_max == 24
    assert FLOWEDIT.params.for_family("flux", steps=14).n_max == 12
    assert FLOWEDIT.params.for_family("sd3").n_max == 33


def test_same_seed_same_output_different_seed_differs(tiny, source_latent):
    x, grid = source_latent
    a, _, _ = _run(tiny, x, grid, "a red circle", "a blue square", seed=3, steps=8)
    b, _, _ = _run(tiny, x, grid, "a red circle", "a blue square", seed=3, steps=8)
    c, _, _ = _run(tiny, x, grid, "a red circle", "a blue square", seed=4, steps=8)
    assert torch.equal(a, b)
    assert (a - c).abs().max().item() > 1e-4


def test_edit_api_is_bitwise_reproducible(tiny):
    from PIL import Image

    img = Image.new("RGB", (64, 48), (200, 40, 40))
    a = editflow.edit(tiny, img, "a red image", "a blue image", seed=5, steps=6)
    b = editflow.edit(tiny, img, "a red image", "a blue image", seed=5, steps=6)
    c = editflow.edit(tiny, img, "a red image", "a blue image", seed=6, steps=6)
    assert torch.equal(a.latents, b.latents) and a.image.tobytes() == b.image.tobytes()
    assert not torch.equal(a.latents, c.latents)
    assert a.nfe == FLOWEDIT.expected_nfe(FLOWEDIT.params.for_family("flux", steps=6))
    assert a.params["n_max"] == 5 and a.params["seed"] == 5 and a.seconds > 0 and a.peak_memory_bytes > 0


class LinearModel:
    """v = A z for the source prompt, B z for the target: FlowEdit's step is then closed-form."""

    family, name, guidance_distilled, default_guidance, pixel_multiple = "flux", "linear", False, 0.0, 16

    def __init__(self):
        self.counter = CallCounter()
        self.rows_per_call = []

    def encode_prompt(self, prompt):
        return Cond(torch.zeros(1, 1, 1), torch.zeros(1, 1), (prompt,))

    def schedule(self, steps, grid):
        return torch.linspace(1, 0, steps + 1)

    def noise(self, grid, generator, batch=1):
        return torch.randn(batch, grid.num_tokens, 4, generator=generator, dtype=torch.float64)

    def velocity(self, z, t, cond, grid, guidance=None, control=None):
        self.counter.record(z.shape[0])
        self.rows_per_call.append(cond.prompts)
        scale = torch.tensor([0.5 if p == "src" else 2.0 for p in cond.prompts], dtype=z.dtype)
        return scale[:, None, None] * z


@pytest.mark.parametrize("n_avg", [1, 4])
def test_n_avg_averages_that_many_noise_draws(n_avg):
    model, grid = LinearModel(), TokenGrid(16, 32, 1, 2)
    x = torch.randn(1, 2, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(9))
    # One edit step (steps = n_max = 1): t = 1 -> 0.
    out, nfe, _ = _run(model, x, grid, "src", "tar", seed=21, steps=1, n_max=1, n_avg=n_avg)
    gen = torch.Generator().manual_seed(21)
    eps = [model.noise(grid, gen) for _ in range(n_avg)]
    t = 1.0
    z_src = [(1 - t) * x + t * e for e in eps]
    # V_delta_k = 2 z_tar_k - 0.5 z_src_k with z_tar_k = z_src_k + (z_FE - x) = z_src_k at the first step
    v_delta = torch.stack([2.0 * z - 0.5 * z for z in z_src]).mean(0)
    torch.testing.assert_close(out, x + (0.0 - t) * v_delta)
    assert nfe == NFE(1, 2 * n_avg)
    assert model.rows_per_call[-1] == ("src", "tar") * n_avg


@pytest.mark.parametrize("bad", [dict(n_max=29), dict(n_min=5, n_max=4), dict(n_avg=0), dict(steps=0), dict(n_avg=1.5)])
def test_bad_parameters_are_rejected_with_their_name(bad):
    with pytest.raises(editflow.ParameterError) as err:
        FLOWEDIT.params.for_family("flux", **bad)
    assert any(k in str(err.value) for k in bad)


def test_n_min_tail_is_plain_target_denoising(tiny, source_latent):
    """With n_max = n_min the edit is SDEdit from the noised source with the target prompt."""
    x, grid = source_latent
    out, nfe, _ = _run(tiny, x, grid, "a red circle", "a blue square", seed=2, steps=8, n_max=3, n_min=3)
    assert nfe == NFE(3, 3)
    ts = tiny.schedule(8, grid)
    gen = torch.Generator().manual_seed(2)
    t = float(ts[5])
    z = (1 - t) * x + t * tiny.noise(grid, gen)
    tar = tiny.encode_prompt("a blue square")
    ref = editflow.solvers.euler(lambda z, s: tiny.velocity(z, s, tar, grid, guidance=5.5), z, ts[5:])
    torch.testing.assert_close(out, ref)
