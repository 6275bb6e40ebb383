"""A transformer from one file, the rest of the pipeline from a folder or hub id:
``load_model("flux-dev", transformer="flux1-dev-Q8_0.gguf")`` / ``editflow edit --transformer FILE``.

Through diffusers' ``from_single_file`` on the pipeline's transformer class, with the folder's
(or hub id's) ``transformer/config.json`` as the configuration:

* ``.safetensors``: the BFL / ComfyUI layout (diffusers converts the keys) or diffusers' own
  layout (loaded as is), in the dtype asked for;
* ``.gguf`` (city96's ComfyUI-GGUF files and any other GGUF of a FLUX or SD3 transformer): loaded
  with ``GGUFQuantizationConfig``, the weights staying quantized (Q8_0, Q4_K, ...) and
  dequantized per layer as they are used, in ``compute_dtype`` = the dtype asked for (float32 on
  the CPU, bfloat16 on CUDA by default); needs the ``gguf`` package.

Pickled checkpoints (``.ckpt``, ``.pt``, ``.bin``) are refused. The pipeline's other parts (text
encoders, VAE, scheduler) come from the folder or hub id, so that source must be a diffusers
pipeline: the built-in ``shapes`` model is one; the tiny test models are built in memory and are not.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import ModelNotAvailableError

SUFFIXES = (".safetensors", ".gguf")


def check_transformer_file(path) -> Path:
    """The file as a ``Path``, or a one-line error (missing, pickled, unknown format)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise ModelNotAvailableError(f"transformer file {path} does not exist")
    if p.suffix not in SUFFIXES:
        raise ModelNotAvailableError(f"transformer file {p.name} is not .safetensors or .gguf: editflow loads no "
                                     "pickled weights")
    if p.suffix == ".gguf":
        try:
            import gguf  # noqa: F401
        except ImportError:
            raise ModelNotAvailableError("GGUF files need the gguf package: pip install gguf") from None
    return p


def transformer_class(source: str):
    """The transformer class a pipeline folder or hub id names in its ``model_index.json``."""
    import diffusers
    from diffusers import DiffusionPipeline

    try:
        index = DiffusionPipeline.load_config(source)
    except (OSError, ValueError) as exc:
        raise ModelNotAvailableError(f"cannot read {source}'s model_index.json: {str(exc).splitlines()[0]}") from None
    entry = index.get("transformer")
    if not entry or entry[1] not in ("FluxTransformer2DModel", "SD3Transformer2DModel"):
        raise ModelNotAvailableError(f"{source} has no FLUX or SD3 transformer to replace (its transformer: {entry})")
    return getattr(diffusers, entry[1])


def load_transformer(path: Path, source: str, torch_dtype: torch.dtype, quantization_config=None):
    """The transformer in ``path`` with ``source``'s transformer configuration (``quantization_config``:
    diffusers' config quantizing a ``.safetensors`` file while it loads)."""
    cls = transformer_class(source)
    kwargs = dict(config=source, subfolder="transformer", torch_dtype=torch_dtype)
    if quantization_config is not None:
        kwargs["quantization_config"] = quantization_config
    if path.suffix == ".gguf":
        from diffusers import GGUFQuantizationConfig

        kwargs["quantization_config"] = GGUFQuantizationConfig(compute_dtype=torch_dtype)
    try:
        return cls.from_single_file(str(path), **kwargs)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise ModelNotAvailableError(f"cannot load transformer file {path.name} for {source}: "
                                     f"{str(exc).splitlines()[0]}") from None
