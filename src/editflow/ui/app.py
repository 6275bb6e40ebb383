"""The Gradio app: upload (or a shapes example), paint a mask, prompts, method and its
parameters, edit with a progress bar; result beside the source, NFE and seconds, session history,
download; re-edits of the same image reuse the cached inversion where the method allows it.

    editflow ui [--model NAME] [--host 127.0.0.1] [--port 7860]

One edit runs at a time (Gradio's queue, concurrency 1). One set of :class:`editflow.Limits`
(default :meth:`Limits.from_env`) bounds every edit: a non-image upload and one over
``max_input_pixels`` (read from its header before Gradio decodes it) are refused with editflow's
one line, as are parameters, steps, model calls and rows, before any resizing or model call
(Gradio refuses uploads over ``MAX_UPLOAD_MB``). Larger images are edited at the model's working
size (``NATIVE_SIDE``: 64 px for the shapes model, 1024 for FLUX and SD3, 512 for UNets), which
the page states; the server binds to 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import io
import itertools
import os
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import EditflowError
from ..images import save_image
from ..limits import Limits
from ..methods.base import METHODS
from . import controls as ctl

EXAMPLE_SEEDS = itertools.count()


def _import_gradio():
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home from a local tool
    try:
        import gradio as gr
    except ImportError:
        raise EditflowError('the UI needs gradio: pip install "editflow[ui]"') from None
    return gr


def shapes_example(i: int, version: int | None = None) -> tuple[np.ndarray, str, str]:
    """A held-out shapes scene of the built-in model's world, its caption, and a colour edit's target prompt."""
    from ..models.zoo import trained_world_version
    from ..train.data import HELD_OUT_NAMESPACE, scene_rng
    from ..world import held_out_split, sample_edit

    version = version or trained_world_version("shapes")
    ex = sample_edit(scene_rng(HELD_OUT_NAMESPACE, 777, i), "color", version=version,
                     split=held_out_split(version))
    return ex.source_image, ex.source_prompt, ex.target_prompt


def display(image: Image.Image, side: int = 320) -> Image.Image:
    """A small image enlarged for the page (the shapes model's 64 px images), else as it is."""
    scale = side / max(image.size)
    if scale <= 1:
        return image
    return image.resize((round(image.width * scale), round(image.height * scale)), Image.LANCZOS)


def _source_editor(gr, limits: Limits):
    """A ``gr.ImageEditor`` class whose uploads are checked before Gradio decodes them (a class,
    not a patched instance: Gradio rebuilds a component from its class on ``gr.update``)."""
    from unittest import mock

    from gradio import component_meta
    from gradio.data_classes import FileData

    # Gradio's component metaclass writes a .pyi stub beside the module of every component class
    # (meant for custom-component packages); none belongs in editflow's source tree
    with mock.patch.object(component_meta, "create_or_modify_pyi", lambda *args: None, create=True):

        class SourceEditor(gr.ImageEditor):
            is_template = True  # Gradio's mark for a subclass drawn by its parent's frontend (as gr.Sketchpad)

            def convert_and_format_image(self, file, flatten_on_white=False):
                """Gradio's decoding of one file of the editor's value (background, layer or
                composite), after :func:`controls.check_upload`: a non-image or an image over
                ``max_input_pixels`` raises ``gr.Error`` with editflow's one line (shown on the page,
                no traceback logged) instead of Gradio's "Could not preprocess" listing every component."""
                if file is None:
                    return None
                try:
                    ctl.check_upload(file.path if isinstance(file, FileData) else io.BytesIO(file), limits)
                    try:
                        return super().convert_and_format_image(file, flatten_on_white)
                    except Exception:  # a header Pillow identifies over data it cannot decode (truncated)
                        raise EditflowError(ctl.NOT_AN_IMAGE) from None
                except EditflowError as exc:
                    raise gr.Error(str(exc), print_exception=False) from None

    return SourceEditor


def build_app(model_name: str | None = None, model=None, limits: Limits | None = None):
    """The Gradio Blocks app over ``model`` (an adapter) or the model named ``model_name``; every
    upload and edit is bounded by ``limits`` (default :meth:`Limits.from_env`)."""
    gr = _import_gradio()
    from ..api import check_request, edit
    from ..methods.cache import InversionCache
    from ..models.zoo import DEFAULT_MODEL, load_model

    limits = limits if limits is not None else Limits.from_env()
    if not isinstance(limits, Limits):
        raise EditflowError(f"limits must be an editflow.Limits, got {type(limits).__name__}")
    model = model if model is not None else load_model(model_name or DEFAULT_MODEL)
    family = model.family
    names = [n for n, m in METHODS.items() if family in m.params.FAMILIES]
    specs = {n: ctl.controls(n, family) for n in names}
    side = ctl.NATIVE_SIDE.get(model.name, ctl.NATIVE_SIDE.get(family, 1024))
    out_dir = Path(tempfile.mkdtemp(prefix="editflow-ui-"))
    counter = itertools.count(1)
    SourceEditor = _source_editor(gr, limits)

    with gr.Blocks(title="editflow") as app:
        gr.Markdown(f"# editflow\nText-driven image editing on **{model.name}** ({family}). Upload an image "
                    "or take a shapes example; paint the region where a method needs a mask.")
        cache = gr.State(None)
        history = gr.State([])
        with gr.Row():
            with gr.Column(scale=1):
                editor = SourceEditor(label="Source image (paint a mask on it where the method needs one)",
                                        type="numpy", image_mode="RGB", format="png", elem_id="source",
                                        brush=gr.Brush(colors=["#ffffff"], color_mode="fixed"), layers=False,
                                        sources=("upload", "clipboard"), height=360)
                example = gr.Button("Shapes example", elem_id="example")
                source = gr.Textbox(label="Source prompt (describes the image)", elem_id="source-prompt")
                target = gr.Textbox(label="Target prompt (describes the wanted result)", elem_id="target-prompt")
                with gr.Row():
                    method = gr.Dropdown(names, value="flowedit", label="Method", elem_id="method")
                    seed = gr.Number(0, precision=0, label="Seed", elem_id="seed")
                auto = gr.Checkbox(False, label="Automatic mask (where the prompts disagree; for methods that "
                                   "take a mask)", elem_id="auto-mask")
                run = gr.Button("Edit", variant="primary", elem_id="run")
                inputs, groups = [], {}
                with gr.Accordion("Method parameters (defaults: the paper's for this model family)", open=False,
                                  elem_id="parameters"):
                    for name in names:
                        with gr.Group(visible=name == "flowedit") as group:
                            gr.Markdown(f"**{name}** — {METHODS[name].paper}")
                            for c in specs[name]:
                                inputs.append(_control(gr, c, name))
                        groups[name] = group
            with gr.Column(scale=1):
                compare = gr.ImageSlider(label="Before | after (drag)", type="pil", elem_id="compare")
                info = gr.Markdown("The result appears here.", elem_id="info")
                with gr.Row():
                    result = gr.Image(label="Result (enlarged when small; the download is the true size)",
                                      type="pil", format="png", elem_id="result", interactive=False, height=200)
                    download = gr.File(label="Download the result", elem_id="download", height=200)
                gallery = gr.Gallery(label="This session's edits", elem_id="history", columns=6, rows=1, height=180,
                                     object_fit="contain", preview=False, fit_columns=False)

        def on_example():
            image, src, tar = shapes_example(next(EXAMPLE_SEEDS))
            return {"background": image, "layers": [], "composite": image}, src, tar

        def on_method(name):
            return [gr.update(visible=n == name) for n in names]

        def on_run(editor_value, src, tar, name, use_auto, seed_value, state_cache, state_history, *values,
                   progress=gr.Progress(track_tqdm=True)):
            try:  # every check (image, prompts, parameters, limits) before any resizing or model call
                image, mask = ctl.editor_parts(editor_value, limits)
                if not src.strip() or not tar.strip():
                    raise EditflowError("type both prompts: the source describes the image, the target the result")
                start = _offset(specs, names, name)
                params = ctl.overrides(name, family, list(values[start : start + len(specs[name])]))
                needs = METHODS[name].params.NEEDS_MASK
                if needs and mask is None and not use_auto:
                    raise EditflowError(f"{name} needs a mask: paint the region on the image, or tick the automatic mask")
                seed_value = 0 if seed_value is None else seed_value  # an int (precision 0), checked next
                check_request(family, name, src, tar, params, seed_value, limits=limits,
                              mask=("auto" if use_auto else mask) if needs else None)
                size = ctl.working_size(image.shape[1], image.shape[0], side)
                resized = size != (image.shape[1], image.shape[0])
                if resized:  # edit at the model's working size (the shapes model knows 64 px scenes)
                    original = image.shape[1::-1]
                    image = np.asarray(Image.fromarray(image).resize(size, Image.LANCZOS))
                    mask = None if mask is None else np.asarray(Image.fromarray(mask).resize(size, Image.NEAREST))
                use_mask = ("auto" if use_auto else mask) if needs else None
                state_cache = state_cache if state_cache is not None else InversionCache(size=4)
                r = edit(model, Image.fromarray(image), src, tar, method=name, seed=seed_value, mask=use_mask,
                         cache=state_cache, progress=True, limits=limits, **params)
            except EditflowError as exc:
                raise gr.Error(str(exc), print_exception=False) from None
            reused = r.stats.get("inversion_cached")
            note = {True: "; inversion reused from the cache (same image and source prompt): only the editing ran",
                    False: "; inversion computed and cached: a new target prompt for this image skips it",
                    None: ""}[reused]
            text = (f"**{name}** on {model.name}: {r.nfe.calls} model calls ({r.nfe.rows} rows), "
                    f"{r.seconds:.2f} s{note}")
            if resized:
                text += f"; resized from {original[0]}x{original[1]} to {size[0]}x{size[1]}, {model.name}'s working size"
            path = str(save_image(r.image, out_dir / f"edit-{next(counter):03d}.png"))  # the download: true size
            shown = display(r.image)
            state_history = state_history + [(shown, f"{name}: {tar} ({r.seconds:.1f} s)")]
            return ((display(Image.fromarray(image)), shown), shown, text, path, state_history, state_cache,
                    state_history)

        example.click(on_example, outputs=[editor, source, target])
        method.change(on_method, inputs=method, outputs=[groups[n] for n in names])
        run.click(on_run, inputs=[editor, source, target, method, auto, seed, cache, history, *inputs],
                  outputs=[compare, result, info, download, gallery, cache, history], concurrency_limit=1)
    app.queue(default_concurrency_limit=1)
    return app


def _offset(specs: dict, names: list[str], name: str) -> int:
    """Where ``name``'s controls start in the flat list of every method's controls."""
    return sum(len(specs[n]) for n in names[: names.index(name)])


def _control(gr, c: ctl.Control, method: str):
    label, key = f"{c.name}", f"{method}-{c.name}"
    if c.kind == "bool":
        return gr.Checkbox(bool(c.default), label=label, info=c.help, elem_id=key)
    if c.kind == "int":
        return gr.Number(c.default, precision=0, label=label, info=c.help, elem_id=key)
    if c.kind == "float":
        return gr.Number(c.default, label=label, info=c.help, elem_id=key)
    return gr.Textbox("" if c.default is None else str(c.default), label=label, info=c.help, elem_id=key)


def launch(model_name: str | None = None, host: str = "127.0.0.1", port: int = 7860, block: bool = True, model=None,
           limits: Limits | None = None):
    """Build and serve the app (:func:`build_app`, bounded by ``limits``); returns it (with
    ``block=False`` the server runs in a thread)."""
    app = build_app(model_name, model=model, limits=limits)
    app.launch(server_name=host, server_port=port, max_file_size=f"{ctl.MAX_UPLOAD_MB}mb", prevent_thread_lock=not block,
               show_error=True, quiet=True)
    return app
