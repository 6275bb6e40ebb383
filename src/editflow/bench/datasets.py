"""Edit datasets as one record type: FlowEdit's yaml list, PIE-Bench's mapping_file.json, and the
shapes world's edit sets (``editflow world edits``).

Every path a dataset file names is resolved inside the dataset's folder; one that escapes it
(``../``, an absolute path elsewhere, a symlink out) is refused.

* FlowEdit (fallenshock/FlowEdit, ``Data/flowedit.yaml``): a list of
  ``{input_img | init_img, source_prompt, target_prompts: [...], target_codes: [...]}``; one
  record per target prompt, id ``IMAGE/CODE`` with IMAGE the image's path relative to the yaml's
  folder, without suffix. The released file names images ``flowedit_data/...`` relative to a
  parent folder and has trailing spaces in some names; both are tolerated.
* PIE-Bench (cure-lab/PnPInversion, ``data/mapping_file.json``): ``{id: {image_path,
  original_prompt, editing_prompt, editing_instruction, editing_type_id, blended_word, mask}}``
  with images under ``annotation_images/``; ``[ ]`` markers are removed from the prompts (kept in
  ``extras``); the mask is run-length encoded as (start, length) pairs over the row-major 512 x 512
  image, and, as PIE-Bench's own ``mask_decode`` does, its one-pixel border is set for scoring
  (``mask``); methods that take a mask get it without that border (``method_mask``; with it where
  the mask alone is empty).
* shapes: ``edits.jsonl`` written by ``editflow world edits`` (ground-truth target included).

Each reader checks the whole file before it returns, so a benchmark fails before any model
loads: a file that is not UTF-8 or does not parse, a top level or an entry of the wrong type, a
missing key, a value of the wrong type, an empty dataset, or two items with one id (or with one
image file name in the runner, :func:`image_stem`) is an :class:`EditflowError` of one line that
names the file, the entry (index, key or line) and the fix.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import EditflowError

PIE_CATEGORIES = {
    "0": "random", "1": "change object", "2": "add object", "3": "delete object", "4": "change content",
    "5": "change pose", "6": "change color", "7": "change material", "8": "change background", "9": "change style",
}
PIE_SIZE = (512, 512)


@dataclass
class EditRecord:
    """One edit of a dataset. ``mask`` (bool ``[H, W]``, True = edit region) loads on first use."""

    id: str
    image: Path
    source_prompt: str
    target_prompt: str
    category: str
    target_image: Path | None = None
    extras: dict = field(default_factory=dict)
    mask_loader: Callable[[], np.ndarray] | None = field(default=None, repr=False)
    mask_file: Path | None = None  # where the mask is an image file (shapes sets), for header checks
    method_mask_loader: Callable[[], np.ndarray] | None = field(default=None, repr=False)

    @property
    def mask(self) -> np.ndarray | None:
        """The mask metrics score with (PIE-Bench: its border set, as its evaluation decodes it)."""
        return None if self.mask_loader is None else self.mask_loader()

    @property
    def method_mask(self) -> np.ndarray | None:
        """The mask a method that takes one edits inside (PIE-Bench: without the evaluation's
        border); the scoring mask where the dataset has one kind only."""
        return self.mask if self.method_mask_loader is None else self.method_mask_loader()


def one_line(text) -> str:
    """``text`` with every run of whitespace (newlines included) made one space."""
    return " ".join(str(text).split())


def _refuse(where: str | None, problem: str, fix: str) -> EditflowError:
    """The one-line refusal ``WHERE PROBLEM: FIX`` when PROBLEM says what WHERE is, holds or lacks,
    else ``WHERE: PROBLEM: FIX`` (just ``PROBLEM: FIX`` without a WHERE)."""
    if where:
        problem = where + (" " if problem.split(" ", 1)[0] in ("is", "holds", "lacks", "cannot") else ": ") + problem
    return EditflowError(one_line(f"{problem}: {fix}"))


def _show(value) -> str:
    """A value for a message: its type and a short repr."""
    if value is None:
        return "nothing (null)"
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 40 else text[:37] + '...'}"


def image_stem(item_id: str) -> str:
    """The file name, without suffix, that the bench runner gives an item's edited image: the id
    with every ``/`` (and the OS's separator) made ``__``. Readers refuse two ids with one stem."""
    return item_id.replace("/", "__").replace(os.sep, "__")


def inside(root: Path, relative: str, what: str = "path", where: str | None = None) -> Path:
    """``root / relative`` resolved, refusing anything outside ``root`` (``where`` names the entry)."""
    root = root.resolve()
    try:
        path = (root / relative.strip()).resolve()
    except (OSError, ValueError) as exc:  # a NUL byte, a symlink loop
        raise _refuse(where, f"{what} {relative!r} is not a usable path ({exc})", "fix the path") from None
    if path != root and root not in path.parents:
        raise _refuse(where, f"{what} {relative!r} points outside the dataset folder {root}",
                      "refusing it; keep the files inside that folder")
    return path


def _existing(root: Path, relative: str, what: str, where: str | None = None) -> Path:
    """An existing file ``relative`` under ``root``; a first folder that is not there is skipped
    (FlowEdit's yaml prefixes its own folder name)."""
    path = inside(root, relative, what, where)
    if os.path.isfile(path):
        return path
    parts = Path(relative.strip()).parts
    if len(parts) > 1:
        alt = inside(root, str(Path(*parts[1:])), what, where)
        if os.path.isfile(alt):
            return alt
    raise _refuse(where, f"{what} {relative!r} not found under {root}", "fix the path or add the file")


def _read_text(file: Path, what: str) -> str:
    """The text of ``file`` (UTF-8, a byte-order mark allowed), or a refusal naming it."""
    try:
        return file.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise _refuse(f"{what} {file}", f"is not UTF-8 text (byte {exc.start} is {exc.object[exc.start]:#04x})",
                      "save it as UTF-8") from None
    except OSError as exc:
        raise _refuse(f"{what} {file}", f"cannot be read ({exc.strerror or exc})", "check the path") from None


def _unique_keys(where: str):
    """A ``json`` ``object_pairs_hook`` that refuses a key given twice (``json`` keeps the last)."""
    def hook(pairs):
        out = {}
        for key, value in pairs:
            if key in out:
                raise _refuse(where, f"key {key!r} appears twice (only the last one would count)",
                              "give every item its own key and every field once")
            out[key] = value
        return out
    return hook


def _parse_json(text: str, where: str):
    """JSON text (duplicate keys refused), or a refusal naming where the syntax breaks."""
    try:
        return json.loads(text, object_pairs_hook=_unique_keys(where))
    except json.JSONDecodeError as exc:
        at = f"line {exc.lineno} column {exc.colno}" if "\n" in text.strip() else f"column {exc.colno}"
        raise _refuse(where, f"is not valid JSON ({exc.msg} at {at})", "fix the syntax") from None
    except RecursionError:
        raise _refuse(where, "is not valid JSON (nested too deeply)", "fix the file") from None


def _mapping(value, where: str, fix: str) -> dict:
    if not isinstance(value, dict):
        raise _refuse(where, f"is a {_show(value)}, not a mapping", fix)
    return value


def _require(entry: dict, keys, where: str) -> None:
    for key in keys:
        if key not in entry:
            raise _refuse(where, f"lacks {key!r}", f"add it (every entry needs {', '.join(keys)})" if len(keys) > 1 else "add it")


def _string(entry: dict, key: str, where: str, default: str | None = None) -> str:
    """``entry[key]`` as a ``str``; missing (without a default) or of another type is refused."""
    if key not in entry and default is not None:
        return default
    _require(entry, (key,), where)
    value = entry[key]
    if not isinstance(value, str):
        raise _refuse(where, f"{key} must be a string, got {_show(value)}", "write it as text in quotes")
    return value


def _list_of(entry: dict, key: str, where: str, kinds: tuple[type, ...], what: tuple[str, str]) -> list:
    """``entry[key]`` as a list whose items are ``kinds``; ``what`` names them (plural, one) in messages."""
    value = entry[key]
    if isinstance(value, str) and str in kinds:  # yaml's `key: text` where `key: [text]` was meant
        raise _refuse(where, f"{key} must be a list of {what[0]}, got the string {value!r}", f"write {key}: [{value.strip()}]")
    if not isinstance(value, list):
        raise _refuse(where, f"{key} must be a list of {what[0]}, got {_show(value)}", f"make {key} a list")
    for k, v in enumerate(value):
        if isinstance(v, bool) or not isinstance(v, kinds):
            raise _refuse(where, f"{key}[{k}] must be {what[1]}, got {_show(v)}", f"make it {what[1]}")
    return value


def _checked(file: Path, found: list[tuple[str, EditRecord]], fix: str) -> list[EditRecord]:
    """The records of ``found`` (``(where, record)`` pairs) once there is one at least and no two
    share an id or the image file name the runner derives from it (:func:`image_stem`)."""
    if not found:
        raise EditflowError(f"{file} holds no edit: add at least one entry (or pass another dataset)")
    seen: dict[str, tuple[str, str]] = {}
    for where, rec in found:
        stem = image_stem(rec.id)
        if stem in seen:
            first, first_id = seen[stem]
            problem = (f"its id {rec.id!r} is also the id of {first}" if first_id == rec.id else
                       f"its id {rec.id!r} and the id {first_id!r} of {first} both name the image file {stem}.png")
            raise _refuse(where, problem, fix)
        seen[stem] = (where, rec.id)
    return [rec for _, rec in found]


# -- FlowEdit --------------------------------------------------------------------------------------

def read_flowedit(path: str | os.PathLike) -> list[EditRecord]:
    """FlowEdit's yaml list: one record per target prompt, with the id ``IMAGE/CODE``: IMAGE is the
    image's path relative to the yaml's folder without its suffix (``Images/cat``; images of one
    name in two folders stay apart), CODE its ``target_codes`` entry or, past their end, its index."""
    import yaml

    file = Path(path)
    text = _read_text(file, "FlowEdit yaml")
    try:
        entries = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        raise _refuse(f"FlowEdit yaml {file}", f"is not valid YAML ({getattr(exc, 'problem', None) or exc}{at})",
                      "fix the syntax") from None
    if not isinstance(entries, list):
        raise _refuse(f"FlowEdit yaml {file}", f"holds a {_show(entries)}, not a list of entries",
                      "write one '- input_img: ...' entry per image")
    root = file.parent
    found = []
    for n, entry in enumerate(entries):
        where = f"{file} entry {n}"
        _mapping(entry, where, "write input_img, source_prompt and target_prompts under its '-'")
        key = next((k for k in ("input_img", "init_img") if k in entry), None)
        if key is None:
            raise _refuse(where, "lacks 'input_img' (or 'init_img')", "add input_img: PATH of its image")
        image = _string(entry, key, where)
        source = _string(entry, "source_prompt", where).strip()
        _require(entry, ("target_prompts",), where)
        targets = _list_of(entry, "target_prompts", where, (str,), ("strings", "a string"))
        if not targets:
            raise _refuse(where, "target_prompts is empty", "list at least one target prompt")
        codes = [] if entry.get("target_codes") is None else _list_of(entry, "target_codes", where, (str, int),
                                                                      ("strings or integers", "a string or an integer"))
        image_path = _existing(root, image, "image", where)
        stem = image_path.relative_to(root.resolve()).with_suffix("").as_posix()
        for k, target in enumerate(targets):
            code = str(codes[k]).strip() if k < len(codes) else str(k)
            found.append((where, EditRecord(
                id=f"{stem}/{code}", image=image_path, source_prompt=source, target_prompt=target.strip(),
                category="flowedit", extras={"target_code": code},
            )))
    return _checked(file, found, "list each image once, with its own code for each target prompt")


# -- PIE-Bench ---------------------------------------------------------------------------------------

def decode_rle(encoded: list[int], shape: tuple[int, int] = PIE_SIZE, border: bool = True) -> np.ndarray:
    """PIE-Bench's run-length mask: (start, length) pairs over the row-major image -> bool ``[H, W]``."""
    if len(encoded) % 2:
        raise EditflowError("a PIE-Bench mask needs (start, length) pairs: odd number of values")
    total = shape[0] * shape[1]
    flat = np.zeros(total, dtype=bool)
    for start, length in zip(encoded[0::2], encoded[1::2]):
        if start < 0 or length < 0:
            raise EditflowError(f"negative start or length in a PIE-Bench mask: {start}, {length}")
        flat[start : min(start + length, total)] = True
    mask = flat.reshape(shape)
    if border:
        mask[0, :] = mask[-1, :] = mask[:, 0] = mask[:, -1] = True
    return mask


def _method_mask(encoded: list[int]) -> np.ndarray:
    """The mask a method edits inside: PIE-Bench's without the evaluation border, or with it where
    the run-length mask alone selects nothing (a method that needs a mask then edits the border)."""
    mask = decode_rle(encoded, border=False)
    return mask if mask.any() else decode_rle(encoded)


def strip_markers(prompt: str) -> str:
    return re.sub(r"\s+", " ", prompt.replace("[", "").replace("]", "")).strip()


PIE_KEYS = ("image_path", "original_prompt", "editing_prompt", "editing_type_id", "mask")


def _pie_mask(item: dict, where: str) -> list[int]:
    """An item's run-length mask, checked: integers, (start, length) pairs, none negative."""
    encoded = _list_of(item, "mask", where, (int,), ("integers (start, length pairs)", "an integer"))
    if len(encoded) % 2:
        raise _refuse(where, f"mask holds {len(encoded)} values, an odd number", "give (start, length) pairs")
    bad = next((k for k, v in enumerate(encoded) if v < 0), None)
    if bad is not None:
        raise _refuse(where, f"mask[{bad}] is negative ({encoded[bad]})", "starts and lengths are >= 0")
    return encoded


def read_pie_bench(path: str | os.PathLike) -> list[EditRecord]:
    """PIE-Bench's ``mapping_file.json`` (a file or its folder): one record per item, id = its key."""
    file = Path(path)
    if file.is_dir():
        file = file / "mapping_file.json"
    mapping = _parse_json(_read_text(file, "PIE-Bench mapping file"), f"PIE-Bench mapping file {file}")
    if not isinstance(mapping, dict):
        raise _refuse(f"PIE-Bench mapping file {file}", f"holds a {_show(mapping)}, not a mapping of id to item",
                      "pass PIE-Bench's mapping_file.json")
    images = file.parent / "annotation_images"
    found = []
    for key, item in mapping.items():
        where = f"{file} item {key!r}"
        _mapping(item, where, f"write {{{', '.join(PIE_KEYS)}}}")
        _require(item, PIE_KEYS, where)
        type_id = item["editing_type_id"]
        if isinstance(type_id, bool) or not isinstance(type_id, (str, int)):
            raise _refuse(where, f"editing_type_id must be a string or an integer, got {_show(type_id)}",
                          'write e.g. "editing_type_id": "1"')
        original, editing = _string(item, "original_prompt", where), _string(item, "editing_prompt", where)
        extras = {"original_prompt": original, "editing_prompt": editing, "editing_type_id": str(type_id),
                  **{k: _string(item, k, where, default="") for k in ("editing_instruction", "blended_word")}}
        encoded = _pie_mask(item, where)
        found.append((where, EditRecord(
            id=key, image=_existing(images, _string(item, "image_path", where), "image", where),
            source_prompt=strip_markers(original), target_prompt=strip_markers(editing),
            category=PIE_CATEGORIES.get(str(type_id), str(type_id)), extras=extras,
            mask_loader=lambda encoded=encoded: decode_rle(encoded),
            method_mask_loader=lambda encoded=encoded: _method_mask(encoded),
        )))
    return _checked(file, found, "rename one of the two items")


# -- shapes --------------------------------------------------------------------------------------------

SHAPES_KEYS = ("id", "kind", "source_image", "target_image", "mask", "source_prompt", "target_prompt")


def _shapes_extras(row: dict, where: str) -> dict:
    """The scenes and index the oracle metric scores with, checked now so a hand-edited line fails
    here and not mid-run."""
    extras = {k: row[k] for k in ("source_scene", "target_scene", "index") if k in row}
    if "source_scene" in extras or "target_scene" in extras:
        from ..world import Scene
        from ..world.edits import check_kind

        _require(row, ("source_scene", "target_scene"), where)
        index = extras.get("index")
        try:
            check_kind(row["kind"])
            for key in ("source_scene", "target_scene"):
                Scene.from_dict(row[key])
            if index is not None and (isinstance(index, bool) or not isinstance(index, int)):
                raise TypeError(f"index must be an integer or null, got {_show(index)}")
        except (EditflowError, KeyError, TypeError, AttributeError, ValueError) as exc:
            raise _refuse(where, f"its kind, scenes or index cannot be scored ({type(exc).__name__}: {exc})",
                          "write the set with `editflow world edits`") from None
    return extras


def read_shapes(path: str | os.PathLike) -> list[EditRecord]:
    """A shapes edit set's ``edits.jsonl`` (a file or its folder): one record per line, id = its ``id``."""
    file = Path(path)
    if file.is_dir():
        file = file / "edits.jsonl"
    root = file.parent
    found = []
    for n, line in enumerate(_read_text(file, "shapes edit set").split("\n"), 1):
        if not line.strip():
            continue
        where = f"{file} line {n}"
        row = _mapping(_parse_json(line, where), where, "write one JSON object per line")
        fields = {k: _string(row, k, where) for k in SHAPES_KEYS}
        if not fields["id"].strip():
            raise _refuse(where, "its id is empty", "give each line its own id")
        extras = _shapes_extras(row, where)
        mask_path = _existing(root, fields["mask"], "mask", where)
        found.append((where, EditRecord(
            id=fields["id"], image=_existing(root, fields["source_image"], "image", where),
            source_prompt=fields["source_prompt"], target_prompt=fields["target_prompt"], category=fields["kind"],
            target_image=_existing(root, fields["target_image"], "image", where), extras=extras,
            mask_loader=lambda p=mask_path: _png_mask(p), mask_file=mask_path,
        )))
    return _checked(file, found, "give each line its own id")


def _png_mask(path: Path) -> np.ndarray:
    """A mask file read by editflow's image rule (size limit, 16-bit scaled), white = edit."""
    from ..images import grey_levels, open_image

    return grey_levels(open_image(path, "mask file")) >= 0.5


def load_dataset(path: str | os.PathLike) -> list[EditRecord]:
    """Read any of the three formats, chosen by the file name or the folder's content."""
    p = Path(path)
    if not p.exists():
        raise EditflowError(f"dataset not found: {p}")
    if p.is_dir():
        for name, reader in (("mapping_file.json", read_pie_bench), ("edits.jsonl", read_shapes)):
            if (p / name).exists():
                return reader(p / name)
        yamls = sorted(p.glob("*.yaml"))
        if len(yamls) == 1:
            return read_flowedit(yamls[0])
        raise EditflowError(f"{p} holds no mapping_file.json, edits.jsonl or single FlowEdit .yaml: pass the file")
    if p.suffix in (".yaml", ".yml"):
        return read_flowedit(p)
    if p.suffix == ".jsonl":
        return read_shapes(p)
    if p.suffix == ".json":
        return read_pie_bench(p)
    raise EditflowError(f"unknown dataset format: {p} (FlowEdit .yaml, PIE-Bench mapping_file.json, shapes edits.jsonl)")
