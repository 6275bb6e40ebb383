"""The report: statistics, tables, CSV, plots and grid from run records."""

import csv
import json
import math

import numpy as np
import pytest
from PIL import Image

from editflow.bench.report import mean_ci, report
from editflow.errors import EditflowError


def test_mean_and_confidence_interval():
    mean, half, n = mean_ci([1.0, 2.0, 3.0, 4.0, float("inf"), float("nan")])
    assert n == 4 and mean == 2.5
    assert half == pytest.approx(1.96 * np.std([1, 2, 3, 4], ddof=1) / 2)
    assert mean_ci([]) [2] == 0 and math.isnan(mean_ci([5.0])[1])


def _fake_run(root, rng):
    (root / "images").mkdir(parents=True)
    src = root / "src.png"
    Image.new("RGB", (16, 16), (10, 200, 10)).save(src)
    rows = []
    for method, params, quality in (("flowedit", {"steps": 28}, 30.0), ("kv_edit", {"steps": 28}, 36.0),
                                    ("kv_edit", {"steps": 8}, 33.0)):
        for i in range(10):
            image = f"images/{method}-{params['steps']}/{i}.png"
            (root / image).parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (16, 16), (int(quality * 5), 0, 0)).save(root / image)
            rows.append({"key": f"{method}{params['steps']}-{i}", "item": f"{i:03d}", "category": "color" if i % 2 else "shape",
                         "method": method, "params": params, "model": "m", "seed": 0,
                         "metrics": {"psnr_bg": quality + rng.normal(), "oracle_edit_correct": float(i % 3 == 0),
                                     "psnr": "inf" if i == 0 else quality},
                         "nfe_calls": 24, "nfe_rows": 48, "seconds": 0.5, "peak_memory_bytes": 1, "image": image,
                         "source_image": str(src), "rank": 0})
    (root / "results.r0.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


def test_report_writes_table_csv_plots_and_grid(tmp_path):  # matplotlib: a test extra
    rows = _fake_run(tmp_path, np.random.default_rng(0))
    summary = report(str(tmp_path))
    text = summary.read_text()
    # the two kv_edit parameter sets are told apart; flowedit has one
    assert "| flowedit | 10 |" in text and text.count("| kv_edit[") >= 2
    assert "## color" in text and "## shape" in text
    flow = [r["metrics"]["psnr_bg"] for r in rows if r["method"] == "flowedit"]
    assert f"{np.mean(flow):.4g}" in text
    with open(tmp_path / "report" / "summary.csv") as f:
        table = list(csv.DictReader(f))
    cell = next(r for r in table if r["category"] == "all" and r["method"] == "flowedit" and r["metric"] == "psnr")
    assert int(cell["n"]) == 9  # the inf of an identical image is left out of the mean
    for name in ("tradeoff.png", "nfe.png", "grid.png"):
        assert Image.open(tmp_path / "report" / name).size[0] > 100
    grid = Image.open(tmp_path / "report" / "grid.png")
    assert grid.size == (4 * 128, 18 + 8 * 128)  # source + 3 labelled methods, 8 items


def test_report_on_an_empty_folder_is_a_clear_error(tmp_path):
    with pytest.raises(EditflowError, match="no results"):
        report(str(tmp_path))


def test_an_edit_recorded_twice_counts_once(tmp_path):
    rows = _fake_run(tmp_path, np.random.default_rng(0))
    # an older runner, started twice on one folder, wrote every edit a second time into another shard
    (tmp_path / "results.r1.jsonl").write_text("".join(json.dumps(dict(r, metrics={"psnr_bg": 0.0})) + "\n" for r in rows))
    text = report(str(tmp_path)).read_text()
    assert f": {len(rows)} edits" in text and "| flowedit | 10 |" in text
    flow = [r["metrics"]["psnr_bg"] for r in rows if r["method"] == "flowedit"]
    assert f"{np.mean(flow):.4g}" in text  # the first record of each key, not the duplicate's 0.0


def test_paired_differences_pick_the_best_method_and_test_against_baselines():
    """A method 1 dB above another on every item differs significantly even when the item-to-item
    spread (10 dB) hides it from the unpaired intervals; baselines are compared, never picked."""
    from editflow.bench.report import paired

    rng = np.random.default_rng(1)
    base = rng.normal(30, 10, size=40)
    rows = []
    for method, shift, baseline in (("a", 1.0, False), ("b", 0.0, False), ("regeneration", 50.0, True)):
        for i, v in enumerate(base):
            rows.append({"key": f"{method}{i}", "item": str(i), "method": method, "params": {}, "baseline": baseline,
                         "metrics": {"psnr_bg": v + shift + rng.normal(0, 0.1), "lpips_bg": 1.0 - shift / 10}})
    best, diffs = paired(rows, "psnr_bg")
    assert best == "a"  # the baseline scores higher but is never "best"
    by = {label: (mean, half, n) for label, mean, half, n in diffs}
    mean, half, n = by["b"]
    assert n == 40 and mean == pytest.approx(1.0, abs=0.1) and half < 0.1
    assert by["regeneration (baseline)"][0] == pytest.approx(-49.0, abs=0.2)
    assert paired(rows, "lpips_bg")[0] == "a"  # lower is better for LPIPS
    assert paired(rows, "clip_t") is None
    few = [r for r in rows if int(r["item"]) < 3]
    _, diffs = paired(few, "psnr_bg")
    mean, half, n = next(d[1:] for d in diffs if d[0] == "b")
    assert n == 3 and half == pytest.approx(4.303 * np.std([few[i]["metrics"]["psnr_bg"] - few[i + 3]["metrics"]["psnr_bg"]
                                                            for i in range(3)], ddof=1) / np.sqrt(3))


def test_differences_against_a_named_row_are_row_minus_it():
    from editflow.bench.report import against, against_markdown

    rng = np.random.default_rng(2)
    base = rng.normal(30, 10, size=20)
    rows = [{"key": f"{m}{i}", "item": str(i), "method": m, "params": {}, "baseline": False,
             "metrics": {"psnr_bg": v + shift}} for m, shift in (("flowedit", 0.0), ("new", 2.0), ("old", -1.0))
            for i, v in enumerate(base)]
    by = {label: (mean, half, n) for label, mean, half, n in against(rows, "psnr_bg", "flowedit")}
    assert set(by) == {"new", "old"} and by["new"][0] == pytest.approx(2.0) and by["old"][0] == pytest.approx(-1.0)
    assert by["new"][2] == 20 and by["new"][1] < 1e-9
    text = against_markdown(rows, ["psnr_bg"], "flowedit")
    assert "| new | +2 |" in text and "row minus flowedit" in text
    assert against(rows, "clip_t", "flowedit") is None
    with pytest.raises(EditflowError, match="--against 'fe' names no row of this run: use one of flowedit"):
        against_markdown(rows, ["psnr_bg"], "fe")
