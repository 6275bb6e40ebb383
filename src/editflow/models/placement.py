"""Where a pipeline's weights live: the placements of :mod:`editflow.memory`'s plan, applied with
diffusers' and accelerate's own offloading.

| placement | what moves | cost |
| --- | --- | --- |
| ``gpu`` | ``pipe.to(device)`` | none |
| ``text-encoders-offload`` | transformer and VAE on the device; each text encoder streamed layer by layer (``accelerate.cpu_offload``) | its weights cross PCIe once per new prompt |
| ``model-offload`` | ``pipe.enable_model_cpu_offload``: each component moves in whole when it runs | the transformer crosses once per edit |
| ``sequential-offload`` | ``pipe.enable_sequential_cpu_offload``: every layer moves when it runs | every layer crosses on every call |

On a CPU device there is one memory: every placement is ``pipe.to("cpu")``. Tested without a GPU
by running :func:`offload` with the CPU as the execution device: model offload edits bit for bit
as before; text-encoder offload encodes prompts bit for bit (a whole edit cannot run that way on
the CPU, where the pipeline, its transformer and VAE on the CPU and its text encoders on ``meta``,
reports ``meta`` as its device; on a GPU the transformer makes it the GPU); sequential offload
fails inside accelerate on the CPU and is untested.
"""

from __future__ import annotations

import torch

from ..errors import ParameterError

PLACEMENTS = ("gpu", "text-encoders-offload", "model-offload", "sequential-offload")
TEXT_ENCODERS = ("text_encoder", "text_encoder_2", "text_encoder_3")


def check_placement(placement: str | None) -> str:
    placement = placement or "gpu"
    if placement not in PLACEMENTS:
        raise ParameterError(f"unknown placement {placement!r}: use one of {', '.join(PLACEMENTS)}")
    return placement


def place(pipe, placement: str | None, device: torch.device) -> None:
    """Put ``pipe``'s components where ``placement`` says, computing on ``device``."""
    placement = check_placement(placement)
    if device.type == "cpu" or placement == "gpu":
        pipe.to(device)
    else:
        offload(pipe, placement, device)


def offload(pipe, placement: str, device: torch.device) -> None:
    """Weights in CPU memory, computation on ``device``, as ``placement`` (not ``gpu``) says."""
    if placement == "text-encoders-offload":
        from accelerate import cpu_offload

        for name, component in pipe.components.items():
            if not isinstance(component, torch.nn.Module):
                continue
            if name in TEXT_ENCODERS:
                cpu_offload(component.to("cpu"), execution_device=device)
            else:
                component.to(device)
    elif placement == "model-offload":
        pipe.enable_model_cpu_offload(device=device)
    else:
        pipe.enable_sequential_cpu_offload(device=device)
