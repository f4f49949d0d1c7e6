"""Convert a BEIR / MTEB retrieval folder plus a first-stage TREC run into one MRB task folder.

Usage::

    python -m datamodules.convert SRC --run first_stage.trec --out MRB_ROOT/TASK \\
        --family T2T --metric ndcg@10 --instruction "Given a question, find the passage that answers it" \\
        [--split test] [--top-k 100] [--image-field image] [--query-images DIR] [--corpus-images DIR]
        [--full-corpus]

SRC is the common BEIR layout::

    SRC/corpus.jsonl[.gz]     {"_id": "d1", "title": "...", "text": "...", "image": "imgs/d1.png"?}
    SRC/queries.jsonl[.gz]    {"_id": "q1", "text": "...", "image": ...?}
    SRC/qrels/<split>.tsv     header "query-id corpus-id score", then tab-separated rows

Document text is ``title`` and ``text`` joined by a newline (either may be empty). Images come
from the ``--image-field`` of a record (a path relative to SRC) or, for records without one, from
``--query-images`` / ``--corpus-images`` folders holding ``<id>.<ext>`` files; they are copied into
``TASK/images/``. The output keeps the queries that have a relevant document in the qrels and at
least one candidate in the run (the others are counted and reported), the run cut to ``--top-k``,
and, unless ``--full-corpus``, only the documents those queries' judgements and candidates name.

The output folder is never overwritten: an existing ``--out`` is an error. The folder is written
under a temporary name, checked with :mod:`datamodules.validate`, and renamed into place only when
it is clean.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Any

from datamodules.formats import FAMILIES, FormatError, iter_jsonl
from datamodules.metrics import parse_metric
from datamodules.trec import write_run
from datamodules.validate import ImageChecker, Report, check_run_line, validate_task

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


class ConversionError(ValueError):
    """The source cannot be converted; the message lists every problem found."""


def _find(src: Path, stem: str) -> Path:
    for name in (f"{stem}.jsonl", f"{stem}.jsonl.gz"):
        if (src / name).is_file():
            return src / name
    raise ConversionError(f"{src}: no {stem}.jsonl or {stem}.jsonl.gz")


def _safe_name(doc_id: str) -> str:
    safe = _UNSAFE.sub("_", doc_id)
    if safe != doc_id or safe.startswith("."):
        safe = f"{safe}-{hashlib.sha1(doc_id.encode()).hexdigest()[:8]}"
    return safe


def _image_index(folder: Path | None) -> dict[str, Path]:
    if folder is None:
        return {}
    if not folder.is_dir():
        raise ConversionError(f"{folder}: image folder not found")
    return {p.stem: p for p in sorted(folder.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES}


def read_qrels_tsv(path: Path, errors: list[str]) -> dict[str, dict[str, int]]:
    """BEIR qrels: optional header ``query-id corpus-id score``, then ``qid<TAB>docid<TAB>score``."""
    qrels: dict[str, dict[str, int]] = {}
    with open(path, encoding="utf-8") as handle:
        for lineno, line in enumerate(handle, start=1):
            fields = line.rstrip("\n").split("\t") if "\t" in line else line.split()
            if not line.strip():
                continue
            if lineno == 1 and not fields[-1].strip().lstrip("-").isdigit():
                continue  # header
            if len(fields) != 3:
                errors.append(
                    f"{path}:{lineno}: expected 'query-id<TAB>corpus-id<TAB>score', got {len(fields)} field(s)"
                )
                continue
            qid, docid, score = (f.strip() for f in fields)
            try:
                qrels.setdefault(qid, {})[docid] = int(score)
            except ValueError:
                errors.append(f"{path}:{lineno}: score {score!r} is not an integer")
    return qrels


def read_run_lines(path: Path, errors: list[str]) -> dict[str, dict[str, float]]:
    run: dict[str, dict[str, float]] = {}
    with open(path, encoding="utf-8") as handle:
        for lineno, line in enumerate(handle, start=1):
            fields = line.split()
            if not fields:
                continue
            problem = check_run_line(fields)
            if problem:
                errors.append(f"{path}:{lineno}: {problem}")
                continue
            docs = run.setdefault(fields[0], {})
            if fields[2] in docs:
                errors.append(f"{path}:{lineno}: document {fields[2]!r} listed twice for query {fields[0]!r}")
                continue
            docs[fields[2]] = float(fields[4])
    return run


class _Writer:
    """Writes queries/corpus records of the MRB task, copying their images."""

    def __init__(self, src: Path, out: Path, image_field: str, errors: list[str]) -> None:
        self.src, self.out, self.image_field, self.errors = src, out, image_field, errors
        self.images = 0

    def convert(
        self, path: Path, keep: set[str] | None, kind: str, image_folder: dict[str, Path]
    ) -> set[str]:
        """Stream ``path`` into ``out/<kind>.jsonl``; returns the ids written."""
        written: set[str] = set()
        with open(self.out / f"{kind}.jsonl", "w", encoding="utf-8") as handle:
            for lineno, record in iter_jsonl(path):
                where = f"{path}:{lineno}"
                raw_id = record.get("_id", record.get("id"))
                if not isinstance(raw_id, str | int) or isinstance(raw_id, bool) or str(raw_id) == "":
                    self.errors.append(f"{where}: '_id' must be a non-empty string")
                    continue
                doc_id = str(raw_id)
                if keep is not None and doc_id not in keep:
                    continue
                if any(c.isspace() for c in doc_id):
                    self.errors.append(
                        f"{where}: id {doc_id!r} contains whitespace; MRB ids cannot (TREC files)"
                    )
                    continue
                if doc_id in written:
                    self.errors.append(f"{where}: duplicate id {doc_id!r}")
                    continue
                parts = (
                    [record.get("title"), record.get("text")] if kind == "corpus" else [record.get("text")]
                )
                if any(p is not None and not isinstance(p, str) for p in parts):
                    self.errors.append(f"{where}: 'title' and 'text' must be strings")
                    continue
                text = "\n".join(p for p in parts if p)
                out: dict[str, Any] = {"id": doc_id}
                if text:
                    out["text"] = text
                image = self._image(record, doc_id, kind, image_folder, where)
                if image:
                    out["image"] = image
                if not text and not image:
                    self.errors.append(f"{where}: record {doc_id!r} has neither text nor image")
                    continue
                handle.write(json.dumps(out, ensure_ascii=False) + "\n")
                written.add(doc_id)
        return written

    def _image(self, record: dict, doc_id: str, kind: str, folder: dict[str, Path], where: str) -> str | None:
        value = record.get(self.image_field)
        if value is not None and not isinstance(value, str):
            self.errors.append(f"{where}: '{self.image_field}' must be a path string")
            return None
        if value:
            source = Path(value) if Path(value).is_absolute() else self.src / value
        elif doc_id in folder:
            source = folder[doc_id]
        else:
            return None
        if not source.is_file():
            self.errors.append(f"{where}: image {source} not found")
            return None
        target = Path("images") / kind / f"{_safe_name(doc_id)}{source.suffix.lower()}"
        (self.out / target).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, self.out / target)
        self.images += 1
        return target.as_posix()


def convert(
    src: str | Path,
    run: str | Path,
    out: str | Path,
    family: str,
    metric: str,
    instruction: str,
    split: str = "test",
    top_k: int | None = None,
    image_field: str = "image",
    query_images: str | Path | None = None,
    corpus_images: str | Path | None = None,
    full_corpus: bool = False,
) -> dict[str, int]:
    """Write the MRB task folder ``out``; returns counts. Raises ConversionError listing all problems."""
    src, out = Path(src), Path(out)
    if out.exists():
        raise ConversionError(f"{out}: already exists; refusing to overwrite it (choose a new --out)")
    if family not in FAMILIES:
        raise ConversionError(f"unknown family {family!r}; known: {' '.join(FAMILIES)}")
    try:
        parse_metric(metric)
    except ValueError as err:
        raise ConversionError(str(err)) from None
    if not instruction.strip():
        raise ConversionError("--instruction must be a non-empty string")
    qrels_path = src / "qrels" / f"{split}.tsv"
    if not qrels_path.is_file():
        raise ConversionError(f"{qrels_path}: qrels file not found (BEIR layout: qrels/<split>.tsv)")
    corpus_path, queries_path = _find(src, "corpus"), _find(src, "queries")

    errors: list[str] = []
    qrels = read_qrels_tsv(qrels_path, errors)
    candidates = read_run_lines(Path(run), errors)
    if errors:
        raise ConversionError("\n".join(errors))
    if top_k is not None:
        candidates = {
            q: dict(sorted(docs.items(), key=lambda kv: (kv[1], kv[0]), reverse=True)[:top_k])
            for q, docs in candidates.items()
        }
    relevant = {q for q, docs in qrels.items() if any(r > 0 for r in docs.values())}
    kept = {q for q in relevant if candidates.get(q)}
    counts = {
        "dropped_no_relevant": len(set(qrels) - relevant),
        "dropped_no_candidates": len(relevant - kept),
    }
    if not kept:
        raise ConversionError(f"{qrels_path}: no query has both a relevant document and candidates in {run}")
    docs_needed = {d for q in kept for d in (*qrels[q], *candidates[q])}

    tmp = out.parent / f".{out.name}.converting-{os.getpid()}"
    tmp.mkdir(parents=True)
    try:
        writer = _Writer(src, tmp, image_field, errors)
        queries = writer.convert(queries_path, kept, "queries", _image_index(_opt(query_images)))
        corpus = writer.convert(
            corpus_path, None if full_corpus else docs_needed, "corpus", _image_index(_opt(corpus_images))
        )
        for q in sorted(kept - queries):
            errors.append(f"{qrels_path}: query {q!r} is not in {queries_path}")
        for d in sorted(docs_needed - corpus):
            errors.append(f"{qrels_path} / {run}: document {d!r} is not in {corpus_path}")
        if errors:
            raise ConversionError("\n".join(errors))
        (tmp / "task.json").write_text(
            json.dumps({"family": family, "instruction": instruction, "metric": metric}, indent=2) + "\n",
            encoding="utf-8",
        )
        with open(tmp / "qrels.tsv", "w", encoding="utf-8") as handle:
            for q in sorted(kept):
                for d, grade in sorted(qrels[q].items()):
                    handle.write(f"{q} 0 {d} {grade}\n")
        write_run(tmp / "candidates.trec", {q: candidates[q] for q in kept}, tag="first-stage")
        report = Report()
        validate_task(tmp, report, ImageChecker())
        if report.problems:
            raise ConversionError("the converted folder does not validate:\n" + "\n".join(report.problems))
        if out.exists():
            raise ConversionError(f"{out}: appeared while converting; refusing to overwrite it")
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    counts.update(
        queries=len(queries),
        documents=len(corpus),
        images=writer.images,
        candidates=sum(len(candidates[q]) for q in kept),
        judgements=sum(len(qrels[q]) for q in kept),
    )
    return counts


def _opt(path: str | Path | None) -> Path | None:
    return Path(path) if path else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m datamodules.convert", description=__doc__.split("\n")[0])
    parser.add_argument("src", help="BEIR/MTEB folder: corpus.jsonl, queries.jsonl, qrels/<split>.tsv")
    parser.add_argument("--run", required=True, help="first-stage TREC run: 'qid Q0 docid rank score tag'")
    parser.add_argument("--out", required=True, help="new MRB task folder (MRB_ROOT/TASK); must not exist")
    parser.add_argument("--family", required=True, choices=FAMILIES, help="MRB family of the task")
    parser.add_argument("--metric", required=True, help="ndcg@k, recall@k or mrr@k")
    parser.add_argument("--instruction", required=True, help="the task instruction given to the reranker")
    parser.add_argument("--split", default="test", help="qrels split: SRC/qrels/<split>.tsv (default test)")
    parser.add_argument("--top-k", type=int, default=None, help="keep the top K candidates per query")
    parser.add_argument(
        "--image-field", default="image", help="record field holding an image path (relative to SRC)"
    )
    parser.add_argument("--query-images", default=None, help="folder of <query id>.<ext> images")
    parser.add_argument("--corpus-images", default=None, help="folder of <document id>.<ext> images")
    parser.add_argument(
        "--full-corpus", action="store_true", help="keep every document, not only referenced ones"
    )
    args = parser.parse_args(argv)
    try:
        counts = convert(
            args.src,
            args.run,
            args.out,
            family=args.family,
            metric=args.metric,
            instruction=args.instruction,
            split=args.split,
            top_k=args.top_k,
            image_field=args.image_field,
            query_images=args.query_images,
            corpus_images=args.corpus_images,
            full_corpus=args.full_corpus,
        )
    except (ConversionError, FormatError, OSError) as err:
        print(err, file=sys.stderr)
        return 1
    print(
        f"wrote {args.out}: {counts['queries']} queries, {counts['documents']} documents, {counts['images']} images, "
        f"{counts['judgements']} judgements, {counts['candidates']} candidates; dropped "
        f"{counts['dropped_no_relevant']} query(ies) without a relevant document and "
        f"{counts['dropped_no_candidates']} without candidates"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
