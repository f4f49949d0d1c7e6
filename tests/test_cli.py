"""The CLI end to end: run folders, offline W&B with the weight statistics per step, local records."""

from __future__ import annotations

import json

import pytest
import yaml

from experiments.cli import build_cli, flatten, run_name
from tests.wandb_reader import artifacts, history


def _fit_args(tiny_model_dir, demo_dir, runs_dir, *extra):
    return [
        "fit",
        "--config",
        "experiments/configs/demo.yaml",
        f"--model.model_name_or_path={tiny_model_dir}",
        f"--data.train_root={demo_dir / 'train'}",
        f"--data.eval_root={demo_dir / 'mrb'}",
        "--data.eval_tasks=[faces-i2i, stdlib-docs]",
        "--data.eval_top_k=5",
        f"--runs_dir={runs_dir}",
        "--trainer.max_steps=4",
        "--trainer.val_check_interval=4",
        "--trainer.log_every_n_steps=1",
        *extra,
    ]


def test_offline_fit_writes_run_folder_and_wandb_history(
    tiny_model_dir, demo_dir, tmp_path, monkeypatch, capsys
):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    cli = build_cli(_fit_args(tiny_model_dir, demo_dir, tmp_path / "runs"))
    assert "no login found, logging offline" in capsys.readouterr().err

    run_dir = cli.run_dir
    assert run_dir.parent == tmp_path / "runs" and run_dir.name.startswith("sft-n3-s0-")
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["model"]["objective"] == "sft" and config["data"]["num_negatives"] == 3

    history_rows = [json.loads(line) for line in (run_dir / "eval_history.jsonl").read_text().splitlines()]
    assert [row["step"] for row in history_rows] == [0, 4]  # before and after training
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert any("train/weight_pos_mean" in row for row in metrics)
    assert any("val/mrb_avg" in row for row in metrics)
    assert (run_dir / "runs" / "val-step4" / "faces-i2i.trec").is_file()

    (wandb_file,) = run_dir.glob("wandb/offline-run-*/run-*.wandb")
    rows = history(wandb_file)
    steps_with_weights = [r for r in rows if "train/weight_pos_mean" in r and "train/weight_neg_sum" in r]
    assert len(steps_with_weights) >= 4  # one per training step (log_every_n_steps=1)
    assert all(0.0 <= r["train/weight_pos_mean"] <= 1.0 for r in steps_with_weights)
    assert any("val/mrb_avg" in r for r in rows) and any("val/retriever_avg" in r for r in rows)
    assert any(kind == "config" for _, kind in artifacts(wandb_file))


def test_two_runs_in_one_directory_do_not_collide(tiny_model_dir, demo_dir, tmp_path):
    args = _fit_args(
        tiny_model_dir, demo_dir, tmp_path, "--trainer.max_steps=1", "--validate_before_fit=false"
    )
    first, second = build_cli(args), build_cli(args)
    assert first.run_dir != second.run_dir
    assert (first.run_dir / "config.yaml").is_file() and (second.run_dir / "config.yaml").is_file()


def test_run_names_and_flattened_keys():
    config = {
        "model": {"objective": "url", "objective_args": {"weight": "sft", "direction": "cl"}},
        "data": {"num_negatives": 4},
        "seed_everything": 0,
    }
    assert run_name(config) == "url-Wsft-Dcl-n4-s0"
    assert flatten(config)["model.objective_args.weight"] == "sft"


def test_bad_config_key_is_rejected_with_its_name(tiny_model_dir, demo_dir, tmp_path, capsys):
    with pytest.raises(SystemExit):
        build_cli(_fit_args(tiny_model_dir, demo_dir, tmp_path, "--model.no_such_key=1"))
    assert "no_such_key" in capsys.readouterr().err


def test_predict_writes_runs_that_the_evaluator_scores_like_validation(tiny_model_dir, demo_dir, tmp_path):
    from experiments.evaluate import evaluate

    common = [
        "--config",
        "experiments/configs/demo.yaml",
        f"--model.model_name_or_path={tiny_model_dir}",
        f"--data.eval_root={demo_dir / 'mrb'}",
        "--data.eval_tasks=[faces-i2i, stdlib-docs]",
        "--data.eval_top_k=6",
        f"--runs_dir={tmp_path}",
    ]
    predicted = build_cli(["predict", *common])
    folder = predicted.run_dir / "predictions"
    assert sorted(p.name for p in folder.glob("*.trec")) == ["faces-i2i.trec", "stdlib-docs.trec"]
    validated = build_cli(["validate", *common])
    record = json.loads((validated.run_dir / "eval_history.jsonl").read_text().splitlines()[-1])
    summary = evaluate(demo_dir / "mrb", str(folder), tasks=["faces-i2i", "stdlib-docs"])
    for task, result in summary.tasks.items():
        assert result.value == pytest.approx(record["tasks"][task]["value"], abs=1e-9)
