"""RF-Inversion's controlled vector fields (Rout et al., "Semantic Image Inversion and Editing using
Rectified Stochastic Differential Equations", arXiv 2410.10792, ICLR 2025), in editflow's time
(``t = 0`` data, ``t = 1`` noise; the paper runs its reverse process in ``1 - t``).

Forward (inversion, Eq. 8), towards a fixed noise sample ``y1 ~ N(0, I)``:

    u_cond(Y, t) = (y1 - Y) / (1 - t)                the field that reaches y1 at t = 1
    u_hat        = u + gamma (u_cond - u)            gamma in [0, 1]; gamma = 0 is plain inversion

Reverse (editing, Eq. 15), towards the clean source latent ``y0``:

    v_cond(X, t) = (X - y0) / t                      the field that reaches y0 at t = 0
    v_hat        = v + eta_t (v_cond - v)            eta_t = 0 is plain denoising

Reverse SDE (Theorem 3.5, Eq. 17), written for decreasing ``t``: the same drift plus the score
term of the family of SDEs sharing the ODE's marginals, with a diffusion that vanishes as
``eta -> 1``:

    g^2   = 2 (1 - eta_t) t / (1 - t)
    score = -(X + (1 - t) v) / t                     from the model's velocity
    X_next = X + (t_next - t) (v_hat - (g^2 / 2) score) + g sqrt(t - t_next) xi

The step that starts at ``t = 1`` (where ``g`` is infinite) is an ODE step, as in the authors'
SDE code. Their code adds noise of variance ``2 t / (1 - t) dt`` whatever ``eta`` is; editflow
follows the paper's Eq. 17 (noise scaled by ``1 - eta``), so that ``eta = 1`` stays exact.
"""

from __future__ import annotations

import torch

from ..models.base import VelocityFn
from .base import StepCallback


def toward_noise(velocity: VelocityFn, y1: torch.Tensor, gamma: float) -> VelocityFn:
    """The controlled forward field ``u + gamma ((y1 - Y) / (1 - t) - u)`` (Eq. 8)."""

    def u_hat(z: torch.Tensor, t: float) -> torch.Tensor:
        u = velocity(z, t)
        if gamma == 0:
            return u
        return u + gamma * ((y1 - z) / (1 - t) - u)

    return u_hat


def toward_source(v: torch.Tensor, z: torch.Tensor, t: float, y0: torch.Tensor, eta: float) -> torch.Tensor:
    """The controlled reverse field ``v + eta ((X - y0) / t - v)`` (Eq. 15) from the model's ``v``."""
    if eta == 0:
        return v
    return v + eta * ((z - y0) / t - v)


def controlled_reverse(velocity: VelocityFn, z: torch.Tensor, ts: torch.Tensor, y0: torch.Tensor,
                       etas: list[float], sde: bool = False, generator: torch.Generator | None = None,
                       callback: StepCallback | None = None) -> torch.Tensor:
    """Denoise along the decreasing ``ts`` with the controlled field; ``etas[i]`` is step ``i``'s eta.

    ``sde=True`` takes Euler-Maruyama steps of Eq. 17 (noise from ``generator``).
    """
    for i in range(len(ts) - 1):
        t, t_next = float(ts[i]), float(ts[i + 1])
        if callback is not None:
            callback(i, t, z)
        v = velocity(z, t)
        drift = toward_source(v, z, t, y0, etas[i])
        if sde and t < 1 and etas[i] < 1:
            g2 = 2 * (1 - etas[i]) * t / (1 - t)
            score = -(z + (1 - t) * v) / t
            xi = torch.randn(z.shape, generator=generator, dtype=z.dtype, device="cpu").to(z.device)
            z = z + (t_next - t) * (drift - g2 / 2 * score) + (g2 * (t - t_next)) ** 0.5 * xi
        else:
            z = z + (t_next - t) * drift
    return z
