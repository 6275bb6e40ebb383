"""Quantized transformers: ``load_model(name, quantize="int8")`` / ``editflow edit --quantize int8``.

The transformer's linear layers are quantized with torchao's own ``quantize_`` and its configs
(what diffusers' ``TorchAoConfig`` runs when it loads a checkpoint; diffusers has no call that
quantizes a pipeline already in memory, as the built-in models are), before the pipeline moves to
its device, so the device receives the quantized weights. No kernels are written here.

| name | torchao config | weights | where |
| --- | --- | --- | --- |
| ``int8`` | ``Int8WeightOnlyConfig`` | int8 per channel, activations in the model's dtype | CPU and CUDA |
| ``fp8`` | ``Float8WeightOnlyConfig`` | float8 e4m3 per channel | CUDA with compute capability >= 8.9 (Ada, Hopper) |

Only the transformer is quantized (the text encoders and the VAE run once per prompt and image).
Attention control is unaffected: editflow's hooks sit after the q/k/v projections, whatever
their weights are (tested with KV-Edit on an int8 model). LoRAs and quantization are not combined
yet (one clear error). Measured on the shapes model: see the README's *Memory and hardware*.
"""

from __future__ import annotations

import torch

from ..errors import ModelNotAvailableError, ParameterError

QUANTIZATIONS = ("int8", "fp8")


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


def quantize_transformer(pipe, kind: str | None) -> None:
    """Quantize ``pipe.transformer``'s linear layers in place (``kind`` checked by :func:`check_quantize`)."""
    if kind is None:
        return
    from torchao.quantization import Float8WeightOnlyConfig, Int8WeightOnlyConfig, quantize_

    config = {"int8": Int8WeightOnlyConfig, "fp8": Float8WeightOnlyConfig}[kind]()
    quantize_(pipe.transformer, config)
