"""Writing sets of scenes and edits to a folder (what ``editflow world sample|edits`` do).

Item ``i`` of a set with seed ``s`` is drawn from ``numpy.random.default_rng([s, i])``, so a set is
a prefix of any larger set with the same seed and options. Edit kinds cycle through the requested
kinds in order (item ``i`` has kind ``kinds[i % len(kinds)]``), which keeps a set balanced.

Layout::

    sample: DIR/images/00000.png ...             DIR/manifest.jsonl  {file, caption, scene}
    edits:  DIR/{source,target,mask}/00000.png   DIR/edits.jsonl     {id, kind, source_image,
            target_image, mask, source_prompt, target_prompt, source_scene, target_scene, index}

Paths in the JSONL files are relative to DIR; masks are 8-bit PNGs (255 inside). Every file is
written to a temporary name and renamed, the JSONL file last.

``version`` selects the world (2: uncaptioned detail, see :mod:`.scene`); ``split`` draws scenes
(for edits: source and target) from one side of the held-out split only, or from both (None).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
from PIL import Image

from ..limits import Limits, check_seed
from .captions import caption
from .edits import EDIT_KINDS, check_kind, sample_edit
from .render import render
from .scene import WorldError, check_split, check_version, sample_scene

MIN_SIZE = 16


def check_options(n: int, size: int, seed: int = 0, version: int = 1, split: str | None = None,
                  textures: bool = False) -> None:
    check_version(version)
    check_split(split)
    if version == 2 and textures:
        raise WorldError("--textures is for world version 1: version-2 backgrounds carry grain instead")
    if n < 1:
        raise WorldError(f"--n must be at least 1, got {n}")
    if size < MIN_SIZE:
        raise WorldError(f"--size must be at least {MIN_SIZE} pixels, got {size}")
    Limits.from_env().check_input(size, size, f"--size {size}")
    check_seed(seed, "--seed")


def parse_kinds(text: str | None) -> tuple[str, ...]:
    """``"color,shape"`` -> ``("color", "shape")``; None or empty -> every kind."""
    if not text or not text.strip():
        return EDIT_KINDS
    return tuple(check_kind(k.strip()) for k in text.split(",") if k.strip())


def _folder(root: str | os.PathLike, *subfolders: str) -> Path:
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise WorldError(f"output {root} exists and is not a folder: choose another -o")
    for sub in ("", *subfolders):
        (root / sub).mkdir(parents=True, exist_ok=True)
    return root


def _write_jsonl(rows: Iterable[dict], path: Path) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            for row in rows:
                fh.write(json.dumps(row) + "\n")
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _save(array: np.ndarray, root: Path, relative: str) -> str:
    """Write ``array`` as PNG at ``root / relative`` (atomically); returns ``relative``."""
    from ..images import save_image

    save_image(Image.fromarray(array), root / relative)
    return relative


def _rng(seed: int, i: int) -> np.random.Generator:
    return np.random.default_rng([seed, i])


def write_samples(
    out: str | os.PathLike, n: int, seed: int = 0, size: int = 64,
    textures: bool = False, paraphrase: bool = False, progress: Callable | None = None,
    version: int = 2, split: str | None = None,
) -> Path:
    """Write ``n`` random scenes with captions to ``out``; returns the manifest path.

    ``progress`` optionally wraps the item range (e.g. ``tqdm``).
    """
    check_options(n, size, seed, version, split, textures)
    root = _folder(out, "images")
    rows = []
    for i in progress(range(n)) if progress else range(n):
        rng = _rng(seed, i)
        scene = sample_scene(rng, textures=textures, version=version, split=split)
        rows.append({
            "file": _save(render(scene, size), root, f"images/{i:05d}.png"),
            "caption": caption(scene, rng if paraphrase else None),
            "scene": scene.to_dict(),
        })
    _write_jsonl(rows, root / "manifest.jsonl")
    return root / "manifest.jsonl"


def write_edits(
    out: str | os.PathLike, n: int, seed: int = 0, kinds: Iterable[str] = EDIT_KINDS, size: int = 64,
    textures: bool = False, paraphrase: bool = False, progress: Callable | None = None,
    version: int = 2, split: str | None = "held_out",
) -> Path:
    """Write ``n`` edit examples (source, ground-truth target, mask) to ``out``; returns the JSONL path."""
    check_options(n, size, seed, version, split, textures)
    kinds = tuple(check_kind(k) for k in kinds)
    if not kinds:
        raise WorldError(f"--kinds names no kind: choose from {', '.join(EDIT_KINDS)}")
    root = _folder(out, "source", "target", "mask")
    rows = []
    for i in progress(range(n)) if progress else range(n):
        ex = sample_edit(_rng(seed, i), kinds[i % len(kinds)], size=size, textures=textures, paraphrase=paraphrase,
                         version=version, split=split)
        name = f"{i:05d}.png"
        rows.append({
            "id": f"{i:05d}",
            "kind": ex.kind,
            "source_image": _save(ex.source_image, root, f"source/{name}"),
            "target_image": _save(ex.target_image, root, f"target/{name}"),
            "mask": _save(ex.mask.astype(np.uint8) * 255, root, f"mask/{name}"),
            "source_prompt": ex.source_prompt,
            "target_prompt": ex.target_prompt,
            "source_scene": ex.edit.source.to_dict(),
            "target_scene": ex.edit.target.to_dict(),
            "index": ex.edit.index,
        })
    _write_jsonl(rows, root / "edits.jsonl")
    return root / "edits.jsonl"
