"""Bad inputs, faults and oversized requests: each is refused with one line naming the problem
and the fix (CLI: ``error: ...`` and exit status 2; API: an ``EditflowError`` subclass), before any
model call, with no traceback and no output or temporary file left behind.

The dataset readers' and the runner's cases are in test_bad_datasets.py, the browser's in
test_ui.py and test_ui_limits.py.
"""

import errno
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import editflow
from editflow.cli import app
from editflow.errors import EditflowError, LimitError, ModelNotAvailableError, ParameterError
from editflow.images import load_image, load_mask
from editflow.limits import Limits

runner = CliRunner()
SRC, TAR = "a blue image", "a red image"


@pytest.fixture()
def photo(tmp_path):
    path = tmp_path / "photo.png"
    Image.new("RGB", (64, 64), (90, 120, 200)).save(path)
    return path


def png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims ``width x height`` RGB pixels over a few bytes of data: what a
    decompression bomb looks like before it is decoded."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    return path


def leftovers(folder: Path, keep: set[str]) -> list[str]:
    """Files in ``folder`` (recursively) other than ``keep``: outputs or temporaries of a refused run."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and p.name not in keep)


def one_line_error(result, needle: str) -> str:
    """Assert a CLI refusal: exit 2, one non-empty stderr line ``error: ...`` holding ``needle``."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert needle in lines[0], lines[0]
    assert "Traceback" not in result.output
    return lines[0]


def cli_edit(*args, model="tiny-flux"):
    return runner.invoke(app, ["edit", "--model", model, *map(str, args)])


# -- the command line ------------------------------------------------------------------------------

CLI_CASES = {
    # name: (extra args, needle in the one error line)
    "steps over the limit": (["--steps", "100000"], "max_steps=1000"),
    "n_avg over the row limit": (["--set", "n_avg=100000"], "max_rows=64"),
    "nfe over the limit": (["--method", "rf_edit", "--steps", "600"], "max_nfe=2000"),
    "nan guidance": (["--set", "source_guidance=nan"], "'source_guidance' must be a finite number"),
    "inf guidance": (["--set", "target_guidance=inf"], "'target_guidance' must be a finite number"),
    "negative inf": (["--set", "target_guidance=-inf"], "finite"),
    "seed 2**70": (["--seed", str(2**70)], "seed must be in [0, 2**64 - 1]"),
    "negative seed": (["--seed", "-1"], "seed must be in [0, 2**64 - 1]"),
    "bad limit name": (["--limit", "max_cats=3"], "--limit expects NAME=VALUE"),
    "bad limit value": (["--limit", "max_steps=many"], "--limit max_steps expects a whole number"),
    "zero limit": (["--limit", "max_steps=0"], "limit max_steps must be a positive whole number"),
    "no cuda device": (["--device", "cuda:99"], "cuda:99"),
    "unknown device": (["--device", "tpu"], "unknown device 'tpu'"),
    "bad attention backend": (["--attention", "fastest"], "unknown attention backend"),
    "prompt too long": (["--limit", "max_prompt_chars=5"], "max_prompt_chars=5"),
    "kv_edit without a mask": (["--method", "kv_edit"], "needs a mask"),
    "n_avg with few edit steps": (["--steps", "100", "--set", "n_max=10", "--set", "n_min=9", "--set", "n_avg=40"],
                                  "80 batch rows in one model call is over the limit max_rows=64"),
}


@pytest.mark.parametrize("case", sorted(CLI_CASES))
def test_cli_refuses_bad_values_before_the_model_runs(tmp_path, photo, case):
    args, needle = CLI_CASES[case]
    out = tmp_path / "out.png"
    one_line_error(cli_edit(photo, "-s", SRC, "-t", TAR, "-o", out, *args), needle)
    assert leftovers(tmp_path, {"photo.png"}) == []


def test_cli_limit_can_be_raised_and_lowered_on_purpose(tmp_path, photo, monkeypatch):
    out = tmp_path / "out.png"
    monkeypatch.setenv("EDITFLOW_LIMIT_MAX_STEPS", "3")
    msg = one_line_error(cli_edit(photo, "-s", SRC, "-t", TAR, "-o", out, "--steps", "4", "-q"), "max_steps=3")
    assert "--limit max_steps=4" in msg and "EDITFLOW_LIMIT_MAX_STEPS=4" in msg  # says how to raise it
    r = cli_edit(photo, "-s", SRC, "-t", TAR, "-o", out, "--steps", "4", "-q", "--limit", "max_steps=4")
    assert r.exit_code == 0, r.output
    assert out.is_file()


def test_cli_huge_image_refused_from_its_header_before_the_model_loads(tmp_path):
    bomb = png_header_only(tmp_path / "bomb.png", 10_000, 10_000)  # 100 MP: 300 MB decoded
    one_line_error(cli_edit(bomb, "-s", SRC, "-t", TAR, "-o", tmp_path / "o.png"), "max_input_pixels=16777216")
    big = png_header_only(tmp_path / "big.png", 5000, 5000)  # 25 MP
    one_line_error(cli_edit(big, "-s", SRC, "-t", TAR, "-o", tmp_path / "o.png"), "max_input_pixels")
    assert leftovers(tmp_path, {"bomb.png", "big.png"}) == []


def test_cli_working_size_over_the_limit_is_refused(tmp_path):
    wide = tmp_path / "wide.png"
    Image.new("RGB", (3000, 1500), (10, 20, 30)).save(wide)  # 4.5 MP: readable, too large to edit
    msg = one_line_error(cli_edit(wide, "-s", SRC, "-t", TAR, "-o", tmp_path / "o.png"), "max_pixels=4194304")
    assert "resize the image first" in msg


def test_cli_mask_bomb_refused(tmp_path, photo):
    bomb = png_header_only(tmp_path / "mask.png", 20_000, 20_000)
    one_line_error(cli_edit(photo, "-s", SRC, "-t", TAR, "-o", tmp_path / "o.png", "--method", "kv_edit",
                            "--mask", bomb), "mask file")
    assert leftovers(tmp_path, {"photo.png", "mask.png"}) == []


def test_cli_zero_sized_and_truncated_images(tmp_path):
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    one_line_error(cli_edit(empty, "-s", SRC, "-t", TAR, "-o", tmp_path / "o.png"), "not an image file")
    cut = tmp_path / "cut.png"
    Image.new("RGB", (32, 32), (1, 2, 3)).save(cut)
    cut.write_bytes(cut.read_bytes()[:60])
    one_line_error(cli_edit(cut, "-s", SRC, "-t", TAR, "-o", tmp_path / "o.png"), "not an image file")


def readonly_folder(tmp_path: Path) -> Path:
    """A folder that refuses new files: a 0o555 folder, or for root (whom permissions do not stop)
    a sysfs folder."""
    if os.geteuid() == 0:
        return Path("/sys/kernel")
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    return folder


@pytest.fixture()
def no_model(monkeypatch):
    """Loading a model fails the test: the refusal must come first."""
    import editflow.models.zoo as zoo

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the refusal")

    monkeypatch.setattr(zoo, "load_model", refuse)


def test_cli_read_only_output_folder_is_refused_before_the_model_loads(tmp_path, photo, no_model, monkeypatch):
    one_line_error(cli_edit(photo, "-s", SRC, "-t", TAR, "-o", readonly_folder(tmp_path) / "out.png"),
                   "cannot write to the output folder")

    def read_only_fs(*args, **kwargs):  # what a read-only mount answers, whoever asks
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr("tempfile.mkstemp", read_only_fs)
    one_line_error(cli_edit(photo, "-s", SRC, "-t", TAR, "-o", tmp_path / "out.png"),
                   "cannot write to the output folder")
    assert leftovers(tmp_path, {"photo.png"}) == []


def test_cli_plain_cuda_device_without_cuda(tmp_path, photo, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    msg = one_line_error(cli_edit(photo, "-s", SRC, "-t", TAR, "-o", tmp_path / "o.png", "--device", "cuda"),
                         "device 'cuda': this machine has no CUDA GPU")
    assert "--device cpu" in msg


def test_cli_failed_output_write_takes_the_before_after_image_with_it(tmp_path, photo, monkeypatch):
    saved = []
    original = Image.Image.save

    def second_write_fails(self, fp, format=None, **params):
        saved.append(format)
        if len(saved) == 2:  # the edited image, written after the before|after one
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(self, fp, format=format, **params)

    monkeypatch.setattr(Image.Image, "save", second_write_fails)
    r = cli_edit(photo, "-s", SRC, "-t", TAR, "-o", tmp_path / "o.png", "--compare", tmp_path / "c.png",
                 "--steps", "2", "-q")
    one_line_error(r, "the disk is full")
    assert len(saved) == 2 and leftovers(tmp_path, {"photo.png"}) == []


def test_cli_output_path_that_is_a_folder(tmp_path, photo):
    (tmp_path / "result.png").mkdir()
    one_line_error(cli_edit(photo, "-s", SRC, "-t", TAR, "-o", tmp_path / "result.png"), "is an existing folder")


def test_cli_full_disk_leaves_nothing_behind(tmp_path, photo, monkeypatch):
    def full(self, fp, format=None, **params):
        fp.write(b"\x89PNG partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", full)
    out = tmp_path / "out.png"
    one_line_error(cli_edit(photo, "-s", SRC, "-t", TAR, "-o", out, "--steps", "2", "-q"), "the disk is full")
    assert leftovers(tmp_path, {"photo.png"}) == []


def test_cli_corrupt_model_index_and_pickle_only_folders(tmp_path, photo, tiny):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model_index.json").write_text('{"_class_name": "FluxPipeline", ')
    one_line_error(cli_edit(photo, "-s", SRC, "-t", TAR, "-o", tmp_path / "o.png", model=broken), "not readable JSON")
    (broken / "model_index.json").write_text('["FluxPipeline"]')
    one_line_error(cli_edit(photo, "-s", SRC, "-t", TAR, "-o", tmp_path / "o.png", model=broken), "_class_name")
    pickled = tmp_path / "pickled"
    tiny.pipe.save_pretrained(pickled, safe_serialization=False)
    assert list((pickled / "transformer").glob("*.bin")) and not list((pickled / "transformer").glob("*.safetensors"))
    msg = one_line_error(cli_edit(photo, "-s", SRC, "-t", TAR, "-o", tmp_path / "o.png", model=pickled), "pickle")
    assert "safetensors only" in msg
    with pytest.raises(ModelNotAvailableError, match="safetensors only"):
        editflow.load_model(str(pickled), device="cpu")


def run_module(*args: str | bytes, **env) -> subprocess.CompletedProcess:
    """``python -m editflow ARGS`` in a child process (bytes arguments reach it as they are)."""
    return subprocess.run([sys.executable, "-m", "editflow", *args], capture_output=True, timeout=120,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", **env})


def check_process_refusal(proc: subprocess.CompletedProcess, needle: str) -> None:
    err = proc.stderr.decode(errors="replace")
    lines = [line for line in err.splitlines() if line.strip()]
    assert proc.returncode == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], err
    assert b"Traceback" not in proc.stderr + proc.stdout


def test_cli_in_a_process_non_utf8_prompt_and_usage_mistakes(tmp_path, photo):
    out = tmp_path / "o.png"
    # bytes that are not UTF-8 arrive as lone surrogates: refused before the model loads
    check_process_refusal(run_module("edit", str(photo), "-s", b"a \xff\xfe cat", "-t", TAR, "-o", str(out),
                                     "--model", "tiny-flux"), "source_prompt is not valid text")
    # typer's own usage errors are one line too
    check_process_refusal(run_module("edit", str(photo), "-s", SRC, "-t", TAR, "-o", str(out), "--seed", "abc"),
                          "Invalid value for '--seed'")
    check_process_refusal(run_module("edit", "-s", SRC), "Missing argument")
    check_process_refusal(run_module("edit", str(photo), "-s", SRC, "-t", TAR, "-o", str(out), "--stepz", "3"),
                          "No such option")
    assert leftovers(tmp_path, {"photo.png"}) == []


def test_quiet_prints_nothing_on_the_shapes_model(tmp_path):
    """``-q``: no loading bars (transformers' "Loading weights"), no progress, no notices."""
    example = Path(__file__).resolve().parent.parent / "examples" / "shapes_scene.png"
    source = "a large red circle in the center and a small yellow square in the top left, on a gray background"
    proc = run_module("edit", str(example), "-s", source, "-t", source.replace("red", "blue"), "-o", str(tmp_path / "o.png"),
                      "--steps", "4", "-q")
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stderr.decode().strip() == "" and proc.stdout.decode().strip() == ""


# -- the Python API --------------------------------------------------------------------------------


def api_refusal(tiny, exc_type, needle, *, image=None, **kwargs):
    """Call edit() with ``kwargs`` over the defaults; assert it raises ``exc_type`` with a one-line
    message holding ``needle`` and that no model computation ran (no call, no VAE encode)."""
    encodes = []
    original = tiny.encode_image
    tiny.encode_image = lambda x: encodes.append(x) or original(x)
    before = tiny.counter.total.copy()
    args = dict(model=tiny, image=image if image is not None else Image.new("RGB", (64, 64), (9, 9, 9)),
                source_prompt=SRC, target_prompt=TAR, method="flowedit", seed=0, steps=2)
    args.update(kwargs)
    try:
        with pytest.raises(exc_type) as err:
            editflow.edit(**args)
    finally:
        del tiny.encode_image
    msg = str(err.value)
    assert isinstance(err.value, EditflowError)
    assert "\n" not in msg and needle in msg, msg
    assert tiny.counter.total == before and encodes == []
    return msg


API_CASES = {
    "steps as text": (dict(steps="10"), ParameterError, "parameter 'steps' must be int"),
    "steps nan": (dict(steps=float("nan")), ParameterError, "parameter 'steps' must be int"),
    "guidance nan": (dict(source_guidance=float("nan")), ParameterError, "finite"),
    "guidance inf": (dict(target_guidance=float("inf")), ParameterError, "finite"),
    "steps over the limit": (dict(steps=10**9), LimitError, "max_steps"),
    "n_avg over the limit": (dict(n_avg=100_000), LimitError, "max_rows"),
    "seed text": (dict(seed="abc"), ParameterError, "seed must be a whole number"),
    "seed too large": (dict(seed=2**70), ParameterError, "seed must be in [0, 2**64 - 1]"),
    "seed float": (dict(seed=1.5), ParameterError, "seed must be a whole number"),
    "generator int": (dict(generator=42), ParameterError, "generator must be a torch.Generator"),
    "no seed": (dict(seed=None), ParameterError, "pass a seed"),
    "cache text": (dict(cache="yes"), ParameterError, "cache must be an editflow.InversionCache"),
    "model none": (dict(model=None), ParameterError, "model must be an adapter"),
    "model number": (dict(model=3), ParameterError, "got int"),
    "method none": (dict(method=None), ParameterError, "method must be a name"),
    "unknown method": (dict(method="nope"), ParameterError, "unknown method 'nope'"),
    "source prompt none": (dict(source_prompt=None), ParameterError, "source_prompt must be a string"),
    "target prompt bytes": (dict(target_prompt=b"a dog"), ParameterError, "target_prompt must be a string"),
    "lone surrogate": (dict(target_prompt="a \udc80 dog"), ParameterError, "target_prompt is not valid text"),
    "prompt too long": (dict(source_prompt="a" * 20_000), LimitError, "max_prompt_chars=10000"),
    "mask rule": (dict(method="kv_edit", mask=np.ones((64, 64)), mask_rule="some", steps=8), ParameterError, "mask_rule"),
    "missing mask": (dict(method="kv_edit", steps=8), ParameterError, "needs a mask"),
    "empty mask": (dict(method="kv_edit", mask=np.zeros((64, 64)), steps=8), ParameterError, "selects nothing"),
    "mask 3-d": (dict(method="kv_edit", mask=np.ones((2, 64, 64)), steps=8), EditflowError, "must be 2-D"),
    "mask strings": (dict(method="kv_edit", mask=np.array([["a", "b"]]), steps=8), EditflowError, "must hold numbers"),
    "subjects not a list": (dict(subjects="face.png"), ParameterError, "subjects must be a list"),
    "subject wrong type": (dict(method="personalize_anything", mask=np.ones((64, 64)), subjects=["face.png"]),
                           ParameterError, "editflow.Subject"),
    "too many subjects": (dict(method="personalize_anything", mask=np.ones((64, 64)),
                               subjects=[editflow.Subject(Image.new("RGB", (8, 8)), np.ones((8, 8)))] * 63),
                          LimitError, "65 batch rows in one model call is over the limit max_rows=64"),
    "n_avg with few edit steps": (dict(steps=100, n_max=10, n_min=9, n_avg=40), LimitError,
                                  "80 batch rows in one model call"),
    "subjects on flowedit": (dict(subjects=[editflow.Subject(Image.new("RGB", (8, 8)), np.ones((8, 8)))]),
                             ParameterError, "takes no extra subjects"),
    "limits wrong type": (dict(limits={"max_steps": 5}), ParameterError, "limits must be an editflow.Limits"),
    "image number": (dict(image=42), EditflowError, "image must be a PIL image or a file path"),
    "image 0x0": (dict(image=Image.new("RGB", (0, 0))), LimitError, "holds no pixel"),
    "image too large to edit": (dict(image=Image.new("L", (2100, 2100))), LimitError, "max_pixels"),
    "image missing": (dict(image="/nonexistent/cat.png"), EditflowError, "input image not found"),
    "progress text": (dict(progress="yes"), ParameterError, "progress must be True or False"),
    "unknown parameter": (dict(bogus=1), ParameterError, "unknown parameter 'bogus'"),
    "bool for int": (dict(n_avg=True), ParameterError, "parameter 'n_avg' must be int"),
}


@pytest.mark.parametrize("case", sorted(API_CASES))
def test_api_refuses_before_any_model_computation(tiny, case):
    kwargs, exc_type, needle = API_CASES[case]
    api_refusal(tiny, exc_type, needle, **kwargs)


def test_api_personalize_subject_fields_are_checked(tiny):
    subject = editflow.Subject(Image.new("RGB", (64, 64)), np.ones((64, 64)), shift=(1.5, 0))
    mask = np.ones((64, 64))
    api_refusal(tiny, ParameterError, "shift must be (dx, dy)", method="personalize_anything", mask=mask,
                subjects=[subject])
    subject = editflow.Subject(Image.new("RGB", (64, 64)), np.ones((64, 64)), tau=float("nan"))
    api_refusal(tiny, ParameterError, "tau must be a number in [0, 1]", method="personalize_anything", mask=mask,
                subjects=[subject])


def test_api_numpy_scalars_are_numbers(tiny):
    """``np.int64(2)`` steps and an ``np.float64`` guidance run like 2 and 1.5."""
    image = Image.new("RGB", (64, 64), (40, 80, 120))
    a = editflow.edit(tiny, image, SRC, TAR, seed=np.int64(3), steps=np.int64(2), source_guidance=np.float64(1.5))
    b = editflow.edit(tiny, image, SRC, TAR, seed=3, steps=2, source_guidance=1.5)
    assert torch.equal(a.latents, b.latents) and type(a.params["steps"]) is int


def test_api_limits_argument_and_environment(tiny, monkeypatch):
    assert editflow.Limits is Limits and issubclass(editflow.LimitError, editflow.ParameterError)
    image = Image.new("RGB", (64, 64), (40, 80, 120))
    # FlowEdit at 4 steps on FLUX: n_max = round(4 * 24 / 28) = 3 calls
    api_refusal(tiny, LimitError, "an edit of 3 model calls is over the limit max_nfe=2", image=image,
                limits=Limits(max_nfe=2), steps=4)
    monkeypatch.setenv("EDITFLOW_LIMIT_MAX_NFE", "2")
    api_refusal(tiny, LimitError, "max_nfe=2", image=image, steps=4)
    assert editflow.edit(tiny, image, SRC, TAR, steps=4, limits=Limits(max_nfe=3)).nfe.calls == 3
    monkeypatch.setenv("EDITFLOW_LIMIT_MAX_NFE", "lots")
    with pytest.raises(ParameterError, match="EDITFLOW_LIMIT_MAX_NFE expects a whole number"):
        Limits.from_env()


def test_default_limits_admit_paper_defaults_at_two_megapixels_on_flux():
    """The defaults never bite a paper-default edit at 2 MP on FLUX (1440 x 1440 rounds to itself)."""
    from editflow.api import check_request
    from editflow.methods import METHODS

    limits = Limits()
    limits.check_input(1440, 1440, "a 2 MP photo")
    limits.check_working(1440, 1440, "flux-dev")
    for name, m in METHODS.items():
        mask = np.ones((8, 8)) if m.params.NEEDS_MASK else None
        for family in m.params.FAMILIES:
            check_request(family, name, SRC, TAR, {}, mask=mask, limits=limits)


# -- reading images: one rule everywhere -----------------------------------------------------------


def test_sixteen_bit_images_are_scaled_not_clipped(tmp_path):
    for mode, value, expected in (("I;16", 40000, round(40000 / 65535 * 255)), ("I", 20000, round(20000 / 65535 * 255)),
                                  ("F", 0.25, round(0.25 * 255))):
        path = tmp_path / f"{mode.replace(';', '')}.tiff"
        Image.new(mode, (6, 4), value).save(path)
        rgb = np.asarray(load_image(path))
        assert rgb.shape == (4, 6, 3) and (rgb == expected).all(), (mode, rgb[0, 0])
    png = tmp_path / "deep.png"
    Image.fromarray(np.full((4, 6), 40000, np.uint16)).save(png)  # clipping would give 255
    assert (np.asarray(load_image(png)) == round(40000 / 65535 * 255)).all()
    levels = np.zeros((4, 6), np.uint16)
    levels[:, :3] = 40000  # left half above 50%, right half black
    half = Image.fromarray(levels)
    assert half.mode.startswith("I;16")
    mask = load_mask(half, (6, 4))
    assert mask[:, :3].all() and not mask[:, 3:].any()


def test_exif_orientation_is_applied(tmp_path):
    im = Image.new("RGB", (40, 20), (255, 0, 0))
    im.paste((0, 0, 255), (0, 0, 20, 20))  # left half blue
    exif = im.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    path = tmp_path / "portrait.jpg"
    im.save(path, exif=exif.tobytes(), quality=95)
    upright = load_image(path)
    assert upright.size == (20, 40)
    top, bottom = np.asarray(upright)[2, 10], np.asarray(upright)[-3, 10]
    assert top[2] > 200 and bottom[0] > 200  # the blue half is on top once turned
    assert editflow.images.as_image(upright).size == (20, 40)  # applying twice does not turn it again


def test_transparency_is_composited_on_white_everywhere(tmp_path, tiny):
    rgba = Image.new("RGBA", (64, 64), (255, 0, 0, 0))  # fully transparent red
    rgba.paste((0, 0, 255, 255), (0, 0, 32, 64))  # an opaque blue half
    path = tmp_path / "cutout.png"
    rgba.save(path)
    for rgb in (load_image(path), editflow.images.as_image(rgba), editflow.images.to_rgb(rgba.convert("LA"))):
        arr = np.asarray(rgb)
        assert (arr[:, 40:] == 255).all()  # the hidden red is never seen
    assert tuple(np.asarray(load_image(path))[0, 0]) == (0, 0, 255)
    a = editflow.edit(tiny, path, SRC, TAR, steps=2)
    b = editflow.edit(tiny, load_image(path), SRC, TAR, steps=2)
    assert torch.equal(a.latents, b.latents)  # a file and its loaded image edit the same


# -- the other commands ----------------------------------------------------------------------------


def test_bench_run_takes_item_count_and_work_limits_through_limit(tmp_path):
    from editflow.world.io import write_edits

    data = write_edits(tmp_path / "set", 2, seed=0, kinds=["color"])
    out = tmp_path / "run"
    base = ["bench", "run", "--data", str(data), "--out", str(out), "--model", "tiny-flux", "-q"]
    one_line_error(runner.invoke(app, [*base, "--set", "steps=2000"]), "max_steps=1000")
    one_line_error(runner.invoke(app, [*base, "--limit", "max_steps=3", "--set", "steps=4"]), "max_steps=3")
    one_line_error(runner.invoke(app, [*base, "--limit", "1", "--limit", "2"]), "give one item count")
    one_line_error(runner.invoke(app, [*base, "--limit", "some"]), "--limit expects a number of items N or NAME=VALUE")
    assert not out.exists()  # refused before the output folder was made
    # the regeneration baseline's 28 steps are checked with the rest, before anything is written
    msg = one_line_error(runner.invoke(app, [*base, "--limit", "max_steps=4", "--set", "steps=4"]),
                         "regeneration baseline's 28 steps")
    assert "--baselines identity,vae_ceiling" in msg
    assert not out.exists()
    r = runner.invoke(app, [*base, "--limit", "1", "--limit", "max_steps=4", "--set", "steps=4", "--baselines", "none"])
    assert r.exit_code == 0, r.output
    assert len((out / "results.r0.jsonl").read_text().splitlines()) == 1


def test_world_and_vital_layer_sizes_are_bounded(tmp_path):
    one_line_error(runner.invoke(app, ["world", "sample", "--n", "2", "--size", "100000", "-o", str(tmp_path / "w")]),
                   "max_input_pixels")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\n")
    base = ["vital-layers", "--prompts", str(prompts), "--out", str(tmp_path / "layers.json"), "--model", "tiny-flux"]
    one_line_error(runner.invoke(app, [*base, "--size", "50000"]), "max_pixels")
    one_line_error(runner.invoke(app, [*base, "--steps", "5000"]), "max_steps")
    one_line_error(runner.invoke(app, [*base, "--seeds", "0,x"]), "--seeds expects whole numbers")
    assert leftovers(tmp_path, {"prompts.txt"}) == []


def test_generate_is_bounded_too(tiny):
    before = tiny.counter.total.copy()
    with pytest.raises(LimitError, match="max_pixels"):
        editflow.generate(tiny, "a red circle", 4096, 4096)
    with pytest.raises(LimitError, match="max_steps=2"):
        editflow.generate(tiny, "a red circle", 64, 64, steps=3, limits=Limits(max_steps=2))
    with pytest.raises(ParameterError, match="height must be a positive whole number"):
        editflow.generate(tiny, "a red circle", "64", 64)
    with pytest.raises(ParameterError, match="prompt is not valid text"):
        editflow.generate(tiny, "a \udc80", 64, 64)
    assert tiny.counter.total == before


def test_bench_mask_files_are_checked_before_the_model_loads(tmp_path, no_model):
    from editflow.world.io import write_edits

    data = write_edits(tmp_path / "set", 2, seed=0, kinds=["color"])
    png_header_only(tmp_path / "set" / "mask" / "00001.png", 20_000, 20_000)
    r = runner.invoke(app, ["bench", "run", "--data", str(data), "--out", str(tmp_path / "run"), "--methods",
                            "kv_edit", "--model", "tiny-flux", "-q"])
    msg = one_line_error(r, "max_input_pixels")
    assert "item '00001'" in msg and not (tmp_path / "run").exists()


def test_pillow_bound_named_when_the_limit_is_raised_past_it(tmp_path):
    from editflow.images import open_checked

    bomb = png_header_only(tmp_path / "bomb.png", 20_000, 20_000)  # 400 MP: over Pillow's 179 MP bound
    with pytest.raises(LimitError, match="max_input_pixels=16777216"):
        open_checked(bomb, "image", Limits())
    with pytest.raises(EditflowError, match="raise PIL.Image.MAX_IMAGE_PIXELS too"):
        open_checked(bomb, "image", Limits(max_input_pixels=10**9))
