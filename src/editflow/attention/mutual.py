"""Mutual self-attention between a source and a target branch (MasaCtrl, Cao et al. 2023, as
scheduled by DiT4Edit, Feng et al. 2024), for joint text-image attention.

In the chosen layers, for the batch rows named ``"target"``, the image tokens' keys and values
are replaced by the ``"source"`` row's (content comes from the source image); before the
threshold time the image queries are replaced too (the layout is the source's), after it the
target keeps its own queries:

    t > t_S:   Attn(Q_src, [K_txt^tar; K_img^src], [V_txt^tar; V_img^src])
    t <= t_S:  Attn(Q_tar, [K_txt^tar; K_img^src], [V_txt^tar; V_img^src])

Text tokens keep the target's own q/k/v, so the target prompt still conditions the branch.
"""

from __future__ import annotations

import torch

from .context import AttentionContext, AttentionControl
from .store import time_key


class MutualAttention(AttentionControl):
    def __init__(self, layers: set[str], t_switch: float):
        super().__init__()
        self.layers = set(layers)
        self.key_switch = time_key(t_switch)
        self.rows = {"source": [0], "target": [1]}

    def wants(self, layer: str) -> bool:
        return layer in self.layers

    def qkv(self, ctx: AttentionContext, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask):
        if ctx.phase != "edit":
            return q, k, v, mask
        n, src, tar = ctx.n_text, ctx.rows["source"], ctx.rows["target"]
        k, v = k.clone(), v.clone()
        k[tar, n:], v[tar, n:] = k[src, n:], v[src, n:]
        if time_key(ctx.t) > self.key_switch:
            q = q.clone()
            q[tar, n:] = q[src, n:]
        return q, k, v, mask
