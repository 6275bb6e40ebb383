"""The attention-control layer: parity with diffusers, hook coverage, restoration, the store."""

import pytest
import torch

from editflow.attention import AttentionControl, FeatureStore, time_key
from editflow.attention.flux import attention_layers


def _inputs(model, source_latent, rows=2):
    x, grid = source_latent
    z = torch.cat([x] * rows) + 0.3 * torch.randn(rows, *x.shape[1:], generator=torch.Generator().manual_seed(0))
    return z, grid, model.encode_prompt("a red circle on a blue background")


class Recorder(AttentionControl):
    def __init__(self):
        super().__init__()
        self.seen = []

    def qkv(self, ctx, q, k, v, mask):
        self.seen.append((ctx.layer, ctx.t, ctx.n_text, tuple(q.shape), ctx.phase))
        return q, k, v, mask


@pytest.mark.parametrize("fixture", ["tiny", "tiny_schnell"])
def test_identity_control_reproduces_diffusers_exactly(request, source_latent, fixture):
    model = request.getfixturevalue(fixture)
    z, grid, cond = _inputs(model, source_latent)
    reference = model.velocity(z, 0.6, cond, grid, guidance=2.0)
    rec = Recorder()
    controlled = model.velocity(z, 0.6, cond, grid, guidance=2.0, control=rec)
    assert (controlled - reference).abs().max().item() < 1e-5
    names = [name for name, _ in attention_layers(model.transformer)]
    assert [s[0] for s in rec.seen] == names  # every layer, in forward order
    assert any(n.startswith("double.") for n in names) and any(n.startswith("single.") for n in names)
    n_text = cond.embeds.shape[1]
    for layer, t, nt, shape, phase in rec.seen:
        assert t == pytest.approx(0.6) and nt == n_text and phase == "edit"
        assert shape[0] == 2 and shape[1] == n_text + grid.num_tokens  # joint sequence, text first


def test_each_layer_type_is_hooked_where_its_output_depends_on_it(tiny, source_latent):
    """Zeroing V in one double or one single layer changes the velocity: the hook is live there."""
    z, grid, cond = _inputs(tiny, source_latent, rows=1)
    base = tiny.velocity(z, 0.5, cond, grid)

    class ZeroV(AttentionControl):
        def __init__(self, layer):
            super().__init__()
            self.layer = layer

        def wants(self, layer):
            return layer == self.layer

        def qkv(self, ctx, q, k, v, mask):
            return q, k, torch.zeros_like(v), mask

    for layer in ("double.0", "single.0"):
        assert (tiny.velocity(z, 0.5, cond, grid, control=ZeroV(layer)) - base).abs().max() > 1e-4, layer


def test_processors_are_restored_after_an_error_inside_a_control(tiny, source_latent):
    z, grid, cond = _inputs(tiny, source_latent, rows=1)
    before = [attn.processor for _, attn in attention_layers(tiny.transformer)]

    class Boom(AttentionControl):
        def qkv(self, ctx, q, k, v, mask):
            if ctx.layer == "single.1":
                raise RuntimeError("boom")
            return q, k, v, mask

    with pytest.raises(RuntimeError, match="boom"):
        tiny.velocity(z, 0.5, cond, grid, control=Boom())
    after = [attn.processor for _, attn in attention_layers(tiny.transformer)]
    assert all(a is b for a, b in zip(before, after))
    tiny.velocity(z, 0.5, cond, grid)  # and the model still runs as before


def test_feature_store_counts_bytes_and_frees():
    t = torch.ones(2, 5, 4, 8)
    with FeatureStore() as store:
        store.put("invert", time_key(0.5), "single.3", "v", t)
        store.put("invert", time_key(0.25), "single.3", "v", t)
        assert store.nbytes == 2 * t.nbytes and len(store) == 2
        store.put("invert", time_key(0.5), "single.3", "v", t)  # overwrite: same bytes
        assert store.nbytes == 2 * t.nbytes
        got = store.get("invert", time_key(0.5), "single.3", "v")
        assert torch.equal(got, t) and got is not t  # a copy, not the caller's tensor
        assert store.get("edit", time_key(0.5), "single.3", "v") is None
    assert store.nbytes == 0 and len(store) == 0 and store.peak_nbytes == 2 * t.nbytes


def test_time_key_matches_midpoints_reached_from_either_side():
    a, b = 0.7371, 0.6023
    assert time_key(a + (b - a) / 2) == time_key(b + (a - b) / 2)
    assert time_key(0.5) != time_key(0.5001)


def test_a_diffusers_attention_backend_is_kept_under_control_or_refused(monkeypatch):
    """set_attention_backend on the transformer: controlled calls compute attention through
    diffusers' dispatch with that backend (same result as torch's SDPA); one that cannot take the
    control's mask is one clear error, and the model's own processors come back either way."""
    import diffusers.models.attention_dispatch as dispatch
    import numpy as np
    from PIL import Image

    import editflow
    from editflow.errors import EditflowError

    image = Image.fromarray((np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8))
    mask = np.zeros((64, 64), bool)
    mask[8:40, 8:40] = True
    kw = dict(method="kv_edit", steps=6, mask=mask, attn_mask=True)
    plain = editflow.edit(editflow.load_model("tiny-flux", device="cpu"), image, "a red circle", "a blue square", **kw)
    model = editflow.load_model("tiny-flux", device="cpu")
    model.pipe.transformer.set_attention_backend("_native_math")
    seen, original = [], dispatch.dispatch_attention_fn
    monkeypatch.setattr(dispatch, "dispatch_attention_fn", lambda *a, **k: seen.append(k["backend"]) or original(*a, **k))
    math = editflow.edit(model, image, "a red circle", "a blue square", **kw)
    torch.testing.assert_close(math.latents, plain.latents, atol=1e-5, rtol=0)
    assert len(seen) == 4 * len(model.attention_layers()) and {str(b.value) for b in seen} == {"_native_math"}
    model.pipe.transformer.set_attention_backend("_native_flash")
    with pytest.raises(EditflowError, match="the _native_flash attention backend set on this transformer cannot run "
                                            "BackgroundKV's attention .*reset_attention_backend"):
        editflow.edit(model, image, "a red circle", "a blue square", **kw)
    processors = {type(block.attn.processor).__name__ for block in model.pipe.transformer.transformer_blocks}
    assert processors == {"FluxAttnProcessor"}  # restored after the failed call
