"""Tiny FLUX pipelines built fully offline, for tests.

``build_tiny_flux(seed)`` assembles a genuine diffusers ``FluxPipeline`` from the real classes
(FluxTransformer2DModel, AutoencoderKL, CLIPTextModel, T5EncoderModel, CLIPTokenizer,
T5TokenizerFast, FlowMatchEulerDiscreteScheduler) with tiny configs and random weights drawn from
a fixed seed. Its tokenizers are files made by this project (:func:`make_tokenizers`) and shipped
in ``editflow/assets/tokenizers``. The pipeline's output is noise: it exists so that every code
path (loading, encoding, batching, schedules, solvers, methods, CLI) runs on a laptop CPU.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import torch

from .flux import FLUX_SCHEDULER_CONFIG

TOKENIZER_ASSETS = "assets/tokenizers"

# A small corpus for the T5-style tokenizer: the vocabulary of simple scene captions.
_CORPUS_WORDS = (
    "a an the of in on at with and to is photo image picture painting drawing of cat dog bird horse "
    "tree house car boat flower person man woman child face red green blue yellow orange purple pink "
    "brown black white gray grey large small big tiny circle square triangle star heart cross "
    "top bottom left right center middle corner background foreground sky sea grass snow sand "
    "sitting standing running wearing holding near next behind under above"
).split()


def _byte_symbols() -> list[str]:
    """The 256 printable stand-ins that byte-level BPE uses for raw bytes (GPT-2's table)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return [table[b] for b in range(256)]


def make_clip_tokenizer(model_max_length: int = 77):
    """A byte-level CLIP tokenizer with no merges: each byte is a token (``</w>`` ends a word)."""
    from transformers import CLIPTokenizer

    symbols = _byte_symbols()
    vocab = {s: i for i, s in enumerate(symbols)}
    vocab.update({s + "</w>": 256 + i for i, s in enumerate(symbols)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=model_max_length)


def make_t5_tokenizer(corpus: list[str], vocab_size: int = 256, model_max_length: int = 32):
    """A T5-style fast tokenizer (Unigram model, ``</s>``-terminated) fitted to ``corpus``.

    The Unigram pieces are the corpus's most frequent words (``▁word``, scored by log relative
    frequency, the maximum-likelihood Unigram for whole-word segmentation) plus every character
    seen, so unseen words still split into known pieces. On a small closed vocabulary such as
    scene captions this gives one token per word, where the library's EM trainer stalls early.
    """
    import math
    import unicodedata
    from collections import Counter

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from tokenizers.processors import TemplateProcessing
    from transformers import T5TokenizerFast

    specials = ["<pad>", "</s>", "<unk>"]
    texts = [unicodedata.normalize("NFKC", t) for t in corpus]
    words = Counter(w.strip(",.;:") for t in texts for w in t.split())
    chars = Counter(c for t in texts for c in t if not c.isspace())
    total = sum(words.values()) + sum(chars.values())
    n_words = max(0, vocab_size - len(specials) - len(chars) - 1)
    pieces = [("\u2581" + w, math.log(n / total)) for w, n in words.most_common(n_words)]
    floor = min((score for _, score in pieces), default=0.0) - 10.0  # characters only as a fallback
    pieces += [("\u2581", floor)] + [(c, floor - 1.0) for c in sorted(chars)]
    tok = Tokenizer(models.Unigram([(s, 0.0) for s in specials] + pieces, unk_id=2))
    # transformers' T5Tokenizer rebuilds exactly this pipeline when it loads a saved tokenizer, so
    # build it the same way: no normaliser, whitespace split then Metaspace ("▁" marks a word start).
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Metaspace()])
    tok.decoder = decoders.Metaspace()
    tok.post_processor = TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return T5TokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        eos_token="</s>",
        unk_token="<unk>",
        extra_ids=0,
        model_max_length=model_max_length,
    )


def make_tokenizers(out_dir: str | Path, corpus: list[str] | None = None) -> None:
    """Write ``tokenizer/`` (CLIP) and ``tokenizer_2/`` (T5) into ``out_dir``.

    This is how the shipped tokenizer files were made:
    ``python -c "from editflow.models.tiny import make_tokenizers; make_tokenizers('src/editflow/assets/tokenizers')"``
    """
    out = Path(out_dir)
    if corpus is None:
        corpus = [" ".join(_CORPUS_WORDS[i : i + 8]) for i in range(0, len(_CORPUS_WORDS), 3)] * 4
    make_clip_tokenizer().save_pretrained(out / "tokenizer")
    make_t5_tokenizer(corpus).save_pretrained(out / "tokenizer_2")


def shipped_tokenizers():
    """The tokenizers shipped with editflow (CLIP, T5)."""
    from transformers import CLIPTokenizer, T5TokenizerFast

    root = resources.files("editflow").joinpath(TOKENIZER_ASSETS)
    with resources.as_file(root) as path:
        return CLIPTokenizer.from_pretrained(path / "tokenizer"), T5TokenizerFast.from_pretrained(path / "tokenizer_2")


def make_text_encoders(clip_tok, t5_tok, dim: int, clip_layers: int = 1, t5_layers: int = 1, t5_buckets: int = 8):
    """Small randomly initialised CLIPTextModel and T5EncoderModel for the given tokenizers.

    Draws from torch's global generator: seed it first for reproducible weights.
    """
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    clip = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(clip_tok),
            hidden_size=dim,
            intermediate_size=2 * dim,
            num_hidden_layers=clip_layers,
            num_attention_heads=2,
            max_position_embeddings=clip_tok.model_max_length,
            bos_token_id=clip_tok.bos_token_id,
            eos_token_id=clip_tok.eos_token_id,
            pad_token_id=clip_tok.pad_token_id,
            projection_dim=dim,
        )
    )
    t5 = T5EncoderModel(
        T5Config(
            vocab_size=len(t5_tok),
            d_model=dim,
            d_kv=dim // 4,
            d_ff=2 * dim,
            num_layers=t5_layers,
            num_heads=4,
            relative_attention_num_buckets=t5_buckets,
            pad_token_id=t5_tok.pad_token_id,
            eos_token_id=t5_tok.eos_token_id,
            decoder_start_token_id=t5_tok.pad_token_id,
        )
    )
    return clip.eval(), t5.eval()


TINY_CONFIG = {
    "text_dim": 32,
    "transformer": dict(
        patch_size=1,
        in_channels=64,
        num_layers=1,
        num_single_layers=2,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=32,
        pooled_projection_dim=32,
        guidance_embeds=True,
        axes_dims_rope=(4, 6, 6),
    ),
    "vae": dict(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 8, 16, 16),
        layers_per_block=1,
        latent_channels=16,
        norm_num_groups=8,
        sample_size=64,
        scaling_factor=0.3611,
        shift_factor=0.1159,
        use_quant_conv=False,
        use_post_quant_conv=False,
        force_upcast=True,
    ),
}


def build_tiny_flux(seed: int = 0, guidance_embeds: bool = True):
    """A random-weight FluxPipeline of a few hundred thousand parameters (output is noise)."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    clip_tok, t5_tok = shipped_tokenizers()
    torch.manual_seed(seed)
    clip, t5 = make_text_encoders(clip_tok, t5_tok, dim=TINY_CONFIG["text_dim"])
    tcfg = dict(TINY_CONFIG["transformer"], guidance_embeds=guidance_embeds)
    transformer = FluxTransformer2DModel(**tcfg)
    vae = AutoencoderKL(**TINY_CONFIG["vae"])
    scheduler = FlowMatchEulerDiscreteScheduler(**FLUX_SCHEDULER_CONFIG)
    pipe = FluxPipeline(
        scheduler=scheduler,
        vae=vae,
        text_encoder=clip,
        tokenizer=clip_tok,
        text_encoder_2=t5,
        tokenizer_2=t5_tok,
        transformer=transformer.eval(),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe



def _clip_with_projection(tok, dim: int):
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    return CLIPTextModelWithProjection(
        CLIPTextConfig(vocab_size=len(tok), hidden_size=dim, intermediate_size=2 * dim, num_hidden_layers=1,
                       num_attention_heads=2, max_position_embeddings=tok.model_max_length,
                       bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                       projection_dim=dim)
    ).eval()


def build_tiny_sd3(seed: int = 0):
    """A random-weight StableDiffusion3Pipeline (two CLIPs, T5, SD3 transformer with RMS qk-norm as
    SD3.5, static-shift scheduler); output is noise."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    clip_tok, t5_tok = shipped_tokenizers()
    torch.manual_seed(seed)
    clip_l, clip_g = _clip_with_projection(clip_tok, 16), _clip_with_projection(clip_tok, 16)
    _, t5 = make_text_encoders(clip_tok, t5_tok, dim=32)
    transformer = SD3Transformer2DModel(sample_size=8, patch_size=2, in_channels=16, num_layers=2, attention_head_dim=8,
                                        num_attention_heads=2, joint_attention_dim=32, caption_projection_dim=16,
                                        pooled_projection_dim=32, out_channels=16, pos_embed_max_size=16,
                                        qk_norm="rms_norm")
    vae = AutoencoderKL(**TINY_CONFIG["vae"])
    pipe = StableDiffusion3Pipeline(
        transformer=transformer.eval(), scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=vae,
        text_encoder=clip_l, tokenizer=clip_tok, text_encoder_2=clip_g, tokenizer_2=clip_tok,
        text_encoder_3=t5, tokenizer_3=t5_tok,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def build_tiny_unet(seed: int = 0):
    """A random-weight StableDiffusionPipeline whose small UNet stands in for a rectified-flow UNet
    (InstaFlow's architecture is SD1.5's); output is noise."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel

    clip_tok, t5_tok = shipped_tokenizers()
    torch.manual_seed(seed)
    clip, _ = make_text_encoders(clip_tok, t5_tok, dim=32)
    unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
                                block_out_channels=(16, 32), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
                                attention_head_dim=4, norm_num_groups=8)
    vae = AutoencoderKL(**dict(TINY_CONFIG["vae"], latent_channels=4, scaling_factor=0.18215, shift_factor=None))
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=clip, tokenizer=clip_tok, unet=unet.eval(),
                                   scheduler=DDIMScheduler(steps_offset=1, clip_sample=False), safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe
