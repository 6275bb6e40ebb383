"""Reference-exact modes: RF-Inversion's ``inversion_times="reference"`` and KV-Edit's
``start="reference" | "gradio"``, each against a transcription of the released loop (written
here, following the reference's indexing) on tiny-flux."""

import pytest
import torch

from editflow.attention import FeatureStore
from editflow.attention.kv_cache import BackgroundKV
from editflow.errors import ParameterError
from editflow.methods import EditRequest, get_method
from editflow.models.base import NFE

RFI, KV = get_method("rf_inversion"), get_method("kv_edit")


def _run(method, model, req, seed=0, **params):
    p = method.params.for_family(model.family, **params)
    before = model.counter.total.copy()
    out = method.run(model, req, p, torch.Generator().manual_seed(seed))
    return out, model.counter.total - before, p


@pytest.mark.parametrize("steps,start,stop", [(8, 0.0, 0.5), (6, 0.2, 1.0)])
def test_rf_inversion_reference_is_the_diffusers_pipeline(tiny, source_latent, steps, start, stop):
    """``RFInversionFluxPipeline.invert`` (model and u_cond time i / len(sigmas), step
    sigmas[i] - sigmas[i+1]) then ``__call__``'s editing loop, transcribed."""
    x, grid = source_latent
    req = EditRequest(x, grid, "a red circle", "a blue square")
    out, nfe, p = _run(RFI, tiny, req, seed=3, steps=steps, inversion_times="reference", start=start, stop=stop)
    assert nfe == NFE(2 * steps, 2 * steps)

    sigmas = tiny.schedule(steps, grid)  # the scheduler's sigmas, the final 0 included
    y_1 = tiny.noise(grid, torch.Generator().manual_seed(3)).float()  # the method's first draw
    empty, target = tiny.encode_prompt(""), tiny.encode_prompt("a blue square")
    Y_t = x.clone()
    N = len(sigmas)
    for i in range(N - 1):
        t_i = torch.tensor(i / N, dtype=Y_t.dtype)
        u_t_i = tiny.velocity(Y_t, float(t_i), empty, grid, guidance=p.source_guidance)
        u_t_i_cond = (y_1 - Y_t) / (1 - t_i)
        u_hat_t_i = u_t_i + p.gamma * (u_t_i_cond - u_t_i)
        Y_t = Y_t + u_hat_t_i * (sigmas[i] - sigmas[i + 1])
    latents, y_0 = Y_t, x.clone()
    first, last = int(start * steps), min(int(stop * steps), steps)
    for i, t in enumerate(sigmas[:-1] * 1000):
        t_i = 1 - t / 1000
        noise_pred = tiny.velocity(latents, float(t / 1000), target, grid, guidance=p.target_guidance)
        eta_t = p.eta if first <= i < last else 0.0
        v_t = -noise_pred
        v_t_cond = (y_0 - latents) / (1 - t_i)
        v_hat_t = v_t + eta_t * (v_t_cond - v_t)
        latents = latents + v_hat_t * (sigmas[i] - sigmas[i + 1])
    torch.testing.assert_close(out, latents.float(), atol=1e-5, rtol=0)
    ours, _, _ = _run(RFI, tiny, req, seed=3, steps=steps, start=start, stop=stop)
    assert (ours - out).abs().max() > 1e-4  # the two inversions differ


def _released_kv_edit(model, x, grid, fg, steps, skip, invert_skip, guidance=(1.5, 5.5)):
    """``denoise_kv`` (inverse, then edit) as released at 77129a2: the inversion stores the latent
    *before* each step under the step's noisier time ``info['t'] = t_prev``, and the edit starts from
    ``feature[str(info['t']) + '_img']`` with ``info['t']`` still the inversion's last key."""
    src, tar = model.encode_prompt("a red circle"), model.encode_prompt("a blue square")
    fg_idx = fg.nonzero().flatten()
    timesteps = model.schedule(steps, grid).tolist()
    feature, info = {}, {}
    with FeatureStore() as store:
        kv = BackgroundKV(store, fg)
        kv.phase = "invert"
        inv = timesteps[invert_skip:][::-1]
        img = x.clone()
        for t_curr, t_prev in zip(inv[:-1], inv[1:]):
            info["t"] = t_prev
            kv.begin_step(t_curr, t_prev)
            feature[str(info["t"]) + "_img"] = img
            pred = model.velocity(img, t_curr, src, grid, guidance=guidance[0], control=kv)
            img = img + (t_prev - t_curr) * pred
        kv.phase = "edit"
        zt = feature[str(info["t"]) + "_img"][:, fg_idx]
        ts = timesteps[skip:]
        for t_curr, t_prev in zip(ts[:-1], ts[1:]):
            info["t"] = t_curr
            kv.begin_step(t_curr, t_prev)
            pred = model.velocity(zt, t_curr, tar, grid, guidance=guidance[1], control=kv, tokens=fg_idx)
            zt = zt + (t_prev - t_curr) * pred
    out = x.clone()
    out[:, fg_idx] = zt
    return out


@pytest.mark.parametrize("start,skip", [("reference", 2), ("reference", 0), ("gradio", 3), ("gradio", 1),
                                        ("gradio", 0)])
def test_kv_edit_starts_are_the_released_code(tiny, source_latent, start, skip):
    """``start="reference"`` is the script path (inverting the ``T - skip`` steps it edits);
    ``start="gradio"`` the demo (inverting all ``T`` steps once, then editing from ``ts[skip]``)."""
    x, grid = source_latent
    pixels = torch.zeros(grid.height, grid.width)
    pixels[16:40, 8:30] = 1
    mask = grid.mask_to_tokens(pixels)
    out, nfe, p = _run(KV, tiny, EditRequest(x, grid, "a red circle", "a blue square", mask=mask), steps=6, skip=skip,
                       start=start)
    ref = _released_kv_edit(tiny, x, grid, mask[0], 6, skip, skip if start == "reference" else 0)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
    extra = max(skip - 1, 0) if start == "gradio" else 0  # the demo's last inversion call is never read: skipped
    assert nfe == KV.expected_nfe(p) == NFE(2 * (6 - skip) + extra, 2 * (6 - skip) + extra)
    exact, _, _ = _run(KV, tiny, EditRequest(x, grid, "a red circle", "a blue square", mask=mask), steps=6, skip=skip)
    assert (exact - out).abs().max() > 1e-4 or (start, skip) == ("gradio", 1)  # the demo is exact at skip 1


def test_kv_edit_start_modes_with_replay_and_bad_combinations(tiny, source_latent):
    x, grid = source_latent
    mask = torch.zeros(1, grid.num_tokens, dtype=torch.bool)
    mask[0, :5] = True
    req = lambda: EditRequest(x, grid, "a red circle", "a blue square", mask=mask)  # noqa: E731
    for start in ("reference", "gradio"):
        kept, _, _ = _run(KV, tiny, req(), steps=5, skip=3, start=start)
        replayed, _, _ = _run(KV, tiny, req(), steps=5, skip=3, start=start, replay=True)
        torch.testing.assert_close(replayed, kept, atol=1e-6, rtol=0)
    with pytest.raises(ParameterError, match="inversion_free inverts nothing"):
        KV.params.for_family("flux", start="reference", inversion_free=True)
    with pytest.raises(ParameterError, match="'start' must be one of editflow, reference, gradio"):
        KV.params.for_family("flux", start="demo")
    with pytest.raises(ParameterError, match="'inversion_times' must be one of editflow, reference"):
        RFI.params.for_family("flux", inversion_times="diffusers")
