"""SD3 / SD3.5 (medium, large) through diffusers' StableDiffusion3Pipeline.

* text: CLIP-L and CLIP-G sequences (concatenated on the feature axis, zero-padded to T5's width)
  followed by T5's sequence (zeros where the pipeline has no T5: it is optional), pooled = both
  CLIPs' projections; the negative prompt (default "") is encoded with every prompt;
* VAE: ``x0 = (E(image).mode() - shift_factor) * scaling_factor`` (SD3: 0.0609, 1.5305), 16 channels,
  shown to methods as 2x2-patch tokens in the transformer's own patch order (row-major);
* schedule: the pipeline's scheduler (FlowMatchEulerDiscreteScheduler, static shift 3.0:
  ``t' = s t / (1 + (s - 1) t)``), ending at 0, exactly as the pipeline steps;
* velocity: ``SD3Transformer2DModel`` with ``timestep = 1000 t``; true classifier-free guidance
  ``v = v(neg) + g (v(prompt) - v(neg))`` with both halves batched into one call (rows with
  ``g <= 1`` take the conditional output alone, as the pipeline does below 1). The model's output
  is already ``eps - x0`` (the same convention as FLUX).
* attention hook points: ``joint.{i}`` (editflow.attention.sd3).
"""

from __future__ import annotations

import copy
from typing import Sequence

import torch

from ..errors import EditflowError
from .base import Cond, TokenGrid, check_steps, resolution_mu
from .latent import LatentTokenAdapter


class SD3Adapter(LatentTokenAdapter):
    """:class:`~editflow.models.base.FlowModel` over a diffusers ``StableDiffusion3Pipeline``."""

    family = "sd3"
    guidance_distilled = False

    def __init__(self, pipe, name: str = "sd3", max_sequence_length: int = 256, negative_prompt: str = "",
                 default_guidance: float = 7.0):
        super().__init__(pipe, pipe.transformer, name)
        self.transformer = pipe.transformer
        if self.transformer.config.patch_size != 2:
            raise EditflowError(f"{name}: SD3 transformers with patch size {self.transformer.config.patch_size} "
                                "are not supported (editflow's tokens are 2x2 latent patches)")
        self.max_sequence_length = int(max_sequence_length)
        self.negative_prompt = negative_prompt
        self.default_guidance = float(default_guidance)  # the pipeline's default guidance_scale

    def _named_blocks(self) -> list[tuple[str, object]]:
        from ..attention.sd3 import named_blocks  # here: attention imports models at load time

        return named_blocks(self.transformer)

    def text_segments(self, prompt: str) -> list[tuple[int, list[int]]]:
        """The text tokens the transformer sees, as ``(length, token ids)`` segments: the CLIPs' 77
        (one tokenization, both CLIPs share its ids), then T5's ``max_sequence_length`` (no ids
        when the pipeline has no T5: those tokens are zeros for every prompt)."""
        clip = self.pipe.tokenizer(prompt, max_length=77, truncation=True).input_ids
        t5_length = self.encode_prompt(prompt).embeds.shape[1] - 77  # diffusers < 0.36 pads a missing T5 to 77
        t5 = [] if self.pipe.tokenizer_3 is None or self.pipe.text_encoder_3 is None else \
            self.pipe.tokenizer_3(prompt, max_length=t5_length, truncation=True).input_ids
        return [(77, list(clip)), (t5_length, list(t5))]

    def encode_prompt(self, prompt: str) -> Cond:
        """Both CLIPs and T5 for the prompt and the negative prompt, cached per prompt."""

        def encode(text: str) -> Cond:
            embeds, neg, pooled, neg_pooled = self.pipe.encode_prompt(
                prompt=text, prompt_2=None, prompt_3=None, device=self.device, num_images_per_prompt=1,
                do_classifier_free_guidance=True, negative_prompt=self.negative_prompt,
                max_sequence_length=self.max_sequence_length)
            negative = Cond(neg.to(self.dtype), neg_pooled.to(self.dtype), (self.negative_prompt,))
            return Cond(embeds.to(self.dtype), pooled.to(self.dtype), (text,), negative=negative)

        return self._cached(prompt, encode)

    def schedule(self, steps: int, grid: TokenGrid) -> torch.Tensor:
        """Decreasing times ``[steps + 1]`` ending at 0: the pipeline's own sigmas."""
        check_steps(steps)
        scheduler = copy.deepcopy(self.pipe.scheduler)  # the pipeline's scheduler keeps its state
        cfg = scheduler.config
        kwargs = {}
        if cfg.get("use_dynamic_shifting", False):
            kwargs["mu"] = resolution_mu(grid.num_tokens, cfg.get("base_image_seq_len", 256),
                                         cfg.get("max_image_seq_len", 4096), cfg.get("base_shift", 0.5),
                                         cfg.get("max_shift", 1.16))
        scheduler.set_timesteps(steps, device="cpu", **kwargs)
        return scheduler.sigmas.float().cpu()

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
        """``v(z, t | cond)`` for every row of ``z`` in one transformer call (both CFG halves
        batched); ``guidance`` a scalar or one value per row (None: 7.0, the pipeline's).
        ``control`` hooks every joint-attention layer for this call. Returns float32 ``[B, N, C]``."""
        x, timestep, batch, g, cfg = self._cfg_inputs(z, t, cond, grid, guidance, control, tokens)
        kwargs = dict(hidden_states=x, timestep=timestep,
                      encoder_hidden_states=batch.embeds, pooled_projections=batch.pooled, return_dict=False)
        if control is None:
            out = self.transformer(**kwargs)[0]
        else:
            from ..attention.flux import CallInfo
            from ..attention.sd3 import installed

            info = CallInfo(float(torch.as_tensor(t).reshape(-1)[0]), batch.embeds.shape[1], grid)
            with installed(self.transformer, control, info, halves=2 if cfg else 1):
                out = self.transformer(**kwargs)[0]
        return self._cfg_output(out, g, cfg)
