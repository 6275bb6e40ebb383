"""What every diffusers-backed adapter shares: a VAE latent seen as packed 2x2 tokens.

Every family's latent ``[B, C, H/f, W/f]`` (``f`` the VAE's downsampling) is shown to methods as
``[B, N, 4C]`` tokens of 2x2 latent patches on an ``H/2f x W/2f`` grid, in diffusers' FLUX order
(:func:`pack_latents`), whether or not the network itself patchifies that way (SD3 patchifies
inside, with the same row-major patch order; a UNet never does). Masks, token shifts and the
attention hooks all index that grid.

    encode:  x0 = (E(image).mode() - shift_factor) * scaling_factor   (shift 0 where the VAE has none)
    decode:  D(x0 / scaling_factor + shift_factor)
"""

from __future__ import annotations

import json
from collections import OrderedDict
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

import torch

from ..errors import EditflowError
from .base import CallCounter, Cond, TokenGrid


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


class LatentTokenAdapter:
    """Base of the adapters: pipeline, geometry, VAE, prompt cache, call counter, block access.

    Subclasses set ``family`` and ``denoiser`` (the network), and implement ``encode_prompt``
    (through :meth:`_cached`), ``schedule``, ``velocity`` and, where the network has attention
    hook points, ``_named_blocks``.
    """

    family = "?"
    PROMPT_CACHE_SIZE = 64

    def __init__(self, pipe, denoiser, name: str):
        self.pipe = pipe
        self.name = name
        self.denoiser = denoiser
        self.vae = pipe.vae
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.pixel_multiple = self.vae_scale_factor * 2
        self.latent_channels = int(self.vae.config.latent_channels)
        self.counter = CallCounter()
        self._prompt_cache: OrderedDict[str, Cond] = OrderedDict()
        self._negative_prompt = ""
        self._row_value_cache: dict[tuple, torch.Tensor] = {}

    # -- basic properties -------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        """Where the computation runs (the GPU under CPU offload, where weights live on the CPU)."""
        return self.pipe._execution_device

    @property
    def dtype(self) -> torch.dtype:
        return self.denoiser.dtype

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, dtype={self.dtype}, device={self.device})"

    # -- per-row values without host-device syncs -------------------------------------------
    def row_values(self, value, rows: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """``value`` (a number, one per row, or a tensor) as ``[rows]`` on the model's device.
        A number is filled on the device; a list is copied once and kept (the step loop calls with
        the same guidance list every step), so the loop issues no blocking host-to-device copy."""
        if isinstance(value, torch.Tensor) and value.device == self.device:
            return value.to(dtype).reshape(-1).expand(rows)
        if isinstance(value, (int, float)) or (isinstance(value, torch.Tensor) and value.numel() == 1):
            return torch.full((rows,), float(value), device=self.device, dtype=dtype)
        key = (tuple(float(v) for v in torch.as_tensor(value).reshape(-1).tolist()), rows, dtype)
        cache = self._row_value_cache
        if key not in cache:
            if len(cache) > 256:
                cache.clear()
            cache[key] = torch.tensor(key[0], dtype=dtype).expand(rows).to(self.device)
        return cache[key]

    # -- classifier-free guidance calls (SD3, UNets) --------------------------------------------
    def _cfg_inputs(self, z, t, cond: Cond, grid: TokenGrid, guidance, control, tokens):
        """Checks, then the network's inputs for ``z``'s rows: unpacked latents (twice under CFG:
        [negative; prompt]), ``timestep = 1000 t``, the batch's conditioning, per-row guidance."""
        self._check_control(control)
        if tokens is not None:
            raise EditflowError(f"{self.name} ({self.family}) cannot run on a subset of tokens (FLUX only)")
        b = z.shape[0]
        if z.shape[1] != grid.num_tokens:
            raise EditflowError(f"latent has {z.shape[1]} tokens but the grid has {grid.num_tokens}")
        g = guidance_per_row(guidance, self.default_guidance, b)
        cfg, batch = cfg_inputs(cond.expand(b), g)
        x = self.unpack(z, grid).to(self.device, self.dtype)
        x = torch.cat([x, x]) if cfg else x
        timestep = (self.row_values(t, x.shape[0]) * 1000).to(self.dtype)
        return x, timestep, batch, g, cfg

    def _cfg_output(self, out: torch.Tensor, g: torch.Tensor, cfg: bool) -> torch.Tensor:
        """The guided velocity of the call as tokens (float32); the call is counted."""
        self.counter.record(out.shape[0])
        return self.pack(cfg_combine(out, self.row_values(g, g.shape[0]), cfg))

    # -- geometry -----------------------------------------------------------------------------
    def grid(self, height: int, width: int) -> TokenGrid:
        m = self.pixel_multiple
        if height % m or width % m or height <= 0 or width <= 0:
            raise EditflowError(f"image size {width}x{height} is not a positive multiple of {m}: resize it first")
        return TokenGrid(height=height, width=width, h=height // m, w=width // m)

    def pack(self, latents: torch.Tensor) -> torch.Tensor:
        return pack_latents(latents)

    def unpack(self, tokens: torch.Tensor, grid: TokenGrid) -> torch.Tensor:
        return unpack_latents(tokens, grid.h, grid.w)

    # -- blocks and attention layers --------------------------------------------------------
    def _named_blocks(self) -> list[tuple[str, object]]:
        """``(layer name, block)`` in forward order; empty where there are no hook points."""
        return []

    def attention_layers(self) -> list[str]:
        """Names of the attention layers (hook points), in forward order."""
        return [name for name, _ in self._named_blocks()]

    def block(self, layer: str):
        """The block of an attention layer name."""
        blocks = dict(self._named_blocks())
        if layer not in blocks:
            raise EditflowError(f"no layer {layer!r} in {self.name}: layers are {', '.join(blocks) or 'none'}")
        return blocks[layer]

    @contextmanager
    def bypass(self, layer: str):
        """Run with one block skipped (its residual streams pass through unchanged), as Stable
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
        folder = getattr(self.pipe, "name_or_path", None) or getattr(self.pipe.config, "_name_or_path", None)
        path = Path(str(folder)) / "vital_layers.json" if folder else None
        if path is None or not path.exists():
            return None
        return list(json.loads(path.read_text())["vital_layers"])

    def _check_control(self, control) -> None:
        if control is not None and not self._named_blocks():
            raise EditflowError(f"{self.name} ({self.family}) has no attention hook points: use a method that needs none")

    # -- text ---------------------------------------------------------------------------------
    @property
    def negative_prompt(self) -> str:
        """The negative prompt of classifier-free guidance (families with CFG); setting it drops
        the cached prompt encodings, which carry it."""
        return self._negative_prompt

    @negative_prompt.setter
    def negative_prompt(self, text: str) -> None:
        if not isinstance(text, str):
            raise EditflowError(f"a negative prompt must be a string, got {type(text).__name__}")
        self._negative_prompt = text
        self._prompt_cache.clear()

    def _cached(self, prompt: str, encode: Callable[[str], Cond]) -> Cond:
        if not isinstance(prompt, str):
            raise EditflowError(f"a prompt must be a string, got {type(prompt).__name__}")
        if prompt in self._prompt_cache:
            self._prompt_cache.move_to_end(prompt)
            return self._prompt_cache[prompt]
        with torch.no_grad():
            cond = self._prompt_cache[prompt] = encode(prompt)
        while len(self._prompt_cache) > self.PROMPT_CACHE_SIZE:
            self._prompt_cache.popitem(last=False)
        return cond

    # -- images ---------------------------------------------------------------------------------
    def _vae_shift(self) -> float:
        return float(getattr(self.vae.config, "shift_factor", None) or 0.0)

    @torch.no_grad()
    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        """Images ``[B, 3, H, W]`` in [-1, 1] -> clean latent tokens ``x0`` ``[B, N, 4C]`` (float32).

        Uses the posterior mode (deterministic), as FlowEdit and RF-Solver do.
        """
        self.grid(image.shape[-2], image.shape[-1])  # validates the size
        dist = self.vae.encode(image.to(self.device, self.vae.dtype)).latent_dist
        lat = (dist.mode() - self._vae_shift()) * self.vae.config.scaling_factor
        return self.pack(lat.float())

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, grid: TokenGrid) -> torch.Tensor:
        """Latent tokens -> images ``[B, 3, H, W]`` in [-1, 1] (float32, clamped)."""
        lat = self.unpack(latents, grid)
        lat = lat / self.vae.config.scaling_factor + self._vae_shift()
        img = self.vae.decode(lat.to(self.device, self.vae.dtype), return_dict=False)[0]
        return img.float().clamp(-1, 1)

    # -- noise ----------------------------------------------------------------------------------
    def noise(self, grid: TokenGrid, generator: torch.Generator, batch: int = 1) -> torch.Tensor:
        """Standard normal latent tokens, drawn in the unpacked latent shape as the family's
        diffusers pipeline draws them (same generator, same noise)."""
        gen_device = generator.device if generator is not None else torch.device("cpu")
        shape = (batch, self.latent_channels, grid.h * 2, grid.w * 2)
        z = torch.randn(shape, generator=generator, device=gen_device, dtype=self.dtype)
        return self.pack(z).to(self.device).float()


# -- classifier-free guidance (SD3, UNets) ------------------------------------------------------


def guidance_per_row(guidance, default: float, rows: int) -> torch.Tensor:
    """``guidance`` (None: ``default``; a scalar; or one value per row) as a float32 ``[rows]``."""
    g = torch.as_tensor(default if guidance is None else guidance, dtype=torch.float32).reshape(-1)
    if g.numel() not in (1, rows):
        raise EditflowError(f"guidance has {g.numel()} values for {rows} rows: give one or one per row")
    return g.expand(rows)


def cfg_inputs(cond: Cond, g: torch.Tensor) -> tuple[bool, Cond]:
    """Whether this call needs the unconditional half (some row has guidance > 1, as diffusers'
    ``do_classifier_free_guidance``), and the conditioning of the whole batch
    ``[negative rows; prompt rows]`` (or ``cond`` alone)."""
    if not bool((g > 1).any()):
        return False, cond
    if cond.negative is None:
        raise EditflowError("classifier-free guidance needs the negative prompt's conditioning: encode prompts "
                            "with the model's encode_prompt")
    return True, Cond.cat([cond.negative, Cond(cond.embeds, cond.pooled, cond.prompts, cond.ids)])


def cfg_combine(out: torch.Tensor, g: torch.Tensor, cfg: bool) -> torch.Tensor:
    """``u + g (c - u)`` per row where ``g > 1``, the conditional output ``c`` elsewhere (float32;
    ``g`` on the output's device: :meth:`LatentTokenAdapter.row_values`)."""
    out = out.float()
    if not cfg:
        return out
    u, c = out.chunk(2)
    g = g.view(-1, *([1] * (out.dim() - 1)))
    return torch.where(g > 1, u + g * (c - u), c)
