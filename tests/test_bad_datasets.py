"""Bad datasets and bad bench runs are refused with one line that names the file, the item and
the fix, before any model loads and before anything is written (the issue "every bad input
refused cleanly"); the fixes that go with them (unique FlowEdit ids, the run lock, a full disk)."""

import errno
import json
import subprocess
import sys

import pytest
from PIL import Image
from typer.testing import CliRunner

from editflow.bench import runner
from editflow.bench.datasets import load_dataset, read_flowedit
from editflow.bench.runner import read_records, run
from editflow.cli import app
from editflow.errors import EditflowError

FAST = ["steps=2"]  # tiny-flux edits in well under a second


def _png(path, color=(120, 30, 200)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (32, 32), color).save(path, format="PNG")


def _write(path, content):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


@pytest.fixture()
def no_model(monkeypatch):
    """Loading a model fails the test: every refusal here must come before it."""
    def boom(*args, **kwargs):
        raise AssertionError("a model was loaded before the input was checked")

    monkeypatch.setattr("editflow.models.zoo.load_model", boom)


def _refused(call, *names) -> str:
    """The message of the EditflowError ``call`` raises: one line, naming every one of ``names``."""
    with pytest.raises(EditflowError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message and "\r" not in message and message == message.strip()
    for name in names:
        assert name in message, (name, message)
    return message


def _nothing_under(path) -> bool:
    return not path.exists() or not any(path.iterdir())


# -- the three formats -------------------------------------------------------------------------------

GOOD_YAML = "- input_img: Images/cat.png\n  source_prompt: a cat\n  target_prompts: [a dog]\n"


def flowedit(tmp_path, text):
    _png(tmp_path / "data" / "Images" / "cat.png")
    return _write(tmp_path / "data" / "set.yaml", text)


def _pie_item(**changes):
    item = {"image_path": "a.jpg", "original_prompt": "a [cat]", "editing_prompt": "a [dog]",
            "editing_instruction": "", "editing_type_id": "1", "blended_word": "cat dog", "mask": [0, 5]}
    item.update(changes)
    return {k: v for k, v in item.items() if v is not None}


def pie(tmp_path, content):
    _png(tmp_path / "data" / "annotation_images" / "a.jpg")
    text = content if isinstance(content, (str, bytes)) else json.dumps(content)
    return _write(tmp_path / "data" / "mapping_file.json", text)


def _row(id="00000", **changes):
    row = {"id": id, "kind": "color", "source_image": "source/00000.png", "target_image": "target/00000.png",
           "mask": "mask/00000.png", "source_prompt": "a red circle", "target_prompt": "a blue circle"}
    row.update(changes)
    return json.dumps({k: v for k, v in row.items() if v is not None})


def shapes(tmp_path, lines):
    for folder in ("source", "target", "mask"):
        _png(tmp_path / "data" / folder / "00000.png")
    text = lines if isinstance(lines, bytes) else "\n".join(lines) + "\n"
    return _write(tmp_path / "data" / "edits.jsonl", text)


SCENE = {"background": "gray", "texture": None,
         "objects": [{"shape": "circle", "color": "red", "size": "large", "position": "center"}]}

BAD_DATASETS = [
    # FlowEdit yaml
    pytest.param(flowedit, "- input_img: Images/cat.png\n  source_prompt: [a cat\n  target_prompts: [a dog]\n",
                 ["set.yaml", "not valid YAML", "line"], id="yaml-syntax"),
    pytest.param(flowedit, "input_img: Images/cat.png\nsource_prompt: a cat\n",
                 ["set.yaml", "not a list of entries"], id="yaml-top-level-mapping"),
    pytest.param(flowedit, GOOD_YAML + "- Images/cat.png\n", ["set.yaml entry 1", "not a mapping"],
                 id="yaml-entry-not-mapping"),
    pytest.param(flowedit, "- source_prompt: a cat\n  target_prompts: [a dog]\n",
                 ["set.yaml entry 0", "input_img"], id="yaml-missing-image"),
    pytest.param(flowedit, GOOD_YAML + "- input_img: Images/cat.png\n  target_prompts: [a fox]\n",
                 ["set.yaml entry 1", "'source_prompt'"], id="yaml-missing-source-prompt"),
    pytest.param(flowedit, "- input_img: Images/cat.png\n  source_prompt: 42\n  target_prompts: [a dog]\n",
                 ["set.yaml entry 0", "source_prompt must be a string", "int 42"], id="yaml-prompt-not-string"),
    pytest.param(flowedit, "- input_img: Images/cat.png\n  source_prompt: a red circle\n  target_prompts: a blue circle\n",
                 ["set.yaml entry 0", "target_prompts must be a list of strings", "write target_prompts: [a blue circle]"],
                 id="yaml-target-prompts-string"),
    pytest.param(flowedit, "- input_img: Images/cat.png\n  source_prompt: a cat\n  target_prompts: [a dog, 7]\n",
                 ["set.yaml entry 0", "target_prompts[1]", "int 7"], id="yaml-target-prompt-not-string"),
    pytest.param(flowedit, "- input_img: Images/cat.png\n  source_prompt: a cat\n  target_prompts: []\n",
                 ["set.yaml entry 0", "target_prompts is empty"], id="yaml-no-target-prompt"),
    pytest.param(flowedit, GOOD_YAML + "  target_codes: dog\n",
                 ["set.yaml entry 0", "target_codes must be a list", "write target_codes: [dog]"], id="yaml-codes-string"),
    pytest.param(flowedit, GOOD_YAML.replace("[a dog]", "[a dog, a fox]") + "  target_codes: [x, x]\n",
                 ["set.yaml entry 0", "'Images/cat/x'", "also the id of"], id="yaml-duplicate-code"),
    pytest.param(flowedit, GOOD_YAML + GOOD_YAML, ["set.yaml entry 1", "also the id of", "set.yaml entry 0"],
                 id="yaml-image-listed-twice"),
    pytest.param(flowedit, GOOD_YAML.replace("cat.png", "lion.png"), ["set.yaml entry 0", "'Images/lion.png' not found"],
                 id="yaml-image-missing"),
    pytest.param(flowedit, "[]\n", ["set.yaml", "holds no edit"], id="yaml-empty"),
    pytest.param(flowedit, GOOD_YAML.replace("a cat", "un caf\xe9").encode("latin-1"), ["set.yaml", "not UTF-8"],
                 id="yaml-not-utf8"),
    # PIE-Bench mapping_file.json
    pytest.param(pie, '{\n  "000": {"image_path": "a.jpg",\n', ["mapping_file.json", "not valid JSON", "line 3"],
                 id="json-syntax"),
    pytest.param(pie, [_pie_item()], ["mapping_file.json", "not a mapping of id to item"], id="json-top-level-list"),
    pytest.param(pie, {"000": "a.jpg"}, ["mapping_file.json item '000'", "not a mapping"], id="json-item-not-mapping"),
    pytest.param(pie, {"000": _pie_item(), "111": _pie_item(editing_prompt=None)},
                 ["mapping_file.json item '111'", "'editing_prompt'"], id="json-missing-key"),
    pytest.param(pie, {"000": _pie_item(original_prompt=["a cat"])},
                 ["item '000'", "original_prompt must be a string"], id="json-prompt-not-string"),
    pytest.param(pie, {"000": _pie_item(editing_type_id=1.5)}, ["item '000'", "editing_type_id"], id="json-type-id-float"),
    pytest.param(pie, {"000": _pie_item(mask="0 5")}, ["item '000'", "mask must be a list of integers"],
                 id="json-mask-string"),
    pytest.param(pie, {"000": _pie_item(mask=[0, 5, 7])}, ["item '000'", "odd"], id="json-mask-odd"),
    pytest.param(pie, {"000": _pie_item(mask=[0, 5, -3, 2])}, ["item '000'", "mask[2] is negative"],
                 id="json-mask-negative"),
    pytest.param(pie, '{"000": ' + json.dumps(_pie_item()) + ', "000": ' + json.dumps(_pie_item(editing_prompt="a fox"))
                 + "}", ["mapping_file.json", "'000' appears twice"], id="json-duplicate-keys"),
    pytest.param(pie, {}, ["mapping_file.json", "holds no edit"], id="json-empty"),
    pytest.param(pie, json.dumps({"000": _pie_item(original_prompt="caf\xe9")}, ensure_ascii=False).encode("latin-1"),
                 ["mapping_file.json", "not UTF-8"], id="json-not-utf8"),
    # shapes edits.jsonl
    pytest.param(shapes, [_row(), "{not json"], ["edits.jsonl line 2", "not valid JSON"], id="jsonl-bad-line"),
    pytest.param(shapes, ["[1, 2]"], ["edits.jsonl line 1", "not a mapping"], id="jsonl-line-not-mapping"),
    pytest.param(shapes, [_row(target_prompt=None)], ["edits.jsonl line 1", "'target_prompt'"], id="jsonl-missing-key"),
    pytest.param(shapes, [_row(id=5)], ["edits.jsonl line 1", "id must be a string"], id="jsonl-id-not-string"),
    pytest.param(shapes, [_row(), _row(source_prompt="a red square")],
                 ["edits.jsonl line 2", "'00000' is also the id of", "edits.jsonl line 1"], id="jsonl-duplicate-id"),
    pytest.param(shapes, [_row("a/b"), _row("a__b")], ["edits.jsonl line 2", "a__b.png"], id="jsonl-same-image-file"),
    pytest.param(shapes, [_row(source_scene=SCENE, target_scene=dict(SCENE, background="plaid"))],
                 ["edits.jsonl line 1", "cannot be scored", "plaid"], id="jsonl-bad-scene"),
    pytest.param(shapes, (_row(source_prompt="cafe").replace("cafe", "caf\xe9") + "\n").encode("latin-1"), ["edits.jsonl", "not UTF-8"],
                 id="jsonl-not-utf8"),
]


@pytest.mark.parametrize("make, content, names", BAD_DATASETS)
def test_a_bad_dataset_is_refused_in_one_line_before_anything_loads(tmp_path, no_model, make, content, names):
    path = make(tmp_path, content)
    message = _refused(lambda: load_dataset(path), *names)
    out = tmp_path / "out"
    assert _refused(lambda: run(str(path), ["flowedit"], "tiny-flux", str(out), progress=False, baselines=())) == message
    assert not out.exists()  # nothing written


def test_the_good_versions_of_those_datasets_load(tmp_path):
    """The builders above make valid datasets when nothing is broken (so each case breaks one thing)."""
    assert [r.id for r in load_dataset(flowedit(tmp_path / "f", GOOD_YAML))] == ["Images/cat/0"]
    assert [r.id for r in load_dataset(pie(tmp_path / "p", {"000": _pie_item()}))] == ["000"]
    assert [r.id for r in load_dataset(shapes(tmp_path / "s", [_row(source_scene=SCENE, target_scene=SCENE)]))] == ["00000"]


# -- FlowEdit ids: one image name in two folders --------------------------------------------------------

def _two_cats(tmp_path):
    _png(tmp_path / "data" / "cats" / "cat.png", (200, 40, 40))
    _png(tmp_path / "data" / "dogs" / "cat.png", (40, 40, 200))
    return _write(tmp_path / "data" / "set.yaml", GOOD_YAML.replace("Images", "cats") + GOOD_YAML.replace("Images", "dogs"))


def test_one_image_name_in_two_folders_gives_two_ids_and_two_image_files(tmp_path):
    path = _two_cats(tmp_path)
    assert [r.id for r in read_flowedit(path)] == ["cats/cat/0", "dogs/cat/0"]
    run(str(path), ["flowedit"], "tiny-flux", str(tmp_path / "out"), FAST, device="cpu", progress=False, baselines=())
    rows = read_records(tmp_path / "out")
    assert sorted(r["item"] for r in rows) == ["cats/cat/0", "dogs/cat/0"]
    images = {r["image"] for r in rows}
    assert len(images) == 2 and all((tmp_path / "out" / i).is_file() for i in images)


# -- the runner's own checks -----------------------------------------------------------------------------

@pytest.mark.parametrize("changes, names", [
    pytest.param({"limit": 0}, ["--limit", "0"], id="limit-zero"),
    pytest.param({"limit": -2}, ["--limit", "-2"], id="limit-negative"),
    pytest.param({"seed": -1}, ["--seed", "-1"], id="seed-negative"),
    pytest.param({"seed": 2**64 - 1}, ["--seed", str(2**64 - 1), str(2**64 - 2)], id="seed-past-the-range"),
    pytest.param({"seed": "7"}, ["--seed", "'7'"], id="seed-not-int"),
    pytest.param({"methods": ["flowedit", "no_such_method"]}, ["no_such_method"], id="unknown-method"),
    pytest.param({"methods": []}, ["--methods"], id="no-method"),
    pytest.param({"sets": ["steps=many"]}, ["steps", "'many'"], id="set-wrong-type"),
    pytest.param({"sets": ["steps=0"]}, ["steps", ">= 1"], id="set-out-of-range"),
    pytest.param({"metrics": ["no_such_metric"]}, ["no_such_metric"], id="unknown-metric"),
])
def test_runner_arguments_are_checked_before_anything_is_written(tmp_path, no_model, changes, names):
    data = shapes(tmp_path, [_row("00000"), _row("00001")])
    kwargs = dict(data=str(data), methods=["flowedit"], model_name="tiny-flux", out=str(tmp_path / "out"),
                  progress=False) | changes
    _refused(lambda: run(**kwargs), *names)
    assert not (tmp_path / "out").exists()


def test_an_unreadable_image_is_refused_before_the_model_loads(tmp_path, no_model):
    data = shapes(tmp_path, [_row()])
    (tmp_path / "data" / "source" / "00000.png").write_bytes(b"not a png at all")
    _refused(lambda: run(str(data), ["flowedit"], "tiny-flux", str(tmp_path / "out"), progress=False, baselines=()),
             "item '00000'", "source/00000.png", "not an image")
    assert not (tmp_path / "out").exists()


def test_an_output_folder_that_cannot_be_made_is_one_line(tmp_path, no_model):
    data = shapes(tmp_path, [_row()])
    (tmp_path / "a-file").write_text("in the way")
    out = tmp_path / "a-file" / "out"
    _refused(lambda: run(str(data), ["flowedit"], "tiny-flux", str(out), progress=False, baselines=()),
             "cannot write", str(out), "pass another --out")


# -- the lock ---------------------------------------------------------------------------------------

HOLD = ("import fcntl, os, sys, time\n"
        "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)\n"
        "fcntl.flock(fd, fcntl.LOCK_EX)\n"
        "os.ftruncate(fd, 0); os.write(fd, str(os.getpid()).encode())\n"
        "print('held', flush=True)\n"
        "time.sleep(300)\n")


@pytest.fixture()
def held_lock(tmp_path):
    """A second process holding OUT/.lock.r0 as a running ``editflow bench run`` would."""
    out = tmp_path / "out"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out / ".lock.r0")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        yield out, holder
    finally:
        holder.kill()
        holder.wait()


def test_a_second_run_on_the_same_folder_is_refused_until_the_first_ends(tmp_path, monkeypatch, no_model, held_lock):
    out, holder = held_lock
    data = shapes(tmp_path, [_row()])
    _refused(lambda: run(str(data), ["flowedit"], "tiny-flux", str(out), FAST, device="cpu", progress=False, baselines=()),
             f"another editflow bench run (pid {holder.pid})", str(out), "rank 0", "pass another --out")
    assert sorted(p.name for p in out.iterdir()) == [".lock.r0"]  # no record, no image
    assert (out / ".lock.r0").read_text() == str(holder.pid)  # the holder's pid left alone

    holder.kill()  # the killed holder leaves its lock file behind: it must not block
    holder.wait()
    monkeypatch.undo()  # models may load again
    run(str(data), ["flowedit"], "tiny-flux", str(out), FAST, device="cpu", progress=False, baselines=())
    assert [r["item"] for r in read_records(out)] == ["00000"]


def test_another_rank_runs_beside_a_held_lock(tmp_path, monkeypatch, held_lock):
    out, holder = held_lock
    data = shapes(tmp_path, [_row("00000"), _row("00001")])
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    run(str(data), ["flowedit"], "tiny-flux", str(out), FAST, device="cpu", progress=False, baselines=())
    assert [(r["item"], r["rank"]) for r in read_records(out)] == [("00001", 1)]


# -- a full disk -------------------------------------------------------------------------------------

def _no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_while_saving_an_image_is_one_line_and_leaves_no_temporary_file(tmp_path, monkeypatch):
    data = shapes(tmp_path, [_row()])
    out = tmp_path / "out"

    def half_written(self, fp, *args, **kwargs):
        fp.write(b"\x89PNG\r\n\x1a\n half")
        _no_space()

    monkeypatch.setattr(Image.Image, "save", half_written)
    _refused(lambda: run(str(data), ["flowedit"], "tiny-flux", str(out), FAST, device="cpu", progress=False, baselines=()),
             str(out / "images"), "disk is full", "re-run", "resumes")
    assert not list(out.rglob("*.tmp")) and not list(out.rglob("*.png"))
    assert read_records(out) == []
    monkeypatch.undo()
    run(str(data), ["flowedit"], "tiny-flux", str(out), FAST, device="cpu", progress=False, baselines=())  # space freed: resumes
    assert len(read_records(out)) == 1


def test_a_full_disk_while_appending_a_record_is_one_line(tmp_path, monkeypatch):
    data = shapes(tmp_path, [_row()])
    out = tmp_path / "out"
    real_open = open

    def open_but_full(path, mode="r", *args, **kwargs):
        return _no_space() if "a" in mode else real_open(path, mode, *args, **kwargs)

    monkeypatch.setattr(runner, "open", open_but_full, raising=False)
    _refused(lambda: run(str(data), ["flowedit"], "tiny-flux", str(out), FAST, device="cpu", progress=False, baselines=()),
             str(out / "results.r0.jsonl"), "disk is full", "resumes")
    assert read_records(out) == []
    monkeypatch.undo()
    run(str(data), ["flowedit"], "tiny-flux", str(out), FAST, device="cpu", progress=False, baselines=())
    assert len(read_records(out)) == 1


# -- through the command line ------------------------------------------------------------------------

def _cli(data, out, *extra):
    return CliRunner().invoke(app, ["bench", "run", "--data", str(data), "--methods", "flowedit", "--out", str(out),
                                    "--model", "tiny-flux", "-q", *extra])


def _one_error_line(result, *names):
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    for name in names:
        assert name in lines[0], (name, lines[0])


@pytest.mark.parametrize("make, content, extra, names", [
    pytest.param(flowedit, "- input_img: Images/cat.png\n  source_prompt: a red circle\n  target_prompts: a blue circle\n",
                 [], ["set.yaml entry 0", "write target_prompts: [a blue circle]"], id="target-prompts-string"),
    pytest.param(flowedit, "- input_img: Images/cat.png\n  source_prompt: [a cat\n", [], ["set.yaml", "not valid YAML"],
                 id="bad-yaml"),
    pytest.param(pie, '{"000": {}, "000": {}}', [], ["mapping_file.json", "'000' appears twice"], id="duplicate-pie-keys"),
    pytest.param(shapes, [_row(), "{not json"], [], ["edits.jsonl line 2"], id="bad-jsonl-line"),
    pytest.param(shapes, [_row()], ["--limit", "0"], ["--limit"], id="limit-zero"),
])
def test_the_cli_prints_one_error_line(tmp_path, no_model, make, content, extra, names):
    data = make(tmp_path, content)
    result = _cli(data, tmp_path / "out", *extra)
    _one_error_line(result, *names)
    assert not (tmp_path / "out").exists()


def test_the_cli_names_the_run_that_holds_the_lock(tmp_path, no_model, held_lock):
    out, holder = held_lock
    result = _cli(shapes(tmp_path, [_row()]), out)
    _one_error_line(result, f"pid {holder.pid}", "pass another --out")
    assert _nothing_under(out / "images") and not (out / "results.r0.jsonl").exists()
