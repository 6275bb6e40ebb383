"""Edit datasets as one record type: FlowEdit's yaml list, PIE-Bench's mapping_file.json, and the
shapes world's edit sets (``editflow world edits``).

Every path a dataset file names is resolved inside the dataset's folder; one that escapes it
(``../``, an absolute path elsewhere, a symlink out) is refused.

* FlowEdit (fallenshock/FlowEdit, ``Data/flowedit.yaml``): a list of
  ``{input_img | init_img, source_prompt, target_prompts: [...], target_codes: [...]}``; one
  record per target prompt. The released file names images ``flowedit_data/...`` relative to a
  parent folder and has trailing spaces in some names; both are tolerated.
* PIE-Bench (cure-lab/PnPInversion, ``data/mapping_file.json``): ``{id: {image_path,
  original_prompt, editing_prompt, editing_instruction, editing_type_id, blended_word, mask}}``
  with images under ``annotation_images/``; ``[ ]`` markers are removed from the prompts (kept in
  ``extras``); the mask is run-length encoded as (start, length) pairs over the row-major 512 x 512
  image, and, as PIE-Bench's own ``mask_decode`` does, its one-pixel border is set.
* shapes: ``edits.jsonl`` written by ``editflow world edits`` (ground-truth target included).
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

    @property
    def mask(self) -> np.ndarray | None:
        return None if self.mask_loader is None else self.mask_loader()


def inside(root: Path, relative: str, what: str = "path") -> Path:
    """``root / relative`` resolved, refusing anything outside ``root``."""
    root = root.resolve()
    path = (root / relative.strip()).resolve()
    if path != root and root not in path.parents:
        raise EditflowError(f"{what} {relative!r} points outside the dataset folder {root}: refusing it")
    return path


def _existing(root: Path, relative: str, what: str) -> Path:
    path = inside(root, relative, what)
    if path.exists():
        return path
    parts = Path(relative.strip()).parts
    if len(parts) > 1:  # FlowEdit's yaml prefixes its folder name
        alt = inside(root, str(Path(*parts[1:])), what)
        if alt.exists():
            return alt
    raise EditflowError(f"{what} {relative!r} not found under {root}")


# -- FlowEdit --------------------------------------------------------------------------------------

def read_flowedit(path: str | os.PathLike) -> list[EditRecord]:
    import yaml

    file = Path(path)
    try:
        entries = yaml.safe_load(file.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise EditflowError(f"cannot read the FlowEdit yaml {file}: {exc}".splitlines()[0]) from None
    if not isinstance(entries, list):
        raise EditflowError(f"{file} is not a FlowEdit edit list (expected a list of entries)")
    root = file.parent
    records = []
    for n, entry in enumerate(entries):
        image = entry.get("input_img", entry.get("init_img"))
        if not image or "source_prompt" not in entry or not entry.get("target_prompts"):
            raise EditflowError(f"{file} entry {n} lacks input_img/init_img, source_prompt or target_prompts")
        image_path = _existing(root, str(image), "image")
        codes = entry.get("target_codes") or [str(k) for k in range(len(entry["target_prompts"]))]
        for k, target in enumerate(entry["target_prompts"]):
            code = codes[k] if k < len(codes) else str(k)
            records.append(EditRecord(
                id=f"{image_path.stem}/{code}", image=image_path, source_prompt=entry["source_prompt"].strip(),
                target_prompt=str(target).strip(), category="flowedit", extras={"target_code": code},
            ))
    return records


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


def strip_markers(prompt: str) -> str:
    return re.sub(r"\s+", " ", prompt.replace("[", "").replace("]", "")).strip()


def read_pie_bench(path: str | os.PathLike) -> list[EditRecord]:
    file = Path(path)
    if file.is_dir():
        file = file / "mapping_file.json"
    try:
        mapping = json.loads(file.read_text())
    except (OSError, ValueError) as exc:
        raise EditflowError(f"cannot read PIE-Bench's mapping file {file}: {exc}".splitlines()[0]) from None
    images = file.parent / "annotation_images"
    records = []
    for key, item in mapping.items():
        try:
            image = _existing(images, item["image_path"], "image")
            encoded = item["mask"]
            records.append(EditRecord(
                id=str(key), image=image, source_prompt=strip_markers(item["original_prompt"]),
                target_prompt=strip_markers(item["editing_prompt"]),
                category=PIE_CATEGORIES.get(str(item["editing_type_id"]), str(item["editing_type_id"])),
                extras={"original_prompt": item["original_prompt"], "editing_prompt": item["editing_prompt"],
                        "editing_instruction": item.get("editing_instruction", ""),
                        "blended_word": item.get("blended_word", ""), "editing_type_id": str(item["editing_type_id"])},
                mask_loader=lambda encoded=encoded: decode_rle(encoded),
            ))
        except KeyError as exc:
            raise EditflowError(f"{file}: entry {key!r} lacks {exc}") from None
    return records


# -- shapes --------------------------------------------------------------------------------------------

def read_shapes(path: str | os.PathLike) -> list[EditRecord]:
    file = Path(path)
    if file.is_dir():
        file = file / "edits.jsonl"
    root = file.parent
    records = []
    try:
        lines = file.read_text().splitlines()
    except OSError as exc:
        raise EditflowError(f"cannot read the shapes edit set {file}: {exc}") from None
    for line in lines:
        if not line.strip():
            continue
        row = json.loads(line)
        mask_path = _existing(root, row["mask"], "mask")
        records.append(EditRecord(
            id=row["id"], image=_existing(root, row["source_image"], "image"), source_prompt=row["source_prompt"],
            target_prompt=row["target_prompt"], category=row["kind"],
            target_image=_existing(root, row["target_image"], "image"),
            extras={k: row[k] for k in ("source_scene", "target_scene", "index") if k in row},
            mask_loader=lambda p=mask_path: _png_mask(p),
        ))
    return records


def _png_mask(path: Path) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(path).convert("L")) > 127


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
