"""LPIPS (Zhang et al., "The Unreasonable Effectiveness of Deep Features as a Perceptual Metric",
CVPR 2018), version 0.1, with the AlexNet or the SqueezeNet 1.1 backbone, written in plain torch
(the ``lpips`` package needs torchvision, which has no CPU build here).

    x -> (x - shift) / scale                       shift (-.030, -.088, -.188), scale (.458, .448, .450)
    f_l = backbone features at the taps            alex:    relu1..relu5, channels 64, 192, 384, 256, 256
                                                   squeeze: relu1, fire2..fire8 ends (7 taps),
                                                            channels 64, 128, 256, 384, 384, 512, 512
    f_l <- f_l / (||f_l||_channels + 1e-10)
    d   = sum_l mean_{h,w} w_l . (f_l(x) - f_l(y))^2   (w_l: 1x1 conv, no bias)

Inputs in [-1, 1] (uint8 images are mapped). With ``mask`` the images are multiplied by it
first (PIE-Bench's background LPIPS, which is torchmetrics' ``LearnedPerceptualImagePatchSimilarity(
net_type='squeeze')``: use ``net="squeeze"``).
Weights: a safetensors file with the parameter names of :class:`LPIPSNet` (``features.*`` =
torchvision's ``alexnet().features`` / ``squeezenet1_1().features`` indices, ``lins.{l}.weight``);
``scripts/convert_lpips.py`` converts the official ``alex.pth`` / ``squeeze.pth`` plus
torchvision's ImageNet weights. A random-weight network (``LPIPS()``) is only for tests.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from ...errors import EditflowError
from .base import batch, chunks, masks, to_device

SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)
CHANNELS = (64, 192, 384, 256, 256)
SLICES = ((0, 2), (2, 5), (5, 8), (8, 10), (10, 12))  # features[a:b] ends at relu1..relu5
SQUEEZE_CHANNELS = (64, 128, 256, 384, 384, 512, 512)
SQUEEZE_SLICES = ((0, 2), (2, 5), (5, 8), (8, 10), (10, 11), (11, 12), (12, 13))  # lpips' slice1..slice7
NETS = ("alex", "squeeze")


def alexnet_features() -> nn.Sequential:
    """torchvision's ``alexnet().features`` layout (same indices, so its weights load by name)."""
    return nn.Sequential(
        nn.Conv2d(3, 64, 11, stride=4, padding=2), nn.ReLU(inplace=False), nn.MaxPool2d(3, 2),
        nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(inplace=False), nn.MaxPool2d(3, 2),
        nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(inplace=False),
        nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(inplace=False),
        nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(inplace=False),
        nn.MaxPool2d(3, 2),
    )


class Fire(nn.Module):
    """SqueezeNet's fire module (torchvision's parameter names): a 1x1 squeeze, then 1x1 and 3x3
    expands concatenated, each followed by a ReLU."""

    def __init__(self, inplanes: int, squeeze: int, expand1x1: int, expand3x3: int):
        super().__init__()
        self.squeeze = nn.Conv2d(inplanes, squeeze, 1)
        self.expand1x1 = nn.Conv2d(squeeze, expand1x1, 1)
        self.expand3x3 = nn.Conv2d(squeeze, expand3x3, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.squeeze(x))
        return torch.cat([torch.relu(self.expand1x1(x)), torch.relu(self.expand3x3(x))], 1)


def squeezenet_features() -> nn.Sequential:
    """torchvision's ``squeezenet1_1().features`` layout (same indices, so its weights load by name)."""
    return nn.Sequential(
        nn.Conv2d(3, 64, 3, stride=2), nn.ReLU(inplace=False), nn.MaxPool2d(3, 2, ceil_mode=True),
        Fire(64, 16, 64, 64), Fire(128, 16, 64, 64), nn.MaxPool2d(3, 2, ceil_mode=True),
        Fire(128, 32, 128, 128), Fire(256, 32, 128, 128), nn.MaxPool2d(3, 2, ceil_mode=True),
        Fire(256, 48, 192, 192), Fire(384, 48, 192, 192), Fire(384, 64, 256, 256), Fire(512, 64, 256, 256),
    )


BACKBONES = {"alex": (alexnet_features, SLICES, CHANNELS), "squeeze": (squeezenet_features, SQUEEZE_SLICES, SQUEEZE_CHANNELS)}


class LPIPSNet(nn.Module):
    """The network: ``forward(x, y)`` gives ``[B]`` distances of ``[B, 3, H, W]`` inputs in [-1, 1];
    ``net`` is ``"alex"`` (the lpips package's default) or ``"squeeze"`` (PIE-Bench's)."""

    def __init__(self, net: str = "alex"):
        super().__init__()
        if net not in BACKBONES:
            raise EditflowError(f"LPIPS backbone {net!r} is not one: use {' or '.join(NETS)}")
        build, self.slices, channels = BACKBONES[net]
        self.net = net
        self.features = build()
        self.lins = nn.ModuleList([nn.Conv2d(c, 1, 1, bias=False) for c in channels])
        self.register_buffer("shift", torch.tensor(SHIFT)[None, :, None, None], persistent=False)
        self.register_buffer("scale", torch.tensor(SCALE)[None, :, None, None], persistent=False)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        fx, fy = (x - self.shift) / self.scale, (y - self.shift) / self.scale
        total = torch.zeros(x.shape[0], device=x.device)
        for (a, b), lin in zip(self.slices, self.lins):
            fx, fy = self.features[a:b](fx), self.features[a:b](fy)
            nx = fx / (fx.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            ny = fy / (fy.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            total = total + lin((nx - ny) ** 2).mean(dim=(1, 2, 3))
        return total


class LPIPS:
    """Batched ``__call__(a, b, mask=None) -> list[float]`` over images."""

    name = "lpips"

    def __init__(self, net: LPIPSNet | None = None, batch_size: int = 16):
        self.net = (net or LPIPSNet()).eval()
        self.batch_size = batch_size

    @classmethod
    def from_pretrained(cls, path: str, device=None, net: str = "alex", option: str = "lpips", **kwargs) -> "LPIPS":
        """Load LPIPS weights of backbone ``net`` from a safetensors file, or ``lpips_{net}.safetensors``
        in a folder (see the module docstring); ``option`` names the ``--metric-model`` key in messages."""
        from safetensors.torch import load_file

        file = Path(path).expanduser()
        if file.is_dir():
            file = file / f"lpips_{net}.safetensors"
        if not file.exists():
            raise EditflowError(
                f"LPIPS weights not found at {file}: convert the official {net} weights with "
                f"scripts/convert_lpips.py --net {net} and pass the .safetensors file (--metric-model {option}=PATH)"
            )
        model = LPIPSNet(net)
        missing, unexpected = model.load_state_dict(load_file(str(file)), strict=False)
        if missing or unexpected:
            raise EditflowError(f"{file} is not an LPIPS-{net} state dict (missing {missing[:3]}, unexpected "
                                f"{unexpected[:3]}): convert it with scripts/convert_lpips.py --net {net}")
        return cls(to_device(model, device), **kwargs)

    @torch.no_grad()
    def __call__(self, a, b, mask=None) -> list[float]:
        xs, ys = batch(a), batch(b)
        if len(xs) != len(ys):
            raise ValueError(f"{len(xs)} images against {len(ys)}")
        ms = masks(mask, len(xs), xs[0].shape[:2])
        device = next(self.net.parameters()).device
        out = []
        for idx in chunks(list(range(len(xs))), self.batch_size):
            tx = torch.stack([_signed(xs[i], ms[i]) for i in idx]).to(device)
            ty = torch.stack([_signed(ys[i], ms[i]) for i in idx]).to(device)
            out += self.net(tx, ty).cpu().tolist()
        return out


def _signed(image: np.ndarray, mask: np.ndarray | None) -> torch.Tensor:
    x = torch.from_numpy(image.astype(np.float32) / 255.0).permute(2, 0, 1)
    if mask is not None:
        x = x * torch.from_numpy(mask.astype(np.float32))
    return x * 2 - 1
