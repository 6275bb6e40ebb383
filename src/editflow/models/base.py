"""The one protocol every model family implements, and the pieces all adapters share.

Conventions (shared/DESIGN.md section 2), used by every module of editflow:

* time ``t`` in [0, 1]; ``t = 0`` is data, ``t = 1`` is noise;
  ``z_t = (1 - t) x0 + t eps``;
* the model's velocity points towards noise: ``v = eps - x0``;
* an Euler step is ``z(t_next) = z(t) + (t_next - t) v(z(t), t)`` in either direction;
* latents inside methods are packed tokens ``[B, N, C]`` laid out on a :class:`TokenGrid`;
* schedules are decreasing tensors of ``steps + 1`` times ending in ``0``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Protocol, Sequence, runtime_checkable

import torch

from ..errors import EditflowError


@dataclass(frozen=True)
class TokenGrid:
    """Where image tokens sit: ``h x w`` tokens covering ``height x width`` pixels."""

    height: int
    width: int
    h: int
    w: int

    @property
    def num_tokens(self) -> int:
        return self.h * self.w

    def mask_to_tokens(self, mask: torch.Tensor, rule: str = "any", threshold: float = 0.5) -> torch.Tensor:
        """Convert a pixel mask ``[H, W]`` or ``[B, H, W]`` (bool or 0..1) to a token mask ``[B, N]``.

        A token covers a ``(height / h) x (width / w)`` pixel patch. ``rule`` decides when it is
        "in": ``"any"`` (some pixel is in), ``"most"`` (more than half), ``"all"``, or
        ``"fraction"`` (covered fraction >= ``threshold``).
        """
        m = mask.float()
        if m.dim() == 2:
            m = m[None]
        if m.shape[-2:] != (self.height, self.width):
            raise EditflowError(
                f"mask is {m.shape[-1]}x{m.shape[-2]} but the image is {self.width}x{self.height}: "
                "resize the mask to the image size"
            )
        frac = torch.nn.functional.adaptive_avg_pool2d(m[:, None], (self.h, self.w))[:, 0]
        eps = 1e-6
        cut = {"any": eps, "most": 0.5 + eps, "all": 1 - eps, "fraction": threshold}
        if rule not in cut:
            raise EditflowError(f"unknown mask rule {rule!r}: use one of {sorted(cut)}")
        return (frac >= cut[rule]).flatten(1)


@dataclass
class Cond:
    """Encoded text conditioning, ``rows`` prompts stacked on the batch axis.

    ``embeds`` is the per-token sequence (T5 for FLUX), ``pooled`` the pooled vector (CLIP;
    empty ``[rows, 0]`` where the family has none), ``ids`` the text position ids where the family
    has them (FLUX ``txt_ids``), ``negative`` the negative prompt's conditioning, row for row,
    for families with classifier-free guidance (SD3, UNets).
    """

    embeds: torch.Tensor
    pooled: torch.Tensor
    prompts: tuple[str, ...]
    ids: torch.Tensor | None = None
    negative: "Cond | None" = None

    @property
    def rows(self) -> int:
        return self.embeds.shape[0]

    @staticmethod
    def cat(conds: Sequence["Cond"]) -> "Cond":
        """Stack conditionings on the batch axis (one transformer call for several branches)."""
        negatives = [c.negative for c in conds]
        return Cond(
            embeds=torch.cat([c.embeds for c in conds]),
            pooled=torch.cat([c.pooled for c in conds]),
            prompts=tuple(p for c in conds for p in c.prompts),
            ids=conds[0].ids,
            negative=Cond.cat(negatives) if all(n is not None for n in negatives) else None,
        )

    def expand(self, rows: int) -> "Cond":
        """Repeat a single-row conditioning to ``rows`` rows."""
        if self.rows == rows:
            return self
        if self.rows != 1:
            raise ValueError(f"cannot expand a {self.rows}-row conditioning to {rows} rows")
        negative = self.negative.expand(rows) if self.negative is not None else None
        return Cond(self.embeds.expand(rows, -1, -1), self.pooled.expand(rows, -1), self.prompts * rows, self.ids,
                    negative)


@dataclass
class NFE:
    """Network function evaluations: ``calls`` transformer forwards, ``rows`` batch rows evaluated."""

    calls: int = 0
    rows: int = 0

    def __sub__(self, other: "NFE") -> "NFE":
        return NFE(self.calls - other.calls, self.rows - other.rows)

    def copy(self) -> "NFE":
        return NFE(self.calls, self.rows)


@dataclass
class CallCounter:
    """Counts transformer calls and lets callers listen to each one (progress bars)."""

    total: NFE = field(default_factory=NFE)
    listeners: list[Callable[[int], None]] = field(default_factory=list)

    def record(self, rows: int) -> None:
        self.total.calls += 1
        self.total.rows += rows
        for fn in list(self.listeners):
            fn(rows)


VelocityFn = Callable[[torch.Tensor, float], torch.Tensor]


@runtime_checkable
class FlowModel(Protocol):
    """What methods may ask of a model. Adapters implement it; methods never touch diffusers."""

    family: str
    name: str
    guidance_distilled: bool
    default_guidance: float
    pixel_multiple: int
    counter: CallCounter

    @property
    def device(self) -> torch.device: ...

    @property
    def dtype(self) -> torch.dtype: ...

    def grid(self, height: int, width: int) -> TokenGrid: ...

    def encode_prompt(self, prompt: str) -> Cond: ...

    def encode_image(self, image: torch.Tensor) -> torch.Tensor: ...

    def decode(self, latents: torch.Tensor, grid: TokenGrid) -> torch.Tensor: ...

    def schedule(self, steps: int, grid: TokenGrid) -> torch.Tensor: ...

    def noise(self, grid: TokenGrid, generator: torch.Generator, batch: int = 1) -> torch.Tensor: ...

    def attention_layers(self) -> list[str]: ...

    def velocity(
        self,
        z: torch.Tensor,
        t: float | torch.Tensor,
        cond: Cond,
        grid: TokenGrid,
        guidance: float | Sequence[float] | torch.Tensor | None = None,
        control: object | None = None,
        tokens: torch.Tensor | None = None,
    ) -> torch.Tensor: ...


# --- schedules ------------------------------------------------------------------------------


def time_shift_exponential(mu: float, t: torch.Tensor) -> torch.Tensor:
    """FLUX's resolution-dependent shift ``t' = e^mu / (e^mu + 1/t - 1)`` (keeps t = 0 at 0)."""
    out = math.exp(mu) / (math.exp(mu) + (1.0 / t - 1.0))
    return torch.where(t > 0, out, torch.zeros_like(t))


def time_shift_static(shift: float, t: torch.Tensor) -> torch.Tensor:
    """SD3's static shift ``t' = s t / (1 + (s - 1) t)``."""
    return shift * t / (1.0 + (shift - 1.0) * t)


def resolution_mu(
    num_tokens: int, base_seq_len: int = 256, max_seq_len: int = 4096, base_shift: float = 0.5, max_shift: float = 1.15
) -> float:
    """The shift exponent ``mu``, linear in the image token count (0.5 at 256 tokens, 1.15 at 4096)."""
    slope = (max_shift - base_shift) / (max_seq_len - base_seq_len)
    return base_shift + slope * (num_tokens - base_seq_len)


def check_steps(steps: int) -> int:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise EditflowError(f"steps must be a positive integer, got {steps!r}")
    return steps
