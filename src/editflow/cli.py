"""The ``editflow`` command line.

    editflow edit IMAGE -s SRC -t TAR [--method flowedit] [--model NAME_OR_PATH] [--steps N] [--mask MASK]
                  [--seed S] [--set key=value ...] -o OUT.png [--compare BEFORE_AFTER.png]
    editflow methods
    editflow solvers
    editflow vital-layers --prompts FILE --out layers.json [--model NAME] [--seeds 0,1]
    editflow models
    editflow plan --model flux-dev --method kv_edit --size 1024 [--gpu-memory 24GB] [--quantize nf4] [--table]
    editflow batch MANIFEST.yaml|.jsonl -o DIR [--model NAME] [--method flowedit] [--seed S]
    editflow bench run --data PATH --methods a,b --out DIR [--set m.key=v] [--metrics clip_t,...] [--baselines none]
    editflow bench run --data PIE-Bench/data --protocol pie-bench --methods all --model flux-dev --out DIR [--subset no-style]
    editflow bench report DIR [--compare-published]
    editflow world sample --n N --seed S -o DIR [--size 64] [--world-version 2] [--split any] [--paraphrase]
    editflow world edits  --n N --seed S -o DIR [--kinds color,shape,...] [--world-version 2] [--split held_out] [...]

Every user mistake ends the command with one line on stderr (``error: ...``), exit status 2,
and no output file.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
from pathlib import Path
from typing import List, Optional

import typer

from .errors import EditflowError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Training-free text-driven image editing with flow models.")


def _quiet_libraries() -> None:
    """Keep third-party chatter (download notices, torchvision hints) off the terminal."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    logging.getLogger("transformers").setLevel(logging.ERROR)
    logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)  # torchao's import-time deprecation notice
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


def _lora_option():
    return typer.Option(None, "--lora", help="LoRA .safetensors, PATH or PATH:SCALE (repeatable), as for `edit`.")


def _quantize_option():
    return typer.Option(None, "--quantize", help="int8, fp8 or nf4 transformer, as for `edit`.")


def _transformer_option():
    return typer.Option(None, "--transformer", help="A .safetensors or .gguf transformer replacing --model's, as for `edit`.")


def _load_options(lora, quantize, transformer) -> dict:
    """``load_model``'s options as the commands that take --lora, --quantize and --transformer pass them (unset ones left out)."""
    return {k: v for k, v in dict(lora=lora or None, quantize=quantize, transformer=transformer).items() if v is not None}


def _parse_sets(pairs: list[str], params_cls) -> dict:
    from .methods.base import coerce_value

    values = {}
    for pair in pairs:
        if "=" not in pair:
            raise EditflowError(f"--set expects key=value, got {pair!r}")
        key, text = pair.split("=", 1)
        values[key.strip()] = coerce_value(params_cls, key.strip(), text.strip())
    return values


@app.command("edit")
def edit_cmd(
    image: Path = typer.Argument(..., help="Input image (PNG, JPEG, WebP, ...)."),
    source: str = typer.Option(..., "--source", "-s", help="Prompt describing the input image."),
    target: str = typer.Option(..., "--target", "-t", help="Prompt describing the wanted result."),
    output: Path = typer.Option(..., "--output", "-o", help="Where to write the edited image (.png, .jpg, .webp)."),
    method: str = typer.Option("flowedit", "--method", "-m", help="Editing method (see `editflow methods`)."),
    model: Optional[str] = typer.Option(None, "--model", help="Zoo name, local pipeline folder or hub id."),
    family: Optional[str] = typer.Option(None, "--family",
                                         help="flux, sd3 or unet, for a folder whose pipeline class does not say "
                                              "it (a rectified-flow StableDiffusionPipeline: unet)."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Schedule length (default: the method's)."),
    seed: int = typer.Option(0, "--seed", help="Random seed."),
    sets: Optional[List[str]] = typer.Option(None, "--set", help="Method parameter, key=value (repeatable)."),
    compare: Optional[Path] = typer.Option(None, "--compare", help="Also write a before | after image here."),
    mask: Optional[Path] = typer.Option(None, "--mask", help="Mask image, white = region to edit (kv_edit); 'auto' = from the model."),
    subject: Optional[List[str]] = typer.Option(
        None, "--subject", help="Extra reference for personalize_anything: IMAGE,MASK[,tau=T][,dx=N][,dy=N][,prompt=TEXT] "
        "(repeatable)."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda, cuda:1 ... (default: cuda if present)."),
    dtype: Optional[str] = typer.Option(None, "--dtype", help="float32, bfloat16 or float16."),
    compile_model: bool = typer.Option(False, "--compile", help="torch.compile the transformer (pays off on long runs)."),
    cpu_offload: bool = typer.Option(False, "--cpu-offload",
                                     help="Keep the model in CPU memory, moving each part to the GPU when used."),
    attention: Optional[str] = typer.Option(None, "--attention", help="Attention backend: flash, efficient, math or cudnn."),
    lora: Optional[List[str]] = typer.Option(None, "--lora", help="LoRA .safetensors to load, PATH or PATH:SCALE "
                                             "(repeatable; FLUX and SD3; applies to every call of the edit)."),
    quantize: Optional[str] = typer.Option(None, "--quantize", help="Quantize the transformer: int8 (torchao "
                                           "weight-only), fp8 (CUDA, Ada or newer) or nf4 (bitsandbytes, CUDA)."),
    transformer: Optional[Path] = typer.Option(None, "--transformer", help="A .safetensors (BFL/ComfyUI or diffusers "
                                               "layout) or .gguf transformer replacing --model's."),
    memory: str = typer.Option("auto", "--memory", help="Plan memory before loading (`editflow plan`) and place the "
                               "model to fit: auto (the GPU's free memory, or the host's on the CPU), a budget like "
                               "24GB, or off."),
    limit: Optional[List[str]] = typer.Option(None, "--limit", help="Raise a limit on purpose, NAME=VALUE "
                                              "(max_pixels, max_steps, max_nfe, ...; see the README)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar or notices."),
) -> None:
    """Edit IMAGE from the --source prompt towards the --target prompt."""
    _quiet_libraries()
    try:
        from .images import check_output_path, fit_size, load_image, save_image, side_by_side
        from .limits import Limits
        from .models.zoo import DEFAULT_MODEL, NOISE_MODELS, load_model

        # Everything that can be checked before loading a model is checked first.
        limits = Limits.from_env().updated(limit)
        check_output_path(output)
        if compare is not None:
            check_output_path(compare)
        pil = load_image(image, limits)
        name = model or DEFAULT_MODEL
        limits.check_working(*fit_size(*pil.size, 16), name)  # again at the model's own multiple in edit()
        if mask is not None and str(mask) != "auto":
            from .images import load_mask

            load_mask(mask, pil.size, limits)  # a missing or unreadable mask fails before the model loads
        from .methods import get_method

        m = get_method(method)
        overrides = _parse_sets(sets or [], m.params)
        subjects = [_parse_subject(text, limits) for text in subject or []]
        if steps is not None:
            overrides["steps"] = steps
        request = dict(method=method, source_prompt=source, target_prompt=target, params=overrides, seed=seed,
                       mask=None if mask is None else str(mask), subjects=subjects, limits=limits)

        from .api import check_request, edit

        # parameters, seed, prompts and limits before the model loads: on its family when the zoo or
        # the folder tells it, else (a hub id) on the first of the method's families that takes them
        families = [known] if (known := _family_early(m, model)) is not None else list(m.params.FAMILIES)
        errors = []
        for fam in families:
            try:
                check_request(fam, **request)
                break
            except EditflowError as exc:
                errors.append(exc)
        else:
            raise errors[0]
        backend = attention_backend(attention)  # a bad name fails before the model loads
        from .memory import check_memory
        from .models.zoo import check_load_options

        _, dev, _ = check_load_options(lora, quantize, transformer, device)  # what load_model checks first
        check_memory(memory)  # a bad --memory fails even where no plan is made
        placement = None
        if not cpu_offload:  # the memory plan, before any weight loads (--cpu-offload: the user placed it)
            placement = _memory_plan(name, method, fit_size(*pil.size, 16), overrides, dev, dtype, memory, quantize,
                                     mask, limits, len(subjects), quiet, transformer)
        adapter = load_model(name, dtype=dtype, device=device, family=family, cpu_offload=cpu_offload,
                             progress=not quiet, lora=lora, quantize=quantize, transformer=transformer,
                             placement=placement)
        if compile_model:
            adapter.denoiser.compile()
        if not quiet:
            if name in NOISE_MODELS:
                typer.echo(f"note: {name} has random weights: its output is noise (it exists to test the code)", err=True)
            work = fit_size(*pil.size, adapter.pixel_multiple)
            if work != pil.size:
                typer.echo(
                    f"note: resizing {pil.size[0]}x{pil.size[1]} to {work[0]}x{work[1]} "
                    f"(multiples of {adapter.pixel_multiple}); the output is resized back",
                    err=True,
                )
        logging.getLogger("editflow").setLevel(logging.ERROR)
        with backend:
            result = edit(adapter, pil, source, target, method=method, seed=seed, progress=not quiet,
                          mask=request["mask"], subjects=subjects, limits=limits, **overrides)  # "auto" passes
        if compare is not None:  # first, so that a failed write leaves no edited image without it
            save_image(side_by_side([pil, result.image]), compare)
        try:
            save_image(result.image, output)
        except EditflowError:
            if compare is not None:
                compare.unlink(missing_ok=True)
            raise
    except EditflowError as exc:
        _fail(str(exc))
    if not quiet:
        typer.echo(
            f"wrote {output} ({result.image.size[0]}x{result.image.size[1]}), {method} on {name}: "
            f"{result.nfe.calls} model calls ({result.nfe.rows} rows), {result.seconds:.2f} s"
            + (f"; before|after: {compare}" if compare else ""),
            err=True,
        )


def _memory_plan(name, method, size, overrides, dev, dtype, memory, quantize, mask, limits, n_subjects, quiet,
                 transformer=None):
    """``--memory``: the placement the plan picks (None: no plan), with the method's feature store
    moved to host memory (``overrides["offload"]``) where the plan says; one line when nothing fits."""
    from .images import load_mask
    from .memory import GIB, plan_for_edit
    from .models.zoo import checkpoint_dtype

    torch_dtype = checkpoint_dtype(dtype, dev)
    fraction = 0.0  # no mask yet (auto, or none): KV-Edit's store at its largest
    if mask is not None and str(mask) != "auto":
        fraction = float(load_mask(mask, size, limits).float().mean())
    result = plan_for_edit(name, method, size, overrides, dev, memory, torch_dtype.itemsize, quantize, fraction,
                           n_subjects, transformer, auto_mask=str(mask) == "auto")
    if result is None:
        return None
    chosen = result.chosen
    if chosen.store_offload:  # only methods with a feature store (and an offload parameter) have such rows
        overrides["offload"] = True
    if not quiet and dev.type == "cuda":  # on the CPU the plan only checks that the edit fits
        typer.echo(f"memory plan: {chosen.label}, peak {chosen.gpu_peak / GIB:.1f} GiB of "
                   f"{result.budget / GIB:.1f} GiB available", err=True)
    return chosen.name


def attention_backend(name: str | None):
    """A context that restricts scaled-dot-product attention to one backend (None: torch chooses)."""
    import contextlib

    if name is None:
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backends = {"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
                "math": SDPBackend.MATH, "cudnn": SDPBackend.CUDNN_ATTENTION}
    if name not in backends:
        raise EditflowError(f"unknown attention backend {name!r}: use one of {', '.join(backends)}")
    return sdpa_kernel(backends[name])


def _family_early(method, model: str | None) -> str | None:
    """The model's family when it is known without loading (the zoo, or a folder's
    model_index.json), after failing when the method does not run on it; None for hub ids."""
    from .methods.base import check_family
    from .models.zoo import DEFAULT_MODEL, ZOO, model_family

    name = model or DEFAULT_MODEL
    if not Path(name).expanduser().exists() and name not in ZOO:
        return None  # a hub id (or an unknown name, refused by load_model)
    family = model_family(name)  # a corrupt model_index.json fails here, in one line
    check_family(method.params, family)
    return family


def _parse_subject(text: str, limits=None):
    """``IMAGE,MASK[,tau=T][,dx=N][,dy=N][,prompt=TEXT]`` -> :class:`editflow.Subject` (files read now,
    so a bad path fails before the model loads; ``prompt`` takes the rest of the text)."""
    from .api import Subject
    from .images import load_image, load_mask

    head, _, prompt = text.partition(",prompt=")
    parts = [x.strip() for x in head.split(",")]
    if len(parts) < 2 or not parts[0] or not parts[1]:
        raise EditflowError(f"--subject {text!r}: write IMAGE,MASK[,tau=T][,dx=N][,dy=N][,prompt=TEXT]")
    image = load_image(Path(parts[0]), limits)
    load_mask(parts[1], image.size, limits)
    values = {"tau": None, "dx": 0, "dy": 0}
    for item in parts[2:]:
        key, _, value = item.partition("=")
        if key not in values or not value:
            raise EditflowError(f"--subject: unknown or empty field {item!r}: use tau=T, dx=N, dy=N or prompt=TEXT")
        try:
            values[key] = float(value) if key == "tau" else int(value)
        except ValueError:
            raise EditflowError(f"--subject: {key} expects a number, got {value!r}") from None
    return Subject(image, parts[1], prompt, (values["dx"], values["dy"]), values["tau"])


@app.command("demo")
def demo_cmd(
    output: Path = typer.Option(Path("demo.png"), "--output", "-o", help="Where to write the grid (.png)."),
    model: Optional[str] = typer.Option(None, "--model", help="Zoo name, local pipeline folder or hub id."),
    seed: int = typer.Option(0, "--seed", help="Scene and noise seed."),
    kind: str = typer.Option("color", "--kind", help="Edit kind: color, shape, size, background, add, remove, move."),
    methods: str = typer.Option("flowedit,ode_inversion", "--methods", help="Comma-separated methods."),
    device: Optional[str] = typer.Option(None, "--device"),
) -> None:
    """Edit a shapes-world scene with each method; write source | ground truth | methods, scored."""
    _quiet_libraries()
    try:
        from .demo import run_demo
        from .images import check_output_path, save_image
        from .limits import check_seed
        from .methods import get_method
        from .models.zoo import DEFAULT_MODEL, load_model
        from .world.edits import check_kind

        check_output_path(output)
        check_kind(kind)
        check_seed(seed, "--seed")
        names = [m.strip() for m in methods.split(",") if m.strip()]
        for name in names:
            get_method(name)
        adapter = load_model(model or DEFAULT_MODEL, device=device)
        grid, rows, example = run_demo(adapter, seed=seed, kind=kind, methods=names)
        save_image(grid, output)
    except EditflowError as exc:
        _fail(str(exc))
    typer.echo(f"{kind} edit: {example.source_prompt!r} -> {example.target_prompt!r}")
    for r in rows:
        typer.echo(f"{r['method']:<15} calls {r['nfe_calls']:>3}  psnr outside mask {r['psnr_outside_mask_vs_source']:6.2f} dB  "
                   f"inside vs truth {r['psnr_inside_mask_vs_target']:6.2f} dB  edit {'right' if r['edit_correct'] else 'wrong'}")
    typer.echo(f"wrote {output}")


@app.command("methods")
def methods_cmd(
    model: Optional[str] = typer.Option(None, "--model", help="Show what runs on this model (zoo name or pipeline folder)."),
) -> None:
    """List the editing methods: which model families each runs on, parameters, defaults, paper."""
    from .methods import METHODS
    from .models.zoo import FAMILY_ADAPTERS, model_family

    families = list(FAMILY_ADAPTERS)
    try:
        family = model_family(model) if model else None
    except EditflowError as exc:
        _fail(str(exc))
    typer.echo("| method | " + " | ".join(families) + " |")
    typer.echo("| --- |" + " --- |" * len(families))
    for m in METHODS.values():
        typer.echo(f"| {m.name} | " + " | ".join("yes" if f in m.params.FAMILIES else "-" for f in families) + " |")
    typer.echo("")
    if family is not None:
        typer.echo(f"{model} is a {family} model; its defaults:\n")
    for m in METHODS.values():
        if family is not None and family not in m.params.FAMILIES:
            typer.echo(f"{m.name}: not on {family} models (runs on {', '.join(m.params.FAMILIES)})\n")
            continue
        typer.echo(f"{m.name}: {m.summary}")
        typer.echo(f"  paper: {m.paper}")
        if m.params.NEEDS_MASK:
            typer.echo("  needs a mask: --mask PATH (white = the region to edit)")
        shown = family or m.params.FAMILIES[0]
        defaults = m.params.for_family(shown)
        typer.echo(f"  defaults ({shown}):")
        for f in dataclasses.fields(defaults):
            typer.echo(f"    {f.name} = {getattr(defaults, f.name)!r}")
        typer.echo("")


@app.command("solvers")
def solvers_cmd() -> None:
    """List the ODE solvers (for `--set solver=NAME`), their order, NFE and paper."""
    from .solvers import NUDGE_PREFIX, SOLVERS

    for sv in SOLVERS.values():
        typer.echo(f"{sv.name:<18} order {sv.order}  NFE for 10 steps: {sv.nfe(10, False, True):>3} denoising, "
                   f"{sv.nfe(10, True, True):>3} inverting   {sv.paper}")
    typer.echo(f"{NUDGE_PREFIX + '<name>':<18} any of the above with Stable Flow's latent nudging (lambda = 1.15)")


@app.command("plan")
def plan_cmd(
    model: str = typer.Option("flux-dev", "--model", help="flux-dev, flux-krea-dev, flux-schnell, a built-in model or "
                              "a local FLUX pipeline folder (read as configs: no weights load)."),
    method: str = typer.Option("flowedit", "--method", "-m", help="Editing method (see `editflow methods`)."),
    size: str = typer.Option("1024", "--size", help="Working size: 1024 or WIDTHxHEIGHT."),
    gpu_memory: Optional[str] = typer.Option(None, "--gpu-memory", help="The card's memory, e.g. 24GB: pick the "
                                             "cheapest placement that fits."),
    quantize: Optional[str] = typer.Option(None, "--quantize", help="int8, fp8 or nf4 transformer weights."),
    transformer: Optional[Path] = typer.Option(None, "--transformer", help="A .gguf transformer file: its stored "
                                               "bytes replace the transformer's weights (a .safetensors one has the "
                                               "model's own size)."),
    host_memory: Optional[str] = typer.Option(None, "--host-memory", help="The host's free memory, e.g. 64GB: a "
                                              "placement must also fit what it keeps there."),
    dtype: str = typer.Option("bfloat16", "--dtype", help="Compute dtype: bfloat16, float16 or float32."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Schedule length (default: the method's)."),
    sets: Optional[List[str]] = typer.Option(None, "--set", help="Method parameter, key=value (repeatable)."),
    mask_fraction: float = typer.Option(0.25, "--mask-fraction", help="Share of the image a mask marks (KV-Edit "
                                        "caches the rest)."),
    table: bool = typer.Option(False, "--table", help="Every method at 512 and 1024 on 24 / 48 / 80 GB, without and "
                               "with int8 and nf4 (the README's table)."),
) -> None:
    """Print the memory an edit will need (weights, activations, feature store, text encoders) and
    where to place it, before loading anything."""
    _quiet_libraries()
    try:
        from . import memory as mem
        from .methods import get_method
        from .models.zoo import _parse_dtype

        torch_dtype = _parse_dtype(dtype, None)
        if transformer is not None:
            from .models.single_file import check_transformer_file

            check_transformer_file(transformer)
        parts = mem.parts_of_name(model, torch_dtype.itemsize, transformer)
        if table:
            typer.echo(mem.readme_table(parts))
            return
        m = get_method(method)
        overrides = _parse_sets(sets or [], m.params)
        if steps is not None:
            overrides["steps"] = steps
        width, _, height = size.lower().partition("x")
        try:
            w, h = int(width), int(height or width)
        except ValueError:
            raise EditflowError(f"--size expects 1024 or WIDTHxHEIGHT, got {size!r}") from None
        budget = None if gpu_memory is None else mem.parse_bytes(gpu_memory)
        host = None if host_memory is None else mem.parse_bytes(host_memory)
        typer.echo(mem.plan(parts, method, h, w, overrides, quantize, budget, mask_fraction, host_budget=host).table())
    except EditflowError as exc:
        _fail(str(exc))


@app.command("models")
def models_cmd() -> None:
    """List the known model names (zoo) and where each comes from."""
    from .models.zoo import describe_models

    for row in describe_models():
        typer.echo(f"{row['name']:<20} {row['family']:<6} {row['source']:<36} {row['description']}")
    typer.echo("\nAny local diffusers pipeline folder or hub id works too: --model PATH_OR_ID")


world_app = typer.Typer(
    add_completion=False, no_args_is_help=True, help="The procedural shapes world: scenes and edits with exact ground truth."
)
app.add_typer(world_app, name="world")


def _progress(quiet: bool, what: str):
    """A tqdm wrapper for item loops (stderr), or None when quiet."""
    if quiet:
        return None
    from tqdm.auto import tqdm

    return lambda items: tqdm(items, desc=what, unit="item", file=sys.stderr)


@world_app.command("sample")
def world_sample_cmd(
    n: int = typer.Option(..., "--n", help="Number of scenes."),
    seed: int = typer.Option(0, "--seed", help="Random seed (item i uses seed [S, i])."),
    output: Path = typer.Option(..., "--output", "-o", help="Folder to write (created if missing)."),
    size: int = typer.Option(64, "--size", help="Image side in pixels."),
    textures: bool = typer.Option(False, "--textures", help="Also striped and dotted backgrounds."),
    paraphrase: bool = typer.Option(False, "--paraphrase", help="Paraphrased captions instead of canonical ones."),
    world_version: int = typer.Option(2, "--world-version", help="1: captions fix the image (the shapes model's world); 2: uncaptioned detail."),
    split: str = typer.Option("any", "--split", help="held_out (never in training), train, or any."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Write N random scenes: DIR/images/00000.png ... and DIR/manifest.jsonl (file, caption, scene)."""
    from .world.io import write_samples

    try:
        path = write_samples(output, n, seed, size, textures, paraphrase, _progress(quiet, "scenes"), world_version,
                             None if split == "any" else split)
    except EditflowError as exc:
        _fail(str(exc))
    if not quiet:
        typer.echo(f"wrote {n} scenes and {path}", err=True)


@world_app.command("edits")
def world_edits_cmd(
    n: int = typer.Option(..., "--n", help="Number of edit examples."),
    seed: int = typer.Option(0, "--seed", help="Random seed (item i uses seed [S, i])."),
    output: Path = typer.Option(..., "--output", "-o", help="Folder to write (created if missing)."),
    kinds: Optional[str] = typer.Option(None, "--kinds", help="Comma-separated edit kinds, cycled (default: all)."),
    size: int = typer.Option(64, "--size", help="Image side in pixels."),
    textures: bool = typer.Option(False, "--textures", help="Also striped and dotted backgrounds."),
    paraphrase: bool = typer.Option(False, "--paraphrase", help="Paraphrased prompts (one style per pair)."),
    world_version: int = typer.Option(2, "--world-version", help="1: captions fix the image (the shapes model's world); 2: uncaptioned detail."),
    split: str = typer.Option("held_out", "--split", help="held_out (never in training), train, or any."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Write N edits: DIR/{source,target,mask}/00000.png ... and DIR/edits.jsonl."""
    from .world.io import parse_kinds, write_edits

    try:
        path = write_edits(output, n, seed, parse_kinds(kinds), size, textures, paraphrase, _progress(quiet, "edits"),
                           world_version, None if split == "any" else split)
    except EditflowError as exc:
        _fail(str(exc))
    if not quiet:
        typer.echo(f"wrote {n} edit examples and {path}", err=True)


@app.command("vital-layers")
def vital_layers_cmd(
    prompts: Path = typer.Option(..., "--prompts", help="Text file, one prompt per line."),
    out: Path = typer.Option(..., "--out", help="Where to write layers.json (and layers.png beside it)."),
    model: Optional[str] = typer.Option(None, "--model", help="Zoo name, local pipeline folder or hub id."),
    seeds: str = typer.Option("0,1", "--seeds", help="Comma-separated seeds per prompt."),
    steps: int = typer.Option(15, "--steps", help="Generation steps."),
    size: Optional[int] = typer.Option(None, "--size", help="Image side (default: the model's native size)."),
    threshold: Optional[float] = typer.Option(None, "--threshold", help="Vitality cut (default: 3x the median)."),
    similarity: str = typer.Option("ssim", "--similarity",
                                   help="Image similarity: ssim (weight-free) or dinov2 (the paper's; needs weights)."),
    similarity_model: Optional[str] = typer.Option(None, "--similarity-model",
                                                   help="DINOv2 checkpoint folder or hub id (default facebook/dinov2-base)."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda ..."),
    limit: Optional[List[str]] = typer.Option(None, "--limit", help="Raise a limit on purpose, NAME=VALUE."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Stable Flow's vital-layer search: bypass each block, score the change, keep the vital ones."""
    _quiet_libraries()
    from .limits import Limits, check_seed
    from .models.zoo import DEFAULT_MODEL, load_model, trained_image_size
    from .vital_layers import select, similarity_function, vitality, write

    try:
        try:
            lines = [ln.strip() for ln in prompts.read_text().splitlines() if ln.strip()]
        except OSError as exc:
            raise EditflowError(f"cannot read the prompts file {prompts}: {exc}") from None
        if not lines:
            raise EditflowError(f"{prompts} holds no prompt: write one per line")
        try:
            seed_list = [check_seed(int(s)) for s in seeds.split(",") if s.strip()]
        except ValueError:
            raise EditflowError(f"--seeds expects whole numbers separated by commas, got {seeds!r}") from None
        limits = Limits.from_env().updated(limit)
        for text in lines:
            limits.check_prompt(text, f"a prompt of {prompts}")
        name = model or DEFAULT_MODEL
        native = trained_image_size(name) or (64 if name == DEFAULT_MODEL else None)  # shapes and its exports
        side = size or native or 1024
        limits.check_working(side, side, name, fix="pass a smaller --size")
        limits.check_work(steps, steps, 1)  # each generation; there are (layers + 1) x prompts x seeds
        adapter = load_model(name, device=device, progress=not quiet)
        sim = similarity_function(similarity, similarity_model, device)
        scores = vitality(adapter, lines, seed_list, steps, size or native, similarity=sim,
                          progress=_progress(quiet, "layers"))
        vital = select(scores, threshold)
        write(out, scores, vital, {"model": name, "prompts": len(lines), "seeds": seed_list, "steps": steps,
                                   "similarity": similarity, "similarity_model": similarity_model,
                                   "threshold": threshold})
    except (EditflowError, ValueError) as exc:
        _fail(str(exc))
    typer.echo(f"vital layers: {', '.join(vital)}; wrote {out}", err=True)


@app.command("ui")
def ui_cmd(
    model: Optional[str] = typer.Option(None, "--model", help="Zoo name, local pipeline folder or hub id."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind (default: this machine only)."),
    port: int = typer.Option(7860, "--port", help="Port to serve on."),
    limit: Optional[List[str]] = typer.Option(None, "--limit", help="Raise a limit on purpose, NAME=VALUE."),
    lora: Optional[List[str]] = _lora_option(),
    quantize: Optional[str] = _quantize_option(),
    transformer: Optional[Path] = _transformer_option(),
) -> None:
    """Edit in the browser: a Gradio app (needs `pip install "editflow[ui]"`)."""
    _quiet_libraries()
    try:
        from .limits import Limits
        from .models.zoo import DEFAULT_MODEL, load_model
        from .ui.app import launch

        limits = Limits.from_env().updated(limit)
        options = _load_options(lora, quantize, transformer)
        adapter = None
        if options:  # load_model checks them before it loads anything
            adapter = load_model(model or DEFAULT_MODEL, **options)
        typer.echo(f"editflow UI on http://{host}:{port} (Ctrl+C stops it)", err=True)
        launch(model, host=host, port=port, block=True, limits=limits, model=adapter)
    except EditflowError as exc:
        _fail(str(exc))


@app.command("batch")
def batch_cmd(
    manifest: Path = typer.Argument(..., help="A YAML list or JSONL file of rows: image, source_prompt, "
                                    "target_prompts, optional mask, method, params, seed, id."),
    out: Path = typer.Option(..., "-o", "--out", help="Output folder (images/, results*.jsonl); a re-run resumes."),
    model: Optional[str] = typer.Option(None, "--model", help="Zoo name, local pipeline folder or hub id."),
    method: str = typer.Option("flowedit", "--method", help="The method of rows that name none."),
    seed: int = typer.Option(0, "--seed", help="The seed of rows that name none (every target of a row uses it)."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda ... (default: cuda if present; under "
                                         "torchrun / accelerate, each process its LOCAL_RANK's GPU)."),
    limit: Optional[List[str]] = typer.Option(None, "--limit", help="Raise a work limit on purpose, NAME=VALUE."),
    lora: Optional[List[str]] = _lora_option(),
    quantize: Optional[str] = _quantize_option(),
    transformer: Optional[Path] = _transformer_option(),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Edit every row of MANIFEST towards each of its target prompts; resumable, multi-process.

    The targets of one image share work: FlowEdit's source rows are evaluated once per step in one
    batched call for all targets, and an inversion that does not depend on the target is computed
    once per image. Under `torchrun` or `accelerate launch -m editflow batch ...` each process
    takes its share of the rows.
    """
    _quiet_libraries()
    from .batch import run_batch
    from .limits import Limits
    from .models.zoo import DEFAULT_MODEL

    try:
        limits = Limits.from_env().updated(limit)
        load_options = _load_options(lora, quantize, transformer)
        shard = run_batch(manifest, out, model or DEFAULT_MODEL, method, seed, device, not quiet, limits, load_options)
    except EditflowError as exc:
        _fail(str(exc))
    if not quiet:
        typer.echo(f"edits in {out}/images, records in {shard}", err=True)


bench_app = typer.Typer(add_completion=False, no_args_is_help=True,
                        help="Benchmarks: run methods over a dataset (resumable, multi-process), report.")
app.add_typer(bench_app, name="bench")


@bench_app.command("run")
def bench_run_cmd(
    data: Path = typer.Option(..., "--data", help="FlowEdit .yaml, PIE-Bench mapping_file.json, or a shapes edit set."),
    methods: str = typer.Option("flowedit", "--methods", help="Comma-separated methods (with --protocol: or all)."),
    protocol: Optional[str] = typer.Option(None, "--protocol", help="A pinned protocol (pie-bench) or protocol file: "
                                           "items, prompts, every method's parameters, metrics and units."),
    subset: Optional[str] = typer.Option(None, "--subset", help="With --protocol: its item subset (pie-bench: all = "
                                         "700 items, no-style = 620)."),
    out: Path = typer.Option(..., "--out", help="Output folder (results*.jsonl, images/); a re-run resumes."),
    model: Optional[str] = typer.Option(None, "--model", help="Zoo name, local pipeline folder or hub id."),
    sets: Optional[List[str]] = typer.Option(None, "--set", help="method.key=value (or key=value for all)."),
    metrics: str = typer.Option("", "--metrics", help="Model metrics besides pixels/oracle: clip_t,clip_i,dino,..."),
    metric_models: Optional[List[str]] = typer.Option(None, "--metric-model", help="name=PATH of a metric checkpoint."),
    seed: int = typer.Option(0, "--seed", help="Base seed (item i uses seed + i)."),
    limit: Optional[List[str]] = typer.Option(None, "--limit", help="N: only the first N items; NAME=VALUE: raise a "
                                              "work limit on purpose, as for `edit` (repeatable)."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda ... (default: cuda if present)."),
    baselines: Optional[str] = typer.Option(None, "--baselines", help="Baselines scored beside the methods: "
                                            "identity,regeneration,vae_ceiling (the default: all three) or none."),
    lora: Optional[List[str]] = _lora_option(),
    quantize: Optional[str] = _quantize_option(),
    transformer: Optional[Path] = _transformer_option(),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Edit every item of --data with every method; one JSONL record per edit with its metrics.

    The baselines (the source unchanged, regeneration from the target prompt, the ground truth
    through the VAE) are scored on the same items unless --baselines says otherwise.

    Under `accelerate launch -m editflow bench run ...` each process takes its share of the items.

    With --protocol pie-bench the run is PIE-Bench as the papers score it (see README,
    "Reproducing published numbers"); `bench report DIR --compare-published` sets it beside them.
    """
    _quiet_libraries()
    from .bench.baselines import parse_baselines
    from .bench.runner import run
    from .limits import Limits
    from .models.zoo import DEFAULT_MODEL

    try:
        chosen_baselines = parse_baselines(baselines)
        pairs = [v for v in limit or [] if "=" in v]
        counts = [v for v in limit or [] if "=" not in v]
        if len(counts) > 1:
            raise EditflowError(f"--limit N is given {len(counts)} times ({', '.join(counts)}): give one item count")
        try:
            items = int(counts[0]) if counts else None
        except ValueError:
            raise EditflowError(f"--limit expects a number of items N or NAME=VALUE, got {counts[0]!r}") from None
        limits = Limits.from_env().updated(pairs)
        paths = {}
        for pair in metric_models or []:
            if "=" not in pair:
                raise EditflowError(f"--metric-model expects name=PATH, got {pair!r}")
            name, path = pair.split("=", 1)
            paths[name.strip()] = path
        names = [m.strip() for m in methods.split(",") if m.strip()]
        if subset is not None and protocol is None:
            raise EditflowError("--subset picks a protocol's items: pass --protocol too (e.g. --protocol pie-bench)")
        if "all" in names and (protocol is None or names != ["all"]):
            raise EditflowError("--methods all means every method a protocol pins: use it alone, with --protocol")
        load_options = _load_options(lora, quantize, transformer)
        shard = run(str(data), names, model or DEFAULT_MODEL, str(out), sets or [],
                    [m.strip() for m in metrics.split(",") if m.strip()], paths, seed, items, device, not quiet, limits,
                    chosen_baselines, load_options, protocol, subset)
    except EditflowError as exc:
        _fail(str(exc))
    if not quiet:
        typer.echo(f"results in {shard}", err=True)


@bench_app.command("report")
def bench_report_cmd(
    run_dir: Path = typer.Argument(..., help="The --out folder of `editflow bench run`."),
    x: Optional[str] = typer.Option(None, "--x", help="Metric on the trade-off plot's x axis."),
    y: Optional[str] = typer.Option(None, "--y", help="Metric on its y axis."),
    grid: int = typer.Option(8, "--grid", help="Items in the image grid."),
    against: Optional[str] = typer.Option(None, "--against",
                                          help="A row (e.g. flowedit) every other row is compared with, item by item."),
    compare_published: bool = typer.Option(False, "--compare-published",
                                           help="For a --protocol run: write published.md, each method beside the "
                                           "numbers papers reported (who, second-hand or not, the difference)."),
) -> None:
    """Write DIR/report/: summary.md and .csv (mean ± 95% CI per method and category), plots, grid.png.

    A run made with --protocol gets its table in the papers' units first in summary.md."""
    from .bench.report import report

    try:
        path = report(str(run_dir), x, y, grid, against_row=against, compare_published=compare_published)
    except EditflowError as exc:
        _fail(str(exc))
    typer.echo(f"wrote {path} and the plots and grid beside it", err=True)


def _click_exceptions():
    """The click exception classes typer raises (vendored as ``typer._click`` in typer >= 0.20)."""
    try:
        from typer._click import exceptions
    except ImportError:  # older typer: click itself
        from click import exceptions
    return exceptions


def main() -> None:
    """Run the command line; a usage mistake (unknown option, a value of the wrong type) ends it
    with one ``error:`` line and exit status 2, like every other user mistake."""
    exceptions = _click_exceptions()
    try:
        code = app(standalone_mode=False)
    except getattr(exceptions, "NoArgsIsHelpError", ()) as exc:  # bare `editflow`: the help
        exc.show()
        sys.exit(exc.exit_code)
    except exceptions.ClickException as exc:
        hint = f" (see: {exc.ctx.command_path} --help)" if getattr(exc, "ctx", None) is not None else ""
        typer.echo(f"error: {' '.join(exc.format_message().split())}{hint}", err=True)
        sys.exit(exc.exit_code)
    except typer.Abort:
        typer.echo("error: aborted", err=True)
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    sys.exit(main())
