import os
import shutil
import signal
import subprocess
import time
from importlib import resources

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


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory):
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("clip")
    tok = resources.files("editflow") / "assets" / "tokenizers" / "tokenizer"
    for f in tok.iterdir():
        shutil.copy(f, folder / f.name)
    vocab = __import__("json").loads((folder / "tokenizer.json").read_text())["model"]["vocab"]
    cfg = CLIPConfig(
        text_config=dict(vocab_size=len(vocab) + 8, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=77),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=16,
    )
    CLIPModel(cfg).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="session")
def tiny_vit(tmp_path_factory):
    from transformers import ViTConfig, ViTModel

    torch.manual_seed(1)
    folder = tmp_path_factory.mktemp("vit")
    ViTModel(ViTConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                       image_size=32, patch_size=8), add_pooling_layer=False).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="session")
def tiny_lpips_squeeze(tmp_path_factory):
    """A random-weight LPIPS-squeeze safetensors file (learned weights non-negative, as LPIPS')."""
    from safetensors.torch import save_file

    from editflow.bench.metrics import LPIPSNet

    torch.manual_seed(4)
    net = LPIPSNet("squeeze")
    for lin in net.lins:
        lin.weight.data.abs_()
    path = tmp_path_factory.mktemp("lpips") / "lpips_squeeze.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, path)
    return str(path)


@pytest.fixture(scope="session")
def kill_midway():
    """``kill(cmd, env, shard, lines)``: start ``cmd``, SIGKILL it once ``shard`` holds ``lines``
    complete lines (or when it ends first); returns its pid."""
    def kill(cmd, env, shard, lines, poll=0.02, timeout=240):
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + timeout
        while time.time() < deadline and proc.poll() is None:
            if shard.exists() and shard.read_bytes().count(b"\n") >= lines:
                break
            time.sleep(poll)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        return proc.pid

    return kill
