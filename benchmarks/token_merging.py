"""Speed of attention with token merging (editflow.attention.merging) against plain attention.

    python benchmarks/token_merging.py --tokens 1024,4096 --ratios 0.25,0.5 --out benchmarks/results/token_merging.json

Times one joint attention (``--text`` text tokens + image tokens, ``--heads`` x ``--head-dim``)
with merging (matching, merge, attention, unmerge) and without, on random q/k/v, in one process,
and prints the ratios. Defaults mimic FLUX at 512^2 / 1024^2 (1024 / 4096 image tokens, 512 text
tokens, 24 heads of 128) with fewer heads on CPU to keep it short.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from editflow.attention.context import AttentionContext
from editflow.attention.merging import TokenMerging
from editflow.models.base import TokenGrid


def attend(q, k, v, mask=None):
    return torch.nn.functional.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                                            attn_mask=mask).transpose(1, 2)


def timed(fn, repeats: int) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", default="1024,4096")
    ap.add_argument("--ratios", default="0.25,0.5")
    ap.add_argument("--text", type=int, default=512)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    rows = []
    with torch.no_grad():
        for n_img in [int(t) for t in args.tokens.split(",")]:
            side = int(n_img ** 0.5)
            ctx = AttentionContext("edit", None, 0.5, "single.0", args.text, TokenGrid(side * 16, side * 16, side, side))
            q, k, v = (torch.randn(1, args.text + n_img, args.heads, args.head_dim, device=device) for _ in range(3))
            base = timed(lambda: attend(q, k, v), args.repeats)
            for r in [float(x) for x in args.ratios.split(",")]:
                tm = TokenMerging(r)

                def merged():
                    q2, k2, v2, mask = tm.qkv(ctx, q, k, v, None)
                    return tm.output(ctx, attend(q2, k2, v2, mask))

                t = timed(merged, args.repeats)
                rows.append({"image_tokens": n_img, "ratio": r, "plain_s": base, "merged_s": t, "speedup": base / t})
                print(f"{n_img:>5} image tokens, ratio {r:.2f}: plain {base * 1e3:7.1f} ms, merged {t * 1e3:7.1f} ms, "
                      f"speed-up x{base / t:.2f}", flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps({"device": device, "args": vars(args), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
