"""The three baselines every benchmark table carries (``DESIGN.md`` section 7).

A score means something only beside what no editing at all, and editing without the source,
would score:

- ``identity``: the source image, unchanged (no model call). A method must beat it on the edit.
- ``regeneration``: text-to-image from the target prompt alone (:func:`editflow.generate`, Euler,
  ``REGENERATION_STEPS`` steps, the model's default guidance, seeded like the item's edits), at the
  working size the edits use. It never sees the source, so a method must beat it on preservation;
  a test bound or a claim that regeneration also meets guards nothing.
- ``vae_ceiling``: the ground-truth target encoded and decoded by the model's VAE (no transformer
  call): the best a method whose output passes through the VAE can score. Only for datasets that
  ship a ground truth (the shapes world's); other items skip it.

Each returns what an edit returns for the runner: the image at the source's size, the transformer
calls (:class:`~editflow.models.base.NFE`) and the wall time.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

import torch
from PIL import Image

from ..errors import EditflowError
from ..images import to_pil
from ..limits import Limits
from ..models.base import NFE, FlowModel

BASELINES: tuple[str, ...] = ("identity", "regeneration", "vae_ceiling")
REGENERATION_STEPS = 28  # FLUX.1-dev's and FlowEdit's step count


def parse_baselines(text: str | Iterable[str] | None) -> tuple[str, ...]:
    """``"identity,regeneration"`` (or a sequence of names) -> names, each once; ``None`` -> all three;
    ``"none"``, ``""`` or an empty sequence -> none."""
    if text is None:
        return BASELINES
    parts = text.split(",") if isinstance(text, str) else list(text)
    names = tuple(dict.fromkeys(n.strip() for n in parts if n.strip()))
    if names in ((), ("none",)):
        return ()
    for n in names:
        if n not in BASELINES:
            raise EditflowError(f"unknown baseline {n!r}: choose from {', '.join(BASELINES)}, or none")
    return names


def baseline_params(name: str) -> dict:
    """What a baseline's record stores as its parameters (part of its resume key)."""
    return {"steps": REGENERATION_STEPS} if name == "regeneration" else {}


def check_baselines(names: tuple[str, ...], limits: Limits) -> None:
    """Regeneration's steps against ``limits`` (before any model loads): one line that names the
    baseline and how to leave it out."""
    if "regeneration" not in names:
        return
    for name, what in (("max_steps", "steps"), ("max_nfe", "model calls")):  # one call per Euler step
        if REGENERATION_STEPS > getattr(limits, name):
            raise limits.refuse(name, f"the regeneration baseline's {REGENERATION_STEPS} {what}", REGENERATION_STEPS,
                                "leave it out with --baselines identity,vae_ceiling")


def applies(name: str, target_image) -> bool:
    """Whether baseline ``name`` can run on an item (the ceiling needs a ground truth)."""
    return name != "vae_ceiling" or target_image is not None


@torch.no_grad()
def run_baseline(name: str, model: FlowModel, source: Image.Image, target_prompt: str, seed: int,
                 target_image: Image.Image | None = None, limits: Limits | None = None
                 ) -> tuple[Image.Image, NFE, float]:
    """``(image at the source's size, transformer calls, seconds)`` of baseline ``name``."""
    from ..api import prepare_image
    from ..sampling import generate

    if name not in BASELINES:
        raise EditflowError(f"unknown baseline {name!r}: choose from {', '.join(BASELINES)}")
    if name == "vae_ceiling" and target_image is None:
        raise EditflowError("vae_ceiling needs the item's ground-truth target image")
    before = model.counter.total.copy()
    start = time.perf_counter()
    if name == "identity":
        out = source.copy()
    else:  # both work at the size an edit of the item works at, and come back at the item's size
        x, size, work = prepare_image(model, target_image if name == "vae_ceiling" else source, limits)
        if name == "regeneration":
            out = generate(model, target_prompt, work[1], work[0], steps=REGENERATION_STEPS, seed=seed, limits=limits)
        else:
            out = to_pil(model.decode(model.encode_image(x), model.grid(work[1], work[0])))
        if out.size != size:
            out = out.resize(size, Image.LANCZOS)
    return out, model.counter.total - before, time.perf_counter() - start
