"""Flows whose optimal rectified-flow velocity is known in closed form, for tests and teaching.

Data ``x0 ~ N(m, s^2 I)``, noise ``eps ~ N(0, I)``, ``z_t = (1 - t) x0 + t eps``. Then
``z_t ~ N((1 - t) m, sigma_t^2 I)`` with ``sigma_t^2 = (1 - t)^2 s^2 + t^2``, and the marginal
(rectified-flow) velocity ``v = E[eps - x0 | z_t]`` is

    v(z, t) = (t - (1 - t) s^2) / sigma_t^2 * (z - (1 - t) m) - m.

Its ODE maps states exactly: ``z_b - (1 - b) m = (sigma_b / sigma_a) (z_a - (1 - a) m)``.

For a mixture ``sum_k pi_k N(m_k, s_k^2 I)`` the velocity is the posterior-weighted sum of the
components' velocities, ``v = sum_k w_k(z, t) v_k(z, t)`` with
``w_k ∝ pi_k N(z; (1 - t) m_k, sigma_k(t)^2 I)``: still exact, but the ODE has no closed-form
solution (use :meth:`GaussianMixtureFlow.reference` for a converged one). Unlike a single
Gaussian, whose velocity is affine in ``z``, it is a genuinely nonlinear flow.

:class:`AnalyticModel` puts such flows behind the :class:`~editflow.models.base.FlowModel`
velocity interface (one flow per prompt, latent tokens ``[B, N, C]``, calls counted), so methods
can run on a model whose every velocity is exact.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

from ..errors import EditflowError
from ..models.base import CallCounter, Cond, TokenGrid, check_steps, resolution_mu, time_shift_exponential


class GaussianFlow:
    """Data ``N(mean, std^2 I)``: velocity and exact ODE solution in closed form."""

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


class GaussianMixtureFlow:
    """Data ``sum_k weights_k N(means_k, stds_k^2 I)`` in ``dim`` dimensions (the last axis of ``z``)."""

    def __init__(self, means: Sequence[Sequence[float]], stds: Sequence[float], weights: Sequence[float] | None = None):
        self.means = torch.as_tensor(means, dtype=torch.float64)  # [K, D]
        self.stds = torch.as_tensor(stds, dtype=torch.float64)  # [K]
        k = self.means.shape[0]
        w = torch.full((k,), 1.0 / k, dtype=torch.float64) if weights is None else torch.as_tensor(weights, dtype=torch.float64)
        if self.means.dim() != 2 or self.stds.shape != (k,) or w.shape != (k,) or (self.stds <= 0).any() or (w <= 0).any():
            raise ValueError("means must be [K, D], stds and weights [K] and positive")
        self.log_weights = (w / w.sum()).log()

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def velocity(self, z: torch.Tensor, t: float) -> torch.Tensor:
        t = float(t)
        dtype = z.dtype
        zz = z.to(torch.float64).unsqueeze(-2)  # [..., 1, D]
        means = (1 - t) * self.means  # [K, D]
        var = (1 - t) ** 2 * self.stds**2 + t**2  # [K]
        diff = zz - means
        logp = self.log_weights - 0.5 * (diff**2).sum(-1) / var - 0.5 * self.dim * var.log()
        w = torch.softmax(logp, dim=-1).unsqueeze(-1)  # [..., K, 1]
        coef = ((t - (1 - t) * self.stds**2) / var).unsqueeze(-1)  # [K, 1]
        v_k = coef * diff - self.means
        return (w * v_k).sum(-2).to(dtype)

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` data points ``[n, D]``."""
        k = torch.multinomial(self.log_weights.exp(), n, replacement=True, generator=generator)
        eps = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        return self.means[k] + self.stds[k, None] * eps

    def reference(self, z: torch.Tensor, a: float, b: float, steps: int = 4000) -> torch.Tensor:
        """A converged solution at time ``b`` from ``z`` at time ``a`` (classical RK4, float64)."""
        z = z.to(torch.float64)
        ts = torch.linspace(a, b, steps + 1, dtype=torch.float64).tolist()
        for t, u in zip(ts, ts[1:]):
            h = u - t
            k1 = self.velocity(z, t)
            k2 = self.velocity(z + h / 2 * k1, t + h / 2)
            k3 = self.velocity(z + h / 2 * k2, t + h / 2)
            k4 = self.velocity(z + h * k3, u)
            z = z + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
        return z


class AnalyticModel:
    """A :class:`~editflow.models.base.FlowModel` whose velocity is an analytic flow, per prompt.

    ``flows`` maps prompts to flows (anything with ``velocity(z, t)`` acting on the last axis);
    ``default`` serves every other prompt. Latents are tokens ``[B, N, C]`` with ``C`` the flows'
    dimension; guidance is accepted and ignored (the flows are exact, not guided). There are no
    images: :meth:`encode_image` and :meth:`decode` refuse, so use it with latent tokens
    (:class:`~editflow.methods.EditRequest`). Schedules are FLUX's (resolution shift).
    """

    family = "flux"
    name = "analytic"
    guidance_distilled = True
    default_guidance = 1.0
    pixel_multiple = 16

    def __init__(self, default, flows: dict[str, object] | None = None, channels: int | None = None):
        self.default = default
        self.flows = dict(flows or {})
        self.channels = channels or getattr(default, "dim", 1)
        self.counter = CallCounter()

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        return torch.float64

    def grid(self, height: int, width: int) -> TokenGrid:
        m = self.pixel_multiple
        if height % m or width % m or height <= 0 or width <= 0:
            raise EditflowError(f"image size {width}x{height} is not a positive multiple of {m}")
        return TokenGrid(height, width, height // m, width // m)

    def encode_prompt(self, prompt: str) -> Cond:
        return Cond(torch.zeros(1, 1, 1), torch.zeros(1, 1), (prompt,))

    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        raise EditflowError("the analytic model has no image space: pass latent tokens instead")

    def decode(self, latents: torch.Tensor, grid: TokenGrid) -> torch.Tensor:
        raise EditflowError("the analytic model has no image space: use the latent tokens directly")

    def schedule(self, steps: int, grid: TokenGrid) -> torch.Tensor:
        check_steps(steps)
        t = torch.linspace(1.0, 1.0 / steps, steps, dtype=torch.float64)
        t = time_shift_exponential(resolution_mu(grid.num_tokens), t)
        return torch.cat([t, torch.zeros(1, dtype=torch.float64)])

    def noise(self, grid: TokenGrid, generator: torch.Generator, batch: int = 1) -> torch.Tensor:
        return torch.randn(batch, grid.num_tokens, self.channels, generator=generator, dtype=torch.float64)

    def attention_layers(self) -> list[str]:
        return []

    def velocity(self, z, t, cond: Cond, grid: TokenGrid, guidance=None, control=None, tokens=None) -> torch.Tensor:
        if control is not None:
            raise EditflowError("the analytic model has no attention to control")
        rows = cond.expand(z.shape[0]).prompts
        out = torch.stack([self.flows.get(p, self.default).velocity(z[i], float(t)) for i, p in enumerate(rows)])
        self.counter.record(z.shape[0])
        return out
