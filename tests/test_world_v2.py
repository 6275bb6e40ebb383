"""World version 2: uncaptioned detail, edits that keep it, the held-out split, and the oracle that
reads it back (structure and grain scores) — the properties that tell editing from regeneration."""

from dataclasses import replace

import numpy as np
import pytest

from editflow import world
from editflow.train.data import world_batch
from editflow.world import EDIT_KINDS, Obj, Scene, WorldError, edit_scores, read_object, render, sample_edit, split_of
from editflow.world.render import cell_box, object_coverage
from editflow.world.scene import HELD_OUT_EVERY, MARGIN_V2, offset_bound, sample_detail


def _regenerated(scene: Scene, rng) -> Scene:
    """The same captioned scene with fresh uncaptioned detail: what a perfect text-to-image model draws."""
    objects = tuple(replace(o, **sample_detail(rng, o.size)) for o in scene.objects)
    return Scene(scene.background, objects, None, 2, int(rng.integers(2**32)))


def test_detail_is_uncaptioned_and_changes_the_image():
    rng = np.random.default_rng(0)
    for _ in range(20):
        scene = world.sample_scene(rng, version=2)
        other = _regenerated(scene, rng)
        assert world.caption(scene) == world.caption(other)
        diff = np.abs(render(scene).astype(int) - render(other).astype(int))
        assert diff.max() > 60  # objects moved or turned
        assert (diff.sum(-1) > 0).mean() > 0.5  # the grain differs almost everywhere


def test_objects_stay_inside_their_cell_with_a_margin():
    rng = np.random.default_rng(1)
    size = 96
    for _ in range(200):
        z = ("small", "large")[int(rng.integers(2))]
        detail = sample_detail(rng, z)
        detail["dx"] = float(np.sign(detail["dx"]) * offset_bound(z, detail["scale"]))  # the extreme offset
        obj = Obj(world.SHAPES[int(rng.integers(6))], "red", z, world.POSITIONS[int(rng.integers(9))], **detail)
        cover = object_coverage(obj, size, 2)
        y0, y1, x0, x1 = cell_box(obj.position, size)
        inner = np.zeros_like(cover, dtype=bool)
        m = int(MARGIN_V2 * size / 3)  # whole pixels of margin
        inner[y0 + m:y1 - m, x0 + m:x1 - m] = True
        assert cover.sum() > 0 and not cover[~inner].any(), obj


def test_detail_out_of_bounds_is_refused():
    with pytest.raises(WorldError, match="leaves its cell"):
        Obj("circle", "red", "large", "top", dx=0.2)
    with pytest.raises(WorldError, match="no uncaptioned detail"):
        Scene("gray", (Obj("circle", "red", "large", "top", angle=10.0),))
    with pytest.raises(WorldError, match="finite number"):
        Obj("circle", "red", "large", "top", angle=float("nan"))


@pytest.mark.parametrize("kind", EDIT_KINDS)
def test_edits_keep_every_uncaptioned_detail_they_do_not_name(kind):
    rng = np.random.default_rng([3, EDIT_KINDS.index(kind)])
    for _ in range(25):
        ex = sample_edit(rng, kind, version=2, split="held_out")
        src, tgt, i = ex.edit.source, ex.edit.target, ex.edit.index
        assert tgt.grain == src.grain and tgt.version == 2
        changed = (ex.source_image != ex.target_image).any(-1)
        assert changed.any() and not (changed & ~ex.mask).any()  # the mask stays exact
        if kind in ("color", "shape", "move"):
            keep = ("dx", "dy", "angle", "scale")
            assert all(getattr(src.objects[i], k) == getattr(tgt.objects[i], k) for k in keep)
        if kind == "size":
            a, b = src.objects[i], tgt.objects[i]
            assert (a.angle, a.scale) == (b.angle, b.scale)
            ratio = offset_bound(b.size, b.scale) / offset_bound(a.size, a.scale)
            assert b.dx == pytest.approx(a.dx * ratio) and b.dy == pytest.approx(a.dy * ratio)
        untouched = [o for j, o in enumerate(tgt.objects) if kind == "background" or j != i]
        assert all(o in src.objects for o in untouched)


def test_held_out_graphs_never_occur_in_training_batches():
    from editflow.train.data import caption_corpus
    from editflow.world import training_split
    from editflow.train.text import caption_batch

    captions = [c for step in range(30) for c in world_batch(0, step, 32, 32, version=2)[1]]
    captions += caption_corpus(500, 0, version=2)  # the tokenizer's corpus
    captions += [c for step in range(10) for c in caption_batch(0, step, 32, 1, 3, 2, training_split(2))]  # T5's
    assert all(split_of(world.parse_caption(c)) == "train" for c in captions)
    rng = np.random.default_rng(4)
    everything = [split_of(world.sample_scene(rng, version=2)) for _ in range(4000)]
    assert abs(everything.count("held_out") / 4000 - 1 / HELD_OUT_EVERY) < 0.02
    for i in range(40):
        ex = sample_edit(np.random.default_rng([9, i]), EDIT_KINDS[i % 7], version=2, split="held_out")
        assert split_of(ex.edit.source) == split_of(ex.edit.target) == "held_out"
        # the split depends on the captioned graph only, so paraphrases and detail cannot leak it
        assert split_of(world.parse_caption(ex.source_prompt)) == "held_out"


def test_reader_is_exact_on_version_2_renders():
    rng = np.random.default_rng(5)
    n = 0
    for _ in range(60):
        scene = world.sample_scene(rng, 1, 3, version=2)
        img = render(scene)
        for o in scene.objects:
            r = read_object(img, o.position, version=2)
            assert r["readable"] and (r["color"], r["shape"], r["size"]) == (o.color, o.shape, o.size), (o, r)
            assert world.structure_iou(r["alpha"], o, 64) > 0.9
            n += 1
        for p in scene.free_positions():
            assert not read_object(img, p, version=2)["present"]
    assert n > 100


def test_reader_says_unreadable_for_a_blob():
    scene = Scene("gray", (Obj("star", "red", "large", "center", angle=10.0),), version=2, grain=3)
    img = render(scene).astype(np.float64)
    y0, y1, x0, x1 = cell_box("center", 64)
    blob = img.copy()
    cy, cx = (y0 + y1) / 2, (x0 + x1) / 2
    yy, xx = np.indices(img.shape[:2])
    square = (np.abs(yy - cy) < 2) & (np.abs(xx - cx) < 9)  # a bar: no template fits it at half overlap
    blob[y0:y1, x0:x1] = img[y0 + 1, x0 + 1]
    blob[square] = world.COLORS["red"]
    r = read_object(blob.astype(np.uint8), "center", version=2)
    assert r["present"] and r["color"] == "red"
    assert not r["readable"] and r["shape"] is None and r["iou"] < 0.5


def test_edit_scores_tell_the_ground_truth_from_a_regeneration():
    rng = np.random.default_rng(6)
    truth, regen, source = [], [], []
    for i in range(70):
        ex = sample_edit(rng, EDIT_KINDS[i % 7], version=2, split="held_out")
        truth.append(edit_scores(ex, ex.target_image))
        regen.append(edit_scores(ex, render(_regenerated(ex.edit.target, rng))))
        source.append(edit_scores(ex, ex.source_image))

    def mean(rows, key):
        values = [float(r[key]) for r in rows if key in r and not np.isnan(float(r[key]))]
        return float(np.mean(values))

    assert mean(truth, "edit_correct") == 1.0 and mean(truth, "structure_kept") == 1.0
    assert mean(truth, "grain_corr") == pytest.approx(1.0)
    assert mean(source, "edit_correct") == 0.0
    assert mean(regen, "edit_correct") == 1.0  # the captioned content is all there ...
    assert mean(regen, "structure_kept") < 0.25  # ... the uncaptioned detail is not
    assert mean(regen, "grain_corr") < 0.3
    outside = [min(r["psnr_outside_mask_vs_source"], 60) for r in regen]
    assert np.mean(outside) < 27  # other objects misplaced and another grain


def test_the_main_jobs_example_image_is_the_scripts_world_v2_scene(tmp_path):
    """examples/shapes_scene.png is what scripts/make_example_scene.py renders (a held-out graph)."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    out = tmp_path / "scene.png"
    r = subprocess.run([sys.executable, str(root / "scripts" / "make_example_scene.py"), str(out)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "a large red circle in the center and a small yellow square in the top left, on a gray background"
    from PIL import Image

    assert np.array_equal(np.asarray(Image.open(out)), np.asarray(Image.open(root / "examples" / "shapes_scene.png")))
