"""FTEdit: fixed-point inversion, trajectory compensation and invariance control (Xu et al.,
"Unveil Inversion and Invariance in Flow Transformer for Versatile Image Editing", arXiv 2411.15843,
CVPR 2025).

Released code read: Pengchengpcx/FTEdit @442ef0f8f10829ef8e20e1628d466b374fdc71b2 (SD3.5-large):
``inversion/flow_fixpoint_residual_new.py`` (``FlowFixPointResidual``: the inversion loop and
``edit_img_with_residual``), ``controller/attn_norm_ctrl_sd35.py``, ``controller/seq_aligner.py``,
``edit_real_sd35.py`` (the PIE-Bench settings). FLUX settings from the only FLUX port,
Justin900429/RF-Image-Editing @ddd280b (``pipeline/ft_edit.py``).

Over the schedule ``ts[0] = 1 > ... > ts[N] = 0`` with ``s = skip`` steps skipped at the noise end:

    inversion:  X^src -> Z(ts[s]) with the source prompt, each step the averaged fixed point of
                backward Euler (editflow.solvers.fixed_point, K + 1 calls per step); keep Z(ts[i])
    editing:    z = Z(ts[s]); for i = s ... N-1, one call on the rows [Z(ts[i]) | source, z | target]:
                z <- z + (ts[i+1] - ts[i]) v_target
                with, in the text-stream attention of every joint block but SD3's last,
                AdaLN invariance control while i < int(N invariance) and value injection while
                i - s < int(N value_injection) (editflow.attention.invariance; the reference's
                AdaLN counter counts the skipped steps, its attention counter does not)

The source row is the inverted latent at every step: the reference steps it with its own
velocity and then adds the residual ``Z(ts[i+1]) - z_src``, i.e. resets it to the stored
trajectory ("compensation"); editflow feeds the stored latent directly (the same row; its
velocity, which the reference discards, is not used). The target gets no residual: it follows
the source through the controls only. NFE = ``(N - s)(K + 1)`` inversion calls of one row +
``N - s`` editing calls of 2 rows (under SD3's CFG the adapter adds the negative-prompt half, the
reference's 4 rows); SD3 defaults: 90 + 30 calls. The reference's inversion calls also carry the
empty-prompt row at CFG 1 (180 rows where editflow evaluates the 90 conditional ones; the
combination at scale 1 is the conditional velocity).

Defaults: SD3: 30 steps, K = 2 (three calls per inversion step; hard-coded in the PIE-Bench
script, the single-image script uses 3), inversion CFG 1, editing CFG 2 on both rows, invariance
1.0 (all steps), value injection 0.15 (CFG 2 and 0.15 are the README command's; the script's
argparse defaults are 1.0 for both). FLUX: the port's settings, 28 steps, guidance 1 / 2, the
same ratios, but the algorithm is the SD3 reference's: the port's "fixed-point" loop re-evaluates
the same latent at the cleaner time (Euler inversion at three times the cost), its schedule is
``retrieve_timesteps(N + 1)`` taken pairwise (never reaching 0 or 1), and its pipeline has no
value injection (its notebook adds it).

With equal prompts the output is not the input: the target row is Euler sampling at the editing
guidance from the top of the fixed-point inversion, steered by the source row's features (with
both controls off it is exactly that Euler reconstruction; tested).

Deliberate differences from the released code: the source row is fed its stored latent instead of
stepped and reset (the same numbers up to the reset's rounding); the controls act on every joint
block but the last, where the reference counts 37 AdaLN layers (SD3.5-large's, all but its
``context_pre_only`` last block; on a 24-block SD3-medium its count would reach the last block,
whose AdaLN has no ``emb``, and fail);
on FLUX they act on the 19 double blocks, as the port, whose step counters assume 37 layers per
call (so its ratios below 1 run about twice as long). The reference keeps its states in bf16;
editflow's method states are float32.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ..attention.invariance import TextInvariance, segment_mapper
from ..errors import EditflowError, ParameterError
from ..models.base import NFE, Cond, FlowModel
from ..solvers import inversion_times
from ..solvers.fixed_point import fixed_point
from .base import EditRequest, MethodParams, register
from .cache import inverted

PAPER = ("Xu et al., Unveil Inversion and Invariance in Flow Transformer for Versatile Image Editing, "
         "arXiv 2411.15843 (CVPR 2025)")


@dataclass
class FTEditParams(MethodParams):
    """steps: schedule length N. skip: steps skipped at the noise end. iterations: K, fixed-point
    iterations per inversion step (K + 1 calls). source_guidance / target_guidance: guidance of
    inversion / editing (both editing rows). invariance: fraction of the steps with AdaLN
    invariance control. value_injection: fraction of the steps whose target V is the source's."""

    FAMILIES: ClassVar[tuple[str, ...]] = ("flux", "sd3")  # joint text-image attention with a text stream
    FAMILY_DEFAULTS: ClassVar[dict] = {
        "flux": dict(steps=28, source_guidance=1.0, target_guidance=2.0),
        "sd3": dict(steps=30, source_guidance=1.0, target_guidance=2.0),
    }

    steps: int = 30
    skip: int = 0
    iterations: int = 2
    source_guidance: float = 1.0
    target_guidance: float = 2.0
    invariance: float = 1.0
    value_injection: float = 0.15

    def validate(self) -> None:
        super().validate()
        self.require_step_index("skip")
        if self.iterations < 0:
            raise ParameterError(f"parameter 'iterations' must be >= 0, got {self.iterations}")
        self.require_fraction("invariance", "value_injection")


def ftedit_nfe(p: FTEditParams) -> NFE:
    n = p.steps - p.skip
    return NFE(calls=n * (p.iterations + 1) + n, rows=n * (p.iterations + 1) + 2 * n)


def controlled_layers(model: FlowModel) -> set[str]:
    """The joint blocks whose text stream has an AdaLN of its own: FLUX's double blocks; SD3's
    blocks but the last (``context_pre_only``)."""
    names = model.attention_layers()
    if model.family == "flux":
        return {n for n in names if n.startswith("double.")}
    return set(names[:-1])


def aligned_text(model: FlowModel, req: EditRequest, src: Cond) -> tuple[torch.Tensor, torch.Tensor]:
    """The token alignment of the two prompts over the model's text tokens, checked before any
    model call (an adapter without ``text_segments`` cannot run FTEdit)."""
    if not hasattr(model, "text_segments"):
        raise EditflowError(f"ftedit needs the model's text tokens, which {model.name} does not give: "
                            "use a FLUX or SD3 adapter from editflow.load_model")
    mapper, alpha = segment_mapper(model.text_segments(req.source_prompt), model.text_segments(req.target_prompt))
    if mapper.numel() != src.embeds.shape[1]:
        raise EditflowError(f"{model.name} attends to {src.embeds.shape[1]} text tokens but its tokenizers give "
                            f"{mapper.numel()}: FTEdit's alignment cannot be built for this text encoder")
    return mapper, alpha


@register("ftedit", FTEditParams, ftedit_nfe, PAPER, peak_rows=lambda p, n: 2)
def ftedit(model: FlowModel, req: EditRequest, p: FTEditParams, generator: torch.Generator) -> torch.Tensor:
    """Fixed-point inversion; editing beside the stored source path with AdaLN invariance control."""
    ts = model.schedule(p.steps, req.grid)
    src, tar = model.encode_prompt(req.source_prompt), model.encode_prompt(req.target_prompt)
    mapper, alpha = aligned_text(model, req, src)
    up = inversion_times(ts[p.skip:])

    def invert() -> list[torch.Tensor]:
        path: list[torch.Tensor] = []
        top = fixed_point(lambda z, t: model.velocity(z, t, src, req.grid, guidance=p.source_guidance),
                          req.x_src.float(), up, callback=lambda i, t, z: path.append(z), iterations=p.iterations)
        return path + [top]  # path[N - i] is the latent at ts[i]

    path = inverted(model, req, "ftedit", invert, steps=p.steps, skip=p.skip, iterations=p.iterations,
                    guidance=p.source_guidance)
    control = TextInvariance(controlled_layers(model), mapper, alpha, int(p.steps * p.invariance),
                             int(p.steps * p.value_injection), value_offset=p.skip)
    pair = Cond.cat([src, tar])
    z = path[p.steps - p.skip]
    for i in range(p.skip, p.steps):
        t, t_next = float(ts[i]), float(ts[i + 1])
        control.step = i
        v = model.velocity(torch.cat([path[p.steps - i], z]), t, pair, req.grid, guidance=p.target_guidance,
                           control=control)
        z = z + (t_next - t) * v[1:2]
    return z
