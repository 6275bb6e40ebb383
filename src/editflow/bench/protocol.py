"""Pinned evaluation protocols: which items, which prompts, each method's parameters per model
family, which metrics with which models and conventions, and the units the papers report in.

A protocol is a versioned YAML file; the packaged ones live in ``editflow/assets/protocols/``
(``pie-bench``: PIE-Bench as cure-lab/PnPInversion's ``evaluation/evaluate.py`` scores it).
``editflow bench run --protocol pie-bench`` reads it, keeps a copy as ``OUT/protocol.yaml`` (a
folder holds runs of one protocol file only), and every record carries ``protocol: {name,
version, digest}`` (``digest``: the file's SHA-1, 12 hex digits) beside the method's full
parameters; ``bench report`` then prints the protocol's columns in its units (structure distance
x10^3, LPIPS x10^3, MSE x10^4, SSIM x10^2), from that copy.

Under ``output: {format: jpeg, quality: 75}`` the edited image is written as that JPEG and the
metrics score the decoded file, as PnPInversion's scripts save their edits as ``.jpg`` (PIL's
default quality) and ``evaluate.py`` reads them back.

PIE-Bench's metrics, for an edited image ``y`` of the source ``x`` (both ``uint8 [512, 512, 3]``),
with ``M`` the decoded edit mask (border set, :func:`editflow.bench.datasets.decode_rle`) and
``B = 1 - M`` the background, images on ``[0, 1]`` unless said:

    structure_distance                     = mean_{ij} (S(x)_ij - S(y)_ij)^2, S = cos self-similarity
                                             of DINO ViT-B/8's last-block keys (0-255 input, 224 px)
    mse_unedit_part                        = mean over all H W 3 of (B x - B y)^2
    psnr_unedit_part                       = 10 log10(1 / mse_unedit_part)
    ssim_unedit_part                       = SSIM(B x, B y)  (Gaussian 11 px, sigma 1.5, 'valid')
    lpips_unedit_part                      = LPIPS_squeeze(2 B x - 1, 2 B y - 1)
    clip_similarity_target_image           = max(100 cos(E_img(y), E_txt(target)), 0)
    clip_similarity_target_image_edit_part = max(100 cos(E_img(M y), E_txt(target)), 0)

A background metric is ``None`` (nan) when the background is empty, CLIP-edited when the mask is,
as ``evaluate.py`` returns ``"nan"`` there.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import EditflowError
from .datasets import EditRecord

PACKAGED = ("pie-bench",)
PIE_METRICS = ("structure_distance", "psnr_unedit_part", "lpips_unedit_part", "mse_unedit_part", "ssim_unedit_part",
               "clip_similarity_target_image", "clip_similarity_target_image_edit_part")
KEPT = "protocol.yaml"  # the copy a run keeps in its output folder
FORMATS = {"jpeg": ".jpg", "png": ".png"}


def text_digest(text: str) -> str:
    """A protocol file's digest: the SHA-1 of its text, 12 hex digits."""
    return hashlib.sha1(text.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class Protocol:
    """A loaded protocol file (see the module docstring); ``raw`` is the whole parsed file, ``text`` its text."""

    name: str
    version: int
    raw: dict
    text: str

    @property
    def digest(self) -> str:
        return text_digest(self.text)

    @property
    def tag(self) -> dict:
        """What every record stores: ``{"name", "version", "digest"}``."""
        return {"name": self.name, "version": self.version, "digest": self.digest}

    @property
    def free_parameters(self) -> list[str]:
        """Parameters ``--set`` may change (they do not change results, e.g. ``offload``)."""
        return list(self.raw.get("free_parameters") or [])

    @property
    def output(self) -> tuple[str, dict]:
        """``(suffix, PIL save options)`` of the edited image the metrics score."""
        spec = self.raw.get("output") or {"format": "png"}
        return FORMATS[spec["format"]], ({"quality": int(spec["quality"])} if spec["format"] == "jpeg" else {})

    def check_output_folder(self, root: Path) -> None:
        """Refuse an output folder that keeps another protocol file (before anything is written)."""
        kept = root / KEPT
        if kept.is_file():
            try:
                other = text_digest(kept.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError) as exc:
                raise EditflowError(f"{kept} cannot be read ({exc}): pass another --out") from None
            if other != self.digest:
                raise EditflowError(f"{root} holds a run of another protocol file ({kept}, digest {other}; this one is "
                                    f"{self.name} v{self.version}, {self.digest}): pass another --out")

    def keep_in(self, root: Path) -> None:
        """Write this protocol's text to ``root/protocol.yaml`` (atomically) unless it is there."""
        from ..images import write_atomic

        if not (root / KEPT).is_file():
            write_atomic(root / KEPT, lambda fh, _: fh.write(self.text.encode()))

    @property
    def metrics(self) -> dict[str, dict]:
        return self.raw["metrics"]

    @property
    def seed(self) -> int:
        return int(self.raw.get("seed", 0))

    def subset(self, name: str | None) -> tuple[str, list[str]]:
        """``(name, categories)`` of ``--subset NAME`` (the protocol's default for ``None``)."""
        subsets = self.raw["data"]["subsets"]
        name = name or self.raw["data"]["default_subset"]
        if name not in subsets:
            raise EditflowError(f"--subset {name!r} is not a subset of protocol {self.name}: use "
                                f"{' or '.join(subsets)}")
        return name, [str(c) for c in subsets[name]["categories"]]

    def select(self, items: list[EditRecord], subset: str | None) -> list[EditRecord]:
        """The items of ``subset`` (by PIE-Bench's ``editing_type_id``), in file order."""
        _, categories = self.subset(subset)
        return [rec for rec in items if str(rec.extras.get("editing_type_id")) in categories]

    def methods(self, family: str) -> list[str]:
        """The methods this protocol pins parameters for on ``family``."""
        return [m for m, fams in self.raw["methods"].items() if family in fams]

    def params(self, method: str, family: str, free: dict[str, Any] | None = None) -> dict[str, Any]:
        """The pinned parameters of ``method`` on ``family`` (one line naming what is pinned if none),
        with ``free``: values of the free parameters (``--set offload=true``) on top."""
        entry = self.raw["methods"].get(method, {}).get(family)
        if entry is None:
            have = ", ".join(self.methods(family)) or "none"
            raise EditflowError(f"protocol {self.name} v{self.version} pins no parameters for {method} on {family} "
                                f"models (it has: {have}): run those, or run {method} without --protocol")
        return dict(entry["params"], **(free or {}))

    def source(self, method: str, family: str) -> str:
        return self.raw["methods"][method][family]["source"]


def load_protocol(name_or_path: str | os.PathLike) -> Protocol:
    """A packaged protocol by name (``pie-bench``) or a protocol YAML file, checked: name, integer
    version, data subsets, metrics with scale and unit, and methods whose parameters are the
    method's own (an unknown method or parameter is one line naming it)."""
    import yaml

    text_name = str(name_or_path)
    if text_name in PACKAGED:
        text = (resources.files("editflow") / "assets" / "protocols" / f"{text_name}.yaml").read_text(encoding="utf-8")
        where = f"protocol {text_name}"
    else:
        path = Path(name_or_path)
        if not path.is_file():
            raise EditflowError(f"--protocol {text_name!r} is neither a packaged protocol ({', '.join(PACKAGED)}) "
                                "nor a protocol file: pass one of those")
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise EditflowError(f"protocol file {path} cannot be read as UTF-8 text ({exc}): fix it") from None
        where = f"protocol file {path}"
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise EditflowError(f"{where} is not valid YAML ({getattr(exc, 'problem', None) or exc}): fix the syntax") from None
    _check(raw, where)
    return Protocol(raw["name"], raw["version"], raw, text)


def _check(raw, where: str) -> None:
    """Every field the runner and report read, with its type; one line naming the first that is wrong."""
    import dataclasses

    from ..methods import METHODS

    def need(ok: bool, problem: str) -> None:
        if not ok:
            raise EditflowError(f"{where}: {problem}")

    need(isinstance(raw, dict), "holds no mapping: write name, version, data, metrics and methods")
    for key in ("name", "version", "data", "metrics", "methods"):
        need(key in raw, f"lacks {key!r}: add it")
    need(isinstance(raw["name"], str) and raw["name"].strip() != "", "name must be a non-empty string")
    need(isinstance(raw["version"], int) and not isinstance(raw["version"], bool), f"version must be a whole number, got {raw['version']!r}")
    data = raw["data"]
    need(isinstance(data, dict) and isinstance(data.get("subsets"), dict) and data.get("default_subset") in data["subsets"],
         "data needs subsets (name: {categories: [...], items: N}) and a default_subset among them")
    for name, spec in data["subsets"].items():
        need(isinstance(spec, dict) and isinstance(spec.get("categories"), list) and isinstance(spec.get("items"), int),
             f"subset {name!r} needs categories (a list) and items (a whole number)")
    metrics = raw["metrics"]
    need(isinstance(metrics, dict) and set(metrics) == set(PIE_METRICS),
         f"metrics must be exactly {', '.join(PIE_METRICS)} (the ones editflow computes)")
    for name, spec in metrics.items():
        need(isinstance(spec, dict) and {"column", "scale", "unit", "better"} <= set(spec)
             and isinstance(spec["scale"], (int, float)), f"metric {name!r} needs column, scale (a number), unit and better")
    for name in ("structure_distance", "lpips_unedit_part", "clip_similarity_target_image"):
        need(isinstance(metrics[name].get("model"), str), f"metric {name!r} needs model (a checkpoint name or path)")
    output = raw.get("output") or {"format": "png"}
    need(isinstance(output, dict) and output.get("format") in FORMATS
         and (output["format"] != "jpeg" or isinstance(output.get("quality"), int)),
         "output must be {format: png} or {format: jpeg, quality: N}")
    need(isinstance(raw.get("seed", 0), int) and not isinstance(raw.get("seed", 0), bool) and raw.get("seed", 0) >= 0,
         f"seed must be a whole number >= 0, got {raw.get('seed')!r}")
    from .metrics.dino import RESIZES

    need(metrics["structure_distance"].get("resize", "bilinear") in RESIZES,
         f"structure_distance resize must be one of {', '.join(RESIZES)}")
    free = raw.get("free_parameters") or []
    need(isinstance(free, list) and all(isinstance(k, str) for k in free), "free_parameters must be a list of names")
    need(isinstance(raw["methods"], dict), "methods must map method -> family -> {params, source}")
    for method, families in raw["methods"].items():
        need(method in METHODS, f"method {method!r} is not one of editflow's ({', '.join(sorted(METHODS))})")
        need(isinstance(families, dict), f"{method} must map family -> {{params, source}}")
        for family, entry in families.items():
            need(isinstance(entry, dict) and isinstance(entry.get("params"), dict) and isinstance(entry.get("source"), str),
                 f"{method}.{family} needs params (a mapping) and source (a string)")
            cls = METHODS[method].params
            missing = sorted({f.name for f in dataclasses.fields(cls)} - set(entry["params"]))
            need(not missing, f"{method}.{family} leaves {', '.join(missing)} unpinned: give every parameter")
            try:
                cls.for_family(family, **entry["params"])
            except (EditflowError, TypeError) as exc:
                raise EditflowError(f"{where}: {method}.{family} params are not {method}'s: {exc}") from None


# -- PIE-Bench's metrics -------------------------------------------------------------------------

def background(mask: np.ndarray) -> np.ndarray:
    """PIE-Bench's unedited region: ``1 - mask`` of the decoded mask (whose border is set)."""
    return ~np.asarray(mask, dtype=bool)


def pie_pixels(src: np.ndarray, out: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    """PSNR, MSE and SSIM of the background-zeroed pair (PIE-Bench's ``*_unedit_part``)."""
    from .metrics import MSE, PSNR, SSIM

    bg = background(mask)
    if not bg.any():
        return dict.fromkeys(("psnr_unedit_part", "mse_unedit_part", "ssim_unedit_part"), float("nan"))
    return {"psnr_unedit_part": PSNR("zero")(src, out, mask=bg)[0], "mse_unedit_part": MSE("zero")(src, out, mask=bg)[0],
            "ssim_unedit_part": SSIM("zero")(src, out, mask=bg)[0]}


def pie_scorer(protocol: Protocol, paths: dict[str, str], device=None):
    """The protocol's metrics as one function ``fn(source, edited, record) -> dict of floats``
    (the runner's metric signature), every model loaded now, before any edit: DINO ViT-B/8 (``--metric-model structure_distance=``),
    CLIP ViT-L/14 (``clip_t=``), LPIPS-squeeze (``lpips=``, a converted safetensors file)."""
    from .metrics import LPIPS, ClipText, StructureDistance

    spec = protocol.metrics
    structure = StructureDistance.from_pretrained(paths.get("structure_distance", spec["structure_distance"]["model"]),
                                                  device=device, resize=spec["structure_distance"].get("resize", "bilinear"))
    clip = ClipText.from_pretrained(paths.get("clip_t", spec["clip_similarity_target_image"]["model"]), device=device,
                                    scale=100.0, clip_negative=True)
    lpips = LPIPS.from_pretrained(paths.get("lpips", spec["lpips_unedit_part"]["model"]), device=device, net="squeeze")

    def fn(src: np.ndarray, out: np.ndarray, rec: EditRecord) -> dict[str, float]:
        if rec.mask is None or rec.mask.shape != src.shape[:2] or out.shape != src.shape:
            raise EditflowError(f"item {rec.id!r}: protocol {protocol.name} scores {src.shape[1]}x{src.shape[0]} "
                                "images with their PIE-Bench mask, and this one has none of that size")
        mask = rec.mask
        values = {"structure_distance": structure(src, out)[0], **pie_pixels(src, out, mask),
                  "clip_similarity_target_image": clip(out, rec.target_prompt)[0]}
        bg = background(mask)
        values["lpips_unedit_part"] = lpips(src, out, mask=bg)[0] if bg.any() else float("nan")
        values["clip_similarity_target_image_edit_part"] = (clip(out, rec.target_prompt, mask=mask)[0] if mask.any()
                                                            else float("nan"))
        return values

    return fn
