"""The memory plan against the measured peak of whole edits, in one run.

    # CPU, FLUX.1-dev's architecture with random weights, shrunk (1 double + 2 single blocks, 4 heads)
    python benchmarks/memory.py --layers 1,2 --heads 4 --sizes 256,512,1024 --dtypes float32,bfloat16 \\
        --out benchmarks/results/memory-cpu.json
    # a GPU: the full architecture
    python benchmarks/memory.py --device cuda --sizes 512,1024 --dtypes bfloat16 --out gpu.json

Each row is one ``editflow.edit`` (prompts encoded, image encoded, the method's loop, decoding) of a
random image with a 25% mask where the method takes one. The measured peak is torch's own count of
the bytes of live tensors: on CUDA ``torch.cuda.max_memory_allocated``; on the CPU the peak total of
``torch.distributed._tools.MemTracker`` (parameters, buffers and every tensor the edit allocates),
the same quantity, since the CPU allocator keeps no statistics. The prediction is
``editflow.memory.plan``'s ``gpu`` placement (everything on one device) for the same model, method,
size and mask. "working" is the peak less the weights: the part the formulas predict beyond
counting parameters.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import editflow
from editflow import memory
from editflow.methods import get_method

sys.path.insert(0, str(Path(__file__).parent))
from speed import FULL_METHODS, build_model, shrunk_params  # noqa: E402


def build(args, dtype_name: str):
    """speed.py's random-weight FLUX.1-dev (shrunk by ``--layers`` / ``--heads``) in ``dtype_name``."""
    return build_model(argparse.Namespace(model=None, arch="flux-dev", layers=args.layers, heads=args.heads,
                                          dtype=dtype_name, device=args.device))


def measured_peak(model, run) -> int:
    """Peak bytes of live tensors while ``run()`` runs, weights included."""
    if model.device.type == "cuda":
        torch.cuda.synchronize(model.device)
        torch.cuda.reset_peak_memory_stats(model.device)
        run()
        torch.cuda.synchronize(model.device)
        return int(torch.cuda.max_memory_allocated(model.device))
    weights = sum(memory._module_bytes(part) for part in (model.pipe.transformer, model.pipe.vae,
                                                          model.pipe.text_encoder, model.pipe.text_encoder_2))
    with memory.TensorBytes() as counted:
        run()
    return weights + counted.peak


def measure(model, parts, name: str, size: int, steps: int | None) -> dict:
    m = get_method(name)
    kw = shrunk_params(model, name, steps)
    rng = np.random.default_rng(size)
    image = Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
    mask = None
    if m.params.NEEDS_MASK or name == "personalize_anything":
        quarter = np.zeros((size, size), dtype=np.uint8)
        quarter[: size // 2, : size // 2] = 255
        mask = Image.fromarray(quarter)
    predicted = memory.plan(parts, name, size, size, kw, mask_fraction=0.25)
    model._prompt_cache.clear()  # the edit encodes its prompts, as a first edit does
    start = time.perf_counter()
    peak = measured_peak(model, lambda: editflow.edit(model, image, "a red circle on a gray background",
                                                      "a blue circle on a gray background", method=name, mask=mask,
                                                      **kw))
    seconds = time.perf_counter() - start
    weights = sum(predicted.weights.values())
    pred = predicted.peak_all_on_device
    return {"method": name, "size": size, "dtype": str(model.dtype).replace("torch.", ""), "rows": predicted.rows,
            "measured_bytes": peak, "predicted_bytes": pred, "weights_bytes": weights,
            "store_bytes": predicted.store, "ratio": pred / peak,
            "working_ratio": (pred - weights) / max(peak - weights, 1), "seconds": seconds}


def table(rows: list[dict]) -> str:
    mib = lambda b: f"{b / 2**20:.1f}"  # noqa: E731
    lines = ["| method | size | dtype | rows | measured MiB | predicted MiB | predicted / measured | "
             "working measured MiB | working predicted MiB | working ratio |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        w = r["weights_bytes"]
        lines.append(f"| {r['method']} | {r['size']} | {r['dtype']} | {r['rows']} | {mib(r['measured_bytes'])} | "
                     f"{mib(r['predicted_bytes'])} | {r['ratio']:.3f} | {mib(r['measured_bytes'] - w)} | "
                     f"{mib(r['predicted_bytes'] - w)} | {r['working_ratio']:.3f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", default=None, help="double,single block counts (shrink for CPU runs)")
    ap.add_argument("--heads", type=int, default=None, help="attention heads of 128 (shrink the width)")
    ap.add_argument("--sizes", default="256,512")
    ap.add_argument("--dtypes", default="float32")
    ap.add_argument("--methods", default=",".join(FULL_METHODS))
    ap.add_argument("--steps", type=int, default=None, help="override every method's steps (default: the paper's)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    torch.set_grad_enabled(False)
    info = {"device": args.device, "platform": platform.platform(), "torch": torch.__version__,
            "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else None, "args": vars(args),
            "command": "python benchmarks/memory.py " + " ".join(sys.argv[1:])}
    results = []
    for dtype_name in args.dtypes.split(","):
        model = build(args, dtype_name)
        parts = memory.parts_of_model(model)
        for size in (int(s) for s in args.sizes.split(",")):
            for name in args.methods.split(","):
                row = measure(model, parts, name, size, args.steps)
                results.append(row)
                print(table([row]).splitlines()[-1], flush=True)
                if args.out:  # after every row: a long run stopped early keeps what it measured
                    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
                    Path(args.out).write_text(json.dumps({"info": info, "results": results}, indent=1))
        del model
    report = table(results)
    ratios = [r["ratio"] for r in results]
    summary = (f"predicted / measured peak: min {min(ratios):.3f}, max {max(ratios):.3f} over {len(results)} edits; "
               f"working memory: min {min(r['working_ratio'] for r in results):.3f}, "
               f"max {max(r['working_ratio'] for r in results):.3f}")
    print("\n" + report + "\n\n" + summary)
    if args.out:
        out = Path(args.out)
        out.with_suffix(".md").write_text(f"# memory plan vs measured peak ({info['gpu'] or args.device})\n\n"
                                          f"`{info['command']}`\n\n{report}\n\n{summary}\n")


if __name__ == "__main__":
    main()
