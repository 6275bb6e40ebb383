"""The Python entry points: :func:`edit` and :func:`generate`."""

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
from .methods.base import check_work
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
    if isinstance(model, str):
        model = load_model(model)
    elif not isinstance(model, FlowModel):
        raise ParameterError(f"model must be an adapter from editflow.load_model or a model name, "
                             f"got {type(model).__name__}")
    if not isinstance(progress, bool):
        raise ParameterError(f"progress must be True or False, got {progress!r}")
    m, p, gen, limits = check_request(model.family, method, source_prompt, target_prompt, params, seed, generator, mask,
                                      mask_rule, subjects, cache, limits)
    x, size, work = prepare_image(model, image, limits)
    grid = model.grid(work[1], work[0])

    token_mask = None
    auto = isinstance(mask, str) and mask == "auto"
    if mask is not None and not auto:
        token_mask = grid.mask_to_tokens(load_mask(mask, work, limits), rule=mask_rule).to(model.device)
        if p.NEEDS_MASK and not token_mask.any():
            raise ParameterError(f"the mask selects nothing: paint the region {method} should edit white")
    subject_tokens = [_subject_tokens(model, s, grid, work, mask_rule, limits) for s in subjects or []]

    if model.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(model.device)
    before = model.counter.total.copy()
    start = time.perf_counter()
    expected = m.expected_nfe(p)
    with progress_bar(model, expected.calls, method, progress):
        x_src = model.encode_image(x)
        if auto:
            from .masks import auto_mask

            mask_gen = torch.Generator("cpu").manual_seed(gen.initial_seed() ^ 0x5EED)  # leaves gen's stream alone
            token_mask = auto_mask(model, x_src, grid, source_prompt, target_prompt, mask_gen).to(model.device)
        req = EditRequest(x_src=x_src, grid=grid, source_prompt=source_prompt, target_prompt=target_prompt,
                          mask=token_mask, subjects=[SubjectTokens(model.encode_image(pixels), *rest)
                                                     for pixels, *rest in subject_tokens],
                          cache=cache)
        latents = m.run(model, req, p, gen)
        out = to_pil(model.decode(latents, grid))
    if model.device.type == "cuda":
        torch.cuda.synchronize(model.device)
    seconds = time.perf_counter() - start
    if out.size != size:
        out = out.resize(size, Image.LANCZOS)
    info = dict(p.to_dict(), method=method, model=model.name, seed=seed, working_size=list(work))
    return EditResult(out, latents.cpu(), model.counter.total - before, seconds, _peak_memory(model.device), info,
                      dict(req.stats))


def _subject_tokens(model: FlowModel, subject: Subject, grid, work: tuple[int, int], mask_rule: str, limits: Limits):
    """A subject's pixels ``[1, 3, H, W]`` at the working size and its token mask, read and checked
    before any model call (the caller encodes the pixels), then prompt, shift and tau."""
    pil = as_image(subject.image, limits)
    if pil.size != work:
        pil = pil.resize(work, Image.LANCZOS)
    mask = grid.mask_to_tokens(load_mask(subject.mask, work, limits), rule=mask_rule).to(model.device)
    return to_tensor(pil), mask, subject.prompt, tuple(subject.shift), subject.tau
