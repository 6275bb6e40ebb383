"""Token merging for attention (ToMe: Bolya et al. 2023; for diffusion: Bolya & Hoffman, "Token
Merging for Fast Stable Diffusion", 2023), as DiT4Edit's "patches merging": merge the most similar
image tokens before attention, run attention on the smaller set, unmerge after.

Bipartite soft matching on the image tokens' keys (text tokens are never merged):

    A = tokens 0, 2, 4, ...;  B = tokens 1, 3, 5, ...
    s(a) = max_b cos(k_a, k_b),  b(a) = argmax_b
    the m = floor(ratio * N) tokens of A with the highest s(a) are merged into b(a): q, k and v of
    each B token become the mean over itself and the A tokens merged into it
    attention runs on [text; A \\ merged; B]:  N - m image queries and keys, with ToMe's
    proportional attention (log of the number of tokens a key stands for added to its logits, so
    a merged pair of identical tokens attends exactly as the two did)
    unmerge: a merged token takes the output of its B token

``ratio = 0`` leaves q, k, v and the output untouched (exact); ``ratio`` is at most 1/2.
"""

from __future__ import annotations

import torch

from .context import AttentionContext, AttentionControl


class TokenMerging(AttentionControl):
    def __init__(self, ratio: float, layers: set[str] | None = None):
        super().__init__()
        if not 0.0 <= ratio <= 0.5:
            raise ValueError(f"merge ratio must be in [0, 0.5], got {ratio}")
        self.ratio, self.layers = ratio, layers
        self._plan = None
        self.queries_seen: list[tuple[int, int]] = []  # (image tokens, image queries attended)

    def wants(self, layer: str) -> bool:
        return self.layers is None or layer in self.layers

    def qkv(self, ctx: AttentionContext, q, k, v, mask):
        n = ctx.n_text
        total = q.shape[1] - n
        m = int(self.ratio * total)
        self._plan = None
        if m == 0:
            self.queries_seen.append((total, total))
            return q, k, v, mask
        if mask is not None:
            raise ValueError("token merging does not support an attention mask")
        dev = q.device
        a_idx, b_idx = torch.arange(0, total, 2, device=dev), torch.arange(1, total, 2, device=dev)
        m = min(m, len(a_idx))
        keys = torch.nn.functional.normalize(k[:, n:].flatten(2).float(), dim=-1)  # [B, N, H*D]
        score, dst = (keys[:, a_idx] @ keys[:, b_idx].transpose(1, 2)).max(dim=-1)  # [B, |A|]
        order = score.argsort(dim=-1, descending=True)
        merged, kept = order[:, :m], order[:, m:]
        dst_of_merged = dst.gather(1, merged)
        self._plan = (n, total, a_idx, b_idx, merged, kept, dst_of_merged)
        out = [self._merge(x, n, a_idx, b_idx, merged, kept, dst_of_merged) for x in (q, k, v)]
        self.queries_seen.append((total, out[0].shape[1] - n))
        # proportional attention (ToMe): a key standing for s tokens gets log(s) added to its logits
        sizes = torch.ones(q.shape[0], len(b_idx), device=dev).scatter_add(1, dst_of_merged, torch.ones_like(score[:, :m]))
        bias = torch.cat([torch.zeros(q.shape[0], n + kept.shape[1], device=dev), sizes.log()], dim=1)
        return out[0], out[1], out[2], bias[:, None, None, :].to(q.dtype)

    @staticmethod
    def _merge(x, n, a_idx, b_idx, merged, kept, dst):
        img = x[:, n:]
        a, b = img[:, a_idx], img[:, b_idx]
        heads = x.shape[2:]
        expand = lambda idx: idx[..., None, None].expand(*idx.shape, *heads)  # noqa: E731
        sums = b.float().scatter_add(1, expand(dst), a.gather(1, expand(merged)).float())
        counts = torch.ones(b.shape[:2], device=x.device).scatter_add(1, dst, torch.ones(dst.shape, device=x.device))
        b_mean = (sums / counts[..., None, None]).to(x.dtype)
        return torch.cat([x[:, :n], a.gather(1, expand(kept)), b_mean], dim=1)

    def output(self, ctx: AttentionContext, out: torch.Tensor) -> torch.Tensor:
        if self._plan is None:
            return out
        n, total, a_idx, b_idx, merged, kept, dst = self._plan
        self._plan = None
        heads = out.shape[2:]
        expand = lambda idx: idx[..., None, None].expand(*idx.shape, *heads)  # noqa: E731
        kept_out, b_out = out[:, n : n + kept.shape[1]], out[:, n + kept.shape[1] :]
        a_out = torch.empty(out.shape[0], len(a_idx), *heads, dtype=out.dtype, device=out.device)
        a_out.scatter_(1, expand(kept), kept_out)
        a_out.scatter_(1, expand(merged), b_out.gather(1, expand(dst)))
        img = torch.empty(out.shape[0], total, *heads, dtype=out.dtype, device=out.device)
        img[:, a_idx], img[:, b_idx] = a_out, b_out
        return torch.cat([out[:, :n], img], dim=1)


class ControlChain(AttentionControl):
    """Several controls at one hook: ``qkv`` in order, ``output`` in reverse order; the chain's
    phase, step and rows are what the controls see."""

    def __init__(self, *controls: AttentionControl):
        super().__init__()
        self.controls = controls

    def wants(self, layer: str) -> bool:
        return any(c.wants(layer) for c in self.controls)

    def qkv(self, ctx, q, k, v, mask):
        for c in self.controls:
            if c.wants(ctx.layer):
                q, k, v, mask = c.qkv(ctx, q, k, v, mask)
        return q, k, v, mask

    def output(self, ctx, out):
        for c in reversed(self.controls):
            if c.wants(ctx.layer):
                out = c.output(ctx, out)
        return out
