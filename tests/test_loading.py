"""Loading: the tiny pipeline round-trips through diffusers; bad names fail in one line."""

import os
import subprocess
import sys

import pytest
import torch

import editflow
from editflow.models.tiny import build_tiny_flux, shipped_tokenizers


def test_tiny_pipeline_roundtrips_through_save_and_from_pretrained(tmp_path, tiny):
    from diffusers import FluxPipeline

    tiny.pipe.save_pretrained(tmp_path / "tiny")
    assert (tmp_path / "tiny" / "transformer" / "diffusion_pytorch_model.safetensors").is_file()
    assert not list(tmp_path.rglob("*.bin")) and not list(tmp_path.rglob("*.pt"))
    reloaded = FluxPipeline.from_pretrained(tmp_path / "tiny")
    model = editflow.wrap_pipeline(reloaded, name="reloaded")
    grid = tiny.grid(64, 64)
    noise = tiny.noise(grid, torch.Generator().manual_seed(0))
    a = editflow.generate(tiny, "a red circle", 64, 64, steps=3, latents=noise, output_type="latent")
    b = editflow.generate(model, "a red circle", 64, 64, steps=3, latents=noise, output_type="latent")
    assert torch.equal(a, b)
    # load_model takes the folder too
    assert editflow.load_model(str(tmp_path / "tiny"), device="cpu").name == str(tmp_path / "tiny")


def test_tiny_build_is_deterministic():
    a, b = build_tiny_flux(seed=0), build_tiny_flux(seed=0)
    for (na, pa), (nb, pb) in zip(a.transformer.state_dict().items(), b.transformer.state_dict().items()):
        assert na == nb and torch.equal(pa, pb)


def test_shipped_tokenizers_encode_text():
    clip, t5 = shipped_tokenizers()
    ids = clip("a red circle").input_ids
    assert ids[0] == clip.bos_token_id and ids[-1] == clip.eos_token_id and len(ids) == len("a red circle") + 2 - 2
    t5_ids = t5("a large red circle").input_ids
    assert t5_ids[-1] == t5.eos_token_id and t5.unk_token_id not in t5_ids


def test_hub_id_unavailable_offline_names_the_id():
    with pytest.raises(editflow.ModelNotAvailableError) as err:
        editflow.load_model("black-forest-labs/FLUX.1-dev")
    msg = str(err.value)
    assert "\n" not in msg and "black-forest-labs/FLUX.1-dev" in msg and "hf download" in msg


def test_zoo_name_for_a_hub_model_gives_the_same_hint():
    with pytest.raises(editflow.ModelNotAvailableError, match="FLUX.1-schnell"):
        editflow.load_model("flux-schnell")


def test_folder_without_model_index_is_rejected(tmp_path):
    with pytest.raises(editflow.ModelNotAvailableError, match="model_index.json"):
        editflow.load_model(str(tmp_path))


def test_tiny_pipeline_loads_offline_in_a_fresh_process(tmp_path, tiny):
    tiny.pipe.save_pretrained(tmp_path / "p")
    code = "from diffusers import FluxPipeline; import sys; p = FluxPipeline.from_pretrained(sys.argv[1]); print(type(p).__name__)"
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "p")], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("FluxPipeline")


def test_default_model_is_never_a_tiny_test_model():
    from editflow.models.zoo import DEFAULT_MODEL, NOISE_MODELS, shapes_available

    assert DEFAULT_MODEL == "shapes" and DEFAULT_MODEL not in NOISE_MODELS
    assert shapes_available()  # a checkout ships it (git holds the folder; the package data includes it)


def test_an_install_without_the_shapes_folder_says_how_to_get_it(tmp_path, monkeypatch):
    from editflow.models import zoo

    monkeypatch.setattr(zoo, "SHAPES_DIR", tmp_path / "missing")
    assert not zoo.shapes_available()
    with pytest.raises(editflow.ModelNotAvailableError) as err:
        editflow.load_model()
    message = str(err.value)
    assert "shapes" in message and "--model tiny-flux" in message and "pip install -e ." in message
    assert "\n" not in message


def test_t5_tokenizer_is_word_level_and_survives_save_and_load(tmp_path):
    from transformers import T5TokenizerFast

    from editflow.models.tiny import make_t5_tokenizer

    corpus = ["a large red circle in the top left, on a gray background", "a small blue star in the center"] * 5
    tok = make_t5_tokenizer(corpus, vocab_size=64)
    text = "a small red star in the top left, on a gray background"
    assert tok.tokenize(text)[:4] == ["\u2581a", "\u2581small", "\u2581red", "\u2581star"]
    tok.save_pretrained(tmp_path / "t5")
    again = T5TokenizerFast.from_pretrained(tmp_path / "t5")
    for s in corpus + [text, "an unseen word: zebra"]:
        assert again(s).input_ids == tok(s).input_ids


def test_a_shapes_models_training_config_gives_its_world_version_and_size(tmp_path):
    """Commands that default to a model's native size (``vital-layers``) read an exported shapes
    folder's train_config.json instead of assuming FLUX's 1024 px."""
    from editflow.errors import EditflowError
    from editflow.models.zoo import trained_image_size, trained_world_version

    assert trained_image_size("shapes") == 64 and trained_world_version("shapes") == 2
    (tmp_path / "train_config.json").write_text('{"image_size": 32, "world_version": 2}')
    assert trained_image_size(str(tmp_path)) == 32 and trained_world_version(str(tmp_path)) == 2
    assert trained_image_size(str(tmp_path / "elsewhere")) is None
    (tmp_path / "train_config.json").write_text("[1, 2]")
    with pytest.raises(EditflowError, match="not a readable training config"):
        trained_image_size(str(tmp_path))


def test_krea_is_a_flux_entry_and_kontext_is_refused_before_loading(tmp_path):
    import json

    from editflow.models.zoo import ZOO, describe_models

    assert ZOO["flux-krea-dev"].family == "flux" and ZOO["flux-krea-dev"].hub_id == "black-forest-labs/FLUX.1-Krea-dev"
    assert {"flux-krea-dev", "flux-kontext-dev"} <= {row["name"] for row in describe_models()}
    with pytest.raises(editflow.ModelNotAvailableError, match="flux-kontext-dev: FLUX.1-Kontext is an instruction editor "
                                                             r"\(FluxKontextPipeline\).*second stream of image tokens"):
        editflow.load_model("flux-kontext-dev", device="cpu")  # no download attempted: refused by name
    folder = tmp_path / "kontext"
    folder.mkdir()
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "FluxKontextPipeline"}))
    with pytest.raises(editflow.ModelNotAvailableError, match="none of editflow's methods runs on it"):
        editflow.load_model(str(folder), device="cpu")
    with pytest.raises(editflow.ModelNotAvailableError, match="FluxKontextPipeline"):
        editflow.models.zoo.model_family(str(folder))
