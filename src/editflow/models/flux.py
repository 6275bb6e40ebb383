"""FLUX.1 (dev, schnell, and the FLUX-architecture built-in models) through diffusers' FluxPipeline.

The adapter owns everything FLUX-specific, so that methods only see packed latent tokens:

* VAE: ``x0 = (E(image).mode() - shift_factor) * scaling_factor``; decoding inverts it;
* packing: the ``[B, 16, H/8, W/8]`` latent is cut into 2x2 patches -> ``[B, H/16 * W/16, 64]``,
  with ``img_ids = (0, row, col)`` per token (diffusers' own layout, so noise drawn here equals
  the noise FluxPipeline draws for the same generator);
* schedule: ``linspace(1, 1/T, T)`` shifted by ``t' = e^mu / (e^mu + 1/t - 1)`` with ``mu``
  linear in the token count (scheduler config: 0.5 at 256 tokens, 1.15 at 4096), then ``0``;
* velocity: one ``FluxTransformer2DModel`` call with ``timestep = t`` and, for guidance-distilled
  checkpoints (FLUX.1-dev), a per-row guidance embedding; several branches share one call.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from ..errors import EditflowError
from .base import Cond, TokenGrid, check_steps, resolution_mu, time_shift_exponential, time_shift_static
from .latent import LatentTokenAdapter, pack_latents, unpack_latents  # noqa: F401  (re-exported)


# FLUX.1-dev's FlowMatchEulerDiscreteScheduler config (resolution-dependent shift); editflow's own
# FLUX-architecture models (tiny, shapes) use it too.
FLUX_SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000,
    shift=3.0,
    use_dynamic_shifting=True,
    base_shift=0.5,
    max_shift=1.15,
    base_image_seq_len=256,
    max_image_seq_len=4096,
)


def latent_image_ids(h: int, w: int) -> torch.Tensor:
    """FLUX ``img_ids``: ``(0, row, col)`` per token of an ``h x w`` grid, ``[h*w, 3]``."""
    ids = torch.zeros(h, w, 3)
    ids[..., 1] = torch.arange(h)[:, None]
    ids[..., 2] = torch.arange(w)[None, :]
    return ids.reshape(h * w, 3)


class FluxAdapter(LatentTokenAdapter):
    """:class:`~editflow.models.base.FlowModel` over a diffusers ``FluxPipeline``.

    Build it with :func:`editflow.load_model`; ``adapter.pipe`` is the underlying pipeline.
    Prompt encodings are cached per prompt (the last ``PROMPT_CACHE_SIZE``), so an edit or a
    benchmark that reuses a prompt encodes it once.
    """

    family = "flux"

    def __init__(self, pipe, name: str = "flux", max_sequence_length: int | None = None):
        super().__init__(pipe, pipe.transformer, name)
        self.transformer = pipe.transformer
        self.guidance_distilled = bool(self.transformer.config.guidance_embeds)
        self.default_guidance = 3.5 if self.guidance_distilled else 0.0
        t5_max = getattr(pipe.tokenizer_2, "model_max_length", 512) or 512
        self.max_sequence_length = int(min(max_sequence_length or 512, t5_max, 512))

    def img_ids(self, grid: TokenGrid) -> torch.Tensor:
        return latent_image_ids(grid.h, grid.w).to(self.device, self.dtype)

    def _named_blocks(self) -> list[tuple[str, object]]:
        """``double.{i}`` then ``single.{j}`` (:func:`editflow.attention.flux.named_blocks`)."""
        from ..attention.flux import named_blocks  # here: attention imports models at load time

        return named_blocks(self.transformer)

    def text_segments(self, prompt: str) -> list[tuple[int, list[int]]]:
        """The text tokens the transformer sees, as ``(length, token ids)`` segments: FLUX's one T5
        segment of ``max_sequence_length`` (ids with their end token, before padding)."""
        ids = self.pipe.tokenizer_2(prompt, max_length=self.max_sequence_length, truncation=True).input_ids
        return [(self.max_sequence_length, list(ids))]

    # -- text ---------------------------------------------------------------------------------
    def encode_prompt(self, prompt: str) -> Cond:
        """T5 sequence + CLIP pooled embedding of one prompt, cached."""

        def encode(text: str) -> Cond:
            embeds, pooled, ids = self.pipe.encode_prompt(
                prompt=text, prompt_2=None, device=self.device, max_sequence_length=self.max_sequence_length
            )
            return Cond(embeds.to(self.dtype), pooled.to(self.dtype), (text,), ids)

        return self._cached(prompt, encode)

    # -- noise and schedule -----------------------------------------------------------------
    def schedule(self, steps: int, grid: TokenGrid) -> torch.Tensor:
        """Decreasing times ``[steps + 1]`` ending at 0, equal to FluxPipeline's sigmas."""
        check_steps(steps)
        cfg = self.pipe.scheduler.config
        if cfg.get("shift_terminal") or cfg.get("use_karras_sigmas") or cfg.get("use_exponential_sigmas"):
            raise EditflowError("this scheduler's sigma options (terminal shift, karras, exponential) are not supported")
        base = np.linspace(1.0, 1.0 / steps, steps)
        t = torch.from_numpy(base.astype(np.float32)).double()
        if cfg.get("use_dynamic_shifting", False):
            mu = resolution_mu(
                grid.num_tokens,
                cfg.get("base_image_seq_len", 256),
                cfg.get("max_image_seq_len", 4096),
                cfg.get("base_shift", 0.5),
                cfg.get("max_shift", 1.15),
            )
            if cfg.get("time_shift_type", "exponential") != "exponential":
                raise EditflowError("this scheduler's linear time shift is not supported yet: use an exponential one")
            t = time_shift_exponential(mu, t)
        else:
            t = time_shift_static(float(cfg.get("shift", 1.0)), t)
        return torch.cat([t.float(), torch.zeros(1)])

    # -- the model call -------------------------------------------------------------------------
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
        """``v(z, t | cond)`` for every row of ``z`` in one transformer call.

        ``cond`` has one row (shared) or one per row of ``z``; ``guidance`` is a scalar, one value
        per row, or ``None`` for the model's default. ``control`` (an
        :class:`~editflow.attention.AttentionControl`) hooks every attention layer for this call
        only. ``tokens`` (indices into the grid) says that ``z`` holds only those image tokens,
        which then keep their own positions (KV-Edit's foreground-only pass). Returns float32
        ``[B, N, C]``.
        """
        self._check_control(control)
        b = z.shape[0]
        img_ids = self.img_ids(grid)
        if tokens is not None:
            img_ids = img_ids[tokens.to(img_ids.device)]
        if z.shape[1] != img_ids.shape[0]:
            raise EditflowError(f"latent has {z.shape[1]} tokens but the grid/token list has {img_ids.shape[0]}")
        cond = cond.expand(b)
        timestep = self.row_values(t, b, self.dtype)
        g = None
        if self.guidance_distilled:
            g = self.row_values(self.default_guidance if guidance is None else guidance, b)
        kwargs = dict(
            hidden_states=z.to(self.device, self.dtype),
            timestep=timestep,
            guidance=g,
            pooled_projections=cond.pooled,
            encoder_hidden_states=cond.embeds,
            txt_ids=cond.ids,
            img_ids=img_ids,
            return_dict=False,
        )
        if control is None:
            out = self.transformer(**kwargs)[0]
        else:
            from ..attention.flux import CallInfo, installed

            with installed(self.transformer, control, CallInfo(float(torch.as_tensor(t).reshape(-1)[0]),
                                                               cond.embeds.shape[1], grid)):
                out = self.transformer(**kwargs)[0]
        self.counter.record(b)
        return out.float()
