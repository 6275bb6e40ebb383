"""DNAEdit: Direct Noise Alignment and Mobile Velocity Guidance (Xie et al., "DNAEdit: Direct Noise
Alignment for Text-Guided Rectified Flow Editing", arXiv 2506.01430, NeurIPS 2025).

Released code read: xiechenxi99/DNAEdit_code @f611eeaf54438100b9b71826ddd5597a913946f5,
``scripts/DNAEdit_utils.py`` (``DNAEdit_FLUX`` and ``DNAEdit_SD3``; a fork of FlowEdit's code),
``configs/DNAEdit_FLUX_exp.yaml``, ``configs/DNAEdit_SD3_exp.yaml``, ``app.py``.

Over the schedule ``ts[0] = 1 > ... > ts[T] = 0``, with ``s = t_start`` steps skipped at the noise
end and ``K = T - s``:

Direct noise alignment (inversion, source prompt only; ``eps ~ N(0, I)`` drawn once). For each
step from ``a = ts[n]`` up to ``b = ts[n-1]`` (``n = T ... s + 1``):

    x_hat   = z + (b - a) / (1 - a) (eps - z)        the point at time b on the line from z to eps
    v_src   = v(x_hat, b | source)
    z      <- z + (b - a) v_src
    eps    <- eps - (1 - a) [(x_hat - z_old) / (b - a) - v_src]    (the noise, aligned)

After the first step the aligned noise puts ``x_hat`` at ``z + (b - a) v_src(previous)``: this is
Uni-Inv's predictor-corrector (:func:`editflow.solvers.uni_inv.predictor_corrector`) with the first
velocity ``u_0 = eps - x^src`` (the interpolation velocity of the random noise) instead of a model
call, and that is how it is computed here (equal to the code's form in exact arithmetic). Stored:
``z_k`` for ``k = s ... T``, and ``x_hat_k``, ``v_src_k`` (the call that ended at ``ts[k]``) for
``k = s ... T-1``.

Mobile velocity guidance (editing, target prompt only), from ``y = z_s`` and the moving reference
``r = x^src``, for ``k = s ... T-1``, ``t = ts[k]``, ``t' = ts[k+1]``:

    v_tar = v(y + (x_hat_k - z_k), t | target)       the inversion's look-ahead offset kept
    r    <- r + (t' - t) (v_tar - v_src_k)            FlowEdit's drift of the reference, first
    v     = mvg v_tar + (1 - mvg) (y - r) / t         the velocity that leads back to r
    y    <- y + (t' - t) v

NFE = ``K`` inversion calls + ``K`` editing calls, one row each (FLUX defaults: 24 + 24 = 48); the
inversion depends only on the source (image, prompt, guidance, noise), so the inversion cache
keeps it and a re-edit costs ``K`` calls. With equal prompts and guidances and ``mvg = 1`` the
output is the input; with ``mvg < 1`` it is not: ``(z_k - x^src) / t`` is the average source
velocity along the path, not the local one, so the result moves by ``O((1 - mvg) x curvature)``.

Defaults (the configs): FLUX.1-dev 28 steps, t_start 4, guidance 1 / 2.5, mvg 0.8; SD3.5-medium
40 steps, t_start 13, CFG 1 / 3.5 (against the empty prompt), mvg 0.8. ``t_start = None`` keeps
that fraction of the steps when ``steps`` changes (4/28, 13/40), rounded.

Deliberate differences from the released code:

* The code adds ``(x_hat_k - z_k)`` to ``y`` and updates ``y + (t' - t) v``; editflow computes
  ``x_hat_k + (y - z_k)`` and ``z_{k+1} + ((y - z_k) + (t' - t)(v - v_src_k))``, the same numbers in
  exact arithmetic, so that equal prompts at ``mvg = 1`` return the input bit for bit.
* The noise comes from the edit's generator (the run script seeds the global generator once per
  data set, so each image draws the next noise of one stream; the demo seeds nothing).
* mvg 0.8 is the configs' and demo's; the function default and the README say 0.85.
* On SD3 the code leaves the pipeline's CFG flag on while inverting with guidance 1, so each
  inversion call evaluates two identical conditional rows (108 rows at the defaults); editflow makes
  the one conditional row (81 rows: 27 + 2 x 27).
* The code's pipelines run in fp16 and cast the state back every step; editflow's method states
  are float32.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ..models.base import NFE, FlowModel
from ..solvers import inversion_times
from ..solvers.uni_inv import Trajectory, predictor_corrector
from .base import EditRequest, MethodParams, register
from .cache import inverted

PAPER = "Xie et al., DNAEdit: Direct Noise Alignment for Text-Guided Rectified Flow Editing, arXiv 2506.01430 (NeurIPS 2025)"

T_START_FRACTION = {"flux": 4 / 28, "sd3": 13 / 40}


@dataclass
class DNAEditParams(MethodParams):
    """steps: schedule length T. t_start: steps skipped at the noise end; None = the paper's fraction
    of T. source_guidance / target_guidance: guidance of inversion / editing. mvg: weight of the
    target velocity in mobile velocity guidance (1 = the target velocity alone)."""

    FAMILIES: ClassVar[tuple[str, ...]] = ("flux", "sd3")  # the released code's; no UNet defaults
    FAMILY_DEFAULTS: ClassVar[dict] = {
        "flux": dict(steps=28, source_guidance=1.0, target_guidance=2.5, mvg=0.8),
        "sd3": dict(steps=40, source_guidance=1.0, target_guidance=3.5, mvg=0.8),
    }

    steps: int = 28
    t_start: int | None = None
    source_guidance: float = 1.0
    target_guidance: float = 2.5
    mvg: float = 0.8

    def resolve(self, family: str) -> None:
        if self.t_start is None:
            self.t_start = round(self.steps * T_START_FRACTION.get(family, T_START_FRACTION["flux"]))

    def validate(self) -> None:
        super().validate()
        if self.t_start is not None:
            self.require_step_index("t_start")
        self.require_fraction("mvg")


def dnaedit_nfe(p: DNAEditParams) -> NFE:
    k = p.steps - p.t_start
    return NFE(calls=2 * k, rows=2 * k)


def align(model: FlowModel, req: EditRequest, p: DNAEditParams, eps: torch.Tensor, ts: torch.Tensor) -> Trajectory:
    """Direct noise alignment from the source latent up to ``ts[0]`` (``K`` calls)."""
    src = model.encode_prompt(req.source_prompt)
    x = req.x_src.float()
    path = Trajectory()
    predictor_corrector(lambda z, t: model.velocity(z, t, src, req.grid, guidance=p.source_guidance),
                        x, inversion_times(ts), u0=eps - x, trajectory=path)
    return path


@register("dnaedit", DNAEditParams, dnaedit_nfe, PAPER)
def dnaedit(model: FlowModel, req: EditRequest, p: DNAEditParams, generator: torch.Generator) -> torch.Tensor:
    """Inversion by direct noise alignment, editing by mobile velocity guidance (target calls only)."""
    ts = model.schedule(p.steps, req.grid)[p.t_start:]
    eps = model.noise(req.grid, generator).to(req.x_src.device, torch.float32)
    path = inverted(model, req, "dnaedit", lambda: align(model, req, p, eps, ts), steps=p.steps,
                    t_start=p.t_start, guidance=p.source_guidance, eps=eps)
    tar = model.encode_prompt(req.target_prompt)
    k = len(ts) - 1
    y, r = path.z[k], req.x_src.float()
    for i in range(k):
        j = k - 1 - i  # the inversion step that ended at ts[i]
        t, t_next = float(ts[i]), float(ts[i + 1])
        e = y - path.z[j + 1]
        v_tar = model.velocity(path.z_hat[j] + e, t, tar, req.grid, guidance=p.target_guidance)
        r = r + (t_next - t) * (v_tar - path.u[j])
        v = p.mvg * v_tar + (1 - p.mvg) * (y - r) / t
        y = path.z[j] + (e + (t_next - t) * (v - path.u[j]))
    return y
