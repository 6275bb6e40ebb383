"""Extra keys and values from reference rows (Personalize Anything's "multi-modal attention"):
every row's attention also sees the active reference rows' subject image tokens.

    Attn(Q, [K; K_ref1[subject1]; K_ref2[subject2]; ...], [V; V_ref1[subject1]; ...])

The reference rows get them too (their own tokens twice); their latents are not integrated, so
only what they lend matters.
"""

from __future__ import annotations

import torch

from .context import AttentionContext, AttentionControl


class SubjectConcat(AttentionControl):
    """``subjects``: one token mask per reference row (row ``k`` holds subject ``k``).
    ``active``: the reference rows whose subject tokens are lent at this step."""

    def __init__(self, subjects: list[torch.Tensor]):
        super().__init__()
        self.subjects = [s.flatten().nonzero().flatten() for s in subjects]
        self.active: set[int] = set()

    def qkv(self, ctx: AttentionContext, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask):
        if not self.active:
            return q, k, v, mask
        ks, vs = [k], [v]
        for row in sorted(self.active):
            idx = self.on_device((row, ctx.n_text), k.device, lambda: self.subjects[row] + ctx.n_text)
            ks.append(k[row, idx].expand(k.shape[0], -1, -1, -1))
            vs.append(v[row, idx].expand(v.shape[0], -1, -1, -1))
        return q, torch.cat(ks, dim=1), torch.cat(vs, dim=1), mask
