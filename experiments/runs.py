"""Run folders and the files a run writes: created exclusively, written atomically, read back safely.

* :func:`create_run_dir` makes ``<runs_dir>/<name>-<timestamp>[-k]`` with ``os.mkdir`` (exclusive),
  so two runs started in the same second get two folders; the name must be one plain folder name.
* :func:`claim_run_dir` writes the run's id into ``run_id`` once (exclusive create): the ranks of one
  run share its folder (``RERANK_LAB_RUN_DIR``), a second run never does.
* :class:`AtomicCheckpointIO` replaces Lightning's ``TorchCheckpointIO`` for local paths. Lightning
  writes through an fsspec transaction whose temporary file lives in ``$TMPDIR``; when that is
  another filesystem than the run folder (a local ``/tmp``, runs on shared storage) the final
  "rename" is a copy, and a kill or a full disk during it leaves a truncated file under the final
  name. Here the temporary file is created next to the target, fsynced and renamed over it (one
  atomic step on every POSIX filesystem), and the folder is fsynced so the rename survives a crash.
  Reading a checkpoint that is truncated or corrupt raises :class:`CheckpointError` naming the
  newest readable checkpoint of the same folder.
* :func:`append_line` appends one JSON line or none: a failed write is cut back to the old size
  (it and :func:`atomic_write` live in datamodules/files.py, shared with the TREC writer).
* :func:`choose_wandb_mode` decides offline W&B before anything waits on the network.
"""

from __future__ import annotations

import errno
import json
import os
import pickle
import re
import sys
import time
import urllib.error
import urllib.request
import uuid
import zipfile
from pathlib import Path
from typing import Any

import torch
from fsspec.implementations.local import LocalFileSystem
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.fabric.utilities.cloud_io import get_filesystem

# Atomic writes and appends: one implementation for every package, re-exported for the run folder.
from datamodules.files import append_line, atomic_write  # noqa: F401

RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+=-]*$")


class RunError(ValueError):
    """A run that cannot start or continue as configured; the message says which key or file and why."""


class CheckpointError(RunError):
    """A checkpoint that cannot be read (truncated, corrupt, not a checkpoint)."""


# ---- run folders -------------------------------------------------------------------------------
def check_run_name(name: str) -> str:
    """``name`` if it is one plain folder name; otherwise :class:`RunError` naming ``run_name``."""
    if len(name) > 200 or not RUN_NAME.match(name):
        raise RunError(
            f"run_name {name!r}: a run name is one folder name inside runs_dir (letters, digits and "
            "'._+=-', starting with a letter or digit), not a path; choose the parent folder with --runs_dir"
        )
    return name


def create_run_dir(runs_dir: str | Path, name: str, stamp: str | None = None) -> Path:
    """Create ``<runs_dir>/<name>-<stamp>`` exclusively (``-1``, ``-2``, ... when taken) and return it.

    ``os.mkdir`` fails when the folder exists, so two processes starting at the same second never
    share a folder, whatever the timing.
    """
    check_run_name(name)
    parent = Path(runs_dir)
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise RunError(f"runs_dir {str(parent)!r}: cannot create it: {error.strerror or error}") from error
    stamp = stamp or time.strftime("%Y%m%d-%H%M%S")
    for suffix in range(10_000):
        folder = parent / (f"{name}-{stamp}" if suffix == 0 else f"{name}-{stamp}-{suffix}")
        try:
            folder.mkdir()
        except FileExistsError:
            continue
        except OSError as error:
            raise RunError(
                f"runs_dir {str(parent)!r}: cannot create {folder.name}: {error.strerror}"
            ) from error
        return folder
    raise RunError(f"runs_dir {str(parent)!r}: 10,000 runs named {name}-{stamp} already exist")


RUN_ID_FILE = "run_id"
# Set by the launchers that start one process per rank (torchrun, SLURM) or by Lightning for its workers.
_RANK_VARIABLES = ("RANK", "SLURM_PROCID", "NODE_RANK", "LOCAL_RANK")


def launcher_rank() -> int:
    """This process's rank as its launcher set it (0 without one); known before any Trainer exists."""
    for name in _RANK_VARIABLES:
        value = os.environ.get(name, "0")
        if value.isdigit() and int(value) > 0:
            return int(value)
    return 0


def claim_run_dir(run_dir: Path, resume_from: str | None = None) -> str:
    """Make ``run_dir`` this run's: write a new run id into ``run_dir/run_id`` once and return it.

    The rule behind ``RERANK_LAB_RUN_DIR``: the ranks of one run share its folder, separate runs never
    do. Rank 0 claims the folder; a folder another run claimed (or that holds files and no id) is
    refused with :class:`RunError`, unless the run resumes from a checkpoint inside it (``resume_from``).
    Other ranks join the folder without claiming it.
    """
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        if launcher_rank() > 0:
            return ""
        taken = (run_dir / RUN_ID_FILE).exists() or any(run_dir.iterdir())
        resuming = bool(resume_from and Path(resume_from).resolve().is_relative_to(run_dir.resolve()))
        if taken and resuming:
            return (
                (run_dir / RUN_ID_FILE).read_text(encoding="utf-8").strip()
                if (run_dir / RUN_ID_FILE).is_file()
                else ""
            )
        if taken:
            raise RunError(
                f"RERANK_LAB_RUN_DIR={run_dir}: the folder already holds another run (its {RUN_ID_FILE}, config "
                "and metrics); the ranks of one run share a folder, a new run needs its own: export a new "
                "RERANK_LAB_RUN_DIR, or unset it to get <runs_dir>/<name>-<timestamp>"
            )
        run_id = uuid.uuid4().hex
        fd = os.open(run_dir / RUN_ID_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        raise RunError(
            f"RERANK_LAB_RUN_DIR={run_dir}: another run claimed the folder at the same time"
        ) from None
    except OSError as error:
        raise RunError(
            f"RERANK_LAB_RUN_DIR={run_dir}: cannot use the folder: {error.strerror or error}"
        ) from None
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(run_id + "\n")
    return run_id


# ---- checkpoints -------------------------------------------------------------------------------
def _is_local(path: Any) -> bool:
    return isinstance(get_filesystem(str(path)), LocalFileSystem)


def readable_checkpoint(path: Path) -> bool:
    """Whether ``path`` is a complete ``torch.save`` archive (every member's CRC checks)."""
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.testzip() is None
    except (OSError, zipfile.BadZipFile, EOFError, ValueError):
        return False


def last_good_checkpoint(folder: Path, exclude: Path | None = None) -> Path | None:
    """The newest readable ``*.ckpt`` of ``folder`` (other than ``exclude``)."""
    try:
        candidates = [p for p in folder.glob("*.ckpt") if p.is_file() and p != exclude]
    except OSError:
        return None
    for candidate in sorted(candidates, key=lambda p: p.stat().st_mtime, reverse=True):
        if readable_checkpoint(candidate):
            return candidate
    return None


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose local saves are atomic next to the target and whose loads of a
    damaged file say which checkpoint is still good (module docstring)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None or not _is_local(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            atomic_write(path, lambda handle: torch.save(checkpoint, handle))
        except OSError as error:
            reason = "the disk is full" if error.errno == errno.ENOSPC else (error.strerror or str(error))
            raise CheckpointError(
                f"cannot write checkpoint {path}: {reason}; the previous checkpoints in {path.parent} "
                "are intact"
            ) from error

    def load_checkpoint(self, path, map_location: Any = lambda storage, loc: storage, weights_only=None):
        # Always weights-only, whatever the caller or TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD says: a resumed
        # checkpoint is a user-supplied file, and a full unpickle would run any code it carries.
        weights_only = True
        if not _is_local(path) or not Path(path).is_file():
            return super().load_checkpoint(path, map_location=map_location, weights_only=weights_only)
        path = Path(path)
        try:
            return super().load_checkpoint(path, map_location=map_location, weights_only=weights_only)
        except pickle.UnpicklingError as error:
            if readable_checkpoint(path):
                raise CheckpointError(
                    f"checkpoint {path}: refused to load: it asks for Python objects beyond tensors and "
                    "plain values, and unpickling them could run code; resume only from checkpoints "
                    "written by rerank-lab"
                ) from None
            raise damaged_checkpoint(path, type(error).__name__) from None
        except (
            EOFError,
            RuntimeError,
            zipfile.BadZipFile,
            OSError,
            ValueError,
        ) as error:
            if readable_checkpoint(path):
                raise  # a complete archive: the error is about its content, not a damaged file
            raise damaged_checkpoint(path, type(error).__name__) from None


def damaged_checkpoint(path: Path, detail: str) -> CheckpointError:
    """The error for a checkpoint that is not a complete archive, naming the newest good one beside it."""
    good = last_good_checkpoint(path.parent, exclude=path)
    advice = (
        f"the last good checkpoint in that folder is {good}: resume with --ckpt_path={good}"
        if good
        else f"no readable checkpoint is left in {path.parent}"
    )
    return CheckpointError(
        f"checkpoint {path} ({path.stat().st_size:,} bytes) is truncated or corrupt, not a complete "
        f"PyTorch checkpoint ({detail}); {advice}"
    )


def check_checkpoint(path: str | Path | None) -> None:
    """Raise :class:`CheckpointError` when ``path`` is a local file that is not a complete checkpoint."""
    if path and _is_local(path) and Path(path).is_file() and not readable_checkpoint(Path(path)):
        raise damaged_checkpoint(Path(path), "not a complete zip archive")


# ---- W&B ---------------------------------------------------------------------------------------
def wandb_logged_in() -> bool:
    """Whether W&B has credentials (an API key in the environment or in ~/.netrc)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        return netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="ignore")
    except OSError:
        return False


def wandb_server_problem(timeout: float = 3.0) -> str | None:
    """Why the W&B server (``WANDB_BASE_URL``) cannot take a run, or ``None`` when it can.

    A W&B server answers a GraphQL query at ``<base>/graphql`` with a JSON object holding ``data`` or
    ``errors`` (whatever the login). No HTTP answer within ``timeout`` s (a failed name lookup, a
    refused or silent connection) is "not reachable"; an answer of another kind (a proxy's or a
    captive portal's page, which answers every request) is "answered, but not as a W&B server".
    """
    base = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai").rstrip("/")
    body = json.dumps({"query": "query { viewer { id } }"}).encode("utf-8")
    request = urllib.request.Request(
        f"{base}/graphql", data=body, method="POST", headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            answer = response.read(1 << 16)
    except urllib.error.HTTPError as error:  # an answer with an error status: what does it say?
        answer = error.read(1 << 16) if error.fp is not None else b""
    except (OSError, ValueError):  # URLError, timeouts, resets; ValueError: a malformed URL
        return f"{base} is not reachable"
    try:
        parsed = json.loads(answer.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        parsed = None
    if isinstance(parsed, dict) and ("data" in parsed or "errors" in parsed):
        return None
    return f"{base} answered, but not as a W&B server (a proxy or a captive portal?)"


def wandb_reachable(timeout: float = 3.0) -> bool:
    """Whether a W&B server answers at ``WANDB_BASE_URL`` (:func:`wandb_server_problem`)."""
    return wandb_server_problem(timeout) is None


def choose_wandb_mode() -> str | None:
    """Set ``WANDB_MODE=offline`` (and print one line why) when no mode was chosen and W&B has no
    login or cannot be reached; return the reason, or ``None`` when the environment is left as is.

    Without this, ``wandb.init`` with a key and no network retries for about two minutes and then
    fails the run.
    """
    if os.environ.get("WANDB_MODE"):
        return None
    reason: str | None
    if not wandb_logged_in():
        reason = "no login found"
    else:
        reason = wandb_server_problem()
        if reason is None:
            return None
    os.environ["WANDB_MODE"] = "offline"
    print(
        f"W&B: {reason}, logging offline; upload later with `wandb sync <run>/wandb/offline-run-*`",
        file=sys.stderr,
        flush=True,
    )
    return reason
