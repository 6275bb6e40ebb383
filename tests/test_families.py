"""SD3 / SD3.5 and rectified-flow UNets (InstaFlow): parity with diffusers, conventions, invariants,
and which methods run where."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import editflow
from editflow.attention.context import AttentionControl
from editflow.errors import EditflowError, ModelNotAvailableError, ParameterError
from editflow.methods import METHODS, EditRequest, get_method
from editflow.models.unet import RectifiedUNetAdapter
from editflow.solvers.analytic import GaussianFlow


@pytest.fixture(scope="module")
def sd3():
    return editflow.load_model("tiny-sd3", device="cpu")


@pytest.fixture(scope="module")
def unet():
    return editflow.load_model("tiny-unet", device="cpu")


@pytest.fixture(scope="module")
def image():
    return Image.fromarray((np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8))


# -- SD3: parity with StableDiffusion3Pipeline ------------------------------------------------


@pytest.mark.parametrize("steps", [3, 8])
def test_sd3_schedule_is_the_pipelines(sd3, steps):
    from diffusers.pipelines.stable_diffusion_3.pipeline_stable_diffusion_3 import retrieve_timesteps

    sched = sd3.pipe.scheduler
    retrieve_timesteps(sched, steps, "cpu")
    ours = sd3.schedule(steps, sd3.grid(64, 64))
    torch.testing.assert_close(ours, sched.sigmas.float(), rtol=0, atol=1e-7)
    torch.testing.assert_close(sched.timesteps.float(), ours[:-1] * 1000, rtol=1e-6, atol=1e-4)  # timestep = 1000 t
    assert ours[-1] == 0 and bool((ours[:-1] > ours[1:]).all())


@pytest.mark.parametrize("guidance", [4.0, 1.0])  # true CFG, and none (guidance <= 1, as the pipeline)
def test_sd3_sampler_reproduces_the_pipeline(sd3, guidance):
    grid = sd3.grid(64, 96)
    noise = sd3.noise(grid, torch.Generator().manual_seed(3))
    prompt = "a large red circle in the top left"
    before = sd3.counter.total.copy()
    ours = editflow.generate(sd3, prompt, 64, 96, steps=5, guidance=guidance, latents=noise, output_type="latent")
    assert sd3.counter.total - before == editflow.NFE(5, 10 if guidance > 1 else 5)  # both CFG halves in one call
    ref = sd3.pipe(prompt, height=64, width=96, num_inference_steps=5, guidance_scale=guidance,
                   latents=sd3.unpack(noise, grid), output_type="latent").images
    assert (sd3.unpack(ours, grid) - ref).abs().max().item() < 1e-4
    assert ref.abs().max() > 0.1


def test_sd3_noise_matches_the_pipeline_for_a_seed(sd3):
    grid = sd3.grid(64, 64)
    ours = editflow.generate(sd3, "a cat", 64, 64, steps=2, seed=5, output_type="latent")
    ref = sd3.pipe("a cat", height=64, width=64, num_inference_steps=2, generator=torch.Generator().manual_seed(5),
                   output_type="latent").images
    assert (sd3.unpack(ours, grid) - ref).abs().max().item() < 1e-4


def test_sd3_hook_points_compute_what_diffusers_computes(sd3, image):
    """An idle control on every joint layer leaves the velocity as diffusers computes it, with and
    without CFG; a control sees the method's rows once per CFG half."""
    grid = sd3.grid(64, 64)
    z = sd3.noise(grid, torch.Generator().manual_seed(1), batch=2)
    cond = editflow.Cond.cat([sd3.encode_prompt("a red circle"), sd3.encode_prompt("a blue square")])
    assert sd3.attention_layers() == ["joint.0", "joint.1"]

    class Rows(AttentionControl):
        def __init__(self):
            super().__init__()
            self.calls = []

        def qkv(self, ctx, q, k, v, mask):
            self.calls.append((ctx.layer, q.shape[0], ctx.n_text, q.shape[1] - ctx.n_text))
            return q, k, v, mask

    for guidance in ([3.0, 6.0], 1.0):
        plain = sd3.velocity(z, 0.4, cond, grid, guidance=guidance)
        control = Rows()
        hooked = sd3.velocity(z, 0.4, cond, grid, guidance=guidance, control=control)
        torch.testing.assert_close(hooked, plain, rtol=1e-5, atol=1e-5)
        halves = 2 if guidance != 1.0 else 1
        assert control.calls == [(layer, 2, 333, grid.num_tokens) for layer in ("joint.0", "joint.1") for _ in range(halves)]
    assert (sd3.velocity(z, 0.4, cond, grid, guidance=[3.0, 6.0]) - plain).abs().max() > 1e-4  # CFG changes it
    procs = [b.attn.processor for b in sd3.transformer.transformer_blocks]
    assert all(type(p).__name__ == "JointAttnProcessor2_0" for p in procs)  # restored


def test_sd3_bypass_and_the_cfg_combination(sd3):
    grid = sd3.grid(64, 64)
    z = sd3.noise(grid, torch.Generator().manual_seed(2))
    cond = sd3.encode_prompt("a cat")
    u, c = sd3.velocity(z, 0.6, cond.negative, grid, guidance=1.0), sd3.velocity(z, 0.6, cond, grid, guidance=1.0)
    torch.testing.assert_close(sd3.velocity(z, 0.6, cond, grid, guidance=5.0), u + 5.0 * (c - u), rtol=1e-4, atol=1e-4)
    with sd3.bypass("joint.0"):
        assert (sd3.velocity(z, 0.6, cond, grid, guidance=1.0) - c).abs().max() > 1e-4
    torch.testing.assert_close(sd3.velocity(z, 0.6, cond, grid, guidance=1.0), c, rtol=0, atol=0)


def test_sd3_loads_from_a_saved_pipeline_folder(sd3, tmp_path):
    sd3.pipe.save_pretrained(tmp_path / "sd3")
    loaded = editflow.load_model(str(tmp_path / "sd3"), device="cpu")
    assert type(loaded).__name__ == "SD3Adapter" and loaded.family == "sd3"
    grid = sd3.grid(64, 64)
    z = sd3.noise(grid, torch.Generator().manual_seed(0))
    torch.testing.assert_close(loaded.velocity(z, 0.5, loaded.encode_prompt("a cat"), grid),
                               sd3.velocity(z, 0.5, sd3.encode_prompt("a cat"), grid), rtol=1e-5, atol=1e-5)


# -- rectified-flow UNets (InstaFlow) ----------------------------------------------------------


class InstaFlowGaussian(torch.nn.Module):
    """A stand-in UNet in InstaFlow's convention, written from its definitions alone: data
    X0 ~ N(m, s^2), noise e ~ N(0, 1), Z_s = s X0 + (1 - s) e (s = 1 at data), velocity
    E[X0 - e | Z_s = z], and the UNet's timestep input 1000 (1 - s)."""

    def __init__(self, m: float, s: float):
        super().__init__()
        self.m, self.s = m, s

    dtype = torch.float32

    def forward(self, z, timestep, encoder_hidden_states=None, return_dict=False):
        s = 1.0 - timestep.double().view(-1, *[1] * (z.dim() - 1)) / 1000.0
        var = s**2 * self.s**2 + (1 - s) ** 2
        centred = z.double() - s * self.m
        x0 = self.m + s * self.s**2 / var * centred
        eps = (1 - s) / var * centred
        return ((x0 - eps).to(z.dtype),)


def test_instaflow_convention_is_converted_at_the_boundary(unet):
    adapter = RectifiedUNetAdapter(unet.pipe, name="gaussian")
    adapter.unet = adapter.denoiser = InstaFlowGaussian(0.4, 0.5)
    flow = GaussianFlow(0.4, 0.5)  # editflow's convention, written independently in solvers.analytic
    grid = adapter.grid(64, 64)
    z = torch.randn(1, grid.num_tokens, 16, generator=torch.Generator().manual_seed(0))
    cond = adapter.encode_prompt("anything")
    for t in (0.95, 0.6, 0.3, 0.05):
        ours = adapter.velocity(z, t, cond, grid, guidance=1.0)
        torch.testing.assert_close(ours, flow.velocity(z, t).float(), rtol=1e-5, atol=1e-5)
    assert adapter.schedule(4, grid).tolist() == [1.0, 0.75, 0.5, 0.25, 0.0]  # InstaFlow's uniform steps
    # sampling with the converted velocity reaches the data distribution
    x = editflow.solvers.euler(lambda x, t: adapter.velocity(x, t, cond, grid, guidance=1.0),
                               torch.randn(1, grid.num_tokens, 16, generator=torch.Generator().manual_seed(1)),
                               adapter.schedule(200, grid))
    assert abs(x.mean().item() - 0.4) < 0.1 and abs(x.std().item() - 0.5) < 0.05


def test_stable_diffusion_pipelines_need_the_family_said(unet, tmp_path, image):
    with pytest.raises(ModelNotAvailableError, match="family='unet'"):
        editflow.wrap_pipeline(unet.pipe, name="sd15")
    assert editflow.wrap_pipeline(unet.pipe, name="sd15", family="unet").family == "unet"
    unet.pipe.save_pretrained(tmp_path / "rf")
    with pytest.raises(ModelNotAvailableError, match="family='unet'"):
        editflow.load_model(str(tmp_path / "rf"), device="cpu")
    from editflow.cli import app

    image.save(tmp_path / "in.png")
    args = ["edit", str(tmp_path / "in.png"), "-s", "a", "-t", "b", "--model", str(tmp_path / "rf"), "--steps", "3",
            "-o", str(tmp_path / "o.png"), "-q"]
    assert CliRunner().invoke(app, args).exit_code == 2
    r = CliRunner().invoke(app, [*args, "--family", "unet"])
    assert r.exit_code == 0, r.output


# -- methods on the families -------------------------------------------------------------------


@pytest.mark.parametrize("fixture", ["sd3", "unet"])
def test_flowedit_with_equal_prompts_returns_the_input(request, fixture, image):
    model = request.getfixturevalue(fixture)
    same = dict(steps=6, n_max=5, n_min=0, source_guidance=3.5, target_guidance=3.5)  # equal prompts and guidance
    out = editflow.edit(model, image, "a red circle", "a red circle", method="flowedit", **same)
    x = model.encode_image(editflow.images.to_tensor(image))
    assert torch.equal(out.latents, x.cpu())
    diff = editflow.edit(model, image, "a red circle", "a blue square", method="flowedit", **same)
    assert (diff.latents - x.cpu()).abs().max() > 1e-3


def test_unsupported_pairs_fail_before_any_computation(unet, sd3, image):
    for model, method in [(unet, "dit4edit"), (unet, "stable_flow"), (sd3, "rf_edit"), (sd3, "kv_edit")]:
        before = model.counter.total.copy()
        with pytest.raises(ParameterError, match=rf"{method} does not run on {model.family} models .*methods for "
                                                 rf"{model.family}: .*flowedit"):
            editflow.edit(model, image, "a", "b", method=method, mask=np.ones((64, 64), bool))
        assert model.counter.total == before
    supported = {f: sorted(m.name for m in METHODS.values() if f in m.params.FAMILIES) for f in ("flux", "sd3", "unet")}
    assert len(supported["flux"]) == len(METHODS) and {"flowedit", "ode_inversion", "rf_inversion"} <= set(supported["unet"])
    assert {"dit4edit", "stable_flow", "personalize_anything"} <= set(supported["sd3"]) - set(supported["unet"])


def test_every_method_for_sd3_runs_through_the_cli(tmp_path, image):
    from editflow.cli import app

    runner = CliRunner()
    src, mask = tmp_path / "in.png", tmp_path / "mask.png"
    image.save(src)
    m = np.zeros((64, 64), np.uint8)
    m[16:48, 16:48] = 255
    Image.fromarray(m).save(mask)
    extra = {"stable_flow": ["--set", "layers=joint.1"], "flowedit": ["--set", "n_max=2"]}
    ran = []
    for name, method in METHODS.items():
        if "sd3" not in method.params.FAMILIES:
            continue
        out = tmp_path / f"{name}.png"
        args = ["edit", str(src), "-s", "a red circle", "-t", "a blue square", "--model", "tiny-sd3", "--method", name,
                "--steps", "3", "-o", str(out), "-q", *extra.get(name, [])]
        if method.params.NEEDS_MASK:
            args += ["--mask", str(mask)]
        r = runner.invoke(app, args)
        assert r.exit_code == 0, (name, r.output)
        assert Image.open(out).size == (64, 64)
        ran.append(name)
    assert len(ran) >= 6
    r = runner.invoke(app, ["edit", str(src), "-s", "a", "-t", "b", "--model", "tiny-unet", "--method", "kv_edit",
                            "--mask", str(mask), "-o", str(tmp_path / "x.png")])
    assert r.exit_code == 2 and "kv_edit does not run on unet models" in r.output and not (tmp_path / "x.png").exists()
    r = runner.invoke(app, ["methods", "--model", "tiny-unet"])
    assert r.exit_code == 0 and "| flowedit | yes | yes | yes |" in r.output and "| kv_edit | yes | - | - |" in r.output
    assert "target_guidance = 16.5" in r.output and "dit4edit: not on unet models" in r.output


def test_family_defaults_come_from_the_papers():
    fe = get_method("flowedit").params
    assert (fe.for_family("sd3").steps, fe.for_family("sd3").n_max, fe.for_family("sd3").target_guidance) == (50, 33, 13.5)
    u = fe.for_family("unet")
    assert (u.steps, u.n_max, u.n_min, u.source_guidance, u.target_guidance) == (25, 21, 1, 1.5, 16.5)


def test_sd3_without_t5_and_a_negative_prompt(sd3):
    """T5 is optional (the pipeline pads zeros in its place); the negative prompt is settable and
    enters the unconditional half."""
    from diffusers import StableDiffusion3Pipeline

    from editflow.models.sd3 import SD3Adapter

    parts = {k: v for k, v in sd3.pipe.components.items() if k not in ("image_encoder", "feature_extractor")}
    pipe = StableDiffusion3Pipeline(**dict(parts, text_encoder_3=None, tokenizer_3=None))
    no_t5 = SD3Adapter(pipe, name="no-t5")
    grid = no_t5.grid(64, 64)
    noise = no_t5.noise(grid, torch.Generator().manual_seed(4))
    ours = editflow.generate(no_t5, "a cat", 64, 64, steps=3, guidance=3.0, latents=noise, output_type="latent")
    ref = pipe("a cat", height=64, width=64, num_inference_steps=3, guidance_scale=3.0,
               latents=no_t5.unpack(noise, grid), output_type="latent").images
    assert (no_t5.unpack(ours, grid) - ref).abs().max().item() < 1e-4
    assert no_t5.encode_prompt("a cat").embeds[:, 77:].abs().max() == 0  # zeros where T5 would be
    before = no_t5.velocity(noise, 0.5, no_t5.encode_prompt("a cat"), grid, guidance=3.0)
    no_t5.negative_prompt = "a dog"
    after = no_t5.velocity(noise, 0.5, no_t5.encode_prompt("a cat"), grid, guidance=3.0)
    assert no_t5.encode_prompt("a cat").negative.prompts == ("a dog",) and (after - before).abs().max() > 1e-4
    with pytest.raises(EditflowError, match="negative prompt must be a string"):
        no_t5.negative_prompt = None
