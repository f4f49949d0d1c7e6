"""Check a training root or an MRB root before using it; print every problem as ``file:line: reason``.

Usage::

    python -m datamodules.validate ROOT [--stream --world-size W --num-workers K [--batch-size B]]

ROOT is recognised as an MRB root (task folders with task.json, queries.jsonl, corpus.jsonl,
qrels.tsv, candidates.trec), a single MRB task folder, a training root (JSONL / JSONL.gz shards),
or a folder holding several of them (the demo's ``data/``: ``train/`` and ``mrb/``), each checked
as what it is. The checks are the readers training and evaluation use (:mod:`datamodules.formats`,
:mod:`datamodules.trec`, :mod:`datamodules.images`) run in their collect-all mode, so a folder
passes here exactly when the runtime can read it. Every problem is reported, not only the first:
schema and types, bytes that are not UTF-8 (at their line), truncated or fake gzip shards, empty
shards, ids (missing, duplicated, with whitespace), images (inside
the folder -- no ``..`` or symlink escapes, no absolute paths --, regular files, non-empty,
decodable, under the pixel limit and the aspect-ratio limit), task folders without ``task.json``,
qrels and candidates that name unknown ids, queries with relevant documents but no candidates,
and malformed TREC lines. Queries without a relevant document are fine (the metrics skip them): a
``note:`` line gives their count and first ids. Hidden names (``.name``) are never data; temporaries
that killed processes left are listed as notes. Exit status 1 when anything is wrong, else 0 with a
one-line summary per root; 2 (one ``error:`` line) when ROOT does not exist or ``--stream`` is given
an MRB root.

``--stream`` (training roots) also walks the real training stream (:mod:`datamodules.stream`) as W
ranks × K DataLoader workers would, and checks that every rank gets the same number of batches and
that every example is used exactly once, apart from the per-epoch remainder the stream drops by
design (reported). It ends with ``examples: <n> seen, <d> duplicated, <m> missing``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import Counter
from pathlib import Path

from datamodules.exit_codes import BAD_INPUT, program
from datamodules.exit_codes import report as report_error
from datamodules.files import is_hidden, leftover_note, leftovers
from datamodules.formats import (
    IMAGE_ROOTS_ENV,
    SHARD_SUFFIXES,
    FormatError,
    Problems,
    image_roots,
    is_task_dir,
    iter_jsonl,
    load_task,
    parse_train_group,
    task_dirs,
)
from datamodules.images import MAX_DECODED_PIXELS, image_problem
from datamodules.shards import StreamIndex, list_shards
from datamodules.stream import TrainStream
from datamodules.trec import parse_run_fields

__all__ = ["ImageChecker", "Report", "check_run_line", "detect_roots", "main", "validate_task", "walk_stream"]


class Report(Problems):
    """Collected problems (``file:line: reason``) and counts for the summary: the collect-all sink
    the format readers (:mod:`datamodules.formats`) write into."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: Counter[str] = Counter()
        self.notes: list[str] = []  # worth knowing, not wrong (printed as ``note: ...``)

    @property
    def problems(self) -> list[str]:
        return self.messages


class ImageChecker:
    """Opens each image once (cached by resolved path) with the rule training and evaluation load
    images with (:func:`datamodules.images.open_image`) and says what is wrong with it, if anything."""

    def __init__(self, max_pixels: int = MAX_DECODED_PIXELS) -> None:
        self.max_pixels = max_pixels
        self._seen: dict[Path, str | None] = {}
        self.references = 0

    def __call__(self, path: Path) -> str | None:
        self.references += 1
        if path not in self._seen:
            self._seen[path] = image_problem(path)
        return self._seen[path]

    @property
    def checked(self) -> int:
        return len(self._seen)


def check_run_line(fields: list[str]) -> str | None:
    """What is wrong with one split TREC run line (the reader's rule), or None."""
    try:
        parse_run_fields(fields)
    except ValueError as err:
        return str(err)
    return None


# ---- training roots ------------------------------------------------------------------------------
def validate_training(root: Path, report: Report, shards: list[Path] | None = None) -> str:
    """Check every record of every shard under ``root`` (or of ``shards``); returns the summary line."""
    images = ImageChecker()
    if shards is None:
        try:
            shards = [Path(p) for p in list_shards(str(root))[2]]  # the files the training stream reads
        except FormatError as err:
            report.add(f"{root}:1", str(err).removeprefix(f"{root}: "))
            shards = []
    records = 0
    for path in shards:
        before, in_file = len(report.messages), 0
        for lineno, record in iter_jsonl(path, report):
            in_file += 1
            parse_train_group(record, path.parent, f"{path}:{lineno}", problems=report, check_image=images)
        records += in_file
        if in_file == 0 and len(report.messages) == before:
            report.add(
                f"{path}:1", "the shard holds no records (empty or blank lines only); remove it or fill it"
            )
    return (
        f"training root {root}: {len(shards)} file(s), {records} record(s), {images.checked} image(s) checked"
    )


# ---- MRB roots -----------------------------------------------------------------------------------
def validate_mrb(root: Path, report: Report) -> str:
    tasks = [root] if (root / "task.json").exists() or is_task_dir(root) else task_dirs(root)
    images = ImageChecker()
    for task_dir in tasks:
        validate_task(task_dir, report, images)
    c = report.counts
    return (
        f"MRB root {root}: {len(tasks)} task(s), {c['queries']} queries, {c['documents']} documents, "
        f"{c['judgements']} judgements, {c['candidates']} candidates, {images.checked} image(s) checked"
    )


def validate_task(task_dir: Path, report: Report, images: ImageChecker) -> None:
    """Every problem of one MRB task folder: :func:`datamodules.formats.load_task`, collecting."""
    task = load_task(task_dir, report, images)
    if task is not None:
        unjudged = [q for q in task.queries if not any(g > 0 for g in task.qrels.get(q, {}).values())]
        if unjudged:
            first = ", ".join(repr(q) for q in unjudged[:5])
            report.notes.append(
                f"{task_dir / 'queries.jsonl'}: {len(unjudged)} of {len(task.queries)} queries have no relevant "
                f"judgement in qrels.tsv and will not be scored (trec_eval skips them); first: {first}"
            )
        report.counts["queries"] += len(task.queries)
        report.counts["documents"] += len(task.corpus)
        report.counts["judgements"] += sum(len(d) for d in task.qrels.values())
        report.counts["candidates"] += sum(len(d) for d in task.candidates.values())


# ---- the stream walk -----------------------------------------------------------------------------
def _ids_only(batch) -> tuple:
    return batch.index, batch.ids, batch.skipped_ids


def walk_stream(
    root: str,
    world_size: int,
    num_workers: int,
    batch_size: int = 1,
    seed: int = 0,
    epoch: int = 0,
    **stream_kwargs,
) -> tuple[list[str], bool]:
    """Run the real stream as ``world_size`` ranks × ``num_workers`` DataLoader workers over one epoch.

    Returns the report lines (the last one is ``examples: ...``) and whether the walk is clean.
    """
    index = StreamIndex.build(root, stream_kwargs.pop("block_size", 128), on_bad_record="skip")
    counts: Counter[tuple[int, int]] = Counter()
    batches, skipped, lines = [], 0, []
    stream = None
    for rank in range(world_size):
        stream = TrainStream(
            root,
            batch_size=batch_size,
            rank=rank,
            world_size=world_size,
            seed=seed,
            index=index,
            on_bad_record="skip",
            default_instruction="(validate)",
            **stream_kwargs,
        )
        stream.epoch = epoch
        expected_index = 0
        try:
            for index_, ids, skipped_ids in stream.dataloader(collate_fn=_ids_only, num_workers=num_workers):
                if index_ != expected_index:
                    lines.append(
                        f"{root}: rank {rank} received batch {index_} where batch {expected_index} was due"
                    )
                expected_index += 1
                counts.update(ids)
                counts.update(skipped_ids)
                skipped += len(skipped_ids)
        except Exception as err:
            # The traceback's frames hold the loader iterator in a reference cycle; dropping it lets the
            # workers shut down now instead of when the GC gets to it (a 5 s join timeout).
            err.__traceback__ = None
            raise
        batches.append(expected_index)
    dropped = set(stream.remainder_ids(epoch))
    duplicated = sum(c - 1 for c in counts.values() if c > 1) + sum(1 for i in dropped if i in counts)
    missing = index.num_records - len(set(counts) | dropped)
    equal = len(set(batches)) == 1
    lines.append(
        f"stream: {world_size} rank(s) x {num_workers} worker(s), batch {batch_size}: "
        f"batches per rank {batches} ({'equal' if equal else 'UNEQUAL'}); {len(dropped)} remainder example(s) "
        f"dropped this epoch by design (< ranks x batch, rotates each epoch); {skipped} bad record(s) skipped"
    )
    lines.append(f"examples: {len(counts)} seen, {duplicated} duplicated, {missing} missing")
    return lines, equal and duplicated == 0 and missing == 0 and len(lines) == 2


# ---- command line --------------------------------------------------------------------------------
def detect_roots(root: Path) -> list[tuple[str, Path, list[Path] | None]]:
    """The roots under ROOT: ``(kind, folder, shards)`` with kind ``"mrb"`` or ``"training"``.

    ROOT may be an MRB root, one task folder, a training root (or one shard), or a folder holding
    several of them (the demo's ``data/`` holds ``train/`` and ``mrb/``): MRB task folders are found
    first, and the training shards are the JSONL files outside them (``shards``; None means every
    shard under the folder). Raises FormatError when ROOT is none of these.
    """
    if root.is_file():
        if root.name.endswith(SHARD_SUFFIXES):
            return [("training", root, None)]
        raise FormatError(f"{root}: not a training file (.jsonl / .jsonl.gz) nor a folder")
    if not root.is_dir():
        raise FormatError(f"{root}: no such file or folder")
    if (root / "task.json").exists() or is_task_dir(root):
        return [("mrb", root, None)]
    mrb_roots: set[Path] = set()
    shards: list[Path] = []
    for folder, subfolders, files in os.walk(root):
        here = Path(folder)
        keep = []
        for name in sorted(subfolders):
            if is_hidden(name):
                continue  # hidden names are never data
            if is_task_dir(here / name):
                mrb_roots.add(here)  # a task folder: its parent is an MRB root; not walked further
            else:
                keep.append(name)
        subfolders[:] = keep
        shards.extend(here / name for name in files if name.endswith(SHARD_SUFFIXES) and not is_hidden(name))
    found: list[tuple[str, Path, list[Path] | None]] = [("mrb", r, None) for r in sorted(mrb_roots)]
    if shards:
        shards.sort()
        common = Path(os.path.commonpath([str(p.parent) for p in shards]))
        found.append(("training", common, None if not mrb_roots else shards))
    if not found:
        raise FormatError(
            f"{root}: neither an MRB root (task folders with task.json ...) nor a training root (.jsonl files)"
        )
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=program("datamodules.validate"), description=__doc__.split("\n")[0])
    parser.add_argument(
        "root", help="training root (JSONL shards), MRB root (task folders), or a folder holding both"
    )
    parser.add_argument(
        "--stream", action="store_true", help="also walk the training stream (training roots)"
    )
    parser.add_argument("--world-size", type=int, default=1, help="ranks for --stream (default 1)")
    parser.add_argument("--num-workers", type=int, default=0, help="DataLoader workers per rank for --stream")
    parser.add_argument("--batch-size", type=int, default=1, help="groups per batch for --stream (default 1)")
    parser.add_argument("--num-negatives", type=int, default=4, help="negatives per group for --stream")
    parser.add_argument("--seed", type=int, default=0, help="stream seed for --stream")
    parser.add_argument(
        "--images-root", action="append", default=[], metavar="DIR",
        help=f"also accept images inside DIR (an image tree referenced in place; repeatable; as {IMAGE_ROOTS_ENV})",
    )  # fmt: skip
    args = parser.parse_args(argv)
    with image_roots(*args.images_root):
        return _validate(args)


def _validate(args: argparse.Namespace) -> int:
    root = Path(args.root)
    if not root.exists():  # a wrong argument, not a finding: exit 2 (datamodules.exit_codes)
        return report_error(f"{root}: no such file or folder", BAD_INPUT)
    try:
        roots = detect_roots(root)
    except FormatError as err:
        print(err)
        return 1
    for path in leftovers(root):
        print(f"note: {leftover_note(path)}")
    training = [(path, shards) for kind, path, shards in roots if kind == "training"]
    if args.stream and not training:
        return report_error(f"{root}: --stream needs a training root, this is an MRB root", BAD_INPUT)
    ok = True
    for kind, path, shards in roots:
        report = Report()
        if kind == "training":
            summary = validate_training(path, report, shards)
        else:
            summary = validate_mrb(path, report)
        for problem in report.problems:
            print(problem)
        for note in report.notes:
            print(f"note: {note}")
        lines: list[str] = []
        stream_ok = True
        if args.stream and kind == "training":
            try:
                lines, stream_ok = walk_stream(
                    str(path), args.world_size, args.num_workers, args.batch_size, args.seed,
                    num_negatives=args.num_negatives,
                )  # fmt: skip
            except (FormatError, ValueError) as err:
                # A DataLoader worker's error arrives with the worker's traceback; its last line is the message.
                message = str(err).strip().splitlines()[-1]
                lines, stream_ok = [f"stream: {message}", "examples: 0 seen, 0 duplicated, 0 missing"], False
        if not report.problems and stream_ok:
            print(f"OK: {summary}")
        else:
            failed = f"{len(report.problems)} problem(s)" + ("" if stream_ok else ", stream walk failed")
            print(f"FAILED: {failed}; {summary}")
            ok = False
        if lines:
            print("\n".join(lines))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
