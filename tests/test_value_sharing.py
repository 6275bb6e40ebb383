"""RF-Edit and FireFlow editing: what is stored, what is replaced, NFE, and reductions."""

import pytest
import torch

from editflow.attention import AttentionControl
from editflow.attention.sharing import ValueSharing
from editflow.methods import EditRequest, get_method
from editflow.methods.rf_edit import shared_layers


def _run(model, source_latent, name, src="a red circle", tar="a red circle", **kw):
    x, grid = source_latent
    m = get_method(name)
    p = m.params.for_family("flux", **kw)
    req = EditRequest(x, grid, src, tar)
    before = model.counter.total.copy()
    out = m.run(model, req, p, torch.Generator().manual_seed(0))
    return out, req.stats, model.counter.total - before, m.expected_nfe(p)


def test_shared_layers_follow_the_reference_fraction(tiny):
    class Fake:
        def attention_layers(self):
            return [f"double.{i}" for i in range(19)] + [f"single.{j}" for j in range(38)]

    assert shared_layers(Fake(), 20 / 38) == {f"single.{j}" for j in range(20, 38)}  # FLUX.1: blocks 20-37
    assert shared_layers(Fake(), 0.0) == {f"single.{j}" for j in range(38)}
    assert shared_layers(tiny, 0.5) == {"single.1"} and shared_layers(tiny, 1.0) == set()


@pytest.mark.parametrize("name,solver", [("rf_edit", "rf_solver"), ("fireflow", "fireflow")])
def test_no_injection_is_plain_inversion_with_the_same_solver(tiny, source_latent, name, solver):
    out, stats, _, _ = _run(tiny, source_latent, name, tar="a blue square", steps=5, inject=0)
    plain, _, _, _ = _run(tiny, source_latent, "ode_inversion", tar="a blue square", steps=5, solver=solver,
                          source_guidance=1.0, target_guidance=2.0)
    assert torch.equal(out, plain)
    assert stats["shared_value_calls"] == 0 and stats["feature_store_peak_bytes"] == 0


@pytest.mark.parametrize("steps,inject", [(4, 1), (4, 4), (6, 2)])
def test_replacements_and_nfe_match_the_formulas(tiny, source_latent, steps, inject):
    layers = len(shared_layers(tiny, 0.0))
    _, stats, nfe, expected = _run(tiny, source_latent, "rf_edit", tar="a blue square", steps=steps, inject=inject,
                                   share_from=0.0)
    assert nfe == expected and nfe.calls == 4 * steps
    assert stats["shared_value_calls"] == 2 * inject * layers  # both calls of each injected step
    _, stats, nfe, expected = _run(tiny, source_latent, "fireflow", tar="a blue square", steps=steps, inject=inject)
    assert nfe == expected and nfe.calls == 2 * (steps + 1)
    assert stats["shared_value_calls"] == inject * layers  # midpoint calls only (the t = 1 call has no partner)
    assert stats["feature_store_peak_bytes"] > 0


def test_editing_steps_reuse_the_values_of_the_inversion_step_over_the_same_interval(tiny, source_latent):
    """Record V before and after replacement: every replaced V is, bit for bit, the V the
    inversion computed in the step over the same interval and the same call of that step."""
    x, grid = source_latent
    seen = []

    class Spy(ValueSharing):
        def qkv(self, ctx, q, k, v, mask):
            q2, k2, v2, mask2 = super().qkv(ctx, q, k, v, mask)
            seen.append((ctx.phase, self.interval, ctx.t, ctx.layer, v2.clone()))
            return q2, k2, v2, mask2

    import editflow.methods.rf_edit as rf_edit_module

    original = rf_edit_module.ValueSharing
    rf_edit_module.ValueSharing = Spy
    try:
        _run(tiny, source_latent, "rf_edit", tar="a blue square", steps=3, inject=3, share_from=0.0)
    finally:
        rf_edit_module.ValueSharing = original
    inverted = [s for s in seen if s[0] == "invert"]
    edited = [s for s in seen if s[0] == "edit"]
    assert len(inverted) == len(edited) == 3 * 2 * 2  # steps x calls x layers
    by_key = {}
    for phase, interval, t, layer, v in inverted:
        by_key.setdefault((interval, layer), []).append(v)
    for phase, interval, t, layer, v in edited:
        assert any(torch.equal(v, w) for w in by_key[(interval, layer)])


def test_equal_prompts_with_injection_everywhere_stay_close_to_plain_reconstruction(tiny, source_latent):
    """In latent terms sharing does not beat plain RF-Solver (tiny: within 5%; the first,
    world-version-1 shapes model at 25 steps: 1.85x the latent error), because Q/K and V then come from different states; see the
    RF-Edit docstring. This guards the measured bound; the image-level test is below."""
    x, _ = source_latent
    shared, _, _, _ = _run(tiny, source_latent, "rf_edit", steps=8, inject=8, source_guidance=2.0, target_guidance=2.0)
    plain, _, _, _ = _run(tiny, source_latent, "ode_inversion", steps=8, solver="rf_solver", source_guidance=2.0,
                          target_guidance=2.0)
    e_shared, e_plain = (shared - x).pow(2).mean().sqrt(), (plain - x).pow(2).mean().sqrt()
    assert e_shared < 1.1 * e_plain, (e_shared, e_plain)


def test_offloaded_store_gives_the_same_edit(tiny, source_latent):
    a, _, _, _ = _run(tiny, source_latent, "fireflow", tar="a blue square", steps=4, inject=2)
    b, _, _, _ = _run(tiny, source_latent, "fireflow", tar="a blue square", steps=4, inject=2, offload=True)
    assert torch.equal(a, b)


def test_base_control_is_the_identity(tiny, source_latent):
    x, grid = source_latent
    cond = tiny.encode_prompt("a cat")
    torch.testing.assert_close(tiny.velocity(x, 0.4, cond, grid, control=AttentionControl()),
                               tiny.velocity(x, 0.4, cond, grid), rtol=0, atol=1e-5)


def test_rf_edit_reconstructs_images_better_than_plain_rf_solver_on_the_shapes_model():
    """Equal prompts, injection on all 25 steps, the reference's guidances (1 for the inversion, 2
    for the regeneration): on the guidance-distilled shapes model the two passes follow different
    fields, and sharing the inversion's values pulls the regeneration back to the source. Scored
    against the VAE round trip, so that the VAE's own error does not cap both sides (measured over
    these 4 held-out scenes: 40.99 vs 36.48 dB mean, sharing ahead on each by 1.9 to 6.0 dB)."""
    import numpy as np
    from PIL import Image

    import editflow
    from editflow import world
    from editflow.images import to_pil, to_tensor
    from editflow.train.data import HELD_OUT_NAMESPACE, scene_rng

    model = editflow.load_model("shapes")
    shared, plain = [], []
    for i in range(4):
        scene = world.sample_scene(scene_rng(HELD_OUT_NAMESPACE, 7, i), version=2, split="held_out")
        image, caption = world.render(scene, 64), world.caption(scene)
        roundtrip = np.asarray(to_pil(model.decode(model.encode_image(to_tensor(Image.fromarray(image))),
                                                   model.grid(64, 64))))
        a = editflow.edit(model, Image.fromarray(image), caption, caption, method="rf_edit", seed=0, inject=25)
        b = editflow.edit(model, Image.fromarray(image), caption, caption, method="ode_inversion", seed=0,
                          solver="rf_solver", steps=25, source_guidance=1.0, target_guidance=2.0)
        assert a.nfe == b.nfe and a.stats["shared_value_calls"] > 0
        shared.append(world.psnr(np.asarray(a.image), roundtrip))
        plain.append(world.psnr(np.asarray(b.image), roundtrip))
    assert np.mean(shared) >= np.mean(plain) + 2.0 and min(np.subtract(shared, plain)) > 0, (shared, plain)


def test_at_the_inversion_state_the_shared_call_reproduces_the_inversion_velocity(tiny, source_latent):
    """If the editing call sees the very state the inversion call saw (same prompt, time, call of
    the step), replacing V changes nothing: the keying pairs the right calls."""
    from editflow.attention import FeatureStore

    x, grid = source_latent
    cond = tiny.encode_prompt("a cat")
    with FeatureStore() as store:
        control = ValueSharing(store, shared_layers(tiny, 0.0), -float("inf"))
        control.phase = "invert"
        control.begin_step(0.2, 0.5)
        first = tiny.velocity(x, 0.2, cond, grid, control=control)
        z_mid = x + 0.15 * first
        mid = tiny.velocity(z_mid, 0.35, cond, grid, control=control)
        control.phase = "edit"
        control.begin_step(0.5, 0.2)  # the editing step over the same interval
        again = tiny.velocity(z_mid, 0.35, cond, grid, control=control)
        assert control.replaced == len(control.layers)
        torch.testing.assert_close(again, mid, rtol=0, atol=1e-6)
        other = tiny.velocity(z_mid + 0.3, 0.35, cond, grid, control=control)  # another state: V from the stored one
        assert (other - tiny.velocity(z_mid + 0.3, 0.35, cond, grid)).abs().max() > 1e-4
