"""DiT4Edit: identity, NFE, what the mutual attention control swaps, restoration."""

import torch

from editflow.attention.flux import attention_layers
from editflow.attention.mutual import MutualAttention
from editflow.methods import EditRequest, get_method

D = get_method("dit4edit")


def test_equal_prompts_are_a_dpm_solver_round_trip_and_nfe_matches(tiny, source_latent):
    x, grid = source_latent
    p = D.params.for_family("flux", steps=6, source_guidance=2.0, target_guidance=2.0)
    before = tiny.counter.total.copy()
    out = D.run(tiny, EditRequest(x, grid, "a cat", "a cat"), p, None)
    assert tiny.counter.total - before == D.expected_nfe(p)  # 12 inversion calls + 6 calls of 2 rows
    ode = get_method("ode_inversion")
    q = ode.params.for_family("flux", steps=6, solver="dpmpp_2m", source_guidance=2.0, target_guidance=2.0)
    plain = ode.run(tiny, EditRequest(x, grid, "a cat", "a cat"), q, None)
    assert (out - plain).abs().max().item() < 1e-5


def test_mutual_attention_swaps_image_tokens_only_and_queries_only_early(tiny, source_latent):
    x, grid = source_latent
    cond = tiny.encode_prompt("a cat")
    seen = []

    class Spy(MutualAttention):
        def qkv(self, ctx, q, k, v, mask):
            q2, k2, v2, m2 = super().qkv(ctx, q, k, v, mask)
            seen.append((ctx.t, ctx.n_text, q, k, q2, k2, v2))
            return q2, k2, v2, m2

    z = torch.cat([x, x + 0.5])
    pair = type(cond).cat([cond, tiny.encode_prompt("a dog")])
    for t in (0.9, 0.3):
        spy = Spy({"single.1"}, t_switch=0.5)
        tiny.velocity(z, t, pair, grid, control=spy)
    (t_hi, n, q, k, q2, k2, v2), (t_lo, _, ql, kl, ql2, kl2, vl2) = seen
    assert torch.equal(k2[1, n:], k2[0, n:]) and torch.equal(v2[1, n:], v2[0, n:])
    assert torch.equal(k2[1, :n], k[1, :n])  # the target's text keys are its own
    assert torch.equal(q2[1, n:], q[0, n:])  # early: the source's queries
    assert torch.equal(ql2[1, n:], ql[1, n:]) and not torch.equal(ql2[1, n:], ql[0, n:])  # late: its own
    assert torch.equal(q2[0], q[0])  # the source row is untouched


def test_processors_are_restored_and_an_edit_changes_the_target(tiny, source_latent):
    x, grid = source_latent
    before = [a.processor for _, a in attention_layers(tiny.transformer)]
    out = D.run(tiny, EditRequest(x, grid, "a cat", "a dog"), D.params.for_family("flux", steps=4), None)
    assert all(a is b for a, b in zip(before, [a.processor for _, a in attention_layers(tiny.transformer)]))
    assert (out - x).abs().max() > 1e-2
