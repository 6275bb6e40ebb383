"""DiT4Edit adapted to flow DiTs: DPM-Solver++ inversion and mutual attention control (Feng, Ma,
Wang, Qi, Chen, Chen, Wang, "DiT4Edit: Diffusion Transformer for Image Editing", arXiv 2411.03286,
AAAI 2025).

    inversion:  X^src -> Z_1 with the source prompt, DPM-Solver++(2M)'s backward-Euler inversion
                (editflow.solvers.dpm_solver; Hong et al. 2024, as DiT4Edit's Sec. 3)
    editing:    rows [source, target] start both from Z_1 and are sampled together with
                DPM-Solver++(2M), the source row with the source prompt, the target row with the
                target prompt; in the last ``1 - layers_from`` of the attention layers the target's
                image keys/values are the source's, and for the first ``query_steps`` steps its
                image queries too (editflow.attention.mutual):
                    step < S:   Attn(Q_src, K_src, V_src)   (image tokens; the layout is the source's)
                    step >= S:  Attn(Q_tar, K_src, V_src)   (content from the source, MasaCtrl)
    output:     the target row

NFE: inversion ``(iters + 1) T`` calls (+1 when skipping), editing ``T`` calls of 2 rows. With
equal prompts the target row equals the source row, i.e. a DPM-Solver++ round trip.

DiT4Edit's code was never released and its step/layer thresholds are not stated in the text
available to us (shared/references); editflow's defaults are its own: 30 steps (the paper's
comparisons use 30), S = 5 (MasaCtrl's 4 of 50, scaled up for fewer steps), mutual attention in
the second half of the layers (the paper's observation: deep-layer queries carry the layout),
guidance 1.5 / 5.5 (FlowEdit's FLUX values; on SD3 FlowEdit's CFG 3.5 / 13.5). Patch merging (``merge_ratio``, ToMe's bipartite
matching on keys, in every layer of the editing pass) is off by default: the ratio DiT4Edit used
is not stated, and merging trades quality for speed (benchmarks/token_merging.py).

Like MasaCtrl, this keeps the source's appearance (its image keys and values) and lets the
target prompt change layout and shape; on the shapes model it gets 40% of 40 colour edits right
(FlowEdit 92%), by design rather than by a fault. A sweep of the thresholds on 36 held-out shapes
edits of every kind (oracle: edit right): defaults 16/36; S = 0 or 10 also 16 (the source queries
move the latents a little, not the outcome); mutual attention only in the last quarter of the
layers 19/36; none at all (plain DPM-Solver++ inversion and regeneration) 28/36. The defaults stay:
the appearance lock is the method, and the paper's thresholds are unknown.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ..attention.merging import ControlChain, TokenMerging
from ..attention.mutual import MutualAttention
from ..errors import ParameterError
from ..models.base import NFE, Cond, FlowModel
from ..solvers import SOLVERS, get_solver, inversion_times
from .base import EditRequest, MethodParams, register
from .cache import inverted

PAPER = "Feng et al., DiT4Edit: Diffusion Transformer for Image Editing, arXiv 2411.03286 (AAAI 2025)"


@dataclass
class DiT4EditParams(MethodParams):
    """steps: schedule length T. query_steps: steps S with the source's queries (None: 5 of 30,
    scaled to T). merge_ratio: fraction of image tokens merged away before each editing attention
    (0 = off, at most 0.5; editflow.attention.merging). layers_from:
    first controlled layer as a fraction of all attention layers. source_guidance /
    target_guidance: guidance of the source (and inversion) and target rows."""

    FAMILIES: ClassVar[tuple[str, ...]] = ("flux", "sd3")  # attention hook points
    FAMILY_DEFAULTS: ClassVar[dict] = {"flux": dict(steps=30, source_guidance=1.5, target_guidance=5.5),
                                       "sd3": dict(steps=30, source_guidance=3.5, target_guidance=13.5)}

    steps: int = 30
    query_steps: int | None = None
    layers_from: float = 0.5
    merge_ratio: float = 0.0
    source_guidance: float = 1.5
    target_guidance: float = 5.5

    def resolve(self, family: str) -> None:
        if self.query_steps is None:
            self.query_steps = round(self.steps * 5 / 30)

    def validate(self) -> None:
        super().validate()
        if self.query_steps is not None and not 0 <= self.query_steps <= self.steps:
            raise ParameterError(f"parameter 'query_steps' must be in [0, steps], got {self.query_steps}")
        self.require_fraction("layers_from")
        if not 0.0 <= self.merge_ratio <= 0.5:
            raise ParameterError(f"parameter 'merge_ratio' must be in [0, 0.5], got {self.merge_ratio}")


def dit4edit_nfe(p: DiT4EditParams) -> NFE:
    inv = SOLVERS["dpmpp_2m"].nfe(p.steps, True, True)
    return NFE(calls=inv + p.steps, rows=inv + 2 * p.steps)


@register("dit4edit", DiT4EditParams, dit4edit_nfe, PAPER)
def dit4edit(model: FlowModel, req: EditRequest, p: DiT4EditParams, generator: torch.Generator) -> torch.Tensor:
    """DPM-Solver++ inversion, then source and target rows sampled together with mutual attention."""
    solve = get_solver("dpmpp_2m")
    ts = model.schedule(p.steps, req.grid)
    src, tar = model.encode_prompt(req.source_prompt), model.encode_prompt(req.target_prompt)
    z1 = inverted(model, req, "dit4edit",
                  lambda: solve(lambda z, t: model.velocity(z, t, src, req.grid, guidance=p.source_guidance),
                                req.x_src.float(), inversion_times(ts)),
                  steps=p.steps, guidance=p.source_guidance)
    names = model.attention_layers()
    layers = set(names[round(p.layers_from * len(names)):])
    t_switch = float(ts[p.query_steps]) if p.query_steps < p.steps else -1.0
    control = MutualAttention(layers, t_switch if p.query_steps else 2.0)
    if p.merge_ratio > 0:  # merge after the branches' K/V are shared, so both rows merge alike
        control = ControlChain(control, TokenMerging(p.merge_ratio))
        control.rows = {"source": [0], "target": [1]}
    pair = Cond.cat([src, tar])
    guidance = [p.source_guidance, p.target_guidance]
    out = solve(lambda z, t: model.velocity(z, t, pair, req.grid, guidance=guidance, control=control),
                torch.cat([z1, z1]), ts)
    return out[1:2]
