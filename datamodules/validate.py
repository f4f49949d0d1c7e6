"""Check a training root or an MRB root before using it; print every problem as ``file:line: reason``.

Usage::

    python -m datamodules.validate ROOT [--stream --world-size W --num-workers K [--batch-size B]]

ROOT is recognised as an MRB root (task folders with task.json, queries.jsonl, corpus.jsonl,
qrels.tsv, candidates.trec), a single MRB task folder, or a training root (JSONL / JSONL.gz
shards). Every problem is reported, not only the first: schema and types, ids (missing,
duplicated, with whitespace), images (inside the folder -- no ``..`` or symlink escapes, no
absolute paths --, existing, decodable, under the decompression-bomb pixel limit), qrels and
candidates that name unknown ids, queries without a relevant document or without candidates, and
malformed TREC lines. Exit status 1 when anything is wrong, else 0 with a one-line summary.

``--stream`` (training roots) also walks the real training stream (:mod:`datamodules.stream`) as W
ranks × K DataLoader workers would, and checks that every rank gets the same number of batches and
that every example is used exactly once, apart from the per-epoch remainder the stream drops by
design (reported). It ends with ``examples: <n> seen, <d> duplicated, <m> missing``.
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import sys
import zlib
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from PIL import Image

from datamodules.formats import FAMILIES, FormatError, parse_train_group, resolve_inside
from datamodules.metrics import parse_metric
from datamodules.stream import SHARD_SUFFIXES, StreamIndex, TrainStream, list_shards
from lightning_modules.encoding import MAX_DECODED_PIXELS

MRB_FILES = ("task.json", "queries.jsonl", "corpus.jsonl", "qrels.tsv", "candidates.trec")


class Report:
    """Collected problems (``file:line: reason``) and counts for the summary."""

    def __init__(self) -> None:
        self.problems: list[str] = []
        self.counts: Counter[str] = Counter()

    def add(self, where: str, reason: str) -> None:
        self.problems.append(f"{where}: {reason}")


# ---- shared checks -------------------------------------------------------------------------------
class ImageChecker:
    """Decodes each image once (cached by resolved path) and says what is wrong with it, if anything."""

    def __init__(self, max_pixels: int = MAX_DECODED_PIXELS) -> None:
        self.max_pixels = max_pixels
        self._seen: dict[Path, str | None] = {}

    def __call__(self, path: Path) -> str | None:
        if path not in self._seen:
            self._seen[path] = self._check(path)
        return self._seen[path]

    @property
    def checked(self) -> int:
        return len(self._seen)

    def _check(self, path: Path) -> str | None:
        if not path.exists():
            return f"image file {path} not found"
        if not path.is_file():
            return f"image {path} is not a file"
        try:
            with Image.open(path) as image:
                width, height = image.size
                if width * height > self.max_pixels:
                    return (
                        f"image {path} is {width}x{height} pixels, over the {self.max_pixels:,} pixel "
                        "safety limit (decompression bomb guard); downscale it"
                    )
                image.verify()
            with Image.open(path) as image:
                image.load()
        except Image.DecompressionBombError as err:
            return f"image {path} refused as a decompression bomb ({err})"
        except (OSError, SyntaxError, ValueError, zlib.error) as err:
            return f"image {path} cannot be decoded ({type(err).__name__}: {err})"
        return None


def check_doc(obj: Any, base: Path, where: str, report: Report, images: ImageChecker) -> tuple | None:
    """Check one ``{"text", "image"}`` object; returns its identity ``(text, resolved image)`` or None."""
    if not isinstance(obj, dict):
        report.add(where, "expected an object with 'text' and/or 'image'")
        return None
    text, image = obj.get("text"), obj.get("image")
    ok = True
    if text is not None and not isinstance(text, str):
        report.add(where, "'text' must be a string")
        ok = False
    if not text and not image:
        report.add(where, "needs 'text' or 'image' (at least one, non-empty)")
        return None
    resolved = None
    if image:
        try:
            resolved = resolve_inside(base, image, where)
        except FormatError as err:
            report.add(where, str(err).removeprefix(f"{where}: "))
            return None
        problem = images(resolved)
        report.counts["image references"] += 1
        if problem:
            report.add(where, problem)
            ok = False
    return (text or None, str(resolved) if resolved else None) if ok else None


def iter_lines(path: Path, report: Report) -> Iterator[tuple[int, dict | None]]:
    """``(line, record)`` of a JSONL(.gz) file; bad lines are reported and yield ``None``."""
    opener = gzip.open if path.name.endswith(".gz") else open
    lineno = 0
    try:
        with opener(path, "rt", encoding="utf-8") as handle:
            for lineno, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                where = f"{path}:{lineno}"
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as err:
                    report.add(where, f"invalid JSON ({err.msg} at column {err.colno})")
                    yield lineno, None
                    continue
                if not isinstance(record, dict):
                    report.add(where, f"expected a JSON object, got {type(record).__name__}")
                    yield lineno, None
                    continue
                yield lineno, record
    except (OSError, EOFError, UnicodeDecodeError, zlib.error) as err:
        report.add(f"{path}:{lineno + 1}", f"cannot read the file further ({type(err).__name__}: {err})")


# ---- training roots ------------------------------------------------------------------------------
def validate_training(root: Path, report: Report) -> str:
    """Check every record of every shard under ``root``; returns the summary line."""
    images = ImageChecker()
    try:
        shards = [Path(p) for p in list_shards(str(root))[2]]  # the files the training stream reads
    except FormatError as err:
        report.add(f"{root}:1", str(err).removeprefix(f"{root}: "))
        shards = []
    records = 0
    for path in shards:
        for lineno, record in iter_lines(path, report):
            records += 1
            if record is not None:
                check_train_record(record, path.parent, f"{path}:{lineno}", report, images)
    if records == 0 and shards:
        report.add(f"{shards[0]}:1", "the training root holds no records")
    return (
        f"training root {root}: {len(shards)} file(s), {records} record(s), {images.checked} image(s) checked"
    )


def check_train_record(record: dict, base: Path, where: str, report: Report, images: ImageChecker) -> None:
    before = len(report.problems)
    task, instruction = record.get("task"), record.get("instruction")
    if not isinstance(task, str) or not task:
        report.add(where, "'task' must be a non-empty string")
    if instruction is not None and not isinstance(instruction, str):
        report.add(where, "'instruction' must be a string")
    check_doc(record.get("query"), base, f"{where}: query", report, images)
    positives, negatives = record.get("positives"), record.get("hard_negatives", [])
    pos_ids = set()
    if not isinstance(positives, list) or not positives:
        report.add(where, "'positives' must be a non-empty list")
    else:
        for i, doc in enumerate(positives):
            pos_ids.add(check_doc(doc, base, f"{where}: positives[{i}]", report, images))
    if not isinstance(negatives, list):
        report.add(where, "'hard_negatives' must be a list")
    else:
        for i, doc in enumerate(negatives):
            identity = check_doc(doc, base, f"{where}: hard_negatives[{i}]", report, images)
            if identity is not None and identity in pos_ids:
                report.add(f"{where}: hard_negatives[{i}]", "identical to a positive of the same record")
    if len(report.problems) == before:
        try:  # the reader the stream uses must agree
            parse_train_group(record, base, where)
        except FormatError as err:
            report.add(where, str(err).removeprefix(f"{where}: "))


# ---- MRB roots -----------------------------------------------------------------------------------
def is_task_dir(path: Path) -> bool:
    return path.is_dir() and any((path / name).exists() for name in MRB_FILES)


def validate_mrb(root: Path, report: Report) -> str:
    tasks = [root] if (root / "task.json").exists() else sorted(p for p in root.iterdir() if is_task_dir(p))
    images = ImageChecker()
    for task_dir in tasks:
        validate_task(task_dir, report, images)
    c = report.counts
    return (
        f"MRB root {root}: {len(tasks)} task(s), {c['queries']} queries, {c['documents']} documents, "
        f"{c['judgements']} judgements, {c['candidates']} candidates, {images.checked} image(s) checked"
    )


def _check_task_json(path: Path, report: Report) -> None:
    if not path.is_file():
        report.add(f"{path}:1", "missing task.json (needs family, instruction, metric)")
        return
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        report.add(f"{path}:{err.lineno}", f"invalid JSON ({err.msg})")
        return
    except (OSError, UnicodeDecodeError) as err:
        report.add(f"{path}:1", f"cannot read ({err})")
        return
    if not isinstance(meta, dict):
        report.add(f"{path}:1", "expected a JSON object with family, instruction, metric")
        return
    for key in ("family", "instruction", "metric"):
        if not isinstance(meta.get(key), str) or not meta[key]:
            report.add(f"{path}:1", f"'{key}' must be a non-empty string")
    if isinstance(meta.get("family"), str) and meta["family"] and meta["family"] not in FAMILIES:
        report.add(f"{path}:1", f"unknown family {meta['family']!r}; known: {' '.join(FAMILIES)}")
    if isinstance(meta.get("metric"), str) and meta["metric"]:
        try:
            parse_metric(meta["metric"])
        except ValueError as err:
            report.add(f"{path}:1", str(err))


def _read_ids(path: Path, task_dir: Path, report: Report, images: ImageChecker, kind: str) -> dict[str, int]:
    """Check a queries/corpus file; returns ``{id: line}`` of the ids it defines."""
    ids: dict[str, int] = {}
    if not path.is_file():
        report.add(f"{path}:1", f"missing {path.name} (one {kind} per line: id, text and/or image)")
        return ids
    for lineno, record in iter_lines(path, report):
        if record is None:
            continue
        where = f"{path}:{lineno}"
        doc_id = record.get("id")
        if not isinstance(doc_id, str) or not doc_id:
            report.add(where, "'id' must be a non-empty string")
        elif any(c.isspace() for c in doc_id):
            report.add(where, f"id {doc_id!r} contains whitespace (TREC files split on it)")
        elif doc_id in ids:
            report.add(where, f"duplicate id {doc_id!r} (first defined on line {ids[doc_id]})")
        else:
            ids[doc_id] = lineno
        check_doc(record, task_dir, where, report, images)
    if not ids and not any(p.startswith(f"{path}:") for p in report.problems):
        report.add(f"{path}:1", f"no {kind} defined")
    return ids


def _trec_lines(path: Path, report: Report) -> Iterator[tuple[str, list[str]]]:
    try:
        with open(path, encoding="utf-8") as handle:
            for lineno, line in enumerate(handle, start=1):
                fields = line.split()
                if fields:
                    yield f"{path}:{lineno}", fields
    except (OSError, UnicodeDecodeError) as err:
        report.add(f"{path}:1", f"cannot read ({err})")


def check_qrels_line(fields: list[str]) -> str | None:
    if len(fields) != 4:
        return f"expected 'qid 0 docid relevance', got {len(fields)} field(s)"
    try:
        int(fields[3])
    except ValueError:
        return f"relevance {fields[3]!r} is not an integer"
    return None


def check_run_line(fields: list[str]) -> str | None:
    if len(fields) != 6:
        return f"expected 'qid Q0 docid rank score tag', got {len(fields)} field(s)"
    try:
        int(fields[3])
    except ValueError:
        return f"rank {fields[3]!r} is not an integer"
    try:
        score = float(fields[4])
    except ValueError:
        return f"score {fields[4]!r} is not a number"
    if not math.isfinite(score):
        return f"score {fields[4]!r} is not finite"
    return None


def _check_trec(path: Path, kind: str, queries: dict, corpus: dict, report: Report) -> dict[str, set[str]]:
    """Check a qrels or candidates file; returns ``{qid: docs}`` (qrels: relevant docs only)."""
    table: dict[str, set[str]] = {}
    if not path.is_file():
        report.add(f"{path}:1", f"missing {path.name}")
        return table
    checker = check_qrels_line if kind == "qrels" else check_run_line
    seen: dict[tuple[str, str], str] = {}
    for where, fields in _trec_lines(path, report):
        problem = checker(fields)
        if problem:
            report.add(where, problem)
            continue
        qid, docid = fields[0], fields[2]
        report.counts["judgements" if kind == "qrels" else "candidates"] += 1
        if (qid, docid) in seen:
            report.add(where, f"query {qid!r} lists document {docid!r} twice (first at {seen[(qid, docid)]})")
            continue
        seen[(qid, docid)] = where
        if qid not in queries:
            report.add(where, f"query id {qid!r} is not in queries.jsonl")
        if docid not in corpus:
            report.add(where, f"document id {docid!r} is not in corpus.jsonl")
        docs = table.setdefault(qid, set())
        if kind != "qrels" or int(fields[3]) > 0:
            docs.add(docid)
    return table


def validate_task(task_dir: Path, report: Report, images: ImageChecker) -> None:
    _check_task_json(task_dir / "task.json", report)
    queries = _read_ids(task_dir / "queries.jsonl", task_dir, report, images, "queries")
    corpus = _read_ids(task_dir / "corpus.jsonl", task_dir, report, images, "documents")
    report.counts["queries"] += len(queries)
    report.counts["documents"] += len(corpus)
    qrels = _check_trec(task_dir / "qrels.tsv", "qrels", queries, corpus, report)
    candidates = _check_trec(task_dir / "candidates.trec", "candidates", queries, corpus, report)
    have_qrels = (task_dir / "qrels.tsv").is_file()
    have_candidates = (task_dir / "candidates.trec").is_file()
    for qid, line in queries.items():
        where = f"{task_dir / 'queries.jsonl'}:{line}"
        if have_qrels and not qrels.get(qid):
            report.add(where, f"query {qid!r} has no relevant document in qrels.tsv")
        if have_candidates and not candidates.get(qid):
            report.add(where, f"query {qid!r} has an empty candidate list in candidates.trec")


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
    index = StreamIndex.build(root, stream_kwargs.pop("block_size", 128))
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
def detect(root: Path) -> str:
    """``"mrb"`` or ``"training"``; raises FormatError when ROOT is neither."""
    if root.is_file():
        if root.name.endswith(SHARD_SUFFIXES):
            return "training"
        raise FormatError(f"{root}: not a training file (.jsonl / .jsonl.gz) nor a folder")
    if not root.is_dir():
        raise FormatError(f"{root}: no such file or folder")
    if (root / "task.json").exists() or any(is_task_dir(p) for p in root.iterdir()):
        return "mrb"
    if any(p.name.endswith(SHARD_SUFFIXES) for p in root.rglob("*")):
        return "training"
    raise FormatError(
        f"{root}: neither an MRB root (task folders with task.json ...) nor a training root (.jsonl files)"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m datamodules.validate", description=__doc__.split("\n")[0]
    )
    parser.add_argument("root", help="training root (JSONL shards) or MRB root (task folders)")
    parser.add_argument(
        "--stream", action="store_true", help="also walk the training stream (training roots)"
    )
    parser.add_argument("--world-size", type=int, default=1, help="ranks for --stream (default 1)")
    parser.add_argument("--num-workers", type=int, default=0, help="DataLoader workers per rank for --stream")
    parser.add_argument("--batch-size", type=int, default=1, help="groups per batch for --stream (default 1)")
    parser.add_argument("--num-negatives", type=int, default=4, help="negatives per group for --stream")
    parser.add_argument("--seed", type=int, default=0, help="stream seed for --stream")
    args = parser.parse_args(argv)

    root = Path(args.root)
    report = Report()
    try:
        kind = detect(root)
    except FormatError as err:
        print(err)
        return 1
    summary = validate_training(root, report) if kind == "training" else validate_mrb(root, report)
    for problem in report.problems:
        print(problem)
    lines: list[str] = []
    stream_ok = True
    if args.stream:
        if kind != "training":
            print(f"{root}: --stream needs a training root, this is an MRB root")
            return 1
        try:
            lines, stream_ok = walk_stream(
                str(root), args.world_size, args.num_workers, args.batch_size, args.seed,
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
    if lines:
        print("\n".join(lines))
    return 0 if not report.problems and stream_ok else 1


if __name__ == "__main__":
    sys.exit(main())
