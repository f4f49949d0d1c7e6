"""Files that appear whole or not at all: the one implementation every package writes through.

* :func:`atomic_write` writes into a temporary file next to the target (same folder, so the
  same filesystem), fsyncs it and renames it over the target, then fsyncs the folder: a kill or a
  full disk leaves the old file (or none), never a truncated one. ``tempfile`` and fsspec
  transactions place the temporary file in ``$TMPDIR``, where the final rename can turn into a
  copy, hence this small helper.
* :func:`append_line` appends one JSON line or nothing: a failed or short write is cut back to
  the file's old size, so a reader never sees half a line.

It sits in ``datamodules`` (the lowest package that writes files, e.g. TREC runs in
``datamodules.trec``) so that ``lightning_modules`` and ``experiments`` (``experiments.runs``
re-exports both) use the same code.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any


def fsync_dir(folder: str | Path) -> None:
    """Make a rename in ``folder`` durable (best effort: not every filesystem opens folders)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write(path: str | Path, write: Callable[[Any], None]) -> None:
    """Call ``write(binary_file)`` on a temporary file next to ``path``, fsync it, rename it to ``path``.

    On any failure (a full disk, an interrupt) the temporary file is removed and ``path`` keeps
    its previous content, or stays absent.
    """
    path = Path(path)
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(temporary, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise
    fsync_dir(path.parent)


def append_line(path: str | Path, row: dict) -> None:
    """Append ``row`` as one JSON line; on a failed or short write the file is cut back to its old size,
    so a reader never sees half a line."""
    data = (json.dumps(row) + "\n").encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        size = os.fstat(fd).st_size
        try:
            written = 0
            while written < len(data):
                written += os.write(fd, data[written:])
        except BaseException:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, size)
            raise
    finally:
        os.close(fd)
