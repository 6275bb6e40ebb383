"""Stable Flow's vital layers (Avrahami et al., "Stable Flow: Vital Layers for Training-Free Image
Editing", arXiv 2411.14430, Sec. 3.1): the blocks whose removal changes the image most.

For prompts p and seeds s, generate the reference G_ref(p, s); for each block l, generate again
with l bypassed (its residual stream passes through) to get G_l(p, s); then

    vitality(l) = 1 - mean_{p, s} sim(G_ref(p, s), G_l(p, s))

and the vital set is {l : vitality(l) >= tau}. The paper scores with DINOv2 similarity and gives
the FLUX.1-dev set {0, 1, 2, 17, 18, 25, 28, 53, 54, 56} (the released code drops 2: double
blocks 0, 1, 17, 18 and single blocks 6, 9, 34, 35, 37, editflow's default for FLUX.1); its tau
is not stated. Here the similarity is SSIM (weight-free, so it runs on any machine) or DINOv2
(:func:`similarity_function`; ``editflow vital-layers --similarity dinov2``), and without
``threshold`` the vital set is every layer scoring at least 3x the median vitality (always at
least the top layer).
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Callable

import numpy as np

from .errors import EditflowError
from .models.base import FlowModel
from .sampling import generate

FLUX_DEV_VITAL = ["double.0", "double.1", "double.17", "double.18", "single.6", "single.9", "single.34",
                  "single.35", "single.37"]


def vitality(model: FlowModel, prompts: list[str], seeds: list[int], steps: int = 15, size: int | None = None,
             similarity: Callable[[np.ndarray, np.ndarray], float] | None = None, progress=None) -> dict[str, float]:
    """``{layer: vitality}`` over all attention layers (blocks) of ``model``."""
    sim = similarity or similarity_function("ssim")
    size = size or 1024
    cases = [(p, s) for p in prompts for s in seeds]
    refs = [np.asarray(generate(model, p, size, size, steps=steps, seed=s)) for p, s in cases]
    layers = model.attention_layers()
    scores = {}
    for layer in progress(layers) if progress else layers:
        with model.bypass(layer):
            values = [sim(ref, np.asarray(generate(model, p, size, size, steps=steps, seed=s)))
                      for ref, (p, s) in zip(refs, cases)]
        scores[layer] = 1.0 - float(np.mean(values))
    return scores


SIMILARITIES = ("ssim", "dinov2")


def similarity_function(name: str, checkpoint: str | None = None, device=None) -> Callable[[np.ndarray, np.ndarray], float]:
    """The image similarity ``sim(a, b)`` named ``name``: ``"ssim"`` (weight-free) or ``"dinov2"``
    (the paper's: DINOv2 class-token cosine, ``checkpoint`` a folder or hub id, default
    facebook/dinov2-base)."""
    if name == "ssim":
        from .world.oracle import ssim

        return ssim
    if name == "dinov2":
        from .bench.metrics import Dinov2Similarity

        metric = Dinov2Similarity.from_pretrained(checkpoint, device=device)
        return lambda a, b: metric([a], [b])[0]
    raise EditflowError(f"unknown similarity {name!r}: use one of {', '.join(SIMILARITIES)}")


def select(scores: dict[str, float], threshold: float | None = None) -> list[str]:
    """The vital layers: vitality >= ``threshold``, or >= 3x the median (at least the top one)."""
    cut = threshold if threshold is not None else 3 * statistics.median(scores.values())
    chosen = [layer for layer, v in scores.items() if v >= cut]
    return chosen or [max(scores, key=scores.get)]


def write(path: str | Path, scores: dict[str, float], vital: list[str], info: dict) -> Path:
    """``layers.json`` (scores, vital set, how they were found) and a bar plot ``layers.png`` beside it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"vital_layers": vital, "vitality": scores, **info}, indent=1))
    tmp.replace(path)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return path
    fig, ax = plt.subplots(figsize=(max(4, 0.35 * len(scores)), 3.2))
    names = list(scores)
    ax.bar(range(len(names)), [scores[n] for n in names], color=["C3" if n in vital else "C0" for n in names])
    ax.set_xticks(range(len(names)), names, rotation=90, fontsize=7)
    ax.set_ylabel("vitality (1 - similarity)")
    ax.set_title("bypassing each block (red: vital)")
    fig.tight_layout()
    png = path.with_suffix(".png")
    fig.savefig(png.with_name(png.name + ".tmp.png"), dpi=110)
    png.with_name(png.name + ".tmp.png").replace(png)
    plt.close(fig)
    return path
