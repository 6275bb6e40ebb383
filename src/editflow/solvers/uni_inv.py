"""Uni-Inv: predictor-corrector inversion of the Euler sampler (Jiao et al., "UniEdit-Flow: Unleashing
Inversion and Editing in the Era of Flow Models", arXiv 2504.13109; code DSL-Lab/UniEdit-Flow @69f7e81,
``UniEdit-Flow_diffusers/schedulers/UniInvEulerScheduler.py`` ``step`` and
``UniEdit-Flow_FLUX/src/flux/sampling.py`` ``edit_uniedit(inverse=True)``).

Inverting an Euler sampling step ``z_j = z_{j+1} - h v(z_{j+1}, t_{j+1})`` exactly needs the
velocity at the unknown end point. Uni-Inv predicts the end point with the previous step's
velocity and evaluates the model there, along an increasing schedule ``t_0 < ... < t_n``
(``h_j = t_{j+1} - t_j > 0``):

    u_0     = v(z_0, t_0)                              (or a given u_0: no call)
    zhat    = z_j + h_j u_j                            predictor, no call
    u_{j+1} = v(zhat, t_{j+1})                         one call, at the step's end time
    z_{j+1} = z_j + h_j u_{j+1}                        corrector          [n + 1 NFE for n steps]

As an integrator of the ODE this is first order (the velocity is taken at the step's end: a
backward-Euler step with one fixed-point iteration). Its point is the round trip: an Euler step
from ``z_{j+1}`` back down evaluates ``v(z_{j+1}, t_{j+1})``, which differs from ``u_{j+1}`` by
``O(|zhat - z_{j+1}|) = O(h^2)``, so each step comes back to within ``O(h^3)`` and inversion followed by
Euler sampling returns the start within ``O(h^2)`` (Euler inversion: ``O(h)``; tested on an analytic
flow). On a decreasing schedule the solver is Euler's method, the sampler it inverts.

DNAEdit's direct noise alignment (:mod:`editflow.methods.dnaedit`) is this scheme with ``u_0``
replaced by the interpolation velocity ``eps - z_0`` of a random noise (one call fewer), which is
why it is built on :func:`predictor_corrector`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..models.base import VelocityFn
from .base import StepCallback, is_inversion
from .euler import euler


@dataclass
class Trajectory:
    """What :func:`predictor_corrector` passed through: ``z[j]`` the states (``n + 1``),
    ``z_hat[j]`` and ``u[j]`` the point and velocity of step ``j``'s call (``n`` each)."""

    z: list[torch.Tensor] = field(default_factory=list)
    z_hat: list[torch.Tensor] = field(default_factory=list)
    u: list[torch.Tensor] = field(default_factory=list)


def predictor_corrector(velocity: VelocityFn, z: torch.Tensor, ts: torch.Tensor, u0: torch.Tensor | None = None,
                        callback: StepCallback | None = None, trajectory: Trajectory | None = None) -> torch.Tensor:
    """Uni-Inv's steps along ``ts`` (increasing) from ``z``; ``u0``: the first predictor's velocity
    (``None``: ``v(z, ts[0])``, one more call). ``trajectory`` (optional) is filled as it goes."""
    u = velocity(z, float(ts[0])) if u0 is None else u0
    if trajectory is not None:
        trajectory.z.append(z)
    for j in range(len(ts) - 1):
        t, t_next = float(ts[j]), float(ts[j + 1])
        if callback is not None:
            callback(j, t, z)
        h = t_next - t
        z_hat = z + h * u
        u = velocity(z_hat, t_next)
        z = z + h * u
        if trajectory is not None:
            trajectory.z_hat.append(z_hat)
            trajectory.u.append(u)
            trajectory.z.append(z)
    return z


def uni_inv(velocity: VelocityFn, z: torch.Tensor, ts: torch.Tensor, callback: StepCallback | None = None) -> torch.Tensor:
    """Uni-Inv on an increasing schedule (``n + 1`` NFE), Euler's method on a decreasing one (``n``)."""
    if len(ts) < 2:
        return z
    if not is_inversion(ts):
        return euler(velocity, z, ts, callback)
    return predictor_corrector(velocity, z, ts, callback=callback)


def uni_inv_nfe(steps: int, inverse: bool, from_noise: bool) -> int:
    return steps + 1 if inverse and steps > 0 else steps
