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
``<run_key>/.attempts/<n>/`` before a retry (the report ignores hidden folders).
``<run_key>/running.lock`` keeps two runners on one sweep folder (one per GPU) from running the
same run.

The plan is deterministic: a grid expands in YAML order (the last parameter varies fastest);
a random sweep draws sample ``i`` from ``Random(f"{seed}:{i}")``. ``--count n`` limits the sweep
to the first ``n`` runs of that plan (default: the whole grid, or ``run_cap`` for random), so
the same command resumes the same runs and a larger ``n`` extends the sweep. (For a W&B agent,
``--count`` is the number of runs that agent executes.)

Several GPUs: ``--gpus 0,1,2,3`` starts one agent per GPU (``CUDA_VISIBLE_DEVICES=<i>``), sharing
one W&B sweep, or one local sweep folder. By hand, the same is
``CUDA_VISIBLE_DEVICES=<i> python -m experiments.sweep <yaml> --local &`` once per GPU (local) or
``CUDA_VISIBLE_DEVICES=<i> python -m experiments.sweep <yaml> --sweep-id <id> &`` (W&B).

Modules: :mod:`.config` (the YAML, ``--set``), :mod:`.plan` (grid / random plan, run folder names),
:mod:`.command` (W&B command macros), :mod:`.folders` (``done.json``, locks, attempts, the final
metric), :mod:`.local` (the local runner), :mod:`.agents` (W&B, one agent per GPU),
:mod:`.demo_assets` (the demo's model and data); :func:`main` is the command line.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from datamodules.exit_codes import program

from .agents import AGENT_TAG_ENV, run_wandb, spawn_agents, strip_agents, use_wandb
from .command import build_command, command_args, run_args
from .config import DEFAULT_COMMAND, Run, SweepError, load_sweep, parse_overrides
from .demo_assets import prepare_demo
from .folders import DONE, LOCK, LOG, final_metric, is_finished, read_done, read_jsonl
from .local import LocalRunner
from .plan import LOCAL_METHODS, plan_runs, run_key

# The names other code uses from ``experiments.sweep``; the rest lives in the modules above.
__all__ = [
    "AGENT_TAG_ENV", "DEFAULT_COMMAND", "DONE", "LOCAL_METHODS", "LOCK", "LOG", "LocalRunner", "Run",
    "SweepError", "build_command", "command_args", "final_metric", "is_finished", "load_sweep", "main",
    "parse_overrides", "plan_runs", "prepare_demo", "read_done", "read_jsonl", "run_args", "run_key",
    "run_wandb", "spawn_agents", "strip_agents", "use_wandb",
]  # fmt: skip


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=program("experiments.sweep"),
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
    parser.add_argument(
        "--agents", type=int, default=None, help="N agents on this machine's CPUs, sharing the plan"
    )
    parser.add_argument("--dry-run", action="store_true", help="print the command of each run and exit")
    return parser.parse_args(argv)


def agent_environments(args: argparse.Namespace) -> list[tuple[str, dict[str, str]]]:
    """One ``(tag, environment)`` per agent to start (``--gpus`` or ``--agents`` > 1), else none."""
    if args.gpus and args.agents:
        raise SweepError("--gpus and --agents: choose one (one agent per GPU, or N CPU agents)")
    if args.agents is not None and args.agents < 1:
        raise SweepError(f"--agents {args.agents}: give at least 1")
    if args.gpus:
        gpus = [g.strip() for g in args.gpus.split(",") if g.strip()]
        return [(f"gpu{gpu}", {"CUDA_VISIBLE_DEVICES": gpu}) for gpu in gpus]
    return [(f"cpu{i}", {}) for i in range(args.agents)] if (args.agents or 0) > 1 else []


def start_agents(config: dict, args: argparse.Namespace, argv: list[str], agents, online: bool) -> int:
    """Start the agents on one shared sweep: a new W&B sweep they all join, or the local plan."""
    extra = []
    if online and not args.sweep_id:
        import wandb

        project, entity = config.get("project", "rerank-lab"), config.get("entity")
        extra = ["--sweep-id", wandb.sweep(config, project=project, entity=entity)]
    if not online:
        extra = ["--local"]
        plan_runs(config, args.count, args.seed)  # fail here, once, on a bad plan
    prepare_demo(config)
    return spawn_agents(strip_agents(argv), agents, extra)


def main(argv: list[str] | None = None) -> int:
    """The command line; the exit code: 0 done, 1 a run failed, 2 a bad sweep YAML, 130 interrupted."""
    args = parse(argv)
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        config = load_sweep(args.sweep, parse_overrides(args.set))
        sweep_dir = Path(args.runs_dir or Path("runs") / "sweeps" / str(config["name"]))
        online, reason = (False, "--local") if args.local or args.dry_run else use_wandb()
        if args.sweep_id and not online:
            raise SweepError(f"--sweep-id needs W&B, but {reason}")
        agents = agent_environments(args)
        if agents:
            return start_agents(config, args, argv, agents, online)
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
