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

from collections import OrderedDict
from contextlib import contextmanager
from typing import Sequence

import numpy as np
import torch

from ..errors import EditflowError
from .base import CallCounter, Cond, TokenGrid, check_steps, resolution_mu, time_shift_exponential, time_shift_static


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


def pack_latents(latents: torch.Tensor) -> torch.Tensor:
    """``[B, C, 2h, 2w]`` -> ``[B, h*w, 4C]`` (2x2 patches, diffusers' order)."""
    b, c, hh, ww = latents.shape
    x = latents.view(b, c, hh // 2, 2, ww // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (hh // 2) * (ww // 2), c * 4)


def unpack_latents(tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Inverse of :func:`pack_latents` for an ``h x w`` token grid."""
    b, n, c4 = tokens.shape
    x = tokens.view(b, h, w, c4 // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, c4 // 4, h * 2, w * 2)


def latent_image_ids(h: int, w: int) -> torch.Tensor:
    """FLUX ``img_ids``: ``(0, row, col)`` per token of an ``h x w`` grid, ``[h*w, 3]``."""
    ids = torch.zeros(h, w, 3)
    ids[..., 1] = torch.arange(h)[:, None]
    ids[..., 2] = torch.arange(w)[None, :]
    return ids.reshape(h * w, 3)


class FluxAdapter:
    """:class:`~editflow.models.base.FlowModel` over a diffusers ``FluxPipeline``.

    Build it with :func:`editflow.load_model`; ``adapter.pipe`` is the underlying pipeline.
    Prompt encodings are cached per prompt (the last ``PROMPT_CACHE_SIZE``), so an edit or a
    benchmark that reuses a prompt encodes it once.
    """

    family = "flux"
    PROMPT_CACHE_SIZE = 64

    def __init__(self, pipe, name: str = "flux", max_sequence_length: int | None = None):
        self.pipe = pipe
        self.name = name
        self.transformer = pipe.transformer
        self.vae = pipe.vae
        self.guidance_distilled = bool(self.transformer.config.guidance_embeds)
        self.default_guidance = 3.5 if self.guidance_distilled else 0.0
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.pixel_multiple = self.vae_scale_factor * 2
        t5_max = getattr(pipe.tokenizer_2, "model_max_length", 512) or 512
        self.max_sequence_length = int(min(max_sequence_length or 512, t5_max, 512))
        self.counter = CallCounter()
        self._prompt_cache: OrderedDict[str, Cond] = OrderedDict()

    # -- basic properties -------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        """Where the computation runs (the GPU under CPU offload, where weights live on the CPU)."""
        return self.pipe._execution_device

    @property
    def dtype(self) -> torch.dtype:
        return self.transformer.dtype

    def __repr__(self) -> str:
        return f"FluxAdapter(name={self.name!r}, dtype={self.dtype}, device={self.device})"

    # -- geometry -----------------------------------------------------------------------------
    def grid(self, height: int, width: int) -> TokenGrid:
        m = self.pixel_multiple
        if height % m or width % m or height <= 0 or width <= 0:
            raise EditflowError(f"image size {width}x{height} is not a positive multiple of {m}: resize it first")
        return TokenGrid(height=height, width=width, h=height // m, w=width // m)

    def img_ids(self, grid: TokenGrid) -> torch.Tensor:
        return latent_image_ids(grid.h, grid.w).to(self.device, self.dtype)

    def pack(self, latents: torch.Tensor) -> torch.Tensor:
        return pack_latents(latents)

    def unpack(self, tokens: torch.Tensor, grid: TokenGrid) -> torch.Tensor:
        return unpack_latents(tokens, grid.h, grid.w)

    def attention_layers(self) -> list[str]:
        """Names of the attention layers, in forward order: ``double.{i}`` then ``single.{j}``."""
        from ..attention.flux import named_blocks  # here: attention imports models at load time

        return [name for name, _ in named_blocks(self.transformer)]

    def block(self, layer: str):
        """The transformer block of an attention layer name (``double.{i}`` / ``single.{j}``)."""
        from ..attention.flux import named_blocks

        blocks = dict(named_blocks(self.transformer))
        if layer not in blocks:
            raise EditflowError(f"no layer {layer!r} in {self.name}: layers are {', '.join(blocks)}")
        return blocks[layer]

    @contextmanager
    def bypass(self, layer: str):
        """Run with one block skipped (its residual stream passes through unchanged), as Stable
        Flow's vital-layer search does; the block is restored on exit, also on error."""
        block = self.block(layer)

        def identity(hidden_states, encoder_hidden_states, *args, **kwargs):
            return encoder_hidden_states, hidden_states

        block.forward = identity
        try:
            yield
        finally:
            del block.forward  # back to the class's forward

    @property
    def vital_layers(self) -> list[str] | None:
        """Stable Flow's vital layers stored with the model (``vital_layers.json`` in its folder), if any."""
        import json
        from pathlib import Path

        folder = getattr(self.pipe, "name_or_path", None) or getattr(self.pipe.config, "_name_or_path", None)
        path = Path(str(folder)) / "vital_layers.json" if folder else None
        if path is None or not path.exists():
            return None
        return list(json.loads(path.read_text())["vital_layers"])

    # -- text ---------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_prompt(self, prompt: str) -> Cond:
        """T5 sequence + CLIP pooled embedding of one prompt, cached."""
        if not isinstance(prompt, str):
            raise EditflowError(f"a prompt must be a string, got {type(prompt).__name__}")
        if prompt in self._prompt_cache:
            self._prompt_cache.move_to_end(prompt)
            return self._prompt_cache[prompt]
        embeds, pooled, ids = self.pipe.encode_prompt(
            prompt=prompt, prompt_2=None, device=self.device, max_sequence_length=self.max_sequence_length
        )
        cond = self._prompt_cache[prompt] = Cond(embeds.to(self.dtype), pooled.to(self.dtype), (prompt,), ids)
        while len(self._prompt_cache) > self.PROMPT_CACHE_SIZE:
            self._prompt_cache.popitem(last=False)
        return cond

    # -- images ---------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        """Images ``[B, 3, H, W]`` in [-1, 1] -> clean latent tokens ``x0`` ``[B, N, 64]`` (float32).

        Uses the posterior mode (deterministic), as FlowEdit and RF-Solver do.
        """
        self.grid(image.shape[-2], image.shape[-1])  # validates the size
        dist = self.vae.encode(image.to(self.device, self.vae.dtype)).latent_dist
        lat = (dist.mode() - self.vae.config.shift_factor) * self.vae.config.scaling_factor
        return self.pack(lat.float())

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, grid: TokenGrid) -> torch.Tensor:
        """Latent tokens -> images ``[B, 3, H, W]`` in [-1, 1] (float32, clamped)."""
        lat = self.unpack(latents, grid)
        lat = lat / self.vae.config.scaling_factor + self.vae.config.shift_factor
        img = self.vae.decode(lat.to(self.device, self.vae.dtype), return_dict=False)[0]
        return img.float().clamp(-1, 1)

    # -- noise and schedule -----------------------------------------------------------------
    def noise(self, grid: TokenGrid, generator: torch.Generator, batch: int = 1) -> torch.Tensor:
        """Standard normal latent tokens drawn as FluxPipeline draws them (same generator, same noise)."""
        channels = self.transformer.config.in_channels // 4
        gen_device = generator.device if generator is not None else torch.device("cpu")
        shape = (batch, channels, grid.h * 2, grid.w * 2)
        z = torch.randn(shape, generator=generator, device=gen_device, dtype=self.dtype)
        return self.pack(z).to(self.device).float()

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
        b = z.shape[0]
        img_ids = self.img_ids(grid)
        if tokens is not None:
            img_ids = img_ids[tokens.to(img_ids.device)]
        if z.shape[1] != img_ids.shape[0]:
            raise EditflowError(f"latent has {z.shape[1]} tokens but the grid/token list has {img_ids.shape[0]}")
        cond = cond.expand(b)
        timestep = torch.as_tensor(t, dtype=torch.float32).reshape(-1).expand(b).to(self.device, self.dtype)
        g = None
        if self.guidance_distilled:
            gval = self.default_guidance if guidance is None else guidance
            g = torch.as_tensor(gval, dtype=torch.float32).reshape(-1).expand(b).to(self.device)
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
