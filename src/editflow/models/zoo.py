"""Named models and :func:`load_model`.

A model is named by a zoo name (``editflow models`` lists them), a local diffusers pipeline
folder, or a Hugging Face hub id. Hub ids load through the pipeline's own ``from_pretrained``
(downloaded or from the local cache); one that cannot be had fails with one line that says how
to download it or which folder to pass.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from ..errors import EditflowError, ModelNotAvailableError
from .flux import FluxAdapter
from .sd3 import SD3Adapter
from .unet import RectifiedUNetAdapter


@dataclass(frozen=True)
class ZooEntry:
    name: str
    family: str
    description: str
    hub_id: str | None = None
    builder: Callable[[], Any] | None = None
    dtype: torch.dtype = torch.bfloat16
    options: dict = field(default_factory=dict)
    refusal: str | None = None  # why editflow does not run this model (said before anything loads)

    @property
    def builtin(self) -> bool:
        return self.builder is not None


SHAPES_DIR = Path(__file__).resolve().parent.parent / "assets" / "models" / "shapes"


KONTEXT_REFUSAL = (
    "FLUX.1-Kontext is an instruction editor (FluxKontextPipeline): its source image enters the transformer as a "
    "second stream of image tokens beside the latent ones, which editflow's FLUX adapter does not feed, so none of "
    "editflow's methods runs on it; edit with diffusers' FluxKontextPipeline itself, or use flux-dev / flux-krea-dev here")
REFUSED_PIPELINES = {"FluxKontextPipeline": KONTEXT_REFUSAL}


def _shapes() -> Any:
    """The built-in trained shapes model, shipped as a FluxPipeline folder inside the package."""
    if not (SHAPES_DIR / "model_index.json").is_file():
        raise ModelNotAvailableError(
            f"the built-in 'shapes' model is missing from this install (no {SHAPES_DIR / 'model_index.json'}): "
            "reinstall editflow from a full checkout (pip install -e .), or pass --model tiny-flux (noise) or --model flux-dev"
        )
    return _load_hub_or_folder(str(SHAPES_DIR), torch.float32)


def _tiny(builder: str, **kwargs) -> Callable[[], Any]:
    """A builder of one of :mod:`editflow.models.tiny`'s offline pipelines (seed 0), imported when used."""

    def build():
        from . import tiny

        return getattr(tiny, builder)(seed=0, **kwargs)

    return build


ZOO: dict[str, ZooEntry] = {
    e.name: e
    for e in [
        ZooEntry(
            "shapes",
            "flux",
            "small FLUX-architecture model trained by editflow on its shapes world (built in, offline)",
            builder=_shapes,
            dtype=torch.float32,
        ),
        ZooEntry(
            "tiny-flux",
            "flux",
            "built offline, random weights (seed 0), guidance-distilled like FLUX.1-dev; for tests: its output is noise",
            builder=_tiny("build_tiny_flux", guidance_embeds=True),
            dtype=torch.float32,
        ),
        ZooEntry(
            "tiny-flux-schnell",
            "flux",
            "as tiny-flux without the guidance embedding, like FLUX.1-schnell; output is noise",
            builder=_tiny("build_tiny_flux", guidance_embeds=False),
            dtype=torch.float32,
        ),
        ZooEntry("tiny-sd3", "sd3", "built offline, random weights: a StableDiffusion3Pipeline (2 CLIPs, T5, "
                 "RMS qk-norm); for tests: its output is noise", builder=_tiny("build_tiny_sd3"), dtype=torch.float32),
        ZooEntry("tiny-unet", "unet", "built offline, random weights: a StableDiffusionPipeline read as a "
                 "rectified-flow UNet like InstaFlow; for tests: its output is noise", builder=_tiny("build_tiny_unet"),
                 dtype=torch.float32),
        ZooEntry("flux-dev", "flux", "FLUX.1-dev, guidance-distilled, 12B", hub_id="black-forest-labs/FLUX.1-dev"),
        ZooEntry("flux-krea-dev", "flux", "FLUX.1-Krea-dev: a FLUX.1-dev fine-tune, the same FluxPipeline and guidance "
                 "embedding (every FLUX method, FLUX.1-dev's defaults)", hub_id="black-forest-labs/FLUX.1-Krea-dev"),
        ZooEntry("flux-kontext-dev", "flux", "FLUX.1-Kontext-dev: not run by editflow (its image enters as a second "
                 "token stream)", hub_id="black-forest-labs/FLUX.1-Kontext-dev", refusal=KONTEXT_REFUSAL),
        ZooEntry(
            "flux-schnell",
            "flux",
            "FLUX.1-schnell, timestep-distilled, 12B",
            hub_id="black-forest-labs/FLUX.1-schnell",
            options={"max_sequence_length": 256},
        ),
        ZooEntry("sd3-medium", "sd3", "Stable Diffusion 3 medium, 2B, CFG (FlowEdit's SD3)",
                 hub_id="stabilityai/stable-diffusion-3-medium-diffusers"),
        ZooEntry("sd3.5-medium", "sd3", "Stable Diffusion 3.5 medium, 2.5B, CFG",
                 hub_id="stabilityai/stable-diffusion-3.5-medium"),
        ZooEntry("sd3.5-large", "sd3", "Stable Diffusion 3.5 large, 8B, CFG", hub_id="stabilityai/stable-diffusion-3.5-large"),
        ZooEntry("instaflow-2rf", "unet", "2-rectified flow from SD1.5 (InstaFlow's few-step model), CFG",
                 hub_id="XCLiu/2_rectified_flow_from_sd_1_5"),
        ZooEntry("instaflow", "unet", "InstaFlow 0.9B, one-step rectified flow from SD1.5",
                 hub_id="XCLiu/instaflow_0_9B_from_sd_1_5"),
    ]
}

# The default of every command. Tiny models are for tests and never the default.
DEFAULT_MODEL = "shapes"
NOISE_MODELS = {"tiny-flux", "tiny-flux-schnell", "tiny-sd3", "tiny-unet"}

# Adapter per family; and the family of each pipeline class that says it by itself. A
# StableDiffusionPipeline is a rectified flow only when its weights are (InstaFlow): it needs
# family="unet" (the zoo entries say it).
FAMILY_ADAPTERS = {"flux": FluxAdapter, "sd3": SD3Adapter, "unet": RectifiedUNetAdapter}
PIPELINE_FAMILIES = {"FluxPipeline": "flux", "StableDiffusion3Pipeline": "sd3"}


def default_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def _parse_dtype(dtype: str | torch.dtype | None, fallback: torch.dtype) -> torch.dtype:
    if dtype is None:
        return fallback
    if isinstance(dtype, torch.dtype):
        return dtype
    names = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16}
    if dtype not in names:
        raise ModelNotAvailableError(f"unknown dtype {dtype!r}: use one of {', '.join(names)}")
    return names[dtype]


def checkpoint_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """``dtype`` for a checkpoint's weights, by default bf16 on GPUs (as the checkpoints ship) and
    float32 on the CPU, where bf16 is slow and coarse."""
    return _parse_dtype(dtype, torch.bfloat16 if device.type == "cuda" else torch.float32)


def wrap_pipeline(pipe, name: str = "pipeline", family: str | None = None, **options):
    """Wrap an already-loaded diffusers pipeline in editflow's adapter for its family
    (``family``: "flux", "sd3" or "unet"; by default read from the pipeline class)."""
    cls = type(pipe).__name__
    if family is not None and family not in FAMILY_ADAPTERS:
        raise ModelNotAvailableError(f"unknown family {family!r}: use one of {', '.join(FAMILY_ADAPTERS)}")
    if family is None:
        if cls == "StableDiffusionPipeline":
            raise ModelNotAvailableError(
                f"{name}: a StableDiffusionPipeline is a rectified flow only if its UNet was trained as one "
                "(InstaFlow, 2-rectified flow): load it with family='unet', or use the zoo's instaflow / instaflow-2rf"
            )
        family = PIPELINE_FAMILIES.get(cls)
    if family not in FAMILY_ADAPTERS:
        raise _unsupported(name, cls)
    return FAMILY_ADAPTERS[family](pipe, name=name, **options)


def _download_hint(hub_id: str) -> str:
    return (
        f"model {hub_id!r} is not available offline: download it where there is network with "
        f"`hf download {hub_id}` (accept its license on the hub first if it is gated) and copy the "
        "cache here, or pass a local pipeline folder with --model /path/to/folder"
    )


def _dtype_keyword() -> str:
    """diffusers >= 0.42 names the loading dtype ``dtype`` (``torch_dtype`` is deprecated)."""
    try:
        from diffusers.utils.deprecation_utils import _resolve_dtype  # noqa: F401
    except ImportError:
        return "torch_dtype"
    return "dtype"


_DTYPE_KWARG = _dtype_keyword()


PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def read_model_index(folder: Path) -> dict:
    """A pipeline folder's ``model_index.json`` as a dict naming its ``_class_name``, or a
    one-line :class:`ModelNotAvailableError` (missing, not JSON, wrong structure)."""
    import json

    index = folder / "model_index.json"
    try:
        data = json.loads(index.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelNotAvailableError(
            f"{str(folder)!r} is not a diffusers pipeline folder (no model_index.json): pass a folder written by "
            "save_pretrained, a hub id, or a name from `editflow models`") from None
    except (OSError, ValueError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise ModelNotAvailableError(f"{index} is not readable JSON ({' '.join(str(exc).split())}): "
                                     "restore it or re-save the pipeline with save_pretrained") from None
    if not isinstance(data, dict) or not isinstance(data.get("_class_name"), str):
        raise ModelNotAvailableError(f"{index} names no pipeline class (_class_name): restore it or re-save the "
                                     "pipeline with save_pretrained")
    return data


def check_safetensors(folder: Path) -> None:
    """Refuse a pipeline folder whose weights exist only as pickle files (``.bin`` ...): editflow
    loads weights through safetensors only, since unpickling runs code from the file."""
    try:
        components = {c: [f for f in c.iterdir() if f.is_file()] for c in folder.iterdir() if c.is_dir()}
    except OSError as exc:
        raise ModelNotAvailableError(f"cannot list the pipeline folder {folder} ({exc.strerror or exc}): "
                                     "check its permissions") from None
    for component, files in sorted(components.items()):
        pickles = [f.name for f in files if f.suffix in PICKLE_SUFFIXES]
        if pickles and not any(f.suffix == ".safetensors" for f in files):
            raise ModelNotAvailableError(
                f"{component} holds weights only as pickle files ({pickles[0]}): editflow loads safetensors only; "
                "convert them where you trust the files (from_pretrained, then save_pretrained(..., "
                "safe_serialization=True))")


@contextmanager
def loading_bars(progress: bool):
    """Within it, transformers' "Loading weights" bars show only when ``progress`` (diffusers'
    own loading bars are always off: editflow's edits have their own)."""
    from transformers.utils import logging as tlogging

    shown = tlogging.is_progress_bar_enabled()
    if not progress:
        tlogging.disable_progress_bar()
    try:
        yield
    finally:
        if shown:
            tlogging.enable_progress_bar()


def _load_hub_or_folder(source: str, torch_dtype: torch.dtype, **parts):
    """``DiffusionPipeline.from_pretrained`` with safetensors enforced, one-line errors; ``parts``:
    components already loaded (a single-file transformer) or a ``quantization_config``."""
    from diffusers import DiffusionPipeline
    from diffusers.utils import logging as dlogging

    level = dlogging.get_verbosity()
    dlogging.set_verbosity_error()
    dlogging.disable_progress_bar()
    try:
        return DiffusionPipeline.from_pretrained(source, use_safetensors=True, **{_DTYPE_KWARG: torch_dtype}, **parts)
    except (OSError, ValueError, EnvironmentError) as exc:
        if Path(source).exists():
            raise ModelNotAvailableError(f"cannot load pipeline folder {source!r}: {str(exc).splitlines()[0]}") from exc
        raise ModelNotAvailableError(_download_hint(source)) from exc
    finally:
        dlogging.set_verbosity(level)
        dlogging.enable_progress_bar()


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``device`` as a ``torch.device`` this machine has (``None``: CUDA when present, else the
    CPU), or a one-line :class:`ModelNotAvailableError` saying what to pass instead."""
    if device is None:
        return default_device()
    try:
        d = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ModelNotAvailableError(f"unknown device {device!r}: use cpu, cuda or cuda:N") from None
    if d.type == "cuda":
        if not torch.cuda.is_available():
            raise ModelNotAvailableError(f"device {device!r}: this machine has no CUDA GPU that torch "
                                         f"{torch.__version__} can use: pass --device cpu (or device='cpu')")
        if d.index is not None and d.index >= torch.cuda.device_count():
            raise ModelNotAvailableError(f"device {device!r}: there are only {torch.cuda.device_count()} CUDA "
                                         "devices (cuda:0 ...)")
    elif d.type == "mps":
        if not torch.backends.mps.is_available():
            raise ModelNotAvailableError(f"device {device!r}: MPS is not available here: pass --device cpu")
    elif d.type != "cpu":
        raise ModelNotAvailableError(f"device {device!r} is not supported: use cpu, cuda, cuda:N or mps")
    return d


def check_load_options(lora=None, quantize: str | None = None, transformer=None, device=None,
                       placement: str | None = None):
    """``load_model``'s options checked without loading anything: the parsed LoRAs, the device and
    the transformer file (or None); one-line errors for a missing or pickled file, a quantization
    this device cannot run, or a combination that does not go together."""
    from .lora import parse_lora
    from .placement import check_placement
    from .quantize import check_quantize
    from .single_file import check_transformer_file

    if isinstance(lora, (str, Path)):
        lora = [lora]
    loras = [parse_lora(spec) for spec in lora or []]
    device = resolve_device(device)
    check_quantize(quantize, device)
    if check_placement(placement) == "sequential-offload" and quantize is not None:
        raise ModelNotAvailableError("sequential offload is not offered for a quantized transformer (untested with "
                                     "quantized weights): use model-offload or drop --quantize")
    transformer_file = None if transformer is None else check_transformer_file(transformer)
    if transformer_file is not None and transformer_file.suffix == ".gguf" and quantize is not None:
        raise ModelNotAvailableError(f"{transformer_file.name} is GGUF, quantized already: drop --quantize")
    return loras, device, transformer_file


def load_model(
    name_or_path: str | None = None,
    dtype: str | torch.dtype | None = None,
    device: str | torch.device | None = None,
    cpu_offload: bool = False,
    family: str | None = None,
    progress: bool = True,
    lora=None,
    quantize: str | None = None,
    transformer: str | Path | None = None,
    placement: str | None = None,
):
    """Load a model and return its :class:`~editflow.models.base.FlowModel` adapter.

    ``name_or_path`` is a zoo name (``tiny-flux``, ``flux-dev``, ...), a local diffusers folder
    (with ``model_index.json``) or a hub id; ``None`` loads the default model. ``dtype`` defaults
    to float32 for built-in models and on the CPU, bfloat16 for other models on CUDA; ``device``
    defaults to CUDA when present. ``family`` names the adapter for a folder or hub id whose
    pipeline class does not say it (a rectified-flow ``StableDiffusionPipeline``: ``"unet"``).
    Weights load through safetensors only. ``progress=False`` hides the loading bars. ``lora``: LoRA
    files to load into a FLUX or SD3 transformer, each ``"PATH"`` or ``"PATH:SCALE"`` (unfused, on
    every call of an edit; :mod:`editflow.models.lora`). ``quantize``: ``"int8"`` (torchao int8
    weight-only), ``"fp8"`` (CUDA, Ada or newer) or ``"nf4"`` (bitsandbytes, CUDA, quantized while a
    checkpoint loads) for the transformer (:mod:`editflow.models.quantize`).
    ``transformer``: a ``.safetensors`` or ``.gguf`` file replacing the pipeline's transformer, the
    rest coming from ``name_or_path`` (:mod:`editflow.models.single_file`). ``placement``: where the
    weights live on a CUDA device (``"gpu"``, ``"text-encoders-offload"``, ``"model-offload"``,
    ``"sequential-offload"``; :mod:`editflow.models.placement`), as ``editflow.memory.plan`` picks
    it; ``cpu_offload=True`` is ``"model-offload"``.

    >>> model = load_model("tiny-flux")          # offline, random weights
    >>> model = load_model("black-forest-labs/FLUX.1-dev", dtype="bf16")   # needs the weights
    """
    name_or_path = name_or_path or DEFAULT_MODEL
    if not isinstance(name_or_path, str):
        raise ModelNotAvailableError(f"a model is named by a string (zoo name, folder or hub id), got "
                                     f"{type(name_or_path).__name__}")
    from .lora import apply_loras
    from .placement import place
    from .quantize import AT_LOAD, load_time_config, quantize_transformer
    from .single_file import load_transformer

    # every file and option is checked before anything loads
    loras, device, transformer_file = check_load_options(lora, quantize, transformer, device, placement)
    entry = ZOO.get(name_or_path)
    if entry is not None and entry.refusal:
        raise ModelNotAvailableError(f"{name_or_path}: {entry.refusal}")
    if transformer_file is not None and entry is not None and entry.builtin:
        if name_or_path != "shapes":
            raise ModelNotAvailableError(f"{name_or_path} is built in memory, so a transformer file has no pipeline "
                                         "folder to complete it: use a pipeline folder, a hub id or shapes")
        entry = None
        name_or_path = str(SHAPES_DIR)
    if entry is not None and entry.builtin:
        if quantize in AT_LOAD:
            raise ModelNotAvailableError(f"--quantize {quantize} quantizes a checkpoint while it loads, and {name_or_path} "
                                         "is built in memory: use --quantize int8")
        torch_dtype = _parse_dtype(dtype, entry.dtype)
        with loading_bars(progress):
            pipe = entry.builder()
        if torch_dtype != torch.float32:
            pipe.to(dtype=torch_dtype)
        options = dict(entry.options)
    else:
        source = entry.hub_id if entry is not None else name_or_path
        local = Path(source).expanduser()
        if local.exists():
            cls = read_model_index(local)["_class_name"]
            if cls in REFUSED_PIPELINES:
                raise _unsupported(source, cls)
            check_safetensors(local)
            source = str(local)
        elif entry is None and source.count("/") != 1:
            raise ModelNotAvailableError(
                f"unknown model {source!r}: use a name from `editflow models` ({', '.join(ZOO)}), "
                "a local pipeline folder, or a hub id like black-forest-labs/FLUX.1-dev"
            )
        torch_dtype = checkpoint_dtype(dtype, device)
        with loading_bars(progress):
            if transformer_file is None:
                parts = {"quantization_config": load_time_config(quantize, torch_dtype)} if quantize in AT_LOAD else {}
            else:
                parts = {"transformer": load_transformer(transformer_file, source, torch_dtype,
                                                         load_time_config(quantize, torch_dtype, pipeline=False))}
            pipe = _load_hub_or_folder(source, torch_dtype, **parts)
        options = dict(entry.options) if entry is not None else {}
    pipe.set_progress_bar_config(disable=True)
    apply_loras(pipe, loras)
    quantize_transformer(pipe, quantize)  # on the host, before the move: the device gets the quantized weights
    place(pipe, "model-offload" if cpu_offload else placement, device)
    return wrap_pipeline(pipe, name=name_or_path, family=family or (entry.family if entry is not None else None),
                         **options)


def model_family(name_or_path: str) -> str:
    """The family of a zoo name or a local pipeline folder, without loading it."""
    if name_or_path in ZOO:
        return ZOO[name_or_path].family
    folder = Path(name_or_path).expanduser()
    if not folder.is_dir():
        raise ModelNotAvailableError(f"unknown model {name_or_path!r}: use a name from `editflow models` or a local "
                                     "pipeline folder")
    cls = read_model_index(folder)["_class_name"]
    if cls == "StableDiffusionPipeline":
        return "unet"  # what editflow can run it as (a rectified-flow UNet)
    if cls not in PIPELINE_FAMILIES:
        raise _unsupported(name_or_path, cls)
    return PIPELINE_FAMILIES[cls]


def _unsupported(name: str, cls: str) -> ModelNotAvailableError:
    if cls in REFUSED_PIPELINES:
        return ModelNotAvailableError(f"{name}: {REFUSED_PIPELINES[cls]}")
    return ModelNotAvailableError(f"{name}: pipeline class {cls} is not supported; supported: "
                                  f"{', '.join(sorted(PIPELINE_FAMILIES))}, and StableDiffusionPipeline with family='unet'")


def shapes_available() -> bool:
    return (SHAPES_DIR / "model_index.json").is_file()


def _train_config(name_or_path: str) -> tuple[Path, dict] | None:
    """A shapes model's ``train_config.json`` (the built-in one for ``"shapes"``), or None."""
    import json

    folder = SHAPES_DIR if name_or_path == "shapes" else Path(str(name_or_path)).expanduser()
    path = folder / "train_config.json"
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict):
            raise TypeError
        return path, data
    except (ValueError, OSError, TypeError):
        raise EditflowError(f"{path} is not a readable training config (a JSON object): "
                            "restore it from the model's folder") from None


def _train_config_int(name_or_path: str, key: str, default: int) -> int | None:
    """An integer of a shapes model's training config (``default`` when the key is absent), or None
    when the model has no training config."""
    found = _train_config(name_or_path)
    if found is None:
        return None
    path, data = found
    try:
        return int(data.get(key, default))
    except (ValueError, TypeError):
        raise EditflowError(f"{path} is not a readable training config (JSON with an integer {key}): "
                            "restore it from the model's folder") from None


def trained_world_version(name_or_path: str) -> int:
    """The shapes-world version a shapes model was trained on: its folder's ``train_config.json``
    says it (``world_version``, 1 when absent); 2 for any other model (edit sets default to it)."""
    version = _train_config_int(name_or_path, "world_version", 1)
    return 2 if version is None else version


def trained_image_size(name_or_path: str) -> int | None:
    """The image side a shapes model (built in or exported) was trained at, from its
    ``train_config.json``; None for other models (their callers pick the family's size)."""
    return _train_config_int(name_or_path, "image_size", 64)


def _source_label(e: ZooEntry) -> str:
    if e.name == "shapes" and not shapes_available():
        return "built-in (not trained yet)"
    return "built-in (offline)" if e.builtin else str(e.hub_id)


def describe_models() -> list[dict]:
    """One row per zoo model: name, family, source, description."""
    return [
        {
            "name": e.name,
            "family": e.family,
            "source": _source_label(e),
            "description": e.description + (" [default]" if e.name == DEFAULT_MODEL else ""),
        }
        for e in ZOO.values()
    ]

