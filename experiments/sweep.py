"""Run a sweep: ``python -m experiments.sweep <sweep.yaml> [--count n] [--local] [--runs-dir DIR]``.

The YAML is a W&B sweep configuration (``experiments/sweeps/*.yaml``) whose parameters are the
CLI's own dotted keys (``model.objective_args.weight``, ``data.num_negatives``, ``seed_everything``).

* W&B logged in and reachable (and no ``--local``): ``wandb.sweep`` creates the sweep and
  ``wandb.agent`` runs its ``command`` for each proposed run, exactly as ``wandb agent`` does.
  ``--sweep-id ID`` joins an existing sweep instead (a second machine, another GPU).
* Otherwise, or with ``--local``: a local runner over the same YAML, for ``grid`` and ``random``.

The local runner builds each run's command line as the W&B agent would: the sweep ``command``
with ``${env}`` -> ``/usr/bin/env``, ``${interpreter}`` -> this Python (W&B: ``python`` from
PATH), ``${program}`` -> ``program`` and ``${args}`` -> ``--key=value`` per parameter
(``str(value)``, in YAML order), plus ``--runs_dir=<sweep_dir>/<run_key>`` and
``--run_name=<run_key>``. ``${args_no_hyphens}``, ``${args_no_equals}``, ``${args_json}``,
``${args_json_file}``, ``${args_no_boolean_flags}``, ``${args_append_hydra}``,
``${args_override_hydra}`` and ``${envvar:NAME}`` follow W&B's definitions too.

Each run lives in ``<sweep_dir>/<run_key>/``: ``run.log`` (its stdout + stderr), the CLI's run
folder ``<run_key>-<timestamp>/`` and, after exit code 0, ``done.json``. A run with a
``done.json`` for the same parameters and command is finished and skipped, so running the sweep
again resumes it; an earlier unfinished (or outdated) attempt is moved to
``<run_key>/.attempts/<n>/`` before a retry (the report ignores hidden folders). ``<run_key>/running.lock`` keeps two runners on one sweep folder
(one per GPU) from running the same run.

The plan is deterministic: a grid expands in YAML order (the last parameter varies fastest);
a random sweep draws sample ``i`` from ``Random(f"{seed}:{i}")``. ``--count n`` limits the sweep
to the first ``n`` runs of that plan (default: the whole grid, or ``run_cap`` for random), so
the same command resumes the same runs and a larger ``n`` extends the sweep. (For a W&B agent,
``--count`` is the number of runs that agent executes.)

Several GPUs: ``--gpus 0,1,2,3`` starts one agent per GPU (``CUDA_VISIBLE_DEVICES=<i>``), sharing
one W&B sweep, or one local sweep folder. By hand, the same is
``CUDA_VISIBLE_DEVICES=<i> python -m experiments.sweep <yaml> --local &`` once per GPU (local) or
``CUDA_VISIBLE_DEVICES=<i> python -m experiments.sweep <yaml> --sweep-id <id> &`` (W&B).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import itertools
import json
import math
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from experiments.keys import flatten, run_label

DEFAULT_COMMAND = ["${env}", "${interpreter}", "${program}", "${args}"]
LOCAL_METHODS = ("grid", "random")
PARAMETER_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")
ENVVAR_MACRO = re.compile(r"\$\{envvar:([A-Z0-9_]*)\}")
DONE, LOG, LOCK, ATTEMPTS = "done.json", "run.log", "running.lock", ".attempts"
AGENT_TAG_ENV = "RERANK_SWEEP_AGENT"
# Environment that can change a run's numbers (CPU threads, GPU choice, cuBLAS determinism): kept in
# done.json with the folder the command ran in, so the report can print the exact command.
REPRO_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "CUDA_VISIBLE_DEVICES", "CUBLAS_WORKSPACE_CONFIG")


class SweepError(ValueError):
    """A sweep YAML that cannot run; the message names the file and the key."""


@dataclass
class Run:
    """One run of the plan: its position, folder name and full parameter set."""

    index: int
    key: str
    params: dict[str, Any]


# ---- the sweep YAML ----------------------------------------------------------------------------
def load_sweep(path: str | Path, overrides: dict[str, Any] | None = None) -> dict:
    """Read and check a sweep YAML; ``overrides`` become constant parameters (``--set``)."""
    path = Path(path)
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as error:
        raise SweepError(f"{path}: cannot read the sweep YAML: {error}") from error
    if not isinstance(config, dict):
        raise SweepError(f"{path}: a sweep YAML is a mapping (method, metric, parameters, command)")
    config.setdefault("name", path.stem)
    parameters = config.get("parameters")
    if not isinstance(parameters, dict) or not parameters:
        raise SweepError(f"{path}: 'parameters' must be a non-empty mapping of dotted CLI keys")
    for key, value in (overrides or {}).items():
        parameters[key] = {"value": value}
    for name, spec in parameters.items():
        check_parameter(path, name, spec)
    command = config.get("command", DEFAULT_COMMAND)
    if not isinstance(command, list) or not all(isinstance(item, str | int | float) for item in command):
        raise SweepError(f"{path}: 'command' must be a list of strings (W&B macros like ${{args}} included)")
    return config


def check_parameter(path: Path, name: str, spec: Any) -> None:
    """The pitfalls that W&B would pass through silently, caught before any run starts."""
    where = f"{path}: parameters.{name}"
    if not PARAMETER_NAME.match(str(name)):
        raise SweepError(f"{where}: not a valid parameter name (letters, digits, '_', '.', '-')")
    if any(part.isdigit() for part in str(name).split(".")) or "[" in str(name):
        raise SweepError(f"{where}: a sweep cannot override one list element by index; use named dicts")
    if not isinstance(spec, dict):
        raise SweepError(f"{where}: expected a mapping such as {{value: x}} or {{values: [x, y]}}")
    if "parameters" in spec:
        raise SweepError(f"{where}: nested parameters are not supported; use dotted keys")
    values = [spec["value"]] if "value" in spec else spec.get("values")
    if values is not None:
        if not isinstance(values, list) or not values:
            raise SweepError(f"{where}: 'values' must be a non-empty list")
        if any(value is None for value in values):
            raise SweepError(f'{where}: write "null" (a string), not a bare null: W&B would pass None')
    elif "min" not in spec and "distribution" not in spec:
        raise SweepError(f"{where}: needs 'value', 'values' or a distribution with min/max")


def is_swept(spec: dict) -> bool:
    """Whether a parameter takes more than one value."""
    if "value" in spec:
        return False
    return "values" not in spec or len(spec["values"]) > 1


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["trainer.max_steps=2"]`` -> ``{"trainer.max_steps": 2}`` (values read as YAML)."""
    overrides = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SweepError(f"--set {item!r}: expected KEY=VALUE")
        overrides[key] = yaml.safe_load(value) if value else ""
    return overrides


# ---- the plan ----------------------------------------------------------------------------------
def expand_grid(parameters: dict[str, dict]) -> list[dict[str, Any]]:
    """Every combination, in YAML order with the last parameter varying fastest."""
    names, choices = [], []
    for name, spec in parameters.items():
        if "value" in spec:
            values = [spec["value"]]
        elif "values" in spec:
            values = spec["values"]
        else:
            raise SweepError(f"parameters.{name}: a grid needs 'value' or 'values', not a distribution")
        names.append(name)
        choices.append(values)
    return [dict(zip(names, combo, strict=True)) for combo in itertools.product(*choices)]


def sample_value(name: str, spec: dict, rng: random.Random) -> Any:
    """One draw of a W&B parameter specification."""
    if "value" in spec:
        return spec["value"]
    if "values" in spec:
        weights = spec.get("probabilities")
        return rng.choices(spec["values"], weights=weights)[0]
    low, high = spec.get("min"), spec.get("max")
    default = "int_uniform" if isinstance(low, int) and isinstance(high, int) else "uniform"
    kind = spec.get("distribution", default)
    q = spec.get("q", 1.0)
    mu, sigma = spec.get("mu", 0.0), spec.get("sigma", 1.0)
    draws = {
        "uniform": lambda: rng.uniform(low, high),
        "int_uniform": lambda: rng.randint(low, high),
        "q_uniform": lambda: round(rng.uniform(low, high) / q) * q,
        "log_uniform": lambda: math.exp(rng.uniform(low, high)),
        "log_uniform_values": lambda: math.exp(rng.uniform(math.log(low), math.log(high))),
        "q_log_uniform_values": lambda: round(math.exp(rng.uniform(math.log(low), math.log(high))) / q) * q,
        "normal": lambda: rng.gauss(mu, sigma),
        "log_normal": lambda: math.exp(rng.gauss(mu, sigma)),
    }
    if kind not in draws:
        raise SweepError(
            f"parameters.{name}: distribution {kind!r} is not supported locally ({sorted(draws)})"
        )
    return draws[kind]()


def run_key(params: dict[str, Any], parameters: dict[str, dict]) -> str:
    """Folder name of a run from the parameters it varies (``url-Wsft-Dcl-s0``): the CLI's run naming
    (``experiments.keys``) over the swept keys, the objective first and the seed last."""
    names = [n for n, spec in parameters.items() if is_swept(spec) and n != "seed_everything"]
    if "model.objective" in params:
        names = ["model.objective", *[n for n in names if n != "model.objective"]]
    if "seed_everything" in parameters and is_swept(parameters["seed_everything"]):
        names.append("seed_everything")
    return run_label(params, names)


def plan_runs(config: dict, count: int | None = None, seed: int = 0) -> list[Run]:
    """The deterministic list of runs of a sweep (see the module docstring for ``count``)."""
    method = config.get("method")
    parameters = config["parameters"]
    cap = config.get("run_cap")
    limit = count if count is not None else cap
    if method == "grid":
        combos = expand_grid(parameters)
        if limit is not None:
            combos = combos[:limit]
        runs = [Run(i, run_key(p, parameters), p) for i, p in enumerate(combos)]
        keys = [run.key for run in runs]
        if len(set(keys)) != len(keys):  # repeated values in a list: keep folders apart
            for run in runs:
                run.key = f"g{run.index:03d}-{run.key}"
        return runs
    if method == "random":
        if limit is None:
            raise SweepError("a random sweep needs --count n (or run_cap in the YAML)")
        runs = []
        for i in range(limit):
            rng = random.Random(f"{seed}:{i}")
            params = {name: sample_value(name, spec, rng) for name, spec in parameters.items()}
            runs.append(Run(i, f"r{i:03d}-{run_key(params, parameters)}", params))
        return runs
    raise SweepError(
        f"method {method!r}: the local runner supports {', '.join(LOCAL_METHODS)} (bayes needs W&B)"
    )


# ---- command lines -----------------------------------------------------------------------------
def command_args(args: dict[str, Any]) -> dict[str, list[str]]:
    """The W&B agent's argument macros for one run (wandb.sdk.launch.sweeps.utils)."""
    flags = [f"--{k}={v}" for k, v in args.items()]
    no_booleans = [
        f"--{k}" if isinstance(v, bool) else f"--{k}={v}" for k, v in args.items() if v is not False
    ]
    return {
        "args": flags,
        "args_no_equals": [x for k, v in args.items() for x in (f"--{k}", str(v))],
        "args_no_hyphens": [f"{k}={v}" for k, v in args.items()],
        "args_no_boolean_flags": no_booleans,
        "args_json": [json.dumps(args)],
        "args_append_hydra": [f"+{k}={v}" for k, v in args.items()],
        "args_override_hydra": [f"++{k}={v}" for k, v in args.items()],
    }


def build_command(config: dict, args: dict[str, Any], json_file: Path | None = None) -> list[str]:
    """The command line the W&B agent would run for ``args`` (``${interpreter}`` = this Python)."""
    macros = command_args(args)
    macros["env"] = ["/usr/bin/env"] if os.name != "nt" else []
    macros["interpreter"] = [sys.executable]
    macros["program"] = [str(config["program"])] if config.get("program") else []
    macros["args_json_file"] = [str(json_file)] if json_file else []
    command = []
    for item in config.get("command", DEFAULT_COMMAND):
        item = ENVVAR_MACRO.sub(lambda m: os.environ.get(m.group(1), m.group(1)), str(item))
        if item.startswith("${") and item.endswith("}"):
            command += macros.get(item[2:-1]) or []
        else:
            command.append(item)
    return command


def run_args(run: Run, sweep_dir: Path) -> dict[str, Any]:
    """Sweep parameters plus the run folder and name, in the order ``${args}`` lists them."""
    return {**run.params, "runs_dir": str(sweep_dir / run.key), "run_name": run.key}


# ---- run folders -------------------------------------------------------------------------------
def normalise(params: dict) -> Any:
    return json.loads(json.dumps(params, sort_keys=True, default=str))


def read_done(run_dir: Path) -> dict | None:
    try:
        return json.loads((run_dir / DONE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def is_finished(run_dir: Path, params: dict, template: list) -> bool:
    """Finished = a ``done.json`` (written after exit code 0) for these parameters and this command."""
    done = read_done(run_dir)
    return (
        done is not None
        and done.get("returncode") == 0
        and done.get("params") == normalise(params)
        and done.get("template") == [str(item) for item in template]
    )


def latest_run_folder(run_dir: Path) -> Path | None:
    """The CLI's newest ``<run_name>-<timestamp>/`` folder inside a run's folder."""
    folders = [
        p
        for p in run_dir.iterdir()
        if p.is_dir()
        and not p.name.startswith(".")
        and any((p / f).is_file() for f in ("metrics.jsonl", "eval_history.jsonl"))
    ]
    return max(folders, key=lambda p: (p.stat().st_mtime, p.name)) if folders else None


def final_metric(folder: Path | None, name: str) -> float | None:
    """The value of ``name`` a CLI run folder reports, as its W&B run summary does: the best (highest)
    ``val/mrb_avg`` over its validations, the last logged value of any other key (metrics.jsonl,
    else eval_history.jsonl)."""
    if folder is None:
        return None
    values = [row[name] for row in read_jsonl(folder / "metrics.jsonl") if name in row]
    if not values and name == "val/mrb_avg":
        values = [
            record["average"]
            for record in read_jsonl(folder / "eval_history.jsonl")
            if record.get("stage", "val") == "val" and "average" in record
        ]
    if not values:
        return None
    return max(values) if name == "val/mrb_avg" else values[-1]


def read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        with contextlib.suppress(ValueError):
            rows.append(json.loads(line))
    return rows


def pid_alive(pid: int) -> bool:
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
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    return [line for line in text.splitlines() if line.strip()][-lines:]


# ---- the local runner --------------------------------------------------------------------------
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
            "command": command,
            "cwd": os.getcwd(),
            "env": {k: env[k] for k in REPRO_ENV if k in env},
            "returncode": 0,
            "seconds": round(seconds, 1),
            "run_dir": str(folder.relative_to(run_dir)) if folder else None,
            "metric": {self.metric: value},
            "finished": datetime.datetime.now().isoformat(timespec="seconds"),
        }
        (run_dir / DONE).write_text(json.dumps(done, indent=2) + "\n", encoding="utf-8")
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
            best = pick(results, key=results.get)
            self.say(f"best {self.metric}={results[best]:.4f} ({best})")
        self.say(f"report: {sys.executable} -m experiments.report {self.sweep_dir}")


# ---- demo assets -------------------------------------------------------------------------------


def prepare_demo(config: dict) -> None:
    """Build the tiny model and the demo data when the sweep's config files point at them and they
    are missing (paths set by the sweep's own parameters are left to the user)."""
    command = [str(item) for item in config.get("command", [])]
    files = [Path(command[i + 1]) for i, item in enumerate(command[:-1]) if item == "--config"]
    if not any(f.name in ("demo.yaml", "tiny.yaml") for f in files):
        return
    merged: dict[str, Any] = {}
    for path in files:
        if path.is_file():
            merged.update(flatten(yaml.safe_load(path.read_text(encoding="utf-8")) or {}))
    fixed = set(config["parameters"])
    model = merged.get("model.model_name_or_path")
    if model and "model.model_name_or_path" not in fixed and not (Path(model) / "config.json").is_file():
        from lightning_modules.tiny import build_tiny

        print(f"building the tiny Qwen2-VL into {model}", flush=True)
        build_tiny(Path(model), family="qwen2_vl", seed=0)
    train, evaluation = merged.get("data.train_root"), merged.get("data.eval_root")
    if not train or not evaluation or {"data.train_root", "data.eval_root"} & fixed:
        return
    train, evaluation = Path(train), Path(evaluation)
    if train.parent == evaluation.parent and not (train.is_dir() and evaluation.is_dir()):
        from datamodules.demo import build_demo

        print(f"building the demo benchmark into {train.parent}", flush=True)
        build_demo(train.parent, seed=0)


# ---- W&B ---------------------------------------------------------------------------------------
def use_wandb() -> tuple[bool, str]:
    """Whether to hand the sweep to W&B, and why not."""
    mode = os.environ.get("WANDB_MODE", "")
    if mode in ("offline", "disabled", "dryrun"):
        return False, f"WANDB_MODE={mode}"
    from experiments.runs import wandb_logged_in, wandb_reachable

    if not wandb_logged_in():
        return False, "W&B is not logged in (wandb login)"
    if not wandb_reachable():
        return False, "W&B is not reachable"
    return True, ""


def run_wandb(config: dict, sweep_dir: Path, count: int | None, sweep_id: str | None) -> int:
    """Create (or join) the W&B sweep and run an agent in this process."""
    import wandb

    config = dict(config)
    command = [str(item) for item in config.get("command", DEFAULT_COMMAND)]
    if "${args}" in command and not any(item.startswith("--runs_dir") for item in command):
        at = command.index("${args}")
        command.insert(at, f"--runs_dir={sweep_dir}")  # before ${args}: a runs_dir parameter still wins
    config["command"] = command
    # The agent runs ${interpreter} as `python` from PATH: make that this (virtual env's) Python.
    os.environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")
    project, entity = config.get("project", "rerank-lab"), config.get("entity")
    if sweep_id is None:
        sweep_id = wandb.sweep(config, project=project, entity=entity)
    print(
        f"W&B sweep {sweep_id}: runs go to {sweep_dir}; more agents: python -m experiments.sweep ... --sweep-id {sweep_id}"
    )
    wandb.agent(sweep_id, project=project, entity=entity, count=count)
    return 0


def spawn_agents(argv: list[str], gpus: list[str], extra: list[str]) -> int:
    """One agent process per GPU (``CUDA_VISIBLE_DEVICES``); returns the worst exit code."""
    processes = []
    for gpu in gpus:
        env = dict(os.environ, CUDA_VISIBLE_DEVICES=gpu, **{AGENT_TAG_ENV: f"gpu{gpu}"})
        processes.append(
            subprocess.Popen([sys.executable, "-m", "experiments.sweep", *argv, *extra], env=env)
        )
    return max(process.wait() for process in processes)


def strip_gpus(argv: list[str]) -> list[str]:
    out, skip = [], False
    for item in argv:
        if skip:
            skip = False
            continue
        if item == "--gpus":
            skip = True
            continue
        if not item.startswith("--gpus="):
            out.append(item)
    return out


# ---- entry point -------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.sweep",
        description="Run a W&B sweep YAML: with W&B when logged in and reachable, else a local runner.",
    )
    parser.add_argument("sweep", help="sweep YAML (experiments/sweeps/*.yaml)")
    parser.add_argument(
        "--count", type=int, default=None, help="runs of the plan (local) / runs of this agent (W&B)"
    )
    parser.add_argument(
        "--local", action="store_true", help="use the local runner even when W&B is available"
    )
    parser.add_argument("--runs-dir", default=None, help="sweep folder (default: runs/sweeps/<name>)")
    parser.add_argument("--seed", type=int, default=0, help="seed of a random sweep's samples (local)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="fix a parameter (a constant added to the sweep)",
    )
    parser.add_argument(
        "--sweep-id", default=None, help="join this existing W&B sweep instead of creating one"
    )
    parser.add_argument("--gpus", default=None, help="comma-separated GPU ids: one agent per GPU")
    parser.add_argument("--dry-run", action="store_true", help="print the command of each run and exit")
    args = parser.parse_args(argv)
    argv = list(sys.argv[1:] if argv is None else argv)

    try:
        config = load_sweep(args.sweep, parse_overrides(args.set))
        sweep_dir = Path(args.runs_dir or Path("runs") / "sweeps" / str(config["name"]))
        online, reason = (False, "--local") if args.local or args.dry_run else use_wandb()
        if args.sweep_id and not online:
            raise SweepError(f"--sweep-id needs W&B, but {reason}")
        if args.gpus:
            gpus = [g.strip() for g in args.gpus.split(",") if g.strip()]
            extra = []
            if online and not args.sweep_id:
                import wandb

                project, entity = config.get("project", "rerank-lab"), config.get("entity")
                extra = ["--sweep-id", wandb.sweep(config, project=project, entity=entity)]
            if not online:
                extra = ["--local"]
                plan_runs(config, args.count, args.seed)  # fail here, once, on a bad plan
            prepare_demo(config)
            return spawn_agents(strip_gpus(argv), gpus, extra)
        if not args.dry_run:
            prepare_demo(config)
        if online:
            return run_wandb(config, sweep_dir, args.count, args.sweep_id)
        if not args.local and not args.dry_run:
            print(f"{reason}: running the sweep locally", flush=True)
        runs = plan_runs(config, args.count, args.seed)
        return LocalRunner(config, sweep_dir, runs, dry_run=args.dry_run).run()
    except SweepError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
