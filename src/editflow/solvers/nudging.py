"""Latent nudging (Avrahami et al., "Stable Flow: Vital Layers for Training-Free Image Editing",
arXiv 2411.14430, Sec. 4.2): scale the clean latent by ``lambda = 1.15`` before inverting it, so
that the inverse ODE starts slightly off the data manifold, where the model's velocity is
better behaved (the paper's fix for inverse Euler's poor reconstructions); undo it after
regeneration.

    inversion:     z_0 <- lambda z_0,  then the base solver towards t = 1
    regeneration:  the base solver towards t = 0,  then z_0 <- z_0 / lambda

A wrapper, so any solver can be nudged (``nudged_euler`` is the paper's; ``nudged_fireflow`` etc.
also work). The scaling happens only at the data end: a schedule that starts at ``t = 0``
is nudged first, one that ends at ``t = 0`` is un-nudged last; intermediate segments pass
through. Deviation: the reference code does not divide by lambda before decoding (its output
latent stays scaled by 1.15); editflow undoes it, so that equal prompts return the input.
NFE: the base solver's.
"""

from __future__ import annotations

from functools import wraps

import torch

from ..models.base import VelocityFn
from .base import SolveFn, StepCallback

LAMBDA = 1.15


def nudged(solve: SolveFn, lam: float = LAMBDA) -> SolveFn:
    """``solve`` with latent nudging by ``lam`` at the data end of the schedule."""

    @wraps(solve)
    def nudged_solve(velocity: VelocityFn, z: torch.Tensor, ts: torch.Tensor,
                     callback: StepCallback | None = None) -> torch.Tensor:
        if float(ts[0]) == 0.0:
            z = z * lam
        z = solve(velocity, z, ts, callback=callback)
        if float(ts[-1]) == 0.0:
            z = z / lam
        return z

    return nudged_solve
