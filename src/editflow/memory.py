"""The memory plan: what one edit will hold on the GPU and in host memory, before anything loads.

``editflow plan --model flux-dev --method kv_edit --size 1024 --gpu-memory 24GB`` prints the terms
below and the cheapest placement that fits; ``editflow edit --memory auto`` (the default) applies
it (on the CPU it only checks that the edit fits the host's available memory). Every formula of the plan is in this module. Sizes are bytes; ``b`` is the element size
of the compute dtype (2 for bfloat16 / float16, 4 for float32).

Terms
-----
weights      ``W_c = sum(numel x element size)`` over component ``c``'s parameters and buffers
             (transformer, each text encoder, VAE), counted from the modules themselves: the loaded
             ones, or the architecture built on the ``meta`` device from its configs (no weights
             read). A quantized transformer stores each ``nn.Linear`` weight in ``q`` bytes per
             entry, plus a scale in ``b`` bytes per output channel (int8, fp8) or a float32
             absmax per 64 entries (nf4, bitsandbytes' default block): ``q`` = 1 (int8, fp8),
             0.5 (nf4); a GGUF file counts the bytes of its tensors as stored.
activations  of one FLUX transformer call on ``r`` rows, ``S = T + N`` tokens (``T`` text tokens,
             ``N = H W / 256`` image tokens), width ``D = heads x 128``, T5 width ``J``::

                 A(r) = r S D b K_b + [r > 1] r T J b + 2 S d_h 4

             ``K_b`` counts the ``[S, D]``-sized tensors alive at the call's peak, which is inside
             a single-stream block (its MLP is 4 D wide and its output projection reads a 5 D
             concatenation). With ``b = 4`` the peak is the gated output projection: residual 1,
             modulated norm 1, MLP activation 4, attention output 2 (the kernel's head-major result
             and its token-major copy), the ``[attention; MLP]`` concatenation 5, projection 1, gated
             product 1: ``K_4 = 15``. With ``b = 2`` it is the rotary embedding of the query, which
             diffusers computes in float32: residual 1, norm 1, MLP activation 4, q k v 3, float32
             query 2, rotated half 1 and its float32 copy 2, product 2, and one more ``[S, D]``
             buffer: ``K_2 = 17``. Both measured exactly at FLUX.1-dev's width (24 heads, traced
             with :class:`TensorBytes`); a model shrunk to a few heads skips the attention output's
             copy and measures about one unit less, so the plan is ~7% over there. ``r T J b``: a call on several rows concatenates their T5
             conditionings into one batch (one row reads its prompt's as it is). ``2 S d_h 4``: the
             rotary embedding's cosine and sine tables, float32, ``d_h = 128`` per head. Attention
             itself adds no ``S^2`` term (scaled-dot-product attention runs flash or
             memory-efficient kernels). A quantized transformer also holds its largest linear
             weight dequantized to ``b`` bytes for the length of one matmul.
text encoders  per prompt, for each encoder over its ``T_e`` tokens (T5: ``T``; CLIP: 77) and the
             largest: ``max((2 d + 3 i) T_e b + 2 h T_e^2 b, T_e d (2 b + 8))`` (width ``d``, ``h`` heads,
             attention width ``i``): inside attention the hidden state, its norm, q, k, v and the scores with
             their position bias (``h T_e^2`` each, transformers' eager T5 attention); or, where
             the attention is narrow, the layer norm's float32 copy and square beside the hidden
             state and its norm. Exact for one and two T5-XXL layers in float32 and bfloat16; about 10%
             under for the whole 24-layer encoder, whose position bias is kept across layers (a
             review's measurement), and 7% under for editflow's narrow stand-ins; at FLUX.1-dev's
             size the term is 0.1 GiB. Prompts encoded earlier stay: ``+ (P - 1) T J b``.
VAE          encoding ``(3 + L) c_0 H W b``; decoding ``max(2 c_1 + 2 c_0, (4 + L) c_0) H W b + 2 3 H W 4``
             (``c_0, c_1`` the first two of ``block_out_channels``, ``L`` its ``layers_per_block``):
             the full-resolution stage dominates, where decoding holds the last upsampler's
             nearest-neighbour output and convolution at ``c_1`` channels beside the first
             full-resolution ResNet at ``c_0``. Measured on diffusers' AutoencoderKL for FLUX's VAE
             (128, 256, 512, 512; L = 2) and editflow's two small ones; exact on all three.
             ``2 3 H W 4``: the decoded image in float32 and its clamped copy.
feature store  the method's own: RF-Edit stores V (``[S, D]``) of its shared single-stream layers
             for both calls of each of the ``inject`` steps, ``2 inject |shared| S D b``; FireFlow
             one call per step (its midpoint), plus the first step's first call when ``inject = steps``;
             KV-Edit K and V of the background tokens in every layer for every inversion step,
             ``2 (T - skip) L (N - n_fg) D b`` (``replay`` and ``inversion_free``: one step). Exact
             (tested against the store's own count) for masks on whole tokens; ``editflow edit``
             passes the mask's share of pixels, which for a mask cutting tokens counts a few
             foreground tokens as background (the safe side). ``offload=True`` (or a placement with
             the store in host memory) puts it in pinned host memory.
prompts      the encoded prompts the loop reads, ``P T J b`` (``P = 2``: source and target; one more
             per subject, and UniEdit's empty inversion prompt).
latents      a few ``[r, N, 4 c]`` float32 tensors (the path, velocities): ``8 r N 4 c 4``.
rows         ``r`` is the method's largest call (``Method.rows_per_call``); with ``--mask auto`` the
             mask's one call of ``2 x 10`` noise draws (:data:`editflow.masks.DRAWS`), when larger.

Placements, cheapest first (``T_i``: text encoder ``i``; ``P``: the phases' working memory, each
with the weights it runs beside)::

    gpu                   W_t + W_te + W_vae + max(A_te, vae, loop)
    text-encoders-offload W_t + W_vae + max(leaf_te + A_te, vae, loop)
    model-offload         W_vae + max(W_te + A_te, W_t + W_te' + loop, W_te' + vae)
    sequential-offload    leaf + max(A_te, vae, loop)

with ``loop = A + store + prompts + latents``, ``vae = A_vae + prompts`` (the adapter's prompt cache
keeps them), ``A_te`` the text encoders' activations plus the prompts encoded before the last,
and ``W_te'`` the text encoders but the largest. Under model offload diffusers' hooks move a
component out only when the next one in ``text_encoder -> text_encoder_2 -> transformer -> vae``
runs (``image_encoder``, between them in the sequence, is unused by editflow): editflow encodes the image first, so the VAE stays for the whole edit, both text encoders
meet when a second prompt is encoded, and CLIP stays beside the transformer.

``text-encoders-offload`` streams each text encoder's layers to the GPU as it encodes a prompt
(accelerate's ``cpu_offload``; ``leaf_te`` is its largest layer), once per new prompt; the
transformer stays resident between edits. ``model-offload`` is diffusers'
``enable_model_cpu_offload`` (each component moves in whole when it runs: the transformer's 22 GiB
cross PCIe once per edit), ``sequential-offload`` its ``enable_sequential_cpu_offload`` (every layer
crosses PCIe on every call: by far the slowest; not offered for a quantized transformer, whose
tensor subclasses editflow has not run through accelerate's per-layer hooks). Each placement is
also tried with the feature store in pinned host memory (``store`` leaves the GPU sums; one device
copy per stored tensor each way); a method run with ``offload=True`` has it there in every row.

A placement fits when its GPU peak is at most the usable part of the budget and, where the host's
available memory is known (``editflow edit``; ``plan --host-memory``), what it keeps in host memory
fits there. Usable = 98% of the budget (the caching allocator's fragmentation: the weights are
allocated once, in large blocks, and each call's activations reuse the blocks the last one freed)
less 0.25 GiB of cuBLAS / cuDNN workspaces, less 0.5 GiB for the CUDA context when the budget is
a card's size (``--gpu-memory 24GB``, ``--memory 24GB``); ``--memory auto`` reads the GPU's free
memory, which already excludes the context. Neither margin has been measured on a GPU yet:
``benchmarks/memory.py --device cuda`` compares plan and peak there.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .errors import EditflowError, ModelNotAvailableError, ParameterError
from .models.placement import PLACEMENTS

GIB = 2**30
CONTEXT_BYTES = int(0.5 * GIB)
WORKSPACE_BYTES = int(0.25 * GIB)
FRAGMENTATION = 0.02
K_ACTIVATIONS = {4: 15, 2: 17}  # [S, D] tensors alive at a FLUX call's peak, by element size
LATENT_TENSORS = 8
QUANT_BYTES = {"int8": 1.0, "fp8": 1.0, "nf4": 0.5}

# FLUX.1's text encoders and VAE (the transformer's configuration is editflow.models.random.ARCHS)
CLIP_L = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
              max_position_embeddings=77, projection_dim=768, hidden_act="quick_gelu")
T5_XXL = dict(vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
              feed_forward_proj="gated-gelu", relative_attention_num_buckets=32, is_encoder_decoder=False)
FLUX_VAE = dict(in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 4,
                up_block_types=["UpDecoderBlock2D"] * 4, block_out_channels=[128, 256, 512, 512], layers_per_block=2,
                latent_channels=16, norm_num_groups=32, sample_size=1024, scaling_factor=0.3611, shift_factor=0.1159,
                use_quant_conv=False, use_post_quant_conv=False)
KNOWN_ARCHITECTURES = {"flux-dev": "flux-dev", "flux-krea-dev": "flux-dev", "flux-schnell": "flux-schnell"}
T5_TOKENS = {"flux-schnell": 256}  # FLUX.1-schnell's pipeline encodes 256 T5 tokens, dev 512


@dataclass(frozen=True)
class Parts:
    """What the plan knows of a model: sizes of its components and the shapes its formulas need.

    ``transformer_bytes`` are at the compute dtype before quantization; ``linear_params`` are the
    entries of the transformer's ``nn.Linear`` weights (what quantization shrinks),
    ``linear_out`` their output channels, ``largest_linear`` the entries of the largest one."""

    name: str
    family: str
    dtype_bytes: int
    transformer_bytes: int
    linear_params: int
    linear_out: int
    largest_linear: int
    largest_leaf_bytes: int
    text_encoders: tuple[tuple[str, int, int], ...]  # (name, bytes, largest layer bytes)
    text_encoder_shapes: tuple[tuple[int, int, int, int], ...]  # each encoder's (tokens, width, heads, attention width)
    vae_bytes: int
    vae_channels: tuple[int, ...]
    vae_layers: int
    vae_factor: int
    latent_channels: int
    width: int
    head_dim: int
    double: int
    single: int
    text_tokens: int
    joint_dim: int
    gguf_bytes: int | None = None


@dataclass
class Placement:
    """One way to place an edit: GPU peak and host bytes, and whether it fits the budget."""

    name: str
    store_offload: bool
    gpu_peak: int
    host: int
    fits: bool = False

    @property
    def label(self) -> str:
        return self.name + (" + store in pinned CPU memory" if self.store_offload else "")


@dataclass
class Plan:
    """The terms of one edit's memory and its placements, cheapest first."""

    parts: Parts
    method: str
    size: tuple[int, int]
    rows: int
    quantize: str | None
    budget: int | None
    card: bool
    host_budget: int | None
    weights: dict[str, int]
    activations: int
    text_activations: int
    vae_activations: int
    store: int
    store_detail: str
    params: object
    prompts: int
    latents: int
    placements: list[Placement] = field(default_factory=list)

    @property
    def chosen(self) -> Placement | None:
        """The cheapest placement that fits (None: none does, or no budget was given)."""
        return next((p for p in self.placements if p.fits), None)

    @property
    def peak_all_on_device(self) -> int:
        """The peak with everything on one device (what the CPU holds, or the ``gpu`` placement)."""
        return self.placements[0].gpu_peak

    def table(self) -> str:
        g = lambda n: f"{n / GIB:.2f}"  # noqa: E731
        w, h = self.size
        q = f", transformer {self.quantize}" if self.quantize else ""
        lines = [f"memory plan: {self.parts.name}, {self.method}, {w}x{h}, {self.rows} row(s) a call{q}",
                 "", "| term | GiB |", "| --- | --- |"]
        for name, nbytes in self.weights.items():
            lines.append(f"| {name} weights | {g(nbytes)} |")
        lines += [f"| transformer activations (one call) | {g(self.activations)} |",
                  f"| text-encoder activations | {g(self.text_activations)} |",
                  f"| VAE activations (encode or decode, the larger) | {g(self.vae_activations)} |",
                  f"| feature store{' (' + self.store_detail + ')' if self.store_detail else ''} | {g(self.store)} |",
                  f"| prompts | {g(self.prompts)} |", f"| latents | {g(self.latents)} |", "",
                  "| placement | GPU peak GiB | host GiB | fits |", "| --- | --- | --- | --- |"]
        for p in self.placements:
            fits = "" if self.budget is None else ("yes" if p.fits else "no")
            lines.append(f"| {p.label} | {g(p.gpu_peak)} | {g(p.host)} | {fits} |")
        if self.budget is not None:
            usable = usable_bytes(self.budget, self.card)
            chosen = self.chosen
            host = "" if self.host_budget is None else f", host {g(self.host_budget)} GiB"
            lines += ["", f"budget {g(self.budget)} GiB (usable {g(usable)}{host}): "
                      + (f"{chosen.label}" if chosen else "nothing fits: " + self.advice())]
        return "\n".join(lines)

    def advice(self, cuda: bool = True) -> str:
        """What would shrink the plan, in a few words (``cuda``: whether nf4 is an option)."""
        tips = []
        if self.quantize is None and self.parts.gguf_bytes is None:
            tips.append("--quantize int8 (or nf4 on CUDA)" if cuda else "--quantize int8")
        if self.size[0] * self.size[1] > 512 * 512:
            tips.append("a smaller size")
        if self.method == "kv_edit" and self.store and not (self.params.replay or self.params.inversion_free):
            tips.append("--set replay=true (KV-Edit keeps one step of K/V)")
        return "try " + ", ".join(tips or ["a larger budget"])


# -- the model's parts ----------------------------------------------------------------------
def _module_bytes(module) -> int:
    return sum(t.numel() * t.element_size() for t in list(module.parameters()) + list(module.buffers()))


def _largest_leaf(module, dtype_bytes: int) -> int:
    leaves = [m for m in module.modules() if not list(m.children())]
    return max((sum(p.numel() for p in m.parameters(recurse=False)) * dtype_bytes for m in leaves), default=0)


def parts_of_pipeline(pipe, name: str, family: str, text_tokens: int, dtype_bytes: int | None = None,
                      gguf_bytes: int | None = None) -> Parts:
    """:class:`Parts` counted from a pipeline's modules (loaded, or built on the meta device).
    ``dtype_bytes``: the compute dtype's element size (default: the transformer's)."""
    tr = pipe.transformer
    b = dtype_bytes or next(tr.parameters()).element_size()
    scale = lambda m: _module_bytes(m) * b // max(next(m.parameters()).element_size(), 1)  # noqa: E731
    linears = [m for m in tr.modules() if isinstance(m, torch.nn.Linear)]
    encoders = [(n, getattr(pipe, n)) for n in ("text_encoder", "text_encoder_2", "text_encoder_3")
                if getattr(pipe, n, None) is not None]
    te_shapes = []
    for _, enc in encoders:
        c = enc.config
        t5 = hasattr(c, "d_model")
        te_shapes.append((int(text_tokens) if t5 else int(c.max_position_embeddings),
                          c.d_model if t5 else c.hidden_size, c.num_heads if t5 else c.num_attention_heads,
                          c.num_heads * c.d_kv if t5 else c.hidden_size))
    vc = pipe.vae.config
    tc = tr.config
    blocks = [getattr(tr, "transformer_blocks", []), getattr(tr, "single_transformer_blocks", [])]
    return Parts(
        name=name, family=family, dtype_bytes=b, transformer_bytes=scale(tr),
        linear_params=sum(m.weight.numel() for m in linears), linear_out=sum(m.out_features for m in linears),
        largest_linear=max((m.weight.numel() for m in linears), default=0),
        largest_leaf_bytes=max(_largest_leaf(tr, b), _largest_leaf(pipe.vae, b),
                               *(_largest_leaf(e, b) for _, e in encoders)),
        text_encoders=tuple((n, scale(e), _largest_leaf(e, b)) for n, e in encoders),
        text_encoder_shapes=tuple(te_shapes),
        vae_bytes=scale(pipe.vae), vae_channels=tuple(vc.block_out_channels), vae_layers=int(vc.layers_per_block),
        vae_factor=2 ** (len(vc.block_out_channels) - 1), latent_channels=int(vc.latent_channels),
        width=int(tc.num_attention_heads * tc.attention_head_dim), head_dim=int(tc.attention_head_dim),
        double=len(blocks[0]), single=len(blocks[1]),
        text_tokens=int(text_tokens), joint_dim=int(tc.joint_attention_dim), gguf_bytes=gguf_bytes)


def parts_of_model(model) -> Parts:
    """:class:`Parts` of a loaded editflow model (FLUX family)."""
    _require_flux(model.family, model.name)
    return parts_of_pipeline(model.pipe, model.name, model.family, model.max_sequence_length,
                             dtype_bytes=torch.empty(0, dtype=model.dtype).element_size())


def meta_flux_pipeline(arch: str = "flux-dev"):
    """FLUX.1's pipeline components built on the meta device (shapes only, no memory, no files)."""
    from diffusers import AutoencoderKL, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    from .models.random import ARCHS

    cfg = dict(ARCHS["flux-dev"])
    if arch == "flux-schnell":
        cfg["guidance_embeds"] = False
    with torch.device("meta"):
        parts = dict(transformer=FluxTransformer2DModel(**cfg), text_encoder=CLIPTextModel(CLIPTextConfig(**CLIP_L)),
                     text_encoder_2=T5EncoderModel(T5Config(**T5_XXL)), vae=AutoencoderKL(**FLUX_VAE))
    return type("MetaPipeline", (), parts)()


def gguf_bytes(path) -> int:
    """The bytes of a GGUF file's tensors as stored (they stay quantized in memory)."""
    from gguf import GGUFReader

    try:
        return int(sum(int(t.n_bytes) for t in GGUFReader(str(path)).tensors))
    except (OSError, ValueError, KeyError) as exc:
        raise ModelNotAvailableError(f"cannot read GGUF file {path}: {str(exc).splitlines()[0]}") from None


def parts_of_name(name: str, dtype_bytes: int = 2, transformer_file=None) -> Parts:
    """:class:`Parts` of a model named for ``editflow plan`` without loading its weights: a FLUX zoo
    name or its hub id (architecture from its published configs), or a local FLUX pipeline folder
    (its configs built on the meta device); built-in models are loaded (they are small).
    ``transformer_file``: a ``.gguf`` transformer counts its stored bytes (a ``.safetensors`` one
    has the model's own architecture and size)."""
    import dataclasses

    from .models.zoo import ZOO, load_model, read_model_index

    if transformer_file is not None and str(transformer_file).endswith(".gguf"):
        return dataclasses.replace(parts_of_name(name, dtype_bytes), gguf_bytes=gguf_bytes(transformer_file))
    name = next((n for n, e in ZOO.items() if e.hub_id == name and n in KNOWN_ARCHITECTURES), name)
    if name in KNOWN_ARCHITECTURES:
        pipe = meta_flux_pipeline(KNOWN_ARCHITECTURES[name])
        return parts_of_pipeline(pipe, name, "flux", T5_TOKENS.get(name, 512), dtype_bytes)
    entry = ZOO.get(name)
    if entry is not None and entry.builtin:
        dtype = {2: torch.bfloat16, 4: torch.float32}.get(dtype_bytes, torch.float32)
        return parts_of_model(load_model(name, device="cpu", dtype=dtype, progress=False))
    folder = Path(name).expanduser()
    if not folder.is_dir():
        raise ModelNotAvailableError(
            f"a plan needs the architecture of {name}: use {', '.join(KNOWN_ARCHITECTURES)} (or their hub ids), a "
            "built-in model, or a local FLUX pipeline folder")
    cls = read_model_index(folder)["_class_name"]
    if cls != "FluxPipeline":
        raise ModelNotAvailableError(f"{name}: memory plans cover FLUX pipelines so far, this one is a {cls}")
    try:
        pipe, tokens = _meta_from_folder(folder)
    except (OSError, ValueError, KeyError, AttributeError, TypeError) as exc:
        raise ModelNotAvailableError(f"cannot read the component configs of {name}: {str(exc).splitlines()[0]}") from None
    return parts_of_pipeline(pipe, name, "flux", tokens, dtype_bytes)


def _meta_from_folder(folder: Path):
    """A folder's transformer, text encoders and VAE built on the meta device from their configs,
    and the T5 tokens its FLUX adapter encodes (512, or less where the tokenizer stops sooner)."""
    import diffusers
    import transformers

    index = json.loads((folder / "model_index.json").read_text())
    parts = {}
    with torch.device("meta"):
        for sub in ("transformer", "text_encoder", "text_encoder_2", "vae"):
            library, cls_name = index.get(sub, [None, None])
            if cls_name is None:
                continue
            if library == "diffusers":
                cls = getattr(diffusers, cls_name)
                parts[sub] = cls.from_config(cls.load_config(folder / sub))
            else:
                cls = getattr(transformers, cls_name)
                parts[sub] = cls(transformers.AutoConfig.from_pretrained(folder / sub))
    tokens = 512
    tokenizer = folder / "tokenizer_2" / "tokenizer_config.json"
    if tokenizer.is_file():
        tokens = min(tokens, int(json.loads(tokenizer.read_text()).get("model_max_length", tokens)))
    return type("MetaPipeline", (), parts)(), tokens


def _require_flux(family: str, name: str) -> None:
    if family != "flux":
        raise EditflowError(f"{name}: memory plans cover the FLUX family so far (this model is {family}); "
                            "run with --memory off")


# -- the terms ------------------------------------------------------------------------------
def transformer_weight_bytes(parts: Parts, quantize: str | None) -> int:
    """``W_t``: at the compute dtype; quantized linear weights at ``q`` bytes plus their scales."""
    if parts.gguf_bytes is not None:
        return parts.gguf_bytes
    if quantize is None:
        return parts.transformer_bytes
    if quantize not in QUANT_BYTES:
        raise ParameterError(f"unknown quantization {quantize!r}: use one of {', '.join(QUANT_BYTES)}")
    b = parts.dtype_bytes
    rest = parts.transformer_bytes - parts.linear_params * b
    scales = parts.linear_out * b if quantize in ("int8", "fp8") else math.ceil(parts.linear_params / 64) * 4
    return rest + int(parts.linear_params * QUANT_BYTES[quantize]) + scales


def activation_bytes(parts: Parts, rows: int, image_tokens: int, quantize: str | None = None) -> int:
    """``A(r) = r S D b K_b + [r > 1] r T J b + 2 S d_h 4`` (+ the largest linear weight dequantized,
    when quantized)."""
    b = parts.dtype_bytes
    s = parts.text_tokens + image_tokens
    a = rows * s * parts.width * b * K_ACTIVATIONS[b] + 2 * s * parts.head_dim * 4
    if rows > 1:
        a += rows * parts.text_tokens * parts.joint_dim * b
    if quantize is not None or parts.gguf_bytes is not None:
        a += parts.largest_linear * b
    return a


def text_activation_bytes(parts: Parts) -> int:
    """``max((2 d + 3 i) T_e b + 2 h T_e^2 b, T_e d (2 b + 8))``, the largest over the text encoders."""
    b = parts.dtype_bytes
    return max((max((2 * d + 3 * i) * t * b + 2 * h * t * t * b, t * d * (2 * b + 8))
                for t, d, h, i in parts.text_encoder_shapes), default=0)


def vae_activation_bytes(parts: Parts, height: int, width: int) -> tuple[int, int]:
    """(encode, decode): ``(3 + L) c_0 H W b`` and ``max(2 c_1 + 2 c_0, (4 + L) c_0) H W b + 2 3 H W 4``."""
    c = parts.vae_channels
    c0, c1 = c[0], c[1] if len(c) > 1 else c[0]
    pixels = height * width * parts.dtype_bytes
    image = 2 * 3 * height * width * 4
    return (3 + parts.vae_layers) * c0 * pixels, max(2 * c1 + 2 * c0, (4 + parts.vae_layers) * c0) * pixels + image


def layer_names(parts: Parts) -> list[str]:
    return [f"double.{i}" for i in range(parts.double)] + [f"single.{j}" for j in range(parts.single)]


def store_bytes(parts: Parts, method: str, p, image_tokens: int, foreground_tokens: int) -> tuple[int, str]:
    """The feature store's peak and a few words on what it holds (0 for methods without one)."""
    b, d, s = parts.dtype_bytes, parts.width, parts.text_tokens + image_tokens
    if method in ("rf_edit", "fireflow"):
        from .methods.rf_edit import shared_of

        shared = len(shared_of(layer_names(parts), p.share_from))
        entries = 2 * p.inject if method == "rf_edit" else p.inject + (1 if p.inject == p.steps else 0)
        return entries * shared * s * d * b, f"V of {shared} layers x {entries} calls"
    if method == "kv_edit":
        steps = 1 if (p.replay or p.inversion_free) else p.steps - p.skip
        layers = parts.double + parts.single
        background = image_tokens - foreground_tokens
        return 2 * steps * layers * background * d * b, f"K/V of {layers} layers x {steps} steps x {background} tokens"
    return 0, ""


def usable_bytes(budget: int, card: bool = True) -> int:
    """What a budget leaves for torch's tensors: 98% of it, less the workspaces and, for a card's
    size (``card``), the CUDA context."""
    return int(budget * (1 - FRAGMENTATION)) - WORKSPACE_BYTES - (CONTEXT_BYTES if card else 0)


def parse_bytes(text: str) -> int:
    """``"24GB"``, ``"24 GiB"``, ``"24"`` (GiB), ``"500MB"`` as bytes (GB read as GiB, as cards are sold)."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([gGmM]i?[bB]?)?\s*", str(text))
    if not m or float(m.group(1)) <= 0:
        raise ParameterError(f"a memory size is a positive number of GiB like 24, 24GB or 500MB, got {text!r}")
    unit = (m.group(2) or "g")[0].lower()
    return int(float(m.group(1)) * (GIB if unit == "g" else 2**20))


# -- the plan -------------------------------------------------------------------------------
def plan(parts: Parts, method: str, height: int, width: int, params: dict | None = None, quantize: str | None = None,
         budget: int | None = None, mask_fraction: float = 0.25, n_subjects: int = 0, auto_mask: bool = False,
         card: bool = True, host_budget: int | None = None) -> Plan:
    """The memory plan of ``method`` (with ``params`` overrides) at ``height x width`` on ``parts``.
    ``mask_fraction``: the share of image tokens a mask marks (KV-Edit's store holds the rest);
    ``auto_mask``: the mask comes from the model (one call of ``2 DRAWS`` rows). ``budget``: GPU
    bytes (``card``: a card's whole size, else free memory); ``host_budget``: host bytes, if known."""
    from .masks import DRAWS
    from .methods import get_method

    _require_flux(parts.family, parts.name)
    if not 0 <= mask_fraction <= 1:
        raise ParameterError(f"the mask fraction is in [0, 1], got {mask_fraction}")
    m = get_method(method)
    p = m.params.for_family(parts.family, **(params or {}))
    f = parts.vae_factor * 2
    if height % f or width % f or height <= 0 or width <= 0:
        raise ParameterError(f"size {width}x{height} is not a positive multiple of {f}")
    n = (height // f) * (width // f)
    rows = max(m.rows_per_call(p, n_subjects), 2 * DRAWS if auto_mask else 0)
    weights = {"transformer": transformer_weight_bytes(parts, quantize)}
    weights.update({name: nbytes for name, nbytes, _ in parts.text_encoders})
    weights["vae"] = parts.vae_bytes
    act = activation_bytes(parts, rows, n, quantize)
    n_prompts = 2 + n_subjects + (1 if method == "uniedit" and not p.invert_with_source_prompt else 0)
    prompts = n_prompts * parts.text_tokens * parts.joint_dim * parts.dtype_bytes
    act_te = text_activation_bytes(parts) + prompts // n_prompts * (n_prompts - 1)
    vae_enc, vae_dec = vae_activation_bytes(parts, height, width)
    act_vae = max(vae_enc, vae_dec)
    store, detail = store_bytes(parts, method, p, n, round(mask_fraction * n))
    latents = LATENT_TENSORS * rows * n * 4 * parts.latent_channels * 4
    result = Plan(parts, method, (width, height), rows, quantize, budget, card, host_budget, weights, act, act_te,
                  act_vae, store, detail, p, prompts, latents)
    w_t, w_vae = weights["transformer"], parts.vae_bytes
    w_te = sum(nbytes for _, nbytes, _ in parts.text_encoders)
    leaf_te = max((leaf for _, _, leaf in parts.text_encoders), default=0)
    w_te_rest = w_te - max((nbytes for _, nbytes, _ in parts.text_encoders), default=0)
    total = w_t + w_te + w_vae
    vae = act_vae + prompts  # the prompt cache keeps the encoded prompts
    quantized = quantize is not None or parts.gguf_bytes is not None
    offloads = (True,) if getattr(p, "offload", False) else (False, True) if store else (False,)
    for offload in offloads:
        loop = act + prompts + latents + (0 if offload else store)
        host_store = store if offload else 0
        peaks = {
            "gpu": (w_t + w_te + w_vae + max(act_te, vae, loop), host_store),
            "text-encoders-offload": (w_t + w_vae + max(leaf_te + act_te, vae, loop), w_te + host_store),
            "model-offload": (w_vae + max(w_te + act_te, w_t + w_te_rest + loop, w_te_rest + vae), total + host_store),
            "sequential-offload": (parts.largest_leaf_bytes + max(act_te, vae, loop), total + host_store),
        }
        result.placements += [Placement(name, offload, *peaks[name]) for name in PLACEMENTS
                              if not (quantized and name == "sequential-offload")]
    order = {name: i for i, name in enumerate(PLACEMENTS)}
    result.placements.sort(key=lambda pl: (order[pl.name], pl.store_offload))
    if budget is not None:
        for pl in result.placements:
            pl.fits = pl.gpu_peak <= usable_bytes(budget, card) and (host_budget is None or pl.host <= host_budget)
    return result


# -- measuring ------------------------------------------------------------------------------
class TensorBytes:
    """Counts the bytes of live tensors allocated inside it, and their peak (``peak``), on any device:
    torch's CPU allocator keeps no statistics, so this stands in for ``max_memory_allocated`` there.

    Every operator's output storage that none of its inputs shares is counted until the storage is
    freed (a weak reference tells). Tensors that existed before (weights) are not counted: add them.
    Not seen: a storage grown in place (``out=`` into a smaller tensor, ``resize_``) counts at its
    first size, and kernels' private workspaces (cuBLAS, cuDNN) not at all.

    >>> with TensorBytes() as counted:
    ...     editflow.edit(model, image, "a cat", "a dog")
    >>> counted.peak
    """

    def __init__(self):
        from torch.utils._python_dispatch import TorchDispatchMode

        counter = self

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                counter._count(args, kwargs, out)
                return out

        self._mode = Mode()
        self._live: dict[int, int] = {}
        self.current = 0
        self.peak = 0

    def _count(self, args, kwargs, out) -> None:
        import weakref

        from torch.utils._pytree import tree_flatten

        inputs = {_storage_key(a) for a in tree_flatten((args, kwargs))[0] if isinstance(a, torch.Tensor)}
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor):
                continue
            key = _storage_key(t)
            if key is None or key in inputs or key in self._live:
                continue
            storage = t.untyped_storage()
            self._live[key] = storage.nbytes()
            self.current += storage.nbytes()
            weakref.finalize(storage, self._free, key)
        self.peak = max(self.peak, self.current)

    def _free(self, key: int) -> None:
        self.current -= self._live.pop(key, 0)

    def __enter__(self) -> "TensorBytes":
        self._mode.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._mode.__exit__(*exc)


def _storage_key(t: torch.Tensor) -> int | None:
    try:
        storage = t.untyped_storage()
    except (RuntimeError, NotImplementedError, TypeError):  # tensor subclasses without one storage
        return None
    return storage.data_ptr() if storage.nbytes() else None


# -- applying a plan ------------------------------------------------------------------------
def host_available_bytes() -> int | None:
    """``MemAvailable`` of /proc/meminfo (None where there is none)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def check_memory(memory: str) -> str | int:
    """``--memory`` read: ``"auto"``, ``"off"`` or a size in bytes (a one-line error otherwise)."""
    memory = str(memory).strip().lower()
    return memory if memory in ("auto", "off") else parse_bytes(memory)


def budget_for(memory: str, device: torch.device) -> int | None:
    """The budget ``--memory`` names on ``device``: ``auto`` = the GPU's free memory (CUDA) or the
    host's available memory (CPU); a size; ``off`` = None (no plan)."""
    memory = check_memory(memory)
    if memory == "off":
        return None
    if memory == "auto":
        if device.type == "cuda":
            return int(torch.cuda.mem_get_info(device)[0])
        return host_available_bytes()
    return memory


def _cached(hub_id: str) -> bool:
    """Whether a hub model's index is in the local Hugging Face cache."""
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(hub_id, "model_index.json"), str)


def plan_for_edit(name: str, method: str, size: tuple[int, int], params: dict, device: torch.device, memory: str,
                  dtype_bytes: int, quantize: str | None = None, mask_fraction: float = 0.0,
                  n_subjects: int = 0, transformer_file=None, auto_mask: bool = False) -> Plan | None:
    """The plan ``editflow edit --memory`` applies, made before the model loads, or None where there
    is none to make (``--memory off``, a built-in model, a model outside the FLUX family with
    ``--memory auto``, a hub id other than FLUX.1's, a FLUX.1 model not downloaded yet). Raises one
    line when nothing fits."""
    from .models.zoo import ZOO, read_model_index

    budget = budget_for(memory, device)
    entry = ZOO.get(name)
    if budget is None or (entry is not None and entry.builtin):
        return None
    auto = str(memory).strip().lower() == "auto"
    local = Path(name).expanduser()
    hub = next((e.hub_id for n, e in ZOO.items() if n in KNOWN_ARCHITECTURES and name in (n, e.hub_id)), None)
    if hub is not None:
        if not _cached(hub):
            return None  # not downloaded: loading says how to get it, which matters first
        flux = True
    elif local.is_dir():
        flux = read_model_index(local)["_class_name"] == "FluxPipeline"
    elif auto:
        return None  # a hub id (its configs are not here before it downloads), or another zoo family
    else:
        flux = False
    if not flux:
        if auto:
            return None
        raise ParameterError(f"--memory {memory}: memory plans cover FLUX.1 zoo names and local FLUX folders so far; "
                             "use --memory off")
    cuda = device.type == "cuda"
    parts = parts_of_name(name, dtype_bytes, transformer_file)
    result = plan(parts, method, size[1], size[0], params, quantize, budget, mask_fraction, n_subjects, auto_mask,
                  card=not auto, host_budget=host_available_bytes() if cuda else None)
    if not cuda:  # one memory: all of it in the host's, or nothing
        one = result.placements[0]
        one.gpu_peak, one.host = one.gpu_peak + one.host, 0
        one.fits = one.gpu_peak <= usable_bytes(budget, card=False)
        result.placements = [one]
    if result.chosen is None:
        usable = usable_bytes(budget, card=not auto and cuda)
        need = min(pl.gpu_peak for pl in result.placements)
        if cuda and need <= usable:
            raise EditflowError(f"{method} on {name} at {size[0]}x{size[1]} fits the GPU only by keeping more in host "
                                f"memory than the {result.host_budget / GIB:.1f} GiB available: {result.advice()} "
                                "(`editflow plan` shows the terms; --memory off runs anyway)")
        raise EditflowError(f"{method} on {name} at {size[0]}x{size[1]} needs at least {need / GIB:.1f} GiB of "
                            f"{'GPU' if cuda else 'host'} memory and {usable / GIB:.1f} GiB is usable: "
                            f"{result.advice(cuda)} (`editflow plan` shows the terms; --memory off runs anyway)")
    return result


SHORT = {"gpu": "GPU", "text-encoders-offload": "TE off", "model-offload": "model off",
         "sequential-offload": "sequential"}


def readme_table(parts: Parts, sizes=(512, 1024), budgets_gib=(24, 48, 80), quantizations=(None, "int8", "nf4"),
                 mask_fraction: float = 0.25) -> str:
    """Every method's all-on-GPU peak and the placement picked on each budget, per size and
    quantization (the README's *Memory and hardware* table)."""
    from .methods import METHODS

    head = ["method", "size", "store GiB"]
    for q in quantizations:
        label = q or parts_dtype_name(parts)
        head += [f"{label}: all on GPU GiB"] + [f"{label}: {g} GB" for g in budgets_gib]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for size in sizes:
        for name in sorted(METHODS):
            if parts.family not in METHODS[name].params.FAMILIES:
                continue
            store = plan(parts, name, size, size, mask_fraction=mask_fraction).store
            cells = [name, str(size), f"{store / GIB:.1f}"]
            for q in quantizations:
                plans = [plan(parts, name, size, size, None, q, g * GIB, mask_fraction) for g in budgets_gib]
                cells.append(f"{plans[0].peak_all_on_device / GIB:.1f}")
                for pl in plans:
                    chosen = pl.chosen
                    cells.append("none fits" if chosen is None
                                 else SHORT[chosen.name] + (" + store CPU" if chosen.store_offload else ""))
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def parts_dtype_name(parts: Parts) -> str:
    return {2: "bf16", 4: "fp32"}.get(parts.dtype_bytes, f"{parts.dtype_bytes} B")
