"""One command for every tool: ``rerank-lab <subcommand> [args]`` (``rerank-lab --help`` lists them).

Each subcommand is a row of :data:`COMMANDS`: the module that ``python -m`` runs (its docstring's
first paragraph is the line in ``--help``) and the ``main(argv)`` it calls. Every tool keeps its own
argparse parser, so ``rerank-lab <subcommand> --help`` is that tool's help, and the pinned
``python -m <module>`` entry points run the same ``main``. ``fit``, ``validate``, ``test`` and
``predict`` are LightningCLI's stages (:mod:`experiments.cli`); the data checker is
``validate-data``, since ``validate`` is the stage that scores a checkpoint.

Exit codes, the same for every subcommand (:mod:`datamodules.exit_codes`):

- 0 success;
- 1 the run failed (a runtime error), or a check ran and found problems (``validate-data``,
  ``demo``, ``serve-check``, ``gpu-check``);
- 2 bad usage or bad input (an unknown subcommand, argparse errors, a missing or malformed input,
  an output that already exists): one ``error: ...`` line on stderr, no traceback;
- 130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import ast
import difflib
import importlib
import importlib.util
import sys
from collections.abc import Sequence
from typing import NamedTuple

from datamodules.exit_codes import BAD_INPUT, COMMAND, FAILED, INTERRUPTED, OK, report
from datamodules.trec import FormatError, error_message


class Command(NamedTuple):
    module: str  # what ``python -m`` runs; its docstring is the --help line
    target: str  # "module:function" taking argv (without the subcommand) and returning the exit code
    summary: str | None = None  # instead of the docstring (LightningCLI's stages share one module)
    stage: bool = False  # a LightningCLI stage: the subcommand name is passed on in argv


def _stage(summary: str) -> Command:
    return Command("experiments.cli", "experiments.cli:main", summary, stage=True)


COMMANDS: dict[str, Command] = {
    # training and scoring (LightningCLI)
    "fit": _stage("Train a reranker (LightningCLI: --config ..., --print_config)."),
    "validate": _stage("Score a model or checkpoint on data.eval_root (LightningCLI)."),
    "test": _stage("Score a checkpoint on data.test_root (LightningCLI)."),
    "predict": _stage("Write reranked TREC runs for data.eval_root (LightningCLI)."),
    "export": Command("lightning_modules.export", "lightning_modules.export:main"),
    "evaluate": Command("experiments.evaluate", "experiments.evaluate:main"),
    # data
    "validate-data": Command("datamodules.validate", "datamodules.validate:main"),
    "convert": Command("datamodules.convert", "datamodules.convert.cli:main"),
    "retrieve": Command("datamodules.retrieve", "datamodules.retrieve:main"),
    "mine": Command("datamodules.mine", "datamodules.mine:main"),
    "demo-data": Command("datamodules.demo", "datamodules.demo.build:main"),
    "real-data": Command("experiments.real_data", "experiments.real_data:main"),
    # models
    "tiny": Command("lightning_modules.tiny", "lightning_modules.tiny.build:main"),
    "fetch": Command("lightning_modules.fetch", "lightning_modules.fetch:main"),
    # whole pipelines, sweeps and reports
    "demo": Command("experiments.demo", "experiments.demo:main"),
    "real": Command("experiments.real", "experiments.real:main"),
    "sweep": Command("experiments.sweep", "experiments.sweep:main"),
    "archive": Command("experiments.sweep.archive", "experiments.sweep.archive:main"),
    "report": Command("experiments.report", "experiments.report.cli:main"),
    # benchmarks and machine checks
    "bench": Command("experiments.bench", "experiments.bench.runner:main"),
    "bench-data": Command("experiments.bench.data", "experiments.bench.data:main"),
    "bench-eval": Command("experiments.bench.eval", "experiments.bench.eval:main"),
    "bench-peers": Command("experiments.bench.peers", "experiments.bench.peers.runner:main"),
    "bench-profile": Command("experiments.bench.peers.profile", "experiments.bench.peers.profile:main"),
    "bench-ab": Command("experiments.bench.ab", "experiments.bench.ab:main"),
    "serve-check": Command("experiments.bench.serve_check", "experiments.bench.serve_check:main"),
    "gpu-check": Command("experiments.bench.gpu_check", "experiments.bench.gpu_check:main"),
}


def summary(name: str) -> str:
    """The ``--help`` line of a subcommand: the first paragraph of its module's docstring, read from
    the source file (nothing is imported, so ``rerank-lab --help`` stays instant)."""
    command = COMMANDS[name]
    if command.summary:
        return command.summary
    spec = importlib.util.find_spec(command.module)
    origin = spec.origin if spec else None
    try:
        with open(str(origin), encoding="utf-8") as handle:
            doc = ast.get_docstring(ast.parse(handle.read())) or ""
    except (OSError, SyntaxError):
        return ""
    return " ".join(doc.split("\n\n")[0].split()).replace("`", "")


def usage() -> str:
    width = max(map(len, COMMANDS)) + 2
    lines = [
        f"usage: {COMMAND} <subcommand> [args]   ({COMMAND} <subcommand> --help: that tool's options)",
        "",
        "subcommands:",
        *(f"  {name:<{width}}{summary(name)}" for name in COMMANDS),
        "",
        "exit codes: 0 success, 1 the run failed (or a check found problems), 2 bad usage or bad input,",
        "130 interrupted. Each subcommand is also `python -m <module>` (experiments/commands.py).",
    ]
    return "\n".join(lines)


def resolve(name: str):
    """The ``main`` function of subcommand ``name`` (imports its module)."""
    module, _, function = COMMANDS[name].target.partition(":")
    return getattr(importlib.import_module(module), function)


def run(name: str, argv: Sequence[str]) -> int:
    """Run subcommand ``name`` with ``argv`` under the one error wrapper; returns the exit code."""
    command = COMMANDS[name]
    args: list[str] | None = [name, *argv] if command.stage else list(argv)
    if command.stage and args == sys.argv[1:]:
        args = None  # the process's own command line: LightningCLI reads it (and warns when given both)
    saved = sys.argv[:]
    if not command.stage and sys.argv:
        # argparse names the program after sys.argv[0] unless the tool sets ``prog``. LightningCLI's
        # stages keep sys.argv: Lightning's DDP launcher starts the other ranks from it.
        sys.argv[0] = f"{COMMAND} {name}"
    try:
        code = resolve(name)(args)
    except SystemExit as exit_:  # argparse (--help: 0, a usage error: 2), LightningCLI, sys.exit(...)
        code = exit_.code
    except KeyboardInterrupt:
        print(f"{COMMAND} {name}: interrupted", file=sys.stderr)
        return INTERRUPTED
    except FormatError as error:  # a bad input record a tool did not catch itself
        return report(error_message(error), BAD_INPUT)
    finally:
        sys.argv[:] = saved
    if code is None:
        return OK
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)  # sys.exit("message"): Python's own convention, exit 1
    return FAILED


def main(argv: Sequence[str] | None = None) -> int:
    """Console-script entry point (``rerank-lab``); returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage(), file=sys.stdout if argv else sys.stderr)
        return OK if argv else BAD_INPUT
    name = argv[0]
    if name not in COMMANDS:
        close = difflib.get_close_matches(name, COMMANDS, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        return report(
            f"unknown subcommand {name!r}{hint}; known: {', '.join(COMMANDS)} ({COMMAND} --help describes them)"
        )
    return run(name, argv[1:])


if __name__ == "__main__":
    sys.exit(main())
