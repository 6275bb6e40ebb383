"""DreamSim (Fu, Tamir, Sundaram et al., NeurIPS 2023): human-aligned perceptual distance.

The default model is an ensemble of DINO ViT-B/16 (class token), CLIP ViT-B/16 and OpenCLIP
ViT-B/16 embeddings, each LoRA-tuned; images are resized to 224 (bicubic), features concatenated,
normalised and mean-centred, and ``d = 1 - cos(e_a, e_b)``. editflow calls the ``dreamsim``
package for it (its weights are LoRA adapters over three backbones; re-implementing it would be
a copy). That package needs torchvision, open_clip and timm; where they cannot be installed
(there is no CPU build of torchvision on editflow's build machines) the metric is a one-line error.
"""

from __future__ import annotations

from ...errors import EditflowError
from .base import batch


class DreamSim:
    name = "dreamsim"

    def __init__(self, model, preprocess, device):
        self.model, self.preprocess, self.device = model, preprocess, device

    @classmethod
    def from_pretrained(cls, name_or_path: str = "ensemble", device=None, cache_dir: str | None = None):
        try:
            from dreamsim import dreamsim
        except ImportError:
            raise EditflowError(
                "DreamSim needs the dreamsim package (pip install dreamsim; it requires torchvision, open_clip and "
                "timm): install it or leave dreamsim out of --metrics"
            ) from None
        import torch

        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        kwargs = {"dreamsim_type": name_or_path, "device": device, "pretrained": True}
        if cache_dir:
            kwargs["cache_dir"] = cache_dir
        try:
            model, preprocess = dreamsim(**kwargs)
        except OSError as exc:
            raise EditflowError(f"DreamSim weights are not available offline ({exc}): pass cache_dir=FOLDER "
                                "holding them (--metric-model dreamsim=PATH)") from None
        return cls(model, preprocess, device)

    def __call__(self, a, b) -> list[float]:
        import torch
        from PIL import Image

        xs, ys = batch(a), batch(b)
        out = []
        with torch.no_grad():
            for x, y in zip(xs, ys):
                tx = self.preprocess(Image.fromarray(x)).to(self.device)
                ty = self.preprocess(Image.fromarray(y)).to(self.device)
                out.append(float(self.model(tx, ty)))
        return out
