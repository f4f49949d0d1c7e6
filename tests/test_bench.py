"""Benchmark smoke test: the quick run writes bench.json / bench.md with positive numbers (not timed)."""

from __future__ import annotations

import json

from experiments.bench import TRAIN_METHODS, TRAIN_NEGATIVES, run


def test_quick_bench_writes_the_report(tiny_model_dir, tmp_path):
    report = run(tmp_path / "bench", quick=True, tiny_dir=tiny_model_dir)
    saved = json.loads((tmp_path / "bench" / "bench.json").read_text())
    assert saved == json.loads(json.dumps(report))
    for key in ("device", "train_speedup", "inference_speedup", "memory_growth_n4_to_n16"):
        assert key in saved, key
    assert saved["device"].startswith(("cpu", "cuda"))
    for key in (
        "train_speedup",
        "inference_speedup",
        "memory_growth_n4_to_n16",
        "naive_memory_growth_n4_to_n16",
    ):
        assert saved[key] > 0, key
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
