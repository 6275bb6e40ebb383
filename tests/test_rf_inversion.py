"""RF-Inversion's reductions and limits on the tiny pipeline, and its SDE on an exact flow."""

import pytest
import torch

from editflow.errors import ParameterError
from editflow.methods import EditRequest, get_method
from editflow.methods.rf_inversion import edit_from, invert
from editflow.models.base import NFE
from editflow.solvers import euler, inversion_times
from editflow.solvers.analytic import AnalyticModel, GaussianFlow

RF = get_method("rf_inversion")


def _params(**kw):
    return RF.params.for_family("flux", **kw)


def _request(source_latent, src="a red circle", tar="a blue square"):
    x, grid = source_latent
    return EditRequest(x, grid, src, tar)


def test_gamma_zero_is_plain_euler_inversion(tiny, source_latent):
    req = _request(source_latent)
    p = _params(steps=10, gamma=0.0)
    y1 = torch.randn(req.x_src.shape, generator=torch.Generator().manual_seed(0))
    empty = tiny.encode_prompt("")
    plain = euler(lambda z, t: tiny.velocity(z, t, empty, req.grid, guidance=0.0), req.x_src,
                  inversion_times(tiny.schedule(10, req.grid)))
    assert torch.equal(invert(tiny, req, p, y1), plain)
    assert not torch.equal(invert(tiny, req, _params(steps=10, gamma=0.5), y1), plain)


def test_gamma_one_lands_on_the_fixed_noise(tiny, source_latent):
    req = _request(source_latent)
    y1 = torch.randn(req.x_src.shape, generator=torch.Generator().manual_seed(1))
    z1 = invert(tiny, req, _params(steps=6, gamma=1.0), y1)
    assert (z1 - y1).abs().max().item() < 1e-5


def test_eta_zero_is_plain_euler_denoising(tiny, source_latent):
    req = _request(source_latent)
    z1 = torch.randn(req.x_src.shape, generator=torch.Generator().manual_seed(2))
    tar = tiny.encode_prompt(req.target_prompt)
    plain = euler(lambda z, t: tiny.velocity(z, t, tar, req.grid, guidance=3.5), z1, tiny.schedule(10, req.grid))
    assert torch.equal(edit_from(tiny, req, _params(steps=10, eta=0.0), z1, None), plain)
    assert not torch.equal(edit_from(tiny, req, _params(steps=10), z1, None), plain)


@pytest.mark.parametrize("sde", [False, True])
def test_eta_one_on_every_step_returns_the_source(tiny, source_latent, sde):
    req = _request(source_latent)
    p = _params(steps=12, eta=1.0, start=0.0, stop=1.0, sde=sde)
    out = RF.run(tiny, req, p, torch.Generator().manual_seed(3))
    assert (out - req.x_src).abs().max().item() < 1e-5


def test_eta_pulls_towards_the_source(tiny, source_latent):
    req = _request(source_latent)
    gen = lambda: torch.Generator().manual_seed(4)  # noqa: E731
    dist = [(RF.run(tiny, req, _params(steps=12, eta=eta, stop=0.5), gen()) - req.x_src).norm().item()
            for eta in (0.0, 0.5, 0.9)]
    assert dist[0] > dist[1] > dist[2], dist


def test_nfe_is_two_calls_per_step(tiny, source_latent):
    req = _request(source_latent)
    p = _params(steps=9)
    before = tiny.counter.total.copy()
    RF.run(tiny, req, p, torch.Generator().manual_seed(0))
    assert tiny.counter.total - before == RF.expected_nfe(p) == NFE(18, 18)


def test_source_prompt_is_ignored_unless_asked(tiny, source_latent):
    x, grid = source_latent
    run = lambda src, **kw: RF.run(tiny, EditRequest(x, grid, src, "a blue square"),  # noqa: E731
                                   _params(steps=6, **kw), torch.Generator().manual_seed(5))
    assert torch.equal(run("a red circle"), run("a green triangle"))
    assert not torch.equal(run("a red circle", use_source_prompt=True), run("a green triangle", use_source_prompt=True))


def test_eta_schedule_follows_the_reference():
    p = _params(steps=28, eta=0.9, start=0.0, stop=0.25)
    assert p.etas() == [0.9] * 7 + [0.0] * 21
    p = _params(steps=10, eta=1.0, start=0.2, stop=0.6, decay_eta=True, eta_decay_power=2.0)
    assert p.etas() == pytest.approx([0, 0, 0.64, 0.49, 0.36, 0.25, 0, 0, 0, 0])


@pytest.mark.parametrize("bad", [dict(eta=1.5), dict(gamma=-0.1), dict(start=0.5, stop=0.2), dict(stop=1.2)])
def test_bad_parameters_name_the_problem(bad):
    with pytest.raises(ParameterError, match="RF-Inversion needs|must be in"):
        _params(**bad)


def test_reverse_sde_without_control_samples_the_data_distribution():
    """With eta = 0 the SDE is the paper's stochastic sampler: same marginals as the ODE, so
    noise -> data lands on N(0.7, 0.3^2) (a wrong score or noise scale would not)."""
    model = AnalyticModel(GaussianFlow(mean=0.7, std=0.3), channels=1)
    grid = model.grid(1024, 1024)  # 4096 tokens = 4096 independent samples
    req = EditRequest(torch.zeros(1, grid.num_tokens, 1, dtype=torch.float64), grid, "", "")
    gen = torch.Generator().manual_seed(6)
    z1 = model.noise(grid, gen)
    p = _params(steps=200, eta=0.0, sde=True)
    out = edit_from(model, req, p, z1, gen)
    assert abs(out.mean().item() - 0.7) < 0.02 and abs(out.std().item() - 0.3) < 0.015, (out.mean(), out.std())
    ode = edit_from(model, req, _params(steps=200, eta=0.0), z1, None)
    assert (out - ode).abs().mean() > 0.05  # it is stochastic, yet lands on the same distribution
