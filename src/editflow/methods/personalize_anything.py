"""Personalize Anything: training-free subject personalisation by token replacement (Feng et al.,
"Personalize Anything for Free with Diffusion Transformer", arXiv 2503.12590).

Inputs: a reference image (the "source" image), a mask of its subject (``mask``), and the prompt
of the new image (the target prompt; the source prompt describes the reference). With the
schedule ``t_T = 1 > ... > t_0 = 0``, the reference follows the noised path of a fixed noise
``n`` (what the reference code's RF-Inversion with gamma = 1 and eta = 1 reduces to):

    R_t = (1 - t) X^ref + t n
    Z_1 ~ N(0, I)
    t > tau:   Z_t[M'] <- R_t[M]            token replacement: the subject's tokens, moved by
                                            (shift_x, shift_y) tokens to M' (their new positions;
                                            position ids are the new ones, nothing is carried over)
    t <= tau:  each attention layer of the generated row also attends to the reference row's
               subject tokens (keys and values concatenated; editflow.attention.concat)
    Z_{t_{i-1}} = Z_{t_i} + (t_{i-1} - t_i) v(Z_{t_i}, t_i | prompt)

The reference row runs in the same call as the generated row at every step, so NFE = T calls of
2 rows. Inpainting / outpainting (the paper's mode): pass the image as the reference, the known
region as the mask, ``tau = 0.1``, no shift: the known region is pasted until t = 0.1.

Several subjects (the paper's multi-subject mode): ``req.subjects`` (``editflow.Subject`` in the
API, ``--subject`` in the CLI) add reference rows, each with its own mask, shift and tau; the
batch is [reference_1 .. reference_K, generated], each pasted while t > its tau and lent to
attention below it; where pasted regions overlap the later subject wins. Combined with the
inpainting mode this pastes an object of one image into another: the base image is the main
reference with the known region as its mask, the object's image a second subject.

Defaults: 28 steps, guidance 3.5 (the reference code's FLUX.1-dev settings; on SD3, which the paper
does not use, CFG 7.0, the SD3 pipeline's default), tau = 0.8 (the paper's
ablation optimum as reported second-hand; the code's default leaves the subject replaced for
about 2/3 of a 28-step schedule at 1024^2). Patch perturbation, which the release lacks, is
built from the paper's description: ``perturb`` shuffles the pasted tokens within 3x3 blocks,
``mask_grow`` dilates (> 0) or erodes (< 0) every subject mask by whole tokens.

Deviation: the paste happens on the latent tokens the model is given (the paper's
``X <- X (1 - M) + X_ref M`` on the denoising tokens); the released code instead overwrites the
generated row's attention inputs in every layer, which forces those tokens harder.

Measured on the shapes model: outpainting (known centre, tau = 0.1) keeps the known region at
42.9 dB mean over 10 scenes; pasting an object of one scene into an empty cell of another with
the same background (benchmarks/personalize_paste.py, 50 held-out cases, both taus 0.1, prompt
naming the result): right shape and colour there in 43/50, 1/50 with the same prompt and no
subject, 38/50 (tau 0) when the prompt does not name the object; the decode of the plain token
composite gets 46/50 (this VAE's latents are not context-free, so pastes across backgrounds fail).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ..attention.concat import SubjectConcat
from ..errors import ParameterError
from ..masks import grow_tokens
from ..models.base import NFE, Cond, FlowModel, TokenGrid
from .base import EditRequest, MethodParams, register, required_mask

PAPER = "Feng et al., Personalize Anything for Free with Diffusion Transformer, arXiv 2503.12590"


@dataclass
class PersonalizeParams(MethodParams):
    """steps: schedule length T. tau: time below which replacement stops and concatenation
    starts. shift_x, shift_y: move the subject by this many tokens. perturb: shuffle the pasted
    tokens within 3x3 blocks (patch perturbation). mask_grow: dilate (> 0) or erode (< 0) every
    subject mask by this many tokens before pasting (the paper's mask perturbation). guidance:
    of all rows."""

    FAMILIES: ClassVar[tuple[str, ...]] = ("flux", "sd3")  # attention hook points
    FAMILY_DEFAULTS: ClassVar[dict] = {"flux": dict(steps=28, guidance=3.5), "sd3": dict(steps=28, guidance=7.0)}
    NEEDS_MASK: ClassVar[bool] = True
    TAKES_SUBJECTS: ClassVar[bool] = True

    steps: int = 28
    tau: float = 0.8
    shift_x: int = 0
    shift_y: int = 0
    perturb: bool = False
    mask_grow: int = 0
    guidance: float = 3.5

    def validate(self) -> None:
        super().validate()
        self.require_fraction("tau")


def shifted(mask: torch.Tensor, grid: TokenGrid, dx: int, dy: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of the subject's tokens and of their places after a ``(dx, dy)`` token shift
    (tokens shifted off the grid are dropped)."""
    idx = mask.reshape(-1).nonzero().flatten()
    rows, cols = idx // grid.w + dy, idx % grid.w + dx
    keep = (rows >= 0) & (rows < grid.h) & (cols >= 0) & (cols < grid.w)
    return idx[keep], (rows * grid.w + cols)[keep]


def local_shuffle(src: torch.Tensor, grid: TokenGrid, generator: torch.Generator) -> torch.Tensor:
    """Patch perturbation: permute the subject's token indices within each 3x3 block of the grid
    (a token moves by at most two tokens, its neighbourhood stays), so the pasted subject keeps its
    layout but not its exact texture."""
    rows, cols = src // grid.w, src % grid.w
    block = (rows // 3) * ((grid.w + 2) // 3) + cols // 3
    out = src.clone()
    for b in block.unique():
        members = (block == b).nonzero().flatten()
        order = torch.randperm(len(members), generator=generator)
        out[members] = src[members[order]]
    return out


def personalize_nfe(p: PersonalizeParams) -> NFE:
    """One subject; each extra subject adds one row per call (``steps`` rows)."""
    return NFE(calls=p.steps, rows=2 * p.steps)


@dataclass
class _Reference:
    x: torch.Tensor  # clean tokens [1, N, C]
    subject: torch.Tensor  # bool [N], after growing
    src: torch.Tensor  # subject token indices in the reference
    dst: torch.Tensor  # where they are pasted in the generated image
    tau: float
    prompt: str


def _reference(x, mask, prompt, shift, tau, grid, p: PersonalizeParams, generator, which: str) -> _Reference:
    if tau is not None and not 0.0 <= tau <= 1.0:
        raise ParameterError(f"the tau of {which} must be in [0, 1], got {tau}")
    subject = grow_tokens(mask.reshape(1, -1).bool().cpu(), grid, p.mask_grow).reshape(-1)
    if not subject.any():
        raise ParameterError(f"mask_grow={p.mask_grow} erodes the whole subject of {which}: use a larger mask_grow")
    src, dst = shifted(subject, grid, *shift)
    if len(src) == 0:
        raise ParameterError(f"the shift moves the whole subject of {which} off the image: use a smaller shift")
    if p.perturb:
        src = local_shuffle(src, grid, generator)
    return _Reference(x.float(), subject, src.to(x.device), dst.to(x.device), p.tau if tau is None else tau, prompt)


@register("personalize_anything", PersonalizeParams, personalize_nfe, PAPER, peak_rows=lambda p, n: 2 + n)
def personalize_anything(model: FlowModel, req: EditRequest, p: PersonalizeParams,
                         generator: torch.Generator) -> torch.Tensor:
    """Generate from noise with the reference subjects' tokens pasted early and attended to late."""
    main = required_mask(req, "personalize_anything", "the subject in the reference image")
    refs = [_reference(req.x_src, main, req.source_prompt, (p.shift_x, p.shift_y), None, req.grid, p, generator,
                       "the main reference")]
    for k, s in enumerate(req.subjects, 1):
        if s.mask.numel() != req.grid.num_tokens or s.x.shape != req.x_src.shape:
            raise ParameterError(f"subject {k} is not on the image's token grid: give it the size of the main image")
        refs.append(_reference(s.x, s.mask, s.prompt, s.shift, s.tau, req.grid, p, generator, f"subject {k}"))
    claimed = torch.zeros(req.grid.num_tokens, dtype=torch.bool, device=req.x_src.device)
    for r in reversed(refs):  # where pasted regions overlap, the later subject wins
        keep = ~claimed[r.dst]
        claimed[r.dst] = True
        r.src, r.dst = r.src[keep], r.dst[keep]
    ts = model.schedule(p.steps, req.grid)
    x_ref = torch.cat([r.x for r in refs])
    n_ref = torch.cat([model.noise(req.grid, generator) for _ in refs]).to(x_ref)
    z = model.noise(req.grid, generator).to(x_ref)
    cond = Cond.cat([model.encode_prompt(r.prompt) for r in refs] + [model.encode_prompt(req.target_prompt)])
    control = SubjectConcat([r.subject for r in refs])
    control.rows = {"reference": list(range(len(refs))), "generated": [len(refs)]}
    for i in range(p.steps):
        t, t_next = float(ts[i]), float(ts[i + 1])
        ref_t = (1 - t) * x_ref + t * n_ref
        control.active = {k for k, r in enumerate(refs) if t <= r.tau}
        pasting = [k for k in range(len(refs)) if k not in control.active]
        if pasting:
            z = z.clone()
        for k in pasting:
            z[:, refs[k].dst] = ref_t[k : k + 1, refs[k].src]
        v = model.velocity(torch.cat([ref_t, z]), t, cond, req.grid, guidance=p.guidance, control=control)
        z = z + (t_next - t) * v[-1:]
    return z
