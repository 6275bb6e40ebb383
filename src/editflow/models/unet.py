"""Rectified-flow UNets (InstaFlow, 2-rectified flow from SD1.5; Liu et al., "InstaFlow: One Step
is Enough for High-Quality Diffusion-Based Text-to-Image Generation", ICLR 2024) through a
diffusers ``StableDiffusionPipeline`` folder whose UNet predicts a rectified-flow velocity.

Conventions (shared/seeds/001): InstaFlow integrates from noise at its time ``s = 0`` to data at
``s = 1`` along ``Z_s = s X0 + (1 - s) eps`` with velocity ``dZ/ds = X0 - eps``, and feeds the UNet
``timestep = 1000 (1 - s)`` (its pipeline: ``(1 - i / N) 1000`` at step ``i`` of ``N``, state
``latents += (1 / N) v``). editflow's ``z_t = (1 - t) X0 + t eps`` is the same point for
``t = 1 - s``, so at the boundary:

    timestep = 1000 t          v_editflow(z, t) = -v_InstaFlow(z, s = 1 - t)

Schedule: InstaFlow's uniform steps, ``t_i = 1 - i / N`` (no shift). Text: SD1.5's CLIP sequence
(no pooled vector), negative prompt "" encoded with every prompt; classifier-free guidance as
InstaFlow's pipeline, ``v = v(neg) + g (v(prompt) - v(neg))``, both halves in one call. VAE: 4
channels, scaling 0.18215, shown to methods as 2x2-patch tokens (16 values each). The UNet has no
joint attention: methods that need attention hook points do not run on this family.
"""

from __future__ import annotations

from typing import Sequence

import torch

from .base import Cond, TokenGrid, check_steps
from .latent import LatentTokenAdapter


class RectifiedUNetAdapter(LatentTokenAdapter):
    """:class:`~editflow.models.base.FlowModel` over a rectified-flow ``UNet2DConditionModel``."""

    family = "unet"
    guidance_distilled = False

    def __init__(self, pipe, name: str = "instaflow", negative_prompt: str = "", default_guidance: float = 1.5):
        super().__init__(pipe, pipe.unet, name)
        self.unet = pipe.unet
        self.negative_prompt = negative_prompt
        self.default_guidance = float(default_guidance)

    def encode_prompt(self, prompt: str) -> Cond:
        """SD1.5's CLIP sequence for the prompt and the negative prompt, cached per prompt."""

        def encode(text: str) -> Cond:
            embeds, neg = self.pipe.encode_prompt(text, self.device, 1, True, negative_prompt=self.negative_prompt)
            empty = embeds.new_zeros(1, 0)
            negative = Cond(neg.to(self.dtype), empty, (self.negative_prompt,))
            return Cond(embeds.to(self.dtype), empty, (text,), negative=negative)

        return self._cached(prompt, encode)

    def schedule(self, steps: int, grid: TokenGrid) -> torch.Tensor:
        """InstaFlow's uniform schedule ``1, 1 - 1/N, ..., 0``."""
        check_steps(steps)
        return torch.linspace(1.0, 0.0, steps + 1)

    @torch.no_grad()
    def velocity(
        self,
        z: torch.Tensor,
        t: float | torch.Tensor,
        cond: Cond,
        grid: TokenGrid,
        guidance: float | Sequence[float] | torch.Tensor | None = None,
        control: object | None = None,
        tokens: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``v(z, t | cond)`` in editflow's convention, converted from InstaFlow's at the boundary
        (module docstring); one UNet call with both CFG halves. Returns float32 ``[B, N, C]``."""
        x, timestep, batch, g, cfg = self._cfg_inputs(z, t, cond, grid, guidance, control, tokens)
        out = self.unet(x, timestep, encoder_hidden_states=batch.embeds,
                        return_dict=False)[0]
        return -self._cfg_output(out, g, cfg)
