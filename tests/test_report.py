"""The run report (experiments/report/): the per-cell table, W curves, which runs count, on run folders
written here as the CLI writes them (the statistics and the verdict: tests/test_report_probe.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from experiments import report


def write_run(
    folder: Path,
    objective: str,
    seed: int,
    final: float,
    families: dict[str, float],
    weights: list[tuple[int, float, float]],
    objective_args: dict | None = None,
    num_negatives: int = 3,
    data_seed: int | None = None,
) -> Path:
    """A run folder as experiments.cli leaves it: config.yaml, metrics.jsonl, eval_history.jsonl."""
    folder.mkdir(parents=True)
    config = {
        "seed_everything": seed,
        "trainer": {
            "max_steps": 20,
            "default_root_dir": str(folder),
            "logger": {
                "class_path": "lightning.pytorch.loggers.WandbLogger",
                "init_args": {"name": folder.name},
            },
        },
        "model": {
            "model_name_or_path": "tiny",
            "objective": objective,
            "objective_args": objective_args,
            "lr": 0.001,
        },
        "data": {
            "model_name_or_path": "tiny",
            "num_negatives": num_negatives,
            "seed": seed if data_seed is None else data_seed,
        },
        "runs_dir": str(folder.parent),
        "run_name": None,
    }
    (folder / "config.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    rows = [  # the training scalars only: validations are eval_history.jsonl's
        {"step": s, "epoch": 0, "train/loss": 1.0, "train/weight_pos_mean": wp, "train/weight_neg_sum": wn}
        for s, wp, wn in weights
    ]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    history = [
        {
            "stage": "val",
            "step": 0,
            "tasks": {},
            "families": {f: 0.1 for f in families},
            "average": 0.1,
            "retriever": {"average": 0.3},
        },
        {
            "stage": "val",
            "step": 20,
            "tasks": {},
            "families": families,
            "average": final,
            "retriever": {"average": 0.3},
        },
    ]
    (folder / "eval_history.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in history), encoding="utf-8"
    )
    return folder


@pytest.fixture
def probe_runs(tmp_path) -> Path:
    root = tmp_path / "runs"
    sft = [(10, 0.6, 1.5), (20, 0.4, 1.0)]
    cl = [(10, 0.5, 0.5), (20, 0.3, 0.3)]
    write_run(root / "sweep" / "sft-s0" / "sft-s0-1", "sft", 0, 0.50, {"T2I": 0.60, "I2T": 0.40}, sft)
    write_run(
        root / "sweep" / "sft-s1" / "sft-s1-1", "sft", 1, 0.54, {"T2I": 0.62, "I2T": 0.46}, [(10, 0.8, 2.5)]
    )
    write_run(root / "sweep" / "cl-s0" / "cl-s0-1", "cl", 0, 0.40, {"T2I": 0.45, "I2T": 0.35}, cl)
    write_run(root / "sweep" / "cl-s1" / "cl-s1-1", "cl", 1, 0.41, {"T2I": 0.44, "I2T": 0.38}, cl)
    for key in ("sft-s0", "sft-s1", "cl-s0", "cl-s1"):
        (root / "sweep" / key / "done.json").write_text("{}", encoding="utf-8")
        (root / "sweep" / key / "run.log").write_text("", encoding="utf-8")
    return root


def table_rows(text: str) -> list[str]:
    return [
        line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| objective")
    ]


def test_probe_table_means_and_stds_over_seeds(probe_runs, tmp_path, capsys):
    out = tmp_path / "report"
    assert report.main([str(probe_runs), "--out", str(out), "--no-plots"]) == 0
    text = (out / "probe_table.md").read_text(encoding="utf-8")
    assert text in capsys.readouterr().out
    # sft: mean(50, 54) = 52, sample std = 2 * sqrt(2) = 2.83; cl: 40.5 +- 0.71
    assert table_rows(text) == [
        "| sft | sft | sft | 2 (0,1) | 52.00 ± 2.83 | 61.00 ± 1.41 | 43.00 ± 4.24 |",
        "| cl | cl | cl | 2 (0,1) | 40.50 ± 0.71 | 44.50 ± 0.71 | 36.50 ± 2.12 |",
    ]
    assert "| objective | weight | direction | seeds | MRB avg | I2I | T2I | I2T |" not in text
    assert "| objective | weight | direction | seeds | MRB avg | T2I | I2T |" in text
    assert "First-stage retriever: 30.00." in text
    data = json.loads((out / "report.json").read_text())
    sft = data["rows"][0]
    assert sft["mrb_avg"]["mean"] == pytest.approx(0.52) and sft["mrb_avg"]["std"] == pytest.approx(
        0.0282843, 1e-5
    )
    assert sft["seeds"] == [0, 1] and sft["families"]["T2I"]["mean"] == pytest.approx(0.61)
    assert not list(out.glob("*.png"))  # --no-plots
    assert "| sft | sft | sft | 2 (0,1) | 52.00 ± 2.83 |" in (out / "report.md").read_text(encoding="utf-8")


def test_a_data_order_that_follows_the_seed_is_the_seed_not_another_key(tmp_path):
    """experiments.cli records data.seed = seed_everything: the seeds of one cell stay one row; a data
    seed set apart from the run's seed is shown as part of that run's seed."""
    root = tmp_path / "runs"
    for seed, final in ((0, 0.5), (1, 0.6)):
        write_run(root / f"s{seed}", "sft", seed, final, {"T2I": final}, [(10, 0.5, 1.0)])
    rows = report.group_rows([report.load_run(p) for p in report.find_run_folders(root)])
    assert len(rows) == 1 and [r.seed for r in rows[0].runs] == [0, 1]
    write_run(root / "s2", "sft", 2, 0.7, {"T2I": 0.7}, [(10, 0.5, 1.0)], data_seed=5)
    rows = report.group_rows([report.load_run(p) for p in report.find_run_folders(root)])
    assert len(rows) == 1 and [r.seed for r in rows[0].runs] == [0, 1, "2/d5"]


def test_weight_curves_average_the_seeds_step_by_step(probe_runs):
    rows = report.group_rows([report.load_run(p) for p in report.find_run_folders(probe_runs)])
    sft = rows[0]
    assert report.mean_curve(sft.runs, "train/weight_pos_mean") == (
        [10, 20],
        [0.7, 0.4],
        [pytest.approx(0.1414213), 0.0],
    )
    assert report.mean_curve(rows[1].runs, "train/weight_neg_sum")[1] == [0.5, 0.3]


def test_url_cells_extra_columns_and_the_weight_direction_effects(tmp_path):
    root = tmp_path / "runs"
    w = [(10, 0.5, 0.5)]
    for i, (weight, direction, final) in enumerate(
        [("sft", "sft", 0.58), ("sft", "cl", 0.57), ("cl", "sft", 0.56), ("cl", "cl", 0.55)]
    ):
        args = {"weight": weight, "direction": direction}
        write_run(root / f"url{i}", "url", 0, final, {"T2T": final}, w, objective_args=args)
    assert report.main([str(root), "--no-plots"]) == 0
    text = (root / "probe_table.md").read_text()
    assert table_rows(text) == [
        "| url | sft | sft | 1 (0) | 58.00 | 58.00 |",
        "| url | sft | cl | 1 (0) | 57.00 | 57.00 |",
        "| url | cl | sft | 1 (0) | 56.00 | 56.00 |",
        "| url | cl | cl | 1 (0) | 55.00 | 55.00 |",
    ]
    assert "moves the score +2.00 at D_SFT and +2.00 at D_CL" in text
    assert "moves it +1.00 at W_SFT and +1.00 at W_CL" in text

    write_run(root / "n8", "sft", 0, 0.60, {"T2T": 0.6}, w, num_negatives=8)
    assert report.main([str(root), "--no-plots"]) == 0
    text = (root / "probe_table.md").read_text()
    assert "| objective | weight | direction | num_negatives | seeds | MRB avg | T2T |" in text
    assert "| sft | sft | sft | 8 | 1 (0) | 60.00 | 60.00 |" in table_rows(text)
    assert "moves the score" not in text  # effects only for a plain 2x2 grid


def test_unfinished_sweep_runs_and_hidden_attempts_are_left_out(probe_runs, tmp_path, capsys):
    write_run(probe_runs / "sweep" / "url-x" / "url-x-1", "url", 0, 0.9, {"T2I": 0.9}, [])
    (probe_runs / "sweep" / "url-x" / "run.log").write_text("", encoding="utf-8")
    write_run(probe_runs / "sweep" / "sft-s0" / ".attempts" / "1" / "old", "sft", 0, 0.9, {"T2I": 0.9}, [])
    out = tmp_path / "r"
    assert report.main([str(probe_runs), "--out", str(out), "--no-plots"]) == 0
    text = (out / "probe_table.md").read_text()
    assert len(table_rows(text)) == 2 and "90.00" not in text.split("Left out")[0]
    assert "url-x-1: sweep run not finished" in text
    assert report.main([str(probe_runs), "--out", str(out), "--include-unfinished", "--no-plots"]) == 0
    assert "| url | sft | sft | 1 (0) | 90.00 |" in (out / "probe_table.md").read_text()


def test_no_runs_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    assert report.main([str(tmp_path / "empty")]) == 2
    assert "no runs found under" in capsys.readouterr().err
