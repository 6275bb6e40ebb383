"""Real model architectures with random weights, built offline (for speed benchmarks).

``build_random_flux("flux-dev")`` gives a ``FluxPipeline`` whose transformer has FLUX.1-dev's
configuration (19 double + 38 single blocks, 24 heads x 128, guidance embedding, 512 T5 tokens of
width 4096, CLIP pooled 768), optionally shrunk in depth (``double``, ``single``) and width
(``heads``) for CPU runs. The VAE is editflow's tiny one (8x downsampling, 16 channels) and the
text encoders are one-layer stand-ins with FLUX's output widths: a speed benchmark times the
transformer and the method's loop, and reports the VAE separately.
"""

from __future__ import annotations

import torch

ARCHS = {
    "flux-dev": dict(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
                     num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768,
                     guidance_embeds=True, axes_dims_rope=(16, 56, 56)),
}


def build_random_flux(arch: str = "flux-dev", double: int | None = None, single: int | None = None,
                      heads: int | None = None, seed: int = 0, dtype: torch.dtype = torch.bfloat16):
    """A random-weight FluxPipeline with ``arch``'s transformer (depth / width optionally shrunk)."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    from .flux import FLUX_SCHEDULER_CONFIG
    from .tiny import TINY_CONFIG, shipped_tokenizers

    if arch not in ARCHS:
        raise ValueError(f"unknown architecture {arch!r}: use one of {', '.join(ARCHS)}")
    cfg = dict(ARCHS[arch])
    if double is not None:
        cfg["num_layers"] = double
    if single is not None:
        cfg["num_single_layers"] = single
    if heads is not None:
        cfg["num_attention_heads"] = heads
    clip_tok, t5_tok = shipped_tokenizers()
    t5_tok.model_max_length = 512
    torch.manual_seed(seed)
    clip = CLIPTextModel(CLIPTextConfig(vocab_size=len(clip_tok), hidden_size=cfg["pooled_projection_dim"],
                                        intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                                        max_position_embeddings=clip_tok.model_max_length,
                                        bos_token_id=clip_tok.bos_token_id, eos_token_id=clip_tok.eos_token_id,
                                        pad_token_id=clip_tok.pad_token_id))
    t5 = T5EncoderModel(T5Config(vocab_size=len(t5_tok), d_model=cfg["joint_attention_dim"], d_kv=16, d_ff=64,
                                 num_layers=1, num_heads=4, relative_attention_num_buckets=8,
                                 pad_token_id=t5_tok.pad_token_id, eos_token_id=t5_tok.eos_token_id,
                                 decoder_start_token_id=t5_tok.pad_token_id))
    with torch.device("cpu"):
        transformer = FluxTransformer2DModel(**cfg).to(dtype)
    pipe = FluxPipeline(scheduler=FlowMatchEulerDiscreteScheduler(**FLUX_SCHEDULER_CONFIG),
                        vae=AutoencoderKL(**TINY_CONFIG["vae"]).to(dtype), text_encoder=clip.eval().to(dtype),
                        tokenizer=clip_tok, text_encoder_2=t5.eval().to(dtype), tokenizer_2=t5_tok,
                        transformer=transformer.eval())
    pipe.set_progress_bar_config(disable=True)
    return pipe
