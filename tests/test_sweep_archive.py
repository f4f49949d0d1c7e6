"""A sweep's finished runs are archived without checkpoints or machine paths, and restored so the runner
skips them."""

from __future__ import annotations

import json
from pathlib import Path

from experiments.sweep import archive
from experiments.sweep.folders import is_finished

PARAMS = {"model.lr": 0.001, "seed_everything": 0}
TEMPLATE = ["${env}", "${interpreter}", "-m", "experiments.cli", "fit", "${args}"]


def finished_run(sweep: Path, key: str, returncode: int = 0) -> Path:
    run = sweep / key / f"{key}-20261207-000000"
    (run / "runs" / "val-step100").mkdir(parents=True)
    (run / "checkpoints").mkdir()
    (run / "wandb").mkdir()
    (run / "checkpoints" / "last.ckpt").write_bytes(b"x" * 1000)
    (run / "wandb" / "run.wandb").write_bytes(b"w")
    for name in archive.KEEP:
        (run / name).write_text("{}\n", encoding="utf-8")
    (run / "runs" / "val-step100" / "task.trec").write_text("q Q0 d 1 1.0 t\n", encoding="utf-8")
    (sweep / key / "run.log").write_text(
        "$ /machine/.venv/bin/python -m experiments.cli fit\n", encoding="utf-8"
    )
    done = {"params": PARAMS, "template": TEMPLATE, "returncode": returncode, "run_dir": run.name}
    (sweep / key / "done.json").write_text(json.dumps(done), encoding="utf-8")
    return run


def test_archive_keeps_what_the_runner_and_report_read_and_restores_it(tmp_path):
    sweep, kept, back = tmp_path / "sweep", tmp_path / "kept", tmp_path / "back"
    run = finished_run(sweep, "sft-s0")
    finished_run(sweep, "cl-s0", returncode=1)  # failed: not archived
    (sweep / "cl-s1").mkdir()  # started, no done.json: not archived
    assert archive.main([str(sweep), str(kept)]) == 0
    files = sorted(str(p.relative_to(kept)) for p in kept.rglob("*") if p.is_file())
    name = run.name
    assert files == sorted(
        ["sft-s0/done.json", f"sft-s0/{name}/runs/val-step100/task.trec"]
        + [f"sft-s0/{name}/{n}" for n in archive.KEEP]
    )
    assert archive.sync(sweep, kept) == []  # already there: nothing copied again
    assert archive.main([str(back), str(kept), "--restore"]) == 0
    assert is_finished(back / "sft-s0", PARAMS, TEMPLATE) and not (back / "cl-s0").exists()


def test_restore_sets_an_unfinished_attempt_aside(tmp_path):
    sweep, kept = tmp_path / "sweep", tmp_path / "kept"
    finished_run(sweep, "sft-s0")
    archive.sync(sweep, kept)
    fresh = tmp_path / "fresh"
    (fresh / "sft-s0").mkdir(parents=True)
    (fresh / "sft-s0" / "run.log").write_text("half a run\n", encoding="utf-8")
    assert archive.sync(kept, fresh) == ["sft-s0"]
    aside = [p for p in fresh.iterdir() if p.name.startswith(".sft-s0.unfinished-")]
    assert len(aside) == 1 and (aside[0] / "run.log").read_text(encoding="utf-8") == "half a run\n"


def test_a_missing_source_is_an_input_error_but_an_unmade_archive_restores_nothing(tmp_path, capsys):
    assert archive.main([str(tmp_path / "nothere"), str(tmp_path / "out")]) == 2
    assert (
        capsys.readouterr().err.strip()
        == f"error: {tmp_path / 'nothere'}: not a folder (the sweep folder to copy from)"
    )
    (tmp_path / "file").write_text("x", encoding="utf-8")
    assert archive.main([str(tmp_path / "sweep"), str(tmp_path / "file"), "--restore"]) == 2
    assert "not a folder (the archive folder" in capsys.readouterr().err
    assert archive.main([str(tmp_path / "sweep"), str(tmp_path / "unmade"), "--restore"]) == 0
    assert "nothing to restore" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]  # no folder made for nothing
