"""The resumable benchmark runner behind ``editflow bench run``.

One JSONL record per (item, method, parameters), written with one ``write`` call, flushed and
fsynced before the next item starts; a re-run reads every shard in the output folder and skips
the keys already there (a line cut by a crash is dropped and the file truncated to its last
complete line), so killing a run loses at most the item in flight. Under ``accelerate launch``
(or any launcher that sets ``RANK`` / ``WORLD_SIZE``) process ``r`` of ``w`` takes items
``r, r + w, ...`` and writes ``results.r{r}.jsonl``: no item is done twice.

A record: ``key, item, category, method, params, model, seed, item_seed (the seed the item was
edited with), metrics{...}, nfe_calls, nfe_rows, seconds, peak_memory_bytes, image`` (the edited
image, relative to the output folder).

Every run also scores the baselines of :mod:`editflow.bench.baselines` (identity, regeneration
from the target prompt, the ground truth through the VAE where the dataset has one) on the same
items and metrics, recorded as methods of those names, unless ``baselines`` says otherwise.

Before any model loads, :func:`run` checks the whole dataset, the methods, ``--set`` values,
``limit`` and the seed range, then takes an exclusive lock on ``OUT/.lock.r{rank}`` (``flock``,
released by the kernel when the process ends, so a killed run leaves no stale lock): a second
run on the same folder and rank is refused with the first one's pid. A write that fails (full
disk, read-only folder) is one :class:`EditflowError` line; re-running resumes.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import os
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import EditflowError
from ..limits import SEED_MAX, Limits
from .baselines import BASELINES, applies, baseline_params, check_baselines, parse_baselines, run_baseline
from .datasets import EditRecord, image_stem, load_dataset, one_line

PIXEL_METRICS = ("psnr", "ssim", "mse")
RESUME = "re-run the same command: it resumes where it stopped"


def process_rank() -> tuple[int, int]:
    """``(rank, world_size)`` from the launcher's environment (accelerate / torchrun set both)."""
    try:
        rank = int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")))
        world = int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise EditflowError("RANK, LOCAL_RANK and WORLD_SIZE must be whole numbers: let the launcher set them") from None
    if not 0 <= rank < world:
        raise EditflowError(f"RANK={rank} is not below WORLD_SIZE={world}")
    return rank, world


def known_family(model_name: str) -> str | None:
    """The model's family when its name tells it (zoo names, local folders), else None: a hub id's
    (or a folder load_model will explain) is known once it loads."""
    from ..models.zoo import model_family

    try:
        return model_family(model_name)
    except (EditflowError, OSError, ValueError):
        return None


@contextmanager
def output_shard(root: Path, rank: int, option: str):
    """Create ``root`` (a failure names ``option`` to change), hold its lock for ``rank``
    (:func:`run_lock`) and give this process's shard ``root/results.r{rank}.jsonl``."""
    with writing(root, f"pass another {option}"):
        root.mkdir(parents=True, exist_ok=True)
    with run_lock(root, rank):
        yield root / f"results.r{rank}.jsonl"


def item_index(rec: EditRecord, i: int) -> int:
    """What item ``i`` of a run adds to the seed: its position in the dataset file under a protocol
    (so a subset edits each item as the whole set does), else ``i``."""
    return rec.extras.get("position", i)


def rank_device(device: str | None) -> str | None:
    """``device``, or under a multi-process launcher on a CUDA machine, ``cuda:LOCAL_RANK`` (each
    process its own GPU; without a launcher, ``None``: load_model's default)."""
    if device is not None or int(os.environ.get("WORLD_SIZE", "1") or 1) <= 1:
        return device
    import torch

    if not torch.cuda.is_available():
        return device
    local = int(os.environ.get("LOCAL_RANK", "0") or 0)
    return f"cuda:{local % max(torch.cuda.device_count(), 1)}"


def record_key(item: str, method: str, params: dict, model: str, seed: int, protocol: dict | None = None,
               **extra) -> str:
    """The record's identity; a run under a protocol (its tag ``{name, version, digest}``) keys apart
    from one without; ``extra`` fields (``editflow batch``: prompts, file digests) join it, those
    that are None left out."""
    fields = {"item": item, "method": method, "params": params, "model": model, "seed": seed, "protocol": protocol,
              **extra}
    blob = json.dumps({k: v for k, v in fields.items() if v is not None}, sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:16]


def model_label(model_name: str, load_options: dict) -> str:
    """``flux-dev``, or with load options ``flux-dev lora=a.safetensors:0.8 quantize=int8``."""
    words = [model_name]
    for key in sorted(load_options):
        value = load_options[key]
        words.append(f"{key}={','.join(map(str, value)) if isinstance(value, (list, tuple)) else value}")
    return " ".join(words)


def read_records(out: Path, repair: Path | None = None) -> list[dict]:
    """All complete records of every shard in ``out``, each key once (the first one read, so that
    an edit done twice by an older version counts once); ``repair`` names the shard (this
    process's) whose cut last line is truncated."""
    rows, keys = [], set()
    for shard in sorted(out.glob("results*.jsonl")):
        data = shard.read_bytes()
        complete = data[: data.rfind(b"\n") + 1]
        if repair is not None and shard == repair and len(complete) != len(data):
            with writing(shard), open(shard, "r+b") as f:
                f.truncate(len(complete))
        for n, line in enumerate(complete.decode("utf-8", errors="replace").split("\n"), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                if row["key"] in keys:
                    continue
                keys.add(row["key"])
            except (ValueError, TypeError, KeyError):
                raise EditflowError(f"{shard} line {n} is not a bench record: move that file out of {out} "
                                    "(or delete the line) and re-run") from None
            rows.append(row)
    return rows


@contextmanager
def writing(path: Path, fix: str | None = None):
    """An ``OSError`` in the block (full disk, read-only folder, a file in the way) becomes one
    :class:`EditflowError` line naming ``path`` and ``fix`` (by default: free space or fix the
    folder, then re-run, which resumes)."""
    try:
        yield
    except OSError as exc:
        full = exc.errno == errno.ENOSPC
        why = "the disk is full" if full else (exc.strerror or str(exc))
        fix = fix or ("free some space" if full else "fix that") + ", then " + RESUME
        raise EditflowError(one_line(f"cannot write {path} ({why}): {fix}")) from None


def append_record(path: Path, record: dict) -> None:
    """One JSON line, written with one ``write`` call, flushed and fsynced."""
    line = (json.dumps(record, sort_keys=True) + "\n").encode()
    with writing(path), open(path, "ab") as f:
        f.write(line)
        f.flush()
        os.fsync(f.fileno())


@contextmanager
def run_lock(root: Path, rank: int):
    """Hold an exclusive ``flock`` on ``root/.lock.r{rank}`` (which holds our pid) for the block,
    or refuse with the pid of the run that holds it. The kernel drops the lock when its process
    ends, so the file a killed run leaves behind blocks nothing."""
    import fcntl

    path = root / f".lock.r{rank}"
    with writing(path, "pass another --out"):
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise EditflowError(f"another editflow bench run (pid {pid}) is writing {root} (rank {rank}): "
                                "wait for it to finish or pass another --out") from None
        with writing(path, "pass another --out"):
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)


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
    from .. import world
    from ..images import load_image

    def fn(src, out, rec):
        if "source_scene" not in rec.extras or out.shape[:2] != src.shape[:2]:
            return {}
        edit = world.Edit(rec.category, world.Scene.from_dict(rec.extras["source_scene"]),
                          world.Scene.from_dict(rec.extras["target_scene"]), rec.extras.get("index"))
        target = np.asarray(load_image(rec.target_image))
        ex = world.EditExample(rec.category, src, target, rec.source_prompt, rec.target_prompt, rec.mask, edit)
        scores = world.edit_scores(ex, out)
        return {f"oracle_{k}": float(v) for k, v in scores.items() if isinstance(v, (bool, int, float, np.floating))}

    return Metric("oracle", fn)


def check_metrics(names: list[str]) -> None:
    """Refuse a model metric name that is not one (before anything loads)."""
    from .metrics import METRICS

    for name in names:
        if name not in METRICS or name in PIXEL_METRICS:
            raise EditflowError(f"unknown metric {name!r}: use any of {', '.join(sorted(set(METRICS) - set(PIXEL_METRICS)))}")


def model_metrics(names: list[str], paths: dict[str, str], device=None) -> list[Metric]:
    """CLIP-T, CLIP-I, DINO, structure distance, LPIPS, DreamSim as asked; loaded before any edit."""
    from .metrics import METRICS

    check_metrics(names)
    out = []
    for name in names:
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


def prepare(data: str, methods: list[str], model_name: str, sets: list[str] | None = None,
            metrics: list[str] | None = None, seed: int = 0, limit: int | None = None,
            limits: Limits | None = None, baselines: str | tuple[str, ...] | None = BASELINES,
            protocol=None, subset: str | None = None
            ) -> tuple[list[EditRecord], list[str], dict[str, dict[str, Any]]]:
    """What :func:`run` checks before it writes anything or loads a model: the methods (listed
    once each), ``--set`` values (against the model's family when the zoo or the folder tells it),
    metric names, the baselines (names, and regeneration's steps against ``limits``), ``limit`` (>= 1),
    the whole dataset, its images' headers and prompts against
    ``limits`` (and the methods' steps and NFE, when the family is known), and that every item's
    seed ``seed + i`` lies in ``[0, 2**64 - 1]``. Returns (items, methods, overrides per method).

    Under a ``protocol`` (:class:`editflow.bench.protocol.Protocol`): the data must be PIE-Bench's,
    ``--set`` may change only the protocol's ``free_parameters`` (which do not change results),
    ``--seed`` only to the protocol's, ``methods == ["all"]`` means every
    method it pins for the model's family, each method must be pinned for that family when the
    family is known before loading, and the items are those of ``subset``."""
    import numbers

    from ..methods import get_method

    family = known_family(model_name)
    if protocol is not None:
        free = protocol.free_parameters
        for pair in sets or []:
            if pair.partition("=")[0].rpartition(".")[2] not in free:
                raise EditflowError(f"--protocol {protocol.name} pins every method's parameters, so --set {pair!r} is "
                                    f"refused (only {', '.join(free) or 'none'} may change): drop it, or run without "
                                    "--protocol")
        if seed != protocol.seed:
            raise EditflowError(f"--protocol {protocol.name} pins the seed ({protocol.seed}: item i uses "
                                f"{protocol.seed} + i), so --seed {seed!r} is refused: drop --seed")
        if methods == ["all"]:
            if family is None:
                raise EditflowError(f"--methods all needs the model's family before it loads: name the methods "
                                    f"(e.g. --methods {','.join(protocol.methods('flux')[:3])})")
            methods = protocol.methods(family)
        if family is not None:
            for m in methods:
                get_method(m)
                protocol.params(m, family)
    methods = list(dict.fromkeys(methods))
    if not methods:
        raise EditflowError("--methods names no method: pass e.g. --methods flowedit")
    baselines = parse_baselines(baselines)  # the same check and message as --baselines
    for m in methods:
        get_method(m)
    overrides = parse_sets(sets or [], methods)
    check_metrics(metrics or [])
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, numbers.Integral) or limit < 1):
        raise EditflowError(f"--limit must be a whole number >= 1, got {limit!r}: pass --limit N, or leave it out for every item")
    items = load_dataset(data)
    if protocol is not None:
        if not all("editing_type_id" in rec.extras for rec in items):
            raise EditflowError(f"--protocol {protocol.name} runs on PIE-Bench's mapping_file.json, and {data} is "
                                "another format: pass --data PIE-Bench's data folder")
        for position, rec in enumerate(items):  # a protocol seeds by file position, whatever the subset
            rec.extras["position"] = position
        items = protocol.select(items, subset)
        if not items:
            raise EditflowError(f"{data} holds no item of subset {protocol.subset(subset)[0]!r}: pass another --subset")
    items = items[:limit]
    last = max(item_index(rec, i) for i, rec in enumerate(items))
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= seed <= SEED_MAX - last:
        raise EditflowError(f"--seed {seed!r}: item i is edited with seed + i, so for these {len(items)} items "
                            f"--seed must be a whole number from 0 to {SEED_MAX - last}")
    limits = limits or Limits.from_env()
    check_baselines(baselines, limits)
    _check_images(items, limits)
    if family is not None:
        if protocol is not None:
            overrides = {m: protocol.params(m, family, overrides[m]) for m in methods}
        _resolved(methods, overrides, family, limits)
    return items, methods, overrides


def _check_images(items: list[EditRecord], limits: Limits) -> None:
    """Read the header of every item's image, ground truth and mask file
    (:func:`editflow.images.open_checked`: readable, within ``limits.max_input_pixels``) and check
    each item's prompts against ``limits``, before any model loads."""
    from ..images import open_checked

    for rec in items:
        limits.check_prompt(rec.source_prompt, f"item {rec.id!r}'s source prompt")
        limits.check_prompt(rec.target_prompt, f"item {rec.id!r}'s target prompt")
        for path in filter(None, (rec.image, rec.target_image, rec.mask_file)):
            open_checked(path, f"item {rec.id!r}'s file {path}", limits).close()


def _resolved(methods: list[str], overrides: dict[str, dict[str, Any]], family: str, limits: Limits
              ) -> dict[str, dict]:
    """Each method's parameters on ``family``, checked against ``limits`` (steps, NFE, rows)."""
    from ..methods import get_method
    from ..methods.base import check_work

    out = {}
    for m in methods:
        params = get_method(m).params.for_family(family, **overrides[m])
        check_work(get_method(m), params, family, limits)
        out[m] = params.to_dict()
    return out


def _save(image, path: Path, **options) -> None:
    """``images.save_image`` (atomic, ``options`` to PIL's writer) into a folder made here; a
    failure is one line that says re-running resumes."""
    from ..images import save_image

    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            save_image(image, path, **options)
        except EditflowError as exc:  # save_image words a failed write itself
            raise EditflowError(f"{exc}; then {RESUME}") from None


def run(data: str, methods: list[str], model_name: str, out: str, sets: list[str] | None = None,
        metrics: list[str] | None = None, metric_paths: dict[str, str] | None = None, seed: int = 0,
        limit: int | None = None, device: str | None = None, progress: bool = True,
        limits: Limits | None = None, baselines: str | tuple[str, ...] | None = BASELINES,
        load_options: dict | None = None, protocol: str | None = None, subset: str | None = None) -> Path:
    """Run every (item, method) and (item, baseline) not yet in ``out``; returns this process's shard path.

    ``protocol`` (a packaged name such as ``pie-bench``, or a protocol file:
    :mod:`editflow.bench.protocol`) pins the items (``subset``), each method's parameters for the
    model's family and the metrics; its records add ``protocol: {name, version}`` and ``family``.

    Checks everything :func:`prepare` lists and ``load_options`` (``lora``, ``quantize``,
    ``transformer``: :func:`editflow.load_model`'s), creates ``out`` and takes its lock
    (:func:`run_lock`) before any model loads. Records name the model with its options
    (``flux-dev quantize=int8``), so a run resumed with other options edits again."""
    from ..api import edit
    from ..images import load_image
    from ..methods import get_method
    from ..models.zoo import check_load_options, load_model

    rank, world_size = process_rank()
    limits = limits or Limits.from_env()
    baselines = parse_baselines(baselines)
    load_options = dict(load_options or {})
    device = rank_device(device)
    check_load_options(device=device, **load_options)
    pinned = None
    if protocol is not None:
        from .protocol import load_protocol

        pinned = load_protocol(protocol)
    items, methods, overrides = prepare(data, methods, model_name, sets, metrics, seed, limit, limits, baselines,
                                        pinned, subset)
    tag, suffix, save_options = None, ".png", {}
    if pinned is not None:
        from .protocol import pie_scorer

        tag = pinned.tag
        suffix, save_options = pinned.output
        pinned.check_output_folder(Path(out))
        metric_list = [Metric(pinned.name, pie_scorer(pinned, metric_paths or {}, device))]
    else:
        metric_list = pixel_metrics() + [oracle_metric()]
    metric_list += model_metrics(metrics or [], metric_paths or {}, device)  # every metric model loads before OUT exists
    label = model_label(model_name, load_options)
    root = Path(out)
    with output_shard(root, rank, "--out") as shard:
        if pinned is not None:
            pinned.keep_in(root)
        model = load_model(model_name, device=device, progress=progress, **load_options)
        if pinned is not None:  # the family is known now (prepare checked it when it was before)
            overrides = {m: pinned.params(m, model.family, overrides[m]) for m in methods}
        resolved = _resolved(methods, overrides, model.family, limits)
        resolved.update({b: baseline_params(b) for b in baselines})
        free = set() if pinned is None else set(pinned.free_parameters)  # results-neutral: not in the key
        keyed = {m: {k: v for k, v in params.items() if k not in free} for m, params in resolved.items()}
        done = {r["key"] for r in read_records(root, repair=shard)}
        todo = [(i, m) for i, rec in enumerate(items) if i % world_size == rank
                for m in [*methods, *(b for b in baselines if applies(b, rec.target_image))]
                if record_key(rec.id, m, keyed[m], label, seed, tag) not in done]
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(todo), desc=f"bench r{rank}", unit="edit", file=sys.stderr)
        loaded = None  # (index, record with its masks in memory, source image, its seed): todo runs item by item
        for i, m in todo:
            if loaded is None or loaded[0] != i:
                mask, method_mask = items[i].mask, items[i].method_mask  # decoded once per item
                rec = dataclasses.replace(items[i], mask_loader=None if mask is None else (lambda mask=mask: mask),
                                          method_mask_loader=None if method_mask is None else (lambda m=method_mask: m))
                loaded = (i, rec, load_image(rec.image, limits), seed + item_index(rec, i))
            _, rec, source, item_seed = loaded
            if m in baselines:
                truth = load_image(rec.target_image, limits) if m == "vae_ceiling" else None
                image, nfe, seconds = run_baseline(m, model, source, rec.target_prompt, item_seed, truth, limits)
                peak = None  # not measured for baselines
            else:
                result = edit(model, source, rec.source_prompt, rec.target_prompt, method=m, seed=item_seed,
                              mask=rec.method_mask if get_method(m).params.NEEDS_MASK else None, limits=limits,
                              **overrides[m])
                image, nfe, seconds, peak = result.image, result.nfe, result.seconds, result.peak_memory_bytes
            key = record_key(rec.id, m, keyed[m], label, seed, tag)
            rel = Path("images") / f"{m}-{key[:6]}" / (image_stem(rec.id) + suffix)
            _save(image, root / rel, **save_options)
            if save_options:  # a protocol scores the file it keeps, as PnPInversion scores its JPEGs
                image = load_image(root / rel, limits)
            src, edited = np.asarray(source), np.asarray(image)
            values: dict[str, float] = {}
            for metric in metric_list:
                values.update(metric.fn(src, edited, rec))
            append_record(shard, {
                "key": key, "item": rec.id, "category": rec.category, "method": m, "params": resolved[m],
                "model": label, "seed": seed, "item_seed": item_seed, "metrics": {k: _finite(v) for k, v in values.items()},
                "nfe_calls": nfe.calls, "nfe_rows": nfe.rows, "seconds": seconds,
                "peak_memory_bytes": peak, "image": str(rel), "source_image": str(rec.image),
                "rank": rank, "baseline": m in baselines,
                **({} if tag is None else {"protocol": tag, "family": model.family,
                                           "editing_type": str(rec.extras.get("editing_type_id"))}),
            })
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.close()
    return shard


def _finite(v: float):
    v = float(v)
    return v if np.isfinite(v) else None if np.isnan(v) else ("inf" if v > 0 else "-inf")
