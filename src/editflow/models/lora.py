"""LoRA adapters on a loaded pipeline, through diffusers' own ``load_lora_weights`` (peft).

``load_model(name, lora=["style.safetensors", "face.safetensors:0.7"])`` or
``editflow edit ... --lora style.safetensors --lora face.safetensors:0.7``: each file is loaded as
its own adapter (``lora0``, ``lora1``, ...) and all are activated with their scales
(``set_adapters``). The LoRA layers are not fused into the base weights: peft keeps ``W x +
s (B A) x`` beside them, so the weights stay the checkpoint's and a scale of 0 is the base model
exactly (fusing would save a little time per call and fix the scale; it is not offered).

A LoRA changes the transformer, so it acts on every model call of an edit: the source and
target branches, the inversion and the editing pass, for every method (editflow's methods
compare branches of one model; a LoRA on one branch only would be a different method).

Files: a ``.safetensors`` file in diffusers', kohya's or the BFL/ComfyUI layout (whatever
``load_lora_weights`` converts), or a folder holding ``pytorch_lora_weights.safetensors``. Pickled
``.bin`` / ``.pt`` files are refused. FLUX and SD3 pipelines take LoRAs; other families are refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import ModelNotAvailableError, ParameterError

FOLDER_WEIGHTS = "pytorch_lora_weights.safetensors"  # what save_lora_weights writes
LORA_PIPELINES = ("FluxPipeline", "StableDiffusion3Pipeline")


@dataclass(frozen=True)
class LoRA:
    """One LoRA file and its scale."""

    path: Path
    scale: float = 1.0


def parse_lora(spec) -> LoRA:
    """``"PATH"``, ``"PATH:SCALE"``, ``(path, scale)`` or a :class:`LoRA`, checked (the file exists,
    is safetensors, the scale is a finite number) before any model loads."""
    if isinstance(spec, LoRA):
        lora = spec
    elif isinstance(spec, (tuple, list)) and len(spec) == 2:
        lora = LoRA(Path(spec[0]), _scale(spec[1], spec))
    elif isinstance(spec, (str, Path)):
        text = str(spec)
        head, sep, tail = text.rpartition(":")
        if sep and head and _is_number(tail):
            lora = LoRA(Path(head), _scale(tail, spec))
        else:
            lora = LoRA(Path(text))
    else:
        raise ParameterError(f"a LoRA is PATH or PATH:SCALE, got {spec!r}")
    path = lora.path.expanduser()
    if path.is_dir():
        path = path / FOLDER_WEIGHTS
        if not path.is_file():
            raise ModelNotAvailableError(f"LoRA folder {lora.path} has no {FOLDER_WEIGHTS}: pass the .safetensors file")
    elif not path.is_file():
        raise ModelNotAvailableError(f"LoRA file {lora.path} does not exist")
    if path.suffix != ".safetensors":
        raise ModelNotAvailableError(f"LoRA {path} is not a .safetensors file: editflow loads no pickled weights "
                                     "(convert it with safetensors first)")
    return LoRA(path, lora.scale)


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def _scale(value, spec) -> float:
    try:
        scale = float(value)
    except (TypeError, ValueError):
        raise ParameterError(f"LoRA scale must be a number, got {value!r} in {spec!r}") from None
    if scale != scale or scale in (float("inf"), float("-inf")):
        raise ParameterError(f"LoRA scale must be finite, got {value!r} in {spec!r}")
    return scale


def apply_loras(pipe, loras: list[LoRA]) -> None:
    """Load each LoRA into ``pipe`` as its own adapter and activate them all with their scales."""
    if not loras:
        return
    cls = type(pipe).__name__
    if cls not in LORA_PIPELINES:
        raise ModelNotAvailableError(f"LoRAs load into FLUX and SD3 pipelines; this model is a {cls}")
    try:
        import peft  # noqa: F401  (diffusers' LoRA loading needs it)
    except ImportError:
        raise ModelNotAvailableError("LoRA loading needs peft: pip install peft") from None
    names = []
    for i, lora in enumerate(loras):
        name = f"lora{i}"
        try:
            pipe.load_lora_weights(str(lora.path.parent), weight_name=lora.path.name, adapter_name=name)
        except (ValueError, KeyError, RuntimeError) as exc:  # diffusers' messages for layouts it cannot map
            raise ModelNotAvailableError(f"LoRA {lora.path} does not fit this model: {str(exc).splitlines()[0]}") from None
        names.append(name)
    pipe.set_adapters(names, adapter_weights=[lora.scale for lora in loras])
