"""The optimisation loop shared by every training stage, with resumable checkpoints.

A stage's state lives in ``run_dir/<stage>/``: the module in diffusers/transformers format
(safetensors) and ``state.pt`` (optimizer, scheduler, step; loaded with ``weights_only=True``).
Checkpoints are written to a temporary folder and renamed, so an interrupted write never
replaces a good checkpoint. Losses go to ``run_dir/<stage>.log.jsonl``.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
import time
from pathlib import Path
from typing import Callable

import torch


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def warmup_cosine(optimizer, warmup: int, total: int):
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def save_checkpoint(stage_dir: Path, module, optimizer, scheduler, step: int) -> None:
    tmp = stage_dir.with_name(stage_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    module.save_pretrained(tmp, safe_serialization=True)
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "step": step},
               tmp / "state.pt")
    old = stage_dir.with_name(stage_dir.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if stage_dir.exists():
        stage_dir.rename(old)
    tmp.rename(stage_dir)
    shutil.rmtree(old, ignore_errors=True)


def load_state(stage_dir: Path, optimizer, scheduler) -> int:
    """Restore optimizer and scheduler from a checkpoint; return its step (0 if none)."""
    path = stage_dir / "state.pt"
    if not path.is_file():
        return 0
    state = torch.load(path, map_location="cpu", weights_only=True)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    return int(state["step"])


def run(
    name: str,
    module,
    params,
    loss_at: Callable[[int], torch.Tensor],
    steps: int,
    lr: float,
    warmup: int,
    stage_dir: Path,
    checkpoint_every: int,
    progress: bool = True,
) -> int:
    """Minimise ``loss_at(step)`` from the last checkpoint to ``steps``; returns the final step."""
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    scheduler = warmup_cosine(optimizer, warmup, steps)
    start = load_state(stage_dir, optimizer, scheduler)
    log_path = stage_dir.with_name(f"{name}.log.jsonl")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    if start >= steps:
        return start
    from tqdm.auto import tqdm

    bar = tqdm(total=steps, initial=start, desc=name, unit="step", file=sys.stderr, disable=not progress)
    ema, t0 = None, time.perf_counter()
    module.train()
    for step in range(start, steps):
        loss = loss_at(step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        scheduler.step()
        value = float(loss.detach())
        if not math.isfinite(value):
            raise FloatingPointError(f"{name}: loss became {value} at step {step}; lower the learning rate")
        ema = value if ema is None else 0.98 * ema + 0.02 * value
        bar.set_postfix(loss=f"{ema:.4f}")
        bar.update(1)
        done = step + 1
        if done % 50 == 0 or done == steps:
            with log_path.open("a") as fh:
                fh.write(json.dumps({"step": done, "loss": ema, "lr": scheduler.get_last_lr()[0],
                                     "seconds": time.perf_counter() - t0}) + "\n")
        if done % checkpoint_every == 0 or done == steps:
            module.eval()
            save_checkpoint(stage_dir, module, optimizer, scheduler, done)
            module.train()
    bar.close()
    module.eval()
    return steps
