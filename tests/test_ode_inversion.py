"""ODE inversion on the tiny pipeline."""

import torch

from editflow.methods import EditRequest, get_method
from editflow.models.base import NFE

ODE = get_method("ode_inversion")


def _reconstruct(model, x, grid, steps, **kw):
    p = ODE.params.for_family("flux", steps=steps, source_guidance=3.0, target_guidance=3.0, **kw)
    before = model.counter.total.copy()
    out = ODE.run(model, EditRequest(x, grid, "a red circle", "a red circle"), p, None)
    return (out - x).abs().max().item(), model.counter.total - before


def test_reconstruction_error_shrinks_when_steps_double(tiny, source_latent):
    x, grid = source_latent
    e16, nfe16 = _reconstruct(tiny, x, grid, 16)
    e32, nfe32 = _reconstruct(tiny, x, grid, 32)
    # Euler is first order: the error should roughly halve (measured ~0.54 on this model).
    assert 0.35 < e32 / e16 < 0.7, (e16, e32)
    assert nfe16 == NFE(32, 32) and nfe32 == NFE(64, 64)


def test_skip_starts_from_an_intermediate_time(tiny, source_latent):
    x, grid = source_latent
    e_full, _ = _reconstruct(tiny, x, grid, 12)
    e_skip, nfe = _reconstruct(tiny, x, grid, 12, skip=4)
    assert nfe == NFE(16, 16)
    assert e_skip < e_full  # a shorter path accumulates less error


def test_editing_changes_the_latent(tiny, source_latent):
    x, grid = source_latent
    p = ODE.params.for_family("flux", steps=8)
    out = ODE.run(tiny, EditRequest(x, grid, "a red circle", "a blue square"), p, None)
    assert (out - x).abs().max() > 1e-2
