"""The stages that make the built-in shapes model, each resumable, each writing into ``run_dir``.

1. ``text``: CLIP (byte-level) and T5 (Unigram trained on world captions) tokenizers, and small
   text encoders from the seed. With ``text.pretrain_steps`` the T5 encoder is first pretrained by
   caption parsing (:mod:`editflow.train.text`), as FLUX's T5 comes pretrained; CLIP keeps random
   weights. Both stay frozen while the transformer trains, as FLUX's do.
2. ``vae``: an AutoencoderKL with 16 latent channels (like FLUX), trained on world images with
   ``L1 + mse_weight * L2 + kl_weight * KL``. Afterwards its ``shift_factor`` and
   ``scaling_factor`` are set so that latents have zero mean and unit variance (as FLUX's are).
3. ``flow``: a FluxTransformer2DModel trained by rectified-flow matching on frozen VAE latents:
   ``t = shift_mu(sigmoid(n))`` with ``n ~ N(m, s)`` (logit-normal) and FLUX's resolution shift
   ``mu``; ``z_t = (1 - t) x0 + t eps``; loss ``|v_theta(z_t, t, c) - (eps - x0)|^2``.
4. ``distill`` (when ``distill.steps > 0``): guidance distillation as FLUX.1-dev's. The ``flow``
   stage, trained with caption dropout, is the teacher, whose classifier-free guidance at scale
   ``g`` is ``v_g = v(z, t, "") + g (v(z, t, c) - v(z, t, ""))``. The student is the teacher plus a
   guidance embedding (diffusers' ``guidance_embeds=True``: a sinusoidal embedding of ``1000 g``
   added to the time embedding) whose last layer starts at zero, so it starts as the conditional
   teacher; it is trained on ``|v_s(z_t, t, c, g) - v_g|^2`` with ``g ~ U[guidance_min,
   guidance_max]`` on the flow stage's ``z_t`` and times. One student call then replaces the
   teacher's two, and the guidance value acts as it does on FLUX.1-dev.
5. ``export``: the parts assembled into a diffusers ``FluxPipeline`` folder (safetensors), with
   the student as the transformer when the config distils (:func:`final_transformer_dir`).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from ..models.base import resolution_mu, time_shift_exponential
from ..models.flux import FLUX_SCHEDULER_CONFIG, latent_image_ids, pack_latents
from ..models.tiny import make_clip_tokenizer, make_t5_tokenizer, make_text_encoders
from . import loop
from .card import write_model_card
from .config import TrainConfig
from .data import caption_corpus, world_batch
from .text import pretrain_t5



def stage_text(cfg: TrainConfig, run_dir: Path, progress: bool = True) -> None:
    if (run_dir / "text_encoder_2" / "config.json").is_file():
        return
    corpus = caption_corpus(cfg.text.tokenizer_corpus, cfg.seed, cfg.world_version)
    clip_tok = make_clip_tokenizer()
    t5_tok = make_t5_tokenizer(corpus, vocab_size=cfg.text.t5_vocab_size, model_max_length=cfg.text.max_sequence_length)
    longest = max(len(t5_tok(c).input_ids) for c in corpus)
    if longest > cfg.text.max_sequence_length:
        raise ValueError(f"captions need {longest} T5 tokens; raise text.max_sequence_length")
    torch.manual_seed(cfg.seed)
    tc = cfg.text
    clip, t5 = make_text_encoders(clip_tok, t5_tok, tc.dim, tc.clip_layers, tc.t5_layers, tc.t5_buckets)
    if tc.pretrain_steps:
        # the parsing heads are never saved, so a scratch checkpoint of an interrupted stage cannot resume
        shutil.rmtree(run_dir / "text_encoder_2.train", ignore_errors=True)
        accuracy = pretrain_t5(t5, t5_tok, seed=cfg.seed, steps=tc.pretrain_steps, batch_size=tc.pretrain_batch_size,
                               lr=tc.pretrain_lr, max_length=tc.max_sequence_length, min_objects=cfg.min_objects,
                               max_objects=cfg.max_objects, stage_dir=run_dir / "text_encoder_2.train",
                               progress=progress, device=loop.resolve_device(cfg.device), version=cfg.world_version)
        (run_dir / "text_pretrain.json").write_text(json.dumps({"held_out_token_accuracy": accuracy}, indent=1))
        shutil.rmtree(run_dir / "text_encoder_2.train")
    # the finished encoder folder is written last: its config.json marks the stage as done
    for sub, obj in [("tokenizer", clip_tok), ("tokenizer_2", t5_tok), ("text_encoder", clip), ("text_encoder_2", t5.cpu())]:
        obj.save_pretrained(run_dir / sub)


def build_vae(cfg: TrainConfig):
    from diffusers import AutoencoderKL

    n = len(cfg.vae.block_out_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=tuple(cfg.vae.block_out_channels),
        layers_per_block=cfg.vae.layers_per_block,
        latent_channels=cfg.vae.latent_channels,
        norm_num_groups=cfg.vae.norm_num_groups,
        sample_size=cfg.image_size,
        use_quant_conv=False,
        use_post_quant_conv=False,
    )


def _load_or_build(cls, folder: Path, build):
    return cls.from_pretrained(folder) if (folder / "config.json").is_file() else build()


def edge_map(x: torch.Tensor) -> torch.Tensor:
    """``[B, 1, H, W]`` in [0, 1]: how sharp a colour step of ``x`` (``[B, 3, H, W]`` in [-1, 1]) is nearby.

    The largest absolute difference to a 4-neighbour, summed over channels (the pixels on both
    sides of a step get it), scaled so that a step of 0.25 (about 30 of 255 summed) saturates,
    then grown by a 3x3 max-pool: object outlines give a band about 4 pixels wide at 1. Flat
    regions give 0; the grain's gentle slope (a few units of 255 per pixel) gives 0.3 at most.
    """
    dy = (x[:, :, 1:] - x[:, :, :-1]).abs().sum(1, keepdim=True)
    dx = (x[..., 1:] - x[..., :-1]).abs().sum(1, keepdim=True)
    step = torch.zeros_like(x[:, :1])
    step[:, :, 1:] = torch.maximum(step[:, :, 1:], dy)
    step[:, :, :-1] = torch.maximum(step[:, :, :-1], dy)
    step[..., 1:] = torch.maximum(step[..., 1:], dx)
    step[..., :-1] = torch.maximum(step[..., :-1], dx)
    return torch.nn.functional.max_pool2d((step / 0.25).clamp(max=1.0), 3, stride=1, padding=1)


def stage_vae(cfg: TrainConfig, run_dir: Path, progress: bool = True) -> None:
    from diffusers import AutoencoderKL

    device = loop.resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    vae = _load_or_build(AutoencoderKL, run_dir / "vae", lambda: build_vae(cfg)).to(device)
    v = cfg.vae

    def loss_at(step: int) -> torch.Tensor:
        x, _ = world_batch(cfg.seed, step, v.batch_size, cfg.image_size, cfg.min_objects, cfg.max_objects,
                           version=cfg.world_version)
        x = x.to(device)
        post = vae.encode(x).latent_dist
        rec = vae.decode(post.sample()).sample
        err = rec - x
        w = 1.0 + v.edge_weight * edge_map(x) if v.edge_weight else 1.0
        return (w * err.abs()).mean() + v.mse_weight * (w * err.pow(2)).mean() + v.kl_weight * post.kl().mean()

    params = list(vae.parameters())
    loop.run("vae", vae, params, loss_at, v.steps, v.lr, min(200, v.steps // 10 + 1), run_dir / "vae",
             cfg.checkpoint_every, progress)
    set_latent_statistics(vae, cfg, device)
    vae.save_pretrained(run_dir / "vae", safe_serialization=True)


@torch.no_grad()
def set_latent_statistics(vae, cfg: TrainConfig, device, batches: int = 8) -> None:
    """Set ``shift_factor`` / ``scaling_factor`` so that ``(z - shift) * scale`` has mean 0, std 1."""
    lat = []
    for k in range(batches):
        x, _ = world_batch(cfg.seed + 7919, k, 32, cfg.image_size, cfg.min_objects, cfg.max_objects,
                           version=cfg.world_version)
        lat.append(vae.encode(x.to(device)).latent_dist.mode().float().cpu())
    z = torch.cat(lat)
    vae.register_to_config(shift_factor=float(z.mean()), scaling_factor=float(1.0 / z.std()))


def build_transformer(cfg: TrainConfig, guidance_embeds: bool = False):
    from diffusers import FluxTransformer2DModel

    f = cfg.flow
    return FluxTransformer2DModel(
        patch_size=1,
        in_channels=cfg.vae.latent_channels * 4,
        num_layers=f.num_layers,
        num_single_layers=f.num_single_layers,
        attention_head_dim=f.attention_head_dim,
        num_attention_heads=f.num_attention_heads,
        joint_attention_dim=cfg.text.dim,
        pooled_projection_dim=cfg.text.dim,
        guidance_embeds=guidance_embeds,
        axes_dims_rope=tuple(f.axes_dims_rope),
    )


def final_transformer_dir(run_dir: Path) -> Path:
    """The transformer to export: the distilled student when the run's config distils (``distill.steps
    > 0``) and the stage has finished, the flow stage's when it does not; an unfinished distillation
    is an error (finish it, or set ``distill.steps`` to 0 to export the teacher)."""
    config = json.loads((run_dir / "config.json").read_text()) if (run_dir / "config.json").is_file() else {}
    steps = int(config.get("distill", {}).get("steps", 0))
    if steps <= 0:
        return run_dir / "transformer"
    state = run_dir / "student" / "state.pt"
    done = int(torch.load(state, map_location="cpu", weights_only=True)["step"]) if state.is_file() else 0
    if done < steps:
        raise ValueError(f"{run_dir}: distillation stopped at step {done} of {steps}: run the distill stage to the end "
                         "(it resumes), or set distill.steps to 0 to export the undistilled teacher")
    return run_dir / "student"


def assemble(run_dir: Path, transformer=None):
    """A FluxPipeline from the stages' folders (the transformer may be passed in, still training)."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextModel, CLIPTokenizer, T5EncoderModel, T5TokenizerFast

    pipe = FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(**FLUX_SCHEDULER_CONFIG),
        vae=AutoencoderKL.from_pretrained(run_dir / "vae").eval(),
        text_encoder=CLIPTextModel.from_pretrained(run_dir / "text_encoder").eval(),
        tokenizer=CLIPTokenizer.from_pretrained(run_dir / "tokenizer"),
        text_encoder_2=T5EncoderModel.from_pretrained(run_dir / "text_encoder_2").eval(),
        tokenizer_2=T5TokenizerFast.from_pretrained(run_dir / "tokenizer_2"),
        transformer=transformer if transformer is not None else FluxTransformer2DModel.from_pretrained(
            final_transformer_dir(run_dir)),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


class FlowBatches:
    """The flow-matching training pairs of a run: batch ``k`` of seed ``s`` is a pure function of both.

    ``__call__(step, batch_size, caption_dropout, seed_offset)`` returns ``(z_t, t, eps - x0, cond)``:
    ``batch_size`` world images (of seed ``cfg.seed + seed_offset``) encoded by
    the frozen VAE, a logit-normal time shifted by FLUX's resolution shift, the interpolant
    ``z_t = (1 - t) x0 + t eps`` and the encoded captions (``""`` for a ``caption_dropout`` share).
    """

    def __init__(self, cfg: TrainConfig, pipe, device):
        self.cfg, self.pipe, self.device = cfg, pipe, device
        side = cfg.image_size // pipe.vae_scale_factor // 2
        self.img_ids = latent_image_ids(side, side).to(device)
        self.mu = resolution_mu(side * side, FLUX_SCHEDULER_CONFIG["base_image_seq_len"],
                                FLUX_SCHEDULER_CONFIG["max_image_seq_len"], FLUX_SCHEDULER_CONFIG["base_shift"],
                                FLUX_SCHEDULER_CONFIG["max_shift"])
        self.noise_gen = torch.Generator(device="cpu")

    def encode(self, captions: list[str]):
        return self.pipe.encode_prompt(captions, prompt_2=None, device=self.device,
                                       max_sequence_length=self.cfg.text.max_sequence_length)

    @torch.no_grad()
    def __call__(self, step: int, batch_size: int, caption_dropout: float, seed_offset: int = 0):
        cfg, vae = self.cfg, self.pipe.vae
        seed = cfg.seed + seed_offset
        x, captions = world_batch(seed, step, batch_size, cfg.image_size, cfg.min_objects, cfg.max_objects,
                                  version=cfg.world_version)
        self.noise_gen.manual_seed(seed * 1_000_003 + step)
        if caption_dropout > 0:
            drop = torch.rand(len(captions), generator=self.noise_gen) < caption_dropout
            captions = ["" if d else c for c, d in zip(captions, drop.tolist())]
        lat = vae.encode(x.to(self.device)).latent_dist.mode()
        x0 = pack_latents((lat - vae.config.shift_factor) * vae.config.scaling_factor)
        cond = self.encode(captions)
        n = cfg.flow.logit_normal_mean + cfg.flow.logit_normal_std * torch.randn(x0.shape[0], generator=self.noise_gen)
        t = time_shift_exponential(self.mu, torch.sigmoid(n)).to(self.device)
        eps = torch.randn(x0.shape, generator=self.noise_gen).to(self.device)
        z_t = (1 - t[:, None, None]) * x0 + t[:, None, None] * eps
        return z_t, t, eps - x0, cond

    def velocity(self, transformer, z_t, t, cond, guidance=None):
        embeds, pooled, txt_ids = cond
        return transformer(hidden_states=z_t, timestep=t, guidance=guidance, pooled_projections=pooled,
                           encoder_hidden_states=embeds, txt_ids=txt_ids, img_ids=self.img_ids, return_dict=False)[0]


def _frozen_pipe(run_dir: Path, transformer, device):
    pipe = assemble(run_dir, transformer).to(device)
    for module in (pipe.vae, pipe.text_encoder, pipe.text_encoder_2):
        module.requires_grad_(False)
    return pipe


def stage_flow(cfg: TrainConfig, run_dir: Path, progress: bool = True) -> None:
    from diffusers import FluxTransformer2DModel

    device = loop.resolve_device(cfg.device)
    torch.manual_seed(cfg.seed + 1)
    transformer = _load_or_build(FluxTransformer2DModel, run_dir / "transformer", lambda: build_transformer(cfg))
    batches = FlowBatches(cfg, _frozen_pipe(run_dir, transformer, device), device)
    f = cfg.flow

    def loss_at(step: int) -> torch.Tensor:
        z_t, t, target, cond = batches(step, f.batch_size, f.caption_dropout)
        return (batches.velocity(transformer, z_t, t, cond) - target).pow(2).mean()

    loop.run("flow", transformer, list(transformer.parameters()), loss_at, f.steps, f.lr, f.warmup,
             run_dir / "transformer", cfg.checkpoint_every, progress)


def student_from(teacher, cfg: TrainConfig):
    """The teacher's weights in a transformer with a guidance embedding whose output layer is zero."""
    student = build_transformer(cfg, guidance_embeds=True)
    missing, unexpected = student.load_state_dict(teacher.state_dict(), strict=False)
    if unexpected or any(not k.startswith("time_text_embed.guidance_embedder.") for k in missing):
        raise ValueError(f"teacher and student differ beyond the guidance embedding: {missing + unexpected}")
    torch.nn.init.zeros_(student.time_text_embed.guidance_embedder.linear_2.weight)
    torch.nn.init.zeros_(student.time_text_embed.guidance_embedder.linear_2.bias)
    return student


DISTILL_SEED_OFFSET = 17  # distillation batches: the training split, another stream than the flow stage's


def stage_distill(cfg: TrainConfig, run_dir: Path, progress: bool = True) -> None:
    from diffusers import FluxTransformer2DModel

    d = cfg.distill
    if d.steps <= 0:
        return
    if cfg.flow.caption_dropout <= 0:
        raise ValueError("distillation needs a teacher with an unconditional branch: train the flow stage with "
                         "flow.caption_dropout > 0 (e.g. 0.1), or set distill.steps to 0")
    device = loop.resolve_device(cfg.device)
    torch.manual_seed(cfg.seed + 2)
    teacher = FluxTransformer2DModel.from_pretrained(run_dir / "transformer").to(device).eval().requires_grad_(False)
    student = _load_or_build(FluxTransformer2DModel, run_dir / "student", lambda: student_from(teacher, cfg)).to(device)
    batches = FlowBatches(cfg, _frozen_pipe(run_dir, teacher, device), device)
    guidance_gen = torch.Generator(device="cpu")
    with torch.no_grad():
        empty, empty_pooled, _ = batches.encode([""])  # the unconditional branch's prompt, encoded once

    def loss_at(step: int) -> torch.Tensor:
        z_t, t, _, cond = batches(step, d.batch_size, 0.0, DISTILL_SEED_OFFSET)
        guidance_gen.manual_seed(cfg.seed * 7_000_003 + step)
        g = (d.guidance_min + (d.guidance_max - d.guidance_min) * torch.rand(z_t.shape[0], generator=guidance_gen))
        g = g.to(device)
        b = z_t.shape[0]
        with torch.no_grad():
            embeds, pooled, txt_ids = cond
            both = (torch.cat([embeds, empty.expand_as(embeds)]), torch.cat([pooled, empty_pooled.expand_as(pooled)]),
                    txt_ids)
            v = batches.velocity(teacher, torch.cat([z_t, z_t]), torch.cat([t, t]), both)
            v_cond, v_uncond = v[:b], v[b:]
            target = v_uncond + g[:, None, None] * (v_cond - v_uncond)
        return (batches.velocity(student, z_t, t, cond, guidance=g) - target).pow(2).mean()

    loop.run("distill", student, list(student.parameters()), loss_at, d.steps, d.lr, d.warmup,
             run_dir / "student", cfg.checkpoint_every, progress)


def export(run_dir: Path, out_dir: Path, dtype: torch.dtype = torch.float32, quality: dict | None = None,
           trained_on: str | None = None) -> Path:
    """Write the trained model as a FluxPipeline folder (safetensors) at ``out_dir``."""
    pipe = assemble(run_dir)
    pipe.to(dtype=dtype)
    pipe.save_pretrained(out_dir, safe_serialization=True)
    for config in out_dir.glob("*/config.json"):  # diffusers records the training machine's run path there
        data = json.loads(config.read_text())
        if data.pop("_name_or_path", None) is not None:
            config.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    (out_dir / "train_config.json").write_text((run_dir / "config.json").read_text())
    write_model_card(run_dir, out_dir, quality, device=trained_on,  # only the student has a guidance embedding
                     distilled=bool(pipe.transformer.config.guidance_embeds))
    return out_dir


def _identity(config: dict, where: str = "the config") -> dict:
    """What a run may not change when it resumes: all but the device and the step counts (keys a
    run saved before they existed take their defaults)."""
    from .config import _build

    config = _build(TrainConfig, config, where).to_dict()
    out = {k: v for k, v in config.items() if k != "device"}
    for stage in ("vae", "flow", "distill"):
        out[stage] = {k: v for k, v in out.get(stage, {}).items() if k != "steps"}
    return out


def save_config(cfg: TrainConfig, run_dir: Path) -> None:
    if cfg.distill.steps > 0 and cfg.flow.caption_dropout <= 0:  # refused now, not after hours of training
        raise ValueError("distill.steps > 0 needs a teacher with an unconditional branch: set flow.caption_dropout "
                         "> 0 (e.g. 0.1), or distill.steps to 0")
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "config.json"
    if path.is_file() and _identity(json.loads(path.read_text()), str(path)) != _identity(cfg.to_dict()):
        raise ValueError(f"{run_dir} was started with another config; use a new run folder or the same config")
    path.write_text(json.dumps(cfg.to_dict(), indent=1))
