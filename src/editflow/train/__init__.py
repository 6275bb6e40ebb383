"""Training of the built-in shapes model (VAE + FLUX transformer) on the shapes world.

``python -m editflow.train all --config configs/world2-cpu.json --run runs/shapes`` runs every
stage (text, vae, flow, distill), resuming from the run folder's checkpoints, then
``python -m editflow.train export --run runs/shapes --out DIR`` writes the FluxPipeline folder.
"""

from .config import TrainConfig

__all__ = ["TrainConfig"]
