"""``editflow batch MANIFEST -o DIR``: many edits from a manifest, resumable, split across processes.

A manifest is a YAML list or a JSONL file (one JSON object per line) of rows::

    - image: photos/cat.jpg              # relative to the manifest's folder (or absolute)
      source_prompt: a cat on a sofa
      target_prompts: [a dog on a sofa, a fox on a sofa]   # or target_prompt: one prompt
      mask: masks/cat.png                # optional (white = edit); methods that take one use it
      method: flowedit                   # optional: --method's (default flowedit)
      params: {n_avg: 2}                 # optional: the method's parameters
      seed: 0                            # optional: --seed's (default 0); every target of a row uses it
      id: cat                            # optional: the image path without suffix

Every row is checked before the output folder is made or the model loads: files and their
headers, masks that select nothing, methods, prompts and seeds against the limits, and the
parameters against the model's family when its name tells it (a hub id's family is known once it
loads: then right after loading, before any edit). A bad row is one line naming the file, the row
and the fix.

The targets of a row share work through :func:`editflow.edit_many`: FlowEdit evaluates the
source rows once per step for all targets in one batched call; methods whose inversion does not
depend on the target invert once per row (one :class:`InversionCache`). The outputs equal the
separate edits with the row's seed (see :func:`editflow.edit_many` for when bit for bit).

Output: ``DIR/images/ID/K-METHOD-KEY.png`` per target (``K`` its index in the row) and one JSONL
record per target in ``DIR/results.r{rank}.jsonl`` (``key, id, row, target_index, source_prompt,
target_prompt, method, params`` (all of them, resolved), ``seed, model, image, nfe_calls, nfe_rows,
targets_in_pass, inversion_cached, seconds, rank``); ``nfe_*`` and ``seconds`` are the whole
pass's, shared by its ``targets_in_pass`` targets. Images are written atomically before their
record, each record with one fsynced write, so a killed run loses at most the pass in flight; a
re-run with the same command skips every target whose key (row id, target index, both prompts,
the image's and mask's bytes, method, parameters, model and seed) is already recorded. Under
``accelerate launch`` / ``torchrun`` process ``r`` of ``w`` takes rows ``r, r + w, ...`` and, on
a CUDA machine without ``--device``, GPU ``LOCAL_RANK``.
"""

from __future__ import annotations

import hashlib
import numbers
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .bench.datasets import _list_of, _mapping, _parse_json, _png_mask, _read_text, _refuse, _string, image_stem
from .bench.runner import (_save, append_record, known_family, model_label, output_shard, process_rank, rank_device,
                           read_records, record_key)
from .errors import EditflowError
from .limits import SEED_MAX, Limits

ROW_KEYS = ("id", "image", "source_prompt", "target_prompt", "target_prompts", "mask", "method", "params", "seed")


@dataclass
class BatchRow:
    """One manifest row: an image, its source prompt and the target prompts it is edited towards."""

    index: int
    id: str
    image: Path
    source_prompt: str
    targets: list[str]
    method: str
    params: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    mask: Path | None = None
    where: str = ""


def _path(root: Path, value: str, what: str, where: str) -> Path:
    path = Path(value.strip()).expanduser()
    path = path if path.is_absolute() else root / path
    if not path.is_file():
        raise _refuse(where, f"{what} {value!r} not found (looked at {path})", "fix the path")
    return path


def _entries(file: Path) -> list[tuple[str, Any]]:
    """``(where, entry)`` of a YAML list or a JSONL file."""
    text = _read_text(file, "manifest")
    if file.suffix == ".jsonl":
        return [(f"{file} line {n}", _parse_json(line, f"{file} line {n}"))
                for n, line in enumerate(text.split("\n"), 1) if line.strip()]
    if file.suffix not in (".yaml", ".yml"):
        raise EditflowError(f"manifest {file} must be a .yaml/.yml list or a .jsonl file: rename it or convert it")
    import yaml

    try:
        entries = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise _refuse(f"manifest {file}", f"is not valid YAML ({getattr(exc, 'problem', None) or exc})", "fix the syntax") from None
    if not isinstance(entries, list):
        raise _refuse(f"manifest {file}", "holds no list of rows", "write one '- image: ...' entry per image")
    return [(f"{file} row {n}", entry) for n, entry in enumerate(entries)]


def read_manifest(path: str | os.PathLike, method: str = "flowedit", seed: int = 0,
                  limits: Limits | None = None) -> list[BatchRow]:
    """Every row of the manifest, checked (see the module docstring); ``method`` and ``seed`` are
    the defaults of rows that name none."""
    from .images import open_checked
    from .methods import get_method

    limits = limits or Limits.from_env()
    file = Path(path)
    if not file.is_file():
        raise EditflowError(f"manifest not found: {file}")
    root = file.parent
    rows, seen = [], {}
    for index, (where, entry) in enumerate(_entries(file)):
        _mapping(entry, where, "write image, source_prompt and target_prompts")
        unknown = sorted(set(entry) - set(ROW_KEYS))
        if unknown:
            raise _refuse(where, f"has unknown key {unknown[0]!r}", f"use only {', '.join(ROW_KEYS)}")
        if ("target_prompt" in entry) == ("target_prompts" in entry):
            raise _refuse(where, "needs target_prompts (a list) or target_prompt (one), not both or neither",
                          "write target_prompts: [a dog, a fox]")
        targets = ([_string(entry, "target_prompt", where)] if "target_prompt" in entry else
                   _list_of(entry, "target_prompts", where, (str,), ("strings", "a string")))
        if not targets:
            raise _refuse(where, "target_prompts is empty", "list at least one target prompt")
        source = _string(entry, "source_prompt", where)
        for k, text in enumerate([source, *targets]):
            limits.check_prompt(text, f"{where} {'source prompt' if k == 0 else f'target prompt {k - 1}'}")
        image = _path(root, _string(entry, "image", where), "image", where)
        open_checked(image, f"{where} image {image}", limits).close()
        mask = None
        if entry.get("mask") is not None:
            mask = _path(root, _string(entry, "mask", where), "mask", where)
            open_checked(mask, f"{where} mask {mask}", limits).close()
        name = _string(entry, "method", where, default=method)
        m = get_method(name)
        if m.params.NEEDS_MASK and mask is None:
            raise _refuse(where, f"uses {name}, which needs a mask", "add mask: PATH (white = edit)")
        if m.params.NEEDS_MASK and not _png_mask(mask).any():
            raise _refuse(where, f"mask {mask} selects nothing", f"paint the region {name} should edit white")
        if m.params.TAKES_SUBJECTS:
            raise _refuse(where, f"uses {name}, which takes reference subjects", "run it with `editflow edit --subject`")
        params = entry.get("params") or {}
        _mapping(params, f"{where} params", "write params: {key: value}")
        row_seed = entry.get("seed", seed)
        if isinstance(row_seed, bool) or not isinstance(row_seed, numbers.Integral) or not 0 <= row_seed <= SEED_MAX:
            raise _refuse(where, f"seed must be a whole number from 0 to {SEED_MAX}, got {row_seed!r}", "fix the seed")
        rel = image.relative_to(root) if image.is_relative_to(root) else Path(image.name)
        row_id = _string(entry, "id", where, default=rel.with_suffix("").as_posix()).strip()
        if not row_id:
            raise _refuse(where, "its id is empty", "give the row an id or leave the key out")
        stem = image_stem(row_id)
        if stem in seen:
            raise _refuse(where, f"its id {row_id!r} is also the id of {seen[stem]}",
                          "give one of them its own id (an image edited twice needs two ids)")
        seen[stem] = where
        rows.append(BatchRow(index, row_id, image, source, list(targets), name, dict(params), int(row_seed), mask, where))
    if not rows:
        raise EditflowError(f"manifest {file} holds no row: add one")
    return rows


def check_rows(rows: list[BatchRow], family: str, limits: Limits) -> dict[int, dict]:
    """Each row's full parameters on ``family`` (one line naming the row if one is refused), with
    the work limits checked; returns ``{row index: params dict}``."""
    from .methods import get_method
    from .methods.base import check_work

    out = {}
    for row in rows:
        m = get_method(row.method)
        try:
            params = m.params.for_family(family, **row.params)
            check_work(m, params, family, limits)
        except EditflowError as exc:
            raise EditflowError(f"{row.where}: {exc}") from None
        except TypeError as exc:
            raise EditflowError(f"{row.where}: params do not fit {row.method} ({exc}): see `editflow methods`") from None
        out[row.index] = params.to_dict()
    return out


def _digest(path: Path | None) -> str | None:
    return None if path is None else hashlib.sha1(path.read_bytes()).hexdigest()


def target_key(row: BatchRow, k: int, params: dict, model: str, digests: tuple[str | None, str | None]) -> str:
    """Target ``k`` of ``row``'s record key: :func:`record_key` of ``ID/k`` with both prompts and the
    image's and mask's digests."""
    return record_key(f"{row.id}/{k}", row.method, params, model, row.seed, source_prompt=row.source_prompt,
                      target_prompt=row.targets[k], image=digests[0], mask=digests[1])


def run_batch(manifest: str | os.PathLike, out: str | os.PathLike, model_name: str, method: str = "flowedit",
              seed: int = 0, device: str | None = None, progress: bool = True, limits: Limits | None = None,
              load_options: dict | None = None) -> Path:
    """Edit every target of every row of ``manifest`` not yet recorded in ``out``; returns this
    process's shard. Everything is checked before ``out`` is created or the model loads."""
    from .api import edit_many
    from .methods.cache import InversionCache
    from .models.zoo import check_load_options, load_model

    rank, world_size = process_rank()
    limits = limits or Limits.from_env()
    load_options = dict(load_options or {})
    device = rank_device(device)
    check_load_options(device=device, **load_options)
    rows = read_manifest(manifest, method, seed, limits)
    family = known_family(model_name)
    if family is not None:
        check_rows(rows, family, limits)
    label = model_label(model_name, load_options)
    root = Path(out)
    with output_shard(root, rank, "-o") as shard:
        model = load_model(model_name, device=device, progress=progress, **load_options)
        resolved = check_rows(rows, model.family, limits)
        done = {r["key"] for r in read_records(root, repair=shard)}
        plan = []
        for row in rows[rank::world_size]:
            digests = (_digest(row.image), _digest(row.mask))
            keys = [target_key(row, k, resolved[row.index], label, digests) for k in range(len(row.targets))]
            todo = [k for k, key in enumerate(keys) if key not in done]
            if todo:
                plan.append((row, keys, todo))
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=sum(len(todo) for *_, todo in plan), desc=f"batch r{rank}", unit="edit", file=sys.stderr)
        cache = InversionCache(size=1)  # one row at a time: its inversion, shared by its targets
        for row, keys, todo in plan:
            cache.clear()  # the previous image's inversion (and feature store) goes before this one's is made
            results = edit_many(model, row.image, row.source_prompt, [row.targets[k] for k in todo], method=row.method,
                                seed=row.seed, mask=None if row.mask is None else str(row.mask), cache=cache,
                                limits=limits, **row.params)
            for k, result in zip(todo, results):
                rel = Path("images") / image_stem(row.id) / f"{k:02d}-{row.method}-{keys[k][:8]}.png"
                _save(result.image, root / rel)
                append_record(shard, {
                    "key": keys[k], "id": row.id, "row": row.index, "target_index": k,
                    "source_prompt": row.source_prompt, "target_prompt": row.targets[k], "method": row.method,
                    "params": resolved[row.index], "seed": row.seed, "model": label, "image": str(rel),
                    "source_image": str(row.image), "nfe_calls": result.nfe.calls, "nfe_rows": result.nfe.rows,
                    "targets_in_pass": result.stats.get("targets_in_pass", 1),
                    "inversion_cached": result.stats.get("inversion_cached"), "seconds": result.seconds, "rank": rank,
                })
                if bar is not None:
                    bar.update(1)
        if bar is not None:
            bar.close()
    return shard
