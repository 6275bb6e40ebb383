"""Edit metrics with tiny randomly initialised models of the real classes."""

import numpy as np
import pytest
import torch

from editflow.bench.metrics import (LPIPS, MSE, PSNR, SSIM, ClipImage, ClipText, DinoSimilarity, DreamSim, LPIPSNet,
                                    StructureDistance)
from editflow.errors import EditflowError


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    a = [rng.integers(0, 256, (48, 64, 3), dtype=np.uint8) for _ in range(3)]
    b = [rng.integers(0, 256, (48, 64, 3), dtype=np.uint8) for _ in range(3)]
    mask = np.zeros((48, 64), dtype=bool)
    mask[8:30, 10:40] = True
    return a, b, mask


def _change_outside(images_, mask):
    out = []
    for im in images_:
        im = im.copy()
        im[~mask] = 255 - im[~mask]
        out.append(im)
    return out


def test_clip_identical_images_and_batching(tiny_clip, images):
    a, b, _ = images
    clip_i = ClipImage.from_pretrained(tiny_clip, device="cpu", batch_size=2)
    assert np.allclose(clip_i(a, a), 1.0, atol=1e-5)
    different = clip_i(a, b)
    assert all(v < 0.9999 for v in different)
    assert np.allclose(different, [clip_i(x, y)[0] for x, y in zip(a, b)], atol=1e-5)


def test_clip_t_batched_equals_unbatched_and_mask_ignores_the_rest(tiny_clip, images):
    a, b, mask = images
    clip_t = ClipText.from_pretrained(tiny_clip, device="cpu", batch_size=2)
    prompts = ["a red circle", "a blue square", "a green triangle"]
    scores = clip_t(a, prompts)
    assert np.allclose(scores, [clip_t(x, p)[0] for x, p in zip(a, prompts)], atol=1e-5)
    assert len({round(s, 6) for s in scores}) == 3  # it depends on the input
    inside = clip_t(a, prompts, mask=mask)
    assert np.allclose(inside, clip_t(_change_outside(a, mask), prompts, mask=mask), atol=1e-6)
    assert not np.allclose(inside, scores, atol=1e-4)
    scaled = ClipText.from_pretrained(tiny_clip, device="cpu", scale=100.0, clip_negative=True)(a, prompts)
    assert np.allclose(scaled, np.maximum(100 * np.array(scores), 0), atol=1e-3)


def test_dino_and_structure_distance(tiny_vit, images):
    a, b, _ = images
    dino = DinoSimilarity.from_pretrained(tiny_vit, device="cpu", batch_size=2)
    assert np.allclose(dino(a, a), 1.0, atol=1e-5) and all(v < 0.9999 for v in dino(a, b))
    assert np.allclose(dino(a, b), [dino(x, y)[0] for x, y in zip(a, b)], atol=1e-5)
    sd = StructureDistance.from_pretrained(tiny_vit, device="cpu", batch_size=2)
    assert np.allclose(sd(a, a), 0.0, atol=1e-10)
    ab, ba = sd(a, b), sd(b, a)
    assert all(v > 0 for v in ab) and np.allclose(ab, ba, rtol=1e-5)
    assert np.allclose(ab, [sd(x, y)[0] for x, y in zip(a, b)], rtol=1e-4)


def test_lpips_identity_mask_batching_and_safetensors_round_trip(tmp_path, images):
    a, b, mask = images
    torch.manual_seed(2)
    net = LPIPSNet()
    for lin in net.lins:  # LPIPS' learned weights are non-negative
        lin.weight.data.abs_()
    metric = LPIPS(net, batch_size=2)
    assert np.allclose(metric(a, a), 0.0, atol=1e-7)
    d = metric(a, b)
    assert all(v > 0 for v in d)
    assert np.allclose(d, [metric(x, y)[0] for x, y in zip(a, b)], rtol=1e-5)
    assert np.allclose(metric(a, b, mask=mask), metric(_change_outside(a, mask), b, mask=mask), atol=1e-7)
    from safetensors.torch import save_file

    save_file(net.state_dict(), tmp_path / "lpips_alex.safetensors")
    loaded = LPIPS.from_pretrained(str(tmp_path), device="cpu")
    assert np.allclose(loaded(a, b), d, rtol=1e-6)
    with pytest.raises(EditflowError, match="LPIPS weights not found.*convert_lpips"):
        LPIPS.from_pretrained(str(tmp_path / "missing.safetensors"))


@pytest.mark.parametrize("region", ["select", "zero"])
def test_pixel_metrics_identity_and_masks(images, region):
    a, b, mask = images
    assert all(v == float("inf") for v in PSNR(region)(a, a))
    assert MSE(region)(a, a) == [0.0] * 3 and np.allclose(SSIM(region)(a, a), 1.0)
    for metric in (PSNR(region), MSE(region), SSIM(region)):
        inside = metric(a, b, mask=mask)
        assert np.allclose(inside, metric(_change_outside(a, mask), b, mask=mask))
        assert np.allclose(inside, [metric(x, y, mask=mask)[0] for x, y in zip(a, b)])
    # the two restrictions differ: "zero" averages over the whole frame (PIE-Bench)
    sel, zero = MSE("select")(a, b, mask=mask)[0], MSE("zero")(a, b, mask=mask)[0]
    assert zero == pytest.approx(sel * mask.mean(), rel=1e-6)


def test_missing_checkpoints_are_one_line_errors(tmp_path):
    with pytest.raises(EditflowError, match=r"'openai/clip-vit-large-patch14' is not available offline.*clip_t=PATH"):
        ClipText.from_pretrained()
    with pytest.raises(EditflowError, match=r"'facebook/dino-vitb8' is not available offline.*structure_distance=PATH"):
        StructureDistance.from_pretrained()
    with pytest.raises(EditflowError) as err:
        DinoSimilarity.from_pretrained(str(tmp_path))  # a folder without a model
    assert "\n" not in str(err.value)


def test_dreamsim_without_its_package_says_what_to_install():
    pytest.importorskip("torch")
    try:
        import dreamsim  # noqa: F401
    except ImportError:
        with pytest.raises(EditflowError, match="pip install dreamsim"):
            DreamSim.from_pretrained()
    else:
        pytest.skip("dreamsim is installed here")


def test_lpips_converter_maps_the_official_key_names(tmp_path, images):
    """Files laid out as the official lin weights and torchvision's AlexNet convert to a network
    that reproduces the one they came from."""
    import importlib.util
    from pathlib import Path

    torch.manual_seed(3)
    net = LPIPSNet()
    torch.save({k: v for k, v in net.state_dict().items() if k.startswith("features.")}, tmp_path / "alexnet.pth")
    torch.save({f"lin{i}.model.1.weight": net.lins[i].weight.detach().clone() for i in range(5)}, tmp_path / "alex.pth")
    spec = importlib.util.spec_from_file_location("convert_lpips", Path(__file__).parents[1] / "scripts" / "convert_lpips.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    state = module.convert(str(tmp_path / "alex.pth"), str(tmp_path / "alexnet.pth"))
    other = LPIPSNet()
    other.load_state_dict(state)
    a, b, _ = images
    assert np.allclose(LPIPS(other)(a, b), LPIPS(net)(a, b), rtol=1e-6)


def _tiny_dinov2(folder):
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(2)
    Dinov2Model(Dinov2Config(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                             image_size=32, patch_size=8)).save_pretrained(folder)
    return str(folder)


def test_dinov2_similarity_is_the_class_token_cosine(tmp_path, images):
    from editflow.bench.metrics import METRICS, Dinov2Similarity
    from editflow.bench.metrics.dino import preprocess

    a, b, _ = images
    metric = Dinov2Similarity.from_pretrained(_tiny_dinov2(tmp_path / "d2"), device="cpu", batch_size=2)
    assert METRICS["dinov2"] is Dinov2Similarity and metric.size == 224  # the paper's input, not the config's
    assert np.allclose(metric(a, a), 1.0, atol=1e-5)
    with torch.no_grad():
        cls = [metric.model(pixel_values=preprocess([x], 224)).last_hidden_state[0, 0] for x in (a[0], b[0])]
    expected = float(torch.nn.functional.cosine_similarity(cls[0], cls[1], dim=0))
    assert abs(metric([a[0]], [b[0]])[0] - expected) < 1e-5 and expected < 0.9999
    with pytest.raises(EditflowError, match="--similarity-model"):
        Dinov2Similarity.from_pretrained(str(tmp_path / "missing-dinov2"))
