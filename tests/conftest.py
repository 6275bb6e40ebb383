import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import pytest  # noqa: E402
import torch  # noqa: E402

import editflow  # noqa: E402


@pytest.fixture(scope="session")
def tiny():
    """The guidance-distilled tiny FLUX adapter (random weights, CPU, float32)."""
    return editflow.load_model("tiny-flux", device="cpu")


@pytest.fixture(scope="session")
def tiny_schnell():
    return editflow.load_model("tiny-flux-schnell", device="cpu")


@pytest.fixture(scope="session")
def source_latent(tiny):
    """Clean latent tokens of a fixed random 64x64 image."""
    gen = torch.Generator().manual_seed(123)
    image = torch.rand(1, 3, 64, 64, generator=gen) * 2 - 1
    return tiny.encode_image(image), tiny.grid(64, 64)
