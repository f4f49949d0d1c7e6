"""Keep a long sweep's finished runs in the repository, so that it resumes on another machine or session.

    python -m experiments.sweep.archive runs/sweeps/real_probe_v2_pilot docs/results/real_probe/runs/real_probe_v2_pilot
    python -m experiments.sweep.archive runs/sweeps/real_probe_v2_pilot docs/results/real_probe/runs/real_probe_v2_pilot --restore

A finished run (``done.json`` with exit code 0) is copied without what is large or machine-specific:
``done.json`` and, of the CLI's run folder, ``config.yaml``, ``metrics.jsonl``, ``eval_history.jsonl``,
``step_times.json`` and the validations' TREC files (``runs/val-step*/*.trec``). No checkpoint, W&B
folder or ``run.log`` (it names the machine's folders). That is what the sweep runner needs to skip
the run (:func:`folders.is_finished`) and what ``experiments.report`` reads. ``--restore`` copies
archived runs back into the sweep folder where it has no finished run of that key. Runs already
present on the target side are left alone; each run is copied into a hidden temporary folder and
renamed, so an interrupted copy never looks finished.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

from datamodules.exit_codes import fail, program, report
from datamodules.files import staged_folder

from .folders import DONE, read_done

KEEP = ("config.yaml", "metrics.jsonl", "eval_history.jsonl", "step_times.json")


def finished_runs(sweep_dir: Path) -> list[Path]:
    """The run keys under ``sweep_dir`` whose ``done.json`` records exit code 0."""
    if not sweep_dir.is_dir():
        return []
    out = []
    for key in sorted(p for p in sweep_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        done = read_done(key)
        if done and done.get("returncode") == 0 and done.get("run_dir") and (key / done["run_dir"]).is_dir():
            out.append(key)
    return out


def copy_run(key: Path, target: Path) -> None:
    """Copy one finished run (the files the runner and the report read) to ``target`` atomically."""
    done = read_done(key) or {}
    run = key / done["run_dir"]
    with staged_folder(target, "copying") as temporary:
        (temporary / done["run_dir"]).mkdir(parents=True)
        for name in KEEP:
            if (run / name).is_file():
                shutil.copy2(run / name, temporary / done["run_dir"] / name)
        for trec in sorted(run.glob("runs/val-step*/*.trec")):
            destination = temporary / done["run_dir"] / trec.relative_to(run)
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(trec, destination)
        shutil.copy2(key / DONE, temporary / DONE)


def sync(source: Path, target: Path) -> list[str]:
    """Copy every finished run of ``source`` that ``target`` does not hold finished; their keys."""
    target.mkdir(parents=True, exist_ok=True)
    have = {p.name for p in finished_runs(target)}
    copied = []
    for key in finished_runs(source):
        if key.name in have:
            continue
        if (target / key.name).exists():  # an unfinished attempt: set aside, never deleted
            (target / key.name).rename(target / f".{key.name}.unfinished-{os.getpid()}")
        copy_run(key, target / key.name)
        copied.append(key.name)
    return copied


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=program("experiments.sweep.archive"), description=__doc__.splitlines()[0]
    )
    parser.add_argument("sweep_dir", type=Path, help="the sweep's run folder (runs/sweeps/<name>)")
    parser.add_argument("archive_dir", type=Path, help="where finished runs are kept (committed)")
    parser.add_argument("--restore", action="store_true", help="copy archived runs back into SWEEP_DIR")
    args = parser.parse_args(argv)
    source, target = (
        (args.archive_dir, args.sweep_dir) if args.restore else (args.sweep_dir, args.archive_dir)
    )
    if not source.is_dir():
        if args.restore and not source.exists():  # a sweep that was never archived: nothing to restore
            print(f"nothing to restore: {source} does not exist yet")
            return 0
        return report(
            f"{source}: not a folder (the {'archive' if args.restore else 'sweep'} folder to copy from)"
        )
    try:
        copied = sync(source, target)
    except OSError as error:  # a missing folder: 2; e.g. a full disk: 1
        return fail(error)
    print(
        f"{len(copied)} finished run(s) copied from {source} to {target}"
        + (f": {', '.join(copied)}" if copied else "")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
