"""Attention processors for FLUX's double-stream and single-stream blocks with hook points.

Each processor recomputes what diffusers' ``FluxAttnProcessor`` computes, in the same order:

    q, k, v = W_q h, W_k h, W_v h                       (double blocks: text rows from add_*_proj)
    q, k    = RMSNorm(q), RMSNorm(k)                    per head
    [text; image]                                       (double blocks concatenate; single blocks
                                                         already receive the joint sequence)
    q, k    = RoPE(q), RoPE(k)
    -> control.qkv(ctx, q, k, v, mask)                  the hook point
    o       = softmax(q k^T / sqrt(d) + mask) v
    -> control.output(ctx, o)
    double: split o into text / image, W_out o_img, W_add_out o_txt;  single: o (the block's
    proj_out mixes it with the MLP branch)

so with no control active the output equals diffusers' own (tested to < 1e-5). Layers are named
``double.{i}`` and ``single.{j}`` after the transformer's ``transformer_blocks`` and
``single_transformer_blocks`` lists (FLUX.1: 19 and 38).

Attention backends: a backend set on the transformer with diffusers' ``set_attention_backend``
(flash, sage, xformers, ...) is kept: the controlled processors compute the attention through
diffusers' ``dispatch_attention_fn`` with that backend (the hooks see q, k, v before it). Without
one they call torch's SDPA directly, as diffusers' native backend does. A backend that cannot take
the attention mask a control adds (KV-Edit's ``attn_mask``) is one clear error.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import EditflowError
from ..models.base import TokenGrid
from .context import AttentionContext, AttentionControl


@dataclass
class CallInfo:
    """What the adapter knows about the current model call."""

    t: float
    n_text: int
    grid: TokenGrid


def _rope(x: torch.Tensor, freqs: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    from diffusers.models.embeddings import apply_rotary_emb

    return apply_rotary_emb(x, freqs, sequence_dim=1)


def controlled_attention(control: AttentionControl, layer: str, info: CallInfo, q: torch.Tensor, k: torch.Tensor,
                         v: torch.Tensor, mask: torch.Tensor | None, unconditional: bool = False,
                         backend=None) -> torch.Tensor:
    """``softmax(q k^T / sqrt(d) + mask) v`` on ``[B, L, heads, d]`` with the control's hooks
    around it (:meth:`AttentionControl.qkv` before, :meth:`AttentionControl.output` after) where
    it wants ``layer``; shared by every family's processor. ``unconditional``: the rows are a CFG
    call's negative-prompt half. ``backend``: the diffusers attention backend set on the model
    (``None``: torch's SDPA)."""
    ctx = None
    if control.wants(layer):
        ctx = AttentionContext(control.phase, control.step, info.t, layer, info.n_text, info.grid, control.rows,
                               unconditional)
        q, k, v, mask = control.qkv(ctx, q, k, v, mask)
    if backend is None:
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                             attn_mask=mask).transpose(1, 2)
    else:
        out = _dispatched(q, k, v, mask, backend, type(control).__name__)
    return control.output(ctx, out) if ctx is not None else out


def _dispatched(q, k, v, mask, backend, control: str) -> torch.Tensor:
    """diffusers' ``dispatch_attention_fn`` on ``[B, L, heads, d]`` with ``backend``; a backend that
    refuses the control's mask or inputs is one :class:`EditflowError`."""
    from diffusers.models.attention_dispatch import dispatch_attention_fn

    try:
        return dispatch_attention_fn(q, k, v, attn_mask=mask, backend=backend)
    except (ValueError, RuntimeError, NotImplementedError) as exc:
        name = getattr(backend, "value", backend)
        raise EditflowError(f"the {name} attention backend set on this transformer cannot run {control}'s attention "
                            f"({str(exc).splitlines()[0]}): call transformer.reset_attention_backend() or pick "
                            "another backend") from None


def _project(attn, hidden: torch.Tensor, added: bool):
    if getattr(attn, "fused_projections", False):
        qkv = (attn.to_added_qkv if added else attn.to_qkv)(hidden)
        return qkv.chunk(3, dim=-1)
    if added:
        return attn.add_q_proj(hidden), attn.add_k_proj(hidden), attn.add_v_proj(hidden)
    return attn.to_q(hidden), attn.to_k(hidden), attn.to_v(hidden)


class FluxControlProcessor:
    """Drop-in for diffusers' FluxAttnProcessor that calls an :class:`AttentionControl`."""

    def __init__(self, layer: str, control: AttentionControl, info: CallInfo):
        self.layer, self.control, self.info = layer, control, info
        self.backend = None  # the replaced processor's diffusers attention backend (set by swapped)

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, image_rotary_emb=None) -> torch.Tensor:
        heads = lambda x: x.unflatten(-1, (-1, attn.head_dim))  # noqa: E731
        q, k, v = (heads(x) for x in _project(attn, hidden_states, added=False))
        q, k = attn.norm_q(q), attn.norm_k(k)
        double = encoder_hidden_states is not None and attn.added_kv_proj_dim is not None
        if double:
            eq, ek, ev = (heads(x) for x in _project(attn, encoder_hidden_states, added=True))
            eq, ek = attn.norm_added_q(eq), attn.norm_added_k(ek)
            q, k, v = torch.cat([eq, q], dim=1), torch.cat([ek, k], dim=1), torch.cat([ev, v], dim=1)
        if image_rotary_emb is not None:
            q, k = _rope(q, image_rotary_emb), _rope(k, image_rotary_emb)

        out = controlled_attention(self.control, self.layer, self.info, q, k, v, attention_mask, backend=self.backend)
        out = out.flatten(2, 3).to(q.dtype)
        if not double:
            return out
        n_text = encoder_hidden_states.shape[1]
        text, image = out[:, :n_text], out[:, n_text:]
        image = attn.to_out[1](attn.to_out[0](image.contiguous()))
        return image, attn.to_add_out(text.contiguous())


def named_blocks(transformer) -> list[tuple[str, object]]:
    """``(name, block)`` for every transformer block in forward order: ``double.{i}`` for
    ``transformer_blocks``, then ``single.{j}`` for ``single_transformer_blocks`` (the layer
    names every control, method and command uses)."""
    out = [(f"double.{i}", b) for i, b in enumerate(transformer.transformer_blocks)]
    out += [(f"single.{j}", b) for j, b in enumerate(transformer.single_transformer_blocks)]
    return out


def attention_layers(transformer) -> list[tuple[str, object]]:
    """``(name, attention module)`` for every block, double-stream first."""
    return [(name, block.attn) for name, block in named_blocks(transformer)]


def _set(attn, processor) -> None:
    if hasattr(attn, "set_processor"):
        attn.set_processor(processor)
    else:
        attn.processor = processor


@contextmanager
def swapped(layers: list[tuple[str, object]], make_processor):
    """Give every ``(name, attention module)`` the processor ``make_processor(name)``, which
    inherits the replaced one's diffusers attention backend; restore the originals on exit, also
    when the forward pass raises (shared by all families)."""
    originals = [attn.processor for _, attn in layers]
    try:
        for (name, attn), original in zip(layers, originals):
            processor = make_processor(name)
            processor.backend = getattr(original, "_attention_backend", None)
            _set(attn, processor)
        yield
    finally:
        for (_, attn), proc in zip(layers, originals):
            _set(attn, proc)


def installed(transformer, control: AttentionControl, info: CallInfo):
    """Swap every FLUX attention processor for a controlled one, for one call."""
    return swapped(attention_layers(transformer), lambda name: FluxControlProcessor(name, control, info))
