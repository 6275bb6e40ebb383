"""Stable Flow: vital-layer search (bypass, scores, determinism), the editing method."""

import json
import statistics

import pytest
import torch

import editflow
from editflow.attention.flux import attention_layers
from editflow.errors import ParameterError
from editflow.methods import EditRequest, get_method
from editflow.vital_layers import FLUX_DEV_VITAL, select, vitality

SF = get_method("stable_flow")


def test_bypass_skips_one_block_and_restores_it(tiny, source_latent):
    x, grid = source_latent
    cond = tiny.encode_prompt("a cat")
    base = tiny.velocity(x, 0.5, cond, grid)
    with tiny.bypass("single.1"):
        changed = tiny.velocity(x, 0.5, cond, grid)
    assert (changed - base).abs().max() > 1e-4
    torch.testing.assert_close(tiny.velocity(x, 0.5, cond, grid), base, rtol=0, atol=0)
    with pytest.raises(RuntimeError), tiny.bypass("double.0"):
        raise RuntimeError("inside")
    torch.testing.assert_close(tiny.velocity(x, 0.5, cond, grid), base, rtol=0, atol=0)
    with pytest.raises(editflow.errors.EditflowError, match="no layer 'single.9'"):
        tiny.bypass("single.9").__enter__()


def test_vital_layer_search_on_the_shapes_model_is_deterministic_with_a_clear_gap():
    """Bypassing a double-stream block changes the image far more than any single-stream block
    (measured: double.0 / double.1 at 2.99 / 2.14 x the median, single blocks 0.50-1.04 x), and
    the search picks the top one, as the shipped 16-prompt list does."""
    model = editflow.load_model("shapes")
    prompts = ["a large red circle in the top left, on a gray background",
               "a small blue square in the center, a large green star in the bottom right, on a beige background"]
    a = vitality(model, prompts, [0], steps=8, size=64)
    b = vitality(model, prompts, [0], steps=8, size=64)
    assert a == b
    double = [v for k, v in a.items() if k.startswith("double.")]
    single = [v for k, v in a.items() if k.startswith("single.")]
    assert min(double) > 1.5 * max(single), a
    assert select(a) == ["double.0"] == model.vital_layers
    assert max(a.values()) > 2.5 * statistics.median(a.values()), a


def test_shapes_model_ships_its_vital_layers():
    model = editflow.load_model("shapes")
    assert model.vital_layers == ["double.0"]
    assert set(model.vital_layers) <= set(model.attention_layers())


def test_vital_layers_command(tmp_path):
    from typer.testing import CliRunner

    from editflow.cli import app

    prompts = tmp_path / "p.txt"
    prompts.write_text("a red circle\na blue square in the center\n")
    out = tmp_path / "layers.json"
    r = CliRunner().invoke(app, ["vital-layers", "--model", "tiny-flux", "--prompts", str(prompts), "--out", str(out),
                                 "--seeds", "0", "--steps", "2", "--size", "32", "-q"])
    assert r.exit_code == 0, r.output
    data = json.loads(out.read_text())
    assert set(data["vitality"]) == {"double.0", "single.0", "single.1"} and data["vital_layers"]
    assert (tmp_path / "layers.png").exists()


def test_vital_layers_command_with_dinov2_similarity(tmp_path, monkeypatch):
    """The paper's DINOv2 similarity: the command scores with it (checked against a direct call)."""
    from typer.testing import CliRunner
    from transformers import Dinov2Config, Dinov2Model

    from editflow import vital_layers
    from editflow.cli import app

    torch.manual_seed(0)
    Dinov2Model(Dinov2Config(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                             image_size=32, patch_size=8)).save_pretrained(tmp_path / "d2")
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red circle\n")
    args = ["vital-layers", "--model", "tiny-flux", "--prompts", str(prompts), "--seeds", "0", "--steps", "2",
            "--size", "32", "-q", "--similarity", "dinov2", "--similarity-model", str(tmp_path / "d2")]
    r = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "layers.json")])
    assert r.exit_code == 0, r.output
    data = json.loads((tmp_path / "layers.json").read_text())
    assert data["similarity"] == "dinov2"
    sim = vital_layers.similarity_function("dinov2", str(tmp_path / "d2"), "cpu")
    direct = vitality(editflow.load_model("tiny-flux"), ["a red circle"], [0], steps=2, size=32, similarity=sim)
    assert data["vitality"] == pytest.approx(direct, abs=1e-6)
    assert direct != pytest.approx(vitality(editflow.load_model("tiny-flux"), ["a red circle"], [0], steps=2, size=32),
                                   abs=1e-6)  # not the SSIM scores
    r = CliRunner().invoke(app, [*args[:-4], "--similarity", "clip", "--out", str(tmp_path / "x.json")])
    assert r.exit_code != 0 and "unknown similarity 'clip'" in r.output


def test_stable_flow_nfe_layers_and_restoration(tiny, source_latent):
    x, grid = source_latent
    before = [a.processor for _, a in attention_layers(tiny.transformer)]
    p = SF.params.for_family("flux", steps=5, layers="double.0,single.1")
    counted = tiny.counter.total.copy()
    out = SF.run(tiny, EditRequest(x, grid, "a cat", "a dog"), p, None)
    assert tiny.counter.total - counted == SF.expected_nfe(p)  # 5 inversion calls + 5 calls of 2 rows
    assert all(a is b for a, b in zip(before, [a.processor for _, a in attention_layers(tiny.transformer)]))
    assert (out - x).abs().max() > 1e-2
    with pytest.raises(ParameterError, match="no vital layers known"):
        SF.run(tiny, EditRequest(x, grid, "a", "b"), SF.params.for_family("flux", steps=2), None)
    with pytest.raises(ParameterError, match="unknown layers"):
        SF.run(tiny, EditRequest(x, grid, "a", "b"), SF.params.for_family("flux", steps=2, layers="single.7"), None)
    assert len(FLUX_DEV_VITAL) == 9


def test_injecting_nothing_is_plain_nudged_euler_editing(tiny, source_latent):
    """With no vital layer the target row is plain Euler from the nudged inversion (the source row
    rides along in the batch but cannot reach it)."""
    x, grid = source_latent
    nothing = SF.params.for_family("flux", steps=5, layers="double.0")
    nothing.layers = ","  # an empty set, past validation
    out = SF.run(tiny, EditRequest(x, grid, "a cat", "a dog"), nothing, None)
    ode = get_method("ode_inversion")
    q = ode.params.for_family("flux", steps=5, solver="nudged_euler", source_guidance=1.0, target_guidance=3.0)
    plain = ode.run(tiny, EditRequest(x, grid, "a cat", "a dog"), q, None)
    assert (out - plain).abs().max().item() < 1e-5
