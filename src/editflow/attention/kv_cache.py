"""KV-Edit's background key/value cache (Zhu et al., arXiv 2502.17363).

Inverting (phase ``invert``), every layer stores K and V of the background image tokens, keyed
by the step's interval (its noisier end, as the reference stores step t_i -> t_{i+1} under
t_{i+1}); optionally with the inversion attention mask of the reference (text rows see all,
foreground rows see text + foreground, background rows see text + background).

Editing (phase ``edit``), the model runs on the text and foreground tokens only; every layer's
keys and values become ``[text; foreground (own); background (cached)]`` while the queries stay
``[text; foreground]``:

    Attn(Q_[txt; fg], [K_txt; K_fg; K_bg^cache], [V_txt; V_fg; V_bg^cache])

K is cached after RoPE; the background tokens keep their positions, so this equals the
reference's caching before RoPE and rotating again. Only background rows are kept (the reference
keeps all rows and overwrites the foreground ones; keys are unordered, so the result is the same
and the cache smaller by the foreground fraction).
"""

from __future__ import annotations

import torch

from .context import AttentionContext, StepIntervalControl
from .store import FeatureStore


class BackgroundKV(StepIntervalControl):
    """``fg``: bool ``[N]`` foreground token mask. ``queries_seen`` records the query length of
    every editing layer-call (a check that only text + foreground tokens run)."""

    def __init__(self, store: FeatureStore, fg: torch.Tensor, inversion_mask: bool = False):
        super().__init__()
        self.store = store
        self.fg = fg.bool().flatten()
        self.fg_idx = self.fg.nonzero().flatten()
        self.bg_idx = (~self.fg).nonzero().flatten()
        self.inversion_mask = inversion_mask
        self.caching = True  # False: an inversion pass that only applies the mask (KV-Edit's replay)
        self.queries_seen: list[int] = []

    def _mask(self, n_text: int, device) -> torch.Tensor:
        """Boolean ``[L, L]`` (True = may attend): text rows all; fg rows text+fg; bg rows text+bg."""

        def make():
            is_fg = torch.cat([torch.zeros(n_text, dtype=torch.bool), self.fg])
            is_text = torch.cat([torch.ones(n_text, dtype=torch.bool), torch.zeros_like(self.fg)])
            same = is_fg[:, None] == is_fg[None, :]
            return is_text[:, None] | is_text[None, :] | same

        return self.on_device(("mask", n_text), device, make)

    def qkv(self, ctx: AttentionContext, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask):
        n = ctx.n_text
        if ctx.phase == "invert":
            if self.caching:
                bg = self.on_device(("bg", n), k.device, lambda: self.bg_idx + n)
                self.store.put("invert", self.interval, ctx.layer, "k", k[:, bg])
                self.store.put("invert", self.interval, ctx.layer, "v", v[:, bg])
            if self.inversion_mask:
                mask = self._mask(n, q.device)
            return q, k, v, mask
        self.queries_seen.append(q.shape[1])
        k_bg = self.store.get("invert", self.interval, ctx.layer, "k")
        v_bg = self.store.get("invert", self.interval, ctx.layer, "v")
        if k_bg is None:
            raise RuntimeError(f"KV-Edit: no cached background K/V for layer {ctx.layer} at this step")
        k = torch.cat([k, k_bg.to(k.dtype)], dim=1)
        v = torch.cat([v, v_bg.to(v.dtype)], dim=1)
        return q, k, v, mask
