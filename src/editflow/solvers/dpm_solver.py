"""DPM-Solver++(2M) for rectified flows, in data prediction, and its backward-Euler inversion.

Sampler: Lu et al., "DPM-Solver++: Fast Solver for Guided Sampling of Diffusion Probabilistic
Models", arXiv 2211.01095. Inversion: the backward-Euler form of Hong et al., "On Exact Inversion
of DPM-Solvers" (CVPR 2024, arXiv 2311.18387), which DiT4Edit (Feng et al., arXiv 2411.03286,
AAAI 2025) uses to invert its DiT; DiT4Edit's code was never released, so this follows the
equations of its Sec. 3 written for flows.

Flows as diffusions: ``z_t = alpha_t x0 + sigma_t eps`` with ``alpha_t = 1 - t``, ``sigma_t = t``;
data prediction ``x_hat(z, t) = z - t v(z, t)``; half log-SNR ``lambda_t = log((1 - t) / t)``.
For a step ``t_i -> t_{i+1}`` with ``h_i = lambda_{t_{i+1}} - lambda_{t_i}`` and
``r_i = h_{i-1} / h_i``, DPM-Solver++(2M) is

    z_{i+1} = (sigma_{i+1} / sigma_i) z_i - alpha_{i+1} (e^{-h_i} - 1) D_i,
    D_i     = (1 + 1 / (2 r_i)) x_hat_i - (1 / (2 r_i)) x_hat_{i-1}                [1 NFE per step]

For flows ``sigma_{i+1}/sigma_i = t_{i+1}/t_i`` and ``-alpha_{i+1}(e^{-h_i} - 1) = (t_i - t_{i+1})/t_i``,
so the step is exactly an Euler step plus a second-order correction,

    z_{i+1} = z_i + (t_{i+1} - t_i) v(z_i, t_i) + c_i (x_hat_i - x_hat_{i-1}),
    c_i     = (t_i - t_{i+1}) / (2 r_i t_i),

which is how it is computed here (no division by ``t = 0``). The correction is dropped (first
order, DDIM = Euler) where ``lambda`` is infinite, i.e. when a step touches ``t = 0`` or ``t = 1``,
and on the first step (no history), as DPM-Solver++ does with ``lower_order_final``.

Inversion (increasing schedule). Inverting sampling step ``i`` means finding ``z_i`` given
``z_{i+1}``; ``x_hat_i`` depends on the unknown ``z_i`` and ``x_hat_{i-1}`` on the even noisier
``z_{i-1}``. Hong et al. (and DiT4Edit) estimate the second-order term from a plain DDIM (= Euler)
inversion ``y`` run first, then solve for ``z_i`` by the fixed-point (backward-Euler) iteration

    d'      = x_hat(z^k_i, t_i) + (x_hat(y_i, t_i) - x_hat(y_{i-1}, t_{i-1})) / (2 r_i)
    z'      = (t_{i+1}/t_i) z^k_i + ((t_i - t_{i+1})/t_i) d'                (the sampler's step)
    z^{k+1}_i = z^k_i - rho (z' - z_{i+1})

starting from ``z^0_i = z_{i+1} + (y_i - y_{i+1})``. NFE: ``N`` for the Euler pass (``N + 1`` when
the schedule stops short of ``t = 1`` and the second-order term needs ``x_hat`` at its end),
plus ``iters`` per step. Hong et al. iterate each step to a tolerance (up to 500 iterations, with
a DDIM pass on a finer grid); editflow uses the same grid and a fixed ``iters`` so the cost is
known in advance. Defaults ``iters = 1``, ``rho = 1``: on a Gaussian-mixture flow at 28 steps the
round trip (invert, then sample) is 2.5x closer than with the explicit formula and 8x closer
than Euler; more iterations gain little, since the second-order term's estimate limits it. ``dpmpp_2m_explicit`` instead runs the explicit multistep formula along the
increasing schedule (1 NFE per step, second order, but not the sampler's exact inverse).
"""

from __future__ import annotations

import math

import torch

from ..models.base import VelocityFn
from .base import StepCallback, is_inversion

INVERSION_ITERS = 1
INVERSION_RHO = 1.0


def half_log_snr(t: float) -> float:
    """``lambda_t = log((1 - t) / t)``: +inf at data, -inf at noise."""
    if t <= 0:
        return math.inf
    if t >= 1:
        return -math.inf
    return math.log((1 - t) / t)


def correction_coef(t_prev: float | None, t: float, t_next: float) -> float:
    """``c_i`` of the 2M step ``t -> t_next`` after ``t_prev``; 0 where the step is first order."""
    if t_prev is None or not all(0 < s < 1 for s in (t_prev, t, t_next)):
        return 0.0
    h = half_log_snr(t_next) - half_log_snr(t)
    r = (half_log_snr(t) - half_log_snr(t_prev)) / h
    return (t - t_next) / (2 * r * t)


def dpmpp_2m_explicit(velocity: VelocityFn, z: torch.Tensor, ts: torch.Tensor,
                      callback: StepCallback | None = None) -> torch.Tensor:
    """The explicit 2M multistep formula along ``ts`` in either direction (1 NFE per step)."""
    t_prev = x_prev = None
    for i in range(len(ts) - 1):
        t, t_next = float(ts[i]), float(ts[i + 1])
        if callback is not None:
            callback(i, t, z)
        v = velocity(z, t)
        x_hat = z - t * v
        c = correction_coef(t_prev, t, t_next)
        z = z + (t_next - t) * v
        if c:
            z = z + c * (x_hat - x_prev)
        t_prev, x_prev = t, x_hat
    return z


def dpmpp_2m(velocity: VelocityFn, z: torch.Tensor, ts: torch.Tensor, callback: StepCallback | None = None,
             iters: int = INVERSION_ITERS, rho: float = INVERSION_RHO) -> torch.Tensor:
    """DPM-Solver++(2M): the sampler on a decreasing schedule, its backward-Euler inverse on an
    increasing one (see the module docstring)."""
    if not is_inversion(ts):
        return dpmpp_2m_explicit(velocity, z, ts, callback)
    return _invert(velocity, z, ts, callback, iters, rho)


def _invert(velocity: VelocityFn, z: torch.Tensor, a: torch.Tensor, callback: StepCallback | None,
            iters: int, rho: float) -> torch.Tensor:
    n = len(a) - 1
    times = [float(s) for s in a]
    # The sampling step that inversion step j undoes runs a[j+1] -> a[j] after a[j+2].
    coefs = [correction_coef(times[j + 2] if j + 2 <= n else None, times[j + 1], times[j]) for j in range(n)]

    # 1) plain Euler (DDIM) inversion: y_j and x_hat(y_j, a_j) for the second-order estimates
    y, x_hat_y = [z], []
    for j in range(n):
        v = velocity(y[j], times[j])
        x_hat_y.append(y[j] - times[j] * v)
        y.append(y[j] + (times[j + 1] - times[j]) * v)
    if n >= 2 and coefs[n - 2]:
        x_hat_y.append(y[n] - times[n] * velocity(y[n], times[n]))

    # 2) backward Euler: solve sampler_step(w) = z_j for w at a[j+1]
    for j in range(n):
        t, t_up = times[j], times[j + 1]
        if callback is not None:
            callback(j, t, z)
        delta = coefs[j] * (x_hat_y[j + 1] - x_hat_y[j + 2]) if coefs[j] else 0.0
        w = z + (y[j + 1] - y[j])
        for _ in range(iters):
            stepped = w + (t - t_up) * velocity(w, t_up) + delta
            w = w - rho * (stepped - z)
        z = w
    return z


def dpmpp_2m_nfe(steps: int, inverse: bool, from_noise: bool, iters: int = INVERSION_ITERS) -> int:
    if not inverse:
        return steps
    extra = 1 if steps >= 3 and not from_noise else 0  # schedules end at t = 0, where steps are first order
    return steps + extra + iters * steps
