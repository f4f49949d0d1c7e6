"""On-disk formats of design.md §4: MRB evaluation tasks and training query groups.

Every reader is strict: a problem raises :class:`FormatError` whose message starts with
``file:line:`` and says what to fix. Nothing is skipped silently.
"""

from __future__ import annotations

import functools
import gzip
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from datamodules.metrics import parse_metric
from datamodules.trec import FormatError, Qrels, Run, read_qrels, read_run

FAMILIES = ("T2T", "I2I", "T2I", "I2T", "T2VD", "T2IT", "IT2T", "IT2I", "IT2IT")

__all__ = [
    "FAMILIES",
    "Doc",
    "FormatError",
    "MRBTask",
    "TaskMeta",
    "TrainGroup",
    "iter_jsonl",
    "list_tasks",
    "load_task",
    "parse_doc",
    "read_task_meta",
    "resolve_inside",
]


@dataclass(frozen=True)
class Doc:
    """One side of a pair: text, an image path (absolute, already checked), or both."""

    text: str | None = None
    image: str | None = None

    @property
    def kind(self) -> str:
        return ("I" if self.image else "") + ("T" if self.text else "")


@dataclass(frozen=True)
class TaskMeta:
    name: str
    family: str
    instruction: str
    metric: str


@dataclass
class MRBTask:
    """A loaded MRB test set: queries, corpus, judgements and the first-stage candidates."""

    meta: TaskMeta
    root: Path
    queries: dict[str, Doc]
    corpus: dict[str, Doc]
    qrels: Qrels
    candidates: Run

    @property
    def name(self) -> str:
        return self.meta.name


@dataclass(frozen=True)
class TrainGroup:
    """One training record: a query with its positives and mined hard negatives."""

    task: str
    instruction: str | None
    query: Doc
    positives: tuple[Doc, ...]
    hard_negatives: tuple[Doc, ...]
    source: str  # "file:line", for error messages and skip accounting


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line_number, object)`` from a JSONL or JSONL.gz file; blank lines are allowed."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as handle:
        for lineno, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise FormatError(
                    f"{path}:{lineno}: invalid JSON ({err.msg} at column {err.colno})"
                ) from None
            if not isinstance(record, dict):
                raise FormatError(f"{path}:{lineno}: expected a JSON object, got {type(record).__name__}")
            yield lineno, record


@functools.lru_cache(maxsize=1024)
def _resolved(base: Path) -> Path:
    return base.resolve()  # a syscall per path component: cached, as every document of a file shares it


def resolve_inside(base: Path, relative: str, where: str) -> Path:
    """Resolve ``relative`` against ``base``; it must stay inside ``base`` (no ``..``, absolute or
    symlinked escapes)."""
    if not isinstance(relative, str) or not relative:
        raise FormatError(f"{where}: image must be a non-empty relative path string")
    candidate = Path(relative)
    if candidate.is_absolute():
        raise FormatError(f"{where}: image path {relative!r} is absolute; use a path relative to {base}")
    resolved = (base / candidate).resolve()
    if not resolved.is_relative_to(_resolved(base)):
        raise FormatError(f"{where}: image path {relative!r} escapes {base}; keep images inside it")
    return resolved


ImageResolver = Callable[[Any, str], str]  # (relative image path, where) -> absolute path or URL


def parse_doc(obj: Any, base: Path, where: str, resolve_image: ImageResolver | None = None) -> Doc:
    """Parse ``{"text": ..., "image": ...}`` (at least one present) with its image under ``base``.

    ``resolve_image`` maps the relative image path to where it is read from (default: a local path
    checked by :func:`resolve_inside`; the training stream passes one for fsspec URLs).
    """
    if not isinstance(obj, dict):
        raise FormatError(f"{where}: expected an object with 'text' and/or 'image'")
    text, image = obj.get("text"), obj.get("image")
    if text is not None and not isinstance(text, str):
        raise FormatError(f"{where}: 'text' must be a string")
    if not text and not image:
        raise FormatError(f"{where}: needs 'text' or 'image' (at least one, non-empty)")
    if resolve_image is None:
        image_path = str(resolve_inside(base, image, where)) if image else None
    else:
        image_path = resolve_image(image, where) if image else None
    return Doc(text=text or None, image=image_path)


def read_task_meta(task_dir: str | Path) -> TaskMeta:
    """Read ``<task>/task.json``: family, instruction and metric of one MRB test set."""
    task_dir = Path(task_dir)
    path = task_dir / "task.json"
    if not path.is_file():
        raise FormatError(f"{path}:1: missing task.json (needs family, instruction, metric)")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise FormatError(f"{path}:{err.lineno}: invalid JSON ({err.msg})") from None
    for key in ("family", "instruction", "metric"):
        if not isinstance(meta.get(key), str) or not meta[key]:
            raise FormatError(f"{path}:1: '{key}' must be a non-empty string")
    if meta["family"] not in FAMILIES:
        raise FormatError(f"{path}:1: unknown family {meta['family']!r}; known: {' '.join(FAMILIES)}")
    try:
        parse_metric(meta["metric"])
    except ValueError as err:
        raise FormatError(f"{path}:1: {err}") from None
    return TaskMeta(task_dir.name, meta["family"], meta["instruction"], meta["metric"])


def list_tasks(root: str | Path, tasks: list[str] | None = None) -> list[Path]:
    """Task folders under an MRB root (those holding task.json), optionally filtered by name."""
    root = Path(root)
    if not root.is_dir():
        raise FormatError(f"{root}: MRB root folder not found")
    found = sorted(p for p in root.iterdir() if (p / "task.json").is_file())
    if tasks:
        known = {p.name: p for p in found}
        missing = [t for t in tasks if t not in known]
        if missing:
            raise FormatError(f"{root}: unknown task(s) {missing}; known: {sorted(known)}")
        found = [known[t] for t in tasks]
    if not found:
        raise FormatError(f"{root}: no task folders (each needs a task.json)")
    return found


def _read_docs(path: Path, task_dir: Path) -> dict[str, Doc]:
    docs: dict[str, Doc] = {}
    for lineno, record in iter_jsonl(path):
        where = f"{path}:{lineno}"
        doc_id = record.get("id")
        if not isinstance(doc_id, str) or not doc_id or any(c.isspace() for c in doc_id):
            raise FormatError(f"{where}: 'id' must be a non-empty string without spaces")
        if doc_id in docs:
            raise FormatError(f"{where}: duplicate id {doc_id!r}")
        docs[doc_id] = parse_doc(record, task_dir, where)
    return docs


def load_task(task_dir: str | Path) -> MRBTask:
    """Load one MRB task folder and check that judgements and candidates name known ids."""
    task_dir = Path(task_dir)
    meta = read_task_meta(task_dir)
    queries = _read_docs(task_dir / "queries.jsonl", task_dir)
    corpus = _read_docs(task_dir / "corpus.jsonl", task_dir)
    qrels = read_qrels(task_dir / "qrels.tsv")
    candidates = read_run(task_dir / "candidates.trec")
    for name, table in (("qrels.tsv", qrels), ("candidates.trec", candidates)):
        for qid, docs in table.items():
            if qid not in queries:
                raise FormatError(f"{task_dir / name}:1: query id {qid!r} is not in queries.jsonl")
            unknown = [d for d in docs if d not in corpus]
            if unknown:
                raise FormatError(
                    f"{task_dir / name}:1: query {qid!r} names unknown document(s) {unknown[:3]}"
                )
    if not any(grade > 0 for judged in qrels.values() for grade in judged.values()):
        raise FormatError(
            f"{task_dir / 'qrels.tsv'}:1: no relevant judgement (relevance > 0); the task cannot be scored"
        )
    return MRBTask(meta, task_dir, queries, corpus, qrels, candidates)


def parse_train_group(
    record: dict[str, Any], base: Path, where: str, resolve_image: ImageResolver | None = None
) -> TrainGroup:
    """Parse one training JSONL record (design.md §4); ``resolve_image`` as in :func:`parse_doc`."""
    task = record.get("task")
    if not isinstance(task, str) or not task:
        raise FormatError(f"{where}: 'task' must be a non-empty string")
    instruction = record.get("instruction")
    if instruction is not None and not isinstance(instruction, str):
        raise FormatError(f"{where}: 'instruction' must be a string")
    positives = record.get("positives")
    if not isinstance(positives, list) or not positives:
        raise FormatError(f"{where}: 'positives' must be a non-empty list")
    negatives = record.get("hard_negatives", [])
    if not isinstance(negatives, list):
        raise FormatError(f"{where}: 'hard_negatives' must be a list")
    return TrainGroup(
        task=task,
        instruction=instruction or None,
        query=parse_doc(record.get("query"), base, f"{where}: query", resolve_image),
        positives=tuple(
            parse_doc(d, base, f"{where}: positives[{i}]", resolve_image) for i, d in enumerate(positives)
        ),
        hard_negatives=tuple(
            parse_doc(d, base, f"{where}: hard_negatives[{i}]", resolve_image)
            for i, d in enumerate(negatives)
        ),
        source=where,
    )


def train_files(root: str | Path) -> list[Path]:
    """The JSONL / JSONL.gz shards under a training root, in a stable order."""
    root = Path(root)
    if root.is_file():
        return [root]
    files = sorted(p for p in root.rglob("*") if p.name.endswith((".jsonl", ".jsonl.gz")))
    if not files:
        raise FormatError(f"{root}: no .jsonl or .jsonl.gz training files found")
    return files


def iter_train_groups(root: str | Path) -> Iterator[TrainGroup]:
    """Every training group under ``root``, file by file, line by line."""
    for path in train_files(root):
        for lineno, record in iter_jsonl(path):
            yield parse_train_group(record, path.parent, f"{path}:{lineno}")
