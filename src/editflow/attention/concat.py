"""Extra keys and values from a reference row (Personalize Anything's "multi-modal attention"):
every row's attention also sees the reference row's subject image tokens.

    Attn(Q, [K; K_ref[subject]], [V; V_ref[subject]])

The reference row itself gets them too (its own tokens twice); its latent is not integrated, so
only what it lends matters.
"""

from __future__ import annotations

import torch

from .context import AttentionContext, AttentionControl


class SubjectConcat(AttentionControl):
    def __init__(self, subject: torch.Tensor, reference_row: int = 0):
        super().__init__()
        self.subject = subject.flatten().nonzero().flatten()
        self.reference_row = reference_row
        self.active = False

    def qkv(self, ctx: AttentionContext, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask):
        if not self.active:
            return q, k, v, mask
        idx = self.subject.to(k.device) + ctx.n_text
        extra_k = k[self.reference_row, idx].expand(k.shape[0], -1, -1, -1)
        extra_v = v[self.reference_row, idx].expand(v.shape[0], -1, -1, -1)
        return q, torch.cat([k, extra_k], dim=1), torch.cat([v, extra_v], dim=1), mask
