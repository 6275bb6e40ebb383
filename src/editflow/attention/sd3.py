"""Attention processors for SD3 / SD3.5 joint-attention blocks with hook points.

Each processor recomputes what diffusers' ``JointAttnProcessor2_0`` computes:

    q, k, v = W_q h, W_k h, W_v h;   text rows from add_{q,k,v}_proj
    q, k    = norm(q), norm(k)       (SD3.5's RMSNorm; SD3-medium has none)
    -> control.qkv(ctx, q, k, v, mask)   on [text; image]: editflow's layout for every family
    o       = softmax(q k^T / sqrt(d)) v
    image out = W_out o_img;  text out = W_add_out o_txt (not in the last block, "context_pre_only")

diffusers orders the joint sequence [image; text]; attention is the same for any order of the
keys, so the hook sees [text; image] as with FLUX and the outputs are split back (equal to
diffusers' to float rounding, tested to 1e-5). No RoPE: SD3 adds its position embedding at the
patch embedding. Layers are named ``joint.{i}`` after ``transformer_blocks``. SD3.5-medium's extra
image-only self-attention (``attn2`` of its dual-attention blocks) is left alone.

Under classifier-free guidance the adapter runs [unconditional; conditional] rows in one call;
each half is attended separately, hooks included, so a control sees the rows as the method
laid them out, twice per call (stateless controls only: one that stores features would store
each layer twice); ``ctx.unconditional`` is true in the negative-prompt half.
"""

from __future__ import annotations

import torch

from .context import AttentionControl
from .flux import CallInfo, controlled_attention, swapped


class SD3ControlProcessor:
    """Drop-in for diffusers' JointAttnProcessor2_0 that calls an :class:`AttentionControl`."""

    def __init__(self, layer: str, control: AttentionControl, info: CallInfo, halves: int = 1):
        self.layer, self.control, self.info, self.halves = layer, control, info, halves
        self.backend = None  # the replaced processor's diffusers attention backend (set by swapped)

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, *args, **kwargs):
        heads = lambda x: x.unflatten(-1, (attn.heads, -1))  # noqa: E731
        q, k, v = heads(attn.to_q(hidden_states)), heads(attn.to_k(hidden_states)), heads(attn.to_v(hidden_states))
        if attn.norm_q is not None:
            q = attn.norm_q(q)
        if attn.norm_k is not None:
            k = attn.norm_k(k)
        joint = encoder_hidden_states is not None
        if joint:
            e = encoder_hidden_states
            eq, ek, ev = heads(attn.add_q_proj(e)), heads(attn.add_k_proj(e)), heads(attn.add_v_proj(e))
            if attn.norm_added_q is not None:
                eq = attn.norm_added_q(eq)
            if attn.norm_added_k is not None:
                ek = attn.norm_added_k(ek)
            q, k, v = torch.cat([eq, q], dim=1), torch.cat([ek, k], dim=1), torch.cat([ev, v], dim=1)
        attend = lambda *qkv, uncond=False: controlled_attention(  # noqa: E731
            self.control, self.layer, self.info, *qkv, attention_mask, unconditional=uncond, backend=self.backend)
        if self.halves == 1:
            out = attend(q, k, v)
        else:  # each CFG half ([negative; prompt]) is a whole controlled attention call of the method's rows
            out = torch.cat([attend(*(x.chunk(self.halves)[h] for x in (q, k, v)), uncond=h == 0)
                             for h in range(self.halves)])
        out = out.flatten(2, 3).to(q.dtype)
        if not joint:
            return attn.to_out[1](attn.to_out[0](out))
        n_text = encoder_hidden_states.shape[1]
        text, image = out[:, :n_text], out[:, n_text:]
        if not attn.context_pre_only:
            text = attn.to_add_out(text)
        return attn.to_out[1](attn.to_out[0](image.contiguous())), text


def named_blocks(transformer) -> list[tuple[str, object]]:
    """``(joint.{i}, block)`` for SD3's ``transformer_blocks``, in forward order."""
    return [(f"joint.{i}", b) for i, b in enumerate(transformer.transformer_blocks)]


def installed(transformer, control: AttentionControl, info: CallInfo, halves: int = 1):
    """Swap every joint-attention processor for a controlled one, for one call."""
    layers = [(name, block.attn) for name, block in named_blocks(transformer)]
    return swapped(layers, lambda name: SD3ControlProcessor(name, control, info, halves))
