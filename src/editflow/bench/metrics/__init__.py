"""Edit-quality metrics, each a class with ``from_pretrained(name_or_path)`` and a batched
``__call__`` returning one float per image pair.

| name | class | higher is | checkpoint default (paper) |
| --- | --- | --- | --- |
| clip_t | ClipText (image vs prompt; ``mask`` = edited region) | better | openai/clip-vit-large-patch14 (PIE-Bench) |
| clip_i | ClipImage (source vs edited) | better | same |
| dino | DinoSimilarity (class-token cosine) | better | facebook/dino-vits16 (DreamBooth's DINO) |
| dinov2 | Dinov2Similarity (class-token cosine) | better | facebook/dinov2-base (Stable Flow) |
| structure_distance | StructureDistance (key self-similarity MSE) | worse | facebook/dino-vitb8 (PIE-Bench) |
| lpips | LPIPS (AlexNet v0.1; ``mask`` for a region) | worse | a converted safetensors file |
| dreamsim | DreamSim (needs the dreamsim package) | worse | ensemble |
| psnr, mse, ssim | PSNR, MSE, SSIM (``mask`` for a region) | psnr/ssim better | none |
"""

from .clip import ClipImage, ClipText
from .dino import DinoSimilarity, Dinov2Similarity, StructureDistance
from .dreamsim import DreamSim
from .lpips import LPIPS, LPIPSNet
from .pixels import MSE, PSNR, SSIM

METRICS = {m.name: m for m in (ClipText, ClipImage, DinoSimilarity, Dinov2Similarity, StructureDistance, LPIPS, DreamSim, PSNR, MSE, SSIM)}

__all__ = ["LPIPS", "METRICS", "MSE", "PSNR", "SSIM", "ClipImage", "ClipText", "DinoSimilarity", "Dinov2Similarity", "DreamSim",
           "LPIPSNet", "StructureDistance"]
