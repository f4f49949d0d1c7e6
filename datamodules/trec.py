"""TREC qrels and run files, and the line reader every text format of the project shares.

qrels:  ``qid 0 docid relevance``            (relevance > 0 means relevant; grades are kept)
run:    ``qid Q0 docid rank score tag``      (the score orders documents; the rank column is not
                                              read, as trec_eval does not read it)

Every reader works in one of two modes, so that a format's rules exist once:

* strict (``problems=None``): the first problem raises :class:`FormatError` (``file:line: reason``);
  training, evaluation and ``experiments.evaluate`` read this way;
* collect-all (``problems=Problems()``): every problem is recorded and the bad line is left out;
  ``datamodules.validate`` reads this way, and evaluation with ``on_bad_record=skip``.
"""

from __future__ import annotations

import gzip
import os
import stat
import zlib
from collections.abc import Iterator, Mapping
from pathlib import Path

from datamodules.files import atomic_write
from datamodules.ranking import ranked

Qrels = dict[str, dict[str, int]]
Run = dict[str, dict[str, float]]

__all__ = [
    "FormatError",
    "Problems",
    "error_message",
    "Qrels",
    "Run",
    "flag",
    "iter_qrels",
    "iter_run",
    "parse_qrels_fields",
    "parse_run_fields",
    "read_lines",
    "read_error_reason",
    "read_qrels",
    "read_run",
    "regular_file_problem",
    "write_run",
]


class FormatError(ValueError):
    """A malformed line in a data file; the message starts with ``file:line:``."""


class Problems:
    """The collect-all sink of the readers: ``file:line: reason`` messages, in the order found."""

    def __init__(self) -> None:
        self.messages: list[str] = []

    def add(self, where: str, reason: str) -> None:
        self.messages.append(f"{where}: {reason}")


def error_message(err: BaseException) -> str:
    """The ``file:line: reason`` of an error, also when a DataLoader worker raised it (the main
    process then gets the worker's whole traceback as the message; its last line is the error)."""
    text = str(err).strip()
    if "Traceback (most recent call last)" not in text:
        return text
    last = text.splitlines()[-1]
    name, sep, rest = last.partition(": ")
    return rest if sep and name.replace(".", "").replace("_", "").isalnum() else last


def flag(problems: Problems | None, where: str, reason: str) -> None:
    """Raise ``FormatError("where: reason")`` in strict mode, else record it and return."""
    if problems is None:
        raise FormatError(f"{where}: {reason}")
    problems.add(where, reason)


def regular_file_problem(path: str | Path) -> str | None:
    """Why ``path`` cannot be read as a data file, or None. A named pipe, device or folder is refused
    without being opened (opening a pipe blocks until someone writes to it)."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "file not found"
    except OSError as err:
        return f"cannot read ({err.strerror})"
    if not stat.S_ISREG(mode):
        return "not a regular file (a named pipe, device or folder); point at a regular file"
    return None


def read_error_reason(err: BaseException) -> str:
    if isinstance(err, gzip.BadGzipFile):
        return f"not a gzip file although its name ends in .gz ({err}); rename or recompress it"
    if isinstance(err, EOFError):
        return "truncated gzip data (the file ends before the end of its compressed stream); recompress it"
    return f"cannot read the file further ({type(err).__name__}: {err})"


def read_lines(path: str | Path, problems: Problems | None = None) -> Iterator[tuple[int, str]]:
    """``(line number, text)`` of every line of a UTF-8 text file (``.gz``: gzip-compressed).

    Lines are decoded one by one, so a bad byte is reported at its own line (and, collecting,
    only that line is left out). A file that stops being readable (truncated gzip, not gzip) is
    reported at the line where reading stopped.
    """
    path = Path(path)
    problem = regular_file_problem(path)
    if problem is not None:
        flag(problems, f"{path}:1", problem)
        return
    lineno = 0
    try:
        with open(path, "rb") as raw:
            handle = gzip.GzipFile(fileobj=raw, mode="rb") if path.name.endswith(".gz") else raw
            for lineno, data in enumerate(handle, start=1):
                try:
                    text = data.decode("utf-8")
                except UnicodeDecodeError as err:
                    flag(
                        problems,
                        f"{path}:{lineno}",
                        f"not UTF-8 (byte 0x{data[err.start]:02x} at column {err.start + 1}); save the file as UTF-8",
                    )
                    continue
                yield lineno, text
    except (OSError, EOFError, zlib.error) as err:  # gzip.BadGzipFile is an OSError
        flag(problems, f"{path}:{lineno + 1}", read_error_reason(err))


def parse_qrels_fields(fields: list[str]) -> tuple[str, str, int]:
    """``(qid, docid, relevance)`` of one split qrels line; ValueError says what is wrong."""
    if len(fields) != 4:
        raise ValueError(f"expected 'qid 0 docid relevance', got {len(fields)} field(s)")
    try:
        relevance = int(fields[3])
    except ValueError:
        raise ValueError(f"relevance {fields[3]!r} is not an integer") from None
    return fields[0], fields[2], relevance


def parse_run_fields(fields: list[str]) -> tuple[str, str, float]:
    """``(qid, docid, score)`` of one split run line; the rank column is not read (trec_eval ranks
    by score). ValueError says what is wrong."""
    if len(fields) != 6:
        raise ValueError(f"expected 'qid Q0 docid rank score tag', got {len(fields)} field(s)")
    try:
        score = float(fields[4])
    except ValueError:
        raise ValueError(f"score {fields[4]!r} is not a number") from None
    if score != score or score in (float("inf"), float("-inf")):
        raise ValueError(f"score {fields[4]!r} is not finite")
    return fields[0], fields[2], score


def _iter_table(path: Path, parse, problems: Problems | None) -> Iterator[tuple[int, str, str, object]]:
    seen: dict[tuple[str, str], int] = {}
    for lineno, line in read_lines(path, problems):
        fields = line.split()
        if not fields:
            continue
        where = f"{path}:{lineno}"
        try:
            qid, docid, value = parse(fields)
        except ValueError as err:
            flag(problems, where, str(err))
            continue
        if (qid, docid) in seen:
            flag(
                problems,
                where,
                f"query {qid!r} lists document {docid!r} twice (first on line {seen[qid, docid]})",
            )
            continue
        seen[qid, docid] = lineno
        yield lineno, qid, docid, value


def iter_qrels(path: str | Path, problems: Problems | None = None) -> Iterator[tuple[int, str, str, int]]:
    """``(line, qid, docid, relevance)`` of every valid judgement of a qrels file."""
    return _iter_table(Path(path), parse_qrels_fields, problems)  # type: ignore[return-value]


def iter_run(path: str | Path, problems: Problems | None = None) -> Iterator[tuple[int, str, str, float]]:
    """``(line, qid, docid, score)`` of every valid line of a TREC run file."""
    return _iter_table(Path(path), parse_run_fields, problems)  # type: ignore[return-value]


def read_qrels(path: str | Path, problems: Problems | None = None) -> Qrels:
    """Read a TREC qrels file into ``{qid: {docid: relevance}}`` (all grades, zeros included)."""
    qrels: Qrels = {}
    for _, qid, docid, relevance in iter_qrels(path, problems):
        qrels.setdefault(qid, {})[docid] = relevance
    return qrels


def read_run(path: str | Path, problems: Problems | None = None) -> Run:
    """Read a TREC run file into ``{qid: {docid: score}}``; scores must be finite numbers."""
    run: Run = {}
    for _, qid, docid, score in iter_run(path, problems):
        run.setdefault(qid, {})[docid] = score
    return run


def write_run(path: str | Path, run: Mapping[str, Mapping[str, float]], tag: str = "rerank-lab") -> None:
    """Write ``{qid: {docid: score}}`` as a TREC run, each query ranked by descending score.

    Ties are written in the order trec_eval would rank them (descending docid), so the ranks in
    the file agree with what the evaluator computes. The file appears whole or not at all
    (datamodules/files.py: a temporary file in the same folder, fsynced, then renamed).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)

    def write(handle) -> None:
        for qid in sorted(run):
            lines = (  # repr: round-trips exactly
                f"{qid} Q0 {docid} {rank} {float(score)!r} {tag}\n"
                for rank, (docid, score) in enumerate(ranked(run[qid]), start=1)
            )
            handle.write("".join(lines).encode("utf-8"))

    atomic_write(path, write)
