"""The 2025 methods (UniEdit-Flow, DNAEdit, FlowAlign): counted NFE, the identities their math
gives, transcriptions of the released update lines, determinism, and where they run."""

import numpy as np
import pytest
import torch
from PIL import Image

import editflow
from editflow.errors import ParameterError
from editflow.methods import EditRequest, get_method
from editflow.methods.uniedit import velocity_mask
from editflow.models.base import NFE, Cond
from editflow.solvers import euler, get_solver, inversion_times

UNIEDIT, DNAEDIT, FLOWALIGN = get_method("uniedit"), get_method("dnaedit"), get_method("flowalign")


def _run(method, model, x, grid, src, tar, seed=0, **params):
    p = method.params.for_family(model.family, **params)
    before = model.counter.total.copy()
    out = method.run(model, EditRequest(x, grid, src, tar), p, torch.Generator().manual_seed(seed))
    return out, model.counter.total - before, p


def _v(model, prompt, grid, guidance):
    cond = model.encode_prompt(prompt)
    return lambda z, t: model.velocity(z, t, cond, grid, guidance=guidance)


# -- UniEdit-Flow ----------------------------------------------------------------------------


@pytest.mark.parametrize("steps,alpha,solver", [(15, 0.6, "uni_inv"), (8, 0.6, "uni_inv"), (10, 1.0, "uni_inv"),
                                                (6, 0.5, "euler"), (5, 0.0, "uni_inv")])
def test_uniedit_nfe_is_the_formula(tiny, source_latent, steps, alpha, solver):
    x, grid = source_latent
    _, nfe, p = _run(UNIEDIT, tiny, x, grid, "a red circle", "a blue square", steps=steps, alpha=alpha, solver=solver)
    k = round(alpha * steps)  # 15 x 0.6 -> 9 (the paper's 28 rows); 8 x 0.6 -> 5, as the FLUX fork rounds
    inv = (k + 1 if k else 0) if solver == "uni_inv" else k
    assert nfe == NFE(calls=inv + k, rows=inv + 2 * k) == UNIEDIT.expected_nfe(p)
    if (steps, alpha) == (15, 0.6):
        assert nfe == NFE(19, 28)


@pytest.mark.parametrize("mask_stat", ["abs", "signed"])
def test_uniedit_equal_prompts_return_the_inversions_reconstruction(tiny, source_latent, mask_stat):
    """g = 0: the mask is 0 (not NaN) and the edit is Euler sampling with the source prompt from
    Uni-Inv's latent at ts[N - K]."""
    x, grid = source_latent
    out, _, p = _run(UNIEDIT, tiny, x, grid, "a red circle", "a red circle", steps=10, alpha=0.6, mask_stat=mask_stat)
    ts = tiny.schedule(10, grid)[4:]
    z = get_solver("uni_inv")(_v(tiny, "", grid, 1.0), x, inversion_times(ts))
    reconstruction = euler(_v(tiny, "a red circle", grid, 1.0), z, ts)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, reconstruction, atol=1e-5, rtol=0)
    assert (out - x).abs().max() > 1e-3  # the reconstruction is not the input: "" was inverted, not the prompt


def test_uni_inv_reconstructs_better_than_euler_inversion(tiny, source_latent):
    """Inverting with the source prompt, equal prompts: Uni-Inv's round trip is closer to the input
    than Euler inversion's (its O(h^2) against O(h))."""
    x, grid = source_latent
    err = {}
    for solver in ("uni_inv", "euler"):
        out, _, _ = _run(UNIEDIT, tiny, x, grid, "a cat", "a cat", steps=12, alpha=1.0, solver=solver,
                         invert_with_source_prompt=True)
        err[solver] = (out - x).pow(2).mean().sqrt().item()
    assert err["uni_inv"] < err["euler"] / 2, err


class StandIn:
    """v = a_prompt * z, one scalar per prompt: Uni-Edit's step is closed-form."""

    family, name, guidance_distilled, default_guidance, pixel_multiple = "flux", "stand-in", True, 1.0, 16
    scale = {"": 0.1, "src": 0.5, "tar": 2.0}

    def __init__(self, family="flux"):
        self.family = family
        self.counter = editflow.models.base.CallCounter()

    def encode_prompt(self, prompt):
        return Cond(torch.zeros(1, 1, 1), torch.zeros(1, 1), (prompt,))

    def schedule(self, steps, grid):
        return torch.linspace(1, 0, steps + 1, dtype=torch.float64)

    def velocity(self, z, t, cond, grid, guidance=None, control=None):
        self.counter.record(z.shape[0])
        a = torch.tensor([self.scale[p] for p in cond.expand(z.shape[0]).prompts], dtype=z.dtype)
        return a[:, None, None] * z * (1 + torch.arange(z.shape[-1], dtype=z.dtype))  # channels differ


@pytest.mark.parametrize("family", ["flux", "sd3"])
def test_uniedit_step_is_the_released_update(family):
    """One inverted and one edited step (N = 2, alpha = 0.5) against the code's lines: the mask
    from the channel mean (|g| on FLUX tokens, signed g on SD3 latent pixels), min-max per sample,
    then x += omega dt (1 + m) g + dt (m v_tar + (1 - m) v_src)."""
    model, grid = StandIn(family), editflow.models.base.TokenGrid(32, 32, 2, 2)
    x = torch.randn(1, 4, 8, generator=torch.Generator().manual_seed(0))
    out, nfe, p = _run(UNIEDIT, model, x, grid, "src", "tar", steps=2, alpha=0.5, omega=5.0)
    assert nfe == NFE(3, 4)
    # Uni-Inv 0 -> 0.5 with the empty prompt, then one Uni-Edit step 0.5 -> 0
    v = lambda z, prompt: model.scale[prompt] * z * (1 + torch.arange(8, dtype=z.dtype))  # noqa: E731
    u0 = v(x, "")
    z = x + 0.5 * v(x + 0.5 * u0, "")
    vs, vt = v(z, "src"), v(z, "tar")
    g = vt - vs
    if family == "flux":
        a = g.abs().mean(-1, keepdim=True)
    else:
        a = g.view(1, 4, 2, 4).mean(2, keepdim=True)  # 2 latent channels x 2x2 pixels per token
    m = (a - a.min()) / (a.max() - a.min())
    m = m if family == "flux" else m.expand(1, 4, 2, 4).reshape(1, 4, 8)
    dt = -0.5
    torch.testing.assert_close(out, z + 5.0 * dt * (1 + m) * g + dt * (m * vt + (1 - m) * vs))


def test_velocity_mask_is_normalised_per_sample():
    g = torch.randn(3, 16, 64, generator=torch.Generator().manual_seed(1))
    g[2] = 0
    for family in ("flux", "sd3"):
        m = velocity_mask(g, family, "abs")
        assert m.shape[:2] == (3, 16) and torch.isfinite(m).all()
        assert torch.allclose(m[:2].flatten(1).amin(1), torch.zeros(2)) and torch.allclose(m[:2].flatten(1).amax(1), torch.ones(2))
        assert torch.equal(m[2], torch.zeros_like(m[2]))
    sd3 = velocity_mask(g, "sd3", "signed")
    assert sd3.shape == g.shape and sd3.view(3, 16, 16, 4).std(2).max() == 0  # one value per latent pixel


# -- DNAEdit -----------------------------------------------------------------------------------


@pytest.mark.parametrize("steps,t_start", [(28, None), (10, 3), (6, 0)])
def test_dnaedit_nfe_is_the_formula(tiny, source_latent, steps, t_start):
    x, grid = source_latent
    _, nfe, p = _run(DNAEDIT, tiny, x, grid, "a red circle", "a blue square", steps=steps, t_start=t_start)
    k = steps - p.t_start
    assert nfe == NFE(2 * k, 2 * k) == DNAEDIT.expected_nfe(p)
    if steps == 28:
        assert p.t_start == 4 and nfe == NFE(48, 48)


def test_dnaedit_equal_prompts_at_mvg_1_return_the_input(tiny, source_latent):
    x, grid = source_latent
    same = dict(steps=8, source_guidance=2.0, target_guidance=2.0)
    out, _, _ = _run(DNAEDIT, tiny, x, grid, "a red circle", "a red circle", mvg=1.0, **same)
    assert torch.equal(out, x)
    near, _, _ = _run(DNAEDIT, tiny, x, grid, "a red circle", "a red circle", mvg=0.8, **same)
    # mvg < 1 pulls towards the average source velocity, not the local one: close, not equal
    assert 1e-6 < (near - x).abs().max() < 0.5 * (x.abs().max())
    edited, _, _ = _run(DNAEDIT, tiny, x, grid, "a red circle", "a blue square", mvg=1.0, **same)
    assert (edited - x).abs().max() > 1e-2


def test_dnaedit_is_the_released_loop(tiny, source_latent):
    """The released DNAEdit_FLUX loop, line by line in editflow's time (noise aligned in place,
    the look-ahead residual d added to the edit latent), agrees with the module to 1e-5."""
    x, grid = source_latent
    out, _, p = _run(DNAEDIT, tiny, x, grid, "a red circle", "a blue square", seed=7, steps=10)
    ts = tiny.schedule(10, grid).tolist()
    eps = tiny.noise(grid, torch.Generator().manual_seed(7)).float()
    src, tar = _v(tiny, "a red circle", grid, p.source_guidance), _v(tiny, "a blue square", grid, p.target_guidance)
    z, lasts, ds, vs = x.clone(), [], [], []
    for n in range(10, p.t_start, -1):  # inversion: t_curr = ts[n] (cleaner), t_prev = ts[n - 1]
        a, b = ts[n], ts[n - 1]
        x_hat = z + (b - a) / (1 - a) * (eps - z)
        v = src(x_hat, b)
        delta_v = (x_hat - z) / (b - a) - v
        z_new = x_hat - (b - a) * delta_v
        ds.append((b - a) * delta_v)
        eps = eps - (1 - a) * delta_v
        z = z_new
        lasts.append(z)
        vs.append(v)
    ds, vs = ds[::-1], vs[::-1]
    y, r = lasts[-1], x.clone()
    for i, k in enumerate(range(p.t_start, 10)):  # editing: t = ts[k], t' = ts[k + 1]
        t, t_next = ts[k], ts[k + 1]
        v_tar = tar(y + ds[i], t)
        r = r + (t_next - t) * (v_tar - vs[i])
        v = p.mvg * v_tar + (1 - p.mvg) * (y - r) / t
        y = y + (t_next - t) * v
    torch.testing.assert_close(out, y, atol=1e-5, rtol=0)


# -- FlowAlign ---------------------------------------------------------------------------------


@pytest.mark.parametrize("steps,n_max", [(33, None), (8, 5), (4, 0)])
def test_flowalign_nfe_is_the_formula(tiny, source_latent, steps, n_max):
    x, grid = source_latent
    _, nfe, p = _run(FLOWALIGN, tiny, x, grid, "a red circle", "a blue square", steps=steps, n_max=n_max)
    n = steps if n_max is None else n_max
    assert nfe == NFE(n, 3 * n) == FLOWALIGN.expected_nfe(p)


@pytest.mark.parametrize("cfg", [1.0, 13.5])
def test_flowalign_equal_prompts_return_the_input(tiny, source_latent, cfg):
    x, grid = source_latent
    out, _, _ = _run(FLOWALIGN, tiny, x, grid, "a red circle", "a red circle", steps=6, cfg=cfg, seed=3)
    assert torch.equal(out, x)


def test_flowalign_is_the_released_update(tiny, source_latent):
    """SD3FlowAlign.sample's lines (three separate calls, the code's order of operations) in
    editflow's time agree with the batched module to 1e-5."""
    x, grid = source_latent
    out, _, p = _run(FLOWALIGN, tiny, x, grid, "a red circle", "a blue square", seed=5, steps=6, cfg=4.0)
    ts = tiny.schedule(6, grid).tolist()
    gen = torch.Generator().manual_seed(5)
    src, tar = _v(tiny, "a red circle", grid, 1.0), _v(tiny, "a blue square", grid, 1.0)
    xt = x.clone()
    for i in range(6):
        sigma, sigma_next = ts[i], ts[i + 1]
        noise = tiny.noise(grid, gen)
        qt = (1 - sigma) * x + sigma * noise
        pt = xt + qt - x
        vpc, vpn = tar(pt, sigma), src(pt, sigma)
        vp = vpn + 4.0 * (vpc - vpn)
        vq = src(qt, sigma)
        xt = xt + (sigma_next - sigma) * (vp - vq) + 0.01 * (qt - sigma * vq - pt + sigma * vp)
    torch.testing.assert_close(out, xt, atol=1e-5, rtol=0)


# -- all three ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["uniedit", "dnaedit", "flowalign"])
def test_same_seed_same_output(tiny, name):
    img = Image.fromarray((np.random.default_rng(4).random((48, 64, 3)) * 255).astype(np.uint8))
    a = editflow.edit(tiny, img, "a red image", "a blue image", method=name, seed=5, steps=6)
    b = editflow.edit(tiny, img, "a red image", "a blue image", method=name, seed=5, steps=6)
    c = editflow.edit(tiny, img, "a red image", "a blue image", method=name, seed=6, steps=6)
    assert torch.equal(a.latents, b.latents) and a.image.tobytes() == b.image.tobytes()
    assert a.nfe == get_method(name).expected_nfe(get_method(name).params.for_family("flux", steps=6))
    assert torch.equal(a.latents, c.latents) == (name == "uniedit")  # UniEdit-Flow draws no noise


@pytest.mark.parametrize("name", ["uniedit", "dnaedit", "flowalign"])
def test_unet_family_is_refused_before_any_model_call(name):
    unet = editflow.load_model("tiny-unet", device="cpu")
    img = Image.new("RGB", (64, 64), (10, 200, 30))
    before = unet.counter.total.copy()
    with pytest.raises(ParameterError, match=rf"{name} does not run on unet models \(it supports flux, sd3\)"):
        editflow.edit(unet, img, "a", "b", method=name)
    assert unet.counter.total == before


def test_on_sd3_the_rows_are_what_the_formulas_say():
    """FlowAlign and UniEdit-Flow run at guidance 1 on SD3 (no unconditional half); DNAEdit's target
    calls use CFG 3.5 (two rows each), its inversion none."""
    sd3 = editflow.load_model("tiny-sd3", device="cpu")
    img = Image.fromarray((np.random.default_rng(2).random((64, 64, 3)) * 255).astype(np.uint8))
    fa = editflow.edit(sd3, img, "a red circle", "a blue square", method="flowalign", steps=4)
    assert fa.nfe == NFE(4, 12)
    ue = editflow.edit(sd3, img, "a red circle", "a blue square", method="uniedit", steps=5)  # K = 3
    assert ue.nfe == NFE(7, 10)
    dna = editflow.edit(sd3, img, "a red circle", "a blue square", method="dnaedit", steps=8)  # t_start 3, K = 5
    assert dna.nfe == NFE(10, 5 + 2 * 5)
    same = editflow.edit(sd3, img, "a red circle", "a red circle", method="flowalign", steps=4)
    # float tolerance: this backend rounds the third row of a 3-row batch differently (3.6e-7)
    x = sd3.encode_image(editflow.images.to_tensor(img)).cpu()
    torch.testing.assert_close(same.latents, x, atol=1e-5, rtol=0)
    assert (fa.latents - x).abs().max() > 1e-3
