"""FlowAlign: FlowEdit's coupled paths with a flow-matching consistency term (Kim et al.,
"FlowAlign: Trajectory-Regularized, Inversion-Free Flow-based Image Editing", arXiv 2505.23145,
ICLR 2026).

Released code read: FlowAlign/FlowAlign @29c6fe1d9b611ca451c4e4082eeaa4e290b043a6,
``diffusion/editing/sd3_edit.py`` (``SD3FlowAlign.sample``), ``diffusion/base/sd3_sampler.py``,
``run_edit.py`` (defaults). SD3-medium only.

Over the schedule ``ts[0] = 1 > ... > ts[T] = 0`` from ``Z = X^src``, for the last ``n_max`` steps
(all of them by default, as the code), with fresh noise ``N`` every step:

    q    = (1 - t) X^src + t N                 source point
    p    = q + (Z - X^src)                     target point (FlowEdit's coupling)
    v_p  = v(p | src) + w [v(p | tar) - v(p | src)]      CFG on the target branch, source prompt as the negative
    v_q  = v(q | src)                                    the source branch, unguided
    Z   <- Z + (t' - t)(v_p - v_q) + lambda [x0_hat(q, v_q) - x0_hat(p, v_p)],   x0_hat(z, v) = z - t v

``lambda = 0.01`` is added per step, not scaled by the step (so its total weight grows with
``T``). Since ``p - q = Z - X^src`` the update is also
``Z <- Z + (t' - t + lambda t)(v_p - v_q) + lambda (X^src - Z)``: a pull towards the source, and
a semantic term ``w [v(p | tar) - v(p | src)]`` that compares the prompts at the same latent. The
three rows go through the model in one call (NFE = ``n_max`` calls of 3 rows; the code makes 3
calls of one row). With equal prompts ``v(p | tar) = v(p | src)``, and since ``p = q`` exactly while
``Z = X^src``, every update is 0: the output is the input, whatever ``w``, ``lambda`` and the noise (bit for
bit where the backend computes equal rows of one batch equally; tiny-sd3 on CPU rounds the third
row of three differently, by 4e-7).

Defaults: SD3 33 steps, w = 13.5 (``run_edit.py`` and the README's reproduction command; the
function's own default is 7.0), lambda 0.01, no step skipped.

FLUX (editflow's variant; the authors released no FLUX code). FLUX.1-dev is guidance-distilled:
it has no negative branch, its guidance is an input embedding. editflow keeps FlowAlign's three
rows and the formula unchanged: all three rows are FLUX velocities at one embedded guidance
(``guidance``, default 1, FLUX's closest thing to SD3's unguided conditional velocity), and ``w``
contrasts target and source prompts at ``p`` explicitly, as SD3's CFG with the source prompt as the
negative does. 28 steps (FlowEdit's FLUX schedule) and ``w = 2.5``, editflow's choice, not the
authors': picked on the guidance-distilled shapes model on 42 held-out edits kept apart from its
benchmark's (seed 77), where ``w = 2.5`` kept 32.7 dB outside the mask and got 45% of the edits
right against 26.9 dB and 31% at ``w = 5.5`` (FlowEdit's FLUX target guidance, the first guess);
guidance 1.5 or 3.5 for the rows did no better. The cheaper two-row variant (FlowEdit's embedded guidances plus the consistency term)
would lose the source-as-negative term that defines the method, so it is not offered.

Deliberate differences from the released code: ``p`` is computed as ``q + (Z - X^src)`` (the code:
``Z + q - X^src``; the same in exact arithmetic, bit-exact identity for equal prompts, as editflow's
FlowEdit); the noise comes from the edit's generator (the code seeds the global one with 123); the
code encodes the source with ``latent_dist.sample()``, editflow's adapters with the mean; the
code encodes prompts with its own ``encode_prompt``, which cuts T5 at 77 tokens (154 text tokens
in all), while editflow's SD3 adapter uses the pipeline's 256 (333; SD3's joint attention has no
padding mask, so every velocity differs; ``SD3Adapter(pipe, max_sequence_length=77)`` reproduces
the code's); ``n_max`` (skip early steps, as FlowEdit) is an editflow extension whose default,
``T``, is the code's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ..errors import ParameterError
from ..models.base import NFE, Cond, FlowModel
from .base import EditRequest, MethodParams, register
from .flowedit import coupled_pair

PAPER = ("Kim et al., FlowAlign: Trajectory-Regularized, Inversion-Free Flow-based Image Editing, "
         "arXiv 2505.23145 (ICLR 2026)")


@dataclass
class FlowAlignParams(MethodParams):
    """steps: schedule length T. n_max: steps edited (from the clean end); None = all T.
    cfg: w, the target-vs-source guidance at the target point. consistency: lambda, the weight of
    the clean-estimate consistency term. guidance: the guidance every row is evaluated at (FLUX's
    embedding; SD3: 1, no unconditional pass)."""

    FAMILIES: ClassVar[tuple[str, ...]] = ("flux", "sd3")  # the released code is SD3; no UNet defaults
    FAMILY_DEFAULTS: ClassVar[dict] = {
        "flux": dict(steps=28, cfg=2.5, consistency=0.01, guidance=1.0),
        "sd3": dict(steps=33, cfg=13.5, consistency=0.01, guidance=1.0),
    }

    steps: int = 33
    n_max: int | None = None
    cfg: float = 13.5
    consistency: float = 0.01
    guidance: float = 1.0

    def resolve(self, family: str) -> None:
        if self.n_max is None:
            self.n_max = self.steps

    def validate(self) -> None:
        super().validate()
        if self.n_max is not None and not 0 <= self.n_max <= self.steps:
            raise ParameterError(f"parameter 'n_max' must be in [0, steps], got n_max={self.n_max}, steps={self.steps}")
        if self.consistency < 0:
            raise ParameterError(f"parameter 'consistency' must be >= 0, got {self.consistency}")


def flowalign_nfe(p: FlowAlignParams) -> NFE:
    return NFE(calls=p.n_max, rows=3 * p.n_max)


@register("flowalign", FlowAlignParams, flowalign_nfe, PAPER)
def flowalign(model: FlowModel, req: EditRequest, p: FlowAlignParams, generator: torch.Generator) -> torch.Tensor:
    """FlowEdit's coupled paths, CFG against the source prompt, and a clean-estimate consistency pull."""
    ts = model.schedule(p.steps, req.grid)
    x_src = req.x_src.float()
    src, tar = model.encode_prompt(req.source_prompt), model.encode_prompt(req.target_prompt)
    rows_cond = Cond.cat([tar, src, src])
    z = x_src.clone()
    for i in range(p.steps - p.n_max, p.steps):
        t, t_next = float(ts[i]), float(ts[i + 1])
        q, pt = coupled_pair(x_src, z, t, model.noise(req.grid, generator))
        v = model.velocity(torch.cat([pt, pt, q]), t, rows_cond, req.grid, guidance=p.guidance)
        v_p = v[1:2] + p.cfg * (v[0:1] - v[1:2])
        v_q = v[2:3]
        z = z + (t_next - t) * (v_p - v_q) + p.consistency * ((q - t * v_q) - (pt - t * v_p))
    return z
