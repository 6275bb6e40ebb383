"""FireFlow editing: RF-Edit's value sharing over the FireFlow solver, with few steps (Deng, He, Mei,
Wang, Tang, "FireFlow: Fast Inversion of Rectified Flow for Image Semantic Editing",
arXiv 2412.07517, ICML 2025).

The same two passes as :mod:`editflow.methods.rf_edit` (store V while inverting with the source
prompt, replace V while editing with the target prompt, at matching times and layers), but each
pass is FireFlow's midpoint step with the previous midpoint velocity reused:

    v_hat_0 = v(Z_0, t_0);  Z_mid = Z_i + (h/2) v_hat_i;  v_mid = v(Z_mid, t_i + h/2);
    Z_{i+1} = Z_i + h v_mid;  v_hat_{i+1} = v_mid

so NFE = 2 (T + 1) per edit (8 steps -> 18 calls). Steps are paired by interval and call as in
RF-Edit; since the inversion makes a "first" call only in its first step (at t = 0), an editing
step re-uses the inversion's midpoint V, and with ``inject = 1`` only the first editing step's
midpoint call is changed, as in the reference code.

Defaults for FLUX.1-dev (FireFlow's README, CLI and Gradio demo; also its PIE-Bench setting):
8 steps, inject = 1, all 38 single-stream blocks (``share_from = 0``), V replaced (``reuse_v``),
inversion guidance 1, editing guidance 2. The README's advice: 15 steps and guidance 3 if the
edit does not show, 15 steps and inject 2 if the structure is lost. The reference's other
strategies (replace/add of Q, K) are not built.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ..models.base import NFE, FlowModel
from .base import EditRequest, register
from .rf_edit import ValueSharingParams, invert_and_edit_sharing_values

PAPER = "Deng et al., FireFlow: Fast Inversion of Rectified Flow for Image Semantic Editing, arXiv 2412.07517 (ICML 2025)"


@dataclass
class FireFlowParams(ValueSharingParams):
    FAMILIES: ClassVar[tuple[str, ...]] = ("flux",)  # FLUX single-stream blocks; stores features
    FAMILY_DEFAULTS: ClassVar[dict] = {"flux": dict(steps=8, inject=1, share_from=0.0, source_guidance=1.0,
                                                    target_guidance=2.0)}

    steps: int = 8
    inject: int = 1
    share_from: float = 0.0


def fireflow_nfe(p: FireFlowParams) -> NFE:
    return NFE(calls=2 * (p.steps + 1), rows=2 * (p.steps + 1))


@register("fireflow", FireFlowParams, fireflow_nfe, PAPER)
def fireflow(model: FlowModel, req: EditRequest, p: FireFlowParams, generator: torch.Generator) -> torch.Tensor:
    """FireFlow inversion storing V of the single-stream blocks; few-step editing re-using it."""
    return invert_and_edit_sharing_values(model, req, p, "fireflow")
