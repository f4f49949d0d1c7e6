"""The local runner: a planned sweep run one subprocess at a time, resumable and shareable by agents."""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from .agents import AGENT_TAG_ENV
from .command import build_command, portable, run_args
from .config import DEFAULT_COMMAND, Run
from .folders import (
    LOCK,
    LOG,
    REPRO_ENV,
    acquire_lock,
    final_metric,
    is_finished,
    latest_run_folder,
    move_attempt_aside,
    normalise,
    read_done,
    tail,
    write_done,
)


class LocalRunner:
    """Runs a planned sweep one subprocess at a time, resumable and safe to share between agents."""

    def __init__(self, config: dict, sweep_dir: Path, runs: list[Run], *, dry_run: bool = False) -> None:
        self.config, self.sweep_dir, self.runs, self.dry_run = config, sweep_dir, runs, dry_run
        metric = config.get("metric") or {}
        self.metric = metric.get("name", "val/mrb_avg")
        self.goal = metric.get("goal", "maximize")
        self.tag = os.environ.get(AGENT_TAG_ENV, "")
        self.template = [str(item) for item in config.get("command", DEFAULT_COMMAND)]

    def say(self, text: str, end: str = "\n") -> None:
        print(f"[{self.tag}] {text}" if self.tag else text, end=end, flush=True)

    def run(self) -> int:
        total = len(self.runs)
        self.say(f"sweep {self.config['name']}: {total} runs -> {self.sweep_dir}  (metric: {self.metric})")
        if self.dry_run:
            for run in self.runs:
                state = (
                    " (finished)" if is_finished(self.sweep_dir / run.key, run.params, self.template) else ""
                )
                command = build_command(
                    self.config, run_args(run, self.sweep_dir), self.sweep_dir / run.key / "args.json"
                )
                self.say(f"[{run.index + 1}/{total}] {run.key}{state}: {' '.join(command)}")
            return 0
        self.sweep_dir.mkdir(parents=True, exist_ok=True)
        counts = {"done": 0, "skipped": 0, "failed": 0, "busy": 0}
        results: dict[str, float] = {}
        for run in self.runs:
            label = f"[{run.index + 1}/{total}] {run.key}"
            status, value = self.run_one(run, label)
            counts[status] += 1
            if value is not None:
                results[run.key] = value
        self.summary(counts, results)
        return 1 if counts["failed"] else 0

    def run_one(self, run: Run, label: str) -> tuple[str, float | None]:
        run_dir = self.sweep_dir / run.key
        args = run_args(run, self.sweep_dir)
        command = build_command(self.config, args, run_dir / "args.json")
        if is_finished(run_dir, run.params, self.template):
            value = (read_done(run_dir) or {}).get("metric", {}).get(self.metric)
            self.say(f"{label} ... skipped (finished){self.metric_text(value)}")
            return "skipped", value
        run_dir.mkdir(parents=True, exist_ok=True)
        holder = acquire_lock(run_dir)
        if holder is not None:
            self.say(f"{label} ... skipped (running elsewhere: {holder})")
            return "busy", None
        try:
            if is_finished(run_dir, run.params, self.template):  # another agent finished it meanwhile
                value = (read_done(run_dir) or {}).get("metric", {}).get(self.metric)
                self.say(f"{label} ... skipped (finished){self.metric_text(value)}")
                return "skipped", value
            moved = move_attempt_aside(run_dir)
            note = f" (earlier attempt moved to {moved.relative_to(self.sweep_dir)})" if moved else ""
            return self.execute(run, run_dir, args, command, label, note)
        finally:
            (run_dir / LOCK).unlink(missing_ok=True)

    def execute(self, run, run_dir: Path, args: dict, command: list[str], label: str, note: str):
        if "${args_json_file}" in self.config.get("command", []):
            (run_dir / "args.json").write_text(json.dumps(args), encoding="utf-8")
        log_path = run_dir / LOG
        if not self.tag:
            self.say(f"{label} ...", end=" ")
        env = dict(os.environ)
        env["PYTHONUNBUFFERED"] = "1"
        env.setdefault("WANDB_RUN_GROUP", str(self.config["name"]))
        start = time.monotonic()
        with open(log_path, "w", encoding="utf-8") as log:
            log.write(f"$ {' '.join(command)}\n")
            log.flush()
            try:
                process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
            except OSError as error:  # the command itself cannot start (a wrong path in the YAML)
                log.write(f"cannot start the command: {error}\n")
                self.say(
                    f"{'' if not self.tag else label + ' ... '}FAILED (cannot start: {error}); log: {log_path}"
                )
                return "failed", None
            try:
                returncode = process.wait()
            except KeyboardInterrupt:
                process.terminate()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(timeout=30)
                if process.poll() is None:
                    process.kill()
                self.say(f"interrupted; log: {log_path}")
                raise
        seconds = time.monotonic() - start
        prefix = f"{label} ... " if self.tag else ""
        if returncode != 0:
            self.say(f"{prefix}FAILED (exit {returncode}) after {seconds:.0f} s{note}; log: {log_path}")
            for line in tail(log_path):
                self.say(f"    | {line}")
            return "failed", None
        folder = latest_run_folder(run_dir)
        value = final_metric(folder, self.metric)
        done = {
            "key": run.key,
            "params": normalise(run.params),
            "template": self.template,
            "command": portable(command, os.getcwd()),  # run from the repository root, any clone
            "env": {k: env[k] for k in REPRO_ENV if k in env},
            "returncode": 0,
            "seconds": round(seconds, 1),
            "run_dir": str(folder.relative_to(run_dir)) if folder else None,
            "metric": {self.metric: value},
            "finished": datetime.datetime.now().isoformat(timespec="seconds"),
        }
        write_done(run_dir, done)
        self.say(f"{prefix}done in {seconds:.0f} s{self.metric_text(value)}{note}")
        return "done", value

    def metric_text(self, value: float | None) -> str:
        return f"  {self.metric}={value:.4f}" if isinstance(value, int | float) else ""

    def summary(self, counts: dict[str, int], results: dict[str, float]) -> None:
        parts = [
            f"{counts['done']} ran",
            f"{counts['skipped']} skipped (finished)",
            f"{counts['failed']} failed",
        ]
        if counts["busy"]:
            parts.append(f"{counts['busy']} running elsewhere")
        self.say(f"sweep {self.config['name']}: " + ", ".join(parts))
        if results:
            pick = max if self.goal == "maximize" else min
            best = pick(results, key=lambda key: results[key])
            self.say(f"best {self.metric}={results[best]:.4f} ({best})")
        self.say(f"report: {sys.executable} -m experiments.report {self.sweep_dir}")
