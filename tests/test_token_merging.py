"""Token merging: exact at ratio 0, exact on duplicate tokens, fewer queries, used by DiT4Edit."""

import pytest
import torch

from editflow.attention.context import AttentionContext
from editflow.attention.merging import TokenMerging
from editflow.methods import EditRequest, get_method
from editflow.models.base import TokenGrid

CTX = AttentionContext("edit", None, 0.5, "single.0", 5, TokenGrid(64, 64, 4, 4))


def _attend(tm, q, k, v):
    q2, k2, v2, mask = tm.qkv(CTX, q, k, v, None)
    o = torch.nn.functional.scaled_dot_product_attention(q2.transpose(1, 2), k2.transpose(1, 2), v2.transpose(1, 2),
                                                         attn_mask=mask).transpose(1, 2)
    return tm.output(CTX, o), q2.shape[1]


def _full(q, k, v):
    return torch.nn.functional.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2),
                                                            v.transpose(1, 2)).transpose(1, 2)


def test_ratio_zero_is_exact():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 21, 2, 4, generator=g) for _ in range(3))
    out, length = _attend(TokenMerging(0.0), q, k, v)
    assert length == 21 and torch.equal(out, _full(q, k, v))


@pytest.mark.parametrize("ratio,kept", [(0.25, 12), (0.5, 8)])
def test_merging_duplicates_is_exact_and_shrinks_the_attention(ratio, kept):
    """Tokens 2i and 2i+1 identical: merging pairs changes nothing (proportional attention)."""
    g = torch.Generator().manual_seed(1)
    text = torch.randn(3, 2, 5, 2, 4, generator=g)
    pairs = torch.randn(3, 2, 8, 2, 4, generator=g).repeat_interleave(2, dim=2)  # 16 image tokens
    q, k, v = (torch.cat([t, p], dim=1) for t, p in zip(text, pairs))
    tm = TokenMerging(ratio)
    out, length = _attend(tm, q, k, v)
    assert length == 5 + kept and tm.queries_seen[-1] == (16, kept)
    torch.testing.assert_close(out, _full(q, k, v), rtol=0, atol=1e-5)


def test_dit4edit_with_merging_runs_fewer_queries_and_stays_close(tiny, source_latent):
    x, grid = source_latent
    m = get_method("dit4edit")
    plain = m.run(tiny, EditRequest(x, grid, "a cat", "a dog"), m.params.for_family("flux", steps=4), None)
    merged = m.run(tiny, EditRequest(x, grid, "a cat", "a dog"),
                   m.params.for_family("flux", steps=4, merge_ratio=0.25), None)
    assert not torch.equal(plain, merged)
    assert (merged - plain).abs().mean() < (plain - x).abs().mean()
