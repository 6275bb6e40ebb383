"""Quality of a shapes model, scored exactly by the world's analytic reader (no weights needed).

    python benchmarks/shapes_quality.py --model shapes2 --out shapes2_quality.json
    python benchmarks/shapes_quality.py --model runs/export --n-t2i 50 --n-recon 50 --n-edit 20   # quicker

Four measurements, all on held-out scenes (world version 2: scene graphs of the held-out split,
which training never draws; version 1: a seed namespace training never used):

* text-to-image: ``--n-t2i`` captions -> images (Euler, ``--steps``) at each ``--guidance`` value
  (guidance-distilled models; a model without a guidance embedding ignores it and is measured once);
  per object colour, shape, size and position accuracy (position = an object of the right colour
  at its cell), background, whole scene;
* reconstruction (the VAE's ceiling): ``--n-recon`` scenes encoded and decoded; the share of objects
  the reader still reads right (colour, shape and size), their structure IoU against the exact
  coverage (version 2), and PSNR;
* editing: ``--n-edit`` colour edits with each of ``--methods`` at its defaults (methods that take a
  mask get the edit's mask): edit right, structure kept (version 2), PSNR outside the mask against
  the source, inside it against the truth;
* guidance: FlowEdit at its target guidance (5.5 on FLUX) against target guidance = source guidance
  on the same colour edits and seeds: mean absolute pixel difference of the two outputs (0 when the
  guidance value is a no-op) and both edit-right rates.

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
from editflow.train.data import HELD_OUT_NAMESPACE, scene_rng


def held_out_scene(version: int, seed: int, i: int) -> world.Scene:
    rng = scene_rng(HELD_OUT_NAMESPACE, seed, i)
    return world.sample_scene(rng, version=version, split=world.held_out_split(version))


def held_out_edit(version: int, seed: int, i: int, kind: str, size: int) -> world.EditExample:
    rng = scene_rng(HELD_OUT_NAMESPACE, seed, i)
    return world.sample_edit(rng, kind, size=size, version=version, split=world.held_out_split(version))


def text_to_image(model, n: int, size: int, steps: int, seed: int, version: int, guidance: float | None) -> dict:
    scores = []
    for i in range(n):
        scene = held_out_scene(version, seed, i)
        image = editflow.generate(model, world.caption(scene), size, size, steps=steps, guidance=guidance,
                                  seed=seed * 100_003 + i)
        scores.append(world.read_scene_accuracy(np.asarray(image), scene))
    mean = lambda key: float(np.mean([s[key] for s in scores]))  # noqa: E731
    return {"n": n, "guidance": guidance, "color": mean("color"), "shape": mean("shape"), "position": mean("position"),
            "size": mean("size"), "background": mean("background_correct"), "all_correct": mean("all_correct")}


@torch.no_grad()
def reconstruction(model, n: int, size: int, seed: int, version: int) -> dict:
    psnrs, right, structure = [], [], []
    for i in range(n):
        scene = held_out_scene(version, seed + 1, i)
        image = world.render(scene, size)
        x = to_tensor(Image.fromarray(image))
        out = np.asarray(to_pil(model.decode(model.encode_image(x), model.grid(size, size))))
        psnrs.append(world.psnr(out, image))
        acc = world.read_scene_accuracy(out, scene)
        right += [o["correct"] for o in acc["objects"]]
        structure += [o["structure_iou"] for o in acc["objects"] if "structure_iou" in o]
    out = {"n": n, "objects": len(right), "objects_read_right": float(np.mean(right)),
           "psnr_mean": float(np.mean(psnrs)), "psnr_min": float(np.min(psnrs))}
    if structure:
        out["structure_iou_mean"] = float(np.mean(structure))
        out["structure_kept"] = float(np.mean(np.array(structure) >= world.oracle.STRUCTURE_MIN_IOU))
    return out


def _mean(rows: list[dict], key: str) -> float:
    values = [float(r[key]) for r in rows if key in r and np.isfinite(float(r[key]))]
    return float(np.mean(values)) if values else float("nan")


def editing(model, n: int, size: int, seed: int, methods: list[str], version: int) -> dict:
    out = {}
    for method in methods:
        rows = []
        for i in range(n):
            ex = held_out_edit(version, seed + 2, i, "color", size)
            result = editflow.edit(model, Image.fromarray(ex.source_image), ex.source_prompt, ex.target_prompt,
                                   method=method, seed=i, mask=ex.mask)  # methods without a mask ignore it
            scores = world.edit_scores(ex, np.asarray(result.image))
            scores["seconds"] = result.seconds
            rows.append(scores)
        out[method] = {
            "n": n,
            "edit_correct": _mean(rows, "edit_correct"),
            "structure_kept": _mean(rows, "structure_kept"),
            "psnr_outside_mask": float(np.mean([min(r["psnr_outside_mask_vs_source"], 100.0) for r in rows])),
            "psnr_inside_mask_vs_target": float(np.mean([min(r["psnr_inside_mask_vs_target"], 100.0) for r in rows])),
            "seconds_per_edit": _mean(rows, "seconds"),
            "nfe_calls": result.nfe.calls,
        }
    return out


def guidance_effect(model, n: int, size: int, seed: int, version: int) -> dict:
    """FlowEdit with its default target guidance vs the target guidance set to the source's."""
    from editflow.methods import get_method

    params = get_method("flowedit").params.for_family(model.family)
    low = params.source_guidance
    diffs, right = [], {"default": [], "equal": []}
    for i in range(n):
        ex = held_out_edit(version, seed + 3, i, "color", size)
        images = {}
        for name, overrides in (("default", {}), ("equal", {"target_guidance": low})):
            result = editflow.edit(model, Image.fromarray(ex.source_image), ex.source_prompt, ex.target_prompt,
                                   method="flowedit", seed=i, **overrides)
            images[name] = np.asarray(result.image).astype(np.float64)
            right[name].append(world.edit_scores(ex, images[name].astype(np.uint8))["edit_correct"])
        diffs.append(float(np.abs(images["default"] - images["equal"]).mean()))
    return {"n": n, "source_guidance": low, "target_guidance": params.target_guidance,
            "mean_abs_pixel_difference": float(np.mean(diffs)), "edit_correct_default": float(np.mean(right["default"])),
            "edit_correct_equal": float(np.mean(right["equal"]))}


def table(editing_report: dict) -> str:
    lines = ["| method | NFE | edit right | structure kept | PSNR outside mask | inside vs truth | s/edit |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, r in editing_report.items():
        lines.append(f"| {name} | {r['nfe_calls']} | {100 * r['edit_correct']:.0f}% | {100 * r['structure_kept']:.0f}% "
                     f"| {r['psnr_outside_mask']:.2f} dB | {r['psnr_inside_mask_vs_target']:.2f} dB "
                     f"| {r['seconds_per_edit']:.2f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="shapes")
    ap.add_argument("--world-version", type=int, default=None, help="default: the model's training config's")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=28)
    ap.add_argument("--guidance", default="1,3.5,7", help="text-to-image guidance values (distilled models)")
    ap.add_argument("--n-t2i", type=int, default=200)
    ap.add_argument("--n-recon", type=int, default=100)
    ap.add_argument("--n-edit", type=int, default=100)
    ap.add_argument("--n-guidance", type=int, default=50)
    ap.add_argument("--methods", default="flowedit,ode_inversion")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quantize", default=None, help="quantize the transformer (int8, fp8; editflow.models.quantize)")
    ap.add_argument("--out", default=None)
    ap.add_argument("--compare", default=None)
    args = ap.parse_args()

    model = editflow.load_model(args.model, quantize=args.quantize)
    version = args.world_version
    if version is None:
        from editflow.models.zoo import trained_world_version

        version = trained_world_version(args.model)
    start = time.perf_counter()
    report = {"model": args.model, "quantize": args.quantize, "world_version": version, "size": args.size, "steps": args.steps,
              "device": str(model.device), "guidance_distilled": bool(getattr(model, "guidance_distilled", False))}
    if args.n_t2i:
        values = [float(g) for g in args.guidance.split(",")] if report["guidance_distilled"] else [None]
        report["text_to_image"] = [text_to_image(model, args.n_t2i, args.size, args.steps, args.seed, version, g)
                                   for g in values]
    if args.n_recon:
        report["reconstruction"] = reconstruction(model, args.n_recon, args.size, args.seed, version)
    if args.n_edit:
        report["editing"] = editing(model, args.n_edit, args.size, args.seed, args.methods.split(","), version)
    if args.n_guidance:
        report["guidance"] = guidance_effect(model, args.n_guidance, args.size, args.seed, version)
    report["seconds"] = time.perf_counter() - start
    print(json.dumps(report, indent=1))
    if "editing" in report:
        print(table(report["editing"]))
    if args.compare:
        old = json.loads(Path(args.compare).read_text())
        rows = old.get("text_to_image", [])
        by_guidance = {r.get("guidance"): r for r in ([rows] if isinstance(rows, dict) else rows)}  # v1 files: one dict
        for new_row in report.get("text_to_image", []):
            old_row = by_guidance.get(new_row["guidance"])
            if old_row is None:
                print(f"t2i guidance {new_row['guidance']}: not in {args.compare}")
                continue
            for key in ("color", "shape", "position"):
                print(f"t2i guidance {new_row['guidance']} {key}: {old_row[key]:.3f} -> {new_row[key]:.3f}")
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
