"""The benchmark runner: records, resume after a kill, process sharding, --set parsing."""

import json
import os
import subprocess
import sys

import pytest

from editflow.bench.runner import parse_sets, read_records
from editflow.errors import EditflowError

VOLATILE = {"seconds", "peak_memory_bytes", "rank"}


@pytest.fixture(scope="module")
def edit_set(tmp_path_factory):
    from editflow.world.io import write_edits

    root = tmp_path_factory.mktemp("set")
    write_edits(root, n=6, seed=5, kinds=("color", "shape"))
    return root


def _cmd(data, out, *extra):
    return [sys.executable, "-m", "editflow", "bench", "run", "--data", str(data), "--methods", "flowedit",
            "--model", "tiny-flux", "--out", str(out), "--set", "steps=24", "--device", "cpu", "-q",
            "--baselines", "identity,vae_ceiling", *extra]


def _stable(rows):
    return sorted((json.dumps({k: v for k, v in r.items() if k not in VOLATILE}, sort_keys=True) for r in rows))


def _env():
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        env.pop(k, None)
    return env


@pytest.fixture(scope="module")
def uninterrupted(edit_set, tmp_path_factory):
    out = tmp_path_factory.mktemp("full")
    subprocess.run(_cmd(edit_set, out), check=True, env=_env(), timeout=300)
    return read_records(out)


def test_a_run_writes_one_record_per_edit_with_metrics(uninterrupted, edit_set):
    assert len(uninterrupted) == 18 and len({r["key"] for r in uninterrupted}) == 18
    assert sorted({r["method"] for r in uninterrupted}) == ["flowedit", "identity", "vae_ceiling"]
    r = uninterrupted[0]
    assert r["method"] == "flowedit" and r["nfe_calls"] == r["params"]["n_max"] - r["params"]["n_min"]
    assert {"psnr", "ssim", "mse", "psnr_bg", "oracle_edit_correct"} <= set(r["metrics"])
    assert r["category"] in ("color", "shape") and r["image"].endswith(".png")


def test_killed_run_resumes_to_the_same_results_without_duplicates(edit_set, uninterrupted, tmp_path, kill_midway):
    out = tmp_path / "killed"
    shard = out / "results.r0.jsonl"
    pid = kill_midway(_cmd(edit_set, out), _env(), shard, 2, poll=0.05)
    written = len(read_records(out))
    assert 2 <= written < 18, written  # it really was cut midway
    assert (out / ".lock.r0").read_text().strip() == str(pid)  # the killed run's lock file stays: no block
    with open(shard, "ab") as f:  # and a crash mid-write leaves a cut line
        f.write(b'{"key": "cut-in-the-mid')
    subprocess.run(_cmd(edit_set, out), check=True, env=_env(), timeout=300)
    rows = read_records(out)
    assert len(rows) == 18 and len({r["key"] for r in rows}) == 18
    assert _stable(rows) == _stable(uninterrupted)
    subprocess.run(_cmd(edit_set, out), check=True, env=_env(), timeout=300)  # a third run adds nothing
    assert len(read_records(out)) == 18


def test_two_processes_cover_every_item_once(edit_set, uninterrupted, tmp_path):
    out = tmp_path / "two"
    cmd = _cmd(edit_set, out)
    # torchrun, as torch installs it (python -m torch.distributed.run: no reliance on PATH)
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", *cmd[1:]], check=True,
                   env=_env(), timeout=300, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    shards = sorted(p.name for p in out.glob("results*.jsonl"))
    assert shards == ["results.r0.jsonl", "results.r1.jsonl"]
    rows = read_records(out)
    assert sorted(r["item"] for r in rows) == sorted(r["item"] for r in uninterrupted)
    assert {r["rank"] for r in rows} == {0, 1}
    assert _stable(rows) == _stable(uninterrupted)


def test_baselines_are_scored_beside_the_methods(edit_set, tmp_path):
    """Identity is the source (no call, edit never right); regeneration costs its 28 Euler calls and
    never sees the source; the ceiling is the ground truth through the VAE (no transformer call)."""
    import numpy as np
    from PIL import Image

    import editflow
    from editflow.bench.baselines import REGENERATION_STEPS, parse_baselines
    from editflow.bench.runner import run
    from editflow.images import to_pil, to_tensor

    model = editflow.load_model("tiny-flux", device="cpu")

    run(str(edit_set), ["flowedit"], "tiny-flux", str(tmp_path), ["steps=4"], limit=2, device="cpu", progress=False)
    rows = {(r["method"], r["item"]): r for r in read_records(tmp_path)}
    assert {m for m, _ in rows} == {"flowedit", "identity", "regeneration", "vae_ceiling"}
    for item in ("00000", "00001"):
        ident, regen, ceiling = (rows[(m, item)] for m in ("identity", "regeneration", "vae_ceiling"))
        assert ident["baseline"] and not rows[("flowedit", item)]["baseline"]
        assert ident["nfe_calls"] == 0 and ident["metrics"]["psnr"] == "inf"
        assert ident["metrics"]["oracle_edit_correct"] == 0.0
        assert regen["nfe_calls"] == REGENERATION_STEPS and regen["params"] == {"steps": REGENERATION_STEPS}
        assert ceiling["nfe_calls"] == 0
        truth = Image.open(edit_set / "target" / f"{item}.png").convert("RGB")
        x = to_tensor(truth)
        expected = np.asarray(to_pil(model.decode(model.encode_image(x), model.grid(*x.shape[-2:]))))
        assert (np.asarray(Image.open(tmp_path / ceiling["image"])) == expected).all()
    assert parse_baselines("none") == () and parse_baselines(None) == ("identity", "regeneration", "vae_ceiling")
    with pytest.raises(EditflowError, match="unknown baseline 'oracle'"):
        parse_baselines("identity,oracle")
    with pytest.raises(EditflowError, match="unknown baseline 'oracle'"):  # refused before the model loads
        run(str(edit_set), ["flowedit"], "no/such-model", str(tmp_path / "x"), baselines=("oracle",))


def test_regeneration_never_sees_the_source(tiny):
    """Two different sources of one size, the same prompt and seed: the same image."""
    import numpy as np
    from PIL import Image

    from editflow.bench.baselines import run_baseline

    a = Image.new("RGB", (64, 64), (200, 30, 30))
    b = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    out_a, nfe, _ = run_baseline("regeneration", tiny, a, "a blue square", 3)
    out_b, _, _ = run_baseline("regeneration", tiny, b, "a blue square", 3)
    assert nfe.calls == 28 and np.array_equal(np.asarray(out_a), np.asarray(out_b))
    out_c, _, _ = run_baseline("regeneration", tiny, a, "a blue square", 4)
    assert not np.array_equal(np.asarray(out_a), np.asarray(out_c))  # the seed does matter


def test_set_parsing():
    assert parse_sets(["steps=8", "flowedit.n_avg=2"], ["flowedit", "kv_edit"]) == {
        "flowedit": {"steps": 8, "n_avg": 2}, "kv_edit": {"steps": 8}}
    with pytest.raises(EditflowError, match="not in --methods"):
        parse_sets(["rf_edit.inject=2"], ["flowedit"])
    with pytest.raises(EditflowError, match="no method in --methods has a parameter 'inject'"):
        parse_sets(["inject=2"], ["flowedit"])
    with pytest.raises(EditflowError, match="expects int"):
        parse_sets(["flowedit.n_avg=two"], ["flowedit"])


def test_read_records_counts_each_key_once_and_refuses_a_foreign_line(tmp_path):
    first = {"key": "k1", "item": "a", "metrics": {"psnr": 1.0}}
    again = dict(first, metrics={"psnr": 2.0})  # the same edit written twice by two old runs
    (tmp_path / "results.r0.jsonl").write_text(json.dumps(first) + "\n" + json.dumps({"key": "k2"}) + "\n")
    (tmp_path / "results.r1.jsonl").write_text(json.dumps(again) + "\n" + '{"key": "k3", "cut')
    rows = read_records(tmp_path)
    assert [r["key"] for r in rows] == ["k1", "k2"] and rows[0]["metrics"] == {"psnr": 1.0}
    assert (tmp_path / "results.r1.jsonl").read_text().endswith("cut")  # only the given shard is repaired
    read_records(tmp_path, repair=tmp_path / "results.r1.jsonl")
    assert (tmp_path / "results.r1.jsonl").read_text() == json.dumps(again) + "\n"
    (tmp_path / "results.r2.jsonl").write_text('["not", "a", "record"]\n')
    with pytest.raises(EditflowError, match=r"results.r2.jsonl line 1 is not a bench record") as info:
        read_records(tmp_path)
    assert "\n" not in str(info.value)


def test_append_record_on_a_full_disk_is_one_line(tmp_path, monkeypatch):
    import errno

    from editflow.bench import runner

    def no_space(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(runner.os, "fsync", no_space)
    with pytest.raises(EditflowError) as info:
        runner.append_record(tmp_path / "results.r0.jsonl", {"key": "k"})
    message = str(info.value)
    assert "\n" not in message and str(tmp_path / "results.r0.jsonl") in message
    assert "disk is full" in message and "resumes" in message


def test_load_options_reach_the_model_and_name_it_in_the_records(edit_set, tmp_path):
    """`bench run --quantize int8`: the model is quantized (the edits differ from float32's), every
    record names it, and a bad option is refused before the output folder exists."""
    from typer.testing import CliRunner

    from editflow.cli import app

    runner = CliRunner()
    args = ["bench", "run", "--data", str(edit_set), "--methods", "flowedit", "--model", "tiny-flux", "--set",
            "steps=4", "--device", "cpu", "-q", "--baselines", "none", "--limit", "2"]
    r = runner.invoke(app, args + ["--out", str(tmp_path / "plain")])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, args + ["--out", str(tmp_path / "int8"), "--quantize", "int8"])
    assert r.exit_code == 0, r.output
    plain, int8 = (sorted(read_records(tmp_path / d), key=lambda x: x["item"]) for d in ("plain", "int8"))
    assert [x["model"] for x in int8] == ["tiny-flux quantize=int8"] * 2 and plain[0]["model"] == "tiny-flux"
    assert {x["key"] for x in plain}.isdisjoint(x["key"] for x in int8)
    assert any(a["metrics"] != b["metrics"] for a, b in zip(plain, int8))
    r = runner.invoke(app, args + ["--out", str(tmp_path / "bad"), "--lora", str(tmp_path / "missing.safetensors")])
    assert r.exit_code == 2 and "does not exist" in r.stderr and not (tmp_path / "bad").exists()
