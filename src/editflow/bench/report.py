"""``editflow bench report DIR``: tables, plots and image grids from a run's JSONL records.

Writes into ``DIR/report/`` (each file to a temporary name, then renamed):

* ``summary.md``: method x metric, mean and 95% confidence half-width (normal approximation,
  ``1.96 s / sqrt(n)``), overall and per category, plus NFE and the median seconds per edit (a
  median, so that one stalled edit does not skew it); the columns
  are the usual ones where measured (CLIP-T, CLIP-I, DINO, LPIPS, DreamSim, structure distance,
  background PSNR/SSIM, PSNR, the oracle's edit accuracy ...);
* ``summary.csv``: the same numbers, one row per (category, method, metric);
* ``tradeoff.png``: one metric against another per method (default: CLIP-T vs LPIPS when both
  were measured, else background PSNR vs the oracle's edit accuracy);
* ``nfe.png``: a metric against NFE per method;
* ``grid.png``: source | each method, for the first ``--grid`` items;
* for a run made under a protocol (``bench run --protocol pie-bench``), ``summary.md`` starts with
  the protocol's table in the papers' units, and ``--compare-published`` writes ``published.md``:
  the run beside every published number of its methods (:mod:`editflow.bench.published`).

Methods run with several parameter sets are told apart as ``method[hash]``; baselines (identity,
regeneration, vae_ceiling) are labelled ``name (baseline)`` and listed after the methods.

Claims of "best" rest on paired differences: ``summary.md`` ends with, per headline metric, the
best method's mean difference to every other row over the items both scored (mean and 95%
half-width of the per-item differences, ``t_{0.975, n-1} s_d / sqrt(n)``), marked significant when
that interval excludes zero and ``n >= MIN_PAIRED``. The best method is picked on the same data it
is then compared on, which favours it slightly; the table says so. ``--against METHOD`` adds the
same table for every row minus a reference row named in advance (e.g. ``flowedit``), which has no
such bias.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
from collections import defaultdict
from pathlib import Path

import numpy as np

from ..errors import EditflowError
from .runner import read_records

# Columns of the markdown tables, in this order, where measured (the CSV has every metric).
PREFERRED = ["clip_t", "clip_i", "dino", "lpips", "lpips_bg", "dreamsim", "structure_distance", "psnr_bg", "ssim_bg",
             "psnr", "oracle_edit_correct", "oracle_structure_kept", "oracle_others_kept", "oracle_others_correct",
             "oracle_grain_corr", "oracle_psnr_inside_mask_vs_target"]
# Metrics whose paired differences summary.md reports, and the direction that is better.
HEADLINE = {"psnr_bg": 1, "oracle_edit_correct": 1, "oracle_structure_kept": 1, "oracle_others_kept": 1,
            "clip_t": 1, "lpips_bg": -1, "structure_distance": -1}


def _label(rows: list[dict]) -> dict[str, str]:
    by_method = defaultdict(set)
    for r in rows:
        by_method[r["method"]].add(_params_id(r))
    return {m: "many" if len(ids) > 1 else "one" for m, ids in by_method.items()}


def _params_id(r: dict) -> str:
    return hashlib.sha1(json.dumps(r["params"], sort_keys=True).encode()).hexdigest()[:6]


def labelled(rows: list[dict]) -> list[tuple[str, dict]]:
    kinds = _label(rows)
    out = []
    for r in rows:
        name = r["method"] if kinds[r["method"]] == "one" else f"{r['method']}[{_params_id(r)}]"
        out.append((f"{name} (baseline)" if r.get("baseline") else name, r))
    return out


def _order(label: str) -> tuple[bool, str]:
    return label.endswith("(baseline)"), label


def _value(v) -> float:
    if v is None:
        return math.nan
    if isinstance(v, str):
        return math.inf if v == "inf" else -math.inf if v == "-inf" else math.nan
    return float(v)


def mean_ci(values: list[float]) -> tuple[float, float, int]:
    """Mean and 95% half-width over the finite values (inf PSNR of identical images is left out)."""
    x = np.array([v for v in values if math.isfinite(v)], dtype=float)
    if len(x) == 0:
        return math.nan, math.nan, 0
    half = 1.96 * x.std(ddof=1) / math.sqrt(len(x)) if len(x) > 1 else math.nan
    return float(x.mean()), float(half), len(x)


def summarise(rows: list[dict]) -> tuple[list[str], dict]:
    """(metric names in display order, {(category, method): {metric: (mean, ci, n)} + extras})."""
    names = sorted({k for r in rows for k in r["metrics"]}, key=lambda k: (PREFERRED.index(k) if k in PREFERRED else 99, k))
    groups = defaultdict(list)
    for label, r in labelled(rows):
        groups[("all", label)].append(r)
        groups[(r.get("category", "?"), label)].append(r)
    table = {}
    for key, members in groups.items():
        cell = {m: mean_ci([_value(r["metrics"].get(m)) for r in members]) for m in names}
        cell["nfe_calls"] = mean_ci([r["nfe_calls"] for r in members])
        cell["seconds"] = mean_ci([r["seconds"] for r in members])
        cell["median_seconds"] = float(np.median([r["seconds"] for r in members]))
        cell["n"] = len(members)
        table[key] = cell
    return names, table


def markdown(names: list[str], table: dict, title: str) -> str:
    names = [m for m in PREFERRED if m in names] or names
    cats = ["all"] + sorted({c for c, _ in table if c != "all"})
    out = [f"# {title}", ""]
    for cat in cats:
        labels = sorted((lbl for c, lbl in table if c == cat), key=_order)
        out += [f"## {'all items' if cat == 'all' else cat}", "",
                "| method | n | NFE | s/edit (median) | " + " | ".join(names) + " |",
                "| --- " * (4 + len(names)) + "|"]
        for lbl in labels:
            cell = table[(cat, lbl)]
            vals = [f"{cell[m][0]:.4g} ± {cell[m][1]:.2g}" if cell[m][2] else "-" for m in names]
            out.append(f"| {lbl} | {cell['n']} | {cell['nfe_calls'][0]:.0f} | {cell['median_seconds']:.2f} | "
                       + " | ".join(vals) + " |")
        out.append("")
    return "\n".join(out)


MIN_PAIRED = 5
# Student's t 0.975 quantile by degrees of freedom (1..30, then 40, 60, 120; the normal beyond).
_T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
         2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042]


def t975(df: int) -> float:
    """The 0.975 quantile of Student's t with ``df`` degrees of freedom (table; 1.98 from 120 on)."""
    if df < 1:
        return math.nan
    if df <= 30:
        return _T975[df - 1]
    # between table rows, the row of fewer degrees of freedom (a slightly wider, conservative interval)
    return 2.042 if df < 40 else 2.021 if df < 60 else 2.000 if df < 120 else 1.980


def paired_ci(diffs: list[float]) -> tuple[float, float, int]:
    """Mean and 95% half-width (Student's t) of per-item differences, over the finite ones."""
    x = np.array([v for v in diffs if math.isfinite(v)], dtype=float)
    if len(x) == 0:
        return math.nan, math.nan, 0
    half = t975(len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x)) if len(x) > 1 else math.nan
    return float(x.mean()), float(half), len(x)


def _per_item(rows: list[dict], metric: str) -> dict[str, dict[str, float]]:
    """label -> item -> the finite values of ``metric``."""
    values: dict[str, dict[str, float]] = defaultdict(dict)
    for label, r in labelled(rows):
        v = _value(r["metrics"].get(metric))
        if math.isfinite(v):
            values[label][r["item"]] = v
    return values


def _differences(values: dict[str, dict[str, float]], anchor: str, sign: int = 1) -> list[tuple[str, float, float, int]]:
    """``(label, mean(sign (anchor - other)), 95% half-width, n)`` for every other row, same items."""
    out = []
    for other in sorted(values, key=_order):
        if other == anchor:
            continue
        common = sorted(set(values[anchor]) & set(values[other]))
        mean, half, n = paired_ci([sign * (values[anchor][i] - values[other][i]) for i in common])
        out.append((other, mean, half, n))
    return out


def paired(rows: list[dict], metric: str) -> tuple[str, list[tuple[str, float, float, int]]] | None:
    """The best non-baseline row on ``metric`` (by mean, in the direction :data:`HEADLINE` gives)
    and, for every other row, ``(label, mean(best - other), 95% half-width, n)`` over the items
    both scored with finite values. None when no method scored ``metric``."""
    sign = HEADLINE.get(metric, 1)
    values = _per_item(rows, metric)
    methods = [lbl for lbl in values if not lbl.endswith("(baseline)")]
    if not methods:
        return None
    best = max(methods, key=lambda lbl: sign * float(np.mean(list(values[lbl].values()))))
    return best, _differences(values, best)


def against(rows: list[dict], metric: str, reference: str) -> list[tuple[str, float, float, int]] | None:
    """For every row but ``reference``: ``(label, mean(row - reference), 95% half-width, n)`` over
    the items both scored. None when ``reference`` did not score ``metric``."""
    values = _per_item(rows, metric)
    if reference not in values:
        return None
    return _differences(values, reference, sign=-1)


def _difference_rows(diffs: list[tuple[str, float, float, int]]) -> list[str]:
    """Markdown rows ``| label | difference | ± half-width | n | significant |``; significant = the
    interval excludes 0 with at least ``MIN_PAIRED`` items."""
    return [f"| {label} | {mean:+.4g} | ± {half:.2g} | {n} | "
            f"{'yes' if n >= MIN_PAIRED and math.isfinite(half) and abs(mean) > half else 'no'} |"
            for label, mean, half, n in diffs]


def against_markdown(rows: list[dict], names: list[str], reference: str) -> str:
    labels = {label for label, _ in labelled(rows)}
    if reference not in labels:
        raise EditflowError(f"--against {reference!r} names no row of this run: use one of {', '.join(sorted(labels, key=_order))}")
    out = [f"## Paired differences against {reference} (each row minus {reference}, same items)", "",
           f"95% intervals from Student's t; significant = the interval excludes 0 with at least {MIN_PAIRED} items. "
           f"{reference} was named before the run, not picked on these items.", ""]
    for metric in (m for m in HEADLINE if m in names):
        diffs = against(rows, metric, reference)
        if diffs is None:
            continue
        better = "higher" if HEADLINE[metric] > 0 else "lower"
        out += [f"**{metric}** ({better} is better)", "",
                f"| row | row minus {reference} | 95% CI | n | significant |", "| --- | --- | --- | --- | --- |"]
        out += _difference_rows(diffs) + [""]
    return "\n".join(out)


def paired_markdown(rows: list[dict], names: list[str]) -> str:
    out = ["## Paired differences (best method minus each row, same items)", "",
           f"95% intervals from Student's t over the per-item differences; significant = the interval excludes 0 "
           f"with at least {MIN_PAIRED} items. The best method was picked on these same items.", ""]
    for metric in (m for m in HEADLINE if m in names):
        result = paired(rows, metric)
        if result is None:
            continue
        best, diffs = result
        better = "higher" if HEADLINE[metric] > 0 else "lower"
        out += [f"**{metric}** ({better} is better): best method `{best}`", "",
                "| row | best minus row | 95% CI | n | significant |", "| --- | --- | --- | --- | --- |"]
        out += _difference_rows(diffs)
        out.append("")
    return "\n".join(out)


def csv_text(names: list[str], table: dict) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["category", "method", "metric", "mean", "ci95", "n"])
    for (cat, lbl), cell in sorted(table.items()):
        for m in names + ["nfe_calls", "seconds"]:
            mean, ci, n = cell[m]
            w.writerow([cat, lbl, m, mean, ci, n])
    return buf.getvalue()


def _write(path: Path, data: str | bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data.encode() if isinstance(data, str) else data)
    tmp.replace(path)


def _plots(names, table, folder: Path, x: str | None, y: str | None) -> list[Path]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        import logging

        logging.getLogger("editflow").warning("matplotlib is missing, so no plots: pip install -e .[bench]")
        return []
    if x is None or y is None:
        if "clip_t" in names and "lpips" in names:
            x, y = "lpips", "clip_t"
        elif "psnr_bg" in names and "oracle_edit_correct" in names:
            x, y = "psnr_bg", "oracle_edit_correct"
        else:
            x, y = names[0], names[min(1, len(names) - 1)]
    written = []
    labels = sorted(lbl for c, lbl in table if c == "all")
    for name, xs, ys in (("tradeoff.png", x, y), ("nfe.png", "nfe_calls", y)):
        fig, ax = plt.subplots(figsize=(6, 4.2))
        for lbl in labels:
            cell = table[("all", lbl)]
            ax.errorbar(cell[xs][0], cell[ys][0], xerr=cell[xs][1] if xs != "nfe_calls" else None,
                        yerr=cell[ys][1], fmt="o", capsize=3, label=lbl)
        ax.set_xlabel(xs)
        ax.set_ylabel(ys)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110)
        plt.close(fig)
        _write(folder / name, buf.getvalue())
        written.append(folder / name)
    return written


def _grid(rows: list[dict], root: Path, folder: Path, n_items: int, cell: int = 128) -> Path | None:
    from PIL import Image, ImageDraw

    pairs = labelled(rows)
    labels = sorted({lbl for lbl, _ in pairs})
    by_item = defaultdict(dict)
    for lbl, r in pairs:
        by_item[r["item"]][lbl] = r
    items = sorted(by_item)[:n_items]
    if not items:
        return None
    header = 18
    sheet = Image.new("RGB", ((1 + len(labels)) * cell, header + len(items) * cell), "white")
    draw = ImageDraw.Draw(sheet)
    for j, name in enumerate(["source"] + labels):
        draw.text((j * cell + 4, 3), name[:20], fill="black")
    for i, item in enumerate(items):
        any_row = next(iter(by_item[item].values()))
        tiles = [Path(any_row["source_image"])] + [root / by_item[item][lbl]["image"] if lbl in by_item[item] else None
                                                   for lbl in labels]
        for j, path in enumerate(tiles):
            if path is not None and Path(path).exists():
                sheet.paste(Image.open(path).convert("RGB").resize((cell, cell), Image.LANCZOS),
                            (j * cell, header + i * cell))
    buf = io.BytesIO()
    sheet.save(buf, format="PNG")
    _write(folder / "grid.png", buf.getvalue())
    return folder / "grid.png"


def report(run_dir: str, x: str | None = None, y: str | None = None, grid_items: int = 8,
           title: str | None = None, against_row: str | None = None, compare_published: bool = False) -> Path:
    from .published import protocol_markdown, published_markdown, run_protocol

    root = Path(run_dir)
    rows = read_records(root) if root.exists() else []
    if not rows:
        raise EditflowError(f"no results in {root}: run `editflow bench run --out {root}` first")
    protocol = run_protocol(rows, root)
    compared = published_markdown(rows, root) if compare_published else None  # refused before anything is written
    names, table = summarise(rows)
    folder = root / "report"
    folder.mkdir(exist_ok=True)
    text = markdown(names, table, title or f"Benchmark {root.name}: {len(rows)} edits") + "\n" + paired_markdown(rows, names)
    if protocol is not None:
        text = text.replace("\n", "\n\n" + protocol_markdown(rows, protocol), 1)
    if compared is not None:
        _write(folder / "published.md", compared)
    if against_row is not None:
        text += "\n" + against_markdown(rows, names, against_row)
    _write(folder / "summary.md", text)
    _write(folder / "summary.csv", csv_text(names, table))
    _plots(names, table, folder, x, y)
    _grid(rows, root, folder, grid_items)
    return folder / "summary.md"
