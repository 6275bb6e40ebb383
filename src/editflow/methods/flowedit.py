"""FlowEdit: inversion-free text-based editing (Kulikov, Kleiner, Huberman-Spiegelglas, Michaeli,
arXiv 2412.08629, ICCV 2025).

FlowEdit walks a noise-free path from the source to the target latent. Over the schedule
``t_T > ... > t_0 = 0`` (``T = steps``), starting at ``Z^FE = X^src``, for
``i = n_max ... n_min + 1`` (counted from the clean end):

    N ~ N(0, I)                                        fresh noise every step (and every average)
    Z^src_{t_i} = (1 - t_i) X^src + t_i N
    Z^tar_{t_i} = Z^FE_{t_i} + Z^src_{t_i} - X^src     the pair shares its noise
    V^Δ         = V^tar(Z^tar_{t_i}, t_i) - V^src(Z^src_{t_i}, t_i)    averaged over n_avg draws
    Z^FE_{t_{i-1}} = Z^FE_{t_i} + (t_{i-1} - t_i) V^Δ

If ``n_min = 0`` the result is ``Z^FE_0``. Otherwise the last ``n_min`` steps are plain denoising
with the target prompt from ``Z^tar_{t_{n_min}} = Z^FE + Z^src_{t_{n_min}} - X^src`` (fresh noise),
as in the paper's Algorithm 1 and the seed notes (shared/seeds/001).

Both velocities of a step (all ``n_avg`` draws) go through the model in one batched call, so
NFE = ``n_max - n_min`` calls of ``2 n_avg`` rows, plus ``n_min`` calls of one row. Several
target prompts of one image share the source rows (:func:`flowedit_targets`, used by
:func:`editflow.edit_many` and ``editflow batch``): ``(1 + K) n_avg`` rows per call for ``K`` targets.
The reference code computes ``Z^tar = Z^FE + Z^src - X^src``; editflow adds ``Z^src + (Z^FE - X^src)``,
the same number in exact arithmetic but exactly ``Z^src`` while ``Z^FE = X^src``, so equal prompts
and guidance return the input bit for bit.

Defaults (paper and FLUX_exp.yaml / SD3_exp.yaml of the reference code):

* FLUX.1-dev: T = 28, n_max = 24, n_min = 0, n_avg = 1, source guidance 1.5, target guidance 5.5
  (FLUX's guidance embedding; no unconditional pass);
* SD3: T = 50, n_max = 33, n_min = 0, n_avg = 1, CFG 3.5 / 13.5 (the reference function's own
  default n_max = 15 differs from the paper's 33; editflow uses 33).

* rectified-flow UNets (InstaFlow's 2-rectified flow; the seed notes' FlowEdit-on-InstaFlow
  study, shared/seeds/001): T = 25, n_max = 21 (the middle of the 19-25 they tried), n_min = 1,
  n_avg = 1, CFG 1.5 / 16.5 (their best CLIP-I, DINO and LPIPS at equal CLIP-T).

``n_max = None`` keeps the paper's fraction of the schedule when ``steps`` changes
(24/28 for FLUX, 33/50 for SD3, 21/25 for UNets), rounded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ..errors import ParameterError
from ..models.base import NFE, Cond, FlowModel
from ..solvers import euler
from .base import EditRequest, MethodParams, register

PAPER = "Kulikov et al., FlowEdit: Inversion-Free Text-Based Editing Using Pre-Trained Flow Models, arXiv 2412.08629"

# The paper's n_max as a fraction of the schedule, per family.
N_MAX_FRACTION = {"flux": 24 / 28, "sd3": 33 / 50, "unet": 21 / 25}


@dataclass
class FlowEditParams(MethodParams):
    """FlowEdit's parameters; see the module docstring for the update and the per-family defaults.

    steps: schedule length T. n_max: steps edited (from the clean end); None = the paper's
    fraction of T. n_min: final steps of plain target denoising. n_avg: noise draws averaged per
    step. source_guidance / target_guidance: guidance of the two branches.
    """

    FAMILY_DEFAULTS: ClassVar[dict] = {
        "flux": dict(steps=28, source_guidance=1.5, target_guidance=5.5),
        "sd3": dict(steps=50, source_guidance=3.5, target_guidance=13.5),
        "unet": dict(steps=25, n_min=1, source_guidance=1.5, target_guidance=16.5),
    }

    steps: int = 28
    n_max: int | None = None
    n_min: int = 0
    n_avg: int = 1
    source_guidance: float = 1.5
    target_guidance: float = 5.5

    def resolve(self, family: str) -> None:
        if self.n_max is None:
            self.n_max = round(self.steps * N_MAX_FRACTION.get(family, N_MAX_FRACTION["flux"]))

    def validate(self) -> None:
        super().validate()
        if self.n_max is not None and not 0 <= self.n_min <= self.n_max <= self.steps:
            raise ParameterError(
                f"FlowEdit needs 0 <= n_min <= n_max <= steps, got n_min={self.n_min}, n_max={self.n_max}, "
                f"steps={self.steps}"
            )
        if self.n_avg < 1:
            raise ParameterError(f"parameter 'n_avg' must be >= 1, got {self.n_avg}")


def coupled_pair(x_src: torch.Tensor, z: torch.Tensor, t: float, noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """FlowEdit's coupled points at time ``t``: ``Z^src = (1 - t) X^src + t N`` and
    ``Z^tar = Z^src + (Z - X^src)``, which is exactly ``Z^src`` while ``Z = X^src`` (shared with
    FlowAlign)."""
    z_src = (1 - t) * x_src + t * noise
    return z_src, z_src + (z - x_src)


def flowedit_nfe(p: FlowEditParams) -> NFE:
    edit_steps = p.n_max - p.n_min
    return NFE(calls=edit_steps + p.n_min, rows=2 * p.n_avg * edit_steps + p.n_min)


def flowedit_target_rows(p: FlowEditParams, k: int) -> int:
    """Rows of one call editing ``k`` targets at once: the shared source row and ``k`` target rows per draw."""
    return (1 + k) * p.n_avg


def flowedit_targets(model: FlowModel, req: EditRequest, targets: list[str], p: FlowEditParams,
                     generator: torch.Generator) -> torch.Tensor:
    """FlowEdit towards several target prompts at once: ``[K, N, C]`` for ``K = len(targets)``.

    ``Z^src_t`` and ``V^src`` depend only on the source, the time and the noise, so with one noise
    stream (one seed) they are the same for every target: each call evaluates the source row once
    and the ``K`` target rows beside it (``(1 + K) n_avg`` rows instead of ``2 K n_avg`` in ``K``
    calls), and the ``n_min`` tail denoises the ``K`` latents in one call per step. Target ``k``'s
    result is, in exact arithmetic, the single-target edit's with the same seed; bit for bit
    wherever the backend computes a row the same way in a batch of 2 and of ``1 + K`` rows.
    """
    ts = model.schedule(p.steps, req.grid)
    x_src = req.x_src.float()
    src, tars = model.encode_prompt(req.source_prompt), [model.encode_prompt(t) for t in targets]
    k = len(targets)
    rows_cond = Cond.cat(([src] + tars) * p.n_avg)
    guidance = ([p.source_guidance] + [p.target_guidance] * k) * p.n_avg
    first, tail = p.steps - p.n_max, p.steps - p.n_min  # step indices into ts (ts[0] = noise end)

    z_fe = x_src.expand(k, *x_src.shape[1:]).clone()
    for i in range(first, tail):
        t, t_next = float(ts[i]), float(ts[i + 1])
        rows = []
        for _ in range(p.n_avg):
            rows += coupled_pair(x_src, z_fe, t, model.noise(req.grid, generator))
        v = model.velocity(torch.cat(rows), t, rows_cond, req.grid, guidance=guidance)
        v = v.view(p.n_avg, 1 + k, *v.shape[1:])
        z_fe = z_fe + (t_next - t) * (v[:, 1:] - v[:, :1]).mean(dim=0)

    if p.n_min == 0:
        return z_fe
    t = float(ts[tail])
    z_tar = (1 - t) * x_src + t * model.noise(req.grid, generator) + (z_fe - x_src)
    tar = Cond.cat(tars)
    return euler(lambda z, s: model.velocity(z, s, tar, req.grid, guidance=p.target_guidance), z_tar, ts[tail:])


@register("flowedit", FlowEditParams, flowedit_nfe, PAPER, peak_rows=lambda p, n: 2 * p.n_avg,
          targets=flowedit_targets, target_rows=flowedit_target_rows)
def flowedit(model: FlowModel, req: EditRequest, p: FlowEditParams, generator: torch.Generator) -> torch.Tensor:
    """Inversion-free editing along a noise-free source-to-target path (FlowEdit)."""
    return flowedit_targets(model, req, [req.target_prompt], p, generator)
