"""CLIP metrics (Radford et al. 2021) through transformers' ``CLIPModel``.

* :class:`ClipText` (CLIP-T): cosine between the edited image and the target prompt;
* :class:`ClipImage` (CLIP-I): cosine between the source and the edited image;
* ``ClipText(...)(images, prompts, mask=...)``: CLIP-T of the masked region only (the image
  multiplied by the mask, as PIE-Bench's "edited" CLIP similarity).

Scale: raw cosine by default (FlowEdit-style tables: CLIP-T ~0.2-0.35); ``scale=100,
clip_negative=True`` gives torchmetrics' CLIPScore convention used by PIE-Bench
(``max(100 cos, 0)``). Checkpoints: PIE-Bench (cure-lab/PnPInversion evaluation code) uses
torchmetrics' CLIPScore with ``openai/clip-vit-large-patch14``, the default here; FlowEdit released
no evaluation code (third-party reproductions use ViT-B/32); DreamBooth-style CLIP-I/CLIP-T name
no variant. PIE-Bench's "edited" score multiplies the image by the edit mask and scores the whole
frame, which ``mask=`` reproduces (strip its ``[ ]`` markers from prompts first). Preprocessing follows CLIP's: shortest side to the model's size (bicubic), centre crop,
CLIP mean/std (read from the checkpoint's ``preprocessor_config.json`` when present).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .base import batch, chunks, masks, resolve_checkpoint, to_device

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
DEFAULT_CLIP = "openai/clip-vit-large-patch14"


def preprocess(images: list[np.ndarray], size: int, mean, std) -> torch.Tensor:
    """Shortest side to ``size`` (bicubic), centre crop ``size``, normalise: ``[B, 3, size, size]``."""
    out = []
    for arr in images:
        im = Image.fromarray(arr)
        w, h = im.size
        s = size / min(w, h)
        im = im.resize((max(size, round(w * s)), max(size, round(h * s))), Image.BICUBIC)
        left, top = (im.size[0] - size) // 2, (im.size[1] - size) // 2
        im = im.crop((left, top, left + size, top + size))
        out.append(torch.from_numpy(np.asarray(im, dtype=np.float32) / 255.0).permute(2, 0, 1))
    x = torch.stack(out)
    return (x - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]


def _preprocessor_values(path: str, size: int):
    cfg = Path(path) / "preprocessor_config.json"
    if cfg.exists():
        c = json.loads(cfg.read_text())
        crop = c.get("crop_size", size)
        crop = crop.get("height", size) if isinstance(crop, dict) else crop
        return int(crop), c.get("image_mean", CLIP_MEAN), c.get("image_std", CLIP_STD)
    return size, CLIP_MEAN, CLIP_STD


class _Clip:
    def __init__(self, model, tokenizer, size: int, mean=CLIP_MEAN, std=CLIP_STD, batch_size: int = 32,
                 scale: float = 1.0, clip_negative: bool = False):
        self.model, self.tokenizer = model, tokenizer
        self.size, self.mean, self.std = size, mean, std
        self.batch_size, self.scale, self.clip_negative = batch_size, scale, clip_negative

    @classmethod
    def from_pretrained(cls, name_or_path: str = DEFAULT_CLIP, device=None, **kwargs):
        from transformers import CLIPModel, CLIPTokenizer

        model = resolve_checkpoint(name_or_path, f"--metric-model {cls.name}=PATH", CLIPModel.from_pretrained)
        tokenizer = resolve_checkpoint(name_or_path, f"--metric-model {cls.name}=PATH", CLIPTokenizer.from_pretrained)
        size = model.config.vision_config.image_size
        local = Path(name_or_path)
        crop, mean, std = _preprocessor_values(str(local), size) if local.exists() else (size, CLIP_MEAN, CLIP_STD)
        return cls(to_device(model, device), tokenizer, crop, mean, std, **kwargs)

    @property
    def device(self):
        return next(self.model.parameters()).device

    @torch.no_grad()
    def image_features(self, images: list[np.ndarray]) -> torch.Tensor:
        feats = []
        for part in chunks(images, self.batch_size):
            x = preprocess(list(part), self.size, self.mean, self.std).to(self.device)
            out = self.model.get_image_features(pixel_values=x)
            feats.append(getattr(out, "pooler_output", out).float())
        return torch.nn.functional.normalize(torch.cat(feats), dim=-1)

    @torch.no_grad()
    def text_features(self, prompts: list[str]) -> torch.Tensor:
        feats = []
        for part in chunks(prompts, self.batch_size):
            tok = self.tokenizer(list(part), padding=True, truncation=True, return_tensors="pt").to(self.device)
            out = self.model.get_text_features(input_ids=tok.input_ids, attention_mask=tok.attention_mask)
            feats.append(getattr(out, "pooler_output", out).float())
        return torch.nn.functional.normalize(torch.cat(feats), dim=-1)

    def _finish(self, cos: torch.Tensor) -> list[float]:
        cos = cos * self.scale
        if self.clip_negative:
            cos = cos.clamp(min=0)
        return cos.cpu().tolist()


class ClipText(_Clip):
    """CLIP-T: ``cos(E_img(image), E_txt(prompt))`` per pair; ``mask`` keeps only that region."""

    name = "clip_t"

    def __call__(self, images, prompts, mask=None) -> list[float]:
        ims = batch(images)
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if len(prompts) != len(ims):
            raise ValueError(f"{len(ims)} images against {len(prompts)} prompts")
        ms = masks(mask, len(ims), ims[0].shape[:2])
        ims = [im if m is None else im * m[..., None].astype(np.uint8) for im, m in zip(ims, ms)]
        return self._finish((self.image_features(ims) * self.text_features(prompts)).sum(-1))


class ClipImage(_Clip):
    """CLIP-I: ``cos(E_img(source), E_img(edited))`` per pair."""

    name = "clip_i"

    def __call__(self, a, b) -> list[float]:
        xs, ys = batch(a), batch(b)
        if len(xs) != len(ys):
            raise ValueError(f"{len(xs)} images against {len(ys)}")
        return self._finish((self.image_features(xs) * self.image_features(ys)).sum(-1))
