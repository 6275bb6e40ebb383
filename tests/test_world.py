"""The shapes world: rendering, exact edit masks, captions, the analytic reader, metrics, CLI."""

import json
import math
import time
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from editflow.cli import app
from editflow.world import (
    BACKGROUNDS,
    COLORS,
    EDIT_KINDS,
    POSITIONS,
    SHAPES,
    Obj,
    Scene,
    WorldError,
    caption,
    edit_mask,
    edit_scores,
    make_edit,
    mse,
    object_coverage,
    object_mask,
    parse_caption,
    psnr,
    read_object,
    read_scene_accuracy,
    render,
    sample_edit,
    sample_scene,
    split_of,
    ssim,
)

EXAMPLE = Scene("gray", (Obj("circle", "red", "large", "top left"), Obj("square", "blue", "small", "center")))


def _sorted(scene: Scene) -> Scene:
    return scene.in_reading_order()


# --- vocabulary and rendering ---------------------------------------------------------------


def test_palettes_are_distinct_and_separated():
    assert len(COLORS) >= 8 and len(SHAPES) >= 6 and len(POSITIONS) == 9
    assert not set(BACKGROUNDS.values()) & set(COLORS.values())
    assert min(math.dist(c, b) for c in COLORS.values() for b in BACKGROUNDS.values()) >= 80


def test_render_is_deterministic():
    rng = np.random.default_rng(0)
    for _ in range(20):
        scene = sample_scene(rng, textures=True)
        a, b = render(scene), render(Scene.from_dict(scene.to_dict()))
        assert a.shape == (64, 64, 3) and a.dtype == np.uint8
        assert a.tobytes() == b.tobytes()
    assert render(EXAMPLE, 96).shape == (96, 96, 3)


def test_render_is_antialiased_and_masks_cover_every_changed_pixel():
    scene = Scene("gray", (Obj("circle", "red", "large", "center"),))
    img = render(scene).astype(int)
    cover = object_coverage(scene.objects[0])
    rim = (cover > 0.2) & (cover < 0.8)
    assert rim.sum() > 20
    red = img[..., 0][rim]
    assert ((red > 128) & (red < 220)).all()  # between background and object colour
    assert (img[cover == 1] == COLORS["red"]).all() and (img[cover == 0] == BACKGROUNDS["gray"]).all()
    moved = Scene("gray", (Obj("circle", "red", "large", "top left"),))
    changed = (render(scene) != render(moved)).any(-1)
    assert not (changed & ~(object_mask(scene, 0) | object_mask(moved, 0))).any()


def test_render_is_fast():
    rng = np.random.default_rng(1)
    scenes = [sample_scene(rng, 3, 3, textures=True) for _ in range(200)]
    render(scenes[0])
    start = time.perf_counter()
    for s in scenes:
        render(s)
    assert (time.perf_counter() - start) / len(scenes) < 5e-3


def test_bad_scenes_are_refused():
    with pytest.raises(WorldError, match="unknown shape 'blob'"):
        Obj("blob", "red", "large", "top")
    with pytest.raises(WorldError, match="share a grid cell"):
        Scene("gray", (Obj("circle", "red", "large", "top"), Obj("star", "blue", "small", "top")))
    with pytest.raises(WorldError):
        Scene("red", (Obj("circle", "red", "large", "top"),))


# --- edits ------------------------------------------------------------------------------------


def _changed_fields(a: Obj, b: Obj) -> set[str]:
    return {f for f in ("shape", "color", "size", "position") if getattr(a, f) != getattr(b, f)}


def _check_graph(kind, edit):
    src, tgt, i = edit.source, edit.target, edit.index
    assert src.texture == tgt.texture
    if kind == "background":
        assert i is None and src.background != tgt.background and src.objects == tgt.objects
        return
    assert src.background == tgt.background
    if kind == "add":
        assert len(tgt.objects) == len(src.objects) + 1
        assert tgt.objects[:i] + tgt.objects[i + 1:] == src.objects
        assert tgt.objects[i].position in src.free_positions()
    elif kind == "remove":
        assert src.objects[:i] + src.objects[i + 1:] == tgt.objects
    else:
        field = "position" if kind == "move" else kind
        assert _changed_fields(src.objects[i], tgt.objects[i]) == {field}
        assert src.objects[:i] + src.objects[i + 1:] == tgt.objects[:i] + tgt.objects[i + 1:]


@pytest.mark.parametrize("kind", EDIT_KINDS)
def test_every_edit_changes_exactly_what_it_says(kind):
    for seed in range(50):
        ex = sample_edit(np.random.default_rng(seed), kind, textures=seed % 2 == 0, paraphrase=seed % 3 == 0)
        assert ex.kind == ex.edit.kind == kind
        _check_graph(kind, ex.edit)
        changed = (ex.source_image != ex.target_image).any(-1)
        assert ex.mask.dtype == bool and ex.mask.shape == (64, 64)
        assert not (changed & ~ex.mask).any(), "ground truth differs from the source outside the mask"
        assert changed.any()
        if kind in ("color", "background", "add", "remove"):  # everything under the mask changes (bar faint rims)
            assert changed.sum() >= 0.9 * ex.mask.sum(), "the mask is larger than the change"
        assert (ex.mask == edit_mask(ex.edit)).all()
        # Prompts describe the scenes, and share every word but the edited ones.
        assert _sorted(parse_caption(ex.source_prompt)) == _sorted(ex.edit.source)
        assert _sorted(parse_caption(ex.target_prompt)) == _sorted(ex.edit.target)
        if kind in ("color", "shape", "size", "background"):
            a, b = ex.source_prompt.split(), ex.target_prompt.split()
            assert len(a) == len(b) and sum(x != y for x, y in zip(a, b)) == 1, (ex.source_prompt, ex.target_prompt)


def test_impossible_edits_raise_value_errors():
    rng = np.random.default_rng(0)
    one = Scene("gray", (Obj("circle", "red", "large", "top"),))
    full = Scene("gray", tuple(Obj("star", "blue", "small", p) for p in POSITIONS))
    with pytest.raises(ValueError, match="only object"):
        make_edit(one, "remove", rng)
    for kind in ("add", "move"):
        with pytest.raises(ValueError, match="cells are taken"):
            make_edit(full, kind, rng)
    with pytest.raises(WorldError, match="unknown edit kind 'recolor'"):
        sample_edit(rng, "recolor")


# --- captions ---------------------------------------------------------------------------------


def test_canonical_caption():
    assert caption(EXAMPLE) == (
        "a large red circle in the top left and a small blue square in the center, on a gray background"
    )
    striped = replace(EXAMPLE, texture="stripes", objects=EXAMPLE.objects[:1])
    assert caption(striped) == "a large red circle in the top left, on a striped gray background"


def test_captions_parse_back_canonical_and_paraphrased():
    rng = np.random.default_rng(7)
    phrasings = set()
    for _ in range(200):
        scene = sample_scene(rng, 1, 4, textures=True)
        assert parse_caption(caption(scene)) == scene
        text = caption(scene, rng)
        phrasings.add(text.split(" a ")[0])
        assert text == text.lower()
        for o in scene.objects:
            assert f"a {o.size} {o.color} {o.shape} " in text and text.count(f" {o.position}") >= 1
        assert text.count(" background") == 1 and text.count(scene.background) == 1
        assert _sorted(parse_caption(text)) == _sorted(scene)
    assert len(phrasings) > 3


def test_unreadable_captions_raise():
    for text in (
        "a cat on a mat",
        "a large red circle in the top left",  # no background
        "a large red circle in the top left, on a gray background, very nice",
    ):
        with pytest.raises(WorldError, match="cannot parse caption"):
            parse_caption(text)


# --- oracle -----------------------------------------------------------------------------------


def test_reader_reads_rendered_objects():
    rng = np.random.default_rng(11)
    hits = {"present": 0, "color": 0, "shape": 0, "size": 0}
    n = empty = empty_ok = 0
    while n < 400:
        scene = sample_scene(rng, 1, 5, textures=n % 2 == 0)
        img = render(scene)
        for o in scene.objects:
            r = read_object(img, o.position)
            n += 1
            hits["present"] += r["present"]
            for key in ("color", "shape", "size"):
                hits[key] += r[key] == o.__dict__[key]
        for p in scene.free_positions()[:2]:
            empty += 1
            empty_ok += not read_object(img, p)["present"]
    acc = {k: v / n for k, v in hits.items()}
    assert min(acc.values()) >= 0.99, acc
    assert empty_ok / empty >= 0.99


def test_read_scene_accuracy():
    img = render(EXAMPLE)
    ok = read_scene_accuracy(img, EXAMPLE)
    assert ok["all_correct"] and ok["color"] == ok["shape"] == ok["position"] == 1.0 and ok["extra_objects"] == 0
    wrong = Scene("beige", (Obj("star", "red", "large", "top left"), Obj("square", "green", "small", "bottom")))
    bad = read_scene_accuracy(img, wrong)
    assert bad["color"] == 0.5 and bad["shape"] == 0.0 and bad["position"] == 0.5
    assert not bad["background_correct"] and bad["extra_objects"] == 1 and not bad["all_correct"]


def test_psnr_mse_ssim_sanity():
    rng = np.random.default_rng(3)
    a = np.full((256, 256, 3), 128, dtype=np.uint8)
    assert psnr(a, a) == math.inf and mse(a, a) == 0.0 and ssim(a, a) == pytest.approx(1.0)
    sigma = 5.0
    b = (a + np.rint(rng.normal(0, sigma, a.shape))).astype(np.uint8)
    expected = 10 * math.log10(255**2 / (sigma**2 + 1 / 12))  # rounding adds variance 1/12 (Sheppard)
    assert abs(psnr(a, b) - expected) < 0.1
    assert abs(psnr(a, a + 10) - 20 * math.log10(255 / 10)) < 1e-9
    mask = np.zeros((256, 256), dtype=bool)
    mask[:10] = True
    c = a.copy()
    c[10:] = 0
    assert psnr(a, c, mask) == math.inf and math.isnan(psnr(a, c, np.zeros_like(mask)))
    # Flat images: SSIM reduces to the luminance term (2 mu_a mu_b + C1) / (mu_a^2 + mu_b^2 + C1).
    x, y = np.full((32, 32, 3), 100, np.uint8), np.full((32, 32, 3), 150, np.uint8)
    ma, mb, c1 = 100 / 255, 150 / 255, 1e-4
    assert ssim(x, y) == pytest.approx((2 * ma * mb + c1) / (ma**2 + mb**2 + c1))
    scene = render(EXAMPLE)
    noisy = [np.clip(scene + rng.normal(0, s, scene.shape), 0, 255).astype(np.uint8) for s in (5, 20)]
    assert 1.0 > ssim(scene, noisy[0]) > ssim(scene, noisy[1])
    assert ssim(scene, noisy[0]) == pytest.approx(ssim(noisy[0], scene))


@pytest.mark.parametrize("kind", EDIT_KINDS)
def test_edit_scores_credit_the_ground_truth_and_not_the_source(kind):
    for seed in range(5):
        ex = sample_edit(np.random.default_rng(100 + seed), kind)
        good = edit_scores(ex, ex.target_image)
        assert good["edit_correct"] and good["psnr_outside_mask_vs_source"] == math.inf
        assert good["psnr_inside_mask_vs_target"] == math.inf and good["ssim_vs_target"] == pytest.approx(1.0)
        assert math.isnan(good["others_correct"]) or good["others_correct"] == 1.0
        bad = edit_scores(ex, ex.source_image)
        assert not bad["edit_correct"] and bad["psnr_inside_mask_vs_target"] < 40


# --- command line -----------------------------------------------------------------------------

runner = CliRunner()


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_cli_world_sample(tmp_path):
    out = tmp_path / "new" / "set"
    r = runner.invoke(app, ["world", "sample", "--n", "4", "--seed", "3", "-o", str(out), "--size", "48"])
    assert r.exit_code == 0, r.output
    rows = _rows(out / "manifest.jsonl")
    assert [row["file"] for row in rows] == [f"images/{i:05d}.png" for i in range(4)]
    for row in rows:
        scene = Scene.from_dict(row["scene"])
        assert scene.version == 2 and scene.grain is not None
        assert parse_caption(row["caption"]).graph_key() == scene.graph_key()
        with Image.open(out / row["file"]) as im:
            assert (np.asarray(im) == render(scene, 48)).all()
    assert not list(out.rglob("*.tmp"))


def test_cli_world_edits(tmp_path):
    out = tmp_path / "edits"
    args = ["world", "edits", "--n", "6", "--seed", "5", "--kinds", "color,move,add", "-o", str(out)]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    assert "6/6" in r.stderr  # the progress bar
    rows = _rows(out / "edits.jsonl")
    assert [row["kind"] for row in rows] == ["color", "move", "add"] * 2
    assert [row["id"] for row in rows] == [f"{i:05d}" for i in range(6)]
    for row in rows:
        src, tgt = Scene.from_dict(row["source_scene"]), Scene.from_dict(row["target_scene"])
        assert split_of(src) == split_of(tgt) == "held_out"
        assert parse_caption(row["source_prompt"]).graph_key() == src.graph_key()
        assert parse_caption(row["target_prompt"]).graph_key() == tgt.graph_key()
        source, target, mask = (np.asarray(Image.open(out / row[k])) for k in ("source_image", "target_image", "mask"))
        assert (source == render(src)).all() and (target == render(tgt)).all()
        assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 255}
        assert not ((source != target).any(-1) & (mask == 0)).any()
    first = (out / "edits.jsonl").read_bytes()
    assert runner.invoke(app, [*args, "-q"]).exit_code == 0 and (out / "edits.jsonl").read_bytes() == first


def test_world_version_1_is_bit_identical_to_the_shapes_models_training_world():
    """The digest of 35 edits (every kind, textures, paraphrases) and one training batch, computed
    with the code the shapes model was trained with (commit 42d16d3): version 1 must not drift."""
    import hashlib

    from editflow.train.data import world_batch

    h = hashlib.sha256()
    for i in range(35):
        ex = sample_edit(np.random.default_rng([11, i]), EDIT_KINDS[i % 7], textures=bool(i % 2), paraphrase=bool(i % 3))
        for part in (ex.source_image, ex.target_image, ex.mask):
            h.update(part.tobytes())
        h.update((ex.source_prompt + "|" + ex.target_prompt).encode())
    x, captions = world_batch(0, 5, 8, 32)
    h.update(x.numpy().tobytes())
    h.update("|".join(captions).encode())
    assert h.hexdigest() == "de91d7d41d7484c60d88d579da6aeb3bbdccd4d6f16203e9075f12bacee7f4e7"


def test_cli_world_version_1_still_writes_the_shapes_models_world(tmp_path):
    out = tmp_path / "v1"
    r = runner.invoke(app, ["world", "edits", "--n", "3", "--seed", "5", "--world-version", "1", "--split", "any",
                            "-o", str(out), "-q"])
    assert r.exit_code == 0, r.output
    for i, row in enumerate(_rows(out / "edits.jsonl")):
        ex = sample_edit(np.random.default_rng([5, i]), EDIT_KINDS[i])
        assert Scene.from_dict(row["source_scene"]) == ex.edit.source and "version" not in row["source_scene"]
        assert row["target_prompt"] == ex.target_prompt


@pytest.mark.parametrize(
    "args,needle",
    [
        (["sample", "--n", "0"], "--n must be at least 1"),
        (["edits", "--n", "2", "--kinds", "color,recolor"], "unknown edit kind 'recolor'"),
        (["edits", "--n", "2", "--size", "4"], "--size must be at least"),
        (["edits", "--n", "2", "--world-version", "3"], "unknown world version 3"),
        (["edits", "--n", "2", "--split", "test"], "unknown split 'test'"),
        (["sample", "--n", "2", "--textures"], "--textures is for world version 1"),
    ],
)
def test_cli_world_bad_input_fails_with_one_line(tmp_path, args, needle):
    out = tmp_path / "out"
    r = runner.invoke(app, ["world", *args, "-o", str(out)])
    assert r.exit_code == 2
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], r.stderr
    assert not out.exists()
