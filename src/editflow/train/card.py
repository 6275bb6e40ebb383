"""MODEL.md for an exported shapes model: configuration, training record, measured quality."""

from __future__ import annotations

import json
import math
import platform
from pathlib import Path

import torch


def _last_log(run_dir: Path, stage: str) -> dict:
    path = run_dir / f"{stage}.log.jsonl"
    if not path.is_file():
        return {}
    lines = path.read_text().splitlines()
    return json.loads(lines[-1]) if lines else {}


def _stage_seconds(run_dir: Path, stage: str) -> float:
    """Wall time of a stage summed over its resumed segments (each log segment restarts its clock)."""
    path = run_dir / f"{stage}.log.jsonl"
    if not path.is_file():
        return 0.0
    total, last = 0.0, 0.0
    for line in path.read_text().splitlines():
        sec = json.loads(line)["seconds"]
        if sec < last:  # a new segment began
            total += last
        last = sec
    return total + last


def _params(folder: Path) -> int:
    from safetensors import safe_open

    n = 0
    for f in folder.glob("*.safetensors"):
        with safe_open(f, "pt") as fh:
            n += sum(math.prod(fh.get_slice(k).get_shape()) for k in fh.keys())
    return n


def _text_line(run_dir: Path, cfg: dict) -> str:
    t = cfg["text"]
    path = run_dir / "text_pretrain.json"
    if not t.get("pretrain_steps") or not path.is_file():
        return f"- Text encoders: random weights from the seed, frozen (CLIP {t['clip_layers']} layer, T5 {t['t5_layers']} layers, width {t['dim']})."
    acc = json.loads(path.read_text())["held_out_token_accuracy"]
    scores = ", ".join(f"{k} {v:.1%}" for k, v in acc.items())
    return (f"- Text encoders: CLIP random from the seed ({t['clip_layers']} layer); T5 ({t['t5_layers']} layers, width {t['dim']}) "
            f"pretrained by caption parsing for {t['pretrain_steps']} steps (`editflow.train.text`; held-out token accuracy: "
            f"{scores}), then both frozen.")


# (what, key in a text_to_image entry of benchmarks/shapes_quality.py's JSON, target)
_T2I = [("object colour", "color", ">= 90%"), ("object shape", "shape", ">= 80%"), ("object position", "position", ">= 90%"),
        ("object size", "size", ""), ("background", "background", ""), ("whole scene right", "all_correct", "")]


def quality_table(quality: dict) -> list[str]:
    """Markdown lines: the measured numbers beside the targets, then the raw JSON.

    Reads both layouts of ``benchmarks/shapes_quality.py``: ``text_to_image`` one entry (world
    version 1) or a list with one entry per guidance value (version 2).
    """
    lines = ["| measure | value | target |", "| --- | --- | --- |"]
    t2i = quality.get("text_to_image", [])
    for entry in [t2i] if isinstance(t2i, dict) else t2i:
        g = entry.get("guidance")
        where = "" if g is None else f", guidance {g:g}"
        for label, key, target in _T2I:
            lines.append(f"| text-to-image{where}: {label} (n={entry['n']}) | {entry[key]:.1%} | {target} |")
    if "reconstruction" in quality:
        r = quality["reconstruction"]
        if "objects_read_right" in r:
            lines.append(f"| VAE round trip: objects read right (n={r['objects']}) | {r['objects_read_right']:.1%} | >= 97% |")
        if "structure_kept" in r:
            lines.append(f"| VAE round trip: objects' structure kept (IoU >= 0.7) | {r['structure_kept']:.1%} | |")
        lines.append(f"| VAE reconstruction PSNR, mean / min (n={r['n']}) | {r['psnr_mean']:.1f} / {r['psnr_min']:.1f} dB | |")
    for method, e in quality.get("editing", {}).items():
        right = e.get("edit_correct", e.get("color_accuracy"))
        lines.append(f"| colour edit, {method}: edit right (n={e['n']}) | {right:.1%} | |")
        if e.get("structure_kept") is not None and e["structure_kept"] == e["structure_kept"]:
            lines.append(f"| colour edit, {method}: structure kept | {e['structure_kept']:.1%} | |")
        lines.append(f"| colour edit, {method}: PSNR outside the mask vs source | {e['psnr_outside_mask']:.1f} dB | |")
    if "guidance" in quality:
        g = quality["guidance"]
        lines.append(f"| FlowEdit target guidance {g['target_guidance']:g} vs {g['source_guidance']:g}: mean absolute "
                     f"pixel difference (n={g['n']}) | {g['mean_abs_pixel_difference']:.2f} / 255 | > 0 |")
    settings = f"{quality.get('steps', '?')} Euler steps, {quality.get('size', '?')} px, device {quality.get('device', '?')}"
    return lines + ["", f"Sampling: {settings}. Raw output:", "", "```json", json.dumps(quality, indent=1), "```"]


def write_model_card(run_dir: Path, out_dir: Path, quality: dict | None = None, device: str | None = None,
                     distilled: bool = False) -> Path:
    """Write ``out_dir/MODEL.md``; ``distilled``: the exported transformer is the distillation's student."""
    cfg = json.loads((run_dir / "config.json").read_text())
    vae_log, flow_log, distill_log = _last_log(run_dir, "vae"), _last_log(run_dir, "flow"), _last_log(run_dir, "distill")
    version = cfg.get("world_version", 1)
    config_name = "configs/shapes-cpu.json" if version == 1 else "configs/world2-cpu.json"
    world_line = ("shapes of named colours and sizes on a 3x3 grid over a plain background." if version == 1 else
                  "shapes of named colours and sizes on a 3x3 grid over a grained background, each offset, rotated "
                  "and jittered by detail no caption names (world version 2; held-out scene graphs never drawn).")
    d = cfg.get("distill", {})
    distill_lines = [] if not distilled else [
        f"- Guidance distillation: {distill_log.get('step', 0)} steps, batch {d.get('batch_size')}, guidance "
        f"U[{d.get('guidance_min')}, {d.get('guidance_max')}], final loss {distill_log.get('loss', float('nan')):.4f}, "
        f"{_stage_seconds(run_dir, 'distill') / 60:.1f} min. The exported transformer is the student "
        "(`guidance_embeds: true`), as FLUX.1-dev: one call per step, the guidance value an input."]
    size_mb = sum(p.stat().st_size for p in out_dir.rglob("*") if p.is_file()) / 2**20
    lines = [
        "# shapes: editflow's built-in FLUX-architecture model",
        "",
        "A diffusers `FluxPipeline` (FluxTransformer2DModel, AutoencoderKL with 16 latent channels, frozen",
        "CLIP and T5 text encoders with project-made tokenizers) trained by editflow on its procedural",
        f"shapes world at {cfg['image_size']}x{cfg['image_size']} pixels. It knows only that world: simple",
        world_line,
        "",
        "## Training",
        "",
        f"- Reproduce: `python -m editflow.train all --config {config_name} --run runs/shapes` then "
        "`python -m editflow.train export --run runs/shapes --out src/editflow/assets/models/shapes`.",
        _text_line(run_dir, cfg),
        f"- VAE: {vae_log.get('step', 0)} steps, batch {cfg['vae']['batch_size']}, final loss {vae_log.get('loss', float('nan')):.4f}, "
        f"{_stage_seconds(run_dir, 'vae') / 60:.1f} min.",
        f"- Transformer: {flow_log.get('step', 0)} steps of rectified-flow matching, batch {cfg['flow']['batch_size']}, "
        f"final loss {flow_log.get('loss', float('nan')):.4f}, {_stage_seconds(run_dir, 'flow') / 60:.1f} min"
        f"{'' if not cfg['flow'].get('caption_dropout') else ', captions dropped for ' + format(cfg['flow']['caption_dropout'], '.0%') + ' (the CFG teacher)'}.",
        *distill_lines,
        f"- Device: {device or platform.processor() or platform.machine()}; torch {torch.__version__}.",
        f"- Parameters: transformer {_params(out_dir / 'transformer') / 1e6:.2f} M, VAE {_params(out_dir / 'vae') / 1e6:.2f} M; "
        f"folder {size_mb:.1f} MiB (safetensors).",
        "",
        "## Configuration",
        "",
        "```json",
        json.dumps(cfg, indent=1),
        "```",
        "",
        "## Measured quality (`benchmarks/shapes_quality.py`, held-out scenes)",
        "",
    ]
    lines += quality_table(quality) if quality else ["Not measured yet."]
    path = out_dir / "MODEL.md"
    path.write_text("\n".join(lines) + "\n")
    return path
