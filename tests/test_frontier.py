"""The 2025 methods (UniEdit-Flow, DNAEdit, FlowAlign, FTEdit): counted NFE, the identities their math
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
                                                (6, 0.5, "euler"), (5, 0.2, "fireflow")])
def test_uniedit_nfe_is_the_formula(tiny, source_latent, steps, alpha, solver):
    x, grid = source_latent
    _, nfe, p = _run(UNIEDIT, tiny, x, grid, "a red circle", "a blue square", steps=steps, alpha=alpha, solver=solver)
    k = round(alpha * steps)  # 15 x 0.6 -> 9 (the paper's 28 rows); 8 x 0.6 -> 5, as the FLUX fork rounds
    inv = k + 1 if solver in ("uni_inv", "fireflow") else k
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
    dt = -0.5
    if family == "flux":  # the fork: |g| averaged over a packed token's 64 values
        a = g.abs().mean(-1, keepdim=True)
        m = (a - a.min()) / (a.max() - a.min())
        torch.testing.assert_close(out, z + 5.0 * dt * (1 + m) * g + dt * (m * vt + (1 - m) * vs))
    else:  # the diffusers scheduler on SD3's unpacked latents [B, C, H, W]: signed g.mean(dim=1)
        from diffusers import FluxPipeline

        unpack = lambda t: FluxPipeline._unpack_latents(t, 32, 32, 8)  # noqa: E731  [1, 2, 4, 4]
        G, Z, VS, VT = (unpack(t) for t in (g, z, vs, vt))
        a = G.mean(dim=1, keepdim=True)
        m = (a - a.min()) / (a.max() - a.min() + 1e-7)
        ref = Z + 5.0 * dt * (1 + m) * G + dt * (m * VT + (1 - m) * VS)
        torch.testing.assert_close(unpack(out), ref, atol=1e-5, rtol=1e-5)


def test_uniedit_refuses_an_alpha_that_edits_nothing():
    with pytest.raises(ParameterError, match="alpha=0.05 of steps=5 rounds to no edited step"):
        UNIEDIT.params.for_family("flux", steps=5, alpha=0.05)
    with pytest.raises(ParameterError, match="'alpha' must be in"):
        UNIEDIT.params.for_family("flux", alpha=0.0)


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


@pytest.mark.parametrize("name", ["uniedit", "dnaedit", "flowalign", "ftedit"])
def test_same_seed_same_output(tiny, name):
    img = Image.fromarray((np.random.default_rng(4).random((48, 64, 3)) * 255).astype(np.uint8))
    a = editflow.edit(tiny, img, "a red image", "a blue image", method=name, seed=5, steps=6)
    b = editflow.edit(tiny, img, "a red image", "a blue image", method=name, seed=5, steps=6)
    c = editflow.edit(tiny, img, "a red image", "a blue image", method=name, seed=6, steps=6)
    assert torch.equal(a.latents, b.latents) and a.image.tobytes() == b.image.tobytes()
    assert a.nfe == get_method(name).expected_nfe(get_method(name).params.for_family("flux", steps=6))
    assert torch.equal(a.latents, c.latents) == (name in ("uniedit", "ftedit"))  # they draw no noise


@pytest.mark.parametrize("name", ["uniedit", "dnaedit", "flowalign", "ftedit"])
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


# -- FTEdit ------------------------------------------------------------------------------------

FTEDIT = get_method("ftedit")


@pytest.mark.parametrize("steps,skip,iterations", [(30, 0, 2), (6, 2, 3), (5, 0, 0)])
def test_ftedit_nfe_is_the_formula(tiny, source_latent, steps, skip, iterations):
    x, grid = source_latent
    _, nfe, p = _run(FTEDIT, tiny, x, grid, "a red circle", "a blue square", steps=steps, skip=skip,
                     iterations=iterations)
    n = steps - skip
    assert nfe == NFE(n * (iterations + 1) + n, n * (iterations + 1) + 2 * n) == FTEDIT.expected_nfe(p)
    if steps == 30:
        assert nfe.calls == 120  # the paper's count at its SD3.5 defaults


def test_ftedit_without_controls_is_the_released_inversion_then_euler(tiny, source_latent):
    """FlowFixPointResidual's inversion loop (fixed point from the current latent at the step's
    noisier time, the evaluated velocities averaged), transcribed; with the controls off the target
    row is Euler sampling from its top at the editing guidance."""
    x, grid = source_latent
    out, _, p = _run(FTEDIT, tiny, x, grid, "a red circle", "a red circle", steps=6, invariance=0.0,
                     value_injection=0.0)
    ts = tiny.schedule(6, grid).tolist()
    src = _v(tiny, "a red circle", grid, p.source_guidance)
    z = x.clone()
    for i in range(5, -1, -1):  # from ts[i + 1] (cleaner) to ts[i]
        t_a, t_b = ts[i + 1], ts[i]
        dt, guess, velocities = t_b - t_a, z, []
        for _ in range(p.iterations + 1):
            v = src(guess, t_b)
            velocities.append(v)
            guess = z + dt * v
        z = z + dt * torch.stack(velocities[0:5]).mean(0)
    reconstruction = euler(_v(tiny, "a red circle", grid, p.target_guidance), z, tiny.schedule(6, grid))
    torch.testing.assert_close(out, reconstruction, atol=1e-5, rtol=0)
    injected, _, _ = _run(FTEDIT, tiny, x, grid, "a red circle", "a red circle", steps=6, invariance=0.0,
                          value_injection=0.5)
    assert (injected - out).abs().max() > 1e-4  # the source row's V reaches the target (rows differ after step 0)
    # AdaLN invariance: the target's shared tokens ("a", "circle", ...) take the source row's features
    kept, _, _ = _run(FTEDIT, tiny, x, grid, "a red circle", "a blue circle", steps=6, value_injection=0.0)
    free, _, _ = _run(FTEDIT, tiny, x, grid, "a red circle", "a blue circle", steps=6, value_injection=0.0,
                      invariance=0.0)
    assert (kept - free).abs().max() > 1e-4


def test_token_alignment_is_prompt_to_prompts_refinement_mapper():
    from editflow.attention.invariance import global_alignment, refinement_mapper

    assert global_alignment([5, 7, 9, 1], [5, 8, 9, 1]) == [0, -1, 2, 3]  # a changed word is an insertion
    assert global_alignment([5, 9, 1], [5, 6, 6, 9, 1]) == [0, -1, -1, 1, 2]
    assert global_alignment([5, 6, 9, 1], [5, 9, 1]) == [0, 2, 3]  # a dropped word is skipped
    mapper, alpha = refinement_mapper([5, 9, 1], [5, 6, 9, 1], 8)
    assert mapper.tolist() == [0, 0, 1, 2, 4, 5, 6, 7] and alpha.tolist() == [True, False, True, True] + [True] * 4


def test_text_invariance_replaces_aligned_text_rows_of_the_conditional_target_only():
    from editflow.attention.context import AttentionContext
    from editflow.attention.invariance import TextInvariance
    from editflow.models.base import TokenGrid

    mapper, alpha = torch.tensor([0, 0, 1, 2]), torch.tensor([True, False, True, True])
    control = TextInvariance({"double.0"}, mapper, alpha, invariance_steps=2, value_steps=1)
    control.phase = "edit"
    q, k, v = (torch.randn(2, 4 + 3, 2, 8, generator=torch.Generator().manual_seed(s)) for s in range(3))
    ctx = lambda step, uncond=False: AttentionContext("edit", step, 0.5, "double.0", 4, TokenGrid(16, 48, 1, 3),  # noqa: E731
                                                      control.rows, uncond)
    q1, k1, v1, _ = control.qkv(ctx(1), q, k, v, None)
    for new, old in ((q1, q), (k1, k)):
        assert torch.equal(new[0], old[0]) and torch.equal(new[1, 4:], old[1, 4:]) and torch.equal(new[1, 1], old[1, 1])
        assert torch.equal(new[1, [0, 2, 3]], old[0, [0, 1, 2]])
    assert torch.equal(v1[1, [0, 2, 3]], v[0, [0, 1, 2]]) and torch.equal(v1[1, 4:], v[1, 4:])
    _, _, v0, _ = control.qkv(ctx(0), q, k, v, None)
    assert torch.equal(v0[1], v[0])  # value injection while step < value_steps: every token
    q3, _, v3, _ = control.qkv(ctx(1, uncond=True), q, k, v, None)
    assert q3 is q and v3 is v
    q4, _, v4, _ = control.qkv(ctx(5), q, k, v, None)
    assert q4 is q and v4 is v


def test_sd3_controls_are_told_the_cfg_half():
    """Under CFG the SD3 adapter attends [negative; prompt] as two controlled calls; the context
    says which, so FTEdit's controls leave the negative-prompt half alone."""
    from editflow.attention.context import AttentionControl
    from editflow.models.base import TokenGrid

    sd3 = editflow.load_model("tiny-sd3", device="cpu")

    class Spy(AttentionControl):
        seen: list = []

        def qkv(self, ctx, q, k, v, mask):
            self.seen.append(ctx.unconditional)
            return q, k, v, mask

    grid = sd3.grid(64, 64)
    z = torch.randn(1, grid.num_tokens, 64)
    spy = Spy()
    sd3.velocity(z, 0.5, sd3.encode_prompt("a"), grid, guidance=3.0, control=spy)
    assert spy.seen[:2] == [True, False] and len(spy.seen) == 2 * len(sd3.attention_layers())
    spy.seen.clear()
    sd3.velocity(z, 0.5, sd3.encode_prompt("a"), grid, guidance=1.0, control=spy)
    assert not any(spy.seen)


def test_ftedit_source_row_and_control_windows(tiny, source_latent, monkeypatch):
    """The source row of editing step i is the inverted latent at ts[i]; AdaLN invariance acts on
    steps i < int(N invariance), value injection on i - skip < int(N value_injection) (the
    reference's AdaLN counter counts skipped steps, its attention counter does not)."""
    from editflow.attention.invariance import TextInvariance
    from editflow.methods.cache import InversionCache

    x, grid = source_latent
    seen, calls = [], []
    original = TextInvariance.qkv

    def spy(self, ctx, q, k, v, mask):
        q2, k2, v2, m2 = original(self, ctx, q, k, v, mask)
        n = ctx.n_text
        seen.append((ctx.step, not torch.equal(q2[1, :n], q[1, :n]), torch.equal(v2[1, n:], v2[0, n:])))
        return q2, k2, v2, m2

    monkeypatch.setattr(TextInvariance, "qkv", spy)
    velocity = tiny.velocity

    def record(z, t, cond, grid, guidance=None, control=None, tokens=None):
        if control is not None:
            calls.append((float(t), z[0].clone()))
        return velocity(z, t, cond, grid, guidance=guidance, control=control, tokens=tokens)

    monkeypatch.setattr(tiny, "velocity", record)
    cache = InversionCache()
    p = FTEDIT.params.for_family("flux", steps=8, skip=2, invariance=0.5, value_injection=0.25)
    FTEDIT.run(tiny, EditRequest(x, grid, "a red circle", "a blue circle", cache=cache), p, None)
    path = next(iter(cache.entries.values()))
    ts = tiny.schedule(8, grid).tolist()
    assert [t for t, _ in calls] == ts[2:8]
    for i, (_, row) in zip(range(2, 8), calls):
        assert torch.equal(row, path[8 - i][0])
    layers = len([n for n in tiny.attention_layers() if n.startswith("double.")])
    steps = [s for s, _, _ in seen[::layers]]
    assert steps == list(range(2, 8))
    invariance = {s for s, inv, _ in seen if inv}
    injected = {s for s, _, val in seen if val}
    assert invariance == {2, 3}  # int(8 x 0.5) = 4 steps counted from the noise end: 0, 1 (skipped), 2, 3
    assert injected == {2, 3}  # int(8 x 0.25) = 2 steps counted from the first edited one
