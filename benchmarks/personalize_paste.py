"""Personalize Anything on the shapes model: paste an object of one scene into another.

    python benchmarks/personalize_paste.py --n 50 --out benchmarks/results/personalize_paste.json

Each held-out case (:func:`editflow.world.sample_paste`) is a reference scene, one of its objects,
and a base scene with that cell empty. The edit is Personalize Anything's multi-subject
inpainting: the base image is the main reference with everything but the object's token footprint
as its known region (pasted until t = 0.1, the paper's in/outpainting mode), and the reference
scene is a second subject (``editflow.Subject``) with the object's mask, pasted until its ``tau``.
Scored with the oracle reader at the object's cell (right shape and colour) and by PSNR of the
known region against the base image. Settings:

* ``named``: the prompt is the expected result's caption (it names the object), per subject tau;
* ``unnamed``: the prompt is the base caption (the object comes from the reference alone);
* ``no subject``: the named prompt with no second subject (what the prompt alone puts in the hole);
* ``token composite``: the VAE decode of the base latent with the object's tokens copied in
  (the ceiling of any token paste on this VAE).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import editflow
from editflow.models.zoo import trained_world_version
from editflow import world
from editflow.images import to_pil, to_tensor
from editflow.train.data import HELD_OUT_NAMESPACE, scene_rng

SEED_OFFSET = 31  # held-out namespace, a seed no other benchmark uses


def right(image: np.ndarray, obj: world.Obj) -> bool:
    r = world.read_object(image, obj.position)
    return bool(r["present"] and r["color"] == obj.color and r["shape"] == obj.shape)


def paste(model, ex: world.PasteExample, prompt: str, tau: float | None, seed: int, grow: int = 0) -> np.ndarray:
    ref, base, _ = ex.images()
    obj = ex.object_mask()
    subjects = [] if tau is None else [editflow.Subject(Image.fromarray(ref), obj, ex.prompts[0], tau=tau)]
    r = editflow.edit(model, Image.fromarray(base), ex.prompts[1], prompt, method="personalize_anything", seed=seed,
                      mask=~obj, tau=0.1, mask_grow=grow, subjects=subjects)
    return np.asarray(r.image)


def composite(model, ex: world.PasteExample) -> np.ndarray:
    ref, base, _ = ex.images()
    grid = model.grid(64, 64)
    tokens = grid.mask_to_tokens(torch.from_numpy(ex.object_mask())).reshape(-1)
    x = model.encode_image(to_tensor(Image.fromarray(base)))
    x[0, tokens] = model.encode_image(to_tensor(Image.fromarray(ref)))[0, tokens]
    return np.asarray(to_pil(model.decode(x, grid)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="shapes")
    ap.add_argument("--n", type=int, default=50)
    ap.add_argument("--taus", default="0.0,0.1,0.3,0.8", help="subject taus for the named prompt")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    model = editflow.load_model(args.model)
    taus = [float(t) for t in args.taus.split(",")]
    settings = [(f"named, tau {t}", "named", t) for t in taus] + [
        ("unnamed, tau 0.1", "unnamed", 0.1), ("unnamed, tau 0.0", "unnamed", 0.0), ("no subject", "named", None)]
    scores = {name: {"right": [], "known_psnr": []} for name, _, _ in settings}
    scores["token composite"] = {"right": [], "known_psnr": []}
    start = time.perf_counter()
    for i in range(args.n):
        ex = world.sample_paste(scene_rng(HELD_OUT_NAMESPACE, args.seed + SEED_OFFSET, i),
                                trained_world_version(args.model))
        _, base, _ = ex.images()
        known = ~ex.object_mask()
        outputs = {name: paste(model, ex, ex.prompts[2] if kind == "named" else ex.prompts[1], tau, i)
                   for name, kind, tau in settings}
        outputs["token composite"] = composite(model, ex)
        for name, image in outputs.items():
            scores[name]["right"].append(right(image, ex.obj))
            scores[name]["known_psnr"].append(world.psnr(image, base, known))
        if (i + 1) % 10 == 0:
            print(f"{i + 1}/{args.n} cases, {time.perf_counter() - start:.0f} s", flush=True)
    report = {name: {"right": int(sum(v["right"])), "n": len(v["right"]), "rate": float(np.mean(v["right"])),
                     "known_psnr_mean": float(np.mean(v["known_psnr"]))} for name, v in scores.items()}
    print("| setting | object right | known-region PSNR (dB) |")
    print("| --- | --- | --- |")
    for name, r in report.items():
        print(f"| {name} | {r['right']}/{r['n']} ({100 * r['rate']:.0f}%) | {r['known_psnr_mean']:.1f} |")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"model": args.model, "n": args.n, "seed": args.seed, "results": report},
                                             indent=1))


if __name__ == "__main__":
    main()
