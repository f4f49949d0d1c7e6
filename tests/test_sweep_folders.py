"""The sweep's run-folder files (experiments/sweep/folders.py), which experiments.report reads too:
a ``done.json`` or ``running.lock`` that is valid JSON but not an object is treated as unreadable,
not a crash."""

from __future__ import annotations

import json

import pytest

from experiments.report import runs as report_runs
from experiments.sweep import folders


def test_a_done_json_that_is_not_an_object_is_not_finished_and_the_report_agrees(tmp_path):
    run_dir = tmp_path / "x1"
    (run_dir / "x1-20260101-000000").mkdir(parents=True)
    (run_dir / "done.json").write_text("[1, 2]\n", encoding="utf-8")
    assert folders.read_done(run_dir) is None
    assert folders.is_finished(run_dir, {"x": 1}, ["${args}"]) is False  # was an AttributeError
    assert report_runs.sweep_record(run_dir / "x1-20260101-000000") == ("finished", None)

    done = {"returncode": 0, "params": {"x": 1}, "template": ["${args}"], "run_dir": "x1-20260101-000000"}
    (run_dir / "done.json").write_text(json.dumps(done), encoding="utf-8")
    assert folders.is_finished(run_dir, {"x": 1}, ["${args}"]) is True
    assert report_runs.sweep_record(run_dir / "x1-20260101-000000") == ("finished", done)
    assert report_runs.sweep_record(run_dir / "x1-older") == ("unfinished", None)


def test_a_lock_that_is_not_an_object_counts_as_held_by_an_unknown_runner(tmp_path):
    (tmp_path / "running.lock").write_text('"busy"', encoding="utf-8")
    assert folders.acquire_lock(tmp_path) == "pid None on None"  # was an AttributeError
    (tmp_path / "running.lock").unlink()
    assert folders.acquire_lock(tmp_path) is None
    assert json.loads((tmp_path / "running.lock").read_text())["pid"] > 0


def test_jsonl_lines_cut_short_are_skipped(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n{"step": 2}\n{"st', encoding="utf-8")
    assert folders.read_jsonl(path) == [{"step": 1}, {"step": 2}]
    assert folders.read_jsonl(tmp_path / "absent.jsonl") == []


def test_done_json_is_written_whole_or_not_at_all(tmp_path, monkeypatch):
    import datamodules.files

    folders.write_done(tmp_path, {"returncode": 0, "params": {"x": 1}})
    assert folders.read_done(tmp_path) == {"returncode": 0, "params": {"x": 1}}

    def full_disk(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(datamodules.files.os, "fsync", full_disk)
    run_dir = tmp_path / "x2"
    run_dir.mkdir()
    with pytest.raises(OSError, match="No space"):
        folders.write_done(run_dir, {"returncode": 0, "params": {"x": 2}})
    assert list(run_dir.iterdir()) == []  # neither a done.json nor a temporary file is left
