"""What every solver shares: the callable types and the registry entry that states its cost.

A solver is a plain function ``solve(velocity, z, ts, callback=None) -> z`` that integrates
``dz/dt = velocity(z, t)`` from ``ts[0]`` to ``ts[-1]``. The schedule's direction is the
direction of integration: decreasing ``ts`` denoise (towards data, ``t = 0``), increasing ``ts``
invert (towards noise, ``t = 1``). Nothing else changes between the two directions, except for
solvers that state an inverse of their own (DPM-Solver++'s backward-Euler inversion).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from ..models.base import VelocityFn

StepCallback = Callable[[int, float, torch.Tensor], None]
"""``callback(i, t_i, z_i)`` sees each state before step ``i`` is taken."""

SolveFn = Callable[..., torch.Tensor]


@dataclass(frozen=True)
class Solver:
    """A registered solver: the function, its order, and its cost in model calls.

    ``nfe(steps, inverse, from_noise)`` is the number of velocity calls for a trajectory of
    ``steps`` steps; ``inverse`` says the schedule increases (inversion), ``from_noise`` that a
    denoising schedule starts at ``t = 1`` (an inversion one ends there).
    """

    name: str
    solve: SolveFn
    order: int
    nfe: Callable[[int, bool, bool], int]
    paper: str

    def __call__(self, velocity: VelocityFn, z: torch.Tensor, ts: torch.Tensor,
                 callback: StepCallback | None = None) -> torch.Tensor:
        return self.solve(velocity, z, ts, callback=callback)


def is_inversion(ts: torch.Tensor) -> bool:
    """True when the schedule runs towards noise (increasing times)."""
    return float(ts[-1]) > float(ts[0])
