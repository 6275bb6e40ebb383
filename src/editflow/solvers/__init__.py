"""ODE solvers over a velocity callable and a schedule (k-diffusion style: small pure functions).

Each solver takes ``(velocity, z, ts)`` and integrates ``dz/dt = velocity(z, t)`` from ``ts[0]``
to ``ts[-1]``; inversion is the same call with an increasing schedule (see :func:`inversion_times`).
"""

from __future__ import annotations

import torch

from .euler import euler

SOLVERS = {"euler": euler}


def inversion_times(ts: torch.Tensor) -> torch.Tensor:
    """The increasing schedule that inverts a denoising schedule ``ts`` (``ts[-1] -> ts[0]``)."""
    return ts.flip(0)


def get_solver(name: str):
    from ..errors import ParameterError

    if name not in SOLVERS:
        raise ParameterError(f"unknown solver {name!r}: use one of {', '.join(SOLVERS)}")
    return SOLVERS[name]


__all__ = ["SOLVERS", "euler", "get_solver", "inversion_times"]
