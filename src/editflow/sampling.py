"""Sampling below the methods: the seeded generator every edit draws from, and text-to-image
(:func:`generate`, used by Stable Flow's vital-layer search and by :mod:`editflow.api`)."""

from __future__ import annotations

import torch

from .errors import ParameterError
from .images import to_pil
from .limits import Limits, check_seed
from .models.base import Cond, FlowModel
from .solvers import euler


def make_generator(seed: int | None, generator: torch.Generator | None) -> torch.Generator:
    """An explicit CPU generator (noise is drawn on the CPU, so results match across devices).

    ``seed`` is a whole number in ``[0, 2**64 - 1]``; ``generator`` a ``torch.Generator``."""
    if generator is not None:
        if not isinstance(generator, torch.Generator):
            raise ParameterError(f"generator must be a torch.Generator, got {type(generator).__name__}: "
                                 "pass seed=N for a seeded edit")
        return generator
    if seed is None:
        raise ParameterError("pass a seed (an int) or a torch.Generator: editflow never draws hidden randomness")
    return torch.Generator("cpu").manual_seed(check_seed(seed))


@torch.no_grad()
def generate(
    model: FlowModel,
    prompt: str,
    height: int,
    width: int,
    steps: int = 28,
    guidance: float | None = None,
    seed: int | None = 0,
    generator: torch.Generator | None = None,
    latents: torch.Tensor | None = None,
    output_type: str = "pil",
    limits: Limits | None = None,
):
    """Text-to-image with the Euler sampler (FluxPipeline's own loop, in editflow's terms).

    ``latents`` gives the initial noise tokens; otherwise they are drawn from ``seed`` exactly as
    diffusers draws them. ``output_type="latent"`` returns the final tokens. ``limits`` (default
    :meth:`Limits.from_env`) bound the prompt, the size and the steps before any model call.
    """
    limits = limits or Limits.from_env()
    limits.check_prompt(prompt, "prompt")
    for name, value in (("height", height), ("width", width), ("steps", steps)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ParameterError(f"{name} must be a positive whole number, got {value!r}")
    limits.check_working(width, height, model.name, fix="generate a smaller image")
    limits.check_work(steps, steps, 1)
    grid = model.grid(height, width)
    z = latents if latents is not None else model.noise(grid, make_generator(seed, generator))
    cond: Cond = model.encode_prompt(prompt)
    z = euler(lambda x, t: model.velocity(x, t, cond, grid, guidance=guidance), z.float(), model.schedule(steps, grid))
    if output_type == "latent":
        return z
    return to_pil(model.decode(z, grid))
