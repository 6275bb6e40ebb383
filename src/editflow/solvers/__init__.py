"""ODE solvers over a velocity callable and a schedule (k-diffusion style: small pure functions).

Each solver takes ``(velocity, z, ts, callback=None)`` and integrates ``dz/dt = velocity(z, t)``
from ``ts[0]`` to ``ts[-1]``; inversion is the same call with an increasing schedule (see
:func:`inversion_times`). ``SOLVERS`` maps names to :class:`Solver` entries that state each
solver's order and NFE; ``get_solver("nudged_<name>")`` wraps any of them in Stable Flow's latent
nudging.

| name | order | NFE for N steps | paper |
| --- | --- | --- | --- |
| euler | 1 | N | - |
| rf_solver | 2 | 2N | Wang et al. 2024 (RF-Solver) |
| fireflow | 2 | N + 1 | Deng et al. 2025 (FireFlow) |
| dpmpp_2m | 2 | N; inversion (iters + 1) N (+1) | Lu et al. 2022; Hong et al. 2024; DiT4Edit |
| dpmpp_2m_explicit | 2 | N | the explicit 2M formula in both directions |
| uni_inv | 1 (its round trip with Euler: 2) | N; inversion N + 1 | Jiao et al. 2025 (UniEdit-Flow) |
| fixed_point | 1 | N; inversion 3N | Xu et al. 2025 (FTEdit: averaged fixed-point inversion of Euler sampling) |
| nudged_<name> | as base | as base | Avrahami et al. 2024 (Stable Flow) |
"""

from __future__ import annotations

from ..errors import ParameterError
from .base import Solver, StepCallback, is_inversion
from .dpm_solver import dpmpp_2m, dpmpp_2m_explicit, dpmpp_2m_nfe
from .euler import euler
from .fixed_point import fixed_point, fixed_point_nfe
from .fireflow import fireflow
from .nudging import LAMBDA, nudged
from .rf_solver import rf_solver
from .uni_inv import uni_inv, uni_inv_nfe

SOLVERS: dict[str, Solver] = {
    s.name: s
    for s in (
        Solver("euler", euler, 1, lambda n, inverse, from_noise: n, "Euler's method"),
        Solver("rf_solver", rf_solver, 2, lambda n, inverse, from_noise: 2 * n,
               "Wang et al., Taming Rectified Flow for Inversion and Editing, arXiv 2411.04746"),
        Solver("fireflow", fireflow, 2, lambda n, inverse, from_noise: n + 1,
               "Deng et al., FireFlow: Fast Inversion of Rectified Flow for Image Semantic Editing, arXiv 2412.07517"),
        Solver("dpmpp_2m", dpmpp_2m, 2, dpmpp_2m_nfe,
               "Lu et al., DPM-Solver++, arXiv 2211.01095; inversion: Hong et al., arXiv 2311.18387, "
               "as used by DiT4Edit, arXiv 2411.03286"),
        Solver("dpmpp_2m_explicit", dpmpp_2m_explicit, 2, lambda n, inverse, from_noise: n,
               "Lu et al., DPM-Solver++, arXiv 2211.01095 (explicit formula in both directions)"),
        Solver("fixed_point", fixed_point, 1, fixed_point_nfe,
               "Xu et al., Unveil Inversion and Invariance in Flow Transformer for Versatile Image Editing, "
               "arXiv 2411.15843 (FTEdit: averaged fixed-point inversion of Euler sampling)"),
        Solver("uni_inv", uni_inv, 1, uni_inv_nfe,
               "Jiao et al., UniEdit-Flow, arXiv 2504.13109 (Uni-Inv: predictor-corrector inversion of Euler sampling)"),
    )
}

NUDGE_PREFIX = "nudged_"


def inversion_times(ts):
    """The increasing schedule that inverts a denoising schedule ``ts`` (``ts[-1] -> ts[0]``)."""
    return ts.flip(0)


def get_solver(name: str) -> Solver:
    """The solver called ``name``; ``nudged_<name>`` adds latent nudging (lambda = 1.15)."""
    if not isinstance(name, str):
        raise ParameterError(f"a solver is named by a string, got {name!r}")
    base_name = name[len(NUDGE_PREFIX):] if name.startswith(NUDGE_PREFIX) else name
    if base_name not in SOLVERS:
        names = ", ".join(list(SOLVERS) + [NUDGE_PREFIX + "<name>"])
        raise ParameterError(f"unknown solver {name!r}: use one of {names}")
    base = SOLVERS[base_name]
    if base_name == name:
        return base
    paper = "Avrahami et al., Stable Flow, arXiv 2411.14430 (latent nudging) over " + base.name
    return Solver(name, nudged(base.solve, LAMBDA), base.order, base.nfe, paper)


__all__ = [
    "SOLVERS", "Solver", "StepCallback", "dpmpp_2m", "dpmpp_2m_explicit", "euler", "fireflow", "fixed_point",
    "get_solver", "inversion_times", "is_inversion", "nudged", "rf_solver", "uni_inv",
]
