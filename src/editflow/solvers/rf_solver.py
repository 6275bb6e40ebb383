"""RF-Solver: a second-order Taylor step for the rectified-flow ODE (Wang et al., "Taming Rectified
Flow for Inversion and Editing", arXiv 2411.04746, ICML 2025).

With ``h = t_{i+1} - t_i`` (negative when denoising, positive when inverting), the exact solution
is expanded to second order in ``h`` and the time derivative of the velocity is estimated from a
half step:

    v_i      = v(z_i, t_i)
    z_mid    = z_i + (h / 2) v_i
    dv/dt   ~= (v(z_mid, t_i + h/2) - v_i) / (h / 2)
    z_{i+1}  = z_i + h v_i + (h^2 / 2) dv/dt                              [2 NFE per step]

Algebraically ``z_{i+1} = z_i + h v(z_mid, t_i + h/2)``: the explicit midpoint method (noted in
FireFlow's issue #6 and agreed by its authors); the Taylor form is kept because it is the paper's.
The global error falls like ``h^2``. Reference defaults for FLUX (RF-Solver-Edit README/scripts):
15-30 steps, so 30-60 calls per trajectory.
"""

from __future__ import annotations

import torch

from ..models.base import VelocityFn
from .base import StepCallback


def rf_solver(velocity: VelocityFn, z: torch.Tensor, ts: torch.Tensor,
              callback: StepCallback | None = None) -> torch.Tensor:
    """Integrate from ``ts[0]`` to ``ts[-1]`` with RF-Solver's second-order step (2 NFE per step)."""
    for i in range(len(ts) - 1):
        t, t_next = float(ts[i]), float(ts[i + 1])
        if callback is not None:
            callback(i, t, z)
        h = t_next - t
        v = velocity(z, t)
        v_mid = velocity(z + (h / 2) * v, t + h / 2)
        dv_dt = (v_mid - v) / (h / 2)
        z = z + h * v + (h * h / 2) * dv_dt
    return z
