"""editflow's FLUX adapter against diffusers' own FluxPipeline on the tiny pipeline."""

import pytest
import torch

import editflow


@pytest.mark.parametrize("size,steps", [((64, 64), 4), ((96, 64), 7), ((48, 112), 12)])
def test_schedule_equals_fluxpipeline(tiny, size, steps):
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift, retrieve_timesteps
    import numpy as np

    h, w = size
    grid = tiny.grid(h, w)
    sched = tiny.pipe.scheduler
    mu = calculate_shift(grid.num_tokens, sched.config.base_image_seq_len, sched.config.max_image_seq_len,
                         sched.config.base_shift, sched.config.max_shift)
    retrieve_timesteps(sched, steps, "cpu", sigmas=np.linspace(1.0, 1 / steps, steps), mu=mu)
    ours = tiny.schedule(steps, grid)
    assert ours.shape == (steps + 1,)
    torch.testing.assert_close(ours, sched.sigmas.float(), rtol=0, atol=1e-7)
    assert ours[-1] == 0 and bool((ours[:-1] > ours[1:]).all())


@pytest.mark.parametrize("fixture,guidance", [("tiny", 3.5), ("tiny_schnell", 0.0)])
def test_euler_sampler_reproduces_fluxpipeline(request, fixture, guidance):
    model = request.getfixturevalue(fixture)
    grid = model.grid(64, 96)
    noise = model.noise(grid, torch.Generator().manual_seed(7))
    prompt = "a large red circle in the top left"
    ref = model.pipe(prompt, height=64, width=96, num_inference_steps=6, guidance_scale=guidance, latents=noise,
                     output_type="latent", max_sequence_length=model.max_sequence_length).images
    ours = editflow.generate(model, prompt, 64, 96, steps=6, guidance=guidance, latents=noise, output_type="latent")
    assert (ours - ref).abs().max().item() < 1e-4
    assert ref.abs().max() > 0.1  # a real trajectory, not zeros


def test_noise_matches_fluxpipeline_for_same_seed(tiny):
    grid = tiny.grid(64, 64)
    ours = editflow.generate(tiny, "a cat", 64, 64, steps=3, seed=11, output_type="latent")
    ref = tiny.pipe("a cat", height=64, width=64, num_inference_steps=3, guidance_scale=tiny.default_guidance,
                    generator=torch.Generator().manual_seed(11), output_type="latent",
                    max_sequence_length=tiny.max_sequence_length).images
    assert (ours - ref).abs().max().item() < 1e-4
    assert grid.num_tokens == ref.shape[1]


def test_batched_branches_equal_separate_calls(tiny, source_latent):
    """One call over [src, tar] rows gives the velocities of two separate calls."""
    x, grid = source_latent
    src, tar = tiny.encode_prompt("a red circle"), tiny.encode_prompt("a blue square")
    z = torch.cat([x, x + 0.1])
    before = tiny.counter.total.copy()
    both = tiny.velocity(z, 0.6, editflow.Cond.cat([src, tar]), grid, guidance=[1.5, 5.5])
    assert (tiny.counter.total - before) == editflow.NFE(calls=1, rows=2)
    a = tiny.velocity(z[:1], 0.6, src, grid, guidance=1.5)
    b = tiny.velocity(z[1:], 0.6, tar, grid, guidance=5.5)
    torch.testing.assert_close(both, torch.cat([a, b]), rtol=1e-5, atol=1e-5)
    assert (a - b).abs().max() > 1e-3  # the branches really differ


def test_encode_decode_shapes_and_packing_roundtrip(tiny):
    grid = tiny.grid(48, 80)
    lat = torch.randn(2, 16, 6, 10)
    tokens = tiny.pack(lat)
    assert tokens.shape == (2, grid.num_tokens, 64)
    torch.testing.assert_close(tiny.unpack(tokens, grid), lat, rtol=0, atol=0)
    img = tiny.decode(tokens, grid)
    assert img.shape == (2, 3, 48, 80) and img.min() >= -1 and img.max() <= 1


def test_prompt_encoding_is_cached(tiny):
    a = tiny.encode_prompt("a green star")
    assert tiny.encode_prompt("a green star") is a
    assert a.embeds.shape[1] == tiny.max_sequence_length


def test_prompt_cache_is_bounded(tiny, monkeypatch):
    monkeypatch.setattr(type(tiny), "PROMPT_CACHE_SIZE", 3)
    first = tiny.encode_prompt("prompt 0")
    for i in range(1, 5):
        tiny.encode_prompt(f"prompt {i}")
    assert len(tiny._prompt_cache) <= 3 and "prompt 0" not in tiny._prompt_cache
    again = tiny.encode_prompt("prompt 0")
    assert again is not first and torch.equal(again.embeds, first.embeds)
