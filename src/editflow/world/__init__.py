"""The shapes world: procedural scenes with exact ground truth for training and scoring edits.

A scene is a background and 1-9 objects (shape, colour, size, 3x3-grid position); it renders
deterministically (anti-aliased), captions itself, and edits change exactly one thing of it, with
an exact mask of the changed pixels. :mod:`.oracle` scores images against the ground truth with
pixel metrics and an analytic reader that needs no weights. See ``DESIGN.md`` section 7.

World version 2 (``version=2``) gives every scene detail its caption does not name (object
offsets, rotations, size jitter, background grain), which the ground truth of an edit keeps and
the oracle reads back (structure and grain scores), and splits scene graphs into train and
held-out by construction (:func:`split_of`).

>>> import numpy as np
>>> from editflow.world import sample_edit, edit_scores
>>> ex = sample_edit(np.random.default_rng(0), "color")
>>> edit_scores(ex, ex.target_image)["edit_correct"]
True
"""

from .captions import Style, caption, object_spans, parse_caption, sample_style
from .edits import EDIT_KINDS, Edit, EditExample, edit_mask, make_edit, make_example, sample_edit
from .oracle import (
    edit_scores,
    grain_corr,
    mse,
    psnr,
    read_background,
    read_object,
    read_scene_accuracy,
    ssim,
    structure_iou,
)
from .paste import PasteExample, sample_paste
from .render import background_mask, object_coverage, object_mask, render
from .scene import (
    BACKGROUNDS,
    COLORS,
    POSITIONS,
    SHAPES,
    SIZES,
    TEXTURES,
    Obj,
    Scene,
    WorldError,
    held_out_split,
    sample_object,
    sample_scene,
    split_of,
    training_split,
)

__all__ = [
    "BACKGROUNDS",
    "COLORS",
    "EDIT_KINDS",
    "POSITIONS",
    "SHAPES",
    "SIZES",
    "TEXTURES",
    "Edit",
    "EditExample",
    "Obj",
    "PasteExample",
    "Scene",
    "Style",
    "WorldError",
    "background_mask",
    "caption",
    "edit_mask",
    "edit_scores",
    "grain_corr",
    "held_out_split",
    "make_edit",
    "make_example",
    "mse",
    "object_coverage",
    "object_mask",
    "object_spans",
    "parse_caption",
    "psnr",
    "read_background",
    "read_object",
    "read_scene_accuracy",
    "render",
    "sample_edit",
    "sample_object",
    "sample_paste",
    "sample_scene",
    "sample_style",
    "ssim",
    "structure_iou",
    "training_split",
]
