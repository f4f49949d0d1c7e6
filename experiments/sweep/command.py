"""A run's command line, built from the sweep's ``command`` with the W&B agent's macros."""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from typing import Any

from .config import DEFAULT_COMMAND, Run

ENVVAR_MACRO = re.compile(r"\$\{envvar:([A-Z0-9_]*)\}")


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


def portable(command: list[str], root: str | Path) -> list[str]:
    """``command`` as it runs from any clone: the interpreter (this one, or any ``.../bin/python*``) as
    ``python``, ``/usr/bin/env`` dropped, and absolute paths under ``root`` (the folder the command ran
    in, the repository root) made relative to it, alone or as the value of ``--key=PATH``."""
    root_text = str(Path(root).resolve()).rstrip("/") + "/"

    def relative(text: str) -> str:
        return text[len(root_text) :] if text.startswith(root_text) else text

    out: list[str] = []
    for item in (str(x) for x in command):
        if item == "/usr/bin/env" and not out:
            continue
        if item == sys.executable or re.fullmatch(r".*/bin/python[0-9.]*", item):
            out.append("python")
            continue
        key, eq, value = item.partition("=")
        out.append(f"{key}={relative(value)}" if eq and key.startswith("--") else relative(item))
    return out


def run_args(run: Run, sweep_dir: Path) -> dict[str, Any]:
    """Sweep parameters plus the run folder and name, in the order ``${args}`` lists them."""
    return {**run.params, "runs_dir": str(sweep_dir / run.key), "run_name": run.key}
