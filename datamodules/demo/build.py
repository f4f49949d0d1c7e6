"""``build_demo`` (the whole benchmark into one folder, never over user data) and its command line."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from datamodules.demo.spec import MARKER
from datamodules.demo.tasks import task_specs
from datamodules.demo.write import readme_text, write_test_task, write_train_file
from datamodules.exit_codes import program


def _prepare_out(out: Path) -> None:
    """Make ``out`` ready: create it, or clear a previous build; never touch anything else."""
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a folder; choose another --out")
    if out.is_dir() and any(out.iterdir()):
        if not (out / MARKER).is_file():
            raise FileExistsError(
                f"{out} is not empty and was not made by datamodules.demo (no {MARKER} file); "
                "choose an empty or new folder"
            )
        for name in ("mrb", "train"):
            if (out / name).is_dir():
                shutil.rmtree(out / name)
        for name in ("README.md", MARKER):
            (out / name).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)


def build_demo(out: Path, seed: int = 0) -> dict[str, Any]:
    """Build the demo benchmark into ``out`` (see the ``datamodules.demo`` package docstring).

    Args:
        out: Target folder: new, empty, or a previous build of this function (it is rebuilt).
        seed: Seeds every split, pool, query choice and random first stage.

    Returns:
        A summary: ``{"out", "seed", "tasks": {name: {family, metric, queries, corpus, depth}},
        "train_groups": {name: n}, "files": n, "bytes": n, "seconds": s}``.

    Raises:
        FileExistsError: ``out`` holds something this builder did not make.
    """
    start = time.perf_counter()
    out = Path(out)
    _prepare_out(out)
    marker = {"builder": "datamodules.demo", "seed": seed}
    (out / MARKER).write_text(json.dumps(marker) + "\n", encoding="utf-8")
    specs = task_specs(seed)
    tasks = {
        spec.name: write_test_task(spec, out / "mrb" / spec.name, seed, salt)
        for salt, spec in enumerate(specs)
    }
    train_dir = out / "train"
    train_dir.mkdir(parents=True, exist_ok=True)
    written: set[str] = set()
    groups = {
        spec.name: write_train_file(spec, train_dir, seed, salt, written) for salt, spec in enumerate(specs)
    }
    (out / "README.md").write_text(readme_text(specs, tasks, groups, seed), encoding="utf-8")
    files = [path for path in out.rglob("*") if path.is_file()]
    return {
        "out": str(out),
        "seed": seed,
        "tasks": tasks,
        "train_groups": groups,
        "files": len(files),
        "bytes": sum(path.stat().st_size for path in files),
        "seconds": round(time.perf_counter() - start, 2),
    }


def main(argv: list[str] | None = None) -> int:
    """Command line: ``python -m datamodules.demo --out DIR [--seed 0]``."""
    parser = argparse.ArgumentParser(
        prog=program("datamodules.demo"),
        description="Build the demo benchmark (training groups + MRB test tasks) from offline package data.",
    )
    parser.add_argument(
        "--out", type=Path, required=True, help="target folder (new, empty, or a previous build)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of every split and random choice")
    args = parser.parse_args(argv)
    try:
        summary = build_demo(args.out, seed=args.seed)
    except FileExistsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{'task':<16}{'family':<8}{'metric':<10}{'queries':>8}{'corpus':>8}{'depth':>7}{'train':>7}")
    for name, info in summary["tasks"].items():
        print(
            f"{name:<16}{info['family']:<8}{info['metric']:<10}{info['queries']:>8}{info['corpus']:>8}"
            f"{info['depth']:>7}{summary['train_groups'][name]:>7}"
        )
    print(
        f"wrote {summary['files']} files ({summary['bytes'] / 1e6:.2f} MB) to {summary['out']} "
        f"in {summary['seconds']:.1f} s"
    )
    return 0
