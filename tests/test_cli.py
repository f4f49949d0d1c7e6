"""The CLI end to end: run folders, offline W&B with the weight statistics per step, local records."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import yaml

from experiments.callbacks import EvalBookkeeping, LocalMetrics
from experiments.cli import build_cli, main
from experiments.keys import flatten, run_name
from tests.helpers import fit_args, resume_error
from tests.wandb_reader import artifacts, history, wait_until_written
from tests.wandb_reader import config as wandb_config
from tests.wandb_reader import summary as wandb_summary


def test_offline_fit_writes_run_folder_and_wandb_history(
    tiny_model_dir, demo_dir, tmp_path, monkeypatch, capsys
):
    # An earlier run in this process under WANDB_MODE=disabled (here one that fails at once) must not
    # silence this one: W&B keeps its first settings process-wide unless the CLI tears them down.
    monkeypatch.setenv("WANDB_MODE", "disabled")
    with pytest.raises(SystemExit):
        main(
            [
                "validate",
                "--config",
                "experiments/configs/demo.yaml",
                f"--model.model_name_or_path={tiny_model_dir}",
                f"--data.eval_root={tmp_path / 'none'}",
                f"--runs_dir={tmp_path / 'failed-runs'}",  # never the repository's runs/
            ]
        )
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    capsys.readouterr()
    cli = build_cli(fit_args(tiny_model_dir, demo_dir, tmp_path / "runs"))
    assert "no login found, logging offline" in capsys.readouterr().err

    run_dir = cli.run_dir
    assert run_dir.parent == tmp_path / "runs" and run_dir.name.startswith("sft-n3-s0-")
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["model"]["objective"] == "sft" and config["data"]["num_negatives"] == 3

    history_rows = [json.loads(line) for line in (run_dir / "eval_history.jsonl").read_text().splitlines()]
    assert [row["step"] for row in history_rows] == [0, 4]  # before and after training
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert any("train/weight_pos_mean" in row for row in metrics)
    # One record per fact: validations live in eval_history.jsonl only, training scalars here.
    assert all(key in ("step", "epoch") or key.startswith("train/") for row in metrics for key in row)
    assert (run_dir / "runs" / "val-step4" / "faces-i2i.trec").is_file()

    (wandb_file,) = run_dir.glob("wandb/offline-run-*/run-*.wandb")
    rows = history(wait_until_written(wandb_file))
    steps_with_weights = [r for r in rows if "train/weight_pos_mean" in r and "train/weight_neg_sum" in r]
    assert len(steps_with_weights) >= 4  # one per training step (log_every_n_steps=1)
    assert all(0.0 <= r["train/weight_pos_mean"] <= 1.0 for r in steps_with_weights)
    assert any("val/mrb_avg" in r for r in rows) and any("val/retriever_avg" in r for r in rows)
    assert any(kind == "config" for _, kind in artifacts(wandb_file))


def test_two_runs_in_one_directory_do_not_collide(tiny_model_dir, demo_dir, tmp_path):
    args = fit_args(
        tiny_model_dir, demo_dir, tmp_path, "--trainer.max_steps=1", "--validate_before_fit=false"
    )
    first, second = build_cli(args), build_cli(args)
    assert first.run_dir != second.run_dir
    assert (first.run_dir / "config.yaml").is_file() and (second.run_dir / "config.yaml").is_file()
    assert (first.run_dir / "run_id").read_text() != (second.run_dir / "run_id").read_text()


def test_a_second_run_in_an_exported_run_folder_is_refused(
    tiny_model_dir, demo_dir, tmp_path, monkeypatch, capsys
):
    """Issue 23 item 10: RERANK_LAB_RUN_DIR names one run's folder; a second run there stops before loading."""
    import lightning_modules.reranker as reranker

    shared = tmp_path / "shared"
    monkeypatch.setenv("RERANK_LAB_RUN_DIR", str(shared))
    args = fit_args(
        tiny_model_dir, demo_dir, tmp_path, "--trainer.max_steps=1", "--validate_before_fit=false"
    )
    first = build_cli(args)
    assert first.run_dir == shared and (shared / "run_id").is_file()
    metrics = (shared / "metrics.jsonl").read_text()
    monkeypatch.setenv("RERANK_LAB_RUN_DIR", str(shared))  # the CLI unsets it after a run
    monkeypatch.setattr(reranker, "load_backbone", lambda *a, **k: pytest.fail("weights loaded"))
    with pytest.raises(SystemExit) as caught:
        build_cli(args)
    assert caught.value.code == 2
    assert f"RERANK_LAB_RUN_DIR={shared}: the folder already holds another run" in capsys.readouterr().err
    assert (shared / "metrics.jsonl").read_text() == metrics


def test_the_data_order_follows_the_run_seed_unless_data_seed_is_given(tiny_model_dir, demo_dir, tmp_path):
    args = fit_args(
        tiny_model_dir, demo_dir, tmp_path, "--trainer.max_steps=1", "--validate_before_fit=false"
    )
    tied = build_cli([*args, "--seed_everything=5"])
    assert tied.datamodule.hparams.seed == 5
    recorded = yaml.safe_load((tied.run_dir / "config.yaml").read_text(encoding="utf-8"))
    assert recorded["data"]["seed"] == 5  # the config a rerun reads holds the resolved seed
    assert build_cli([*args, "--seed_everything=5", "--data.seed=2"]).datamodule.hparams.seed == 2


def test_a_run_loads_the_checkpoints_tokenizer_once(tiny_model_dir, demo_dir, tmp_path, monkeypatch):
    """The DataModule's encoder is built from the module's tokenizer and image processor, with the
    DataModule's own budgets."""
    from transformers import AutoTokenizer

    loads = []
    real = AutoTokenizer.from_pretrained
    monkeypatch.setattr(AutoTokenizer, "from_pretrained", lambda *a, **k: loads.append(a) or real(*a, **k))
    args = fit_args(
        tiny_model_dir, demo_dir, tmp_path, "--trainer.max_steps=1", "--validate_before_fit=false"
    )
    cli = build_cli([*args, "--data.max_length=300"])
    encoder = cli.datamodule.encoder
    assert encoder.tokenizer is cli.model.pair_encoder.tokenizer
    assert encoder.image_processor is cli.model.pair_encoder.image_processor
    assert encoder.max_length == 300 and cli.model.pair_encoder.max_length != 300
    assert len(loads) == 1


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
        build_cli(fit_args(tiny_model_dir, demo_dir, tmp_path, "--model.no_such_key=1"))
    assert "no_such_key" in capsys.readouterr().err


def error_line(capsys) -> str:
    """The one ``error:`` line on stderr (pytest's own argv makes Lightning warn there too); no usage text."""
    err = capsys.readouterr().err
    (line,) = [line for line in err.splitlines() if line.startswith("error:")]
    assert "usage:" not in err
    return line


def test_a_mistyped_key_is_one_line_with_the_closest_valid_key(tiny_model_dir, demo_dir, tmp_path, capsys):
    """Issue 23 item 14: one line naming the key (and the file that set it), not 89 lines of usage."""
    with pytest.raises(SystemExit) as caught:
        build_cli(fit_args(tiny_model_dir, demo_dir, tmp_path, "--trainer.max_stepz=3"))
    assert caught.value.code == 2
    assert (
        error_line(capsys) == "error: unknown config key trainer.max_stepz; did you mean trainer.max_steps?"
    )
    patch = tmp_path / "patch.yaml"
    patch.write_text("model:\n  lrr: 0.1\n")
    with pytest.raises(SystemExit) as caught:
        build_cli(fit_args(tiny_model_dir, demo_dir, tmp_path, "--config", str(patch)))
    assert caught.value.code == 2
    assert error_line(capsys) == f"error: {patch}: unknown config key model.lrr; did you mean model.lr?"


def _text_only_model(tmp_path):
    from tests.tiny_llama import build_llama

    return build_llama(tmp_path / "llama")


@pytest.mark.parametrize(
    "flag, message",
    [
        ("--data.train_root={tmp}/no/train", "data.train_root='{tmp}/no/train': no such file or folder"),
        ("--data.eval_root={tmp}/no/mrb", "data.eval_root='{tmp}/no/mrb': no such file or folder"),
        (
            "--trainer.accelerator=gpu",
            "trainer.accelerator='gpu' (set on the command line): this machine has no CUDA GPU; use --config "
            "experiments/configs/trainer/cpu.yaml instead",
        ),
        (
            "--config=experiments/configs/trainer/gpu.yaml",
            "trainer.accelerator='gpu' (set in experiments/configs/trainer/gpu.yaml): this machine has no CUDA GPU",
        ),
        (
            "text-only",
            "data.eval_root: task digits-i2t ({demo}/digits-i2t/task.json) is I2T, an image task, but",
        ),
    ],
)
def test_mistakes_are_refused_before_weights_or_wandb(
    tiny_model_dir, demo_dir, tmp_path, monkeypatch, capsys, flag, message
):
    """Issue 23 item 14: paths, modalities and the trainer are checked before anything loads."""
    import torch

    import lightning_modules.reranker as reranker

    if "accelerator" in message and torch.cuda.is_available():
        pytest.skip("the machine has a GPU")
    monkeypatch.setattr(
        reranker, "load_backbone", lambda *a, **k: pytest.fail("weights loaded before the check")
    )
    model = _text_only_model(tmp_path) if flag == "text-only" else tiny_model_dir
    extra = [] if flag == "text-only" else [flag.format(tmp=tmp_path)]
    args = fit_args(model, demo_dir, tmp_path / "runs", *extra)
    if flag == "text-only":
        args.remove("--data.eval_tasks=[faces-i2i, stdlib-docs]")
    with pytest.raises(SystemExit) as caught:
        build_cli(args)
    assert caught.value.code == 2
    assert error_line(capsys).startswith("error: " + message.format(tmp=tmp_path, demo=demo_dir / "mrb"))
    assert not (tmp_path / "runs").exists()  # no run folder, no W&B run


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


# ---- W&B bookkeeping and progress (issue 11 items 6, 8) -------------------------------------------
def test_wandb_config_steps_histograms_best_summary_and_progress_lines(
    tiny_model_dir, demo_dir, tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setattr(LocalMetrics, "progress_every_s", 0.0)  # a progress line per query
    cli = build_cli(fit_args(tiny_model_dir, demo_dir, tmp_path / "runs", "--trainer.val_check_interval=2"))
    out = capsys.readouterr().out
    beat = [line for line in out.splitlines() if line.startswith("step 4/4")]
    assert beat and re.search(r"elapsed \d+s  [\d.]+ (step/s|s/step)  ETA 0s$", beat[0]), beat
    assert re.search(r"^val: 1/\d+ queries, \d+s, ETA \d+", out, re.M)  # validation speaks as it goes

    (wandb_file,) = cli.run_dir.glob("wandb/offline-run-*/run-*.wandb")
    keys = wandb_config(wait_until_written(wandb_file))
    assert "model.objective" in keys and "data.num_negatives" in keys
    # no logger settings, no config-file paths of this machine
    assert not [k for k in keys if k.startswith("trainer.logger") or k == "config" or k.startswith("config.")]
    assert not {"objective", "lr", "model_name_or_path", "num_negatives", "eval_root"} & set(keys)

    rows = history(wandb_file)
    val_steps = [r["trainer/global_step"] for r in rows if "val/mrb_avg" in r]
    table_steps = [r["trainer/global_step"] for r in rows if "val/tasks/_type" in r]
    assert (val_steps, table_steps) == ([0, 2, 4], [0, 2, 4])  # scalars at the step the tables name
    hist_steps = [r["trainer/global_step"] for r in rows if "train/weight_pos_hist/values" in r]
    assert hist_steps[:2] == [2, 4]  # one slice per validation during training

    averages = [
        json.loads(line)["average"] for line in (cli.run_dir / "eval_history.jsonl").read_text().splitlines()
    ]
    best = max(averages[1:])  # the validations of training (steps 2 and 4); step 0 is the baseline
    final = wandb_summary(wandb_file)
    assert final["val/mrb_avg"] == pytest.approx(best)
    best_step = [0, 2, 4][averages.index(best)]
    assert final["val/mrb_avg_best_step"] == best_step


class _FakeRun:
    def __init__(self) -> None:
        self.summary: dict = {}


class WandbLogger:  # the callback recognises W&B loggers by class name
    def __init__(self) -> None:
        self.experiment = _FakeRun()


def test_the_summary_keeps_the_best_validation_not_the_last():
    logger = WandbLogger()
    trainer = type("T", (), {"sanity_checking": False, "is_global_zero": True, "loggers": [logger]})()
    keeper = EvalBookkeeping()
    for step, value in ((0, 0.2), (120, 0.5), (240, 0.4)):
        trainer.global_step, trainer.callback_metrics = step, {"val/mrb_avg": value}
        keeper.on_validation_end(trainer, None)
    assert logger.experiment.summary == {"val/mrb_avg": 0.5, "val/mrb_avg_best_step": 120}
    # The untrained step 0 scoring best: the summary names the best trained step, as best-step<N>.ckpt does.
    keeper = EvalBookkeeping()
    for step, value in ((0, 0.6), (30, 0.5), (60, 0.4)):
        trainer.global_step, trainer.callback_metrics = step, {"val/mrb_avg": value}
        keeper.on_validation_end(trainer, None)
        if step == 0:
            assert logger.experiment.summary["val/mrb_avg_best_step"] == 0  # until training validates
    assert logger.experiment.summary == {"val/mrb_avg": 0.5, "val/mrb_avg_best_step": 30}


# ---- bad records (issue 11 items 18, 19) ---------------------------------------------------------
def _bad_records(path, count):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        for i in range(count):
            record = {
                "task": "stdlib-docs",
                "instruction": "Find the documentation.",
                "query": {"text": f"query {i}", "image": "images/missing.png"},
                "positives": [{"text": f"positive {i}"}],
                "hard_negatives": [{"text": f"negative {i} {j}"} for j in range(3)],
            }
            handle.write(json.dumps(record) + "\n")


def _skip_args(tiny_model_dir, demo_dir, train_root, runs_dir, *extra):
    return [
        "fit",
        "--config",
        "experiments/configs/demo.yaml",
        f"--model.model_name_or_path={tiny_model_dir}",
        f"--data.train_root={train_root}",
        f"--data.eval_root={demo_dir / 'mrb'}",
        "--data.eval_tasks=[stdlib-docs]",
        "--data.on_bad_record=skip",
        f"--runs_dir={runs_dir}",
        "--validate_before_fit=false",
        "--trainer.logger=false",
        "--trainer.log_every_n_steps=1",
        *extra,
    ]


def _mixed_train_root(demo_dir, train):
    """A training root of 12 good demo groups and 4 bad records."""
    train.mkdir()
    good = (demo_dir / "train" / "stdlib-docs.jsonl").read_text().splitlines()[:12]
    (train / "good.jsonl").write_text("\n".join(good) + "\n")
    _bad_records(train / "bad.jsonl", 4)
    return train


def test_skipped_records_are_a_running_total(tiny_model_dir, demo_dir, tmp_path):
    train = _mixed_train_root(demo_dir, tmp_path / "train")
    cli = build_cli(
        _skip_args(
            tiny_model_dir,
            demo_dir,
            train,
            tmp_path / "runs",
            "--trainer.max_steps=4",
            "--trainer.val_check_interval=4",
        )
    )
    rows = [json.loads(line) for line in (cli.run_dir / "metrics.jsonl").read_text().splitlines()]
    totals = [row["train/skipped_records"] for row in rows if "train/skipped_records" in row]
    assert len(totals) == 4 and totals == sorted(totals) and totals[-1] == 4  # 16 records, 4 bad, one epoch


def test_the_final_skipped_total_is_logged_after_the_last_step(tiny_model_dir, demo_dir, tmp_path):
    """Issue 23 item 12: with log_every_n_steps=3 the running total stopped at step 3 of 4."""
    train = _mixed_train_root(demo_dir, tmp_path / "train")
    args = _skip_args(tiny_model_dir, demo_dir, train, tmp_path / "runs", "--trainer.max_steps=4")
    cli = build_cli([*args, "--trainer.log_every_n_steps=3", "--trainer.val_check_interval=4"])
    rows = [json.loads(line) for line in (cli.run_dir / "metrics.jsonl").read_text().splitlines()]
    totals = [(row["step"], row["train/skipped_records"]) for row in rows if "train/skipped_records" in row]
    assert totals[-1] == (4, 4.0) and len(totals) == 2  # step 3's logged value, then the final total


def test_a_fit_whose_every_record_is_skipped_stops_with_an_error(tiny_model_dir, demo_dir, tmp_path, capsys):
    _bad_records(tmp_path / "train" / "bad.jsonl", 8)
    with pytest.raises(SystemExit) as caught:
        main(
            _skip_args(
                tiny_model_dir, demo_dir, tmp_path / "train", tmp_path / "runs", "--trainer.max_steps=2"
            )
        )
    assert caught.value.code == 1
    err = capsys.readouterr().err
    assert "error: " in err and "all 8 training record(s) read were bad and skipped" in err
    assert "Traceback" not in err


# ---- refused configs, before any weights load (issue 11 items 7, 13, 18; issue 12 item 3) ---------
@pytest.mark.parametrize(
    ("flag", "message"),
    [
        ("--data.eval_top_k=-1", "data.eval_top_k=-1: must be a whole number >= 1"),
        ("--data.eval_top_k=0", "data.eval_top_k=0: must be a whole number >= 1"),
        ("--model.eval_pairs_per_forward=0", "model.eval_pairs_per_forward=0: must be a whole number >= 1"),
        (
            "--data.eval_pairs_per_batch=20",
            "data.eval_pairs_per_batch was renamed model.eval_pairs_per_forward",
        ),
        ("--model.objective=sfft", "model.objective='sfft'"),
        ("--model.objective_args={weight: slf}", "model.objective_args"),
        ("--run_name=../../x", "run_name '../../x': a run name is one folder name"),
        ("--optimizer=torch.optim.SGD", "optimizer"),  # LightningCLI's own optimizer option is off
    ],
)
def test_bad_settings_are_refused_at_once_with_the_key_named(
    tiny_model_dir, demo_dir, tmp_path, monkeypatch, capsys, flag, message
):
    import lightning_modules.reranker as reranker

    monkeypatch.setattr(
        reranker, "load_backbone", lambda *a, **k: pytest.fail("weights loaded before the check")
    )
    args = fit_args(tiny_model_dir, demo_dir, tmp_path / "runs", flag)
    if flag.startswith("--model.objective_args"):
        args.append("--model.objective=url")
    with pytest.raises(SystemExit) as caught:
        build_cli(args)
    assert caught.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "runs").exists() and not (tmp_path.parent / "x").exists()


@pytest.mark.parametrize("flag", ["--model.quantization=4bit", "--model.optimizer=adamw8bit"])
def test_a_missing_extra_is_named_before_anything_loads(
    tiny_model_dir, demo_dir, tmp_path, monkeypatch, capsys, flag
):
    import importlib.util

    import lightning_modules.reranker as reranker

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "bitsandbytes" else real(name, *a)
    )
    monkeypatch.setattr(
        reranker, "load_backbone", lambda *a, **k: pytest.fail("weights loaded before the check")
    )
    with pytest.raises(SystemExit) as caught:
        build_cli(fit_args(tiny_model_dir, demo_dir, tmp_path / "runs", flag))
    assert caught.value.code == 2
    assert "needs bitsandbytes, which is not installed: pip install -e '.[qlora]'" in capsys.readouterr().err


def test_a_missing_model_folder_is_one_error_line_before_anything_loads(tmp_path, capsys):
    missing = f"{tmp_path}/no/model"
    with pytest.raises(SystemExit) as caught:
        main(
            ["validate", "--config", "experiments/configs/demo.yaml", f"--model.model_name_or_path={missing}"]
        )
    assert caught.value.code == 2
    err = capsys.readouterr().err
    assert f"model.model_name_or_path='{missing}': no such model folder" in err and "Traceback" not in err


def test_test_scores_the_test_root_not_the_validation_root(tiny_model_dir, demo_dir, tmp_path, capsys):
    test_root = tmp_path / "mrb-test"
    shutil.copytree(demo_dir / "mrb" / "stdlib-docs", test_root / "stdlib-docs")
    common = [
        "test",
        "--config",
        "experiments/configs/demo.yaml",
        f"--model.model_name_or_path={tiny_model_dir}",
        f"--data.eval_root={demo_dir / 'mrb'}",
        "--data.eval_top_k=3",
        f"--runs_dir={tmp_path / 'runs'}",
        "--trainer.logger=false",
    ]
    tested = build_cli([*common, f"--data.test_root={test_root}"])
    (record,) = [
        json.loads(line) for line in (tested.run_dir / "eval_history.jsonl").read_text().splitlines()
    ]
    assert record["stage"] == "test" and list(record["tasks"]) == ["stdlib-docs"]
    saved = yaml.safe_load((tested.run_dir / "config.yaml").read_text())["data"]
    assert saved["test_root"] == str(test_root) and saved["eval_root"] == str(demo_dir / "mrb")
    assert "data.test_root is not set" not in capsys.readouterr().err
    untested = build_cli([*common, "--data.eval_tasks=[stdlib-docs]"])
    assert untested.run_dir != tested.run_dir
    assert (
        "data.test_root is not set, so the validation tasks (data.eval_root) are scored"
        in capsys.readouterr().err
    )


# ---- checkpoints (issue 11 item 12) ---------------------------------------------------------------
def test_resume_from_a_truncated_checkpoint_names_the_last_good_one(
    tiny_model_dir, demo_dir, tmp_path, capsys
):
    import torch

    folder = tmp_path / "old-run" / "checkpoints"
    folder.mkdir(parents=True)
    torch.save({"state_dict": {}}, folder / "best-step2.ckpt")
    (folder / "last.ckpt").write_bytes((folder / "best-step2.ckpt").read_bytes()[:100])
    err = resume_error(tiny_model_dir, demo_dir, tmp_path / "runs", folder / "last.ckpt", capsys)
    assert "is truncated or corrupt" in err and f"--ckpt_path={folder / 'best-step2.ckpt'}" in err
    assert "Traceback" not in err


def test_a_full_disk_during_a_checkpoint_stops_the_fit_and_keeps_the_previous_one(
    tiny_model_dir, demo_dir, tmp_path, monkeypatch, capsys
):
    import errno

    import torch

    import experiments.runs as runs

    real_save, saves = torch.save, []

    def save_until_the_disk_fills(obj, handle, *args, **kwargs):
        saves.append(handle.name)
        if len(saves) == 1:
            return real_save(obj, handle, *args, **kwargs)
        handle.write(b"PK\x03\x04 the first bytes of a checkpoint")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(runs.torch, "save", save_until_the_disk_fills)
    args = fit_args(
        tiny_model_dir,
        demo_dir,
        tmp_path / "runs",
        "--validate_before_fit=false",
        "--trainer.logger=false",
        "--trainer.enable_checkpointing=true",
        "--trainer.max_steps=2",
        "--trainer.val_check_interval=1",
    )
    with pytest.raises(SystemExit) as caught:
        main(args)
    assert caught.value.code == 1
    err = capsys.readouterr().err
    assert "error: cannot write checkpoint" in err and "the disk is full" in err and "Traceback" not in err
    (run_dir,) = (tmp_path / "runs").iterdir()
    (kept,) = (run_dir / "checkpoints").iterdir()  # the step-1 checkpoint, whole; nothing else
    assert "step1" in kept.name.replace("=", "") and runs.readable_checkpoint(kept)
    assert all(Path(name).parent == kept.parent for name in saves)  # temporary files beside the target
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    assert all(json.loads(line) for line in lines)
