"""Convert LPIPS v0.1 AlexNet weights to the safetensors file editflow's LPIPS metric loads.

    python scripts/convert_lpips.py --lin alex.pth --alexnet alexnet-owt-7be5be79.pth --out lpips_alex.safetensors

``--lin``: the official linear-layer weights (richzhang/PerceptualSimilarity, lpips/weights/v0.1/alex.pth;
keys ``lin{l}.model.1.weight``). ``--alexnet``: torchvision's ImageNet AlexNet weights (keys
``features.{i}.weight``). Both are read with ``torch.load(weights_only=True)``, which refuses
arbitrary pickled objects.
"""

from __future__ import annotations

import argparse

import torch
from safetensors.torch import save_file

from editflow.bench.metrics.lpips import LPIPSNet


def convert(lin_path: str, alexnet_path: str) -> dict[str, torch.Tensor]:
    lin = torch.load(lin_path, map_location="cpu", weights_only=True)
    alex = torch.load(alexnet_path, map_location="cpu", weights_only=True)
    state = {k: v for k, v in alex.items() if k.startswith("features.")}
    for layer in range(5):
        state[f"lins.{layer}.weight"] = lin[f"lin{layer}.model.1.weight"]
    net = LPIPSNet()
    net.load_state_dict(state, strict=True)  # fails loudly on a wrong file
    return {k: v.contiguous() for k, v in net.state_dict().items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lin", required=True)
    ap.add_argument("--alexnet", required=True)
    ap.add_argument("--out", default="lpips_alex.safetensors")
    args = ap.parse_args()
    save_file(convert(args.lin, args.alexnet), args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
