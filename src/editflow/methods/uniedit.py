"""UniEdit-Flow: Uni-Inv and Uni-Edit (Jiao et al., "UniEdit-Flow: Unleashing Inversion and Editing in
the Era of Flow Models", arXiv 2504.13109, ICLR 2026).

Released code read: DSL-Lab/UniEdit-Flow @69f7e8130350c46a3eac9ec2a51c00b72c4a6ac3, both versions:
``UniEdit-Flow_FLUX/src/flux/sampling.py`` (``edit_uniedit``, a fork of BFL's flux; the authors'
FLUX numbers come from it) and ``UniEdit-Flow_diffusers/schedulers/UniInvEulerScheduler.py`` /
``UniEditEulerScheduler.py`` (``step``; FLUX and SD3).

Over the schedule ``t_N = 1 > ... > t_0 = 0`` (``N = steps``, ``ts[i]`` counted from the noise end),
only the last ``K = round(alpha N)`` steps are inverted and edited (delayed injection):

    Uni-Inv:   x^src -> z at ts[N-K] with the predictor-corrector of editflow.solvers.uni_inv
               (the empty prompt, guidance 1; K + 1 calls)
    Uni-Edit:  for i = N-K ... N-1, t = ts[i], dt = ts[i+1] - t < 0, both rows in one call:
               v_src = v(z, t | source),  v_tar = v(z, t | target),  g = v_tar - v_src
               a   = mean over the latent channels of |g| (FLUX) or of g (SD3), per position
               m   = (a - min a) / (max a - min a)          per sample, over the positions; 0 if max = min
               z  += omega dt (1 + m) g + dt (m v_tar + (1 - m) v_src)

``m`` broadcasts over the channels. Its positions are those of the model's input: FLUX tokens (the
64 values of a 2x2 latent patch), SD3 latent pixels (16 channels). The omega term is the paper's
"correction" (up along v_src, down along v_tar) in closed form: no extra call. NFE =
``(K + 1) + K`` calls, ``(K + 1) + 2K = 3K + 1`` rows (the paper's ``3 alpha N + 1``; 15 steps,
alpha 0.6: 19 calls, 28 rows). With equal prompts and equal guidances ``g = 0`` (where the
backend computes equal rows of one batch equally), ``m = 0`` and the edit is Euler
sampling with the source prompt from the inverted latent: the inversion's reconstruction (which is
not the input: Uni-Inv inverts with the empty prompt, and its round trip is exact only to
``O(h^2)``).

Defaults (both families, the code's scripts and demos): 15 steps, alpha 0.6 (the README also
suggests 0.7-0.8), omega 5, inversion with the empty prompt at guidance 1; FLUX: guidance 1 on
both editing branches (the README suggests 1-2); SD3: guidance 1 everywhere (no CFG, as its demo).

Deliberate differences from the released code:

* ``K``: Python's ``round(alpha N)`` as the FLUX fork (``sampling.py``); the diffusers schedulers
  floor it. Equal at every default (15 x 0.6 = 9); e.g. 8 x 0.6 gives 5 (fork) vs 4 (diffusers).
* The mask statistic follows the code each family's numbers come from: FLUX the fork's ``|g|``,
  SD3 the diffusers scheduler's signed mean. The fork normalises over the whole batch (it runs one
  image) and divides by ``max - min`` with no guard, so equal prompts give NaN everywhere; the
  diffusers scheduler adds 1e-7 to the denominator. editflow normalises per sample and sets
  ``m = 0`` where ``max = min`` (the diffusers behaviour at ``g = 0``, the fork's value elsewhere).
* Source and target rows share one batched call (the diffusers version); the fork makes two calls
  per step (``3K + 1`` calls). Same numbers, fewer launches.
* The diffusers version's ``utils.py`` encodes latents as ``z * scale + shift`` instead of
  ``(z - shift) * scale`` (a latent offset of about 0.15); editflow's adapters encode as diffusers'
  pipelines do.
* ``solver`` can replace Uni-Inv by any editflow inversion solver (``euler`` shows what Uni-Inv buys).
  ``invert_with_source_prompt=True`` is the fork's Gradio demo (``gradio_demo.py`` inverts with the
  source prompt); the scripts invert with the empty prompt. The code's ``zero_init`` (the first
  predictor without a call; off in every script) is not offered. The code runs fp16/bf16 states;
  editflow's are float32.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ..errors import ParameterError
from ..models.base import NFE, Cond, FlowModel
from ..solvers import get_solver, inversion_times
from .base import EditRequest, MethodParams, register
from .cache import inverted

PAPER = ("Jiao et al., UniEdit-Flow: Unleashing Inversion and Editing in the Era of Flow Models, "
         "arXiv 2504.13109 (ICLR 2026)")
MASK_STATS = ("abs", "signed")


@dataclass
class UniEditParams(MethodParams):
    """steps: schedule length N. alpha: fraction of the steps inverted and edited (K = round(alpha N)).
    omega: strength of the velocity-difference correction. source_guidance / target_guidance: guidance
    of the two editing branches. inversion_guidance: guidance while inverting. mask_stat: the mask's
    channel statistic, abs (FLUX fork) or signed (diffusers). solver: the inversion solver.
    invert_with_source_prompt: invert with the source prompt instead of the empty one."""

    FAMILIES: ClassVar[tuple[str, ...]] = ("flux", "sd3")  # the released code's; no UNet defaults
    FAMILY_DEFAULTS: ClassVar[dict] = {
        "flux": dict(steps=15, alpha=0.6, omega=5.0, source_guidance=1.0, target_guidance=1.0, mask_stat="abs"),
        "sd3": dict(steps=15, alpha=0.6, omega=5.0, source_guidance=1.0, target_guidance=1.0, mask_stat="signed"),
    }

    steps: int = 15
    alpha: float = 0.6
    omega: float = 5.0
    source_guidance: float = 1.0
    target_guidance: float = 1.0
    inversion_guidance: float = 1.0
    mask_stat: str = "abs"
    solver: str = "uni_inv"
    invert_with_source_prompt: bool = False

    @property
    def edit_steps(self) -> int:
        """``K = round(alpha N)`` (Python's rounding, as the FLUX fork)."""
        return round(self.alpha * self.steps)

    def validate(self) -> None:
        super().validate()
        if not 0.0 < self.alpha <= 1.0:
            raise ParameterError(f"parameter 'alpha' must be in (0, 1], got {self.alpha}")
        if self.edit_steps < 1:
            raise ParameterError(f"alpha={self.alpha} of steps={self.steps} rounds to no edited step: "
                                 "raise alpha or steps")
        if self.omega < 0:
            raise ParameterError(f"parameter 'omega' must be >= 0, got {self.omega}")
        self.require_choice("mask_stat", MASK_STATS)
        get_solver(self.solver)


def uniedit_nfe(p: UniEditParams) -> NFE:
    k = p.edit_steps
    inv = get_solver(p.solver).nfe(k, True, k == p.steps)
    return NFE(calls=inv + k, rows=inv + 2 * k)


def velocity_mask(g: torch.Tensor, family: str, stat: str) -> torch.Tensor:
    """Uni-Edit's mask from ``g = v_tar - v_src`` ``[B, N, C]``: the channel mean of ``|g|`` or ``g``
    at each position the model sees, min-max normalised per sample (0 where ``max = min``). FLUX:
    ``[B, N, 1]``, one value per token; SD3: ``[B, N, C]``, one value per latent pixel, repeated
    over its ``C / 4`` channels (a token packs 2x2 pixels, channel-major)."""
    b, n, c = g.shape
    a = g.abs() if stat == "abs" else g
    # SD3 sees latent pixels: a token packs 2x2 of them, channel-major (editflow.models.latent.pack_latents)
    a = a.mean(-1, keepdim=True) if family == "flux" else a.view(b, n, c // 4, 4).mean(2, keepdim=True)
    flat = a.reshape(b, -1)
    lo, hi = flat.min(1).values, flat.max(1).values
    span = (hi - lo).view(b, *([1] * (a.dim() - 1)))
    m = torch.where(span > 0, (a - lo.view_as(span)) / span.clamp_min(torch.finfo(a.dtype).tiny), torch.zeros_like(a))
    return m if family == "flux" else m.expand(b, n, c // 4, 4).reshape(b, n, c)


@register("uniedit", UniEditParams, uniedit_nfe, PAPER)
def uniedit(model: FlowModel, req: EditRequest, p: UniEditParams, generator: torch.Generator) -> torch.Tensor:
    """Uni-Inv over the last alpha of the steps, then Uni-Edit's velocity-difference-masked update."""
    ts = model.schedule(p.steps, req.grid)[p.steps - p.edit_steps:]
    inv = model.encode_prompt(req.source_prompt if p.invert_with_source_prompt else "")
    z = inverted(model, req, "uniedit",
                 lambda: get_solver(p.solver)(
                     lambda z, t: model.velocity(z, t, inv, req.grid, guidance=p.inversion_guidance),
                     req.x_src.float(), inversion_times(ts)),
                 steps=p.steps, k=p.edit_steps, solver=p.solver, guidance=p.inversion_guidance,
                 source_prompt=p.invert_with_source_prompt)
    pair = Cond.cat([model.encode_prompt(req.source_prompt), model.encode_prompt(req.target_prompt)])
    guidance = [p.source_guidance, p.target_guidance]
    for i in range(len(ts) - 1):
        t, dt = float(ts[i]), float(ts[i + 1] - ts[i])
        v_src, v_tar = model.velocity(torch.cat([z, z]), t, pair, req.grid, guidance=guidance).chunk(2)
        g = v_tar - v_src
        m = velocity_mask(g, model.family, p.mask_stat)
        z = z + p.omega * dt * (1 + m) * g + dt * (m * v_tar + (1 - m) * v_src)
    return z
