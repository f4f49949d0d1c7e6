"""Mine hard negatives from an MRB task's first-stage run into training JSONL groups.

Usage::

    python -m datamodules.mine --task MRB_ROOT/TASK --out FILE.jsonl --num-negatives N --window A:B
        --seed S [--margin X] [--overwrite]

For every query with a judged-relevant document (qrels relevance > 0):

- positives = every judged-relevant document;
- candidates = the query's candidates.trec ranked as the evaluator ranks them (score descending, ties
  by larger document id), ranks 1-based; the window A:B keeps ranks A..B inclusive;
- excluded from negatives: every judged-relevant document, wherever it ranks; with ``--margin X``,
  every candidate whose first-stage score is >= (best positive's first-stage score - X), i.e. within
  X of it or above it (likely unjudged positives; a query none of whose positives was retrieved has no
  reference score, so the guard cannot apply and its negatives are counted as unguarded); and any
  candidate whose content (text and image) equals a positive's;
- N negatives are sampled uniformly from what remains, with a random generator seeded by
  (S, query id): the same seed gives the same file, and a query's sample does not depend on the other
  queries. They are written in rank order. A query with fewer than N eligible candidates keeps all
  of them (counted); one with none is skipped (counted).

The summary (printed, and written next to the output as ``<name>.summary.json``) says what was kept
and skipped and why. The output is written under a temporary name, checked with
:mod:`datamodules.validate`, and renamed into place; an existing file is replaced only with
``--overwrite``. Images are copied next to the output (``images/``, content-addressed), since training
image paths are relative to the JSONL file's folder.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from datamodules.convert.common import ImageStore
from datamodules.exit_codes import fail, program
from datamodules.files import remove_leftovers, temporary_path
from datamodules.formats import Doc, FormatError, load_task
from datamodules.ranking import ranked
from datamodules.validate import Report, validate_training


class MiningError(ValueError):
    """The arguments or the task do not allow mining; the message says what to change."""


def parse_window(text: str) -> tuple[int, int]:
    try:
        first, last = (int(part) for part in text.split(":"))
    except ValueError:
        raise MiningError(f"--window {text!r}: expected A:B, two 1-based ranks (e.g. 10:100)") from None
    if first < 1 or last < first:
        raise MiningError(f"--window {text!r}: needs 1 <= A <= B (ranks are 1-based and inclusive)")
    return first, last


def mine_query(
    qid: str, task, num_negatives: int, window: tuple[int, int], seed: int, margin: float | None, why: Counter
) -> tuple[list[str], list[str]] | None:
    """``(positives, negatives)`` of one query (document ids), or None when it yields no group."""
    judged = task.qrels.get(qid, {})
    positives = sorted(d for d, grade in judged.items() if grade > 0)
    if not positives:
        why["queries skipped: no judged-relevant document"] += 1
        return None
    order = ranked(task.candidates.get(qid, {}))
    if not order:
        why["queries skipped: no candidates"] += 1
        return None
    relevant = set(positives)
    positive_scores = [s for d, s in order if d in relevant]
    threshold = None
    if margin is not None:
        if positive_scores:
            threshold = max(positive_scores) - margin
        else:
            why["queries without a retrieved positive (margin guard not applicable)"] += 1
    positive_docs = {task.corpus[d] for d in positives}
    eligible: list[str] = []
    first, last = window
    for rank, (doc, score) in enumerate(order, start=1):
        if rank < first or rank > last:
            continue
        if doc in relevant:
            why["candidates excluded: judged relevant"] += 1
        elif threshold is not None and score >= threshold:
            why["candidates excluded: within the margin of the best positive (possible false negative)"] += 1
        elif task.corpus[doc] in positive_docs:
            why["candidates excluded: same content as a positive"] += 1
        else:
            eligible.append(doc)
    if not eligible:
        why["queries skipped: no eligible candidate in the window"] += 1
        return None
    rng = random.Random(f"{seed}\0{qid}")  # str seeds hash with SHA-512: stable across runs
    chosen = set(rng.sample(eligible, min(num_negatives, len(eligible))))
    if len(chosen) < num_negatives:
        why["groups kept with fewer negatives than asked"] += 1
    why["eligible candidates not sampled"] += len(eligible) - len(chosen)
    return positives, [d for d in eligible if d in chosen]


def _checked_args(
    out: Path, num_negatives: int, window: str | tuple[int, int], margin: float | None, overwrite: bool
) -> tuple[tuple[int, int], Path]:
    """The parsed window and the summary's path, once the arguments and the outputs allow mining."""
    if not out.name.endswith(".jsonl"):
        raise MiningError(f"{out}: the output must be a .jsonl file")
    if num_negatives < 1:
        raise MiningError("--num-negatives must be >= 1")
    if margin is not None and not (math.isfinite(margin) and margin >= 0):  # nan would turn the guard off
        raise MiningError(f"--margin must be a finite number >= 0, got {margin}")
    window = parse_window(window) if isinstance(window, str) else window
    summary_path = out.with_name(out.name.removesuffix(".jsonl") + ".summary.json")
    for path in (out, summary_path):
        if path.exists() and not overwrite:
            raise MiningError(f"{path}: already exists; pass --overwrite to replace it")
    return window, summary_path


def _group_record(task, qid: str, positives, negatives, store: ImageStore, errors: list[str]) -> dict:
    """One training group of the JSONL: the task's instruction, the query, its positives and negatives."""

    def doc(d: Doc, where: str) -> dict[str, str]:
        return _record(d, where, store, errors)

    return {
        "task": task.name,
        "instruction": task.meta.instruction,
        "query": doc(task.queries[qid], task.where("queries", qid)),
        "positives": [doc(task.corpus[d], task.where("corpus", d)) for d in positives],
        "hard_negatives": [doc(task.corpus[d], task.where("corpus", d)) for d in negatives],
    }


def _write_groups(
    path: Path,
    task,
    mine_args: tuple[int, tuple[int, int], int, float | None],
    why: Counter[str],
    store: ImageStore,
    errors: list[str],
):
    """Mine each query in id order and write its group to ``path``; the groups and negatives written.

    ``mine_args``: ``(num_negatives, window, seed, margin)`` as :func:`mine_query` takes them.
    """
    groups = negatives_written = 0
    with open(path, "w", encoding="utf-8") as handle:
        for qid in sorted(task.queries):
            mined = mine_query(qid, task, *mine_args, why)
            if mined is None:
                continue
            positives, negatives = mined
            record = _group_record(task, qid, positives, negatives, store, errors)
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
            groups += 1
            negatives_written += len(negatives)
    return groups, negatives_written


def _check_mined(partial: Path, task_dir, groups: int, why: Counter[str], errors: list[str]) -> None:
    """Refuse the mined file: on image errors, with no group, or when it does not validate as training data."""
    if errors:
        raise MiningError("\n".join(errors))
    if groups == 0:
        raise MiningError(f"{task_dir}: no query yields a group ({dict(why)})")
    report = Report()
    validate_training(partial, report, [partial])
    if report.problems:
        raise MiningError("the mined groups do not validate:\n" + "\n".join(report.problems))


def mine(
    task_dir: str | Path,
    out: str | Path,
    num_negatives: int,
    window: str | tuple[int, int],
    seed: int,
    margin: float | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write the training JSONL ``out``; returns the summary (also written as ``<out>.summary.json``)."""
    out = Path(out)
    window, summary_path = _checked_args(out, num_negatives, window, margin, overwrite)
    task = load_task(task_dir)
    why: Counter[str] = Counter()
    out.parent.mkdir(parents=True, exist_ok=True)
    store = ImageStore(out.parent)
    errors: list[str] = []
    remove_leftovers(out)  # what a killed mine of the same output left
    partial = temporary_path(out, "mining")
    try:
        mine_args = (num_negatives, window, seed, margin)
        groups, negatives_written = _write_groups(partial, task, mine_args, why, store, errors)
        _check_mined(partial, task_dir, groups, why, errors)
        summary = {
            "task": str(task_dir),
            "out": str(out),
            "num_negatives": num_negatives,
            "window": f"{window[0]}:{window[1]}",
            "seed": seed,
            "margin": margin,
            "queries": len(task.queries),
            "groups": groups,
            "negatives": negatives_written,
            "images": dict(store.counts),
            "reasons": dict(sorted(why.items())),
        }
        summary_partial = temporary_path(summary_path, "mining")
        summary_partial.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
        _place(partial, out, overwrite)
        _place(summary_partial, summary_path, overwrite)
    finally:
        partial.unlink(missing_ok=True)
    return summary


def _record(doc: Doc, where: str, store: ImageStore, errors: list[str]) -> dict[str, str]:
    record = {"text": doc.text} if doc.text else {}
    if doc.image:
        # A task's images are paths; copied next to the output, by content.
        stored = store.add(Path(str(doc.image)), where, errors)
        if stored:
            record["image"] = stored
    return record


def _place(partial: Path, final: Path, overwrite: bool) -> None:
    if overwrite:
        os.replace(partial, final)
        return
    try:
        os.link(partial, final)  # fails, atomically, when the file appeared meanwhile
    except FileExistsError:
        raise MiningError(f"{final}: appeared while mining; pass --overwrite to replace it") from None
    finally:
        partial.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=program("datamodules.mine"), description=__doc__.split("\n")[0])
    parser.add_argument("--task", required=True, help="MRB task folder with qrels.tsv and candidates.trec")
    parser.add_argument("--out", required=True, help="training JSONL file to write")
    parser.add_argument("--num-negatives", type=int, required=True, help="negatives per group (N)")
    parser.add_argument(
        "--window", required=True, help="first-stage ranks A:B to sample from (1-based, inclusive)"
    )
    parser.add_argument("--seed", type=int, required=True, help="sampling seed")
    parser.add_argument(
        "--margin", type=float, default=None, help="skip candidates scoring >= best positive - X"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output")
    args = parser.parse_args(argv)
    try:
        summary = mine(
            args.task, args.out, args.num_negatives, args.window, args.seed, args.margin, args.overwrite
        )
    except (MiningError, FormatError, OSError) as err:
        return fail(err, MiningError, FormatError)  # bad input: 2; e.g. a full disk: 1
    print(
        f"wrote {summary['out']}: {summary['groups']} groups from {summary['queries']} queries, "
        f"{summary['negatives']} hard negatives (window {summary['window']}, seed {summary['seed']}, "
        f"margin {summary['margin']})"
    )
    for reason, count in summary["reasons"].items():
        print(f"  {count:>7}  {reason}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
