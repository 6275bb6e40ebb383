"""Reconstruction accuracy of every inversion solver against its cost (NFE).

    python benchmarks/inversion_accuracy.py --out benchmarks/results/inversion_accuracy.json
    python benchmarks/inversion_accuracy.py --model tiny-flux --n 4          # quick, random weights
    python benchmarks/inversion_accuracy.py --compare old.json               # ratios against a run

For each solver and step count, ``--n`` held-out shapes-world scenes (seed namespace never used in
training) are encoded, inverted to t = 1 with their own caption and regenerated with the same
caption (editflow's ``ode_inversion`` with equal prompts, batched over scenes). Reported:

* ``nfe``: model calls for inversion + regeneration, counted (and checked against the solver's formula);
* ``psnr``: decoded reconstruction vs the source image (includes the VAE's own loss);
* ``psnr_vs_vae``: vs the VAE round trip decode(encode(x)), i.e. the inversion error alone;
* ``latent_rmse``: RMS difference of the latent tokens.

Prints a markdown table, writes JSON (``--out``) and a PSNR-vs-NFE plot (PNG next to it, needs
matplotlib: ``pip install -e .[bench]``).
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
from editflow.models.base import Cond
from editflow.solvers import get_solver, inversion_times
from editflow.train.data import HELD_OUT_NAMESPACE, scene_rng

SOLVERS = ["euler", "nudged_euler", "rf_solver", "fireflow", "dpmpp_2m", "dpmpp_2m_explicit", "uni_inv", "fixed_point"]


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """The world oracle's PSNR, capped at 100 dB for identical images (so means stay finite)."""
    return min(world.psnr(a, b), 100.0)


@torch.no_grad()
def scenes(model, n: int, size: int, seed: int):
    images, captions = [], []
    for i in range(n):
        version = trained_world_version(model.name)
        scene = world.sample_scene(scene_rng(HELD_OUT_NAMESPACE, seed + 3, i), version=version,
                                   split=world.held_out_split(version))
        images.append(world.render(scene, size))
        captions.append(world.caption(scene))
    x = torch.cat([to_tensor(Image.fromarray(im)) for im in images])
    return images, captions, model.encode_image(x)


@torch.no_grad()
def measure(model, solver_name: str, steps: int, images, captions, x0, size: int, guidance: float) -> dict:
    grid = model.grid(size, size)
    cond = Cond.cat([model.encode_prompt(c) for c in captions])
    solver = get_solver(solver_name)
    velocity = lambda z, t: model.velocity(z, t, cond, grid, guidance=guidance)  # noqa: E731
    ts = model.schedule(steps, grid)
    before = model.counter.total.copy()
    start = time.perf_counter()
    rec = solver(velocity, solver(velocity, x0, inversion_times(ts)), ts)
    seconds = time.perf_counter() - start
    calls = (model.counter.total - before).calls
    expected = solver.nfe(steps, True, True) + solver.nfe(steps, False, True)
    assert calls == expected, (solver_name, steps, calls, expected)
    out = model.decode(rec, grid)
    vae = model.decode(x0, grid)
    rows = []
    for i, image in enumerate(images):
        a = np.asarray(to_pil(out[i : i + 1]))
        rows.append((psnr(a, image), psnr(a, np.asarray(to_pil(vae[i : i + 1])))))
    return {
        "solver": solver_name, "steps": steps, "nfe": calls,
        "psnr": float(np.mean([r[0] for r in rows])), "psnr_vs_vae": float(np.mean([r[1] for r in rows])),
        "latent_rmse": float((rec - x0).pow(2).mean().sqrt()), "seconds": seconds,
    }


def table(rows: list[dict]) -> str:
    lines = ["| solver | steps | NFE | PSNR vs source (dB) | PSNR vs VAE (dB) | latent RMSE |",
             "| --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['solver']} | {r['steps']} | {r['nfe']} | {r['psnr']:.2f} | {r['psnr_vs_vae']:.2f} "
                     f"| {r['latent_rmse']:.4f} |")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path, title: str) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is missing, so no plot: pip install -e .[bench]")
        return False
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for name in dict.fromkeys(r["solver"] for r in rows):
        mine = [r for r in rows if r["solver"] == name]
        nfe = [r["nfe"] for r in mine]
        axes[0].plot(nfe, [r["psnr_vs_vae"] for r in mine], marker="o", label=name)
        axes[1].plot(nfe, [r["latent_rmse"] for r in mine], marker="o", label=name)
    axes[0].set_ylabel("PSNR vs VAE round trip (dB)")
    axes[1].set_ylabel("latent RMSE")
    axes[1].set_yscale("log")
    for ax in axes:
        ax.set_xscale("log")
        ax.set_xlabel("NFE per reconstruction (inversion + regeneration)")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend()
    fig.suptitle(title)
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=120)
    tmp.replace(path)
    plt.close(fig)
    return True


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="shapes")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--n", type=int, default=32, help="held-out scenes")
    ap.add_argument("--steps", default="2,4,8,16,28")
    ap.add_argument("--solvers", default=",".join(SOLVERS))
    ap.add_argument("--guidance", type=float, default=None, help="guidance of both passes (model default)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="JSON path; the plot goes next to it as .png")
    ap.add_argument("--compare", default=None, help="an earlier JSON: print PSNR differences")
    args = ap.parse_args()

    torch.set_grad_enabled(False)
    model = editflow.load_model(args.model)
    images, captions, x0 = scenes(model, args.n, args.size, args.seed)
    rows = []
    start = time.perf_counter()
    for name in args.solvers.split(","):
        for steps in [int(s) for s in args.steps.split(",")]:
            rows.append(measure(model, name, steps, images, captions, x0, args.size, args.guidance))
            print(f"{name:>18} {steps:>3} steps  NFE {rows[-1]['nfe']:>4}  {rows[-1]['psnr_vs_vae']:.2f} dB", flush=True)
    report = {"model": args.model, "size": args.size, "n": args.n, "seed": args.seed,
              "device": str(model.device), "seconds": time.perf_counter() - start, "rows": rows}
    print(table(rows))
    if args.compare:
        old = {(r["solver"], r["steps"]): r for r in json.loads(Path(args.compare).read_text())["rows"]}
        for r in rows:
            if (r["solver"], r["steps"]) in old:
                o = old[(r["solver"], r["steps"])]
                print(f"{r['solver']} {r['steps']}: {o['psnr_vs_vae']:.2f} -> {r['psnr_vs_vae']:.2f} dB "
                      f"({r['psnr_vs_vae'] - o['psnr_vs_vae']:+.2f})")
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps(report, indent=1))
        tmp.replace(out)
        plot(rows, out.with_suffix(".png"), f"Inversion accuracy on {args.model} ({args.n} scenes)")


if __name__ == "__main__":
    main()
