"""TREC qrels and run files: strict readers (errors name file:line) and a writer.

qrels:  ``qid 0 docid relevance``            (relevance > 0 means relevant; grades are kept)
run:    ``qid Q0 docid rank score tag``      (the score orders documents; rank is informational)
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from pathlib import Path

Qrels = dict[str, dict[str, int]]
Run = dict[str, dict[str, float]]


class FormatError(ValueError):
    """A malformed line in a data file; the message starts with ``file:line:``."""


def _lines(path: Path) -> Iterable[tuple[int, list[str]]]:
    with open(path, encoding="utf-8") as handle:
        for lineno, line in enumerate(handle, start=1):
            fields = line.split()
            if fields:
                yield lineno, fields


def read_qrels(path: str | Path) -> Qrels:
    """Read a TREC qrels file into ``{qid: {docid: relevance}}`` (all grades, zeros included)."""
    path = Path(path)
    qrels: Qrels = {}
    for lineno, fields in _lines(path):
        if len(fields) != 4:
            raise FormatError(f"{path}:{lineno}: expected 'qid 0 docid relevance', got {len(fields)} fields")
        qid, _, docid, grade = fields
        try:
            relevance = int(grade)
        except ValueError:
            raise FormatError(f"{path}:{lineno}: relevance {grade!r} is not an integer") from None
        if docid in qrels.setdefault(qid, {}):
            raise FormatError(f"{path}:{lineno}: duplicate judgement for query {qid!r}, document {docid!r}")
        qrels[qid][docid] = relevance
    return qrels


def read_run(path: str | Path) -> Run:
    """Read a TREC run file into ``{qid: {docid: score}}``; scores must be finite numbers."""
    path = Path(path)
    run: Run = {}
    for lineno, fields in _lines(path):
        if len(fields) != 6:
            raise FormatError(
                f"{path}:{lineno}: expected 'qid Q0 docid rank score tag', got {len(fields)} fields"
            )
        qid, _, docid, _, score_text, _ = fields
        try:
            score = float(score_text)
        except ValueError:
            raise FormatError(f"{path}:{lineno}: score {score_text!r} is not a number") from None
        if not math.isfinite(score):
            raise FormatError(f"{path}:{lineno}: score {score_text!r} is not finite")
        if docid in run.setdefault(qid, {}):
            raise FormatError(f"{path}:{lineno}: document {docid!r} listed twice for query {qid!r}")
        run[qid][docid] = score
    return run


def write_run(path: str | Path, run: Mapping[str, Mapping[str, float]], tag: str = "rerank-lab") -> None:
    """Write ``{qid: {docid: score}}`` as a TREC run, each query ranked by descending score.

    Ties are written in the order trec_eval would rank them (descending docid), so the ranks in
    the file agree with what the evaluator computes.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        for qid in sorted(run):
            ranked = sorted(run[qid].items(), key=lambda item: (item[1], item[0]), reverse=True)
            for rank, (docid, score) in enumerate(ranked, start=1):  # repr: round-trips exactly
                handle.write(f"{qid} Q0 {docid} {rank} {float(score)!r} {tag}\n")
