"""The optional extras a tool needs, and one clear error line when one is missing.

The core install (``pip install -e .``) trains and evaluates; the tools' heavier dependencies are extras of
``pyproject.toml`` (``make install`` installs them all):

- ``data``: the Hub converter and the first stages (``datasets``, ``pyarrow``, ``bm25s``, ``sentence-transformers``);
- ``real``: the real checkpoint's GGUF conversion (``gguf``);
- ``report``: the report's plots (``matplotlib``);
- ``demo``: the demo benchmark's real images (``scikit-learn``, ``scikit-image``).

A command-line tool calls :func:`require` before it needs one of them::

    require("python -m datamodules.retrieve", "data", "bm25s")

and stops with, on stderr, exit status 2 and no traceback::

    error: python -m datamodules.retrieve needs the [data] extra (bm25s): pip install -e '.[data]'
"""

from __future__ import annotations

import importlib.util

from datamodules.exit_codes import BAD_INPUT, report

# extra -> the import names of its packages (what ``require`` may be asked for).
EXTRAS = {
    "data": ("datasets", "pyarrow", "bm25s", "sentence_transformers"),
    "real": ("gguf",),
    "report": ("matplotlib",),
    "demo": ("sklearn", "skimage"),
}
# Import name -> distribution name, where they differ.
DISTRIBUTIONS = {
    "sentence_transformers": "sentence-transformers",
    "sklearn": "scikit-learn",
    "skimage": "scikit-image",
}


def installed(module: str) -> bool:
    """Whether ``module`` (a top-level import name) can be imported, without importing it."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent that fails to import, or a module without a spec
        return False


def missing_message(tool: str, extra: str, modules: tuple[str, ...]) -> str:
    """What is missing: which tool, which extra, which of its packages, and the install command."""
    packages = ", ".join(DISTRIBUTIONS.get(m, m) for m in modules)
    return f"{tool} needs the [{extra}] extra ({packages}): pip install -e '.[{extra}]'"


def require(tool: str, extra: str, *modules: str) -> None:
    """Stop ``tool`` (exit status 2, one line on stderr) unless every one of ``modules`` is installed.

    Args:
        tool: how the user ran it, e.g. ``python -m datamodules.convert``.
        extra: the ``pyproject.toml`` extra that holds ``modules``.
        modules: top-level import names, all of them members of ``EXTRAS[extra]``.
    """
    unknown = [m for m in modules if m not in EXTRAS[extra]]
    if unknown:
        raise ValueError(f"{unknown} are not in the [{extra}] extra ({', '.join(EXTRAS[extra])})")
    if all(installed(m) for m in modules):
        return
    raise SystemExit(report(missing_message(tool, extra, modules), BAD_INPUT))
