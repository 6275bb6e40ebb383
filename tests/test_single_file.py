"""A transformer from one file (--transformer): a GGUF Q8_0 file written here with the gguf package,
and a plain .safetensors, each completing a saved tiny-flux pipeline folder."""

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from typer.testing import CliRunner

import editflow
from editflow.errors import ModelNotAvailableError


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A tiny-flux pipeline folder, its transformer as Q8_0 GGUF (2-D weights whose rows split into
    32-value blocks; the rest float32) and as a diffusers-layout .safetensors."""
    from gguf import GGMLQuantizationType, GGUFWriter
    from gguf.quants import quantize

    root = tmp_path_factory.mktemp("single")
    model = editflow.load_model("tiny-flux", device="cpu")
    model.pipe.save_pretrained(root / "pipe")
    state = model.pipe.transformer.state_dict()
    writer = GGUFWriter(str(root / "transformer-Q8_0.gguf"), "flux")
    quantized = 0
    for key, tensor in state.items():
        a = tensor.float().numpy()
        if a.ndim == 2 and a.shape[-1] % 32 == 0:
            writer.add_tensor(key, quantize(a, GGMLQuantizationType.Q8_0), raw_dtype=GGMLQuantizationType.Q8_0)
            quantized += 1
        else:
            writer.add_tensor(key, a)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    assert quantized >= 30
    save_file({k: v.contiguous() for k, v in state.items()}, str(root / "transformer.safetensors"))
    return root, model


def _velocity(model, prompt="a red circle"):
    grid = model.grid(64, 64)
    z = torch.randn(1, grid.num_tokens, 64, generator=torch.Generator().manual_seed(0))
    return model.velocity(z, 0.5, model.encode_prompt(prompt), grid, guidance=3.5)


def test_a_gguf_transformer_computes_with_its_dequantized_weights(files):
    from diffusers.quantizers.gguf.utils import dequantize_gguf_tensor

    root, original = files
    gguf_model = editflow.load_model(str(root / "pipe"), device="cpu", transformer=root / "transformer-Q8_0.gguf")
    q = gguf_model.pipe.transformer.transformer_blocks[0].attn.to_q
    assert type(q).__name__ == "GGUFLinear" and type(q.weight).__name__ == "GGUFParameter"  # stays quantized
    dense = editflow.load_model(str(root / "pipe"), device="cpu")
    dense.pipe.transformer.load_state_dict({k: dequantize_gguf_tensor(t).float() if type(t).__name__ == "GGUFParameter"
                                            else t.float() for k, t in gguf_model.pipe.transformer.state_dict().items()})
    v = _velocity(gguf_model)
    torch.testing.assert_close(v, _velocity(dense), atol=1e-6, rtol=0)
    err = ((v - _velocity(original)).norm() / _velocity(original).norm()).item()
    assert 1e-5 < err < 0.05  # Q8_0's rounding, measured 0.01


def test_gguf_and_safetensors_through_the_cli(files, tmp_path):
    from editflow.cli import app

    root, original = files
    src = tmp_path / "in.png"
    Image.fromarray((np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)).save(src)
    runner = CliRunner()
    args = ["edit", str(src), "-s", "a red circle", "-t", "a blue square", "--model", str(root / "pipe"), "--steps", "4", "-q"]
    for name in ("transformer-Q8_0.gguf", "transformer.safetensors"):
        r = runner.invoke(app, args + ["-o", str(tmp_path / f"{name}.png"), "--transformer", str(root / name)])
        assert r.exit_code == 0, r.output
        assert Image.open(tmp_path / f"{name}.png").size == (64, 64)
    plain = editflow.load_model(str(root / "pipe"), device="cpu", transformer=root / "transformer.safetensors")
    assert torch.equal(_velocity(plain), _velocity(original))  # diffusers' own layout is loaded as is
    r = runner.invoke(app, args + ["-o", str(tmp_path / "x.png"), "--transformer", str(tmp_path / "model.ckpt")])
    assert r.exit_code == 2 and "does not exist" in r.output


def test_bad_transformer_files_fail_before_loading(files, tmp_path):
    root, _ = files
    pickled = tmp_path / "flux.ckpt"
    pickled.write_bytes(b"\x80\x04")
    with pytest.raises(ModelNotAvailableError, match="is not .safetensors or .gguf: editflow loads no pickled weights"):
        editflow.load_model(str(root / "pipe"), device="cpu", transformer=pickled)
    with pytest.raises(ModelNotAvailableError, match="tiny-flux is built in memory"):
        editflow.load_model("tiny-flux", device="cpu", transformer=root / "transformer.safetensors")


def test_memory_plan_counts_a_gguf_transformer_as_stored(files):
    """The plan's transformer weights for a GGUF file are the bytes the loaded model holds."""
    from editflow import memory

    root, _ = files
    gguf = root / "transformer-Q8_0.gguf"
    loaded = editflow.load_model(str(root / "pipe"), device="cpu", transformer=gguf, progress=False)
    held = memory._module_bytes(loaded.pipe.transformer)
    parts = memory.parts_of_name(str(root / "pipe"), 4, gguf)
    assert memory.transformer_weight_bytes(parts, None) == held
    assert held < parts.transformer_bytes / 3  # Q8_0: a byte and a bit per weight, against float32's 4
