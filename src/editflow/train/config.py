"""Training configuration of the built-in shapes model, read from a JSON file.

Every field has a default (the CPU configuration); a config file overrides any subset, e.g.
``configs/world2-cpu.json`` (the shipped model). Unknown keys are an error, so a typo never trains the wrong model.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import EditflowError


@dataclass
class VAEConfig:
    block_out_channels: list[int] = field(default_factory=lambda: [16, 32, 32])  # 3 levels: 4x down
    layers_per_block: int = 1
    latent_channels: int = 16  # as FLUX
    norm_num_groups: int = 8
    steps: int = 3000
    batch_size: int = 16
    lr: float = 1e-3
    kl_weight: float = 1e-6
    mse_weight: float = 1.0  # loss = mean(w |x - x'|_1 + mse_weight w |x - x'|^2) + kl_weight KL
    edge_weight: float = 0.0  # w = 1 + edge_weight * edge(x): extra weight near object outlines (stages.edge_map)


@dataclass
class TextConfig:
    dim: int = 64
    t5_layers: int = 2
    clip_layers: int = 1
    max_sequence_length: int = 48
    t5_vocab_size: int = 160
    t5_buckets: int = 8  # T5 relative-position buckets (half per direction; exact below a quarter)
    tokenizer_corpus: int = 20000  # captions sampled to train the T5 tokenizer
    # T5 pretraining by caption parsing (train/text.py) before it is frozen; 0 steps: random, frozen
    pretrain_steps: int = 0
    pretrain_batch_size: int = 64
    pretrain_lr: float = 1e-3


@dataclass
class FlowConfig:
    num_layers: int = 2  # double-stream blocks
    num_single_layers: int = 4
    attention_head_dim: int = 32
    num_attention_heads: int = 4
    axes_dims_rope: list[int] = field(default_factory=lambda: [8, 12, 12])
    steps: int = 7000
    batch_size: int = 32
    lr: float = 5e-4
    warmup: int = 500
    logit_normal_mean: float = 0.0
    logit_normal_std: float = 1.0
    caption_dropout: float = 0.0


@dataclass
class DistillConfig:
    """Guidance distillation (stage ``distill``), as FLUX.1-dev was made from a CFG teacher.

    The student is the trained transformer plus a guidance embedding; it learns
    ``v_s(z_t, t, c, g) ~ v_T(z_t, t, "") + g (v_T(z_t, t, c) - v_T(z_t, t, ""))`` for ``g`` uniform in
    ``[guidance_min, guidance_max]``. 0 steps: no distillation (the teacher is exported as is).
    """

    steps: int = 0
    batch_size: int = 32
    lr: float = 3e-4
    warmup: int = 200
    guidance_min: float = 1.0
    guidance_max: float = 8.0


@dataclass
class TrainConfig:
    image_size: int = 64
    world_version: int = 1  # 1: the shapes model's world; 2: uncaptioned detail, held-out graphs never drawn
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    checkpoint_every: int = 500
    min_objects: int = 1
    max_objects: int = 3
    vae: VAEConfig = field(default_factory=VAEConfig)
    text: TextConfig = field(default_factory=TextConfig)
    flow: FlowConfig = field(default_factory=FlowConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)

    @staticmethod
    def load(path: str | Path | None) -> "TrainConfig":
        if path is None:
            return TrainConfig()
        p = Path(path)
        if not p.is_file():
            raise EditflowError(f"config file not found: {p}")
        try:
            data = json.loads(p.read_text())
        except json.JSONDecodeError as exc:
            raise EditflowError(f"config {p} is not valid JSON: {exc}") from None
        return _build(TrainConfig, data, str(p))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _build(cls, data: dict, where: str):
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise EditflowError(f"{where}: unknown key {unknown[0]!r}; valid keys: {', '.join(fields)}")
    values = {}
    for name, value in data.items():
        sub = fields[name].default_factory if fields[name].default_factory is not dataclasses.MISSING else None
        if sub is not None and dataclasses.is_dataclass(sub()) and isinstance(value, dict):
            values[name] = _build(type(sub()), value, f"{where}.{name}")
        else:
            values[name] = value
    return cls(**values)
