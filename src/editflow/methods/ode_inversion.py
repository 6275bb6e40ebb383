"""Editing by ODE inversion: invert with the source prompt, regenerate with the target prompt.

The textbook baseline of every inversion-based method (FlowEdit's Fig. 2a, RF-Inversion's and
RF-Solver's "vanilla" baseline). With the schedule ``t_T = 1 > ... > t_0 = 0`` and
``k = skip`` steps skipped at the noise end:

    inversion:    Z_0 = X^src;   Z_{t_{i+1}} = Z_{t_i} + (t_{i+1} - t_i) V^src(Z_{t_i}, t_i)   up to t_{T-k}
    regeneration: Z_{t_{i-1}} = Z_{t_i} + (t_{i-1} - t_i) V^tar(Z_{t_i}, t_i)                  back to 0

(written for the Euler solver; ``solver`` picks any of :data:`editflow.solvers.SOLVERS`, e.g.
``rf_solver``, ``fireflow``, ``dpmpp_2m`` or ``nudged_euler``). NFE = the solver's count for
``steps - skip`` steps, inverting plus regenerating, one row per call: Euler ``2 (steps - skip)``,
RF-Solver ``4 (steps - skip)``, FireFlow ``2 (steps - skip + 1)``. With equal prompts and guidance the output differs
from the input only by the solver's discretisation error, which falls as ``steps`` grows at the
solver's order.

Defaults: no paper fixes them; editflow uses FlowEdit's settings per family (FLUX: 28 steps,
guidance 1.5 / 5.5; SD3: 50 steps, 3.5 / 13.5; UNets: 25 steps, 1.5 / 16.5) so that the two are compared on equal footing.
``skip = steps - n_max`` starts from FlowEdit's noise level (its "editing by inversion" baseline).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ..models.base import NFE, FlowModel
from ..solvers import get_solver, inversion_times
from .base import EditRequest, MethodParams, register
from .cache import inverted

PAPER = "baseline: ODE inversion and regeneration (e.g. Kulikov et al. 2024, Sec. 3; Rout et al. 2024, Sec. 3)"


@dataclass
class ODEInversionParams(MethodParams):
    """steps: schedule length. skip: steps skipped at the noise end (invert only up to t_{T-skip}).
    source_guidance: guidance while inverting. target_guidance: guidance while regenerating.
    solver: ODE solver name (see editflow.solvers)."""

    FAMILY_DEFAULTS: ClassVar[dict] = {
        "flux": dict(steps=28, source_guidance=1.5, target_guidance=5.5),
        "sd3": dict(steps=50, source_guidance=3.5, target_guidance=13.5),
        "unet": dict(steps=25, source_guidance=1.5, target_guidance=16.5),
    }

    steps: int = 28
    skip: int = 0
    source_guidance: float = 1.5
    target_guidance: float = 5.5
    solver: str = "euler"

    def validate(self) -> None:
        super().validate()
        self.require_step_index("skip")
        get_solver(self.solver)


def ode_inversion_nfe(p: ODEInversionParams) -> NFE:
    solver, n, from_noise = get_solver(p.solver), p.steps - p.skip, p.skip == 0
    calls = solver.nfe(n, True, from_noise) + solver.nfe(n, False, from_noise)
    return NFE(calls=calls, rows=calls)


@register("ode_inversion", ODEInversionParams, ode_inversion_nfe, PAPER)
def ode_inversion(model: FlowModel, req: EditRequest, p: ODEInversionParams, generator: torch.Generator) -> torch.Tensor:
    """Invert with the source prompt, regenerate with the target prompt (deterministic)."""
    solve = get_solver(p.solver)
    ts = model.schedule(p.steps, req.grid)[p.skip :]
    src, tar = model.encode_prompt(req.source_prompt), model.encode_prompt(req.target_prompt)
    z1 = inverted(model, req, "ode_inversion",
                  lambda: solve(lambda z, t: model.velocity(z, t, src, req.grid, guidance=p.source_guidance),
                                req.x_src.float(), inversion_times(ts)),
                  steps=p.steps, skip=p.skip, guidance=p.source_guidance, solver=p.solver)
    return solve(lambda z, t: model.velocity(z, t, tar, req.grid, guidance=p.target_guidance), z1, ts)
