"""What a control sees at a hook point, and the base class every control extends."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..models.base import TokenGrid
from .store import time_key


@dataclass(frozen=True)
class AttentionContext:
    """One hook call: where in the edit and where in the network.

    phase: ``"invert"`` or ``"edit"`` (set by the method). step: the method's step counter
    (``None`` if it does not count). t: the model time of this call. layer: ``"double.{i}"`` or
    ``"single.{j}"``. n_text: text tokens, which come first in the joint sequence; the image
    tokens follow, laid out on ``grid``. rows: named batch rows (e.g. ``{"source": [0],
    "target": [1]}``) as the method declared them. unconditional: this is the negative-prompt half
    of a classifier-free-guidance call (SD3, UNets), which controls acting on prompts skip.
    """

    phase: str
    step: int | None
    t: float
    layer: str
    n_text: int
    grid: TokenGrid
    rows: dict[str, list[int]] = field(default_factory=dict)
    unconditional: bool = False

    @property
    def kind(self) -> str:
        return self.layer.split(".")[0]

    @property
    def index(self) -> int:
        return int(self.layer.split(".")[1])


class AttentionControl:
    """Base of every attention control: identity hooks, and the state the method sets.

    A control acts at the layers for which :meth:`wants` is true, after q, k, v are projected,
    normalised and rotated (shape ``[B, L, heads, head_dim]``, text tokens then image tokens) and
    before scaled-dot-product attention. Override :meth:`qkv` to read, store or replace them, or
    to change the key/value set or the mask (return a different ``L`` for keys and values); and
    :meth:`output` to change the attention output ``[B, L_q, heads, head_dim]``.
    """

    def __init__(self) -> None:
        self.phase = "edit"
        self.step: int | None = None
        self.rows: dict[str, list[int]] = {}
        self._device_copies: dict = {}

    def on_device(self, key, device, make):
        """``make()`` (a tensor the control builds on the host, e.g. token indices), made once per
        ``key`` and device and kept: layer calls then issue no host-to-device copy."""
        key = (key, str(device))
        if key not in self._device_copies:
            self._device_copies[key] = make().to(device)
        return self._device_copies[key]

    def wants(self, layer: str) -> bool:
        return True

    def qkv(self, ctx: AttentionContext, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
            mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        return q, k, v, mask

    def output(self, ctx: AttentionContext, out: torch.Tensor) -> torch.Tensor:
        return out


class StepIntervalControl(AttentionControl):
    """A control that pairs inversion and editing steps by the interval they cover.

    A step is known by its interval's noisier end (an inversion step ``a_j -> a_{j+1}`` by
    ``a_{j+1}``, an editing step ``t_i -> t_{i+1}`` by ``t_i``; the reference codes of RF-Edit and
    KV-Edit key their stores the same way), ``interval``, and by the time its first call is made,
    ``start``. The method feeds both through :meth:`step_callback` on its solver.
    """

    def __init__(self) -> None:
        super().__init__()
        self.interval: int | None = None
        self.start: int | None = None

    def begin_step(self, t: float, t_next: float) -> None:
        self.interval, self.start = time_key(max(t, t_next)), time_key(t)

    def step_callback(self, ts: torch.Tensor):
        """A solver callback for the schedule ``ts`` that calls :meth:`begin_step`."""
        return lambda i, t, z: self.begin_step(float(ts[i]), float(ts[i + 1]))
