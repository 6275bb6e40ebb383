"""LoRA through diffusers' load_lora_weights: a peft LoRA made here for tiny-flux, saved in
diffusers' format, loaded with load_model(lora=...) / --lora, against the same LoRA merged into the
weights by hand."""

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from typer.testing import CliRunner

import editflow
from editflow.errors import ModelNotAvailableError, ParameterError
from editflow.models.lora import parse_lora

TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj"]
SRC, TAR = "a red circle", "a blue square"


@pytest.fixture(scope="module")
def lora_file(tmp_path_factory):
    """A rank-4 LoRA with random A and B (lora_alpha = rank: scaling 1) on tiny-flux's attention."""
    from diffusers import FluxPipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    model = editflow.load_model("tiny-flux", device="cpu")
    transformer = model.pipe.transformer
    torch.manual_seed(0)
    transformer.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=TARGETS, init_lora_weights=False))
    for name, p in transformer.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 0.05)
    folder = tmp_path_factory.mktemp("lora")
    FluxPipeline.save_lora_weights(folder, transformer_lora_layers=get_peft_model_state_dict(transformer))
    return folder / "pytorch_lora_weights.safetensors"


@pytest.fixture(scope="module")
def image():
    return Image.fromarray((np.random.default_rng(3).random((64, 64, 3)) * 255).astype(np.uint8))


def _merged(path, scale: float):
    """tiny-flux with W += scale (B A) written into each target Linear by hand."""
    model = editflow.load_model("tiny-flux", device="cpu")
    state = load_file(str(path))
    modules = dict(model.pipe.transformer.named_modules())
    merged = 0
    for key, a in state.items():
        if ".lora_A." not in key:
            continue
        b = state[key.replace(".lora_A.", ".lora_B.")]
        module = modules[key.removeprefix("transformer.").split(".lora_A.")[0]]
        module.weight.data += scale * (b.float() @ a.float())
        merged += 1
    assert merged > 0
    return model


@pytest.mark.parametrize("method,extra", [("flowedit", {}), ("kv_edit", {"mask": "half"})])
def test_a_lora_edit_equals_the_hand_merged_weights_and_scale_0_the_base(lora_file, image, method, extra):
    mask = None
    if extra.get("mask"):
        mask = np.zeros((64, 64), bool)
        mask[:, :32] = True
    kw = dict(method=method, seed=1, steps=6, mask=mask)
    base = editflow.edit(editflow.load_model("tiny-flux", device="cpu"), image, SRC, TAR, **kw)
    with_lora = editflow.edit(editflow.load_model("tiny-flux", device="cpu", lora=[f"{lora_file}:0.8"]),
                              image, SRC, TAR, **kw)
    merged = editflow.edit(_merged(lora_file, 0.8), image, SRC, TAR, **kw)
    assert (with_lora.latents - base.latents).abs().max() > 1e-3  # the LoRA changes the edit
    torch.testing.assert_close(with_lora.latents, merged.latents, atol=1e-5, rtol=0)  # attention hooks see it too
    zero = editflow.edit(editflow.load_model("tiny-flux", device="cpu", lora=[(lora_file, 0.0)]), image, SRC, TAR, **kw)
    torch.testing.assert_close(zero.latents, base.latents, atol=1e-6, rtol=0)


def test_two_loras_add_up(lora_file, image):
    both = editflow.load_model("tiny-flux", device="cpu", lora=[f"{lora_file}:0.5", f"{lora_file}:0.25"])
    one = _merged(lora_file, 0.75)
    a = editflow.edit(both, image, SRC, TAR, seed=0, steps=4)
    b = editflow.edit(one, image, SRC, TAR, seed=0, steps=4)
    torch.testing.assert_close(a.latents, b.latents, atol=1e-5, rtol=0)


def test_lora_through_the_cli(lora_file, image, tmp_path):
    from editflow.cli import app

    src = tmp_path / "in.png"
    image.save(src)
    runner = CliRunner()
    args = ["edit", str(src), "-s", SRC, "-t", TAR, "--model", "tiny-flux", "--steps", "4", "-q"]
    r = runner.invoke(app, args + ["-o", str(tmp_path / "base.png")])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, args + ["-o", str(tmp_path / "lora.png"), "--lora", f"{lora_file}:1.5"])
    assert r.exit_code == 0, r.output
    assert not np.array_equal(np.asarray(Image.open(tmp_path / "base.png")), np.asarray(Image.open(tmp_path / "lora.png")))
    bad = tmp_path / "style.bin"
    bad.write_bytes(b"\x80\x04")
    r = runner.invoke(app, args + ["-o", str(tmp_path / "x.png"), "--lora", str(bad)])
    assert r.exit_code == 2 and "not a .safetensors file" in r.output and not (tmp_path / "x.png").exists()


def test_bad_lora_specs_are_refused_before_loading(tmp_path, lora_file):
    with pytest.raises(ModelNotAvailableError, match="does not exist"):
        parse_lora(tmp_path / "missing.safetensors")
    with pytest.raises(ModelNotAvailableError, match="has no pytorch_lora_weights.safetensors"):
        parse_lora(tmp_path)
    with pytest.raises(ParameterError, match="LoRA scale must be finite"):
        parse_lora((lora_file, float("nan")))
    assert parse_lora(f"{lora_file}:0.3").scale == 0.3 and parse_lora(lora_file.parent).path == lora_file
    with pytest.raises(ModelNotAvailableError, match="LoRAs load into FLUX and SD3 pipelines; this model is a"):
        editflow.load_model("tiny-unet", device="cpu", lora=[lora_file])


def test_a_lora_on_an_int8_transformer_stays_float_beside_the_int8_base(lora_file, image):
    """QLoRA-style: the base weights are int8, the LoRA's A and B stay float32 and unmerged, so scale
    0 is the int8 model exactly and the LoRA moves the edit as much as it does in float32."""
    pytest.importorskip("torchao")
    kw = dict(seed=1, steps=6)
    int8 = editflow.load_model("tiny-flux", device="cpu", quantize="int8")
    both = editflow.load_model("tiny-flux", device="cpu", quantize="int8", lora=[f"{lora_file}:0.8"])
    q = both.pipe.transformer.transformer_blocks[0].attn.to_q
    assert type(q.base_layer.weight).__name__ == "Int8Tensor"  # torchao's
    (a,) = q.lora_A.values()
    assert a.weight.dtype == torch.float32 and type(a.weight) is torch.nn.Parameter
    zero = editflow.load_model("tiny-flux", device="cpu", quantize="int8", lora=[(lora_file, 0.0)])
    base_q = editflow.edit(int8, image, SRC, TAR, **kw).latents
    torch.testing.assert_close(editflow.edit(zero, image, SRC, TAR, **kw).latents, base_q, atol=1e-6, rtol=0)
    lora_q = editflow.edit(both, image, SRC, TAR, **kw).latents
    base_f = editflow.edit(editflow.load_model("tiny-flux", device="cpu"), image, SRC, TAR, **kw).latents
    lora_f = editflow.edit(editflow.load_model("tiny-flux", device="cpu", lora=[f"{lora_file}:0.8"]), image, SRC, TAR,
                           **kw).latents
    shift_q, shift_f = lora_q - base_q, lora_f - base_f
    assert shift_f.abs().max() > 1e-3
    assert torch.nn.functional.cosine_similarity(shift_q.flatten(), shift_f.flatten(), dim=0) > 0.95
