"""Run folders: finding them, reading what the report needs, and grouping them into rows (cells).

A run folder is what ``experiments.cli`` writes: ``config.yaml`` (what marks one), ``eval_history.jsonl``
(the validations: the final result and its tasks are read from here only) and ``metrics.jsonl`` (the
training scalars: the weight curves are read from here only). A run of ``experiments.sweep`` sits in ``<sweep>/<run_key>/<run_folder>/`` next to
the runner's ``done.json``, which records the run's parameters, its exact command line, the folder it
ran in and the environment variables that can change its numbers.
"""

from __future__ import annotations

import json
import math
import os
import shlex
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from experiments.keys import flatten
from experiments.sweep.command import portable
from experiments.sweep.folders import DONE, LOG, RUN_MARKER, read_done

FAMILIES = ("T2T", "I2I", "T2I", "I2T", "T2VD", "T2IT", "IT2T", "IT2I", "IT2IT")
ORDER = {
    "sft": 0,
    "cl": 1,
    "url": 2,
    "constant": 3,
    "tau_mask": 4,
    "multi_token": 5,
    "projection": 6,
}
# Config keys that never make two runs different experiments (names, folders, loggers, the seeds).
IGNORED = (
    "seed_everything",
    "data.seed",
    "runs_dir",
    "run_name",
    "ckpt_path",
    "trainer.default_root_dir",
    "trainer.logger",
    "trainer.callbacks",
    "data.model_name_or_path",
    "data.trust_remote_code",
    "model.objective",
    "model.objective_args.weight",
    "model.objective_args.direction",
)
WEIGHT_KEYS = ("train/weight_pos_mean", "train/weight_neg_sum")


@dataclass
class RunRecord:
    """What the report needs from one run folder."""

    path: Path
    config: dict[str, Any]
    objective: str
    weight: str
    direction: str
    seed: Any
    status: str
    final: float | None = None
    step: int | None = None
    families: dict[str, float] = field(default_factory=dict)
    tasks: dict[str, dict] = field(default_factory=dict)
    retriever: float | None = None
    train: list[dict] = field(default_factory=list)
    done: dict | None = None  # the sweep runner's done.json, when the run belongs to a sweep

    @property
    def command(self) -> list[str] | None:
        """The recorded command as it runs from the repository root of any clone (older records that
        carry the machine's folder and interpreter are made portable the same way)."""
        if not self.done or not self.done.get("command"):
            return None
        return portable(self.done["command"], self.done.get("cwd") or os.getcwd())

    @property
    def command_line(self) -> str | None:
        """The shell line, run from the repository root, that reruns this run exactly:
        ``[VAR=value ...] python -m experiments.cli fit ...``."""
        if self.command is None:
            return None
        parts = [
            f"{k}={shlex.quote(str(v))}" for k, v in sorted(((self.done or {}).get("env") or {}).items())
        ]
        return " ".join([*parts, shlex.join(self.command)])


@dataclass
class Row:
    """Runs that differ only by seed: one cell of the probe."""

    objective: str
    weight: str
    direction: str
    extras: dict[str, Any]
    runs: list[RunRecord]

    @property
    def finals(self) -> list[float]:
        """The runs' final averages; a row holds validated runs only (the report skips the others)."""
        finals = [r.final for r in self.runs if r.final is not None]
        assert len(finals) == len(self.runs)
        return finals

    @property
    def label(self) -> str:
        extra = " ".join(f"{k}={format_value(v)}" for k, v in self.extras.items())
        return " ".join(x for x in (self.objective, f"W={self.weight} D={self.direction}", extra) if x)


# ---- reading run folders ----------------------------------------------------------------------
def find_run_folders(root: Path) -> list[Path]:
    """Run folders under ``root`` (itself included), not descending into one or into hidden folders."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        if RUN_MARKER in filenames:
            found.append(Path(dirpath))
            dirnames[:] = []
            continue
        dirnames[:] = sorted(
            d for d in dirnames if not d.startswith(".") and d not in ("wandb", "checkpoints")
        )
    return sorted(found)


def probe_cell(model: dict) -> tuple[str, str, str]:
    """(objective, weight, direction); plain sft / cl are W_SFT D_SFT / W_CL D_CL."""
    objective = str(model.get("objective", "?"))
    args = model.get("objective_args") or {}
    if objective in ("sft", "cl"):
        return objective, objective, objective
    default = "sft" if objective == "url" else "-"
    return objective, str(args.get("weight", default)), str(args.get("direction", default))


def sweep_record(path: Path) -> tuple[str, dict | None]:
    """(status, done.json) of a run of a sweep folder (experiments.sweep): ``finished`` with its
    ``done.json``, ``unfinished``; ``unknown`` for a run outside a sweep. A ``done.json`` that names
    another run folder (an older attempt of the same run) does not describe this one."""
    parent = path.parent
    if (parent / DONE).is_file():
        done = read_done(parent)
        if done is not None and done.get("run_dir") not in (None, path.name):
            return "unfinished", None
        return "finished", done
    if (parent / LOG).is_file():
        return "unfinished", None
    return "unknown", None


class RunFolderError(ValueError):
    """A run folder the report cannot use; the message names the file (and line) and why."""


def read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise RunFolderError(f"{path}: not UTF-8 text (byte {error.start})") from None


def read_records(path: Path) -> list[dict]:
    """Every line of a run's JSONL record as an object. Strict, unlike the sweep runner's reader: the
    CLI appends whole lines atomically, so a line that does not parse is damage, and skipping it
    would silently make an earlier validation the final one."""
    if not path.is_file():
        return []
    rows = []
    for number, line in enumerate(read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            raise RunFolderError(f"{path}:{number}: not a JSON line") from None
        if not isinstance(row, dict):
            raise RunFolderError(f"{path}:{number}: not a JSON object")
        rows.append(row)
    return rows


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def check_validation(record: dict, where: str) -> None:
    """The fields of a final validation the report reads: a finite ``average``, ``tasks`` as
    ``{task: {"value": number, ...}}`` and ``families`` as ``{family: number}``."""
    if not _number(record.get("average")):
        raise RunFolderError(f"{where}: 'average' is {record.get('average')!r}, not a finite number")
    tasks, families = record.get("tasks", {}), record.get("families", {})
    if not isinstance(tasks, dict) or not all(
        isinstance(v, dict) and _number(v.get("value")) for v in tasks.values()
    ):
        raise RunFolderError(f"{where}: 'tasks' is not {{task: {{\"value\": number, ...}}}}")
    if not isinstance(families, dict) or not all(_number(v) for v in families.values()):
        raise RunFolderError(f"{where}: 'families' is not {{family: number}}")


def load_run(path: Path) -> RunRecord:
    """What the report needs from one run folder.

    Raises:
        RunFolderError: a config that is not a mapping, a file that is not UTF-8, a damaged JSONL
            line, or a final validation with a non-numeric average or malformed tasks (named).
    """
    try:
        config = yaml.safe_load(read_text(path / "config.yaml")) or {}
    except yaml.YAMLError as error:
        raise RunFolderError(f"{path / 'config.yaml'}: not YAML ({' '.join(str(error).split())})") from None
    if not isinstance(config, dict) or not isinstance(config.get("model") or {}, dict):
        raise RunFolderError(
            f"{path / 'config.yaml'}: not a mapping of config keys (a run's resolved config)"
        )
    objective, weight, direction = probe_cell(config.get("model") or {})
    status, done = sweep_record(path)
    # experiments.cli gives data.seed the run's seed_everything unless it is set: one seed sets both
    # initialisation and data order. A data seed set apart is part of the run's seed ("0/d5").
    seed, data_seed = config.get("seed_everything"), (config.get("data") or {}).get("seed")
    if data_seed is not None and data_seed != seed:
        seed = f"{seed}/d{data_seed}"
    record = RunRecord(
        path=path,
        config=flatten(config),
        objective=objective,
        weight=weight,
        direction=direction,
        seed=seed,
        status=status,
        done=done,
    )
    evals = [r for r in read_records(path / "eval_history.jsonl") if r.get("stage", "val") == "val"]
    if evals:
        last = evals[-1]
        check_validation(last, f"{path / 'eval_history.jsonl'}: the last validation")
        record.final, record.step = last.get("average"), last.get("step")
        record.families = dict(last.get("families") or {})
        record.tasks = dict(last.get("tasks") or {})
        record.retriever = (last.get("retriever") or {}).get("average")
    metrics = read_records(path / "metrics.jsonl")
    record.train = [r for r in metrics if any(k in r for k in WEIGHT_KEYS)]
    return record


# ---- rows -------------------------------------------------------------------------------------
def format_value(value: Any) -> str:
    return format(value, "g") if isinstance(value, float) else str(value)


def sort_key(value: Any) -> tuple:
    if isinstance(value, bool) or value is None:
        return (2, str(value))
    if isinstance(value, int | float):
        return (0, float(value))
    return (1, ORDER.get(str(value), 99), str(value))


def varying_keys(runs: list[RunRecord]) -> list[str]:
    """Config keys (other than names, folders and the seed) whose values differ between runs."""
    keys = sorted({k for r in runs for k in r.config})
    varying = []
    for key in keys:
        if any(key == p or key.startswith(p + ".") for p in IGNORED):
            continue
        # Runs without the key come from code that did not have it yet: no evidence of a difference.
        values = {json.dumps(r.config[key], sort_keys=True, default=str) for r in runs if key in r.config}
        if len(values) > 1:
            varying.append(key)
    return varying


def column_names(keys: list[str]) -> dict[str, str]:
    """Short column names (last dotted part) unless two keys would share one."""
    short = [k.rsplit(".", 1)[-1] for k in keys]
    return {k: (s if short.count(s) == 1 else k) for k, s in zip(keys, short, strict=True)}


def group_rows(runs: list[RunRecord]) -> list[Row]:
    keys = varying_keys(runs)
    names = column_names(keys)
    groups: dict[tuple, Row] = {}
    for run in runs:
        extras = {names[k]: run.config.get(k) for k in keys}
        ident = (run.objective, run.weight, run.direction, json.dumps(extras, sort_keys=True, default=str))
        row = groups.setdefault(ident, Row(run.objective, run.weight, run.direction, extras, []))
        row.runs.append(run)
    rows = list(groups.values())
    rows.sort(
        key=lambda r: (
            sort_key(r.objective),
            sort_key(r.weight),
            sort_key(r.direction),
            tuple(sort_key(v) for v in r.extras.values()),
        )
    )
    for row in rows:
        row.runs.sort(key=lambda r: sort_key(r.seed))
    return rows


def mean_std(values: list[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (n - 1); no std for a single value."""
    mean = statistics.fmean(values)
    return mean, (statistics.stdev(values) if len(values) > 1 else None)


def families_of(rows: list[Row]) -> list[str]:
    present = {f for row in rows for run in row.runs for f in run.families}
    return [f for f in FAMILIES if f in present] + sorted(present - set(FAMILIES))


def mean_curve(runs: list[RunRecord], key: str) -> tuple[list[int], list[float], list[float]]:
    """Steps and mean ± std over seeds of one training statistic (steps any seed logged)."""
    by_step: dict[int, list[float]] = {}
    for run in runs:
        for r in run.train:
            if key in r and "step" in r:
                by_step.setdefault(int(r["step"]), []).append(float(r[key]))
    steps = sorted(by_step)
    means = [statistics.fmean(by_step[s]) for s in steps]
    stds = [statistics.stdev(by_step[s]) if len(by_step[s]) > 1 else 0.0 for s in steps]
    return steps, means, stds
