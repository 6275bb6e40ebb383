"""An automatic edit mask from the model itself, DiffEdit-style (Couairon et al., "DiffEdit:
Diffusion-based semantic image editing with mask guidance", ICLR 2023), for flow models.

DiffEdit noises the input, asks the model for its noise estimate under the source and the target
prompt, and marks where they disagree. For a flow at time ``t``, with ``z_t = (1 - t) x0 + t eps``
and ``v = eps - x0``, the two velocities at the same ``z_t`` differ by the difference of the
clean-image predictions, ``v_tar - v_src = -(x0_hat_tar - x0_hat_src) / t``, so the same recipe
applies to velocities:

    D(token) = mean over draws k and channels of |v_tar(z_t^k, t) - v_src(z_t^k, t)|,
               z_t^k = (1 - t) X^src + t eps_k
    D <- (D - min D) / (max D - min D);   mask = D >= threshold;   then a 3x3 closing on the token grid

Defaults follow DiffEdit (strength 0.5, 10 noise draws, threshold 0.5). All draws of both prompts
go through the model in one batched call (NFE: 1 call of 2 x draws rows). Equal prompts give
D = 0 everywhere and an empty mask. Model-agnostic: any :class:`~editflow.models.base.FlowModel`.
"""

from __future__ import annotations

import torch

from .models.base import Cond, FlowModel, TokenGrid


def _close(mask: torch.Tensor) -> torch.Tensor:
    """3x3 closing (dilate, then erode) of a bool ``[h, w]`` grid: fills one-token holes and gaps."""
    F = torch.nn.functional
    m = F.pad(mask.float()[None, None], (1, 1, 1, 1))  # a margin, so the dilation is not clipped
    grown = F.max_pool2d(m, 3, 1, 1)
    shrunk = -F.max_pool2d(-F.pad(grown, (1, 1, 1, 1), value=1.0), 3, 1, 0)  # outside counts as inside
    return shrunk[0, 0, 1:-1, 1:-1] > 0.5


DRAWS = 10  # noise draws of each prompt, batched into one call of 2 DRAWS rows


@torch.no_grad()
def edit_scores(model: FlowModel, x_src: torch.Tensor, grid: TokenGrid, source_prompt: str, target_prompt: str,
                generator: torch.Generator, t: float = 0.5, draws: int = DRAWS, guidance: float | None = None) -> torch.Tensor:
    """The normalised disagreement ``D`` per token, ``[h, w]`` in [0, 1] (zeros if the prompts agree)."""
    src, tar = model.encode_prompt(source_prompt), model.encode_prompt(target_prompt)
    x = x_src.float()
    z = torch.cat([(1 - t) * x + t * model.noise(grid, generator).to(x) for _ in range(draws)])
    cond = Cond.cat([src] * draws + [tar] * draws)
    v = model.velocity(torch.cat([z, z]), t, cond, grid, guidance=guidance)
    d = (v[draws:] - v[:draws]).abs().mean(dim=(0, 2)).reshape(grid.h, grid.w)
    span = d.max() - d.min()
    return torch.zeros_like(d) if span <= 0 else (d - d.min()) / span


def auto_mask(model: FlowModel, x_src: torch.Tensor, grid: TokenGrid, source_prompt: str, target_prompt: str,
              generator: torch.Generator, t: float = 0.5, draws: int = DRAWS, threshold: float = 0.5,
              guidance: float | None = None) -> torch.Tensor:
    """The edit region as a bool token mask ``[1, N]`` (see the module docstring)."""
    scores = edit_scores(model, x_src, grid, source_prompt, target_prompt, generator, t, draws, guidance)
    if not scores.any():
        return torch.zeros(1, grid.num_tokens, dtype=torch.bool)
    return _close(scores >= threshold).reshape(1, -1)


def dilate_tokens(mask: torch.Tensor, grid: TokenGrid, radius: int = 1) -> torch.Tensor:
    """A token mask ``[1, N]`` grown by ``radius`` tokens in every direction (8-neighbourhood)."""
    m = mask.reshape(1, 1, grid.h, grid.w).float()
    return (torch.nn.functional.max_pool2d(m, 2 * radius + 1, 1, radius) > 0).reshape(1, -1)


def grow_tokens(mask: torch.Tensor, grid: TokenGrid, radius: int) -> torch.Tensor:
    """A token mask ``[1, N]`` dilated by ``radius`` tokens (``radius > 0``) or eroded by
    ``-radius`` (``radius < 0``; a token stays when its whole neighbourhood is in the mask;
    tokens off the grid count as in, so a mask touching the border is not eaten from there)."""
    if radius >= 0:
        return dilate_tokens(mask, grid, radius) if radius else mask.reshape(1, -1).bool()
    return ~dilate_tokens(~mask.reshape(1, -1).bool(), grid, -radius)


def token_mask_to_pixels(mask: torch.Tensor, grid: TokenGrid) -> torch.Tensor:
    """A token mask ``[1, N]`` as a bool pixel mask ``[H, W]``."""
    m = mask.reshape(grid.h, grid.w)
    return m.repeat_interleave(grid.height // grid.h, 0).repeat_interleave(grid.width // grid.w, 1)
