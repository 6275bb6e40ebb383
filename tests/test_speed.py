"""The speed benchmark's bookkeeping (not its timings) and the adapters' sync-free per-row values."""

import json
import subprocess
import sys

import torch

import editflow


def test_row_values_are_made_on_the_device_and_kept(tiny):
    a = tiny.row_values([1.5, 5.5], 2)
    assert a.tolist() == [1.5, 5.5] and a.device == tiny.device
    assert tiny.row_values([1.5, 5.5], 2) is a  # the step loop's guidance list is copied once
    assert tiny.row_values(0.25, 3).tolist() == [0.25] * 3
    assert tiny.row_values(torch.tensor(0.5), 2, torch.float64).dtype == torch.float64


def test_speed_benchmark_counts_calls_and_re_edits(tmp_path):
    out = tmp_path / "speed.json"
    cmd = [sys.executable, "benchmarks/speed.py", "--arch", "flux-dev", "--random-weights", "--layers", "1,2",
           "--heads", "1", "--sizes", "64", "--methods", "flowedit,ode_inversion,rf_edit,kv_edit", "--steps", "4",
           "--repeats", "1", "--dtype", "float32", "--device", "cpu", "--out", str(out)]
    subprocess.run(cmd, check=True, capture_output=True, timeout=600)
    rows = {r["method"]: r for r in json.loads(out.read_text())["results"]}
    for name in ("flowedit", "ode_inversion", "rf_edit"):
        m = editflow.METHODS[name]
        p = m.params.for_family("flux", steps=4, **({"inject": 4} if name == "rf_edit" else {}))  # as the benchmark
        assert (rows[name]["calls"], rows[name]["rows"]) == (m.expected_nfe(p).calls, m.expected_nfe(p).rows)
        assert rows[name]["overhead"] > 0.5
    assert rows["ode_inversion re-edit"]["calls"] == rows["ode_inversion"]["calls"] // 2
    assert rows["rf_edit"]["store_bytes"] > 0
    # FLUX.1-dev: 18 of 38 single blocks store V (ours: 1 of 2), width 3072 (ours 128), bf16 (ours fp32)
    assert rows["rf_edit"]["store_bytes_flux_dev"] == int(rows["rf_edit"]["store_bytes"] * 18 / 1 * 3072 / 128 * 2 / 4)
    assert rows["kv_edit (25% mask)"]["overhead"] is None and rows["kv_edit (full image)"]["calls"] > 0
    assert out.with_suffix(".md").read_text().startswith("# speed")
