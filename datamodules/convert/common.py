"""What every source reader shares: the record type, the image store, TREC-ish readers and errors.

A reader turns its source into :class:`Item` records (id, text, image bytes or image file) plus
judgements; :mod:`datamodules.convert.write` turns those into an MRB task or a training root. The
image store is ours rather than a library's because its contract is specific: original bytes kept
verbatim (no re-encoding, so pixels are unchanged), one file per distinct content, and files of a
user-named images root referenced in place instead of copied.
"""

from __future__ import annotations

import hashlib
import io
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from PIL import Image

from datamodules.files import temporary_path
from datamodules.images import ImageError, image_bytes_problem, read_image_file
from datamodules.trec import Problems, read_lines
from datamodules.validate import check_run_line

Qrels = dict[str, dict[str, int]]

# PIL format name -> file suffix of the stored image (MPO is the multi-picture JPEG variant).
_SUFFIX = {
    "JPEG": "jpg",
    "MPO": "jpg",
    "PNG": "png",
    "WEBP": "webp",
    "GIF": "gif",
    "BMP": "bmp",
    "TIFF": "tif",
}
IMAGE_LINK = "image_root"  # the symlink inside an output folder that points at an in-place images root


class ConversionError(ValueError):
    """The source cannot be converted; the message lists every problem found."""


@dataclass(frozen=True)
class Item:
    """One query or document of a source: text and/or an image (bytes, or a file to copy/reference)."""

    id: str
    text: str | None
    image: bytes | Path | None
    where: str  # "file:line" or "file row N", for messages


def inside(path: Path, roots: Iterable[Path]) -> bool:
    resolved = path.resolve()
    return any(resolved.is_relative_to(root.resolve()) for root in roots)


def check_id(raw: object, where: str, errors: list[str], field: str = "id") -> str | None:
    """A source id as a string (ints are accepted and stringified); None after recording the problem."""
    if isinstance(raw, bool) or not isinstance(raw, str | int) or str(raw) == "":
        errors.append(f"{where}: '{field}' must be a non-empty string (got {raw!r})")
        return None
    value = str(raw)
    if any(c.isspace() for c in value):
        errors.append(f"{where}: id {value!r} contains whitespace; MRB ids cannot (TREC files split on it)")
        return None
    return value


def join_text(parts: Iterable[object], where: str, errors: list[str]) -> str | None | Literal[False]:
    """Non-empty string parts joined by a newline; ``False`` (after recording) when one is not a string."""
    parts = list(parts)
    if any(p is not None and not isinstance(p, str) for p in parts):
        errors.append(f"{where}: text fields must be strings (got {[type(p).__name__ for p in parts]})")
        return False
    text = "\n".join(p for p in parts if isinstance(p, str) and p)
    return text or None


def parse_modality(value: object, where: str, errors: list[str]) -> set[str] | None:
    """``"text"``, ``"image"``, ``"image,text"`` / ``"text,image"`` -> the set of parts; None if absent."""
    if value is None:
        return None
    parts = {p.strip().lower() for p in str(value).replace("+", ",").split(",") if p.strip()}
    if not parts or not parts <= {"text", "image"}:
        errors.append(f"{where}: modality {value!r} is not text, image or image,text")
        return set()
    return parts


def apply_modality(
    item_id: str, text: str | None, image: bytes | Path | None, modality: set[str] | None, where: str,
    errors: list[str], ignored: Counter,
) -> tuple[str | None, bytes | Path | None] | None:  # fmt: skip
    """Keep the parts the record's modality names; a named part that is missing is an error."""
    if modality is None:
        return text, image
    for part, value in (("text", text), ("image", image)):
        if part in modality and not value:
            errors.append(f"{where}: record {item_id!r} has modality {sorted(modality)} but no {part}")
            return None
        if part not in modality and value:
            ignored[part] += 1  # reported in the summary: present but not part of the record's modality
    return (text if "text" in modality else None), (image if "image" in modality else None)


class ImageStore:
    """Writes images under ``<out>/images/`` by content (sha256), or references an images root in place.

    ``in_place``: a folder the user named; source image files inside it are not copied but referenced
    through the symlink ``<out>/image_root`` -> that folder (validate and the loaders accept them when
    the same folder is named to them as an images root).
    """

    def __init__(self, out: Path, in_place: Path | None = None) -> None:
        self.out = out
        self.in_place = in_place.resolve() if in_place else None
        self._known: dict[str, str] = {}
        self.counts: Counter[str] = Counter()

    def add(self, image: bytes | Path, where: str, errors: list[str]) -> str | None:
        """Store ``image``; returns its path relative to ``out`` or None after recording a problem."""
        if isinstance(image, Path):
            if self.in_place is not None and image.resolve().is_relative_to(self.in_place):
                return self._reference(image, where, errors)
            try:
                data = read_image_file(image)
            except ImageError as err:
                errors.append(f"{where}: {err}")
                return None
        else:
            data = image
        return self._store(data, str(image) if isinstance(image, Path) else "bytes", where, errors)

    def _reference(self, path: Path, where: str, errors: list[str]) -> str | None:
        assert self.in_place is not None  # add() references in place only under that folder
        if not path.is_file():
            errors.append(f"{where}: image {path} not found")
            return None
        link = self.out / IMAGE_LINK
        if not link.is_symlink():
            link.symlink_to(self.in_place, target_is_directory=True)
        self.counts["referenced in place"] += 1
        return f"{IMAGE_LINK}/{path.resolve().relative_to(self.in_place).as_posix()}"

    def _store(self, data: bytes, name: str, where: str, errors: list[str]) -> str | None:
        digest = hashlib.sha256(data).hexdigest()
        if digest in self._known:
            self.counts["duplicates (stored once)"] += 1
            return self._known[digest]
        problem = image_bytes_problem(data, name)  # the one image rule, at the source's record
        if problem is not None:
            errors.append(f"{where}: {problem}")
            return None
        with Image.open(io.BytesIO(data)) as image:  # decodes: checked by image_bytes_problem
            suffix = _SUFFIX.get(image.format or "", (image.format or "img").lower())
        relative = f"images/{digest[:2]}/{digest[:40]}.{suffix}"
        target = self.out / relative
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = temporary_path(target, "tmp")
            partial.write_bytes(data)  # the original bytes: pixels (and metadata) unchanged
            partial.replace(target)
        self._known[digest] = relative
        self.counts["written"] += 1
        return relative


def text_lines(path: Path, errors: list[str]) -> Iterator[tuple[int, str]]:
    """``(line number, text)`` of a UTF-8 text file; a line that is not UTF-8, or a file that cannot be
    read, is recorded in ``errors`` as ``file:line: reason`` (:func:`datamodules.trec.read_lines`)."""
    problems = Problems()
    yield from read_lines(path, problems)
    errors.extend(problems.messages)


def read_qrels_tsv(path: Path, errors: list[str]) -> Qrels:
    """BEIR qrels: optional header ``query-id corpus-id score``, then ``qid<TAB>docid<TAB>score``."""
    qrels: Qrels = {}
    for lineno, line in text_lines(path, errors):
        fields = line.rstrip("\r\n").split("\t") if "\t" in line else line.split()
        if not line.strip():
            continue
        if lineno == 1 and not fields[-1].strip().lstrip("-").isdigit():
            continue  # header
        if len(fields) != 3:
            errors.append(
                f"{path}:{lineno}: expected 'query-id<TAB>corpus-id<TAB>score', got {len(fields)} field(s)"
            )
            continue
        qid, docid, grade = (f.strip() for f in fields)
        add_judgement(qrels, qid, docid, grade, f"{path}:{lineno}", errors)
    return qrels


def add_judgement(
    qrels: Qrels, qid: object, docid: object, grade: object, where: str, errors: list[str]
) -> None:
    q, d = check_id(qid, where, errors, "query-id"), check_id(docid, where, errors, "corpus-id")
    if q is None or d is None:
        return
    try:
        value = int(grade)  # type: ignore[call-overload]  # any object: int() raises for what it rejects
        if isinstance(grade, float) and grade != value or isinstance(grade, bool):
            raise ValueError
    except (TypeError, ValueError):
        errors.append(f"{where}: score {grade!r} is not an integer")
        return
    if d in qrels.setdefault(q, {}) and qrels[q][d] != value:
        errors.append(f"{where}: query {q!r}, document {d!r} judged twice ({qrels[q][d]} and {value})")
        return
    qrels[q][d] = value


def read_run_lines(path: Path, errors: list[str]) -> dict[str, dict[str, float]]:
    run: dict[str, dict[str, float]] = {}
    for lineno, line in text_lines(path, errors):
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
