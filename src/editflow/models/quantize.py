"""Quantized transformers: ``load_model(name, quantize="int8")`` / ``editflow edit --quantize int8``.

The transformer's linear layers are quantized with torchao's own ``quantize_`` and its configs
(what diffusers' ``TorchAoConfig`` runs when it loads a checkpoint; diffusers has no call that
quantizes a pipeline already in memory, as the built-in models are), before the pipeline moves to
its device, so the device receives the quantized weights. No kernels are written here.

| name | torchao config | weights | where |
| --- | --- | --- | --- |
| ``int8`` | ``Int8WeightOnlyConfig`` | int8 per channel, activations in the model's dtype | CPU and CUDA |
| ``fp8`` | ``Float8WeightOnlyConfig`` | float8 e4m3 per channel | CUDA with compute capability >= 8.9 (Ada, Hopper) |
| ``nf4`` | bitsandbytes 4-bit NF4 | 4-bit NormalFloat, a float32 absmax per 64 weights | CUDA (bitsandbytes), checkpoints only |

``nf4`` quantizes while the checkpoint loads, through diffusers' ``PipelineQuantizationConfig``
(``bitsandbytes_4bit`` backend, the transformer only, compute in the model's dtype), or
``BitsAndBytesConfig`` for a ``--transformer`` ``.safetensors`` file; diffusers runs bitsandbytes
only on a GPU, so it is refused on the CPU and for the built-in models, which are built in memory.

Only the transformer is quantized (the text encoders and the VAE run once per prompt and image).
Attention control is unaffected: editflow's hooks sit after the q/k/v projections, whatever
their weights are (tested with KV-Edit on an int8 model). LoRAs stay unmerged in the model's dtype
beside the quantized base weights (peft's LoRA layer adds ``B A x`` to the quantized layer's
output), the way QLoRA runs: with torchao they load first and are left out of the quantization;
with nf4 they load into the already quantized model. A GGUF transformer is quantized already and
refuses ``--quantize``; sequential offload is not offered for quantized transformers. Measured on
the shapes model: see the README's *Memory and hardware*.
"""

from __future__ import annotations

import torch

from ..errors import ModelNotAvailableError, ParameterError

QUANTIZATIONS = ("int8", "fp8", "nf4")
AT_LOAD = ("nf4",)  # quantized by diffusers while the checkpoint loads


def check_quantize(kind: str | None, device: torch.device) -> None:
    """A clear error, before any weight loads, for an unknown kind or one this device cannot run."""
    if kind is None:
        return
    if kind not in QUANTIZATIONS:
        raise ParameterError(f"unknown quantization {kind!r}: use one of {', '.join(QUANTIZATIONS)}")
    try:
        import torchao  # noqa: F401
    except ImportError:
        raise ModelNotAvailableError(f"--quantize {kind} needs torchao: pip install torchao") from None
    if kind == "fp8" and (device.type != "cuda" or torch.cuda.get_device_capability(device) < (8, 9)):
        raise ModelNotAvailableError("fp8 weights need a CUDA GPU with compute capability 8.9 or more (Ada, Hopper): "
                                     "use --quantize int8")
    if kind == "nf4":
        if device.type != "cuda":
            raise ModelNotAvailableError("nf4 weights run on a CUDA GPU (bitsandbytes through diffusers): "
                                         "use --quantize int8 on the CPU")
        try:
            import bitsandbytes  # noqa: F401
        except ImportError:
            raise ModelNotAvailableError("--quantize nf4 needs bitsandbytes: pip install bitsandbytes") from None


def load_time_config(kind: str | None, dtype: torch.dtype, pipeline: bool = True):
    """diffusers' config that quantizes the transformer while it loads (``nf4``), else None:
    a ``PipelineQuantizationConfig`` for a pipeline, a ``BitsAndBytesConfig`` for one model."""
    if kind not in AT_LOAD:
        return None
    kwargs = dict(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype)
    if not pipeline:
        from diffusers import BitsAndBytesConfig

        return BitsAndBytesConfig(**kwargs)
    from diffusers import PipelineQuantizationConfig

    return PipelineQuantizationConfig(quant_backend="bitsandbytes_4bit", quant_kwargs=kwargs,
                                      components_to_quantize=["transformer"])


def quantize_transformer(pipe, kind: str | None) -> None:
    """Quantize ``pipe.transformer``'s linear layers in place (``kind`` checked by :func:`check_quantize`;
    the kinds quantized at load time are already done)."""
    if kind is None or kind in AT_LOAD:
        return
    from torchao.quantization import Float8WeightOnlyConfig, Int8WeightOnlyConfig, quantize_

    config = {"int8": Int8WeightOnlyConfig, "fp8": Float8WeightOnlyConfig}[kind]()
    quantize_(pipe.transformer, config, filter_fn=_base_linear)


def _base_linear(module, fqn: str) -> bool:
    """A linear layer of the model itself, not a LoRA's A or B (they stay in the model's dtype)."""
    return isinstance(module, torch.nn.Linear) and not any(part.startswith("lora_") for part in fqn.split("."))
