import pytest
import torch
from PIL import Image

from editflow.errors import EditflowError
from editflow.images import fit_size, save_image, to_pil, to_tensor
from editflow.models.base import TokenGrid


@pytest.mark.parametrize("size,expected", [((100, 70), (96, 64)), ((8, 8), (16, 16)), ((1024, 768), (1024, 768)),
                                           ((1000, 1000), (1008, 1008))])
def test_fit_size_is_the_nearest_multiple(size, expected):
    assert fit_size(*size, 16) == expected


def test_tensor_pil_roundtrip_is_exact():
    im = Image.frombytes("RGB", (5, 3), bytes(range(45)))
    assert to_pil(to_tensor(im)).tobytes() == im.tobytes()


def test_save_is_atomic_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "a.png"
    target.write_bytes(b"old")

    class Broken:
        def save(self, fh, format):
            fh.write(b"partial")
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        save_image(Broken(), target)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.png"]
    save_image(Image.new("RGB", (4, 4)), target)
    assert Image.open(target).size == (4, 4)


def test_save_rejects_unknown_suffix_and_missing_folder(tmp_path):
    with pytest.raises(EditflowError, match="must end in"):
        save_image(Image.new("RGB", (4, 4)), tmp_path / "a.bmpx")
    with pytest.raises(EditflowError, match="does not exist"):
        save_image(Image.new("RGB", (4, 4)), tmp_path / "nope" / "a.png")


def test_mask_to_tokens_rules():
    grid = TokenGrid(height=32, width=32, h=2, w=2)
    mask = torch.zeros(32, 32)
    mask[0:4, 0:4] = 1  # a corner of token (0, 0): 1/16 of it
    mask[16:32, 0:12] = 1  # 3/4 of token (1, 0)
    assert grid.mask_to_tokens(mask, "any").tolist() == [[True, False, True, False]]
    assert grid.mask_to_tokens(mask, "most").tolist() == [[False, False, True, False]]
    assert grid.mask_to_tokens(mask, "all").tolist() == [[False, False, False, False]]
    with pytest.raises(EditflowError, match="resize the mask"):
        grid.mask_to_tokens(torch.zeros(8, 8))
