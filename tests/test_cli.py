"""The command line: outputs, and one-line errors that leave no file behind."""

import pytest
from PIL import Image
from typer.testing import CliRunner

from editflow.cli import app

runner = CliRunner()


@pytest.fixture()
def photo(tmp_path):
    path = tmp_path / "photo.png"
    Image.new("RGB", (100, 70), (90, 120, 200)).save(path)
    return path


def _edit(*args):
    # The tiny model is named explicitly (it is never the default); a later --model overrides it.
    return runner.invoke(app, ["edit", "--model", "tiny-flux", *map(str, args)])


def test_edit_writes_png_of_input_size_and_before_after(tmp_path, photo):
    out, cmp = tmp_path / "out.png", tmp_path / "cmp.png"
    r = _edit(photo, "-s", "a blue image", "-t", "a red image", "--steps", "4", "-o", out, "--compare", cmp,
              "--set", "n_avg=2", "--set", "source_guidance=2")
    assert r.exit_code == 0, r.output
    with Image.open(out) as im:
        assert im.size == (100, 70) and im.format == "PNG"
    with Image.open(cmp) as im:
        assert im.size[0] > 200 and im.size[1] == 70
    assert "resizing 100x70 to 96x64" in r.stderr
    assert "noise" in r.stderr  # the tiny default model says so
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cmp.png", "out.png", "photo.png"]  # no temp files


def test_ode_inversion_from_the_cli(tmp_path, photo):
    out = tmp_path / "o.jpg"
    r = _edit(photo, "-s", "a", "-t", "b", "--method", "ode_inversion", "--steps", "3", "-o", out, "-q")
    assert r.exit_code == 0, r.output
    assert Image.open(out).size == (100, 70)


@pytest.mark.parametrize(
    "case,needle",
    [
        ("missing", "not found"),
        ("not_image", "not an image"),
        ("method", "unknown method 'nope'"),
        ("param", "unknown parameter 'bogus'"),
        ("type", "parameter 'n_avg' expects int"),
        ("range", "n_min <= n_max"),
        ("model", "unknown model 'no-such-model'"),
        ("hub", "black-forest-labs/FLUX.1-dev"),
        ("suffix", "must end in one of"),
    ],
)
def test_bad_input_fails_with_one_line_and_no_output(tmp_path, photo, case, needle):
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    out = tmp_path / ("out.gif" if case == "suffix" else "out.png")
    args = {
        "missing": [tmp_path / "absent.png"],
        "not_image": [text],
        "method": [photo, "--method", "nope"],
        "param": [photo, "--set", "bogus=1"],
        "type": [photo, "--set", "n_avg=two"],
        "range": [photo, "--set", "n_max=3", "--set", "n_min=5"],
        "model": [photo, "--model", "no-such-model"],
        "hub": [photo, "--model", "black-forest-labs/FLUX.1-dev"],
        "suffix": [photo],
    }[case]
    r = _edit(*args, "-s", "a", "-t", "b", "-o", out)
    assert r.exit_code == 2
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], r.stderr
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.suffix == ".tmp"]


def test_hub_id_error_says_how_to_get_it(tmp_path, photo):
    r = _edit(photo, "-s", "a", "-t", "b", "-o", tmp_path / "o.png", "--model", "black-forest-labs/FLUX.1-dev")
    assert "hf download black-forest-labs/FLUX.1-dev" in r.stderr and "local pipeline folder" in r.stderr


def test_methods_lists_parameters_defaults_and_papers():
    r = runner.invoke(app, ["methods"])
    assert r.exit_code == 0
    assert "flowedit" in r.stdout and "ode_inversion" in r.stdout
    assert "n_max = 24" in r.stdout and "target_guidance = 5.5" in r.stdout and "arXiv 2412.08629" in r.stdout


def test_default_model_is_used_when_none_is_given(tmp_path, photo):
    from editflow.models.zoo import shapes_available

    r = runner.invoke(app, ["edit", str(photo), "-s", "a", "-t", "b", "-o", str(tmp_path / "o.png"), "-q"])
    if shapes_available():
        assert r.exit_code == 0, r.output
    else:
        assert r.exit_code == 2 and "'shapes'" in r.stderr and not (tmp_path / "o.png").exists()


def test_models_lists_names():
    r = runner.invoke(app, ["models"])
    assert r.exit_code == 0
    for name in ("shapes", "tiny-flux", "flux-dev", "black-forest-labs/FLUX.1-schnell"):
        assert name in r.stdout


def test_demo_writes_a_scored_grid(tmp_path):
    out = tmp_path / "demo.png"
    r = runner.invoke(app, ["demo", "--model", "tiny-flux", "-o", str(out), "--seed", "2", "--methods", "flowedit"])
    assert r.exit_code == 0, r.output
    with Image.open(out) as im:
        assert im.size == (3 * 192 + 2 * 4, 192 + 44)  # source | ground truth | flowedit
    assert "flowedit" in r.stdout and "psnr outside mask" in r.stdout and "->" in r.stdout


@pytest.mark.parametrize("args,needle", [(["--kind", "bogus"], "unknown edit kind"),
                                         (["--methods", "flowedit,nope"], "unknown method 'nope'")])
def test_demo_rejects_bad_options(tmp_path, args, needle):
    r = runner.invoke(app, ["demo", "--model", "tiny-flux", "-o", str(tmp_path / "d.png"), *args])
    assert r.exit_code == 2 and needle in r.stderr and not (tmp_path / "d.png").exists()


def test_solvers_lists_each_solver_with_its_cost():
    r = runner.invoke(app, ["solvers"])
    assert r.exit_code == 0
    for line in ("rf_solver          order 2  NFE for 10 steps:  20", "fireflow           order 2  NFE for 10 steps:  11",
                 "euler              order 1  NFE for 10 steps:  10"):
        assert line in r.stdout
    assert "nudged_<name>" in r.stdout


def test_rf_inversion_and_solver_choice_from_the_cli(tmp_path, photo):
    out = tmp_path / "o.png"
    r = _edit(photo, "-s", "a", "-t", "b", "--method", "rf_inversion", "--steps", "3", "--set", "eta=1.0",
              "--set", "sde=true", "-o", out, "-q")
    assert r.exit_code == 0, r.output
    r = _edit(photo, "-s", "a", "-t", "b", "--method", "ode_inversion", "--steps", "3", "--set", "solver=fireflow",
              "-o", out, "-q")
    assert r.exit_code == 0, r.output
    r = _edit(photo, "-s", "a", "-t", "b", "--method", "ode_inversion", "--set", "solver=heun", "-o", tmp_path / "x.png")
    assert r.exit_code == 2 and "unknown solver 'heun'" in r.output and not (tmp_path / "x.png").exists()


def test_kv_edit_with_a_mask_from_the_cli(tmp_path, photo):
    out = tmp_path / "o.png"
    mask = tmp_path / "mask.png"
    m = Image.new("L", (50, 35))  # any size: resized to the image
    m.paste(255, (10, 10, 30, 25))
    m.save(mask)
    r = _edit(photo, "-s", "a", "-t", "b", "--method", "kv_edit", "--steps", "3", "--set", "skip=0", "--mask", mask,
              "-o", out, "-q")
    assert r.exit_code == 0, r.output
    assert Image.open(out).size == (100, 70)
    r = _edit(photo, "-s", "a", "-t", "b", "--method", "kv_edit", "--steps", "3", "-o", tmp_path / "x.png")
    assert r.exit_code == 2 and "kv_edit needs a mask" in r.output and not (tmp_path / "x.png").exists()
    assert "--mask PATH" in r.output
    r = _edit(photo, "-s", "a", "-t", "b", "--method", "kv_edit", "--mask", tmp_path / "none.png", "-o", tmp_path / "x.png")
    assert r.exit_code == 2 and "mask file not found" in r.output


def test_automatic_mask_from_the_cli(tmp_path, photo):
    out = tmp_path / "o.png"
    r = _edit(photo, "-s", "a red circle", "-t", "a blue square", "--method", "kv_edit", "--steps", "3", "--set",
              "skip=0", "--mask", "auto", "-o", out, "-q")
    assert r.exit_code == 0, r.output
    assert Image.open(out).size == (100, 70)


def test_personalize_subjects_from_the_cli_match_the_api(tmp_path, photo):
    import numpy as np

    import editflow

    known, obj, ref = tmp_path / "known.png", tmp_path / "obj.png", tmp_path / "ref.png"
    m = Image.new("L", (100, 70))
    m.paste(255, (0, 0, 50, 70))
    m.save(known)
    Image.eval(m, lambda v: 255 - v).save(obj)
    Image.new("RGB", (100, 70), (250, 20, 20)).save(ref)
    out = tmp_path / "o.png"
    r = _edit(photo, "-s", "a", "-t", "b", "--method", "personalize_anything", "--steps", "3", "--mask", known,
              "--subject", f"{ref},{obj},tau=0.0,dx=0,prompt=a red, bright image", "-o", out, "-q")
    assert r.exit_code == 0, r.output
    api = editflow.edit("tiny-flux", Image.open(photo), "a", "b", method="personalize_anything", steps=3, mask=known,
                        subjects=[editflow.Subject(Image.open(ref), obj, "a red, bright image", tau=0.0)])
    assert np.array_equal(np.asarray(Image.open(out)), np.asarray(api.image))
    for subject, message in [(f"{ref},{obj},scale=2", "unknown or empty field 'scale=2'"),
                             (f"{ref}", "write IMAGE,MASK"), (f"{ref},{obj},tau=x", "tau expects a number"),
                             (f"{tmp_path / 'no.png'},{obj}", "not found")]:
        r = _edit(photo, "-s", "a", "-t", "b", "--method", "personalize_anything", "--mask", known,
                  "--subject", subject, "-o", tmp_path / "x.png")
        assert r.exit_code == 2 and message in r.output, (subject, r.output)
    r = _edit(photo, "-s", "a", "-t", "b", "--subject", f"{ref},{obj}", "-o", tmp_path / "x.png")
    assert r.exit_code == 2 and "flowedit takes no extra subjects" in r.output and not (tmp_path / "x.png").exists()


def test_speed_options_of_edit(tmp_path, photo):
    out = tmp_path / "o.png"
    r = _edit(photo, "-s", "a", "-t", "b", "--steps", "3", "--attention", "math", "-o", out, "-q")
    assert r.exit_code == 0, r.output
    r = _edit(photo, "-s", "a", "-t", "b", "--attention", "warp", "-o", tmp_path / "x.png")
    assert r.exit_code == 2 and "unknown attention backend 'warp'" in r.output and not (tmp_path / "x.png").exists()
