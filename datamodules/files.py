"""Files that appear whole or not at all: the one implementation every package writes through.

* :func:`atomic_write` writes into a temporary file next to the target (same folder, so the
  same filesystem), fsyncs it and renames it over the target, then fsyncs the folder: a kill or a
  full disk leaves the old file (or none), never a truncated one. ``tempfile`` and fsspec
  transactions place the temporary file in ``$TMPDIR``, where the final rename can turn into a
  copy, hence this small helper.
* :func:`staged_folder` does the same for a folder: it is built under a hidden name beside its
  final one and renamed into place when complete, so a folder appears whole or not at all, and an
  existing non-empty folder is never replaced (the rename itself refuses).
* :func:`append_line` appends one JSON line or nothing: a failed or short write is cut back to
  the file's old size, so a reader never sees half a line.
* Temporaries are hidden names, ``.<name>.<purpose>-<pid>`` (:func:`temporary_path`), and hidden
  names are never data (:func:`is_hidden`): readers skip them, so a temporary that a killed
  process left behind is never read. :func:`leftovers` finds those of processes that are gone, for
  the tools to report or (for their own output) remove.

It sits in ``datamodules`` (the lowest package that writes files, e.g. TREC runs in
``datamodules.trec``) so that ``lightning_modules`` and ``experiments`` (``experiments.runs``
re-exports both) use the same code.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path, PurePath
from typing import Any

# ``.<name>.<purpose>-<pid>`` plus the suffix some writers keep (mine's ``.jsonl``).
_TEMPORARY = re.compile(r"^\.(?P<name>.+)\.(?P<purpose>[a-z]+)-(?P<pid>\d+)(?P<suffix>\.[a-z]+)?$")


def is_hidden(relative: str | PurePath) -> bool:
    """Whether a path relative to a data root has a hidden part (a name starting with ``.``).

    Hidden names are never data: temporaries (:func:`temporary_path`), editor and OS files.
    """
    return any(part.startswith(".") for part in PurePath(relative).parts)


def temporary_path(path: str | Path, purpose: str, suffix: str = "") -> Path:
    """The hidden temporary name next to ``path`` for this process: ``.<name>.<purpose>-<pid><suffix>``."""
    path = Path(path)
    return path.with_name(f".{path.name}.{purpose}-{os.getpid()}{suffix}")


def _process_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return True
    except PermissionError:  # it exists, under another user
        return False
    return False


def leftover_pid(name: str) -> int | None:
    """The process id in a temporary's name when that process is gone (a leftover), else None."""
    match = _TEMPORARY.match(name)
    if match is None:
        return None
    pid = int(match["pid"])
    return pid if _process_gone(pid) else None


def leftovers(root: str | Path) -> list[Path]:
    """Temporaries under ``root`` (at any depth, not inside hidden folders) left by processes that are gone."""
    found: list[Path] = []
    for folder, subfolders, files in os.walk(root):
        for name in sorted(subfolders) + sorted(files):
            if name.startswith(".") and leftover_pid(name) is not None:
                found.append(Path(folder) / name)
        subfolders[:] = [name for name in subfolders if not name.startswith(".")]
    return sorted(found)


def leftover_note(path: Path) -> str:
    """The one line that reports a leftover temporary."""
    return (
        f"{path}: left behind by process {leftover_pid(path.name)}, which is gone (a killed convert, mine, "
        "retrieve or write); it is never read as data: delete it"
    )


def remove_leftovers(target: str | Path) -> list[Path]:
    """Remove the temporaries of ``target`` (same folder, same name) whose processes are gone."""
    target = Path(target)
    removed: list[Path] = []
    if not target.parent.is_dir():
        return removed
    for path in sorted(target.parent.iterdir()):
        match = _TEMPORARY.match(path.name)
        if match is None or match["name"] not in (target.name, target.stem):
            continue
        if leftover_pid(path.name) is not None:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
            removed.append(path)
    return removed


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
    temporary = temporary_path(path, "tmp")
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


def check_new_folder(out: str | Path) -> None:
    """Raise ``FileExistsError`` unless ``out`` is missing or an empty folder (what :func:`staged_folder`
    may replace); call it before expensive work so that a taken name fails at once."""
    out = Path(out)
    if out.is_symlink() or (out.exists() and (not out.is_dir() or any(out.iterdir()))):
        raise FileExistsError(
            f"{out}: already exists and is not an empty folder; refusing to overwrite it (choose a new name)"
        )


@contextlib.contextmanager
def staged_folder(out: str | Path, purpose: str = "partial") -> Iterator[Path]:
    """Build the folder ``out`` whole or not at all.

    Yields a hidden folder beside ``out`` (:func:`temporary_path`, so readers skip it and
    :func:`leftovers` finds it after a kill). When the block ends without an exception it is renamed
    to ``out``; when the block raises it is removed and the exception goes on. ``out`` may be missing
    or an empty folder; anything else there (checked first, and refused by the rename itself if it
    appears meanwhile) raises ``FileExistsError`` and leaves it untouched.
    """
    out = Path(out)
    check_new_folder(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = temporary_path(out, purpose)
    staging.mkdir()
    try:
        yield staging
        if out.is_dir() and not out.is_symlink() and not any(out.iterdir()):
            out.rmdir()
        try:
            os.rename(staging, out)  # POSIX: fails on a non-empty folder or a file, replaces nothing
        except OSError as err:
            if out.exists() or out.is_symlink():
                raise FileExistsError(
                    f"{out}: appeared while it was being written; refusing to overwrite it"
                ) from err
            raise
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    fsync_dir(out.parent)


def write_text(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically (:func:`atomic_write`)."""
    data = text.encode("utf-8")
    atomic_write(path, lambda handle: handle.write(data))


def write_json(path: str | Path, value: Any) -> None:
    """Write ``value`` as indented JSON plus a newline to ``path`` atomically."""
    write_text(path, json.dumps(value, indent=2) + "\n")


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
