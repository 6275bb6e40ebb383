"""FTEdit's invariance controls (Xu et al., arXiv 2411.15843; official code Pengchengpcx/FTEdit
@442ef0f8f10829ef8e20e1628d466b374fdc71b2, ``controller/attn_norm_ctrl_sd35.py`` and
``controller/seq_aligner.py``): AdaLN invariance control and value injection.

AdaLN invariance control. The reference patches each joint block's text-stream AdaLN
(``norm1_context``): for the target row, every text token the target prompt shares with the
source prompt (aligned by token ids) takes the *source* row's modulated text feature,

    c_mod^tar[j] <- alpha_j c_mod^src[mapper_j] + (1 - alpha_j) c_mod^tar[j]

with ``alpha_j = 1`` for aligned and padding tokens, 0 for the target's new words. ``c_mod``
enters the block only as the attention's text input (its gates, MLP and the residual stream use
the unmodulated features), and the text q, k, v are per-token maps of it (projections, per-token
RMSNorm; FLUX's text RoPE is the identity at position 0, SD3 has none), so replacing the text rows
of q, k and v at the hook point is the same operation, which is what :class:`TextInvariance` does.
Value injection: for the first steps, the target row's V is the source row's, every token.
Both act on the conditional rows only (``ctx.unconditional``: the reference leaves the
negative-prompt rows alone).

The alignment is prompt-to-prompt's ``get_refinement_mapper``: a global alignment of the two
token-id sequences (match +1, mismatch -1, gap 0, ties resolved left, up, diagonal), so a changed
word is an insertion (alpha 0), never a substitution. Positions after the target's ids take the
source row's token at the same position (alpha 1): padding, or the source's own words where the
source prompt is longer, as in the reference. Differences: an inserted token's mapper is 0 here,
-1 there (alpha 0 makes it unused); ids are truncated to the segment (the reference would fail on
longer prompts).
"""

from __future__ import annotations

import torch

from .context import AttentionContext, AttentionControl

MATCH, MISMATCH, GAP = 1, -1, 0


def global_alignment(source: list[int], target: list[int]) -> list[int]:
    """For each target token, the index of the source token it is aligned with, or -1 (inserted)."""
    n, m = len(source), len(target)
    score = [[0] * (m + 1) for _ in range(n + 1)]
    move = [[0] * (m + 1) for _ in range(n + 1)]  # 1 left (target gap), 2 up (source gap), 3 diagonal
    for i in range(1, n + 1):
        score[i][0], move[i][0] = i * GAP, 2
    for j in range(1, m + 1):
        score[0][j], move[0][j] = j * GAP, 1
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            options = (score[i][j - 1] + GAP, score[i - 1][j] + GAP,
                       score[i - 1][j - 1] + (MATCH if source[i - 1] == target[j - 1] else MISMATCH))
            best = max(options)
            score[i][j], move[i][j] = best, options.index(best) + 1
    out = []
    i, j = n, m
    while i > 0 or j > 0:
        if move[i][j] == 3:
            i, j = i - 1, j - 1
            out.append(i)
        elif move[i][j] == 1:
            j -= 1
            out.append(-1)
        else:
            i -= 1
    return out[::-1]


def refinement_mapper(source: list[int], target: list[int], length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(mapper, alpha)`` over a text segment of ``length`` tokens: ``mapper[j]`` the source
    position for target position ``j`` and ``alpha[j]`` whether it is taken (aligned tokens and
    the padding after the target's ids); unaligned target tokens keep their own."""
    aligned = global_alignment(source[:length], target[:length])
    mapper = torch.arange(length)
    alpha = torch.ones(length, dtype=torch.bool)
    for j, i in enumerate(aligned):
        mapper[j] = max(i, 0)
        alpha[j] = i >= 0
    return mapper, alpha


def segment_mapper(source: list[tuple[int, list[int]]], target: list[tuple[int, list[int]]]
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`refinement_mapper` per text segment (an adapter's ``text_segments``), concatenated
    with each segment's offset."""
    mappers, alphas, offset = [], [], 0
    for (length, src_ids), (_, tar_ids) in zip(source, target):
        mapper, alpha = refinement_mapper(src_ids, tar_ids, length)
        mappers.append(mapper + offset)
        alphas.append(alpha)
        offset += length
    return torch.cat(mappers), torch.cat(alphas)


class TextInvariance(AttentionControl):
    """Rows ``source`` (0) and ``target`` (1). While ``step < invariance_steps`` the target's
    text rows of q, k, v are the source's at ``mapper`` where ``alpha``; while
    ``step - value_offset < value_steps`` the target's V is the source's (all tokens). Only in
    phase ``edit``, in ``layers``, and in conditional rows."""

    def __init__(self, layers: set[str], mapper: torch.Tensor, alpha: torch.Tensor, invariance_steps: int,
                 value_steps: int, value_offset: int = 0):
        super().__init__()
        self.layers = set(layers)
        self.mapper, self.alpha = mapper, alpha
        self.invariance_steps, self.value_steps, self.value_offset = invariance_steps, value_steps, value_offset
        self.rows = {"source": [0], "target": [1]}

    def wants(self, layer: str) -> bool:
        return layer in self.layers

    def qkv(self, ctx: AttentionContext, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask):
        if ctx.phase != "edit" or ctx.unconditional or ctx.step is None:
            return q, k, v, mask
        if ctx.n_text != self.mapper.numel():
            raise RuntimeError(f"FTEdit: the model attends to {ctx.n_text} text tokens, the alignment has "
                               f"{self.mapper.numel()}")
        src, tar = ctx.rows["source"], ctx.rows["target"]
        if ctx.step < self.invariance_steps:
            positions = self.on_device("to", q.device, lambda: self.alpha.nonzero().flatten())
            origins = self.on_device("from", q.device, lambda: self.mapper[self.alpha])
            q, k, v = q.clone(), k.clone(), v.clone()
            for x in (q, k, v):
                for s, t in zip(src, tar):
                    x[t, positions] = x[s, origins]
        if ctx.step - self.value_offset < self.value_steps:
            v = v.clone()
            v[tar] = v[src]
        return q, k, v, mask
