"""Speed of each editing method on one model: seconds per edit, per model call, and the ratio of
each method's time to FlowEdit's, measured in one run. Writes JSON that a later run can compare.

    python benchmarks/edit_speed.py --model tiny-flux --size 256 --repeats 3 --out bench.json
    python benchmarks/edit_speed.py --model tiny-flux --compare bench.json    # prints speed-ups
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
from PIL import Image

import editflow


def measure(model, method: str, image: Image.Image, repeats: int, steps: int | None) -> dict:
    kwargs = {"steps": steps} if steps else {}
    editflow.edit(model, image, "a red circle", "a blue circle", method=method, seed=0, **kwargs)  # warm-up
    times, result = [], None
    for r in range(repeats):
        start = time.perf_counter()
        result = editflow.edit(model, image, "a red circle", "a blue circle", method=method, seed=r, **kwargs)
        times.append(time.perf_counter() - start)
    sec = statistics.median(times)
    return {"seconds": sec, "calls": result.nfe.calls, "rows": result.nfe.rows,
            "seconds_per_call": sec / max(1, result.nfe.calls), "params": result.params}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny-flux")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--methods", default=",".join(editflow.METHODS))
    ap.add_argument("--out", default=None, help="write results as JSON here")
    ap.add_argument("--compare", default=None, help="a JSON from an earlier run to compare against")
    args = ap.parse_args()

    model = editflow.load_model(args.model)
    image = Image.new("RGB", (args.size, args.size), (128, 128, 128))
    rows = {m: measure(model, m, image, args.repeats, args.steps) for m in args.methods.split(",")}
    base = rows.get("flowedit", next(iter(rows.values())))["seconds"]
    print(f"{'method':<16}{'s/edit':>10}{'calls':>7}{'rows':>7}{'ms/call':>10}{'vs flowedit':>13}")
    for name, r in rows.items():
        print(f"{name:<16}{r['seconds']:>10.3f}{r['calls']:>7}{r['rows']:>7}{1000 * r['seconds_per_call']:>10.2f}"
              f"{r['seconds'] / base:>12.2f}x")
    report = {"model": args.model, "size": args.size, "device": str(model.device), "torch": torch.__version__,
              "machine": platform.processor() or platform.machine(), "methods": rows}
    if args.compare:
        old = json.loads(Path(args.compare).read_text())["methods"]
        for name in rows.keys() & old.keys():
            print(f"{name}: {old[name]['seconds'] / rows[name]['seconds']:.2f}x the speed of {args.compare}")
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
