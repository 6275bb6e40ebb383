"""`editflow batch`: 3 images x 4 target prompts share their inversion and FlowEdit's source rows,
equal the 12 separate edits bit for bit, and survive kill -9; bad manifests are one line."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import editflow
from editflow.methods import get_method
from editflow.batch import read_manifest, run_batch
from editflow.bench.runner import read_records
from editflow.errors import EditflowError

TARGETS = {
    "red": ["a blue square", "a green square", "a blue circle", "a yellow triangle"],
    "sky": ["a night sky", "a sunset sky", "a stormy sky", "a pink sky"],
    "dots": ["grey dots", "red stripes", "a chessboard", "blue dots"],
}
VOLATILE = {"seconds", "rank"}


def _manifest(root, method, size=64, **extra):
    rng = np.random.default_rng(7)
    rows = []
    for name, targets in TARGETS.items():
        image = root / "photos" / f"{name}.png"
        image.parent.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(image)
        rows.append({"image": f"photos/{name}.png", "source_prompt": f"a {name} picture", "target_prompts": targets,
                     "method": method, "seed": 11, **extra})
    path = root / f"{method}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _env():
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        env.pop(k, None)
    return env


def _by_target(out):
    return {(r["id"], r["target_index"]): r for r in read_records(out)}


@pytest.mark.parametrize("method", ["flowedit", "ode_inversion", "rf_edit"])
def test_batch_shares_work_and_equals_twelve_separate_edits(tiny, tmp_path, method):
    manifest = _manifest(tmp_path, method)
    out = tmp_path / "out"
    run_batch(manifest, out, "tiny-flux", device="cpu", progress=False)
    records = _by_target(out)
    assert len(records) == 12
    p = get_method(method).params.for_family("flux")
    single = get_method(method).expected_nfe(p)
    for name, targets in TARGETS.items():
        row = [records[(f"photos/{name}", k)] for k in range(4)]
        if method == "flowedit":
            # one pass: each call evaluates the shared source row once beside the 4 target rows
            assert all(r["targets_in_pass"] == 4 for r in row)
            assert row[0]["nfe_calls"] == single.calls == p.n_max and row[0]["nfe_rows"] == 5 * p.n_max
        else:
            # one inversion per image: the first target pays for it (half the calls), the other three hit the cache
            assert [r["inversion_cached"] for r in row] == [False, True, True, True]
            assert row[0]["nfe_calls"] == single.calls
            assert [r["nfe_calls"] for r in row[1:]] == [single.calls // 2] * 3
        for k, target in enumerate(targets):
            alone = editflow.edit(tiny, tmp_path / "photos" / f"{name}.png", f"a {name} picture", target, method=method,
                                  seed=11)
            assert np.array_equal(np.asarray(Image.open(out / row[k]["image"])), np.asarray(alone.image)), (name, k)
    assert all(r["params"] == p.to_dict() for r in records.values())  # the full hyperparameters
    run_batch(manifest, out, "tiny-flux", device="cpu", progress=False)  # a second run finds nothing to do
    assert len(read_records(out)) == 12


def _cmd(manifest, out):
    return [sys.executable, "-m", "editflow", "batch", str(manifest), "-o", str(out), "--model", "tiny-flux",
            "--device", "cpu", "-q"]


def test_kill_and_resume_loses_nothing(tmp_path, kill_midway):
    manifest = _manifest(tmp_path, "flowedit", size=256)
    full = tmp_path / "full"
    subprocess.run(_cmd(manifest, full), check=True, env=_env(), timeout=300)
    out = tmp_path / "killed"
    shard = out / "results.r0.jsonl"
    kill_midway(_cmd(manifest, out), _env(), shard, 4)
    written = len(read_records(out))
    assert 4 <= written < 12, written  # cut midway
    with open(shard, "ab") as f:  # a crash mid-write leaves a cut line
        f.write(b'{"key": "cut')
    subprocess.run(_cmd(manifest, out), check=True, env=_env(), timeout=300)
    a, b = _by_target(full), _by_target(out)
    assert a.keys() == b.keys() and len(b) == 12 and len(read_records(out)) == 12
    for key, ra in a.items():
        rb = b[key]
        assert {k: v for k, v in ra.items() if k not in VOLATILE | {"targets_in_pass", "nfe_rows"}} == \
               {k: v for k, v in rb.items() if k not in VOLATILE | {"targets_in_pass", "nfe_rows"}}
        assert (full / ra["image"]).read_bytes() == (out / rb["image"]).read_bytes()


def test_two_processes_take_every_row_once(tmp_path):
    manifest = _manifest(tmp_path, "flowedit")
    out = tmp_path / "two"
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "editflow", "batch",
                    str(manifest), "-o", str(out), "--model", "tiny-flux", "--device", "cpu", "-q"],
                   check=True, env=_env(), timeout=300, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    records = read_records(out)
    assert sorted(p.name for p in out.glob("results*.jsonl")) == ["results.r0.jsonl", "results.r1.jsonl"]
    assert len(records) == 12 and len({(r["id"], r["target_index"]) for r in records}) == 12
    assert {r["rank"] for r in records} == {0, 1}


def test_bad_manifests_are_one_line_before_anything_is_written(tmp_path):
    manifest = _manifest(tmp_path, "flowedit")
    Image.new("L", (64, 64), 0).save(tmp_path / "photos" / "black.png")
    good = [json.loads(line) for line in manifest.read_text().splitlines()]
    cases = [
        ({"target_prompts": []}, "target_prompts is empty"),
        ({"target_prompts": "a dog"}, "must be a list of strings"),
        ({"image": "photos/none.png"}, "image 'photos/none.png' not found"),
        ({"method": "kv_edit"}, "needs a mask"),
        ({"method": "nope"}, "unknown method 'nope'"),
        ({"seed": -1}, "seed must be a whole number"),
        ({"method": "kv_edit", "mask": "photos/black.png"}, "selects nothing"),
        ({"colour": "red"}, "unknown key 'colour'"),
        ({"params": {"n_max": 99}}, "n_max"),
    ]
    bad = tmp_path / "bad.jsonl"
    for change, message in cases:
        rows = [dict(good[0], **change), *good[1:]]
        bad.write_text("".join(json.dumps(r) + "\n" for r in rows))
        with pytest.raises(EditflowError, match=message) as err:
            run_batch(bad, tmp_path / "o", "tiny-flux", device="cpu", progress=False)
        assert "\n" not in str(err.value) and not (tmp_path / "o").exists()
    # the command line: that line, exit status 2, no folder
    done = subprocess.run(_cmd(bad, tmp_path / "o"), env=_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stderr.startswith("error: ") and "n_max" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and not (tmp_path / "o").exists()
    twice = tmp_path / "twice.jsonl"
    twice.write_text(json.dumps(good[0]) + "\n" + json.dumps(good[0]) + "\n")
    with pytest.raises(EditflowError, match="also the id of"):
        read_manifest(twice)


def test_yaml_manifest_with_one_target_and_a_mask(tmp_path):
    _manifest(tmp_path, "flowedit")
    mask = tmp_path / "photos" / "mask.png"
    m = np.zeros((64, 64), np.uint8)
    m[16:48, 16:48] = 255
    Image.fromarray(m).save(mask)
    (tmp_path / "m.yaml").write_text("- image: photos/red.png\n  source_prompt: a red picture\n"
                                     "  target_prompt: a blue picture\n  mask: photos/mask.png\n  method: kv_edit\n"
                                     "  params: {steps: 6, skip: 1}\n  id: red-kv\n")
    rows = read_manifest(tmp_path / "m.yaml")
    assert rows[0].id == "red-kv" and rows[0].targets == ["a blue picture"] and rows[0].mask == mask
    run_batch(tmp_path / "m.yaml", tmp_path / "out", "tiny-flux", device="cpu", progress=False)
    (record,) = read_records(tmp_path / "out")
    assert record["params"]["steps"] == 6 and record["method"] == "kv_edit"
