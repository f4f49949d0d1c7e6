"""Shared pieces of the broken-input matrix (tests/test_broken_mrb.py, tests/test_broken_training.py):
image faults, a hang guard for named pipes, a clean MRB task and the validate runner."""

from __future__ import annotations

import contextlib
import json
import os
import signal
from collections.abc import Callable
from pathlib import Path

from PIL import Image

from datamodules.validate import main as validate_main


@contextlib.contextmanager
def no_hang(seconds: int = 20):
    """Fail (instead of blocking forever) when the body does not return within ``seconds``."""

    def expire(signum, frame):
        raise TimeoutError(f"blocked for {seconds} s (a named pipe was opened?)")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def png(path: Path, size=(56, 56), colour=(10, 200, 30), mode="RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, colour if mode == "RGB" else 0).save(path)


def validate(capsys, root: Path) -> tuple[int, list[str]]:
    with no_hang():
        code = validate_main([str(root)])
    return code, capsys.readouterr().out.strip().splitlines()


# ---- image faults (shared by both sides) ---------------------------------------------------------
def _missing(path: Path) -> None:
    pass


def _empty(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")


def _corrupt(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n this is no image")


def _truncated(path: Path) -> None:
    png(path)
    path.write_bytes(path.read_bytes()[:-30])


def _oversized(path: Path) -> None:
    png(path, size=(8200, 8200), mode="1")  # 67 M pixels, tiny on disk


def extreme_aspect(path: Path) -> None:
    png(path, size=(2, 3000))


def make_fifo(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    os.mkfifo(path)


def _folder(path: Path) -> None:
    path.mkdir(parents=True)


IMAGE_FAULTS: dict[str, tuple[Callable[[Path], None], str]] = {
    "missing": (_missing, "not found"),
    "empty": (_empty, "empty (0 bytes)"),
    "corrupt": (_corrupt, "cannot be decoded"),
    "truncated": (_truncated, "cannot be decoded"),
    "oversized": (_oversized, "pixel safety limit"),
    "extreme-aspect": (extreme_aspect, "aspect ratio of 1500:1"),
    "fifo": (make_fifo, "not a regular file"),
    "folder": (_folder, "not a regular file"),
}


# ---- MRB side ------------------------------------------------------------------------------------
def write_task(task: Path) -> None:
    """Task ``t``: 2 queries, 6 documents (d0-d2 and d4 with images; d4 is on corpus line 5)."""
    task.mkdir(parents=True)
    (task / "task.json").write_text(json.dumps({"family": "T2I", "instruction": "find", "metric": "ndcg@5"}))
    (task / "queries.jsonl").write_text(
        "".join(json.dumps({"id": f"q{i}", "text": f"query {i}"}) + "\n" for i in range(2))
    )
    corpus = []
    for i in range(6):
        doc = {"id": f"d{i}", "text": f"document {i}"}
        if i in (0, 1, 2, 4):
            doc["image"] = f"images/d{i}.png"
            png(task / "images" / f"d{i}.png", colour=(40 * i, 10, 10))
        corpus.append(json.dumps(doc))
    (task / "corpus.jsonl").write_text("\n".join(corpus) + "\n")
    (task / "qrels.tsv").write_text("q0 0 d0 1\nq0 0 d1 0\nq1 0 d4 2\n")
    (task / "candidates.trec").write_text(
        "".join(f"q{q} Q0 d{d} {d + 1} {10 - d}.0 bm25\n" for q in range(2) for d in range(6))
    )
