"""The pinned PIE-Bench protocol: a synthetic PIE-Bench-format set through `bench run --protocol
pie-bench` on tiny-flux, each metric against values computed by hand with PIE-Bench's mask
convention, and the protocol's refusals."""

import io
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from editflow.bench.datasets import decode_rle, read_pie_bench
from editflow.bench.metrics import LPIPS, ClipText, LPIPSNet, StructureDistance
from editflow.bench.protocol import background, load_protocol, pie_pixels, pie_scorer
from editflow.bench.runner import read_records
from editflow.errors import EditflowError

# (key, editing_type_id, original, editing, blended word, mask rectangle rows/cols)
ITEMS = [  # the style item first: the others' seeds are their file positions 1-3 in every subset
    ("911000000000", "9", "a photo of a house", "a [watercolor painting] of a house", "", (0, 0, 0, 0)),
    ("000000000000", "0", "a [cat] sitting on a mat", "a [dog] sitting on a mat", "cat dog", (100, 300, 120, 360)),
    ("111000000000", "1", "a red [apple] on a table", "a red [pear] on a table", "apple pear", (200, 400, 150, 330)),
    ("611000000000", "6", "a [blue] car in the street", "a [green] car in the street", "car car", (0, 512, 0, 512)),
]


def rle(rows: tuple[int, int, int, int], size: int = 512) -> list[int]:
    """PIE-Bench's (start, length) pairs of a rectangle ``[r0, r1) x [c0, c1)``."""
    r0, r1, c0, c1 = rows
    return [v for r in range(r0, r1) for v in (r * size + c0, c1 - c0)] if c1 > c0 else []


def make_pie_set(root) -> str:
    """A PIE-Bench-format folder: mapping_file.json, annotation_images/<category>/<key>.jpg."""
    rng = np.random.default_rng(0)
    mapping = {}
    for key, type_id, original, editing, blended, rect in ITEMS:
        rel = f"{type_id}_category/{key}.jpg"
        path = root / "annotation_images" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        y, x = np.mgrid[0:512, 0:512] / 512.0
        image = np.stack([x, y, (x + y) / 2], -1) * 200 + rng.integers(0, 40, (512, 512, 3))
        Image.fromarray(image.clip(0, 255).astype(np.uint8)).save(path, quality=95)
        mapping[key] = {"image_path": rel, "original_prompt": original, "editing_prompt": editing,
                        "editing_instruction": "change it", "editing_type_id": type_id, "blended_word": blended,
                        "mask": rle(rect)}
    (root / "mapping_file.json").write_text(json.dumps(mapping))
    return str(root)


@pytest.fixture(scope="module")
def pie_set(tmp_path_factory):
    return make_pie_set(tmp_path_factory.mktemp("PIE-Bench"))


def _env():
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        env.pop(k, None)
    return env


def _bench(*args, check=True):
    done = subprocess.run([sys.executable, "-m", "editflow", "bench", *map(str, args)], env=_env(), capture_output=True,
                          text=True, timeout=600)
    assert not check or done.returncode == 0, done.stderr[-2000:]
    return done


@pytest.fixture(scope="module")
def protocol_run(pie_set, tiny_clip, tiny_vit, tiny_lpips_squeeze, tmp_path_factory):
    out = tmp_path_factory.mktemp("pie-run")
    _bench(*_run_args(pie_set, out, tiny_clip, tiny_vit, tiny_lpips_squeeze))
    return out


def _run_args(pie_set, out, clip, vit, lpips, *extra):
    return ["run", "--data", pie_set, "--protocol", "pie-bench", "--subset", "no-style", "--methods",
            "flowedit,uniedit,rf_edit", "--model", "tiny-flux", "--device", "cpu", "--out", out, "--baselines", "identity",
            "-q", "--metric-model", f"clip_t={clip}", "--metric-model", f"structure_distance={vit}",
            "--metric-model", f"lpips={lpips}", *extra]


def test_a_resumed_run_with_offload_edits_nothing_again(protocol_run, pie_set, tiny_clip, tiny_vit, tiny_lpips_squeeze):
    """offload is the protocol's one free parameter: it does not change results, so not the keys."""
    before = sorted(json.dumps(r, sort_keys=True) for r in read_records(protocol_run))
    _bench(*_run_args(pie_set, protocol_run, tiny_clip, tiny_vit, tiny_lpips_squeeze, "--set", "rf_edit.offload=true"))
    assert sorted(json.dumps(r, sort_keys=True) for r in read_records(protocol_run)) == before


def test_protocol_run_records_version_parameters_and_pie_metrics(protocol_run, pie_set):
    rows = read_records(protocol_run)
    proto = load_protocol("pie-bench")
    # no-style: category 9 left out; 3 items x (3 methods + identity)
    assert len(rows) == 12 and {r["item"] for r in rows} == {k for k, t, *_ in ITEMS if t != "9"}
    positions = {key: n for n, (key, *_) in enumerate(ITEMS)}
    for r in rows:
        assert r["protocol"] == {"name": "pie-bench", "version": proto.version, "digest": proto.digest}
        assert r["family"] == "flux" and r["image"].endswith(".jpg")  # the scored file, as PnPInversion's
        assert r["seed"] == 0 and r["item_seed"] == positions[r["item"]]  # file position, not subset position
        assert set(proto.metrics) <= set(r["metrics"])
    flowedit = [r for r in rows if r["method"] == "flowedit"]
    pinned = proto.params("flowedit", "flux")
    assert all(r["params"] == pinned for r in flowedit)  # the full hyperparameters, as pinned
    assert all(r["params"] == proto.params("uniedit", "flux") for r in rows if r["method"] == "uniedit")
    # the identity baseline is scored as PnPInversion scores an unchanged output: its JPEG (quality 75)
    ident = next(r for r in rows if r["method"] == "identity" and r["item"] == "000000000000")
    src = np.asarray(Image.open(f"{pie_set}/annotation_images/0_category/000000000000.jpg").convert("RGB"))
    buf = io.BytesIO()
    Image.fromarray(src).save(buf, format="JPEG", quality=75)
    round_trip = np.asarray(Image.open(buf).convert("RGB"))
    assert np.array_equal(np.asarray(Image.open(protocol_run / ident["image"]).convert("RGB")), round_trip)
    by_hand = pie_pixels(src, round_trip, decode_rle(rle(ITEMS[1][5])))
    for name, value in by_hand.items():
        assert ident["metrics"][name] == pytest.approx(value, rel=1e-6)
    assert 0 < ident["metrics"]["mse_unedit_part"] < 1e-3 and ident["metrics"]["lpips_unedit_part"] >= 0
    # item 611...: the mask covers the whole image, so there is no background (nan, as evaluate.py's "nan")
    full = next(r for r in flowedit if r["item"] == "611000000000")["metrics"]
    assert full["psnr_unedit_part"] is None and full["lpips_unedit_part"] is None
    assert full["clip_similarity_target_image_edit_part"] is not None


def test_report_has_the_papers_columns_in_their_units(protocol_run):
    _bench("report", protocol_run, "--grid", "0")
    text = (protocol_run / "report" / "summary.md").read_text()
    section = text[text.index("## Protocol pie-bench v1"):]
    header = next(line for line in section.splitlines() if line.startswith("| method"))
    for column in ("Structure x10^3", "PSNR", "LPIPS x10^3", "MSE x10^4", "SSIM x10^2", "CLIP-W", "CLIP-E"):
        assert column in header
    rows = read_records(protocol_run)
    mse = np.mean([r["metrics"]["mse_unedit_part"] for r in rows
                   if r["method"] == "flowedit" and r["metrics"]["mse_unedit_part"] is not None])
    line = next(line for line in section.splitlines() if line.startswith("| flowedit"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert float(cells[header.strip("|").split("|").index(" MSE x10^4 ")]) == pytest.approx(mse * 1e4, rel=1e-3)


def test_compare_published_sets_each_reported_number_beside_ours(protocol_run):
    _bench("report", protocol_run, "--grid", "0", "--compare-published")
    text = (protocol_run / "report" / "published.md").read_text()
    assert "FlowEdit" in text and "LayerVerse" in text and "second-hand" in text
    rows = read_records(protocol_run)
    ours = np.mean([r["metrics"]["structure_distance"] for r in rows if r["method"] == "flowedit"]) * 1e3
    line = next(line for line in text.splitlines() if line.startswith("| flowedit") and "LayerVerse" in line)
    # the published structure distance of FlowEdit on FLUX.1-dev per LayerVerse is 27.96 (x10^3)
    assert f"{ours:.2f} / 27.96 ({ours - 27.96:+.2f})" in line


def test_protocol_refusals_are_one_line_before_any_model_loads(pie_set, tmp_path):
    cases = [
        (["--set", "steps=3"], "so --set 'steps=3' is refused (only offload may change)"),
        (["--methods", "personalize_anything"], "pins no parameters for personalize_anything"),
        (["--subset", "most"], "--subset 'most' is not a subset"),
        (["--seed", "5"], "pins the seed (0: item i uses 0 + i)"),
    ]
    for extra, message in cases:
        args = ["run", "--data", pie_set, "--protocol", "pie-bench", "--model", "tiny-flux", "--device", "cpu",
                "--out", tmp_path / "o", "-q", *extra]
        done = _bench(*args, check=False)
        assert done.returncode == 2 and message in done.stderr and len(done.stderr.strip().splitlines()) == 1
        assert not (tmp_path / "o").exists()
    shapes = tmp_path / "shapes"
    from editflow.world.io import write_edits

    write_edits(shapes, n=1, seed=0, kinds=("color",))
    done = _bench("run", "--data", shapes, "--protocol", "pie-bench", "--model", "tiny-flux", "--out", tmp_path / "o",
                  check=False)
    assert done.returncode == 2 and "runs on PIE-Bench's mapping_file.json" in done.stderr


def test_prompts_lose_their_markers_and_blended_words_are_kept(pie_set):
    recs = {r.id: r for r in read_pie_bench(pie_set)}
    r = recs["911000000000"]
    assert r.target_prompt == "a watercolor painting of a house" and "[" not in r.source_prompt
    assert recs["000000000000"].extras["blended_word"] == "cat dog"
    assert [x.id for x in load_protocol("pie-bench").select(list(recs.values()), "no-style")] == [
        k for k, t, *_ in ITEMS if t != "9"]


# -- each metric against a hand computation, PIE-Bench's mask convention ---------------------------

def test_mask_decoding_marks_the_border_edited():
    mask = decode_rle([7, 2], shape=(4, 5))  # pixels 7, 8: row 1, columns 2-3
    expected = np.ones((4, 5), dtype=bool)
    expected[1:3, 1:4] = False
    expected[1, 2:4] = True
    assert (mask == expected).all()
    assert (background(mask) == ~expected).all()


def test_background_mse_psnr_ssim_by_hand():
    mask = decode_rle([], shape=(4, 4))  # border only: the background is the 2 x 2 centre
    x = np.zeros((4, 4, 3), np.uint8)
    y = x.copy()
    y[1, 1] = 255  # a background pixel: a difference of 1.0 in 3 channels
    y[0, 0] = 255  # a border pixel: edited, never seen
    values = pie_pixels(x, y, mask)
    assert values["mse_unedit_part"] == pytest.approx(3 / 48)  # zeroed frame: 3 squared errors over 4*4*3
    assert values["psnr_unedit_part"] == pytest.approx(10 * math.log10(16))
    # SSIM of an 11 x 11 pair, constant a and b inside the border, zeroed on it: one Gaussian window
    # of weight W over the inside gives mu = aW, sigma^2 = a^2 W (1 - W), sigma_xy = a b W (1 - W)
    a, b = 200 / 255, 100 / 255
    g = np.exp(-((np.arange(11) - 5) ** 2) / (2 * 1.5**2))
    g /= g.sum()
    w = g[1:10].sum() ** 2
    c1, c2 = 0.01**2, 0.03**2
    v = w * (1 - w)
    expected = ((2 * a * b * w * w + c1) * (2 * a * b * v + c2)) / ((a * a * w * w + b * b * w * w + c1) * ((a * a + b * b) * v + c2))
    mask = decode_rle([], shape=(11, 11))
    xa, yb = np.full((11, 11, 3), 200, np.uint8), np.full((11, 11, 3), 100, np.uint8)
    assert pie_pixels(xa, yb, mask)["ssim_unedit_part"] == pytest.approx(expected, rel=1e-5)
    # the whole frame edited: no background, nan as evaluate.py's "nan"
    assert all(math.isnan(v) for v in pie_pixels(x, y, np.ones((4, 4), bool)).values())


class _QuadrantViT(torch.nn.Module):
    """A stand-in ViT whose last-block keys are the class token (ones) and the mean of each 112 px
    quadrant of its input, so structure distance can be computed by hand."""

    def __init__(self):
        super().__init__()
        block = torch.nn.Module()
        block.attention = torch.nn.Module()
        block.attention.k_proj = torch.nn.Linear(3, 3, bias=False)
        torch.nn.init.eye_(block.attention.k_proj.weight)
        self.layers = torch.nn.ModuleList([block])

    def forward(self, pixel_values, interpolate_pos_encoding=False):
        patches = torch.nn.functional.avg_pool2d(pixel_values, 112).flatten(2).transpose(1, 2)  # [B, 4, 3]
        tokens = torch.cat([torch.ones_like(patches[:, :1]), patches], 1)
        return self.layers[-1].attention.k_proj(tokens)


def _quadrants(colours) -> np.ndarray:
    image = np.zeros((224, 224, 3), np.uint8)
    for (r, c), colour in zip([(0, 0), (0, 1), (1, 0), (1, 1)], colours):
        image[r * 112:(r + 1) * 112, c * 112:(c + 1) * 112] = colour
    return image


def test_structure_distance_by_hand():
    """S = cosine self-similarity of the keys; PIE-Bench normalises 0-255 values with ImageNet's
    mean and std (it never divides by 255); distance = mean (S_x - S_y)^2."""
    cx = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)]
    cy = [(255, 0, 0), (255, 0, 0), (0, 0, 255), (10, 10, 10)]
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])

    def sim(colours):
        t = np.vstack([np.ones(3), (np.array(colours, float) - mean) / std])
        t /= np.linalg.norm(t, axis=1, keepdims=True)
        return t @ t.T

    expected = ((sim(cx) - sim(cy)) ** 2).mean()
    metric = StructureDistance(_QuadrantViT())
    assert metric(_quadrants(cx), _quadrants(cy))[0] == pytest.approx(expected, rel=1e-5)
    assert metric(_quadrants(cx), _quadrants(cx))[0] == pytest.approx(0, abs=1e-12)


def test_lpips_squeeze_background_convention():
    """PIE-Bench zeroes the background on [0, 1] before mapping to [-1, 1], so the edited region is
    -1 in both images: differences there count for nothing, differences in the background do."""
    torch.manual_seed(0)
    net = LPIPSNet("squeeze")
    for lin in net.lins:
        lin.weight.data.abs_()
    assert sum(p.numel() for p in net.features.parameters()) == 722_496  # torchvision's squeezenet1_1 features
    metric = LPIPS(net)
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    mask = decode_rle([64 * 20 + 20, 16], shape=(64, 64))
    bg = background(mask)
    y = x.copy()
    y[mask] = 255 - y[mask]  # changed only where edited (border included)
    assert metric(x, y, mask=bg)[0] == 0.0
    z = x.copy()
    z[30:40, 30:40] = 0  # changed in the background
    with torch.no_grad():
        by_hand = net(torch.from_numpy(x * bg[..., None] / 255.0).permute(2, 0, 1)[None].float() * 2 - 1,
                      torch.from_numpy(z * bg[..., None] / 255.0).permute(2, 0, 1)[None].float() * 2 - 1)
    assert metric(x, z, mask=bg)[0] == pytest.approx(float(by_hand), rel=1e-6) and float(by_hand) > 0


def test_clip_whole_and_edited_by_hand(tiny_clip):
    """CLIP-W = max(100 cos, 0) of the edited image and the target prompt (torchmetrics' CLIPScore);
    CLIP-E the same of the image multiplied by the edit mask (border included)."""
    from editflow.bench.metrics.clip import preprocess

    scorer = ClipText.from_pretrained(tiny_clip, device="cpu", scale=100.0, clip_negative=True)
    rng = np.random.default_rng(2)
    out = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    mask = decode_rle([64 * 10 + 8, 30], shape=(64, 64))

    def by_hand(image, prompt):
        with torch.no_grad():
            pixels = preprocess([image], scorer.size, scorer.mean, scorer.std)
            img = scorer.model.get_image_features(pixel_values=pixels)
            tok = scorer.tokenizer([prompt], padding=True, return_tensors="pt")
            txt = scorer.model.get_text_features(input_ids=tok.input_ids, attention_mask=tok.attention_mask)
        img, txt = (getattr(v, "pooler_output", v)[0].double() for v in (img, txt))
        return 100 * float(img @ txt / (img.norm() * txt.norm()))

    unclamped = ClipText(scorer.model, scorer.tokenizer, scorer.size, scorer.mean, scorer.std, scale=100.0)
    edited = out * mask[..., None].astype(np.uint8)
    for prompt in ("a dog", "a red car parked by a tree"):
        whole, part = by_hand(out, prompt), by_hand(edited, prompt)
        assert unclamped(out, prompt)[0] == pytest.approx(whole, abs=1e-4)
        assert unclamped(out, prompt, mask=mask)[0] == pytest.approx(part, abs=1e-4)
        assert scorer(out, prompt)[0] == pytest.approx(max(whole, 0), abs=1e-4)
        assert scorer(out, prompt, mask=mask)[0] == pytest.approx(max(part, 0), abs=1e-4)


def test_the_scorer_needs_the_item_mask(tiny_clip, tiny_vit, tiny_lpips_squeeze):
    from editflow.bench.datasets import EditRecord

    score = pie_scorer(load_protocol("pie-bench"),
                       {"clip_t": tiny_clip, "structure_distance": tiny_vit, "lpips": tiny_lpips_squeeze}, "cpu")
    image = np.zeros((32, 32, 3), np.uint8)
    rec = EditRecord("x", None, "a", "b", "c")
    with pytest.raises(EditflowError, match="PIE-Bench mask"):
        score(image, image, rec)


def test_protocol_files_are_checked(tmp_path):
    import yaml

    text = load_protocol("pie-bench").text
    cases = [
        (lambda raw: raw["methods"]["flowedit"]["flux"]["params"].update(stepz=3), "flowedit.flux params are not flowedit's"),
        (lambda raw: raw.update(metrics=["a", "b"]), "metrics must be exactly"),
        (lambda raw: raw["methods"].update(flowedit=["flux"]), "flowedit must map family"),
        (lambda raw: raw["data"]["subsets"]["all"].pop("categories"), "subset 'all' needs categories"),
        (lambda raw: raw["metrics"].pop("structure_distance"), "metrics must be exactly"),
        (lambda raw: raw.update(output={"format": "gif"}), "output must be"),
        (lambda raw: raw.update(version="1"), "version must be a whole number"),
    ]
    for change, message in cases:
        raw = yaml.safe_load(text)
        change(raw)
        bad = tmp_path / "p.yaml"
        bad.write_text(yaml.safe_dump(raw))
        with pytest.raises(EditflowError, match=message) as err:
            load_protocol(bad)
        assert "\n" not in str(err.value)
    with pytest.raises(EditflowError, match="neither a packaged protocol"):
        load_protocol(tmp_path / "missing.yaml")


def test_methods_get_the_mask_without_the_evaluation_border(pie_set):
    rec = next(r for r in read_pie_bench(pie_set) if r.id == "000000000000")
    scored, given = rec.mask, rec.method_mask
    assert scored[0].all() and scored[:, 0].all() and not given[0].any() and not given[:, 0].any()
    assert (scored[1:-1, 1:-1] == given[1:-1, 1:-1]).all() and given[100:300, 120:360].all()
    empty = next(r for r in read_pie_bench(pie_set) if r.id == "911000000000")  # its run-length mask is empty
    assert (empty.method_mask == empty.mask).all() and empty.mask.sum() == 4 * 511


def test_coverage_says_whether_every_method_ran_a_whole_subset():
    import dataclasses

    from editflow.bench.published import coverage

    proto = load_protocol("pie-bench")
    raw = dict(proto.raw, data={"subsets": {"tiny": {"categories": ["0", "1"], "items": 2}}, "default_subset": "tiny"})
    tiny = dataclasses.replace(proto, raw=raw)
    row = {"protocol": proto.tag, "model": "m", "category": "c"}
    rows = [dict(row, item=i, editing_type=t, method=m) for i, t in (("a", "0"), ("b", "1")) for m in ("x", "y")]
    assert "the whole subset tiny" in coverage(rows, tiny)
    assert "not a whole subset" in coverage(rows[:-1], tiny)  # method y lacks item b
    assert "not a whole subset" in coverage(rows + [dict(row, item="c", editing_type="9", method="x")], tiny)


def test_every_parameter_is_pinned_and_only_free_ones_may_change(tmp_path):
    import yaml

    proto = load_protocol("pie-bench")
    from editflow.methods import METHODS

    for method, families in proto.raw["methods"].items():
        for family, entry in families.items():
            assert entry["params"] == METHODS[method].params.for_family(family, **entry["params"]).to_dict()
    raw = yaml.safe_load(proto.text)
    del raw["methods"]["flowedit"]["flux"]["params"]["n_avg"]
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(EditflowError, match="flowedit.flux leaves n_avg unpinned"):
        load_protocol(tmp_path / "p.yaml")
    assert proto.free_parameters == ["offload"] and proto.output == (".jpg", {"quality": 75})


def test_reports_read_the_protocol_file_the_run_kept(tmp_path):
    from editflow.bench.published import run_protocol

    proto = load_protocol("pie-bench")
    custom_text = proto.text.replace("name: pie-bench", "name: my-pie", 1)
    (tmp_path / "mine.yaml").write_text(custom_text)
    custom = load_protocol(tmp_path / "mine.yaml")
    run = tmp_path / "run"
    run.mkdir()
    rows = [{"protocol": custom.tag, "model": "tiny-flux", "family": "flux"}]
    with pytest.raises(EditflowError, match="neither .*protocol.yaml nor this editflow's my-pie"):
        run_protocol(rows, run)
    custom.keep_in(run)
    assert run_protocol(rows, run).tag == custom.tag
    with pytest.raises(EditflowError, match="holds a run of another protocol file"):
        proto.check_output_folder(run)
    with pytest.raises(EditflowError, match="several models"):
        run_protocol(rows + [dict(rows[0], model="flux-dev")], run)


def test_structure_distance_resizes_as_torchvision():
    from editflow.bench.metrics.dino import resize_shorter_side

    assert resize_shorter_side([np.zeros((512, 256, 3), np.uint8)], 224, 255, True).shape == (1, 3, 448, 224)
    # the longer side would be 1120 > 480: it becomes 480 and the shorter int(480 * 224 / 1120) = 96
    assert resize_shorter_side([np.zeros((200, 1000, 3), np.uint8)], 224, 255, True).shape == (1, 3, 96, 480)
    flat = resize_shorter_side([np.full((512, 512, 3), 100, np.uint8)], 224, 255, True)
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    assert torch.allclose(flat[0, :, 7, 9], (100 - mean) / std, atol=1e-4)  # 0-255 values, never divided by 255
