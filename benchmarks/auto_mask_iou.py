"""IoU of editflow's automatic edit mask (DiffEdit-style) against the shapes world's exact masks.

    python benchmarks/auto_mask_iou.py --n 100 --out benchmarks/results/auto_mask_iou.json

Held-out edits of every kind (seed namespace never used in training). Reported per kind and
overall: the auto mask's IoU, a full-image mask's IoU (what a method gets with no mask), and the
IoU of the exact mask mapped outward to the token grid and back (a token is in when any of its
pixels is), a reference for a mask that lives on the latent token grid (not an upper bound: a
tighter token mask can score higher).
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import editflow
from editflow.models.zoo import trained_world_version
from editflow import world
from editflow.images import to_tensor
from editflow.masks import auto_mask, token_mask_to_pixels
from editflow.train.data import HELD_OUT_NAMESPACE, scene_rng


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="shapes")
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--t", type=float, default=0.5)
    ap.add_argument("--draws", type=int, default=10)
    ap.add_argument("--threshold", type=float, default=0.5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    model = editflow.load_model(args.model)
    version = trained_world_version(args.model)
    grid = model.grid(64, 64)
    rows = defaultdict(lambda: defaultdict(list))
    for i in range(args.n):
        kind = world.EDIT_KINDS[i % len(world.EDIT_KINDS)]
        ex = world.sample_edit(scene_rng(HELD_OUT_NAMESPACE, args.seed + 9, i), kind, size=64, version=version,
                               split=world.held_out_split(version))
        x = model.encode_image(to_tensor(Image.fromarray(ex.source_image)))
        tokens = auto_mask(model, x, grid, ex.source_prompt, ex.target_prompt, torch.Generator().manual_seed(i),
                           t=args.t, draws=args.draws, threshold=args.threshold)
        best = token_mask_to_pixels(grid.mask_to_tokens(torch.from_numpy(ex.mask)), grid).numpy()
        for key in (kind, "all"):
            rows[key]["auto"].append(iou(token_mask_to_pixels(tokens, grid).numpy(), ex.mask))
            rows[key]["full_image"].append(iou(np.ones_like(ex.mask), ex.mask))
            rows[key]["token_ceiling"].append(iou(best, ex.mask))
    report = {k: {m: float(np.mean(v)) for m, v in d.items()} | {"n": len(d["auto"])} for k, d in rows.items()}
    print("| kind | n | auto mask IoU | full-image IoU | exact mask on the token grid IoU |")
    print("| --- | --- | --- | --- | --- |")
    for k in list(world.EDIT_KINDS) + ["all"]:
        r = report[k]
        print(f"| {k} | {r['n']} | {r['auto']:.3f} | {r['full_image']:.3f} | {r['token_ceiling']:.3f} |")
    if args.out:
        Path(args.out).write_text(json.dumps({"args": vars(args), "iou": report}, indent=1))


if __name__ == "__main__":
    main()
