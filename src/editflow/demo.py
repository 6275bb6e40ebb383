"""``editflow demo``: one shapes-world edit by every chosen method, side by side, scored exactly.

The grid reads: source | ground truth | one column per method, each captioned with the oracle's
numbers (PSNR outside the edit mask vs the source, PSNR inside it vs the ground truth, whether the
edited attribute reads right).
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from . import world
from .api import edit
from .models.base import FlowModel

CELL = 192  # pixels per image in the grid
LABEL = 44  # pixels of text under each image


def _tile(image: Image.Image, lines: list[str]) -> Image.Image:
    tile = Image.new("RGB", (CELL, CELL + LABEL), "white")
    tile.paste(image.resize((CELL, CELL), Image.NEAREST), (0, 0))
    draw = ImageDraw.Draw(tile)
    for k, line in enumerate(lines):
        draw.text((4, CELL + 2 + 13 * k), line, fill="black")
    return tile


def run_demo(model: FlowModel, seed: int = 0, kind: str = "color", methods=("flowedit", "ode_inversion"),
             size: int = 64):
    """Edit one sampled scene with each method; return the grid, one score row per method, the example.

    The scene comes from the world version the model was trained on (version 2 for other models).
    """
    from .models.zoo import trained_world_version

    version = trained_world_version(model.name)
    example = world.sample_edit(np.random.default_rng([7, seed]), kind, size=size, version=version,
                                split=world.held_out_split(version))
    source = Image.fromarray(example.source_image)
    tiles = [_tile(source, ["source", kind + " edit"]), _tile(Image.fromarray(example.target_image), ["ground truth"])]
    rows = []
    for method in methods:
        result = edit(model, source, example.source_prompt, example.target_prompt, method=method, seed=seed)
        scores = world.edit_scores(example, np.asarray(result.image))
        rows.append({"method": method, "nfe_calls": result.nfe.calls, **{k: v for k, v in scores.items()
                                                                         if isinstance(v, (int, float, bool))}})
        tiles.append(_tile(result.image, [
            f"{method} ({result.nfe.calls} calls)",
            f"out {scores['psnr_outside_mask_vs_source']:.1f} dB  in {scores['psnr_inside_mask_vs_target']:.1f} dB",
            f"edit {'right' if scores['edit_correct'] else 'wrong'}",
        ]))
    grid = Image.new("RGB", (len(tiles) * (CELL + 4) - 4, CELL + LABEL), "white")
    for i, tile in enumerate(tiles):
        grid.paste(tile, (i * (CELL + 4), 0))
    return grid, rows, example
