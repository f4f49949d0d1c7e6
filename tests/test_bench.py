"""Benchmark smoke test: the quick run writes bench.json / bench.md with positive numbers (not timed)."""

from __future__ import annotations

import json

import pytest

from experiments.bench.runner import TRAIN_METHODS, TRAIN_NEGATIVES, run


def test_quick_bench_writes_the_report(tiny_model_dir, tmp_path):
    report = run(tmp_path / "bench", quick=True, tiny_dir=tiny_model_dir)
    saved = json.loads((tmp_path / "bench" / "bench.json").read_text())
    assert saved == json.loads(json.dumps(report))
    for key in ("train_bound", "inference_bound"):  # the exact-computation limit beside each speed-up
        assert saved[key] > 1, key
    for result in saved["models"]["tiny"]["train"].values():
        if result["method"] == "rerank-lab":
            assert all(row["bound"] > 1 for row in result["families"].values())
    assert all(row["bound"] > 1 for row in saved["models"]["tiny"]["inference"]["families"].values())
    for key in ("device", "train_speedup", "inference_speedup", "memory_growth_n4_to_n16"):
        assert key in saved, key
    assert saved["device"].startswith(("cpu", "cuda"))
    for key in ("train_speedup", "inference_speedup"):
        assert saved[key] > 0, key
    # A tiny model's step needs a MiB or two: the growth ratios are computed and never negative, but at
    # this size they are noise (None when the N = 4 peak rounds to nothing).
    for key in ("memory_growth_n4_to_n16", "naive_memory_growth_n4_to_n16"):
        assert saved[key] is None or saved[key] >= 0, key
    for result in saved["models"]["tiny"]["train"].values():
        assert result["peak_mib"] >= 0
    train = saved["models"]["tiny"]["train"]
    assert set(train) == {f"{m}/n{n}" for m in TRAIN_METHODS for n in TRAIN_NEGATIVES}
    for result in train.values():
        assert result["pairs_per_s"] > 0 and result["tokens_per_pair"] > 0
    for result in train.values():  # one step per family of the quick workload
        assert set(result["families"]) == {"T2T", "I2T"}
    inference = saved["models"]["tiny"]["inference"]
    assert set(inference["families"]) == {"T2T", "I2T"}
    assert inference["loop_pairs_per_s"] > 0 and inference["default_pairs_per_s"] > 0
    assert inference["max_abs_diff_default_vs_loop"] < 1e-4
    markdown = (tmp_path / "bench" / "bench.md").read_text()
    assert saved["device"] in markdown and "| tiny | 16 | rerank-lab |" in markdown
    assert "## Measured vs the exact-computation bound" in markdown and "| tiny | T2T | 14 |" in markdown


def test_gpu_check_names_what_to_carry_and_prints_one_table(monkeypatch):
    from experiments.bench import gpu_check

    monkeypatch.setitem(gpu_check.REQUIRED, "no_such_module_h5", "no-such-dist")
    found = gpu_check.check_imports()
    assert not found["ok"] and found["missing"] == ["no-such-dist"]
    assert (
        "pip download" in found["carry"] and "no-such-dist" in found["carry"] and "-d .whl" in found["carry"]
    )
    assert "torch" in found["found"]
    text = gpu_check.table(
        {
            "imports": {**found, "seconds": 0.1},
            "test-gpu": {"ok": True, "summary": "7 passed in 30s", "seconds": 31},
            "bench": {"ok": True, "rows": ["a", "b"], "seconds": 200},
            "fsdp-fit": {"ok": False, "summary": "no loss logged", "seconds": 40},
        }
    )
    assert text.splitlines()[0] == "| part | result | figures | seconds |"
    assert "| imports | FAILED | missing: no-such-dist" in text and "| fsdp-fit | FAILED |" in text
    assert "| bench | ok | a<br>b | 200 |" in text


@pytest.mark.slow
def test_gpu_check_dry_run_passes_on_a_cpu(tmp_path):
    """``make gpu-check`` without CUDA: every part that a CPU can run, exit code 0, one table."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).parent.parent
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(root)}
    done = subprocess.run(
        [sys.executable, "-m", "experiments.bench.gpu_check", "--dry-run", "--out", str(tmp_path)],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    table = [line for line in done.stdout.splitlines() if line.startswith("| ")]
    assert [line.split("|")[1].strip() for line in table[1:]] == [
        "imports",
        "test-gpu",
        "bench",
        "fsdp-fit",
    ]
    assert all("| ok |" in line for line in table[1:])


def test_interleaved_repeats_report_the_median_paired_ratio_and_its_spread():
    """A noisy neighbour during one repeat moves one ratio, not the reported median (item 5, issue 21)."""
    from experiments.bench.report import train_summary
    from experiments.bench.runner import _median_run

    runs = [{"pairs_per_s": v, "load_average": load} for v, load in ((9.0, 1.0), (4.0, 3.5), (10.0, 1.2))]
    chosen = _median_run(runs)
    assert chosen["pairs_per_s"] == 9.0 and chosen["pairs_per_s_repeats"] == [9.0, 4.0, 10.0]
    assert chosen["load_average_repeats"] == [1.0, 3.5, 1.2]
    train = {
        f"{method}/n{n}": {"pairs_per_s": 1.0, "peak_mib": 100.0}
        for method in TRAIN_METHODS
        for n in TRAIN_NEGATIVES
    }
    for n in TRAIN_NEGATIVES:  # repeat 2 ran while a neighbour slowed rerank-lab only
        train[f"rerank-lab/n{n}"]["speedup_repeats"] = {"naive": [1.5, 0.8, 1.6], "naive-gc": [2.0, 2.0, 2.0]}
    summary = train_summary(train)
    assert summary["train_speedup_n4"] == 1.5 and summary["train_speedup_vs_naive_gc"] == pytest.approx(2.0)
    assert summary["train_speedup_spread"][4] == [0.8, 1.5, 1.6]
