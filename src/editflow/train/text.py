"""Pretraining the shapes model's T5 text encoder on its captions, before it is frozen.

FLUX reads *pretrained* frozen text encoders. A randomly initialised two-layer T5 mixes its tokens
almost uniformly, so the feature of "red" barely says which object it belongs to. The transformer then
cannot tie a colour to a shape and a position: the first CPU run of the shapes model, trained on
such features, reached 100% background accuracy but 27-45% on object attributes. This stage gives the
encoder what pretraining gives FLUX's T5: features that carry the caption's meaning, token by token.

Objective (scene parsing). For caption token ``i`` with final feature ``h_i`` and linear heads
``W_a`` for ``a`` in {size, colour, shape, position, background}:

    L = sum_a mean_{i in T_a} CE(W_a h_i, y_a(i))

where ``y_a(i)`` is attribute ``a`` of the object phrase ("a large red circle in the top left")
that contains token ``i``, ``T_a`` the tokens inside an object phrase, and for the background every
non-padding token predicts the scene's background colour. The heads are thrown away; the encoder is
saved and stays frozen while the transformer trains.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from .. import world
from . import loop
from .data import scene_rng

TEXT_NAMESPACE = 3  # caption batches for this stage; flow batches draw from data.TRAIN_NAMESPACE
IGNORE = -100

ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "size": world.SIZES,
    "color": tuple(world.COLORS),
    "shape": world.SHAPES,
    "position": world.POSITIONS,
    "background": tuple(world.BACKGROUNDS),
}


def token_labels(tokenizer, captions: list[str], max_length: int) -> tuple[torch.Tensor, dict]:
    """``input_ids`` ``[B, L]`` and per-attribute labels ``[B, L]`` (IGNORE outside).

    A token belongs to the phrase holding its last character. Special and padding tokens (empty
    offsets) are ignored by every head.
    """
    enc = tokenizer(captions, padding="max_length", max_length=max_length, truncation=True,
                    return_offsets_mapping=True, return_tensors="np")
    offsets = enc["offset_mapping"]  # [B, L, 2]
    labels = {a: np.full(offsets.shape[:2], IGNORE, dtype=np.int64) for a in ATTRIBUTES}
    for b, text in enumerate(captions):
        scene = world.parse_caption(text)
        real = offsets[b, :, 1] > 0
        labels["background"][b, real] = ATTRIBUTES["background"].index(scene.background)
        last_char = offsets[b, :, 1] - 1
        for start, end, obj in world.object_spans(text):
            inside = real & (last_char >= start) & (last_char < end)
            for a in ("size", "color", "shape", "position"):
                labels[a][b, inside] = ATTRIBUTES[a].index(getattr(obj, a))
    return torch.from_numpy(enc["input_ids"]), {a: torch.from_numpy(v) for a, v in labels.items()}


def caption_batch(seed: int, step: int, batch_size: int, min_objects: int, max_objects: int, version: int = 1,
                  split: str | None = None) -> list[str]:
    """Paraphrased captions of random scenes of ``split``; a pure function of ``(seed, step)``."""
    rng = scene_rng(TEXT_NAMESPACE, seed, step)
    return [world.caption(world.sample_scene(rng, min_objects, max_objects, version=version, split=split), rng)
            for _ in range(batch_size)]


class ParsingHeads(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.heads = nn.ModuleDict({a: nn.Linear(dim, len(v)) for a, v in ATTRIBUTES.items()})

    def losses(self, hidden: torch.Tensor, labels: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {a: nn.functional.cross_entropy(head(hidden).flatten(0, 1), labels[a].flatten(), ignore_index=IGNORE)
                for a, head in self.heads.items()}

    @torch.no_grad()
    def accuracy(self, hidden: torch.Tensor, labels: dict[str, torch.Tensor]) -> dict[str, float]:
        out = {}
        for a, head in self.heads.items():
            keep = labels[a] != IGNORE
            out[a] = float((head(hidden).argmax(-1)[keep] == labels[a][keep]).float().mean())
        return out


def pretrain_t5(t5, tokenizer, *, seed: int, steps: int, batch_size: int, lr: float, max_length: int,
                min_objects: int, max_objects: int, stage_dir: Path, progress: bool = True,
                device: torch.device | str = "cpu", version: int = 1) -> dict[str, float]:
    """Fit ``t5`` (a ``T5EncoderModel``) by the parsing objective; returns held-out token accuracies.

    The heads live only for this call, so the stage checkpoints once, at the end (a few minutes of
    CPU at the shipped size); an interrupted stage starts again from the seed.
    """
    torch.manual_seed(seed + 2)
    heads = ParsingHeads(t5.config.d_model).to(device)
    t5.to(device)

    def encode(captions: list[str]):
        ids, labels = token_labels(tokenizer, captions, max_length)
        # no attention mask: FluxPipeline.encode_prompt runs T5 over the padded ids without one
        hidden = t5(input_ids=ids.to(device)).last_hidden_state
        return hidden, {a: y.to(device) for a, y in labels.items()}

    def loss_at(step: int) -> torch.Tensor:
        hidden, labels = encode(caption_batch(seed, step, batch_size, min_objects, max_objects, version,
                                              world.training_split(version)))
        return sum(heads.losses(hidden, labels).values())

    params = list(t5.parameters()) + list(heads.parameters())
    loop.run("text", t5, params, loss_at, steps, lr, max(1, steps // 10), stage_dir, checkpoint_every=steps,
             progress=progress)
    t5.eval()
    with torch.no_grad():  # held out: a step index the loop never reaches (version 2: the held-out graphs)
        return heads.accuracy(*encode(caption_batch(seed, 10**9, 512, min_objects, max_objects, version,
                                                    world.held_out_split(version))))
