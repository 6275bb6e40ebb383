"""The Python entry points: :func:`edit`, :func:`edit_many` and :func:`generate`."""

from __future__ import annotations

import logging
import numbers
import resource
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image

from .errors import ParameterError
from .images import as_image, fit_size, load_mask, to_pil, to_tensor
from .limits import Limits
from .methods import EditRequest, SubjectTokens, get_method
from .methods.base import CFG_FAMILIES, check_work
from .methods.cache import InversionCache
from .models.base import NFE, FlowModel
from .models.zoo import load_model
from .sampling import generate, make_generator  # noqa: F401  (generate: part of the API)

log = logging.getLogger("editflow")


@dataclass
class EditResult:
    """What an edit returns.

    image: the edited image at the input's size. latents: edited latent tokens ``[1, N, C]``.
    nfe: transformer calls and batch rows evaluated. seconds: wall time of the method (encode,
    edit, decode). peak_memory_bytes: on CUDA the peak allocated by torch during the edit; on
    CPU the process's peak resident size so far (a high-water mark, not per edit).
    params: the method's resolved parameters plus method, model, seed and working size.
    stats: what the method measured besides (e.g. ``feature_store_peak_bytes`` for methods that
    keep attention features between inversion and editing).
    """

    image: Image.Image
    latents: torch.Tensor
    nfe: NFE
    seconds: float
    peak_memory_bytes: int
    params: dict[str, Any]
    stats: dict[str, Any] = field(default_factory=dict)


@dataclass
class Subject:
    """An extra reference for :func:`edit` (methods that take several, e.g. Personalize
    Anything's multi-subject mode): an ``image`` (path or PIL; resized to the main image's
    working size), the ``mask`` of its subject (as :func:`edit`'s ``mask``), the ``prompt`` that
    describes it, a ``shift`` ``(dx, dy)`` in latent tokens, and its own ``tau`` (``None``: the
    method's)."""

    image: Any
    mask: Any
    prompt: str = ""
    shift: tuple[int, int] = (0, 0)
    tau: float | None = None


@contextmanager
def progress_bar(model: FlowModel, total: int, desc: str, enabled: bool):
    """A tqdm bar advanced by each transformer call of ``model``."""
    if not enabled:
        yield
        return
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc=desc, unit="call", file=sys.stderr, leave=False)
    listener = lambda rows: bar.update(1)  # noqa: E731
    model.counter.listeners.append(listener)
    try:
        yield
    finally:
        model.counter.listeners.remove(listener)
        if bar.n < bar.total:  # fewer calls than the formula (a cached inversion): end the bar full
            bar.total = bar.n
            bar.refresh()
        bar.close()


def _peak_memory(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def prepare_image(model: FlowModel, image, limits: Limits | None = None
                  ) -> tuple[torch.Tensor, tuple[int, int], tuple[int, int]]:
    """Load and resize an image to the nearest size the model accepts, within ``limits``.

    Returns the ``[1, 3, H, W]`` tensor, the original ``(width, height)`` and the working size.
    """
    limits = limits or Limits.from_env()
    pil = as_image(image, limits)
    size = pil.size
    work = fit_size(*size, model.pixel_multiple)
    limits.check_working(*work, model.name)
    if work != size:
        log.warning("resizing %dx%d to %dx%d (multiples of %d for %s); the output is resized back",
                    *size, *work, model.pixel_multiple, model.name)
        pil = pil.resize(work, Image.LANCZOS)
    return to_tensor(pil), size, work


MASK_RULES = ("any", "most", "all")


def check_request(family: str, method: str, source_prompt: str, target_prompt: str, params: dict,
                  seed=0, generator=None, mask=None, mask_rule: str = "any", subjects=None, cache=None,
                  limits: Limits | None = None):
    """Every check of :func:`edit` that needs neither pixels nor the model, only its ``family``:
    the method and its parameters, seed or generator, prompts, mask rule, subjects, cache, and the work limits.

    Returns ``(method, params, generator, limits)``; raises a one-line :class:`EditflowError`.
    """
    if limits is None:
        limits = Limits.from_env()
    elif not isinstance(limits, Limits):
        raise ParameterError(f"limits must be an editflow.Limits, got {type(limits).__name__}")
    if not isinstance(method, str):
        raise ParameterError(f"method must be a name (str), got {type(method).__name__}")
    m = get_method(method)
    if subjects is not None and not isinstance(subjects, (list, tuple)):
        raise ParameterError(f"subjects must be a list of editflow.Subject, got {type(subjects).__name__}")
    if m.params.NEEDS_MASK and mask is None:
        raise ParameterError(f"{method} needs a mask of the region to edit: pass mask=IMAGE (CLI: --mask PATH)")
    if subjects and not m.params.TAKES_SUBJECTS:
        raise ParameterError(f"{method} takes no extra subjects: drop subjects= (CLI: --subject) or use "
                             "personalize_anything")
    p = m.params.for_family(family, **params)
    gen = make_generator(seed, generator)
    limits.check_prompt(source_prompt, "source_prompt")
    limits.check_prompt(target_prompt, "target_prompt")
    if not isinstance(mask_rule, str) or mask_rule not in MASK_RULES:
        raise ParameterError(f"mask_rule must be one of {', '.join(MASK_RULES)}, got {mask_rule!r}")
    if isinstance(mask, str) and mask != "auto" and not mask.strip():
        raise ParameterError("mask is an empty string: pass a file path, an image, an array or 'auto'")
    if cache is not None and not isinstance(cache, InversionCache):
        raise ParameterError(f"cache must be an editflow.InversionCache or None, got {type(cache).__name__}")
    for subject in subjects or []:
        if not isinstance(subject, Subject):
            raise ParameterError(f"subjects must be editflow.Subject(image, mask, ...), got {type(subject).__name__}")
        limits.check_prompt(subject.prompt, "a subject's prompt")
        shift = subject.shift
        if not (isinstance(shift, (tuple, list)) and len(shift) == 2
                and all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in shift)):
            raise ParameterError(f"a subject's shift must be (dx, dy) in whole tokens, got {shift!r}")
        if subject.tau is not None and not (isinstance(subject.tau, numbers.Real) and 0.0 <= subject.tau <= 1.0):
            raise ParameterError(f"a subject's tau must be a number in [0, 1] or None, got {subject.tau!r}")
    check_work(m, p, family, limits, extra_calls=1 if isinstance(mask, str) and mask == "auto" else 0,
               n_subjects=len(subjects or []))
    return m, p, gen, limits


def edit(
    model: FlowModel | str,
    image,
    source_prompt: str,
    target_prompt: str,
    method: str = "flowedit",
    seed: int | None = 0,
    generator: torch.Generator | None = None,
    progress: bool = False,
    mask=None,
    mask_rule: str = "any",
    subjects: list[Subject] | None = None,
    cache=None,
    limits: Limits | None = None,
    **params,
) -> EditResult:
    """Edit ``image`` from ``source_prompt`` towards ``target_prompt`` with ``method``.

    ``mask`` (an image file, PIL image of any mode or size, or a 2-D array; white = edit) is
    resized to the working size and mapped to latent tokens with ``mask_rule`` ("any": a token is
    in when any of its pixels is; "most", "all"); methods that take a mask (``kv_edit``) use it.
    ``mask="auto"`` derives it from the model (:func:`editflow.masks.auto_mask`, one extra call).
    ``subjects``: extra references (:class:`Subject`) for methods that take several
    (``personalize_anything``). ``cache``: an :class:`editflow.InversionCache`; methods whose
    inversion does not depend on the target prompt reuse it when the same image is edited again
    (``stats["inversion_cached"]`` says whether they did). ``limits``: an
    :class:`editflow.Limits` (default: :meth:`Limits.from_env`) bounding pixels, steps, rows and
    model calls.

    ``model`` is an adapter from :func:`editflow.load_model` or a name for it; ``params`` override
    the method's defaults for the model's family (``editflow methods`` lists them). Images of any
    size are resized to the nearest accepted size and the result is resized back. Images with
    transparency are composited on white; EXIF orientation is applied; 16-bit images are scaled.

    Every input is checked before any model computation; a bad one raises an
    :class:`editflow.EditflowError` subclass with a one-line message.

    >>> model = editflow.load_model("tiny-flux")
    >>> out = editflow.edit(model, "cat.png", "a cat", "a dog", method="flowedit", seed=0, n_avg=2)
    >>> out.image.save("dog.png"); out.nfe
    """
    model = _adapter(model, progress)
    m, p, gen, limits = check_request(model.family, method, source_prompt, target_prompt, params, seed, generator, mask,
                                      mask_rule, subjects, cache, limits)
    return _edit_pass(model, m, p, gen, limits, image, source_prompt, [target_prompt], mask, mask_rule, subjects,
                      cache, progress, seed)[0]


def edit_many(
    model: FlowModel | str,
    image,
    source_prompt: str,
    target_prompts: list[str],
    method: str = "flowedit",
    seed: int | None = 0,
    progress: bool = False,
    mask=None,
    mask_rule: str = "any",
    cache=None,
    limits: Limits | None = None,
    **params,
) -> list[EditResult]:
    """Edit one image towards each of ``target_prompts``: the same results as
    ``[edit(model, image, source_prompt, t, method, seed, ...) for t in target_prompts]``, with the
    work that does not depend on the target done once.

    * Methods with a multi-target pass (``flowedit``: :func:`editflow.methods.flowedit.flowedit_targets`)
      edit all targets in one pass: each model call evaluates the shared source rows once beside
      every target's rows. Targets are split into passes whose calls stay within
      ``limits.max_rows``; each pass re-seeds with ``seed``, so every target sees the same noise
      as its single edit. A result's ``nfe`` and ``seconds`` are its whole pass's, and
      ``stats["targets_in_pass"]`` says how many targets shared it.
    * Every other method runs one edit per target through one :class:`InversionCache` (``cache``,
      or a new one), so methods whose inversion does not depend on the target (ode_inversion,
      rf_inversion, rf_edit, fireflow, dit4edit, stable_flow, uniedit, dnaedit, ftedit) invert once.
      kv_edit, flowalign and personalize_anything redo all their work per target.

    Equal to the separate edits in exact arithmetic; bit for bit for the cached inversions, and for
    the batched passes wherever the backend computes a row the same way whatever the batch size
    (tiny-flux on the CPU does for 2 rows and more; GPU kernels may round differently).
    """
    model = _adapter(model, progress)
    if isinstance(target_prompts, str) or not isinstance(target_prompts, (list, tuple)) or not target_prompts:
        raise ParameterError("target_prompts must be a non-empty list of prompts (one edit per prompt)")
    targets = list(target_prompts)
    m, p, _, limits = check_request(model.family, method, source_prompt, targets[0], params, seed, None, mask, mask_rule,
                                    None, cache, limits)
    for k, text in enumerate(targets[1:], 1):
        limits.check_prompt(text, f"target_prompts[{k}]")
    if m.targets is None or len(targets) == 1 or (isinstance(mask, str) and mask == "auto"):  # auto: a mask per target
        cache = cache if cache is not None else InversionCache(size=1)
        return [edit(model, image, source_prompt, t, method, seed, None, progress, mask, mask_rule, None, cache, limits,
                     **params) for t in targets]
    cfg = 2 if model.family in CFG_FAMILIES else 1
    per_pass = max(k for k in range(1, len(targets) + 1) if k == 1 or m.target_rows(p, k) * cfg <= limits.max_rows)
    out = []
    for i in range(0, len(targets), per_pass):
        gen = make_generator(seed, None)  # every pass replays the single edit's noise stream
        out += _edit_pass(model, m, p, gen, limits, image, source_prompt, targets[i:i + per_pass], mask, mask_rule,
                          None, cache, progress, seed)
    return out


def _adapter(model, progress) -> FlowModel:
    if isinstance(model, str):
        model = load_model(model)
    elif not isinstance(model, FlowModel):
        raise ParameterError(f"model must be an adapter from editflow.load_model or a model name, "
                             f"got {type(model).__name__}")
    if not isinstance(progress, bool):
        raise ParameterError(f"progress must be True or False, got {progress!r}")
    return model


def _edit_pass(model: FlowModel, m, p, gen, limits: Limits, image, source_prompt: str, targets: list[str], mask,
               mask_rule: str, subjects, cache, progress: bool, seed) -> list[EditResult]:
    """One pass of method ``m`` over checked inputs: ``m.run`` for one target, ``m.targets`` for
    several (latents ``[K, N, C]``), each decoded; the results share the pass's NFE and time."""
    x, size, work = prepare_image(model, image, limits)
    grid = model.grid(work[1], work[0])

    token_mask = None
    auto = isinstance(mask, str) and mask == "auto"
    if mask is not None and not auto:
        token_mask = grid.mask_to_tokens(load_mask(mask, work, limits), rule=mask_rule).to(model.device)
        if p.NEEDS_MASK and not token_mask.any():
            raise ParameterError(f"the mask selects nothing: paint the region {m.name} should edit white")
    subject_tokens = [_subject_tokens(model, s, grid, work, mask_rule, limits) for s in subjects or []]

    if model.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(model.device)
    before = model.counter.total.copy()
    start = time.perf_counter()
    expected = m.expected_nfe(p)
    with progress_bar(model, expected.calls, m.name, progress):
        x_src = model.encode_image(x)
        if auto:
            from .masks import auto_mask

            mask_gen = torch.Generator("cpu").manual_seed(gen.initial_seed() ^ 0x5EED)  # leaves gen's stream alone
            token_mask = auto_mask(model, x_src, grid, source_prompt, targets[0], mask_gen).to(model.device)
        req = EditRequest(x_src=x_src, grid=grid, source_prompt=source_prompt, target_prompt=targets[0],
                          mask=token_mask, subjects=[SubjectTokens(model.encode_image(pixels), *rest)
                                                     for pixels, *rest in subject_tokens],
                          cache=cache)
        latents = m.run(model, req, p, gen) if len(targets) == 1 else m.targets(model, req, targets, p, gen)
        images = [to_pil(model.decode(latents[k:k + 1], grid)) for k in range(len(targets))]
    if model.device.type == "cuda":
        torch.cuda.synchronize(model.device)
    seconds = time.perf_counter() - start
    nfe, peak = model.counter.total - before, _peak_memory(model.device)
    stats = dict(req.stats, **({"targets_in_pass": len(targets)} if len(targets) > 1 else {}))
    results = []
    for k, out in enumerate(images):
        if out.size != size:
            out = out.resize(size, Image.LANCZOS)
        info = dict(p.to_dict(), method=m.name, model=model.name, seed=seed, working_size=list(work))
        results.append(EditResult(out, latents[k:k + 1].cpu(), nfe, seconds, peak, info, dict(stats)))
    return results


def _subject_tokens(model: FlowModel, subject: Subject, grid, work: tuple[int, int], mask_rule: str, limits: Limits):
    """A subject's pixels ``[1, 3, H, W]`` at the working size and its token mask, read and checked
    before any model call (the caller encodes the pixels), then prompt, shift and tau."""
    pil = as_image(subject.image, limits)
    if pil.size != work:
        pil = pil.resize(work, Image.LANCZOS)
    mask = grid.mask_to_tokens(load_mask(subject.mask, work, limits), rule=mask_rule).to(model.device)
    return to_tensor(pil), mask, subject.prompt, tuple(subject.shift), subject.tau
