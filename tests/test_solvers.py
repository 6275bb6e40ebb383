"""Solvers on flows whose velocity is exact: order, both directions, round trips, NFE."""

import math

import pytest
import torch

from editflow.errors import ParameterError
from editflow.models.base import time_shift_exponential
from editflow.solvers import SOLVERS, dpmpp_2m, dpmpp_2m_explicit, euler, get_solver, inversion_times
from editflow.solvers.analytic import GaussianFlow, GaussianMixtureFlow

MIXTURE = GaussianMixtureFlow(means=[[0.8, -0.5], [-0.6, 0.4], [0.1, 0.9]], stds=[0.25, 0.35, 0.2],
                              weights=[0.5, 0.3, 0.2])
SECOND_ORDER = ["rf_solver", "fireflow", "dpmpp_2m_explicit"]


def rms(x):
    return x.pow(2).mean().sqrt().item()


def linear(n, shift=0.0):
    t = torch.linspace(1.0, 0.0, n + 1, dtype=torch.float64)
    return time_shift_exponential(shift, t) if shift else t


def lambda_uniform(n, a=0.95, b=0.05):
    """Times uniform in half log-SNR lambda = log((1 - t) / t), DPM-Solver's natural grid."""
    lam = torch.linspace(math.log((1 - a) / a), math.log((1 - b) / b), n + 1, dtype=torch.float64)
    return 1 / (1 + lam.exp())


@pytest.fixture(scope="module")
def noise_and_data():
    z1 = torch.randn(300, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    return z1, MIXTURE.reference(z1, 1.0, 0.0, steps=2000)


def ratios(errors):
    return [b / a for a, b in zip(errors, errors[1:])]


def test_mixture_velocity_is_the_exact_conditional_expectation():
    """Monte Carlo: E[eps - x0 | z_t near z] matches the closed form (guards the oracle itself)."""
    g = torch.Generator().manual_seed(3)
    x0 = MIXTURE.sample(2_000_000, g)
    eps = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    t = 0.4
    zt = (1 - t) * x0 + t * eps
    probe = torch.tensor([0.3, 0.1], dtype=torch.float64)
    near = (zt - probe).norm(dim=-1) < 0.03
    empirical = (eps - x0)[near].mean(0)
    assert near.sum() > 2000
    torch.testing.assert_close(empirical, MIXTURE.velocity(probe, t), atol=0.03, rtol=0)


def test_reference_solution_has_converged(noise_and_data):
    z1, x0 = noise_and_data
    assert rms(MIXTURE.reference(z1, 1.0, 0.0, steps=1000) - x0) < 1e-9


@pytest.mark.parametrize("shift", [0.0, 1.15])
def test_euler_is_first_order(noise_and_data, shift):
    z1, x0 = noise_and_data
    errors = [rms(euler(MIXTURE.velocity, z1, linear(n, shift)) - x0) for n in (32, 64, 128)]
    assert all(0.4 < r < 0.6 for r in ratios(errors)), ratios(errors)  # measured 0.50-0.53


@pytest.mark.parametrize("name", ["rf_solver", "fireflow"])
@pytest.mark.parametrize("shift", [0.0, 1.15])
def test_midpoint_solvers_are_second_order(noise_and_data, name, shift):
    z1, x0 = noise_and_data
    solve = get_solver(name)
    errors = [rms(solve(MIXTURE.velocity, z1, linear(n, shift)) - x0) for n in (32, 64, 128)]
    # measured 0.26-0.30: the error falls about 4x when the step halves
    assert all(0.2 < r < 0.34 for r in ratios(errors)), ratios(errors)
    euler_error = rms(euler(MIXTURE.velocity, z1, linear(128, shift)) - x0)
    assert errors[-1] < euler_error / 20


def test_dpm_solver_is_second_order_on_its_lambda_grid():
    z = torch.randn(300, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    errors = []
    for n in (32, 64, 128):
        ts = lambda_uniform(n)
        ref = MIXTURE.reference(z, float(ts[0]), float(ts[-1]), steps=2000)
        errors.append(rms(dpmpp_2m(MIXTURE.velocity, z, ts) - ref))
    assert all(0.22 < r < 0.3 for r in ratios(errors)), ratios(errors)  # measured 0.277, 0.256


def test_dpm_solver_from_noise_to_data(noise_and_data):
    """On a uniform grid down to t = 0 the lambda steps next to t = 0 do not shrink with N; their
    local errors sum to O(log N / N^2), so the ratio approaches 1/4 slowly (measured 0.37, 0.32,
    0.30 from N = 64 to 512; stopping at t = 0.05 instead gives 0.245). Still far below Euler."""
    z1, x0 = noise_and_data
    errors = [rms(dpmpp_2m(MIXTURE.velocity, z1, linear(n)) - x0) for n in (128, 256, 512)]
    assert all(0.2 < r < 0.4 for r in ratios(errors)), ratios(errors)
    assert errors[0] < rms(euler(MIXTURE.velocity, z1, linear(128)) - x0) / 10


@pytest.mark.parametrize("name", ["euler", *SECOND_ORDER])
def test_inversion_direction_has_the_same_order(noise_and_data, name):
    """Integrating data -> noise converges to the exact inverse map at the solver's order."""
    z1, x0 = noise_and_data
    solve = get_solver(name)
    target = MIXTURE.reference(x0, 0.0, 1.0, steps=2000)
    assert rms(target - z1) < 1e-8  # the flow is a bijection
    ns = (64, 128, 256) if name == "dpmpp_2m_explicit" else (32, 64, 128)
    errors = [rms(solve(MIXTURE.velocity, x0, inversion_times(linear(n))) - z1) for n in ns]
    band = (0.4, 0.6) if name == "euler" else (0.18, 0.4)
    assert all(band[0] < r < band[1] for r in ratios(errors)), ratios(errors)


@pytest.mark.parametrize("name", ["euler", "nudged_euler", "rf_solver", "fireflow", "dpmpp_2m", "nudged_fireflow"])
def test_inversion_then_regeneration_returns_the_start(noise_and_data, name):
    """Invert x0 to t = 1 and regenerate: the error is the solver's and falls at its order."""
    _, x0 = noise_and_data
    solve = get_solver(name)
    errors = []
    for n in (32, 64, 128):
        ts = linear(n, 0.5)
        errors.append(rms(solve(MIXTURE.velocity, solve(MIXTURE.velocity, x0, inversion_times(ts)), ts) - x0))
    top = 0.6 if solve.order == 1 else 0.4
    assert all(r < top for r in ratios(errors)), ratios(errors)
    assert errors[-1] < (0.02 if solve.order == 1 else 1e-3), errors  # measured 0.012; 6e-6 to 3.6e-4


def test_dpm_backward_euler_inversion_beats_the_explicit_formula(noise_and_data):
    """The inverse DiT4Edit uses is built for the sampler: the round trip is closer (measured 2.5x at
    28 steps) than inverting with the explicit formula or with Euler."""
    _, x0 = noise_and_data
    ts = linear(28, 0.5)
    implicit = rms(dpmpp_2m(MIXTURE.velocity, dpmpp_2m(MIXTURE.velocity, x0, inversion_times(ts)), ts) - x0)
    explicit = rms(dpmpp_2m(MIXTURE.velocity, dpmpp_2m_explicit(MIXTURE.velocity, x0, inversion_times(ts)), ts) - x0)
    plain = rms(euler(MIXTURE.velocity, euler(MIXTURE.velocity, x0, inversion_times(ts)), ts) - x0)
    assert implicit < explicit / 1.5 and implicit < plain / 4, (implicit, explicit, plain)


def test_rf_solver_is_the_midpoint_method(noise_and_data):
    """Wang et al.'s Taylor step equals z + h v(z_mid) (FireFlow issue #6) up to rounding."""
    z1, _ = noise_and_data
    ts = linear(10)
    z = z1
    for t, u in zip(ts[:-1].tolist(), ts[1:].tolist()):
        z = z + (u - t) * MIXTURE.velocity(z + (u - t) / 2 * MIXTURE.velocity(z, t), (t + u) / 2)
    torch.testing.assert_close(get_solver("rf_solver")(MIXTURE.velocity, z1, ts), z, rtol=0, atol=1e-12)


def test_nudging_scales_at_the_data_end_only():
    flow = GaussianFlow()
    x0 = 0.7 + 0.3 * torch.randn(50, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    ts = linear(12)
    nudged = get_solver("nudged_euler")
    torch.testing.assert_close(nudged(flow.velocity, x0, inversion_times(ts)),
                               euler(flow.velocity, 1.15 * x0, inversion_times(ts)), rtol=0, atol=0)
    z1 = euler(flow.velocity, x0, inversion_times(ts))
    torch.testing.assert_close(nudged(flow.velocity, z1, ts), euler(flow.velocity, z1, ts) / 1.15, rtol=0, atol=0)
    # a segment that touches neither end passes through unchanged
    mid = ts[3:8]
    torch.testing.assert_close(nudged(flow.velocity, z1, mid), euler(flow.velocity, z1, mid), rtol=0, atol=0)


@pytest.mark.parametrize("name", [*SOLVERS, "nudged_rf_solver"])
@pytest.mark.parametrize("inverse", [False, True])
@pytest.mark.parametrize("skip", [0, 3])
def test_nfe_formula_matches_counted_calls(name, inverse, skip):
    solver = get_solver(name)
    calls = []

    def velocity(z, t):
        calls.append(t)
        return MIXTURE.velocity(z, t)

    z = torch.zeros(4, 2, dtype=torch.float64)
    for n in (1, 2, 7):
        ts = linear(n + skip)[skip:]
        calls.clear()
        solver(velocity, z, inversion_times(ts) if inverse else ts)
        assert len(calls) == solver.nfe(n, inverse, skip == 0), (name, n, inverse, skip)


def test_callbacks_see_every_step_in_order():
    seen = []
    for name in SOLVERS:
        seen.clear()
        get_solver(name)(MIXTURE.velocity, torch.zeros(3, 2, dtype=torch.float64), linear(5),
                         callback=lambda i, t, z: seen.append((i, round(t, 6))))
        assert [i for i, _ in seen] == list(range(5)), name
        assert [t for _, t in seen] == [round(t, 6) for t in linear(5)[:-1].tolist()], name


def test_unknown_solver_is_a_clear_error():
    with pytest.raises(ParameterError, match="unknown solver 'heun'.*euler.*nudged_<name>"):
        get_solver("heun")
    with pytest.raises(ParameterError, match="unknown solver 'nudged_heun'"):
        get_solver("nudged_heun")


def test_exact_solution_is_consistent():
    """The closed form composes: going 1 -> 0.4 -> 0 equals 1 -> 0 (guards the oracle itself)."""
    flow = GaussianFlow(mean=-0.2, std=0.5)
    z = torch.randn(100, dtype=torch.float64)
    torch.testing.assert_close(flow.exact(flow.exact(z, 1.0, 0.4), 0.4, 0.0), flow.exact(z, 1.0, 0.0))
    h = 1e-6
    dz = (flow.exact(z, 0.5, 0.5 + h) - flow.exact(z, 0.5, 0.5 - h)) / (2 * h)
    torch.testing.assert_close(dz, flow.velocity(z, 0.5), rtol=1e-5, atol=1e-6)


def test_gaussian_flow_order_against_the_closed_form():
    flow = GaussianFlow()
    z1 = torch.randn(4096, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for name, band in (("euler", (0.45, 0.55)), ("fireflow", (0.2, 0.32))):
        errors = [rms(get_solver(name)(flow.velocity, z1, linear(n)) - flow.exact(z1, 1.0, 0.0)) for n in (32, 64, 128)]
        assert all(band[0] < r < band[1] for r in ratios(errors)), (name, ratios(errors))


def test_inversion_times_reverse_the_schedule():
    ts = torch.tensor([1.0, 0.7, 0.2, 0.0])
    assert torch.equal(inversion_times(ts), torch.tensor([0.0, 0.2, 0.7, 1.0]))


@pytest.mark.parametrize("shift", [0.0, 1.15])
def test_uni_inv_inverts_euler_sampling_at_second_order(shift):
    """Uni-Inv then Euler sampling returns the data within O(h^2) (measured ratios 0.26-0.30 per
    doubling); Euler inversion then Euler sampling within O(h) (0.50-0.57)."""
    x0 = MIXTURE.sample(300, torch.Generator().manual_seed(1))
    trips = {}
    for name in ("euler", "uni_inv"):
        solve = get_solver(name)
        trips[name] = [rms(euler(MIXTURE.velocity, solve(MIXTURE.velocity, x0, inversion_times(linear(n, shift))),
                                 linear(n, shift)) - x0) for n in (16, 32, 64, 128)]
    assert all(0.2 < r < 0.34 for r in ratios(trips["uni_inv"])), ratios(trips["uni_inv"])
    assert all(0.4 < r < 0.62 for r in ratios(trips["euler"])), ratios(trips["euler"])
    assert trips["uni_inv"][-1] < trips["euler"][-1] / 8


@pytest.mark.parametrize("shift", [0.0, 1.15])
def test_fixed_point_averaging_keeps_the_round_trip_first_order(shift):
    """FTEdit's averaged fixed-point inversion: first order (ratios 0.48-0.51 measured) but about
    an eighth of Euler inversion's round-trip error; both solvers are Euler when denoising."""
    x0 = MIXTURE.sample(300, torch.Generator().manual_seed(1))
    trip = lambda name, n: rms(euler(MIXTURE.velocity, get_solver(name)(MIXTURE.velocity, x0, inversion_times(linear(n, shift))),  # noqa: E731
                                     linear(n, shift)) - x0)
    errors = [trip("fixed_point", n) for n in (16, 32, 64, 128)]
    assert all(0.4 < r < 0.6 for r in ratios(errors)), ratios(errors)
    assert all(errors[k] < trip("euler", n) / 5 for k, n in enumerate((16, 32, 64, 128)))
    z1 = MIXTURE.sample(50, torch.Generator().manual_seed(2))
    for name in ("uni_inv", "fixed_point"):
        assert torch.equal(get_solver(name)(MIXTURE.velocity, z1, linear(8)), euler(MIXTURE.velocity, z1, linear(8)))
