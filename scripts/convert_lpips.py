"""Convert LPIPS v0.1 weights (AlexNet or SqueezeNet 1.1 backbone) to the safetensors file
editflow's LPIPS metric loads.

    python scripts/convert_lpips.py --lin alex.pth --backbone alexnet-owt-7be5be79.pth --out lpips_alex.safetensors
    python scripts/convert_lpips.py --net squeeze --lin squeeze.pth --backbone squeezenet1_1-b8a52dc0.pth \\
        --out lpips_squeeze.safetensors       # PIE-Bench's LPIPS (torchmetrics net_type='squeeze')

``--lin``: the official linear-layer weights (richzhang/PerceptualSimilarity, lpips/weights/v0.1/
{alex,squeeze}.pth, also shipped inside torchmetrics; keys ``lin{l}.model.1.weight``).
``--backbone`` (``--alexnet`` is an alias): torchvision's ImageNet weights of that network (keys
``features.{i}...``). Both are read with ``torch.load(weights_only=True)``, which refuses
arbitrary pickled objects.
"""

from __future__ import annotations

import argparse

import torch
from safetensors.torch import save_file

from editflow.bench.metrics.lpips import NETS, LPIPSNet


def convert(lin_path: str, backbone_path: str, net: str = "alex") -> dict[str, torch.Tensor]:
    lin = torch.load(lin_path, map_location="cpu", weights_only=True)
    backbone = torch.load(backbone_path, map_location="cpu", weights_only=True)
    state = {k: v for k, v in backbone.items() if k.startswith("features.")}
    model = LPIPSNet(net)
    for layer in range(len(model.lins)):
        state[f"lins.{layer}.weight"] = lin[f"lin{layer}.model.1.weight"]
    model.load_state_dict(state, strict=True)  # fails loudly on a wrong file
    return {k: v.contiguous() for k, v in model.state_dict().items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--net", choices=NETS, default="alex")
    ap.add_argument("--lin", required=True)
    ap.add_argument("--backbone", "--alexnet", dest="backbone", required=True)
    ap.add_argument("--out", default=None, help="default lpips_{net}.safetensors")
    args = ap.parse_args()
    out = args.out or f"lpips_{args.net}.safetensors"
    save_file(convert(args.lin, args.backbone, args.net), out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
