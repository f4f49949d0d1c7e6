"""BEIR JSONL (also the classic MTEB folder): ``corpus.jsonl``, ``queries.jsonl``, ``qrels/<split>.tsv``.

    SRC/corpus.jsonl[.gz]     {"_id": "d1", "title": "...", "text": "...", "image": "imgs/d1.png"?}
    SRC/queries.jsonl[.gz]    {"_id": "q1", "text": "...", "image": ...?}
    SRC/qrels/<split>.tsv     header "query-id corpus-id score", then tab-separated rows

Document text is ``title`` and ``text`` joined by a newline (either may be empty). Images come from
the record's ``image_field`` (a path relative to SRC) or, for records without one, from folders of
``<id>.<ext>`` files the user names.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Literal

from datamodules.convert.common import (
    ConversionError,
    Item,
    Qrels,
    check_id,
    inside,
    join_text,
    read_qrels_tsv,
)
from datamodules.formats import iter_jsonl

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff")


def find_jsonl(src: Path, stem: str) -> Path | None:
    for name in (f"{stem}.jsonl", f"{stem}.jsonl.gz"):
        if (src / name).is_file():
            return src / name
    return None


def looks_like(src: Path) -> bool:
    return bool(find_jsonl(src, "corpus") and find_jsonl(src, "queries") and list(src.glob("qrels/*.tsv")))


def _image_index(folder: Path | None) -> dict[str, Path]:
    if folder is None:
        return {}
    if not folder.is_dir():
        raise ConversionError(f"{folder}: image folder not found")
    return {p.stem: p for p in sorted(folder.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES}


class BeirSource:
    kind = "beir"

    def __init__(
        self,
        src: Path,
        split: str = "test",
        image_field: str = "image",
        query_images: Path | None = None,
        corpus_images: Path | None = None,
        images_root: Path | None = None,
    ) -> None:
        self.src, self.split, self.image_field = src, split, image_field
        self.qrels_path = src / "qrels" / f"{split}.tsv"
        if not self.qrels_path.is_file():
            raise ConversionError(f"{self.qrels_path}: qrels file not found (BEIR layout: qrels/<split>.tsv)")
        corpus, queries = find_jsonl(src, "corpus"), find_jsonl(src, "queries")
        if corpus is None or queries is None:
            missing = "corpus" if corpus is None else "queries"
            raise ConversionError(f"{src}: no {missing}.jsonl or {missing}.jsonl.gz")
        self.corpus_path, self.queries_path = corpus, queries
        self.folders = {"queries": _image_index(query_images), "corpus": _image_index(corpus_images)}
        self.roots = [p for p in (src, query_images, corpus_images, images_root) if p is not None]

    def qrels(self, errors: list[str]) -> tuple[Qrels, str]:
        return read_qrels_tsv(self.qrels_path, errors), str(self.qrels_path)

    def negatives(self, errors: list[str]) -> dict[str, list[str]]:
        return {}

    def queries(self, errors: list[str]) -> Iterator[Item]:
        return self._items(self.queries_path, "queries", errors)

    def corpus(self, errors: list[str]) -> Iterator[Item]:
        return self._items(self.corpus_path, "corpus", errors)

    def where(self, kind: str) -> str:
        return str(self.queries_path if kind == "queries" else self.corpus_path)

    def _items(self, path: Path, kind: str, errors: list[str]) -> Iterator[Item]:
        for lineno, record in iter_jsonl(path):
            where = f"{path}:{lineno}"
            item_id = check_id(record.get("_id", record.get("id")), where, errors, "_id")
            if item_id is None:
                continue
            parts = [record.get("title"), record.get("text")] if kind == "corpus" else [record.get("text")]
            text = join_text(parts, where, errors)
            if text is False:
                continue
            image = self._image(record, item_id, kind, where, errors)
            if image is False:
                continue
            yield Item(item_id, text, image, where)

    def _image(
        self, record: dict, item_id: str, kind: str, where: str, errors: list[str]
    ) -> Path | None | Literal[False]:
        value = record.get(self.image_field)
        if value is not None and not isinstance(value, str):
            errors.append(f"{where}: '{self.image_field}' must be a path string")
            return False
        if value:
            source = Path(value) if Path(value).is_absolute() else self.src / value
        elif item_id in self.folders[kind]:
            source = self.folders[kind][item_id]
        else:
            return None
        if not inside(source, self.roots):
            errors.append(
                f"{where}: image {value!r} is outside {self.src} and the image folders you named; "
                "move it inside or name its folder with --images-root"
            )
            return False
        if not source.is_file():
            errors.append(f"{where}: image {source} not found")
            return False
        return source
