"""Training batches drawn from the shapes world on the fly.

Batch ``k`` of a run is a pure function of ``(seed, k)``, so a resumed run sees exactly the batches
it would have seen, and evaluation sets drawn from another seed namespace never meet training.
"""

from __future__ import annotations

import numpy as np
import torch

from .. import world

TRAIN_NAMESPACE = 1
HELD_OUT_NAMESPACE = 2  # benchmarks draw from here: never used in training


def scene_rng(namespace: int, seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng([namespace, seed, index])


def world_batch(seed: int, step: int, batch_size: int, image_size: int, min_objects: int = 1, max_objects: int = 3,
                namespace: int = TRAIN_NAMESPACE, version: int = 1) -> tuple[torch.Tensor, list[str]]:
    """Images ``[B, 3, S, S]`` in [-1, 1] and their (paraphrased) captions.

    World version 2 draws only ``"train"`` scene graphs (:func:`editflow.world.split_of`), so the
    held-out split never meets training; version 1 (the ``shapes`` model) draws from all graphs.
    """
    rng = scene_rng(namespace, seed, step)
    split = world.training_split(version)
    images, captions = [], []
    for _ in range(batch_size):
        scene = world.sample_scene(rng, min_objects=min_objects, max_objects=max_objects, version=version, split=split)
        images.append(world.render(scene, image_size))
        captions.append(world.caption(scene, rng))
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    return x, captions


def caption_corpus(n: int, seed: int, version: int = 1) -> list[str]:
    """Captions for training the tokenizer (canonical and paraphrased), from the training split."""
    rng = scene_rng(TRAIN_NAMESPACE, seed, -1 % 2**31)
    out = []
    for i in range(n):
        scene = world.sample_scene(rng, version=version, split=world.training_split(version))
        out.append(world.caption(scene, rng if i % 2 else None))
    return out
