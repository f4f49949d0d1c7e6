"""On-disk formats of docs/formats.md §1-2: MRB evaluation tasks and training query groups.

Each rule of a format is written once, here (and in :mod:`datamodules.trec` for TREC files and
:mod:`datamodules.images` for images). Every reader has two modes:

* strict (``problems=None``, the default): the first problem raises :class:`FormatError` whose
  message starts with ``file:line:`` and says what to fix;
* collect-all (``problems=Problems()``): every problem is recorded and the bad record is left out
  of the result. ``datamodules.validate`` is these readers in this mode; evaluation uses it with
  ``on_bad_record=skip``. Nothing is skipped silently.
"""

from __future__ import annotations

import functools
import json
import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, overload

from datamodules.files import is_hidden, leftover_note, leftovers
from datamodules.metrics import parse_metric
from datamodules.trec import (
    FormatError,
    Problems,
    Qrels,
    Run,
    flag,
    iter_qrels,
    iter_run,
    read_lines,
    regular_file_problem,
)

if TYPE_CHECKING:
    import PIL.Image

FAMILIES = ("T2T", "I2I", "T2I", "I2T", "T2VD", "T2IT", "IT2T", "IT2I", "IT2IT")
MRB_FILES = ("task.json", "queries.jsonl", "corpus.jsonl", "qrels.tsv", "candidates.trec")
SHARD_SUFFIXES = (".jsonl", ".jsonl.gz")

log = logging.getLogger("rerank_lab.data")
_warned: set[Path] = set()

__all__ = [
    "FAMILIES",
    "MRB_FILES",
    "Doc",
    "FormatError",
    "MRBTask",
    "Problems",
    "TaskMeta",
    "TrainGroup",
    "is_task_dir",
    "iter_jsonl",
    "list_tasks",
    "load_task",
    "parse_doc",
    "parse_train_group",
    "read_docs",
    "read_judgements",
    "read_task_meta",
    "resolve_inside",
]

ImageCheck = Callable[[Path], "str | None"]  # resolved image path -> problem or None (validate's eager check)
ImageResolver = Callable[[Any, str], str]  # (relative image path, where) -> absolute path or URL


@dataclass(frozen=True)
class Doc:
    """One side of a pair: text, an image (a checked absolute path; ``Reranker`` also takes an
    in-memory PIL image), or both."""

    text: str | None = None
    image: str | PIL.Image.Image | None = None

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
    """A loaded MRB test set: queries, corpus, judgements and the first-stage candidates.

    ``lines`` maps ``("queries" | "corpus", id)`` to the line that defines it (for messages).
    """

    meta: TaskMeta
    root: Path
    queries: dict[str, Doc]
    corpus: dict[str, Doc]
    qrels: Qrels
    candidates: Run
    lines: dict[tuple[str, str], int] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.meta.name

    def where(self, kind: str, doc_id: str) -> str:
        """``file:line`` of a query (``kind="queries"``) or document (``"corpus"``)."""
        return f"{self.root / f'{kind}.jsonl'}:{self.lines.get((kind, doc_id), 1)}"


@dataclass(frozen=True)
class TrainGroup:
    """One training record: a query with its positives and mined hard negatives."""

    task: str
    instruction: str | None
    query: Doc
    positives: tuple[Doc, ...]
    hard_negatives: tuple[Doc, ...]
    source: str  # "file:line", for error messages and skip accounting


# ---- records -------------------------------------------------------------------------------------
def iter_jsonl(path: str | Path, problems: Problems | None = None) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line_number, object)`` from a JSONL or JSONL.gz file; blank lines are allowed."""
    path = Path(path)
    for lineno, line in read_lines(path, problems):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            flag(problems, f"{path}:{lineno}", f"invalid JSON ({err.msg} at column {err.colno})")
            continue
        if not isinstance(record, dict):
            flag(problems, f"{path}:{lineno}", f"expected a JSON object, got {type(record).__name__}")
            continue
        yield lineno, record


@functools.lru_cache(maxsize=1024)
def _resolved(base: Path) -> Path:
    return base.resolve()  # a syscall per path component: cached, as every document of a file shares it


# Images roots the user names (``RERANK_LAB_IMAGE_ROOTS``, ``validate --images-root``): folders an image
# path may resolve into besides its own task/JSONL folder, so that a large image tree is referenced
# in place (through a symlink inside the folder) instead of copied. Nothing else may be reached.
IMAGE_ROOTS_ENV = "RERANK_LAB_IMAGE_ROOTS"
_named_roots: ContextVar[tuple[Path, ...]] = ContextVar("rerank_lab_image_roots", default=())


@contextmanager
def image_roots(*roots: str | Path) -> Iterator[None]:
    """Within the block, also accept images inside ``roots`` (as if named in ``RERANK_LAB_IMAGE_ROOTS``)."""
    token = _named_roots.set(_named_roots.get() + tuple(Path(r).resolve() for r in roots))
    try:
        yield
    finally:
        _named_roots.reset(token)


def named_image_roots() -> tuple[Path, ...]:
    env = os.environ.get(IMAGE_ROOTS_ENV, "")
    return _named_roots.get() + tuple(_resolved(Path(p)) for p in env.split(os.pathsep) if p)


def resolve_inside(base: Path, relative: str, where: str) -> Path:
    """Resolve ``relative`` against ``base``; it must stay inside ``base`` (no ``..``, absolute or
    symlinked escapes) or inside an images root the user named (:func:`named_image_roots`)."""
    if not isinstance(relative, str) or not relative:
        raise FormatError(f"{where}: image must be a non-empty relative path string")
    candidate = Path(relative)
    if candidate.is_absolute():
        raise FormatError(f"{where}: image path {relative!r} is absolute; use a path relative to {base}")
    resolved = (base / candidate).resolve()
    if not resolved.is_relative_to(_resolved(base)) and not any(
        resolved.is_relative_to(root) for root in named_image_roots()
    ):
        raise FormatError(
            f"{where}: image path {relative!r} escapes {base}; keep images inside it (or, for an image "
            f"tree referenced in place, name its folder in {IMAGE_ROOTS_ENV} / validate --images-root)"
        )
    return resolved


def parse_doc(
    obj: Any,
    base: Path | str,  # a str (a URL's folder) only with resolve_image
    where: str,
    resolve_image: ImageResolver | None = None,
    problems: Problems | None = None,
    check_image: ImageCheck | None = None,
) -> Doc | None:
    """Parse ``{"text": ..., "image": ...}`` (at least one present) with its image under ``base``.

    ``resolve_image`` maps the relative image path to where it is read from (default: a local path
    checked by :func:`resolve_inside`; the training stream passes one for fsspec URLs).
    ``check_image`` also opens the image (validate); otherwise it is opened when encoded, by the
    same rule (:func:`datamodules.images.open_image`). Collecting, returns None when anything is wrong.
    """
    if not isinstance(obj, dict):
        flag(problems, where, "expected an object with 'text' and/or 'image'")
        return None
    text, image = obj.get("text"), obj.get("image")
    ok = True
    if text is not None and not isinstance(text, str):
        flag(problems, where, "'text' must be a string")
        ok, text = False, None
    if not text and not image and ok:
        flag(problems, where, "needs 'text' or 'image' (at least one, non-empty)")
        return None
    image_path = None
    if image:
        try:
            if resolve_image is None:
                image_path = str(resolve_inside(Path(base), image, where))
            else:
                image_path = resolve_image(image, where)
        except FormatError as err:
            flag(problems, where, str(err).removeprefix(f"{where}: "))
            return None
        if check_image is not None and (problem := check_image(Path(image_path))) is not None:
            flag(problems, where, problem)
            ok = False
    return Doc(text=text or None, image=image_path) if ok else None


@overload  # strict: a bad record raises, so there is always a group
def parse_train_group(
    record: dict[str, Any],
    base: Path | str,
    where: str,
    resolve_image: ImageResolver | None = None,
    problems: None = None,
    check_image: ImageCheck | None = None,
) -> TrainGroup: ...
@overload  # collecting: None for a bad record
def parse_train_group(
    record: dict[str, Any],
    base: Path | str,
    where: str,
    resolve_image: ImageResolver | None = None,
    *,
    problems: Problems,
    check_image: ImageCheck | None = None,
) -> TrainGroup | None: ...
def parse_train_group(
    record: dict[str, Any],
    base: Path | str,  # a str (a URL's folder) only with resolve_image
    where: str,
    resolve_image: ImageResolver | None = None,
    problems: Problems | None = None,
    check_image: ImageCheck | None = None,
) -> TrainGroup | None:
    """Parse one training JSONL record (docs/formats.md §2); ``resolve_image`` / ``check_image`` as in
    :func:`parse_doc`. Collecting, every problem of the record is recorded and None returned."""
    if problems is None:
        problems_here: Problems | None = None
    else:
        problems_here = Problems()
    task = record.get("task")
    if not isinstance(task, str) or not task:
        flag(problems_here, where, "'task' must be a non-empty string")
    instruction = record.get("instruction")
    if instruction is not None and not isinstance(instruction, str):
        flag(problems_here, where, "'instruction' must be a string")

    def doc(obj: Any, at: str) -> Doc | None:
        return parse_doc(obj, base, at, resolve_image, problems_here, check_image)

    query = doc(record.get("query"), f"{where}: query")
    positives, negatives = record.get("positives"), record.get("hard_negatives", [])
    parsed_pos: list[Doc | None] = []
    if not isinstance(positives, list) or not positives:
        flag(problems_here, where, "'positives' must be a non-empty list")
    else:
        parsed_pos = [doc(d, f"{where}: positives[{i}]") for i, d in enumerate(positives)]
    parsed_neg: list[Doc | None] = []
    if not isinstance(negatives, list):
        flag(problems_here, where, "'hard_negatives' must be a list")
    else:
        for i, d in enumerate(negatives):
            parsed_neg.append(doc(d, f"{where}: hard_negatives[{i}]"))
            if parsed_neg[-1] is not None and parsed_neg[-1] in parsed_pos:
                flag(
                    problems_here,
                    f"{where}: hard_negatives[{i}]",
                    "identical to a positive of the same record",
                )
    if problems is not None and problems_here is not None:
        problems.messages.extend(problems_here.messages)
        if problems_here.messages:
            return None
    assert isinstance(task, str)  # a bad task was flagged above: raised, or returned None when collecting
    return TrainGroup(
        task=task,
        instruction=instruction or None,
        query=query,  # type: ignore[arg-type]
        positives=tuple(parsed_pos),  # type: ignore[arg-type]
        hard_negatives=tuple(parsed_neg),  # type: ignore[arg-type]
        source=where,
    )


# ---- MRB tasks -----------------------------------------------------------------------------------
def read_task_meta(task_dir: str | Path, problems: Problems | None = None) -> TaskMeta | None:
    """Read ``<task>/task.json``: family, instruction and metric of one MRB test set."""
    task_dir = Path(task_dir)
    path = task_dir / "task.json"
    where = f"{path}:1"
    problem = regular_file_problem(path)
    if problem == "file not found":
        others = [p.name for p in task_dir.glob("*") if p.name.lower() == "task.json"]
        hint = f" ({others[0]} is there: the name is case-sensitive)" if others else ""
        flag(problems, where, f"missing task.json{hint} (needs family, instruction, metric)")
        return None
    if problem is not None:
        flag(problems, where, problem)
        return None
    text = "".join(line for _, line in read_lines(path, problems))
    try:
        meta = json.loads(text)
    except json.JSONDecodeError as err:
        flag(problems, f"{path}:{err.lineno}", f"invalid JSON ({err.msg})")
        return None
    if not isinstance(meta, dict):
        flag(
            problems,
            where,
            f"expected a JSON object with family, instruction, metric, got {type(meta).__name__}",
        )
        return None
    ok = True
    for key in ("family", "instruction", "metric"):
        if not isinstance(meta.get(key), str) or not meta[key]:
            flag(problems, where, f"'{key}' must be a non-empty string")
            ok = False
    if isinstance(meta.get("family"), str) and meta["family"] and meta["family"] not in FAMILIES:
        flag(problems, where, f"unknown family {meta['family']!r}; known: {' '.join(FAMILIES)}")
        ok = False
    if isinstance(meta.get("metric"), str) and meta["metric"]:
        try:
            parse_metric(meta["metric"])
        except ValueError as err:
            flag(problems, where, str(err))
            ok = False
    return TaskMeta(task_dir.name, meta["family"], meta["instruction"], meta["metric"]) if ok else None


def is_task_dir(path: Path) -> bool:
    """A folder holding any MRB task file (names compared case-insensitively, so that a misnamed
    ``Task.json`` is reported instead of the folder being ignored)."""
    names = {name.lower() for name in MRB_FILES}
    try:
        return path.is_dir() and any(p.name.lower() in names for p in path.iterdir())
    except OSError:
        return False


def task_dirs(root: Path) -> list[Path]:
    """The folders directly under ``root`` that hold task files; hidden ones are never tasks."""
    return sorted(p for p in root.iterdir() if not is_hidden(p.name) and is_task_dir(p))


def warn_leftovers(root: str | Path) -> list[Path]:
    """Log one line per temporary under a local ``root`` that a killed process left (never read)."""
    found = leftovers(root) if Path(root).is_dir() else []
    for path in found:
        if path not in _warned:  # once per process: several readers list the same root
            _warned.add(path)
            log.warning("%s", leftover_note(path))
    return found


def list_tasks(root: str | Path, tasks: list[str] | None = None) -> list[Path]:
    """Task folders under an MRB root (or the root itself when it is one task folder), optionally
    filtered by name. A folder that holds task files but no ``task.json`` is an error, never dropped.
    Hidden folders (``.name``, e.g. what a killed convert left) are not tasks; leftovers are logged."""
    root = Path(root)
    if not root.is_dir():
        raise FormatError(f"{root}: MRB root folder not found")
    if (root / "task.json").is_file():
        found = [root]
    else:
        warn_leftovers(root)
        found = task_dirs(root)
        broken = [p for p in found if not (p / "task.json").is_file()]
        if broken and (not tasks or any(p.name in tasks for p in broken)):
            read_task_meta(next(p for p in broken if not tasks or p.name in tasks))  # raises, names it
    if tasks:
        known = {p.name: p for p in found}
        missing = [t for t in tasks if t not in known]
        if missing:
            raise FormatError(f"{root}: unknown task(s) {missing}; known: {sorted(known)}")
        found = [known[t] for t in tasks]
    if not found:
        raise FormatError(f"{root}: no task folders (each needs a task.json)")
    return found


def read_docs(
    path: Path,
    task_dir: Path,
    problems: Problems | None = None,
    check_image: ImageCheck | None = None,
) -> tuple[dict[str, Doc], dict[str, int]]:
    """A queries or corpus file: ``({id: Doc}, {id: line})``."""
    kind = "query" if path.name.startswith("queries") else "document"
    if regular_file_problem(path) == "file not found":
        flag(problems, f"{path}:1", f"missing {path.name} (one {kind} per line: id, text and/or image)")
        return {}, {}
    docs: dict[str, Doc] = {}
    lines: dict[str, int] = {}
    found_problem = False
    for lineno, record in iter_jsonl(path, problems):
        where = f"{path}:{lineno}"
        before = len(problems.messages) if problems is not None else 0
        doc_id = record.get("id")
        if not isinstance(doc_id, str) or not doc_id:
            flag(problems, where, "'id' must be a non-empty string")
            doc_id = None
        elif any(c.isspace() for c in doc_id):
            flag(problems, where, f"id {doc_id!r} contains whitespace (TREC files split on it)")
            doc_id = None
        elif doc_id in lines:
            flag(problems, where, f"duplicate id {doc_id!r} (first defined on line {lines[doc_id]})")
            doc_id = None
        doc = parse_doc(record, task_dir, where, problems=problems, check_image=check_image)
        if doc_id is not None:
            lines[doc_id] = lineno
            if doc is not None:
                docs[doc_id] = doc
        found_problem |= problems is not None and len(problems.messages) > before
    if (
        not lines
        and not found_problem
        and (problems is None or not any(m.startswith(f"{path}:") for m in problems.messages))
    ):
        flag(problems, f"{path}:1", f"no {kind} defined")
    return docs, lines


def read_judgements(
    path: Path,
    queries: dict[str, Any],
    corpus: dict[str, Any] | None,
    problems: Problems | None = None,
    candidates: bool = False,
) -> dict[str, dict[str, Any]]:
    """A task's ``qrels.tsv`` (or, ``candidates=True``, ``candidates.trec``), each line checked
    against the ids of ``queries.jsonl`` and (unless None) ``corpus.jsonl``."""
    if regular_file_problem(path) == "file not found":
        flag(problems, f"{path}:1", f"missing {path.name}")
        return {}
    table: dict[str, dict[str, Any]] = {}
    for lineno, qid, docid, value in (iter_run if candidates else iter_qrels)(path, problems):
        where = f"{path}:{lineno}"
        ok = True
        if qid not in queries:
            flag(problems, where, f"query id {qid!r} is not in queries.jsonl")
            ok = False
        if corpus is not None and docid not in corpus:
            flag(problems, where, f"document id {docid!r} is not in corpus.jsonl")
            ok = False
        if ok:
            table.setdefault(qid, {})[docid] = value
    return table


@overload  # strict: the first problem raises, so there is always a task
def load_task(
    task_dir: str | Path, problems: None = None, check_image: ImageCheck | None = None
) -> MRBTask: ...
@overload  # collecting: None when task.json is unusable
def load_task(
    task_dir: str | Path, problems: Problems, check_image: ImageCheck | None = None
) -> MRBTask | None: ...
def load_task(
    task_dir: str | Path, problems: Problems | None = None, check_image: ImageCheck | None = None
) -> MRBTask | None:
    """Load one MRB task folder and check that judgements and candidates name known ids.

    Collecting, the task is returned without its bad records (None when ``task.json`` is unusable).
    Queries without a relevant document are kept: the metrics skip them (trec_eval), so they are
    no problem. A query that has a relevant document but no candidate is one: it would score 0.
    """
    task_dir = Path(task_dir)
    meta = read_task_meta(task_dir, problems)
    queries, query_lines = read_docs(task_dir / "queries.jsonl", task_dir, problems, check_image)
    corpus, corpus_lines = read_docs(task_dir / "corpus.jsonl", task_dir, problems, check_image)
    # Ids defined on a line whose record was bad are still known ids: their judgements are not
    # reported a second time (the record's own problem is).
    qrels = read_judgements(task_dir / "qrels.tsv", query_lines, corpus_lines, problems)
    candidates = read_judgements(task_dir / "candidates.trec", query_lines, corpus_lines, problems, True)
    qrels_path, candidates_path = task_dir / "qrels.tsv", task_dir / "candidates.trec"
    have_tables = qrels_path.is_file() and candidates_path.is_file()
    if (
        qrels_path.is_file()
        and query_lines
        and not any(g > 0 for judged in qrels.values() for g in judged.values())
    ):
        flag(problems, f"{qrels_path}:1", "no relevant judgement (relevance > 0); the task cannot be scored")
    for qid, line in query_lines.items():
        if have_tables and any(g > 0 for g in qrels.get(qid, {}).values()) and not candidates.get(qid):
            flag(
                problems,
                f"{task_dir / 'queries.jsonl'}:{line}",
                f"query {qid!r} has relevant documents but no candidate in candidates.trec; it would score 0",
            )
    if meta is None:
        return None
    # Collecting, drop what refers to records that were left out.
    qrels = {q: {d: g for d, g in docs.items() if d in corpus} for q, docs in qrels.items() if q in queries}
    candidates = {
        q: {d: s for d, s in docs.items() if d in corpus} for q, docs in candidates.items() if q in queries
    }
    lines = {("queries", q): n for q, n in query_lines.items()} | {
        ("corpus", d): n for d, n in corpus_lines.items()
    }
    return MRBTask(meta, task_dir, queries, corpus, qrels, candidates, lines)


# ---- training roots ------------------------------------------------------------------------------
def train_files(root: str | Path) -> list[Path]:
    """The JSONL / JSONL.gz shards under a training root, in a stable order."""
    root = Path(root)
    if root.is_file():
        return [root]
    files = sorted(
        p for p in root.rglob("*") if p.name.endswith(SHARD_SUFFIXES) and not is_hidden(p.relative_to(root))
    )
    if not files:
        raise FormatError(f"{root}: no .jsonl or .jsonl.gz training files found")
    return files


def iter_train_groups(root: str | Path) -> Iterator[TrainGroup]:
    """Every training group under ``root``, file by file, line by line (strict)."""
    for path in train_files(root):
        for lineno, record in iter_jsonl(path):
            group = parse_train_group(record, path.parent, f"{path}:{lineno}")
            assert group is not None  # strict mode raises instead
            yield group
