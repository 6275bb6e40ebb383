"""Quality of a shapes model, scored exactly by the world's analytic reader (no weights needed).

    python benchmarks/shapes_quality.py --model shapes --out shapes_quality.json
    python benchmarks/shapes_quality.py --model runs/export --n-t2i 50 --n-edit 20   # quicker

Three measurements, all on held-out scenes (seed namespace never used in training):

* text-to-image: ``--n-t2i`` captions -> images (Euler, ``--steps``); per object colour, shape and
  position accuracy (position = an object of the right colour at its cell);
* reconstruction: VAE encode -> decode PSNR on ``--n-recon`` world images;
* editing: ``--n-edit`` colour edits with each of ``--methods`` at its defaults (methods that take a
  mask get the edit's mask); colour accuracy of the edited object, PSNR outside the edit mask
  (and outside it grown to whole tokens plus one) against the source, inside it against the truth.

Prints a table and writes JSON (``--out``) that ``--compare`` of a later run reads.
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
from editflow import world
from editflow.images import to_pil, to_tensor
from editflow.masks import dilate_tokens, token_mask_to_pixels
from editflow.train.data import HELD_OUT_NAMESPACE, scene_rng


def text_to_image(model, n: int, size: int, steps: int, seed: int) -> dict:
    scores = []
    for i in range(n):
        rng = scene_rng(HELD_OUT_NAMESPACE, seed, i)
        scene = world.sample_scene(rng)
        image = editflow.generate(model, world.caption(scene), size, size, steps=steps, seed=seed * 100_003 + i)
        scores.append(world.read_scene_accuracy(np.asarray(image), scene))
    mean = lambda key: float(np.mean([s[key] for s in scores]))  # noqa: E731
    return {"n": n, "color": mean("color"), "shape": mean("shape"), "position": mean("position"),
            "size": mean("size"), "background": mean("background_correct"), "all_correct": mean("all_correct")}


@torch.no_grad()
def reconstruction(model, n: int, size: int, seed: int) -> dict:
    values = []
    for i in range(n):
        image = world.render(world.sample_scene(scene_rng(HELD_OUT_NAMESPACE, seed + 1, i)), size)
        x = to_tensor(Image.fromarray(image))
        grid = model.grid(size, size)
        out = np.asarray(to_pil(model.decode(model.encode_image(x), grid)))
        values.append(world.psnr(out, image))
    return {"n": n, "psnr_mean": float(np.mean(values)), "psnr_min": float(np.min(values))}


def dilated_token_mask(model, mask: np.ndarray) -> np.ndarray:
    """The pixel mask grown to whole latent tokens plus one token around (what a token-level
    method may legitimately change)."""
    grid = model.grid(*mask.shape)
    return token_mask_to_pixels(dilate_tokens(grid.mask_to_tokens(torch.from_numpy(mask)), grid), grid).numpy()


def table(editing_report: dict) -> str:
    lines = ["| method | NFE | colour right | PSNR outside mask | outside mask + 1 token | inside vs truth | s/edit |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, r in editing_report.items():
        lines.append(f"| {name} | {r['nfe_calls']} | {100 * r['color_accuracy']:.0f}% | {r['psnr_outside_mask']:.2f} dB "
                     f"| {r['psnr_outside_dilated']:.2f} dB | {r['psnr_inside_mask_vs_target']:.2f} dB "
                     f"| {r['seconds_per_edit']:.2f} |")
    return "\n".join(lines)


def editing(model, n: int, size: int, seed: int, methods: list[str]) -> dict:
    out = {}
    for method in methods:
        rows = []
        for i in range(n):
            ex = world.sample_edit(scene_rng(HELD_OUT_NAMESPACE, seed + 2, i), "color", size=size)
            result = editflow.edit(model, Image.fromarray(ex.source_image), ex.source_prompt, ex.target_prompt,
                                   method=method, seed=i, mask=ex.mask)  # methods without a mask ignore it
            scores = world.edit_scores(ex, np.asarray(result.image))
            scores["psnr_outside_dilated"] = world.psnr(np.asarray(result.image), ex.source_image,
                                                        ~dilated_token_mask(model, ex.mask))
            scores["seconds"] = result.seconds
            rows.append(scores)
        out[method] = {
            "n": n,
            "color_accuracy": float(np.mean([r["color_correct"] for r in rows])),
            "psnr_outside_mask": float(np.mean([min(r["psnr_outside_mask_vs_source"], 100.0) for r in rows])),
            "psnr_inside_mask_vs_target": float(np.mean([min(r["psnr_inside_mask_vs_target"], 100.0) for r in rows])),
            "psnr_outside_dilated": float(np.mean([min(r["psnr_outside_dilated"], 100.0) for r in rows])),
            "seconds_per_edit": float(np.mean([r["seconds"] for r in rows])),
            "nfe_calls": result.nfe.calls,
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="shapes")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=28)
    ap.add_argument("--n-t2i", type=int, default=200)
    ap.add_argument("--n-recon", type=int, default=50)
    ap.add_argument("--n-edit", type=int, default=100)
    ap.add_argument("--methods", default="flowedit,ode_inversion")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None)
    ap.add_argument("--compare", default=None)
    args = ap.parse_args()

    model = editflow.load_model(args.model)
    start = time.perf_counter()
    report = {"model": args.model, "size": args.size, "steps": args.steps, "device": str(model.device)}
    if args.n_t2i:
        report["text_to_image"] = text_to_image(model, args.n_t2i, args.size, args.steps, args.seed)
    if args.n_recon:
        report["reconstruction"] = reconstruction(model, args.n_recon, args.size, args.seed)
    if args.n_edit:
        report["editing"] = editing(model, args.n_edit, args.size, args.seed, args.methods.split(","))
    report["seconds"] = time.perf_counter() - start
    print(json.dumps({k: v for k, v in report.items()}, indent=1))
    if "editing" in report:
        print(table(report["editing"]))
    if args.compare:
        old = json.loads(Path(args.compare).read_text())
        for key in ("color", "shape", "position"):
            if "text_to_image" in old and "text_to_image" in report:
                print(f"t2i {key}: {old['text_to_image'][key]:.3f} -> {report['text_to_image'][key]:.3f}")
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
