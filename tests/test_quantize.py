"""Quantized transformers (torchao int8 weight-only) on the CPU: close to the float model, every
FLUX method runs, attention control still holds, bad requests fail before loading."""

import numpy as np
import pytest
import torch
from PIL import Image

import editflow
from editflow.errors import ModelNotAvailableError, ParameterError
from editflow.methods import METHODS

SRC, TAR = "a red circle", "a blue square"


@pytest.fixture(scope="module")
def int8():
    return editflow.load_model("tiny-flux", device="cpu", quantize="int8")


@pytest.fixture(scope="module")
def image():
    return Image.fromarray((np.random.default_rng(5).random((64, 64, 3)) * 255).astype(np.uint8))


def test_int8_weights_are_int8_and_the_velocity_stays_close(int8, tiny):
    from torchao.quantization import Int8Tensor

    q = int8.pipe.transformer.transformer_blocks[0].attn.to_q.weight
    assert isinstance(q, Int8Tensor) and not isinstance(tiny.pipe.transformer.transformer_blocks[0].attn.to_q.weight,
                                                        Int8Tensor)
    grid = tiny.grid(64, 64)
    z = torch.randn(2, grid.num_tokens, 64, generator=torch.Generator().manual_seed(0))
    a = tiny.velocity(z, 0.6, tiny.encode_prompt(SRC).expand(2), grid, guidance=3.5)
    b = int8.velocity(z, 0.6, int8.encode_prompt(SRC).expand(2), grid, guidance=3.5)
    err = ((a - b).norm() / a.norm()).item()
    assert 0 < err < 0.05, err  # measured ~0.01 (the shapes model: 0.011)


def test_every_flux_method_runs_on_int8_and_kv_edit_keeps_its_background(int8, image):
    mask = np.zeros((64, 64), bool)
    mask[8:40, 8:40] = True
    extra = {"stable_flow": {"layers": "double.0"}, "rf_edit": {"inject": 2}}
    for name, m in METHODS.items():
        if "flux" not in m.params.FAMILIES:
            continue
        out = editflow.edit(int8, image, SRC, TAR, method=name, steps=6, seed=0,
                            mask=mask if m.params.NEEDS_MASK else None, **extra.get(name, {}))
        assert torch.isfinite(out.latents).all() and out.nfe == m.expected_nfe(m.params.for_family("flux", steps=6,
                                                                                                  **extra.get(name, {})))
    x = int8.encode_image(editflow.images.to_tensor(image))
    kv = editflow.edit(int8, image, SRC, TAR, method="kv_edit", steps=6, mask=mask)
    fg = int8.grid(64, 64).mask_to_tokens(torch.from_numpy(mask))[0]
    assert torch.equal(kv.latents[:, ~fg], x[:, ~fg].cpu()) and (kv.latents[:, fg] - x[:, fg]).abs().max() > 1e-3


def test_bad_quantization_requests_fail_before_loading():
    with pytest.raises(ParameterError, match="unknown quantization .int4.: use one of int8, fp8, nf4"):
        editflow.load_model("tiny-flux", device="cpu", quantize="int4")
    with pytest.raises(ModelNotAvailableError, match="fp8 weights need a CUDA GPU"):
        editflow.load_model("tiny-flux", device="cpu", quantize="fp8")
    with pytest.raises(ModelNotAvailableError, match="nf4 weights run on a CUDA GPU"):
        editflow.load_model("tiny-flux", device="cpu", quantize="nf4")


def test_nf4_is_diffusers_bitsandbytes_config_for_the_transformer_only():
    """The CUDA-only path's configuration (the load itself needs a GPU: diffusers refuses
    bitsandbytes without one)."""
    from editflow.models.quantize import load_time_config

    assert load_time_config("int8", torch.bfloat16) is None  # torchao kinds quantize after loading
    pipe_cfg = load_time_config("nf4", torch.bfloat16)
    assert pipe_cfg.quant_backend == "bitsandbytes_4bit" and pipe_cfg.components_to_quantize == ["transformer"]
    assert pipe_cfg.quant_kwargs == dict(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                         bnb_4bit_compute_dtype=torch.bfloat16)


def test_ui_serves_the_quantized_model_and_refuses_bad_options_first(monkeypatch):
    import editflow.ui.app as ui_app
    from typer.testing import CliRunner

    from editflow.cli import app

    served = []
    monkeypatch.setattr(ui_app, "launch", lambda name, **kw: served.append(kw["model"]))
    runner = CliRunner()
    r = runner.invoke(app, ["ui", "--model", "tiny-flux", "--quantize", "int8"])
    assert r.exit_code == 0, r.output
    (model,) = served
    assert type(model.pipe.transformer.transformer_blocks[0].attn.to_q.weight).__name__ == "Int8Tensor"
    r = runner.invoke(app, ["ui", "--model", "tiny-flux", "--quantize", "int3"])
    assert r.exit_code == 2 and "unknown quantization" in r.stderr and len(served) == 1
