"""RF-Inversion: inversion and editing with controlled rectified flows (Rout, Chen, Ruiz, Caramanis,
Shakkottai, Chu, "Semantic Image Inversion and Editing using Rectified Stochastic Differential
Equations", arXiv 2410.10792, ICLR 2025).

Over the schedule ``t_T = 1 > ... > t_0 = 0`` (``T = steps``), with ``y0`` the clean source latent
and ``y1 ~ N(0, I)`` drawn once per edit (see :mod:`editflow.solvers.controlled`):

    inversion (Alg. 1):  Y_0 = y0;  Y_{t_{i+1}} = Y_{t_i} + (t_{i+1} - t_i) [u + gamma (u_cond - u)](Y_{t_i}, t_i)
                         u = v(., . | source prompt),  u_cond = (y1 - Y) / (1 - t)
    editing (Alg. 2):    X_1 = Y_1;  X_{t_{i-1}} = X_{t_i} + (t_{i-1} - t_i) [v + eta_i (v_cond - v)](X_{t_i}, t_i)
                         v = v(., . | target prompt),  v_cond = (X - y0) / t
    eta_i = eta for start <= i < stop (steps counted from the noise end), else 0;
    with decay_eta, eta_i *= (1 - i / T) ** eta_decay_power.

``sde=True`` replaces the editing ODE by the paper's controlled reverse SDE (Eq. 17). The method
needs only the target prompt: inversion uses the empty prompt unless ``use_source_prompt``.
gamma = 0 makes the inversion plain Euler inversion; eta = 0 makes the editing plain Euler
denoising; eta = 1 on every step returns y0 exactly. NFE = 2 T, one row each.

Defaults for FLUX.1-dev (diffusers' community RFInversionFluxPipeline and the official README):
28 steps, gamma = 0.5, eta = 0.9 (the README's example; the pipeline's own default is 1.0),
start = 0, stop = 0.25 (7 of 28 steps), no eta decay (power 1), inversion with the empty prompt
and guidance 0, editing guidance 3.5. The paper's Table 4 tunes (start, stop, eta) per task,
e.g. object insertion (0, 6, 1.0), stylisation (0, 6, 0.9), glasses (6, 25, 0.7).

Deviation (diffusers ``examples/community/pipeline_flux_rf_inversion.py`` @58eb52c0, ``invert``;
its loop is unchanged since c9e4fab): the pipeline's inversion step ``i = 0 ... T-1`` calls the model
and forms ``u_cond`` at time ``i / (T + 1)`` (``T + 1 = len(scheduler.sigmas)``, the final 0
included; at most ``(T - 1) / (T + 1)``, 0.931 for 28 steps; made in the latent's dtype, so bf16
rounds it) and steps by ``ts[i] - ts[i+1]``: the shifted schedule's step sizes in denoising order,
so the small steps come first at the data end and the latent's own noise level after ``i`` steps
is ``1 - ts[i]``, which the model's time runs ahead of (0.48 against 0.24 halfway at 1024^2).
editflow inverts along the shifted schedule backwards (model time = the latent's time ``ts[T-i]``,
step ``ts[T-i-1] - ts[T-i]``). ``inversion_times="reference"`` reproduces the pipeline (its time
rounded to the model's dtype as there), up to the rounding of the pipeline's bf16 arithmetic
(``1 - t`` and the state in bf16, the editing time rounded as ``1000 t`` before dividing); the
editing pass is the pipeline's in both modes
(``__call__``: model time ``ts[i]``, ``v_cond = (X - y0) / ts[i]``, eta on
``int(start T) <= i < min(int(stop T), T)``). The pipeline draws ``y1`` with ``randn_like`` from the
global generator and encodes the source with ``latent_dist.sample()``; editflow draws ``y1`` from
the edit's generator and its adapters encode with the posterior mode (deterministic).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ..errors import ParameterError
from ..models.base import NFE, FlowModel
from ..solvers import euler, inversion_times
from ..solvers.controlled import controlled_reverse, toward_noise
from .base import EditRequest, MethodParams, register
from .cache import inverted

INVERSION_TIMES = ("editflow", "reference")
PAPER = ("Rout et al., Semantic Image Inversion and Editing using Rectified Stochastic Differential "
         "Equations, arXiv 2410.10792 (ICLR 2025)")


@dataclass
class RFInversionParams(MethodParams):
    """steps: schedule length T. gamma: pull of the inversion towards y1. eta: pull of the editing
    towards the source latent. start, stop: fractions of the steps (from the noise end) where eta
    acts. decay_eta, eta_decay_power: eta_i *= (1 - i/T)^power. sde: stochastic editing (Eq. 17).
    source_guidance, target_guidance: guidance of the two passes. use_source_prompt: invert with
    the source prompt instead of the empty one. inversion_times: editflow (the shifted schedule
    backwards) or reference (the diffusers pipeline's times i / (T + 1), step sizes reversed)."""

    FAMILY_DEFAULTS: ClassVar[dict] = {"flux": dict(steps=28, target_guidance=3.5)}

    steps: int = 28
    gamma: float = 0.5
    eta: float = 0.9
    start: float = 0.0
    stop: float = 0.25
    decay_eta: bool = False
    eta_decay_power: float = 1.0
    sde: bool = False
    source_guidance: float = 0.0
    target_guidance: float = 3.5
    use_source_prompt: bool = False
    inversion_times: str = "editflow"

    def validate(self) -> None:
        super().validate()
        self.require_choice("inversion_times", INVERSION_TIMES)
        self.require_fraction("gamma", "eta")
        if not 0.0 <= self.start <= self.stop <= 1.0:
            raise ParameterError(
                f"RF-Inversion needs 0 <= start <= stop <= 1 (fractions of the steps), got start={self.start}, stop={self.stop}"
            )

    def etas(self) -> list[float]:
        """eta_i for each editing step ``i`` (0 = the noise end), as the reference computes it."""
        first, last = int(self.start * self.steps), min(int(self.stop * self.steps), self.steps)
        out = []
        for i in range(self.steps):
            eta = self.eta if first <= i < last else 0.0
            if self.decay_eta:
                eta *= (1 - i / self.steps) ** self.eta_decay_power
            out.append(eta)
        return out


def rf_inversion_nfe(p: RFInversionParams) -> NFE:
    return NFE(calls=2 * p.steps, rows=2 * p.steps)


def invert(model: FlowModel, req: EditRequest, p: RFInversionParams, y1: torch.Tensor) -> torch.Tensor:
    """Alg. 1: the controlled forward ODE from the source latent to ``t = 1`` (``steps`` calls)."""
    ts = model.schedule(p.steps, req.grid)
    src = model.encode_prompt(req.source_prompt if p.use_source_prompt else "")
    u = toward_noise(lambda z, t: model.velocity(z, t, src, req.grid, guidance=p.source_guidance), y1, p.gamma)
    if p.inversion_times == "editflow":
        return euler(u, req.x_src.float(), inversion_times(ts))
    z = req.x_src.float()
    for i in range(p.steps):  # the pipeline: time i / (T + 1) in the latent's dtype, step ts[i] - ts[i+1]
        s = float(torch.tensor(i / (p.steps + 1), dtype=model.dtype))
        z = z + float(ts[i] - ts[i + 1]) * u(z, s)
    return z


def edit_from(model: FlowModel, req: EditRequest, p: RFInversionParams, z1: torch.Tensor,
              generator: torch.Generator | None) -> torch.Tensor:
    """Alg. 2: the controlled reverse ODE (or SDE) from ``z1`` with the target prompt (``steps`` calls)."""
    ts = model.schedule(p.steps, req.grid)
    tar = model.encode_prompt(req.target_prompt)
    v = lambda z, t: model.velocity(z, t, tar, req.grid, guidance=p.target_guidance)  # noqa: E731
    return controlled_reverse(v, z1, ts, req.x_src.float(), p.etas(), sde=p.sde, generator=generator)


@register("rf_inversion", RFInversionParams, rf_inversion_nfe, PAPER)
def rf_inversion(model: FlowModel, req: EditRequest, p: RFInversionParams, generator: torch.Generator) -> torch.Tensor:
    """Controlled ODE inversion towards fixed noise, controlled ODE/SDE editing towards the source."""
    y1 = model.noise(req.grid, generator).float()
    z1 = inverted(model, req, "rf_inversion", lambda: invert(model, req, p, y1), steps=p.steps, gamma=p.gamma,
                  use_source_prompt=p.use_source_prompt, guidance=p.source_guidance, y1=y1, times=p.inversion_times)
    return edit_from(model, req, p, z1, generator)
