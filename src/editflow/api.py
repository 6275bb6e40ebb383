"""The Python entry points: :func:`edit` and :func:`generate`."""

from __future__ import annotations

import logging
import resource
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image

from .errors import EditflowError
from .images import as_image, fit_size, load_mask, to_pil, to_tensor
from .methods import EditRequest, SubjectTokens, get_method
from .models.base import NFE, Cond, FlowModel
from .models.zoo import load_model
from .solvers import euler

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


def make_generator(seed: int | None, generator: torch.Generator | None) -> torch.Generator:
    """An explicit CPU generator (noise is drawn on the CPU, so results match across devices)."""
    if generator is not None:
        return generator
    if seed is None:
        raise EditflowError("pass a seed (an int) or a torch.Generator: editflow never draws hidden randomness")
    return torch.Generator("cpu").manual_seed(int(seed))


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


def prepare_image(model: FlowModel, image) -> tuple[torch.Tensor, tuple[int, int], tuple[int, int]]:
    """Load and resize an image to the nearest size the model accepts.

    Returns the ``[1, 3, H, W]`` tensor, the original ``(width, height)`` and the working size.
    """
    pil = as_image(image)
    size = pil.size
    work = fit_size(*size, model.pixel_multiple)
    if work != size:
        log.warning("resizing %dx%d to %dx%d (multiples of %d for %s); the output is resized back",
                    *size, *work, model.pixel_multiple, model.name)
        pil = pil.resize(work, Image.LANCZOS)
    return to_tensor(pil), size, work


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
    (``stats["inversion_cached"]`` says whether they did).

    ``model`` is an adapter from :func:`editflow.load_model` or a name for it; ``params`` override
    the method's defaults for the model's family (``editflow methods`` lists them). Images of any
    size are resized to the nearest accepted size and the result is resized back.

    >>> model = editflow.load_model("tiny-flux")
    >>> out = editflow.edit(model, "cat.png", "a cat", "a dog", method="flowedit", seed=0, n_avg=2)
    >>> out.image.save("dog.png"); out.nfe
    """
    if isinstance(model, str):
        model = load_model(model)
    m = get_method(method)
    p = m.params.for_family(model.family, **params)
    if p.NEEDS_MASK and mask is None:
        raise EditflowError(f"{method} needs a mask of the region to edit: pass mask=IMAGE (CLI: --mask PATH)")
    subjects = list(subjects or [])
    if subjects and not p.TAKES_SUBJECTS:
        raise EditflowError(f"{method} takes no extra subjects: drop subjects= or use personalize_anything")
    gen = make_generator(seed, generator)
    x, size, work = prepare_image(model, image)
    grid = model.grid(work[1], work[0])

    token_mask = None
    auto = isinstance(mask, str) and mask == "auto"
    if mask is not None and not auto:
        token_mask = grid.mask_to_tokens(load_mask(mask, work), rule=mask_rule).to(model.device)

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
                          mask=token_mask, subjects=[_subject_tokens(model, s, grid, work, mask_rule) for s in subjects],
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


def _subject_tokens(model: FlowModel, subject: Subject, grid, work: tuple[int, int], mask_rule: str) -> SubjectTokens:
    if not isinstance(subject, Subject):
        raise EditflowError(f"subjects must be editflow.Subject(image, mask, ...), got {type(subject).__name__}")
    pil = as_image(subject.image)
    if pil.size != work:
        pil = pil.resize(work, Image.LANCZOS)
    mask = grid.mask_to_tokens(load_mask(subject.mask, work), rule=mask_rule).to(model.device)
    return SubjectTokens(model.encode_image(to_tensor(pil)), mask, subject.prompt, tuple(subject.shift), subject.tau)


@torch.no_grad()
def generate(
    model: FlowModel,
    prompt: str,
    height: int,
    width: int,
    steps: int = 28,
    guidance: float | None = None,
    seed: int | None = 0,
    generator: torch.Generator | None = None,
    latents: torch.Tensor | None = None,
    output_type: str = "pil",
):
    """Text-to-image with the Euler sampler (FluxPipeline's own loop, in editflow's terms).

    ``latents`` gives the initial noise tokens; otherwise they are drawn from ``seed`` exactly as
    diffusers draws them. ``output_type="latent"`` returns the final tokens.
    """
    grid = model.grid(height, width)
    z = latents if latents is not None else model.noise(grid, make_generator(seed, generator))
    cond: Cond = model.encode_prompt(prompt)
    z = euler(lambda x, t: model.velocity(x, t, cond, grid, guidance=guidance), z.float(), model.schedule(steps, grid))
    if output_type == "latent":
        return z
    return to_pil(model.decode(z, grid))
