"""W&B sweeps and several agents: whether to use W&B, one agent in this process, one per GPU."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from .config import DEFAULT_COMMAND

AGENT_TAG_ENV = "RERANK_SWEEP_AGENT"


def use_wandb() -> tuple[bool, str]:
    """Whether to hand the sweep to W&B, and why not."""
    mode = os.environ.get("WANDB_MODE", "")
    if mode in ("offline", "disabled", "dryrun"):
        return False, f"WANDB_MODE={mode}"
    from experiments.runs import wandb_logged_in, wandb_reachable  # imports torch: only when needed

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


def spawn_agents(argv: list[str], agents: list[tuple[str, dict[str, str]]], extra: list[str]) -> int:
    """One agent process per ``(tag, environment)`` pair; returns the worst exit code.

    ``--gpus 0,1`` gives each agent one GPU (``CUDA_VISIBLE_DEVICES``); ``--agents N`` starts N
    agents on this machine's CPUs. Agents share the plan through the run folders' locks."""
    processes = []
    for tag, env in agents:
        env = dict(os.environ, **env, **{AGENT_TAG_ENV: tag})
        processes.append(
            subprocess.Popen([sys.executable, "-m", "experiments.sweep", *argv, *extra], env=env)
        )
    return max(process.wait() for process in processes)


def strip_agents(argv: list[str]) -> list[str]:
    """The command line without ``--gpus`` / ``--agents`` (each spawned agent is one of them)."""
    out, skip = [], False
    for item in argv:
        if skip:
            skip = False
            continue
        if item in ("--gpus", "--agents"):
            skip = True
            continue
        if not item.startswith(("--gpus=", "--agents=")):
            out.append(item)
    return out
