"""A sweep's run folders: ``done.json``, ``running.lock``, set-aside attempts and the run's final metric.

Layout of ``<sweep_dir>/<run_key>/``: ``run.log`` (the run's stdout + stderr), the CLI's run folder
``<run_key>-<timestamp>/``, ``done.json`` after exit code 0, ``running.lock`` while a runner holds it,
and ``.attempts/<n>/`` for earlier attempts. ``experiments.report`` reads the same files through
:func:`read_done` and :func:`read_jsonl`.

Inside the CLI's run folder each fact has one file: ``config.yaml`` (written first, in every run
folder: what marks one), ``eval_history.jsonl`` (every validation and test: metric values per task,
family means, the average, the retriever's, the step) and ``metrics.jsonl`` (the training scalars
only: ``train/...`` per logging step).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import time
from pathlib import Path
from typing import Any

from datamodules.files import atomic_write

DONE, LOG, LOCK, ATTEMPTS = "done.json", "run.log", "running.lock", ".attempts"
# Environment that can change a run's numbers (CPU threads, GPU choice, cuBLAS determinism): kept in
# done.json with the folder the command ran in, so the report can print the exact command.
REPRO_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "CUDA_VISIBLE_DEVICES", "CUBLAS_WORKSPACE_CONFIG")


def normalise(params: dict) -> Any:
    """Parameters as ``done.json`` stores them (JSON types, sorted keys), for comparing runs."""
    return json.loads(json.dumps(params, sort_keys=True, default=str))


def read_done(run_dir: Path) -> dict | None:
    """The ``done.json`` of a run's folder; ``None`` when absent, unreadable or not a JSON object."""
    try:
        done = json.loads((run_dir / DONE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return done if isinstance(done, dict) else None


def write_done(run_dir: Path, done: dict) -> None:
    """Write ``done.json`` whole or not at all: a runner killed while writing leaves the run unfinished."""
    data = (json.dumps(done, indent=2) + "\n").encode("utf-8")
    atomic_write(run_dir / DONE, lambda handle: handle.write(data))


def read_jsonl(path: Path) -> list[dict]:
    """The JSON lines of ``path`` (none when it is absent); a line cut short by a run still writing
    is skipped."""
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        with contextlib.suppress(ValueError):
            rows.append(json.loads(line))
    return rows


def is_finished(run_dir: Path, params: dict, template: list) -> bool:
    """Finished = a ``done.json`` (written after exit code 0) for these parameters and this command."""
    done = read_done(run_dir)
    return (
        done is not None
        and done.get("returncode") == 0
        and done.get("params") == normalise(params)
        and done.get("template") == [str(item) for item in template]
    )


RUN_MARKER = "config.yaml"  # what experiments.cli writes first into every run folder
EVAL_STAGES = ("val", "test")


def latest_run_folder(run_dir: Path) -> Path | None:
    """The CLI's newest ``<run_name>-<timestamp>/`` folder inside a run's folder (one holding
    ``config.yaml``)."""
    folders = [
        p
        for p in run_dir.iterdir()
        if p.is_dir() and not p.name.startswith(".") and (p / RUN_MARKER).is_file()
    ]
    return max(folders, key=lambda p: (p.stat().st_mtime, p.name)) if folders else None


def eval_scalars(record: dict) -> dict[str, float]:
    """An ``eval_history.jsonl`` line under the keys the module logs it as (docs/formats.md §4):
    ``<stage>/<task>/<metric>``, ``<stage>/family/<F>``, ``<stage>/mrb_avg``,
    ``<stage>/retriever_avg`` and ``<stage>/<task>/skipped_candidates``."""
    stage = record.get("stage", "val")
    out: dict[str, float] = {}
    for task, result in (record.get("tasks") or {}).items():
        if isinstance(result, dict) and "metric" in result and "value" in result:
            out[f"{stage}/{task}/{result['metric']}"] = result["value"]
    for family, value in (record.get("families") or {}).items():
        out[f"{stage}/family/{family}"] = value
    if "average" in record:
        out[f"{stage}/mrb_avg"] = record["average"]
    retriever = record.get("retriever")
    if isinstance(retriever, dict) and "average" in retriever:
        out[f"{stage}/retriever_avg"] = retriever["average"]
    for task, count in (record.get("skipped_candidates") or {}).items():
        out[f"{stage}/{task}/skipped_candidates"] = float(count)
    return out


def final_metric(folder: Path | None, name: str) -> float | None:
    """The value of ``name`` a CLI run folder reports, as its W&B run summary does: the best (highest)
    ``val/mrb_avg`` over its validations during training (step > 0; the step-0 baseline only when
    there is nothing else), the last value of any other key. Evaluation keys (``val/...``,
    ``test/...``) are read from ``eval_history.jsonl`` (:func:`eval_scalars`), every other key from
    ``metrics.jsonl``."""
    if folder is None:
        return None
    stage = name.split("/", 1)[0]
    if stage in EVAL_STAGES:
        rows = [
            (record.get("step"), scalars[name])
            for record in read_jsonl(folder / "eval_history.jsonl")
            if record.get("stage", "val") == stage
            for scalars in (eval_scalars(record),)
            if name in scalars
        ]
    else:
        rows = [(row.get("step"), row[name]) for row in read_jsonl(folder / "metrics.jsonl") if name in row]
    if not rows:
        return None
    if name != "val/mrb_avg":
        return rows[-1][1]
    trained = [value for step, value in rows if isinstance(step, int | float) and step > 0]
    return max(trained or [value for _, value in rows])  # the rule of experiments.callbacks.is_better


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def acquire_lock(run_dir: Path) -> str | None:
    """Take ``running.lock``; on failure return who holds it. Stale locks on this host are taken over."""
    path = run_dir / LOCK
    me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                holder = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                holder = {}
            if not isinstance(holder, dict):
                holder = {}
            pid, host = holder.get("pid"), holder.get("host")
            if isinstance(pid, int) and host == me["host"] and not pid_alive(pid):
                path.unlink(missing_ok=True)
                continue
            return f"pid {pid} on {host}"
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(me, handle)
        return None
    return "another runner"


def move_attempt_aside(run_dir: Path) -> Path | None:
    """Move an unfinished (or outdated) earlier attempt into ``.attempts/<n>/``; keep its log."""
    leftovers = [p for p in run_dir.iterdir() if p.name not in (LOCK, ATTEMPTS)]
    if not leftovers:
        return None
    attempts = run_dir / ATTEMPTS
    attempts.mkdir(exist_ok=True)
    target = attempts / str(1 + sum(1 for _ in attempts.iterdir()))
    target.mkdir()
    for path in leftovers:
        shutil.move(str(path), str(target / path.name))
    return target


def tail(path: Path, lines: int = 3) -> list[str]:
    """The last non-blank ``lines`` of a log (none when it cannot be read)."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    return [line for line in text.splitlines() if line.strip()][-lines:]
