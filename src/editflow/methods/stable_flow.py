"""Stable Flow: editing by attention injection in the vital layers (Avrahami, Patashnik, Fried,
Nemchinov, Aberman, Lischinski, Cohen-Or, "Stable Flow: Vital Layers for Training-Free Image
Editing", arXiv 2411.14430, CVPR 2025).

    inversion:  Z_0 = lambda X^src (latent nudging, lambda = 1.15), inverse Euler to t = 1 with the
                source prompt, keeping every latent Z_{t_j} of the trajectory
    editing:    rows [source, target]; at step i the source row is the inverted latent at t_i (a
                replay of the inversion), the target row starts from Z_1; both go through the
                model in one call, and in the vital layers the target's image-token keys and
                values are replaced by the source row's (its queries and text tokens are its own)
                at every step; the target row takes an Euler step
    output:     Z^tar_0 / lambda

NFE: ``T`` calls (inversion) + ``T`` calls of 2 rows. Defaults for FLUX.1-dev (the reference code's
real-image path): 50 steps, guidance 1 for inversion and the source row, 3 for the target row,
vital layers = double blocks 0, 1, 17, 18 and single blocks 6, 9, 34, 35, 37 (the code's list;
the paper's also has block 2). Other models: the list stored with the model
(``vital_layers.json``, written by ``editflow vital-layers``; the shapes model ships one) or
``layers="double.0,single.3"``.

Deviations: the reference queries the inversion velocity at the destination time and lets the
source row lag the inversion by about two steps (an indexing quirk, see shared/references);
editflow uses plain inverse Euler and replays the exact inverted latent of each step. It also
divides the nudging out before decoding (the reference does not).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ..attention.mutual import MutualAttention
from ..errors import ParameterError
from ..models.base import NFE, Cond, FlowModel
from ..solvers import euler, inversion_times
from ..vital_layers import FLUX_DEV_VITAL
from .base import EditRequest, MethodParams, register
from .cache import inverted

PAPER = "Avrahami et al., Stable Flow: Vital Layers for Training-Free Image Editing, arXiv 2411.14430 (CVPR 2025)"


@dataclass
class StableFlowParams(MethodParams):
    """steps: schedule length T. nudge: latent nudging lambda. layers: comma-separated vital layers
    (None: the model's list, or FLUX.1-dev's for a FLUX.1-sized model). source_guidance /
    target_guidance: guidance of inversion and source row / target row."""

    FAMILIES: ClassVar[tuple[str, ...]] = ("flux", "sd3")  # attention hook points
    FAMILY_DEFAULTS: ClassVar[dict] = {"flux": dict(steps=50, source_guidance=1.0, target_guidance=3.0)}

    steps: int = 50
    nudge: float = 1.15
    layers: str | None = None
    source_guidance: float = 1.0
    target_guidance: float = 3.0

    def validate(self) -> None:
        super().validate()
        if self.nudge <= 0:
            raise ParameterError(f"parameter 'nudge' must be positive, got {self.nudge}")


def vital_layers(model: FlowModel, p: StableFlowParams) -> set[str]:
    names = model.attention_layers()
    if p.layers:
        chosen = [x.strip() for x in p.layers.split(",") if x.strip()]
    else:
        chosen = getattr(model, "vital_layers", None)
        if chosen is None and sum(n.startswith("double.") for n in names) == 19 and len(names) == 57:
            chosen = FLUX_DEV_VITAL
        if chosen is None:
            raise ParameterError(f"no vital layers known for {model.name}: run `editflow vital-layers` and pass "
                                 "--set layers=... (comma-separated), or store vital_layers.json with the model")
    unknown = sorted(set(chosen) - set(names))
    if unknown:
        raise ParameterError(f"unknown layers {unknown} for {model.name}: layers are {', '.join(names)}")
    return set(chosen)


def stable_flow_nfe(p: StableFlowParams) -> NFE:
    return NFE(calls=2 * p.steps, rows=3 * p.steps)


@register("stable_flow", StableFlowParams, stable_flow_nfe, PAPER)
def stable_flow(model: FlowModel, req: EditRequest, p: StableFlowParams, generator: torch.Generator) -> torch.Tensor:
    """Nudged inverse Euler, then the target sampled beside a replay of the source, sharing image
    K/V in the vital layers."""
    layers = vital_layers(model, p)
    ts = model.schedule(p.steps, req.grid)
    src, tar = model.encode_prompt(req.source_prompt), model.encode_prompt(req.target_prompt)

    def invert() -> list[torch.Tensor]:
        path: list[torch.Tensor] = []
        z1 = euler(lambda z, t: model.velocity(z, t, src, req.grid, guidance=p.source_guidance),
                   p.nudge * req.x_src.float(), inversion_times(ts), callback=lambda i, t, z: path.append(z))
        return path + [z1]  # path[j] is the latent at inversion time ts[T - j]

    trajectory = inverted(model, req, "stable_flow", invert, steps=p.steps, nudge=p.nudge, guidance=p.source_guidance)
    z1 = trajectory[-1]
    control = MutualAttention(layers, t_switch=2.0)  # t never exceeds 2: the queries stay the target's
    pair, guidance = Cond.cat([src, tar]), [p.source_guidance, p.target_guidance]
    z = z1
    for i in range(p.steps):
        t, t_next = float(ts[i]), float(ts[i + 1])
        v = model.velocity(torch.cat([trajectory[p.steps - i], z]), t, pair, req.grid, guidance=guidance, control=control)
        z = z + (t_next - t) * v[1:2]
    return z / p.nudge
