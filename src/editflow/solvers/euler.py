"""Euler's method for ``dz/dt = v(z, t)``, in either direction.

Denoising runs along a decreasing schedule (``t_next < t``); inversion runs the same update
along an increasing one (``t_next > t``), towards noise:

    z(t_{i+1}) = z(t_i) + (t_{i+1} - t_i) v(z(t_i), t_i)            [1 NFE per step]

First order: the global error falls like the step size.
"""

from __future__ import annotations

from typing import Callable

import torch

from ..models.base import VelocityFn

StepCallback = Callable[[int, float, torch.Tensor], None]


def euler(velocity: VelocityFn, z: torch.Tensor, ts: torch.Tensor, callback: StepCallback | None = None) -> torch.Tensor:
    """Integrate from ``ts[0]`` to ``ts[-1]``; ``callback(i, t_i, z_i)`` sees each state before its step."""
    for i in range(len(ts) - 1):
        t, t_next = float(ts[i]), float(ts[i + 1])
        if callback is not None:
            callback(i, t, z)
        z = z + (t_next - t) * velocity(z, t)
    return z
