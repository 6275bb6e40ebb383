"""ODE inversion on the tiny pipeline."""

import numpy as np
import pytest
import torch

import editflow
from editflow.errors import ParameterError
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


@pytest.mark.parametrize("solver", ["euler", "rf_solver", "fireflow", "dpmpp_2m", "dpmpp_2m_explicit", "nudged_euler",
                                    "uni_inv", "fixed_point"])
@pytest.mark.parametrize("skip", [0, 2])
def test_every_solver_counts_the_nfe_it_states(tiny, source_latent, solver, skip):
    x, grid = source_latent
    _, nfe = _reconstruct(tiny, x, grid, 6, solver=solver, skip=skip)
    assert nfe == ODE.expected_nfe(ODE.params.for_family("flux", steps=6, solver=solver, skip=skip))
    n = 6 - skip  # inversion + Euler regeneration: Uni-Inv n + 1 calls, FTEdit's fixed point 3 per step
    assert {"uni_inv": nfe.calls == 2 * n + 1, "fixed_point": nfe.calls == 4 * n}.get(solver, True)


def test_second_order_solvers_reconstruct_at_their_order(tiny, source_latent):
    """On the tiny model (smooth random weights) the round-trip error of RF-Solver and FireFlow
    falls about 4x per doubling of the steps and is far below Euler's at equal steps."""
    x, grid = source_latent
    euler8, _ = _reconstruct(tiny, x, grid, 8)
    for solver in ("rf_solver", "fireflow"):
        e8, _ = _reconstruct(tiny, x, grid, 8, solver=solver)
        e16, _ = _reconstruct(tiny, x, grid, 16, solver=solver)
        assert e16 / e8 < 0.4, (solver, e8, e16)
        assert e8 < euler8 / 3, (solver, e8, euler8)


def test_unknown_solver_is_rejected_before_any_work():
    with pytest.raises(ParameterError, match="unknown solver 'rk4'"):
        ODE.params.for_family("flux", solver="rk4")


@pytest.mark.parametrize("method,extra", [("ode_inversion", {}), ("rf_inversion", {}), ("dit4edit", {}),
                                          ("stable_flow", {"layers": "single.0"}), ("uniedit", {}), ("dnaedit", {}),
                                          ("ftedit", {})])
def test_inversion_cache_reuses_the_inversion_for_a_new_target(tiny, method, extra):
    """A second edit of the same image and source prompt skips the inversion (fewer calls, the
    same result as without the cache); another source prompt or image misses."""
    from PIL import Image

    image = Image.fromarray((np.random.default_rng(1).random((64, 64, 3)) * 255).astype(np.uint8))
    cache = editflow.InversionCache()
    kw = dict(method=method, steps=4, seed=3, **extra)
    first = editflow.edit(tiny, image, "a cat", "a dog", cache=cache, **kw)
    second = editflow.edit(tiny, image, "a cat", "a fox", cache=cache, **kw)
    plain = editflow.edit(tiny, image, "a cat", "a fox", **kw)
    assert first.stats["inversion_cached"] is False and second.stats["inversion_cached"] is True
    assert second.nfe.calls < first.nfe.calls == plain.nfe.calls
    assert torch.equal(second.latents, plain.latents)
    third = editflow.edit(tiny, image, "a bird", "a fox", cache=cache, **kw)
    assert third.stats["inversion_cached"] is False and len(cache) == 2
    assert "inversion_cached" not in plain.stats
