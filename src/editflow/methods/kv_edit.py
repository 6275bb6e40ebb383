"""KV-Edit: training-free image editing with a background key/value cache (Zhu, Zhang, Shao, Tang,
"KV-Edit: Training-Free Image Editing for Precise Background Preservation", arXiv 2502.17363,
ICCV 2025).

Inputs: image, mask (foreground = the tokens to edit), source and target prompts. With the
schedule ``t_T = 1 > ... > t_0 = 0`` and ``s = skip``:

    inversion:  Euler with the source prompt on the full image from X^src up to t_{T-s}; in every
                layer and step, cache K and V of the background tokens (editflow.attention.kv_cache)
    editing:    start Z^fg = Z_{t_{T-s}}[fg]  (re_init: (1 - t) X^src[fg] + t eps, for removal);
                Euler with the target prompt on the foreground tokens only, each layer attending
                to [text; fg; cached bg of the same step interval]:
                Z^fg_{t_{i-1}} = Z^fg_{t_i} + (t_{i-1} - t_i) v^tar(Z^fg_{t_i}, t_i | bg K/V at t_i)
    output:     X^src with the foreground tokens replaced by Z^fg_0 (background tokens are the
                source's exactly)

``attn_mask`` masks the inversion's attention (text rows see all, foreground rows text +
foreground, background rows text + background), so the cached background never saw the
foreground. ``inversion_free`` is the reference's O(1)-memory variant: per step a FlowEdit-style
pair, ``Z^src = (1 - t) X^src + t n`` (n fixed) through the full model with the source prompt
(caching that step's background K/V only) and ``Z^tar = Z^src[fg] - X^src[fg] + Z^fg`` through
the foreground-only model with the target prompt; ``Z^fg += (t_{i-1} - t_i)(v^tar - v^src[fg])``.

NFE: ``2 (T - s)`` calls (inversion on all tokens, editing on text + foreground tokens only), in
both variants. The cache's peak size is ``stats["feature_store_peak_bytes"]`` (FLUX.1-dev at
1024^2 with a 25% foreground: 57 layers x {K, V} x 24 heads x 3072 bg tokens x 128 x 2 B = 2 GiB
per step, ~50 GiB for 24 steps; ``offload=True`` keeps it in CPU memory; ``replay=True`` keeps
only the inversion's latents and re-runs each step's inversion call just before its editing
call, which gives the same K/V bit for bit with one step in memory, at ``3 (T - s)`` calls;
``inversion_free`` keeps one step).

Defaults for FLUX.1-dev (the reference's Gradio demo): 28 steps, skip 4, inversion guidance 1.5,
editing guidance 5.5, re_init and attn_mask off. Masks map to tokens with the "any pixel" rule
(the reference marks a token foreground if any of its latent entries is).

Deviations from the released code (Xilluill/KV-Edit @77129a23, ``flux/sampling.py`` ``denoise_kv``,
``models/kv_edit.py`` ``inverse`` / ``denoise``, ``gradio_kv_edit.py``):

* The editing start. The reference's inversion stores each step's latent *before* the step, under
  the step's noisier time, and the editing pass looks up the latent stored under the last time it
  saw. editflow starts editing at ``ts[skip]`` from the inverted latent at ``ts[skip]``. The
  released code starts from another time's latent: its ``forward`` (script) path from the latent
  at ``ts[skip+1]``, one step cleaner than its time; its Gradio demo, which inverts all ``T`` steps
  once (``skip_step=0``) and then edits from ``ts[skip]``, from the latent at ``ts[1]``: ``skip - 1``
  steps noisier than its time (3 with the defaults). Before commit 77129a2 the script was exact and
  the demo started from the fully inverted latent. ``start="reference"`` reproduces the script,
  ``start="gradio"`` the demo's first edit after inverting (the ``skip - 1`` extra inversion steps
  cache nothing; the released demo also makes a ``T``-th inversion call whose result nothing
  reads, which editflow skips). The background K/V pairing is the reference's in every mode: an
  editing step reads the K/V stored by the inversion step over the same interval.
* A single editflow edit inverts only the ``T - skip`` steps it uses (the demo inverts all ``T``,
  for re-use across edits); the reference re-blends partially covered latent entries inside
  boundary tokens, while editflow's masks are whole tokens; its ``attn_scale`` bias on background
  keys is not built.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ..attention import FeatureStore
from ..attention.kv_cache import BackgroundKV
from ..errors import ParameterError
from ..models.base import NFE, FlowModel
from ..solvers import euler, inversion_times
from .base import EditRequest, MethodParams, register, required_mask

STARTS = ("editflow", "reference", "gradio")
PAPER = ("Zhu et al., KV-Edit: Training-Free Image Editing for Precise Background Preservation, "
         "arXiv 2502.17363 (ICCV 2025)")


@dataclass
class KVEditParams(MethodParams):
    """steps: schedule length T. skip: steps skipped at the noise end. source_guidance /
    target_guidance: guidance of inversion / editing. re_init: start the foreground from fresh
    noise (object removal). attn_mask: keep foreground and background apart while inverting.
    inversion_free: the O(1)-memory variant. offload: keep the cache in CPU memory. replay: keep
    only the inversion's latents and recompute each step's background K/V when editing. start:
    editing's first latent, editflow (the inverted latent at its time), reference (the released
    script's, one step cleaner) or gradio (the released demo's, the latent at ts[1])."""

    FAMILIES: ClassVar[tuple[str, ...]] = ("flux",)  # token-subset calls with FLUX position ids
    FAMILY_DEFAULTS: ClassVar[dict] = {"flux": dict(steps=28, skip=4, source_guidance=1.5, target_guidance=5.5)}
    NEEDS_MASK: ClassVar[bool] = True

    steps: int = 28
    skip: int = 4
    source_guidance: float = 1.5
    target_guidance: float = 5.5
    re_init: bool = False
    attn_mask: bool = False
    inversion_free: bool = False
    offload: bool = False
    replay: bool = False
    start: str = "editflow"

    def validate(self) -> None:
        super().validate()
        self.require_step_index("skip")
        self.require_choice("start", STARTS)
        if self.inversion_free and self.start != "editflow":
            raise ParameterError("parameter 'start' picks an inverted latent, and inversion_free inverts nothing: "
                                 "drop one of them")


def kv_edit_nfe(p: KVEditParams) -> NFE:
    n = (3 if p.replay and not p.inversion_free else 2) * (p.steps - p.skip)
    if p.start == "gradio":
        n += max(p.skip - 1, 0)  # inverting on from ts[skip] up to ts[1]
    return NFE(calls=n, rows=n)


@register("kv_edit", KVEditParams, kv_edit_nfe, PAPER)
def kv_edit(model: FlowModel, req: EditRequest, p: KVEditParams, generator: torch.Generator) -> torch.Tensor:
    """Invert caching background K/V; re-generate only the masked tokens attending to that cache."""
    fg = required_mask(req, "kv_edit", "the region to edit")
    ts = model.schedule(p.steps, req.grid)[p.skip:]
    x = req.x_src.float()
    src, tar = model.encode_prompt(req.source_prompt), model.encode_prompt(req.target_prompt)
    fg_idx = fg.nonzero().flatten().to(x.device)
    with FeatureStore(offload=p.offload) as store:
        kv = BackgroundKV(store, fg.cpu(), inversion_mask=p.attn_mask)
        source = lambda z, t: model.velocity(z, t, src, req.grid, guidance=p.source_guidance, control=kv)  # noqa: E731
        target = lambda z, t: model.velocity(z, t, tar, req.grid, guidance=p.target_guidance, control=kv,  # noqa: E731
                                             tokens=fg_idx)
        if p.inversion_free:
            z_fg = _inversion_free(model, req, ts, x, fg_idx, kv, store, source, target, generator)
        else:
            up = inversion_times(ts)
            trajectory: list[torch.Tensor] = []
            kv.phase = "invert"
            if p.replay:  # keep the latents only; the K/V are recomputed step by step below
                kv.caching = False
                z_start = euler(source, x, up, callback=lambda i, t, z: trajectory.append(z))
                kv.caching = True
            else:
                step = kv.step_callback(up)

                def callback(i, t, z):
                    step(i, t, z)
                    if p.start != "editflow":  # the released starts pick an earlier latent of the path
                        trajectory.append(z)

                z_start = euler(source, x, up, callback=callback)
            z_start = _start(model, req, p, source, kv, z_start, trajectory)
            z_fg = z_start[:, fg_idx]
            if p.re_init:
                t0 = float(ts[0])
                z_fg = (1 - t0) * x[:, fg_idx] + t0 * model.noise(req.grid, generator)[:, fg_idx].to(x)
            kv.phase = "edit"
            step = kv.step_callback(ts)
            if p.replay:
                step = _replaying(kv, store, source, up, trajectory, step)
            z_fg = euler(target, z_fg, ts, callback=step)
        req.stats.update(feature_store_peak_bytes=store.peak_nbytes, foreground_tokens=int(fg_idx.numel()),
                         edit_query_tokens=max(kv.queries_seen, default=0))
    out = x.clone()
    out[:, fg_idx] = z_fg
    return out


def _start(model, req, p: KVEditParams, source, kv, z_end: torch.Tensor, trajectory: list[torch.Tensor]) -> torch.Tensor:
    """Editing's first latent: the inverted one at ``ts[skip]`` (editflow), the one before the last
    inversion step (the released script), or the one at ``ts[1]`` (the released demo: inverting on
    without caching when ``skip >= 2``; for ``skip = 0`` it is the one before the last step)."""
    if p.start == "editflow" or (p.start == "gradio" and p.skip == 1):
        return z_end
    if p.start == "reference" or p.skip == 0:
        return trajectory[-1]
    full = model.schedule(p.steps, req.grid)
    caching, kv.caching = kv.caching, False
    z = euler(source, z_end, inversion_times(full[1:p.skip + 1]))
    kv.caching = caching
    return z


def _replaying(kv, store, source, up, trajectory, step):
    """A step callback that first re-runs the inversion call of the step's interval (same latent,
    same time) to rebuild its background K/V, so only one step is ever held."""
    n = len(up) - 1

    def callback(i, t, z):
        j = n - 1 - i  # the inversion step over the same interval
        store.clear()
        kv.phase = "invert"
        kv.begin_step(float(up[j]), float(up[j + 1]))
        source(trajectory[j], float(up[j]))
        kv.phase = "edit"
        step(i, t, z)

    return callback


def _inversion_free(model, req, ts, x, fg_idx, kv, store, source, target, generator) -> torch.Tensor:
    noise = model.noise(req.grid, generator).to(x)
    z_fg = x[:, fg_idx].clone()
    for i in range(len(ts) - 1):
        t, t_next = float(ts[i]), float(ts[i + 1])
        kv.begin_step(t, t_next)
        z_src = (1 - t) * x + t * noise
        kv.phase = "invert"
        v_src = source(z_src, t)
        kv.phase = "edit"
        v_tar = target(z_src[:, fg_idx] + (z_fg - x[:, fg_idx]), t)
        z_fg = z_fg + (t_next - t) * (v_tar - v_src[:, fg_idx])
        store.clear()
    return z_fg
