"""The exit codes every rerank-lab command shares (``rerank-lab <subcommand>`` or ``python -m ...``).

- 0: success;
- 1: the run failed (a runtime error: a failed parity check, a download, a full disk), or a check
  that ran and found problems (``validate-data``, ``demo``, ``serve-check``, ``gpu-check``);
- 2: bad usage or bad input (argparse's own code): a missing or malformed input file, a value out of
  range, an output that already exists. One ``error: ...`` line on stderr, no traceback;
- 130: interrupted (Ctrl-C).

It lives in the lowest package with a command line so that every tool can import it;
``experiments/commands.py`` (the ``rerank-lab`` dispatcher) applies the same convention around them.
"""

from __future__ import annotations

import sys

OK, FAILED, BAD_INPUT, INTERRUPTED = 0, 1, 2, 130

# OSErrors about a path the user named, not about the machine (a full disk, a lost mount).
PATH_ERRORS: tuple[type[OSError], ...] = (
    FileNotFoundError,
    FileExistsError,
    NotADirectoryError,
    IsADirectoryError,
)


COMMAND = "rerank-lab"  # the one command; experiments/commands.py dispatches its subcommands


def program(module: str) -> str:
    """A tool's name in its usage line: ``rerank-lab <subcommand>`` when the dispatcher runs it (it sets
    ``sys.argv[0]`` to that), else ``python -m <module>``, the pinned entry point."""
    name = sys.argv[0] if sys.argv else ""
    return name if name.startswith(f"{COMMAND} ") else f"python -m {module}"


class InputError(ValueError):
    """Bad input the user named (a path, a value): reported as one ``error:`` line, exit code 2."""


def describe(error: BaseException) -> str:
    """One line for ``error``: ``<file>: <reason>`` for an OSError, else its message."""
    if isinstance(error, OSError) and error.filename is not None and error.strerror:
        return f"{error.filename}: {error.strerror}"
    return str(error)


def report(message: object, code: int = BAD_INPUT) -> int:
    """Print ``error: <message>`` on stderr and return ``code`` (the caller's exit code)."""
    print(f"error: {message}", file=sys.stderr)
    return code


def fail(error: BaseException, *input_errors: type[BaseException]) -> int:
    """Report ``error`` as one ``error:`` line; exit code 2 when it is one of ``input_errors`` (or a
    missing / existing / wrong-kind path), else 1."""
    bad_input = isinstance(error, (*input_errors, *PATH_ERRORS))
    return report(describe(error), BAD_INPUT if bad_input else FAILED)
