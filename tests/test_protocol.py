"""The pinned PIE-Bench protocol: a synthetic PIE-Bench-format set through `bench run --protocol
pie-bench` on tiny-flux, each metric against values computed by hand with PIE-Bench's mask
convention, and the protocol's refusals."""

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
ITEMS = [
    ("000000000000", "0", "a [cat] sitting on a mat", "a [dog] sitting on a mat", "cat dog", (100, 300, 120, 360)),
    ("111000000000", "1", "a red [apple] on a table", "a red [pear] on a table", "apple pear", (200, 400, 150, 330)),
    ("611000000000", "6", "a [blue] car in the street", "a [green] car in the street", "car car", (0, 512, 0, 512)),
    ("911000000000", "9", "a photo of a house", "a [watercolor painting] of a house", "", (0, 0, 0, 0)),
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
    return subprocess.run([sys.executable, "-m", "editflow", "bench", *map(str, args)], env=_env(), capture_output=True,
                          text=True, timeout=600, check=check)


@pytest.fixture(scope="module")
def protocol_run(pie_set, tiny_clip, tiny_vit, tiny_lpips_squeeze, tmp_path_factory):
    out = tmp_path_factory.mktemp("pie-run")
    _bench("run", "--data", pie_set, "--protocol", "pie-bench", "--subset", "no-style", "--methods", "flowedit,uniedit",
           "--model", "tiny-flux", "--device", "cpu", "--out", out, "--baselines", "identity", "-q",
           "--metric-model", f"clip_t={tiny_clip}", "--metric-model", f"structure_distance={tiny_vit}",
           "--metric-model", f"lpips={tiny_lpips_squeeze}")
    return out


def test_protocol_run_records_version_parameters_and_pie_metrics(protocol_run):
    rows = read_records(protocol_run)
    proto = load_protocol("pie-bench")
    # no-style: category 9 left out; 3 items x (2 methods + identity)
    assert len(rows) == 9 and {r["item"] for r in rows} == {k for k, t, *_ in ITEMS if t != "9"}
    for r in rows:
        assert r["protocol"] == {"name": "pie-bench", "version": proto.version} and r["family"] == "flux"
        assert set(proto.metrics) <= set(r["metrics"])
    flowedit = [r for r in rows if r["method"] == "flowedit"]
    pinned = proto.params("flowedit", "flux")
    assert all(r["params"] == pinned for r in flowedit)  # the full hyperparameters, as pinned
    uniedit = next(r for r in rows if r["method"] == "uniedit")
    assert {k: uniedit["params"][k] for k in proto.params("uniedit", "flux")} == proto.params("uniedit", "flux")
    assert set(uniedit["params"]) > set(proto.params("uniedit", "flux"))  # defaults not pinned are recorded too
    # the identity baseline: nothing changed, so every background metric is perfect
    ident = next(r for r in rows if r["method"] == "identity" and r["item"] == "000000000000")["metrics"]
    assert ident["structure_distance"] == 0 and ident["mse_unedit_part"] == 0 and ident["psnr_unedit_part"] == "inf"
    assert ident["lpips_unedit_part"] == 0 and ident["ssim_unedit_part"] == pytest.approx(1.0)
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
        (["--set", "steps=3"], "pins every method's parameters"),
        (["--methods", "personalize_anything"], "pins no parameters for personalize_anything"),
        (["--subset", "most"], "--subset 'most' is not a subset"),
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
    """CLIP-W = max(100 cos, 0) of the edited image and the target prompt; CLIP-E the same of the
    image multiplied by the edit mask (border included)."""
    raw = ClipText.from_pretrained(tiny_clip, device="cpu")
    rng = np.random.default_rng(2)
    out = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    mask = decode_rle([64 * 10 + 8, 30], shape=(64, 64))
    cos_whole = float(raw(out, "a dog")[0])
    cos_edit = float(raw(out * mask[..., None].astype(np.uint8), "a dog")[0])
    scorer = ClipText(raw.model, raw.tokenizer, raw.size, raw.mean, raw.std, scale=100.0, clip_negative=True)
    assert scorer(out, "a dog")[0] == pytest.approx(max(100 * cos_whole, 0), abs=1e-4)
    assert scorer(out, "a dog", mask=mask)[0] == pytest.approx(max(100 * cos_edit, 0), abs=1e-4)


def test_the_scorer_needs_the_item_mask(tiny_clip, tiny_vit, tiny_lpips_squeeze):
    from editflow.bench.datasets import EditRecord

    score = pie_scorer(load_protocol("pie-bench"),
                       {"clip_t": tiny_clip, "structure_distance": tiny_vit, "lpips": tiny_lpips_squeeze}, "cpu")
    image = np.zeros((32, 32, 3), np.uint8)
    rec = EditRecord("x", None, "a", "b", "c")
    with pytest.raises(EditflowError, match="PIE-Bench mask"):
        score(image, image, rec)


def test_protocol_files_are_checked(tmp_path):
    bad = tmp_path / "p.yaml"
    bad.write_text("name: x\nversion: 1\ndata: {subsets: {all: {categories: ['0']}}, default_subset: all}\n"
                   "metrics: {}\nmethods: {flowedit: {flux: {params: {stepz: 3}, source: me}}}\n")
    with pytest.raises(EditflowError, match="flowedit.flux params are not flowedit's"):
        load_protocol(bad)
    with pytest.raises(EditflowError, match="neither a packaged protocol"):
        load_protocol(tmp_path / "missing.yaml")
