"""``python -m editflow.train STAGE --config FILE --run DIR [--out DIR]``.

STAGE: text | vae | flow | distill | all | export. Every stage resumes from the checkpoints in ``--run``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from ..errors import EditflowError
from . import stages
from .config import TrainConfig


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m editflow.train", description=__doc__)
    ap.add_argument("stage", choices=["text", "vae", "flow", "distill", "all", "export"])
    ap.add_argument("--config", default=None, help="JSON config (defaults: the CPU configuration)")
    ap.add_argument("--run", required=True, help="run folder: checkpoints, logs, config")
    ap.add_argument("--out", default=None, help="export: the pipeline folder to write")
    ap.add_argument("--quality", default=None, help="export: a benchmarks/shapes_quality.py JSON for MODEL.md")
    ap.add_argument("--trained-on", default=None, help="export: the training machine, for MODEL.md (e.g. 'CPU, 2 cores')")
    ap.add_argument("--device", default=None, help="override the config's device (cpu, cuda)")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    # CLIP's 77-token limit truncates long captions by design (T5 reads them whole): not news each step
    for name in ("transformers", "diffusers"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        cfg = TrainConfig.load(args.config)
        if args.device:
            cfg.device = args.device
        run = Path(args.run)
        if args.stage == "export":
            if not args.out:
                raise EditflowError("export needs --out DIR")
            quality = None
            if args.quality:
                qpath = Path(args.quality)
                if not qpath.is_file():
                    raise EditflowError(f"quality file not found: {qpath}")
                quality = json.loads(qpath.read_text())
            stages.export(run, Path(args.out), quality=quality, trained_on=args.trained_on)
            return 0
        stages.save_config(cfg, run)
        if args.stage in ("text", "all"):
            stages.stage_text(cfg, run, progress=not args.quiet)
        if args.stage in ("vae", "all"):
            stages.stage_vae(cfg, run, progress=not args.quiet)
        if args.stage in ("flow", "all"):
            stages.stage_flow(cfg, run, progress=not args.quiet)
        if args.stage in ("distill", "all"):
            stages.stage_distill(cfg, run, progress=not args.quiet)
    except (EditflowError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
