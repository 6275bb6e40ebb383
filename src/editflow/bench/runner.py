"""The resumable benchmark runner behind ``editflow bench run``.

One JSONL record per (item, method, parameters), written with one ``write`` call, flushed and
fsynced before the next item starts; a re-run reads every shard in the output folder and skips
the keys already there (a line cut by a crash is dropped and the file truncated to its last
complete line), so killing a run loses at most the item in flight. Under ``accelerate launch``
(or any launcher that sets ``RANK`` / ``WORLD_SIZE``) process ``r`` of ``w`` takes items
``r, r + w, ...`` and writes ``results.r{r}.jsonl``: no item is done twice.

A record: ``key, item, category, method, params, model, seed, metrics{...}, nfe_calls, nfe_rows,
seconds, peak_memory_bytes, image`` (the edited image, relative to the output folder).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import EditflowError
from .datasets import EditRecord, load_dataset

PIXEL_METRICS = ("psnr", "ssim", "mse")


def process_rank() -> tuple[int, int]:
    """``(rank, world_size)`` from the launcher's environment (accelerate / torchrun set both)."""
    rank = int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if not 0 <= rank < world:
        raise EditflowError(f"RANK={rank} is not below WORLD_SIZE={world}")
    return rank, world


def record_key(item: str, method: str, params: dict, model: str, seed: int) -> str:
    blob = json.dumps({"item": item, "method": method, "params": params, "model": model, "seed": seed},
                      sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:16]


def read_records(out: Path, repair: bool = False) -> list[dict]:
    """All complete records of every shard in ``out``; ``repair`` truncates a cut last line."""
    rows = []
    for shard in sorted(out.glob("results*.jsonl")):
        data = shard.read_bytes()
        complete = data[: data.rfind(b"\n") + 1]
        if repair and len(complete) != len(data):
            with open(shard, "r+b") as f:
                f.truncate(len(complete))
        for line in complete.decode().splitlines():
            if line.strip():
                rows.append(json.loads(line))
    return rows


def append_record(path: Path, record: dict) -> None:
    line = (json.dumps(record, sort_keys=True) + "\n").encode()
    with open(path, "ab") as f:
        f.write(line)
        f.flush()
        os.fsync(f.fileno())


def parse_sets(pairs: list[str], methods: list[str]) -> dict[str, dict[str, Any]]:
    """``method.key=value`` (or ``key=value`` for every method that has it) -> overrides per method."""
    from ..methods import get_method
    from ..methods.base import coerce_value

    out: dict[str, dict[str, Any]] = {m: {} for m in methods}
    for pair in pairs:
        if "=" not in pair:
            raise EditflowError(f"--set expects method.key=value, got {pair!r}")
        name, value = pair.split("=", 1)
        target, _, key = name.rpartition(".")
        targets = [target] if target else methods
        if target and target not in methods:
            raise EditflowError(f"--set {pair!r} names method {target!r}, which is not in --methods")
        applied = False
        for m in targets:
            params = get_method(m).params
            if key in {f.name for f in dataclasses.fields(params)}:
                out[m][key] = coerce_value(params, key, value)
                applied = True
        if not applied:
            raise EditflowError(f"--set {pair!r}: no method in --methods has a parameter {key!r}")
    return out


@dataclass
class Metric:
    """A metric as the runner calls it: ``fn(source, edited, record) -> dict of floats``."""

    name: str
    fn: Callable[[np.ndarray, np.ndarray, EditRecord], dict[str, float]]


def pixel_metrics() -> list[Metric]:
    from .metrics import MSE, PSNR, SSIM

    psnr, mse, ssim = PSNR(), MSE(), SSIM()

    def fn(src, out, rec):
        values = {"psnr": psnr(src, out)[0], "ssim": ssim(src, out)[0], "mse": mse(src, out)[0]}
        mask = rec.mask
        if mask is not None and mask.shape == src.shape[:2] and not mask.all():
            bg = ~mask
            values.update(psnr_bg=psnr(src, out, mask=bg)[0], ssim_bg=ssim(src, out, mask=bg)[0],
                          mse_bg=mse(src, out, mask=bg)[0])
        return values

    return [Metric("pixels", fn)]


def oracle_metric() -> Metric:
    """The shapes world's exact scores, for records that carry their scenes."""
    from PIL import Image

    from .. import world

    def fn(src, out, rec):
        if "source_scene" not in rec.extras or out.shape[:2] != src.shape[:2]:
            return {}
        edit = world.Edit(rec.category, world.Scene.from_dict(rec.extras["source_scene"]),
                          world.Scene.from_dict(rec.extras["target_scene"]), rec.extras.get("index"))
        target = np.asarray(Image.open(rec.target_image).convert("RGB"))
        ex = world.EditExample(rec.category, src, target, rec.source_prompt, rec.target_prompt, rec.mask, edit)
        scores = world.edit_scores(ex, out)
        return {f"oracle_{k}": float(v) for k, v in scores.items() if isinstance(v, (bool, int, float, np.floating))}

    return Metric("oracle", fn)


def model_metrics(names: list[str], paths: dict[str, str], device=None) -> list[Metric]:
    """CLIP-T, CLIP-I, DINO, structure distance, LPIPS, DreamSim as asked; loaded before any edit."""
    from .metrics import METRICS

    out = []
    for name in names:
        if name not in METRICS or name in PIXEL_METRICS:
            raise EditflowError(f"unknown metric {name!r}: use any of {', '.join(sorted(set(METRICS) - set(PIXEL_METRICS)))}")
        cls = METRICS[name]
        metric = cls.from_pretrained(paths[name], device=device) if name in paths else cls.from_pretrained(device=device)
        if name == "clip_t":
            out.append(Metric(name, lambda s, o, r, m=metric: {"clip_t": m(o, r.target_prompt)[0]}))
        elif name == "lpips":
            def lp(s, o, r, m=metric):
                v = {"lpips": m(s, o)[0]}
                if r.mask is not None and r.mask.shape == s.shape[:2] and not r.mask.all():
                    v["lpips_bg"] = m(s, o, mask=~r.mask)[0]
                return v
            out.append(Metric(name, lp))
        else:
            out.append(Metric(name, lambda s, o, r, m=metric, n=name: {n: m(s, o)[0]}))
    return out


def run(data: str, methods: list[str], model_name: str, out: str, sets: list[str] | None = None,
        metrics: list[str] | None = None, metric_paths: dict[str, str] | None = None, seed: int = 0,
        limit: int | None = None, device: str | None = None, progress: bool = True) -> Path:
    """Run every (item, method) not yet in ``out``; returns this process's shard path."""
    from ..api import edit
    from ..images import save_image
    from ..methods import get_method
    from ..models.zoo import load_model

    rank, world_size = process_rank()
    items = load_dataset(data)[:limit] if limit else load_dataset(data)
    for m in methods:
        get_method(m)
    overrides = parse_sets(sets or [], methods)
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    metric_list = pixel_metrics() + [oracle_metric()] + model_metrics(metrics or [], metric_paths or {}, device)
    model = load_model(model_name, device=device)
    resolved = {m: get_method(m).params.for_family(model.family, **overrides[m]).to_dict() for m in methods}
    done = {r["key"] for r in read_records(root, repair=True)}
    shard = root / f"results.r{rank}.jsonl"
    todo = [(i, m) for i, rec in enumerate(items) if i % world_size == rank for m in methods
            if record_key(rec.id, m, resolved[m], model_name, seed) not in done]
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(todo), desc=f"bench r{rank}", unit="edit", file=sys.stderr)
    from PIL import Image

    loaded = None  # (index, record with its mask in memory, source image): todo runs item by item
    for i, m in todo:
        if loaded is None or loaded[0] != i:
            mask = items[i].mask  # decoded once per item, not once per method and metric
            rec = dataclasses.replace(items[i], mask_loader=None if mask is None else (lambda mask=mask: mask))
            loaded = (i, rec, Image.open(rec.image).convert("RGB"))
        _, rec, source = loaded
        result = edit(model, source, rec.source_prompt, rec.target_prompt, method=m, seed=seed + i,
                      mask=rec.mask if get_method(m).params.NEEDS_MASK else None, **overrides[m])
        key = record_key(rec.id, m, resolved[m], model_name, seed)
        rel = Path("images") / f"{m}-{key[:6]}" / (rec.id.replace("/", "__").replace(os.sep, "__") + ".png")
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        save_image(result.image, root / rel)
        src, edited = np.asarray(source), np.asarray(result.image)
        values: dict[str, float] = {}
        for metric in metric_list:
            values.update(metric.fn(src, edited, rec))
        append_record(shard, {
            "key": key, "item": rec.id, "category": rec.category, "method": m, "params": resolved[m],
            "model": model_name, "seed": seed, "metrics": {k: _finite(v) for k, v in values.items()},
            "nfe_calls": result.nfe.calls, "nfe_rows": result.nfe.rows, "seconds": result.seconds,
            "peak_memory_bytes": result.peak_memory_bytes, "image": str(rel), "source_image": str(rec.image),
            "rank": rank,
        })
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return shard


def _finite(v: float):
    v = float(v)
    return v if np.isfinite(v) else None if np.isnan(v) else ("inf" if v > 0 else "-inf")
