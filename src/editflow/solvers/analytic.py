"""A flow with a closed-form velocity and exact solution, for testing solvers.

Data ``x0 ~ N(m, s^2 I)``, noise ``eps ~ N(0, I)``, ``z_t = (1 - t) x0 + t eps``. Then
``z_t ~ N((1 - t) m, sigma_t^2 I)`` with ``sigma_t^2 = (1 - t)^2 s^2 + t^2``, and the marginal
(rectified-flow) velocity ``v = E[eps - x0 | z_t]`` is

    v(z, t) = (t - (1 - t) s^2) / sigma_t^2 * (z - (1 - t) m) - m.

Its ODE maps states exactly: ``z_b - (1 - b) m = (sigma_b / sigma_a) (z_a - (1 - a) m)``.
"""

from __future__ import annotations

import math

import torch


class GaussianFlow:
    def __init__(self, mean: float = 0.7, std: float = 0.3):
        self.m, self.s = mean, std

    def sigma(self, t: float) -> float:
        return math.sqrt((1 - t) ** 2 * self.s**2 + t**2)

    def velocity(self, z: torch.Tensor, t: float) -> torch.Tensor:
        coef = (t - (1 - t) * self.s**2) / self.sigma(t) ** 2
        return coef * (z - (1 - t) * self.m) - self.m

    def exact(self, z: torch.Tensor, a: float, b: float) -> torch.Tensor:
        """The exact ODE solution at time ``b`` of the state ``z`` at time ``a``."""
        return (1 - b) * self.m + self.sigma(b) / self.sigma(a) * (z - (1 - a) * self.m)
