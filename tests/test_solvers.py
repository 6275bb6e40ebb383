"""Euler on a flow whose exact solution is known."""

import torch

from editflow.solvers import euler, inversion_times
from editflow.solvers.analytic import GaussianFlow


def _global_error(flow, steps, z1):
    ts = torch.linspace(1.0, 0.0, steps + 1)
    return (euler(flow.velocity, z1, ts) - flow.exact(z1, 1.0, 0.0)).abs().max().item()


def test_euler_is_first_order():
    flow = GaussianFlow()
    z1 = torch.randn(4096, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    errors = [_global_error(flow, n, z1) for n in (16, 32, 64, 128)]
    ratios = [b / a for a, b in zip(errors, errors[1:])]
    assert all(0.4 < r < 0.6 for r in ratios), ratios  # halves when the step halves
    assert errors[-1] < 0.05


def test_exact_solution_is_consistent():
    """The closed form composes: going 1 -> 0.4 -> 0 equals 1 -> 0 (guards the oracle itself)."""
    flow = GaussianFlow(mean=-0.2, std=0.5)
    z = torch.randn(100, dtype=torch.float64)
    torch.testing.assert_close(flow.exact(flow.exact(z, 1.0, 0.4), 0.4, 0.0), flow.exact(z, 1.0, 0.0))
    # and its time derivative is the velocity
    h = 1e-6
    dz = (flow.exact(z, 0.5, 0.5 + h) - flow.exact(z, 0.5, 0.5 - h)) / (2 * h)
    torch.testing.assert_close(dz, flow.velocity(z, 0.5), rtol=1e-5, atol=1e-6)


def test_inversion_then_regeneration_returns_start_within_solver_error():
    flow = GaussianFlow()
    x0 = 0.7 + 0.3 * torch.randn(2048, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    errs = []
    for n in (20, 40, 80):
        ts = torch.linspace(1.0, 0.0, n + 1)
        z1 = euler(flow.velocity, x0, inversion_times(ts))
        errs.append((euler(flow.velocity, z1, ts) - x0).abs().max().item())
    assert errs[2] < 0.06  # measured 0.052 at 80 steps
    assert 0.4 < errs[1] / errs[0] < 0.6 and 0.4 < errs[2] / errs[1] < 0.6, errs


def test_inversion_times_reverse_the_schedule():
    ts = torch.tensor([1.0, 0.7, 0.2, 0.0])
    assert torch.equal(inversion_times(ts), torch.tensor([0.0, 0.2, 0.7, 1.0]))
