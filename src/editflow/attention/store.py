"""A per-edit store of attention features, keyed by (phase, step, layer, tensor name)."""

from __future__ import annotations

from typing import Hashable

import torch

Key = tuple[str, Hashable, str, str]


def time_key(t: float) -> int:
    """A hashable key for a model time, equal for the same time reached by different float paths
    (a midpoint computed going up or going down the schedule)."""
    return round(float(t) * 100_000)


class FeatureStore:
    """Tensors saved during one edit; ``offload=True`` keeps them in CPU memory (pinned on CUDA
    hosts), and they come back to the device they were taken from when read.

    Use it as a context manager (``with FeatureStore() as store:``) so that it is freed when the
    edit ends, also on error; RF-Edit and FireFlow instead keep theirs with the inversion it
    belongs to, freed when the last reference goes (the edit's end, or its eviction from an
    :class:`editflow.InversionCache`). ``nbytes`` is the memory held now, ``peak_nbytes`` the most held.
    """

    def __init__(self, offload: bool = False):
        self.offload = offload
        self._data: dict[Key, tuple[torch.Tensor, torch.device]] = {}
        self.nbytes = 0
        self.peak_nbytes = 0

    def put(self, phase: str, step: Hashable, layer: str, name: str, tensor: torch.Tensor) -> None:
        key = (phase, step, layer, name)
        if key in self._data:
            self.nbytes -= self._data[key][0].nbytes
        device = tensor.device
        saved = tensor.detach()
        if self.offload and device.type != "cpu":
            saved = saved.to("cpu", non_blocking=False).pin_memory() if torch.cuda.is_available() else saved.cpu()
        else:
            saved = saved.clone()
        self._data[key] = (saved, device)
        self.nbytes += saved.nbytes
        self.peak_nbytes = max(self.peak_nbytes, self.nbytes)

    def get(self, phase: str, step: Hashable, layer: str, name: str) -> torch.Tensor | None:
        item = self._data.get((phase, step, layer, name))
        if item is None:
            return None
        saved, device = item
        return saved.to(device, non_blocking=True) if saved.device != device else saved

    def __contains__(self, key: Key) -> bool:
        return key in self._data

    def __len__(self) -> int:
        return len(self._data)

    def clear(self) -> None:
        self._data.clear()
        self.nbytes = 0

    def __enter__(self) -> "FeatureStore":
        return self

    def __exit__(self, *exc) -> None:
        self.clear()
