"""The memory plan: its terms against what torch allocates, its placements, and the commands."""

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import editflow
from editflow import memory
from editflow.cli import app
from editflow.errors import EditflowError, ParameterError
from editflow.models.random import build_random_flux

runner = CliRunner()


@pytest.fixture(scope="module")
def shrunk():
    """FLUX.1-dev's architecture, 1 double + 2 single blocks of 1 head, random float32 weights."""
    return editflow.wrap_pipeline(build_random_flux("flux-dev", double=1, single=2, heads=1, dtype=torch.float32),
                                  name="shrunk")


def test_flux_dev_architecture_has_its_published_parameter_count():
    parts = memory.parts_of_name("flux-dev", dtype_bytes=2)
    assert parts.transformer_bytes == 2 * 11_901_408_320  # FLUX.1-dev's 11.9 B parameters
    assert (parts.double, parts.single, parts.width, parts.text_tokens) == (19, 38, 3072, 512)
    names = dict((n, b) for n, b, _ in parts.text_encoders)
    assert 4.7e9 < names["text_encoder_2"] / 2 < 4.8e9  # T5-XXL's encoder
    # quantization shrinks only the linear weights: nf4 < int8 < bf16
    bf16, int8, nf4 = (memory.transformer_weight_bytes(parts, q) for q in (None, "int8", "nf4"))
    assert nf4 < int8 < bf16 and 0.5 < int8 / bf16 < 0.55 and 0.27 < nf4 / bf16 < 0.32


def test_weights_term_counts_the_loaded_modules(shrunk):
    parts = memory.parts_of_model(shrunk)
    assert parts.transformer_bytes == sum(p.numel() * 4 for p in shrunk.pipe.transformer.parameters()) + sum(
        b.numel() * b.element_size() for b in shrunk.pipe.transformer.buffers())
    assert parts.vae_bytes == memory._module_bytes(shrunk.pipe.vae)


@pytest.mark.parametrize("method,params", [
    ("rf_edit", dict(steps=4, inject=2)),
    ("rf_edit", dict(steps=3, inject=3, share_from=0.0)),
    ("fireflow", dict(steps=3, inject=1)),
    ("fireflow", dict(steps=3, inject=3)),
    ("kv_edit", dict(steps=4, skip=1)),
    ("kv_edit", dict(steps=4, skip=1, replay=True)),
    ("kv_edit", dict(steps=4, skip=0, inversion_free=True)),
])
def test_store_formula_equals_the_stores_own_count(shrunk, method, params):
    mask = np.zeros((64, 64), dtype=np.uint8)
    mask[:16, :48] = 255  # 3 of 16 tokens
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    out = editflow.edit(shrunk, image, "a red circle", "a blue circle", method=method, mask=Image.fromarray(mask),
                        **params)
    p = memory.plan(memory.parts_of_model(shrunk), method, 64, 64, params, mask_fraction=3 / 16)
    assert p.store > 0 and p.store == out.stats["feature_store_peak_bytes"]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows,size", [(1, 256), (2, 512)])
def test_activation_term_within_15_percent_of_a_traced_call(dtype, rows, size):
    from editflow.models.base import Cond

    model = editflow.wrap_pipeline(build_random_flux("flux-dev", double=1, single=1, heads=2, dtype=dtype), name="s")
    grid = model.grid(size, size)
    z = torch.randn(rows, grid.num_tokens, 64).to(dtype)
    prompts = [model.encode_prompt(f"prompt {i}") for i in range(rows)]
    with torch.no_grad(), memory.TensorBytes() as counted:  # rows of different prompts, batched as methods do
        model.velocity(z, 0.5, Cond.cat(prompts) if rows > 1 else prompts[0], grid)
    predicted = memory.activation_bytes(memory.parts_of_model(model), rows, grid.num_tokens)
    assert abs(predicted / counted.peak - 1) < 0.15, (predicted, counted.peak)


@pytest.mark.parametrize("method", ["flowedit", "kv_edit"])
def test_whole_edit_peak_within_15_percent(shrunk, method):
    image = Image.fromarray(np.random.default_rng(1).integers(0, 256, (128, 128, 3), dtype=np.uint8))
    mask = np.zeros((128, 128), dtype=np.uint8)
    mask[:64, :64] = 255
    params = dict(steps=3) if method == "flowedit" else dict(steps=3, skip=1)
    shrunk._prompt_cache.clear()
    weights = sum(memory._module_bytes(getattr(shrunk.pipe, n)) for n in ("transformer", "vae", "text_encoder",
                                                                         "text_encoder_2"))
    with torch.no_grad(), memory.TensorBytes() as counted:
        editflow.edit(shrunk, image, "a red circle", "a blue circle", method=method, mask=Image.fromarray(mask),
                      **params)
    p = memory.plan(memory.parts_of_model(shrunk), method, 128, 128, params, mask_fraction=0.25)
    assert abs(p.peak_all_on_device / (weights + counted.peak) - 1) < 0.15


def test_vae_terms_equal_traced_encode_and_decode():
    model = editflow.load_model("tiny-flux", device="cpu", progress=False)
    parts = memory.parts_of_model(model)
    image = torch.rand(1, 3, 64, 64) * 2 - 1
    with torch.no_grad(), memory.TensorBytes() as enc:
        x = model.encode_image(image)
    with torch.no_grad(), memory.TensorBytes() as dec:
        model.decode(x, model.grid(64, 64))
    enc_pred, dec_pred = memory.vae_activation_bytes(parts, 64, 64)
    assert abs(enc.peak / enc_pred - 1) < 0.15 and abs(dec.peak / dec_pred - 1) < 0.15, (enc.peak, dec.peak)


def test_placements_cheapest_first_and_a_bigger_budget_never_costs_more():
    parts = memory.parts_of_name("flux-dev")
    order = [memory.plan(parts, "kv_edit", 1024, 1024, None, None, g * memory.GIB) for g in (16, 24, 48, 80, 200)]
    rank = [[(pl.name, pl.store_offload) for pl in order[0].placements].index(
        (p.chosen.name, p.chosen.store_offload)) for p in order]
    assert rank == sorted(rank, reverse=True) and order[-1].chosen.name == "gpu"
    assert order[-1].chosen.store_offload is False
    p = order[1]  # 24 GB: the 48 GiB K/V cache must leave the GPU
    assert p.chosen.store_offload and p.chosen.gpu_peak <= memory.usable_bytes(24 * memory.GIB)
    tiny_budget = memory.plan(parts, "flowedit", 1024, 1024, None, None, memory.GIB)
    assert tiny_budget.chosen is None and "--quantize" in tiny_budget.advice()


def test_parse_bytes():
    assert memory.parse_bytes("24GB") == memory.parse_bytes("24") == 24 * memory.GIB
    assert memory.parse_bytes("500MB") == 500 * 2**20
    for bad in ("", "-3", "lots", "0"):
        with pytest.raises(ParameterError):
            memory.parse_bytes(bad)


def test_model_offload_placement_edits_the_same(tiny):
    """diffusers' model CPU offload (what `--memory auto` may pick on a GPU) run with the CPU as
    its execution device: accelerate's hooks move each part in and out; the edit is unchanged."""
    from editflow.models.placement import offload

    image = Image.fromarray(np.random.default_rng(2).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    ref = editflow.edit(tiny, image, "a cat", "a dog", steps=3).latents
    moved = editflow.load_model("tiny-flux", device="cpu", progress=False)
    offload(moved.pipe, "model-offload", torch.device("cpu"))
    assert hasattr(moved.pipe.transformer, "_hf_hook")
    assert torch.equal(editflow.edit(moved, image, "a cat", "a dog", steps=3).latents, ref)


def test_text_encoder_offload_encodes_the_same(tiny):
    from editflow.models.placement import offload

    ref = tiny.pipe.encode_prompt("a cat", None, device=torch.device("cpu"))[0]
    moved = editflow.load_model("tiny-flux", device="cpu", progress=False)
    offload(moved.pipe, "text-encoders-offload", torch.device("cpu"))
    assert moved.pipe.text_encoder_2.device.type == "meta"  # weights stay in host memory, streamed when used
    assert torch.equal(moved.pipe.encode_prompt("a cat", None, device=torch.device("cpu"))[0], ref)


def test_plan_command_prints_terms_and_placement():
    r = runner.invoke(app, ["plan", "--model", "flux-dev", "--method", "kv_edit", "--size", "1024",
                            "--gpu-memory", "24GB"])
    assert r.exit_code == 0, r.output
    assert "| transformer weights | 22.17 |" in r.stdout
    assert "K/V of 57 layers x 24 steps x 3072 tokens" in r.stdout
    assert "budget 24.00 GiB" in r.stdout and "store in pinned CPU memory" in r.stdout.splitlines()[-1]


@pytest.mark.parametrize("args,needle", [
    (["--size", "1000"], "not a positive multiple of 16"),
    (["--size", "big"], "--size expects"),
    (["--gpu-memory", "lots"], "memory size"),
    (["--quantize", "int3"], "unknown quantization"),
    (["--model", "sd3-medium"], "architecture"),
    (["--method", "nope"], "unknown method"),
])
def test_plan_command_refuses_in_one_line(args, needle):
    r = runner.invoke(app, ["plan", *args])
    assert r.exit_code == 2 and needle in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.output


def test_edit_checks_files_and_quantization_before_planning(tmp_path):
    from editflow.models.zoo import SHAPES_DIR

    photo = tmp_path / "p.png"
    Image.new("RGB", (64, 64), (10, 20, 30)).save(photo)
    base = ["edit", str(photo), "-s", "a", "-t", "b", "--model", str(SHAPES_DIR), "-o", str(tmp_path / "o.png"),
            "--device", "cpu"]
    for extra, needle in ((["--transformer", str(tmp_path / "missing.gguf")], "does not exist"),
                          (["--quantize", "nf4"], "CUDA"), (["--memory", "lots", "--cpu-offload"], "memory size")):
        r = runner.invoke(app, base + extra)
        assert r.exit_code == 2 and needle in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.output


def test_edit_refuses_before_loading_when_nothing_fits(tmp_path):
    from editflow.models.zoo import SHAPES_DIR

    photo = tmp_path / "p.png"
    Image.new("RGB", (64, 64), (10, 20, 30)).save(photo)
    out = tmp_path / "o.png"
    r = runner.invoke(app, ["edit", str(photo), "-s", "a", "-t", "b", "--model", str(SHAPES_DIR), "--memory", "1MB",
                            "-o", str(out), "--device", "cpu"])
    assert r.exit_code == 2 and "GiB of host memory" in r.stderr and "--memory off" in r.stderr, r.output
    assert "nf4" not in r.stderr  # not an option on the CPU
    assert not out.exists()


def test_plan_for_edit_skips_built_in_models_and_plans_folders():
    from editflow.models.zoo import SHAPES_DIR

    cpu = torch.device("cpu")
    assert memory.plan_for_edit("shapes", "flowedit", (64, 64), {}, cpu, "auto", 4) is None
    assert memory.plan_for_edit(str(SHAPES_DIR), "flowedit", (64, 64), {}, cpu, "off", 4) is None
    p = memory.plan_for_edit(str(SHAPES_DIR), "flowedit", (64, 64), {}, cpu, "8GB", 4)
    assert p.chosen.name == "gpu" and len(p.placements) == 1
    with pytest.raises(EditflowError, match="needs at least"):
        memory.plan_for_edit(str(SHAPES_DIR), "flowedit", (64, 64), {}, cpu, "1MB", 4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_activation_term_is_exact_at_flux_dev_width(dtype):
    """24 heads of 128 (FLUX.1-dev's width), one block of each kind: K_4 = 15, K_2 = 17 exactly."""
    model = editflow.wrap_pipeline(build_random_flux("flux-dev", double=1, single=1, heads=24, dtype=dtype), name="w")
    grid = model.grid(256, 256)
    z = torch.randn(1, grid.num_tokens, 64).to(dtype)
    cond = model.encode_prompt("a call")
    with torch.no_grad(), memory.TensorBytes() as counted:
        model.velocity(z, 0.5, cond, grid)
    predicted = memory.activation_bytes(memory.parts_of_model(model), 1, grid.num_tokens)
    assert abs(predicted / counted.peak - 1) < 0.01, (predicted, counted.peak)


def test_plan_options_move_the_terms_they_should():
    parts = memory.parts_of_name("flux-dev")
    base = memory.plan(parts, "kv_edit", 1024, 1024, None, None, 80 * memory.GIB)
    assert base.rows == 1 and memory.plan(parts, "kv_edit", 1024, 1024, auto_mask=True).rows == 20  # 2 x DRAWS
    forced = memory.plan(parts, "kv_edit", 1024, 1024, {"offload": True}, None, 80 * memory.GIB)
    assert all(pl.store_offload for pl in forced.placements) and forced.chosen.name == "gpu"
    host_bound = memory.plan(parts, "kv_edit", 1024, 1024, None, None, 24 * memory.GIB, host_budget=40 * memory.GIB)
    assert host_bound.chosen is None and "replay" in host_bound.advice()  # the 48 GiB store fits nowhere
    replay = memory.plan(parts, "kv_edit", 1024, 1024, {"replay": True}, None, 24 * memory.GIB)
    assert replay.store < base.store / 20 and "replay" not in replay.advice()
    quantized = memory.plan(parts, "flowedit", 1024, 1024, None, "int8", 24 * memory.GIB)
    assert "sequential-offload" not in {pl.name for pl in quantized.placements}
    assert memory.usable_bytes(24 * memory.GIB, card=False) - memory.usable_bytes(24 * memory.GIB) == memory.CONTEXT_BYTES


def test_model_offload_formula_follows_diffusers_sequence():
    """The model-offload row assumes diffusers moves a FLUX component out only when the next one in
    this order runs (so the VAE, used first by editflow, stays)."""
    from diffusers import FluxPipeline

    seq = [name for name in FluxPipeline.model_cpu_offload_seq.split("->") if name != "image_encoder"]
    assert seq == ["text_encoder", "text_encoder_2", "transformer", "vae"]  # image_encoder: IP-Adapters, unused
    parts = memory.parts_of_name("flux-dev")
    p = memory.plan(parts, "flowedit", 1024, 1024)
    row = next(pl for pl in p.placements if pl.name == "model-offload")
    clip = dict((n, b) for n, b, _ in parts.text_encoders)["text_encoder"]
    assert row.gpu_peak >= p.weights["transformer"] + parts.vae_bytes + clip + p.activations


def test_text_tokens_and_names_follow_the_model():
    from editflow.models.zoo import SHAPES_DIR

    assert memory.parts_of_name("flux-schnell").text_tokens == 256
    assert memory.parts_of_name("black-forest-labs/FLUX.1-dev").transformer_bytes == 2 * 11_901_408_320
    loaded = memory.parts_of_model(editflow.load_model("shapes", device="cpu", progress=False))
    assert memory.parts_of_name(str(SHAPES_DIR), 4).text_tokens == loaded.text_tokens < 512
