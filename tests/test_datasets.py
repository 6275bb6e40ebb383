"""Dataset readers on fixtures laid out exactly as the released datasets."""

import json

import numpy as np
import pytest
from PIL import Image

from editflow.bench.datasets import decode_rle, load_dataset, read_flowedit, read_pie_bench, read_shapes
from editflow.errors import EditflowError


def _png(path, size=(32, 32)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (120, 30, 200)).save(path)


def _encode(mask: np.ndarray) -> list[int]:
    """Run-length (start, length) pairs of a bool mask, row-major (the inverse of PIE-Bench's decoder)."""
    flat = np.concatenate([[0], mask.reshape(-1).astype(np.int8), [0]])
    changes = np.flatnonzero(np.diff(flat))
    starts, ends = changes[0::2], changes[1::2]
    return [int(v) for pair in zip(starts, ends - starts) for v in pair]


@pytest.fixture()
def pie(tmp_path):
    root = tmp_path / "PIE-Bench_v1"
    _png(root / "annotation_images" / "0_random_140" / "000000000000.jpg", (512, 512))
    _png(root / "annotation_images" / "1_change_object_80" / "1_artificial" / "111000000000.jpg", (512, 512))
    truth = np.zeros((512, 512), dtype=bool)
    truth[100:200, 50:300] = True
    truth[400:410, 10:20] = True
    mapping = {
        "000000000000": {
            "image_path": "0_random_140/000000000000.jpg",
            "original_prompt": "a slanted mountain bicycle on the road in front of a building",
            "editing_prompt": "a slanted [rusty] mountain bicycle on the road in front of a building",
            "editing_instruction": "Make the frame of the bike rusty",
            "editing_type_id": "0", "blended_word": "bicycle bicycle", "mask": _encode(truth),
        },
        "111000000000": {
            "image_path": "1_change_object_80/1_artificial/111000000000.jpg",
            "original_prompt": "a [cat] sitting on a wooden table", "editing_prompt": "a [dog] sitting on a wooden table",
            "editing_instruction": "", "editing_type_id": "1", "blended_word": "cat dog", "mask": [0, 5],
        },
    }
    (root / "mapping_file.json").write_text(json.dumps(mapping))
    return root, truth


def test_pie_bench_reader_decodes_masks_prompts_and_categories(pie):
    root, truth = pie
    records = read_pie_bench(root / "mapping_file.json")
    assert [r.id for r in records] == ["000000000000", "111000000000"]
    first = records[0]
    assert first.image == (root / "annotation_images/0_random_140/000000000000.jpg").resolve()
    assert first.target_prompt == "a slanted rusty mountain bicycle on the road in front of a building"
    assert first.extras["editing_prompt"].count("[") == 1 and first.category == "random"
    mask = first.mask
    border = np.zeros_like(truth)
    border[[0, -1], :] = border[:, [0, -1]] = True
    assert mask.shape == (512, 512) and np.array_equal(mask, truth | border)  # PIE-Bench's border quirk
    assert records[1].category == "change object" and records[1].source_prompt == "a cat sitting on a wooden table"
    assert load_dataset(root)[1].id == "111000000000"  # the folder works too


def test_rle_decoder_matches_a_direct_implementation():
    rng = np.random.default_rng(0)
    mask = rng.random((16, 24)) > 0.7
    assert np.array_equal(decode_rle(_encode(mask), (16, 24), border=False), mask)
    with pytest.raises(EditflowError, match="pairs"):
        decode_rle([1, 2, 3], (4, 4))


def test_flowedit_yaml_reader_with_the_released_quirks(tmp_path):
    root = tmp_path / "Data"
    _png(root / "Images" / "cat.png")
    _png(root / "Images" / "parrot.png")
    (root / "flowedit.yaml").write_text(
        "- init_img: flowedit_data/Images/cat.png\n"  # the released file's folder prefix
        "  source_prompt: a cat sitting on a sofa\n"
        "  target_prompts:\n  - a dog sitting on a sofa\n  - a tiger sitting on a sofa\n"
        "  target_codes:\n  - dog\n  - tiger\n"
        "- input_img: 'Images/parrot.png '\n"  # trailing space, as in the released file
        "  source_prompt: 'a parrot '\n  target_prompts:\n  - a crow\n"
    )
    records = read_flowedit(root / "flowedit.yaml")
    # ids: the image's path under the yaml's folder, without suffix, then the code
    assert [r.id for r in records] == ["Images/cat/dog", "Images/cat/tiger", "Images/parrot/0"]
    assert records[1].target_prompt == "a tiger sitting on a sofa" and records[2].source_prompt == "a parrot"
    assert records[0].image == (root / "Images/cat.png").resolve() and records[0].mask is None


@pytest.mark.parametrize("bad", ["../outside.png", "/etc/passwd", "Images/../../outside.png"])
def test_paths_cannot_escape_the_dataset_folder(tmp_path, bad):
    root = tmp_path / "Data"
    root.mkdir()
    _png(tmp_path / "outside.png")
    (root / "set.yaml").write_text(f"- input_img: {bad}\n  source_prompt: a\n  target_prompts: [b]\n")
    with pytest.raises(EditflowError, match="outside the dataset folder"):
        read_flowedit(root / "set.yaml")


def test_shapes_edit_sets_round_trip(tmp_path):
    from editflow.world.io import write_edits

    path = write_edits(tmp_path / "edits", n=4, seed=3, kinds=("color", "remove"))
    records = read_shapes(path)
    assert [r.category for r in records] == ["color", "remove", "color", "remove"]
    assert records[0].target_image.exists() and records[0].mask.dtype == bool and records[0].mask.any()
    assert load_dataset(tmp_path / "edits")[3].id == records[3].id


def test_unknown_or_missing_datasets_are_clear_errors(tmp_path):
    with pytest.raises(EditflowError, match="dataset not found"):
        load_dataset(tmp_path / "nope")
    (tmp_path / "x.csv").write_text("")
    with pytest.raises(EditflowError, match="unknown dataset format"):
        load_dataset(tmp_path / "x.csv")
