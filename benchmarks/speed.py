"""Speed of every method against the bare transformer, measured in one run.

    # CPU, FLUX.1-dev's architecture with random weights, shrunk (1 double + 2 single blocks, 4 heads)
    python benchmarks/speed.py --arch flux-dev --random-weights --layers 1,2 --heads 4 --sizes 256,512 \\
        --dtype float32 --out benchmarks/results/speed-cpu.json
    # a GPU, full architecture (or --model flux-dev with real weights), then compare two runs
    python benchmarks/speed.py --arch flux-dev --random-weights --sizes 512,1024 --out gpu.json
    python benchmarks/speed.py ... --compare gpu.json

Per method and size: NFE (calls, rows), seconds of the method's loop (latents in, latents out) and
of the VAE (encode + decode, reported apart: the random-weight VAE is editflow's tiny one), seconds
per call, the overhead ratio = loop seconds / (sum over the loop's calls of a bare transformer call
with the same number of rows, timed in this run: what the loop adds to the model's own time),
peak memory (CUDA: allocated by torch; CPU: the process's high-water mark) and the feature
store's peak bytes. With a shrunk architecture the store is also scaled to FLUX.1-dev (stored
layers x width x bf16; stored tensors are per token, so sizes carry over). ``re-edit`` rows time
a second edit of the same image with a new target prompt through an ``editflow.InversionCache``.
KV-Edit runs on a 25% mask and on the full image (its query cost follows the mask); its calls
see only the masked tokens, so it has no overhead ratio. ``xK targets`` rows (``--targets K``,
default 4) time K target prompts of one image edited together, as ``editflow batch`` and
``editflow.edit_many`` do (FlowEdit: one pass whose calls share the source rows; methods with a
cached inversion: one inversion, then K editing passes), against K separate edits timed in the
same run: ``vs_separate`` = together / separate. Median of ``--repeats`` runs.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import time
from pathlib import Path

import torch

import editflow
from editflow.methods import METHODS, EditRequest, get_method
from editflow.cli import attention_backend
from editflow.methods.cache import InversionCache
from editflow.methods.rf_edit import shared_of

FULL_METHODS = ["flowedit", "ode_inversion", "rf_inversion", "rf_edit", "fireflow", "dit4edit", "stable_flow",
                "personalize_anything", "kv_edit", "uniedit", "dnaedit", "flowalign", "ftedit"]
FLUX_DEV_LAYERS = {"double": 19, "single": 38, "width": 24 * 128}


def build_model(args):
    if args.model:
        return editflow.load_model(args.model, dtype=args.dtype, device=args.device)
    from editflow.models.random import build_random_flux

    double, single = (int(x) for x in args.layers.split(",")) if args.layers else (None, None)
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[args.dtype or "bfloat16"]
    pipe = build_random_flux(args.arch, double=double, single=single, heads=args.heads, dtype=dtype)
    pipe.to(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    return editflow.wrap_pipeline(pipe, name=f"{args.arch}-random" + (f"-{args.layers}-h{args.heads}" if args.layers else ""))


def sync(model):
    if model.device.type == "cuda":
        torch.cuda.synchronize(model.device)


def bare_seconds(model, grid, rows: int, repeats: int) -> float:
    """Median seconds of one transformer call on ``rows`` rows (random latents, a 512-token prompt)."""
    z = torch.randn(rows, grid.num_tokens, 64, generator=torch.Generator().manual_seed(0)).to(model.device)
    cond = model.encode_prompt("a bare call").expand(rows)
    model.velocity(z, 0.5, cond, grid)
    times = []
    for _ in range(repeats):
        sync(model)
        start = time.perf_counter()
        model.velocity(z, 0.5, cond, grid)
        sync(model)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def shrunk_params(model, name: str, steps: int | None) -> dict:
    """Overrides that let ``name`` run with ``steps`` (None: the paper's) on a possibly shrunk model."""
    kw = {}
    if steps:  # fewer steps: keep the step counts that must fit inside the schedule
        kw["steps"] = steps
        defaults = get_method(name).params.for_family(model.family)
        for field, limit in (("inject", steps), ("skip", steps - 1)):
            if hasattr(defaults, field):
                kw[field] = min(getattr(defaults, field), limit)
    if name == "stable_flow" and not model.vital_layers and len(model.attention_layers()) != 57:
        kw["layers"] = model.attention_layers()[0]  # a shrunk model has no vital-layer list
    return kw


def method_params(model, name: str, args) -> dict:
    kw = shrunk_params(model, name, args.steps)
    if name in ("rf_edit", "kv_edit", "fireflow") and args.offload:
        kw["offload"] = True
    return kw


def timed(model, call) -> tuple[float, list[int]]:
    """Seconds of ``call()`` (synchronised) and the rows of each model call it made."""
    rows = []
    model.counter.listeners.append(rows.append)
    try:
        sync(model)
        start = time.perf_counter()
        call()
        sync(model)
        return time.perf_counter() - start, rows
    finally:
        model.counter.listeners.remove(rows.append)


def run_once(model, m, req_args, p, seed, cache=None):
    req = EditRequest(*req_args, cache=cache)
    seconds, rows = timed(model, lambda: m.run(model, req, p, torch.Generator().manual_seed(seed)))
    return seconds, rows, req.stats


TARGETS = ["a blue circle on a gray background", "a green circle on a gray background",
           "a red square on a gray background", "a yellow triangle on a gray background"]
CACHED = ("ode_inversion", "rf_inversion", "uniedit", "dnaedit", "ftedit", "rf_edit", "fireflow", "dit4edit", "stable_flow")


def with_target(req_args, target: str):
    """``req_args`` (latents, grid, source, target, mask) with another target prompt."""
    return (*req_args[:3], target, req_args[4])


def run_targets(model, m, req_args, p, seed, targets: list[str]):
    """Seconds and call rows of ``targets`` edited together: ``m.targets`` in one pass, or one
    ``m.run`` per target through one cache (the inversion once)."""
    if m.targets is not None:
        return timed(model, lambda: m.targets(model, EditRequest(*req_args), targets, p,
                                              torch.Generator().manual_seed(seed)))
    cache, seconds, rows = InversionCache(size=1), 0.0, []
    for target in targets:
        s, r, _ = run_once(model, m, with_target(req_args, target), p, seed, cache)
        seconds, rows = seconds + s, rows + r
    return seconds, rows


def targets_row(model, name: str, size: int, req_args, p, k: int, repeats: int, vae: float) -> dict:
    """The ``x{k} targets`` row: together vs ``k`` separate edits, both timed here."""
    m = get_method(name)
    targets = (TARGETS * k)[:k]
    run_targets(model, m, req_args, p, 0, targets)  # warm-up
    together = [run_targets(model, m, req_args, p, 0, targets) for _ in range(repeats)]
    separate = [sum(run_once(model, m, with_target(req_args, t), p, 0)[0] for t in targets) for _ in range(repeats)]
    seconds, rows = statistics.median(r[0] for r in together), together[0][1]
    alone = statistics.median(separate)
    return {"method": f"{name} x{k} targets", "size": size, "calls": len(rows), "rows": sum(rows), "seconds": seconds,
            "vae_seconds": vae, "seconds_per_call": seconds / max(1, len(rows)), "overhead": None,
            "peak_memory_bytes": None, "store_bytes": None, "store_bytes_flux_dev": None,
            "separate_seconds": alone, "vs_separate": seconds / alone}


def store_at_flux_dev(model, name: str, p, measured: int | None, dtype_bytes: int) -> int | None:
    """The measured store scaled to FLUX.1-dev: x (its stored layers / ours) x (3072 / our width) x bf16."""
    if not measured:
        return None
    names = model.attention_layers()
    flux_dev = [f"double.{i}" for i in range(FLUX_DEV_LAYERS["double"])]
    flux_dev += [f"single.{j}" for j in range(FLUX_DEV_LAYERS["single"])]
    if name == "kv_edit":
        ours, full = len(names), len(flux_dev)
    else:  # RF-Edit / FireFlow: the single blocks they share
        ours, full = len(shared_of(names, p.share_from)), len(shared_of(flux_dev, p.share_from))
    width = model.transformer.config.num_attention_heads * model.transformer.config.attention_head_dim
    return int(measured * full / max(ours, 1) * FLUX_DEV_LAYERS["width"] / width * 2 / dtype_bytes)


def measure(model, name: str, size: int, args, bare: dict) -> list[dict]:
    m = get_method(name)
    grid = model.grid(size, size)
    image = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(size)) * 2 - 1
    sync(model)
    start = time.perf_counter()
    x = model.encode_image(image)
    model.decode(x, grid)
    sync(model)
    vae = time.perf_counter() - start
    masks = {"": None}
    if m.params.NEEDS_MASK:
        quarter = torch.zeros(grid.h, grid.w, dtype=torch.bool)
        quarter[: grid.h // 2, : grid.w // 2] = True
        masks = {" (25% mask)": quarter.reshape(1, -1), " (full image)": torch.ones(1, grid.num_tokens, dtype=torch.bool)}
    out = []
    for label, mask in masks.items():
        p = m.params.for_family(model.family, **method_params(model, name, args))
        req_args = (x, grid, "a red circle on a gray background", "a blue circle on a gray background", mask)
        run_once(model, m, req_args, p, 0)  # warm-up (and compilation)
        if model.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(model.device)
        runs = [run_once(model, m, req_args, p, r) for r in range(args.repeats)]
        seconds = statistics.median(r[0] for r in runs)
        rows, stats = runs[0][1], runs[0][2]
        for r in set(rows) - set(bare):
            bare[r] = bare_seconds(model, grid, r, args.repeats + 2)
        expected = sum(bare[r] for r in rows)
        row = {"method": name + label, "size": size, "calls": len(rows), "rows": sum(rows),
               "seconds": seconds, "vae_seconds": vae, "seconds_per_call": seconds / max(1, len(rows)),
               "overhead": None if name == "kv_edit" else seconds / expected,
               "peak_memory_bytes": int(torch.cuda.max_memory_allocated(model.device)) if model.device.type == "cuda"
               else int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024,
               "store_bytes": stats.get("feature_store_peak_bytes")}
        row["store_bytes_flux_dev"] = store_at_flux_dev(model, name, p, row["store_bytes"], x.new_zeros(0, dtype=model.dtype).element_size())
        out.append(row)
        if name in ("ode_inversion", "rf_inversion", "uniedit", "dnaedit", "ftedit") and not label:
            cache = InversionCache()
            run_once(model, m, req_args, p, 0, cache)
            target = (x, grid, req_args[2], "a green circle on a gray background", None)
            reruns = [run_once(model, m, target, p, 0, cache) for _ in range(args.repeats)]
            again, again_rows = statistics.median(r[0] for r in reruns), reruns[0][1]
            out.append({"method": name + " re-edit", "size": size, "calls": len(again_rows), "rows": sum(again_rows),
                        "seconds": again, "vae_seconds": vae, "seconds_per_call": again / max(1, len(again_rows)),
                        "overhead": None, "peak_memory_bytes": None, "store_bytes": None,
                        "store_bytes_flux_dev": None, "vs_first_edit": again / seconds})
        if args.targets > 1 and not label and (m.targets is not None or name in CACHED):
            out.append(targets_row(model, name, size, req_args, p, args.targets, args.repeats, vae))
    return out


def table(results: list[dict]) -> str:
    mib = lambda b: "" if b is None else f"{b / 2**20:.1f}"  # noqa: E731
    lines = ["| method | size | calls (rows) | s / edit (loop) | VAE s | s / call | overhead | peak MiB | store MiB | store MiB at FLUX.1-dev |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in results:
        over = f"{r['overhead']:.3f}" if r["overhead"] is not None else (
            f"x{r['vs_first_edit']:.2f} of the first edit" if "vs_first_edit" in r else
            f"x{r['vs_separate']:.2f} of separate edits" if "vs_separate" in r else "n/a")
        lines.append(f"| {r['method']} | {r['size']} | {r['calls']} ({r['rows']}) | {r['seconds']:.3f} | "
                     f"{r['vae_seconds']:.3f} | {r['seconds_per_call']:.4f} | {over} | {mib(r['peak_memory_bytes'])} | "
                     f"{mib(r['store_bytes'])} | {mib(r['store_bytes_flux_dev'])} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="real weights: a zoo name, folder or hub id")
    ap.add_argument("--arch", default="flux-dev")
    ap.add_argument("--random-weights", action="store_true", help="the architecture with random weights (default)")
    ap.add_argument("--layers", default=None, help="double,single block counts (shrink for CPU runs)")
    ap.add_argument("--heads", type=int, default=None, help="attention heads of 128 (shrink the width)")
    ap.add_argument("--sizes", default="512,1024")
    ap.add_argument("--methods", default=",".join(FULL_METHODS))
    ap.add_argument("--steps", type=int, default=None, help="override every method's steps")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--targets", type=int, default=4, help="the xK targets rows' K (0 or 1: none)")
    ap.add_argument("--device", default=None)
    ap.add_argument("--dtype", default=None, help="float32, bfloat16 (default for random weights), float16")
    ap.add_argument("--offload", action="store_true", help="feature stores in CPU memory (rf_edit, fireflow, kv_edit)")
    ap.add_argument("--compile", action="store_true", help="torch.compile the transformer")
    ap.add_argument("--attention", default=None, choices=["flash", "efficient", "math", "cudnn"],
                    help="restrict scaled-dot-product attention to one backend")
    ap.add_argument("--out", default=None)
    ap.add_argument("--compare", default=None, help="a JSON of an earlier run: print its seconds / ours")
    args = ap.parse_args()

    torch.set_grad_enabled(False)
    model = build_model(args)
    if args.compile:
        model.denoiser.compile()
    backend = attention_backend(args.attention)
    results = []
    with backend:
        for size in (int(s) for s in args.sizes.split(",")):
            bare: dict[int, float] = {}
            for name in args.methods.split(","):
                if name not in METHODS:
                    raise SystemExit(f"unknown method {name!r}")
                for row in measure(model, name, size, args, bare):
                    results.append(row)
                    print(table([row]).splitlines()[-1], flush=True)
    report = table(results)
    print("\n" + report)
    info = {"model": model.name, "device": str(model.device), "dtype": str(model.dtype),
            "platform": platform.platform(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "gpu": torch.cuda.get_device_name(model.device) if model.device.type == "cuda" else None,
            "args": vars(args)}
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"info": info, "results": results}, indent=1))
        out.with_suffix(".md").write_text(f"# speed: {model.name} on {info['gpu'] or info['device']}\n\n{report}\n")
    if args.compare:
        old = {(r["method"], r["size"]): r for r in json.loads(Path(args.compare).read_text())["results"]}
        print("\n| method | size | old s | new s | speed-up |\n| --- | --- | --- | --- | --- |")
        for r in results:
            o = old.get((r["method"], r["size"]))
            if o:
                print(f"| {r['method']} | {r['size']} | {o['seconds']:.3f} | {r['seconds']:.3f} | x{o['seconds'] / r['seconds']:.2f} |")


if __name__ == "__main__":
    main()
