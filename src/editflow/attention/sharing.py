"""Value sharing between inversion and editing (RF-Edit, FireFlow): store V while inverting, put it
back while editing, in the same layer, step interval and call of the step."""

from __future__ import annotations

import math

import torch

from .context import AttentionContext, StepIntervalControl
from .store import FeatureStore, time_key


class ValueSharing(StepIntervalControl):
    """Keys follow RF-Solver-Edit's code: a step is known by its interval
    (:class:`StepIntervalControl`), so the editing step over an interval re-uses the V of the
    inversion step over the same interval; within a step, the call at the step's start (``"first"``) and any later call
    (``"mid"``, the midpoint) are told apart.

    In phase ``invert`` V of ``layers`` is stored for intervals whose noisier end is above
    ``t_min`` (``-inf``: all; ``+inf``: none); in phase ``edit`` V is replaced where a stored one
    exists. The method calls :meth:`begin_step` from its solver's step callback. ``replaced``
    counts the layer-calls whose V was replaced.
    """

    def __init__(self, store: FeatureStore, layers: set[str], t_min: float):
        super().__init__()
        self.store, self.layers = store, set(layers)
        self.key_min = time_key(t_min) if math.isfinite(t_min) else t_min
        self.replaced = 0

    def wants(self, layer: str) -> bool:
        return layer in self.layers

    def qkv(self, ctx: AttentionContext, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask):
        if self.interval is None or self.interval <= self.key_min:
            return q, k, v, mask
        call = "first" if time_key(ctx.t) == self.start else "mid"
        if ctx.phase == "invert":
            self.store.put("invert", (self.interval, call), ctx.layer, "v", v)
        elif ctx.phase == "edit":
            saved = self.store.get("invert", (self.interval, call), ctx.layer, "v")
            if saved is not None and saved.shape == v.shape:
                v = saved.to(v.dtype)
                self.replaced += 1
        return q, k, v, mask
