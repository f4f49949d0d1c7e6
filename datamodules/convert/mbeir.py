"""M-BEIR (UniIR, ``TIGER-Lab/M-BEIR``) JSONL: queries, a candidate pool and 5-column qrels.

The layout of the M-BEIR root (SRC)::

    query/<split>/mbeir_<name>_<split>.jsonl      {"qid": "9:1", "query_txt": ..., "query_img_path": ...,
                                                   "query_modality": "image,text",
                                                   "pos_cand_list": ["9:7"], "neg_cand_list": [...]}
    cand_pool/local/mbeir_<name>_cand_pool.jsonl  {"did": "9:7", "txt": ..., "img_path": ..., "modality": ...}
    qrels/<split>/mbeir_<name>_<split>_qrels.txt  qid 0 did relevance task_id
    mbeir_images/...                              the image tree; img paths are relative to SRC

A flat folder holding ``<subset>_cand_pool.jsonl``, ``<subset>_<split>.jsonl`` and
``<subset>_<split>_qrels.txt`` (how pyserini stages one M-BEIR task) is read too. ``--subset`` names
the task (e.g. ``mbeir_cirr_task7``) when the folder holds several; ``--pool`` overrides the pool
file (e.g. ``cand_pool/global/mbeir_union_test_cand_pool.jsonl``). Without a qrels file (M-BEIR's
train split has none) the judgements are the queries' ``pos_cand_list`` at relevance 1.
``neg_cand_list`` becomes the hard negatives of training groups. ``modality`` decides which of text and
image a record contributes (a text-only candidate keeps no image even if one is listed).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

from datamodules.convert.common import (
    ConversionError,
    Item,
    Qrels,
    add_judgement,
    apply_modality,
    check_id,
    inside,
    join_text,
    parse_modality,
    text_lines,
)  # fmt: skip
from datamodules.formats import iter_jsonl


def looks_like(src: Path) -> bool:
    return (src / "cand_pool").is_dir() or any(src.glob("*_cand_pool.jsonl"))


def _one(candidates: list[Path], what: str, src: Path, hint: str) -> Path:
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        raise ConversionError(f"{src}: no {what} found ({hint})")
    names = ", ".join(p.name for p in candidates[:8])
    raise ConversionError(f"{src}: several {what} ({names}); choose one with --subset")


class MbeirSource:
    kind = "mbeir"

    def __init__(
        self,
        src: Path,
        split: str = "test",
        subset: str | None = None,
        pool: Path | None = None,
        images_root: Path | None = None,
    ) -> None:
        self.src, self.split = src, split
        self.roots = [p for p in (src, images_root) if p is not None]
        self.ignored: Counter[str] = Counter()
        structured = (src / "query").is_dir()
        query_dir = src / "query" / split if structured else src
        pattern = f"{subset}_{split}.jsonl" if subset else f"*_{split}.jsonl"
        self.query_path = _one(
            sorted(p for p in query_dir.glob(pattern) if not p.name.endswith("_cand_pool.jsonl")),
            f"query file {pattern}", query_dir, "M-BEIR: query/<split>/mbeir_<name>_<split>.jsonl",
        )  # fmt: skip
        self.subset = subset or self.query_path.name.removesuffix(f"_{split}.jsonl")
        if pool is None:
            pool_dir = src / "cand_pool" / "local" if structured else src
            pool = _one(
                sorted(pool_dir.glob(f"{self.subset}_cand_pool.jsonl")), f"candidate pool of {self.subset}",
                pool_dir, "cand_pool/local/<name>_cand_pool.jsonl, or name one with --pool",
            )  # fmt: skip
        if not pool.is_file():
            raise ConversionError(f"{pool}: candidate pool not found")
        self.pool_path = pool
        qrels_dir = src / "qrels" / split if structured else src
        qrels = qrels_dir / f"{self.subset}_{split}_qrels.txt"
        self.qrels_path = qrels if qrels.is_file() else None

    def where(self, kind: str) -> str:
        return str(self.query_path if kind == "queries" else self.pool_path)

    def qrels(self, errors: list[str]) -> tuple[Qrels, str]:
        qrels: Qrels = {}
        if self.qrels_path is None:  # judgements from the queries' positive lists
            for lineno, record in iter_jsonl(self.query_path):
                where = f"{self.query_path}:{lineno}"
                positives = record.get("pos_cand_list")
                if not isinstance(positives, list):
                    errors.append(f"{where}: 'pos_cand_list' must be a list of candidate ids")
                    continue
                for did in positives:
                    add_judgement(qrels, record.get("qid"), did, 1, where, errors)
            return qrels, f"{self.query_path} (pos_cand_list)"
        for lineno, line in text_lines(self.qrels_path, errors):
            fields = line.split()
            if not fields:
                continue
            where = f"{self.qrels_path}:{lineno}"
            if len(fields) != 5:
                errors.append(f"{where}: expected 'qid 0 did relevance task_id', got {len(fields)} field(s)")
                continue
            add_judgement(qrels, fields[0], fields[2], fields[3], where, errors)
        return qrels, str(self.qrels_path)

    def negatives(self, errors: list[str]) -> dict[str, list[str]]:
        found: dict[str, list[str]] = {}
        for lineno, record in iter_jsonl(self.query_path):
            where = f"{self.query_path}:{lineno}"
            negatives = record.get("neg_cand_list") or []
            if not isinstance(negatives, list):
                errors.append(f"{where}: 'neg_cand_list' must be a list of candidate ids")
                continue
            qid = check_id(record.get("qid"), where, errors, "qid")
            ids = [check_id(d, where, errors, "neg_cand_list") for d in negatives]
            if qid is not None and ids:
                found[qid] = [d for d in ids if d is not None]
        return found

    def queries(self, errors: list[str]) -> Iterator[Item]:
        return self._items(self.query_path, ("qid", "query_txt", "query_img_path", "query_modality"), errors)

    def corpus(self, errors: list[str]) -> Iterator[Item]:
        return self._items(self.pool_path, ("did", "txt", "img_path", "modality"), errors)

    def _items(self, path: Path, keys: tuple[str, str, str, str], errors: list[str]) -> Iterator[Item]:
        id_key, text_key, image_key, modality_key = keys
        for lineno, record in iter_jsonl(path):
            where = f"{path}:{lineno}"
            item_id = check_id(record.get(id_key), where, errors, id_key)
            if item_id is None:
                continue
            text = join_text([record.get(text_key)], where, errors)
            if text is False:
                continue
            image = self._image(record.get(image_key), image_key, where, errors)
            if image is False:
                continue
            modality = parse_modality(record.get(modality_key), where, errors)
            if modality == set():
                continue
            kept = apply_modality(item_id, text, image, modality, where, errors, self.ignored)
            if kept is not None:
                yield Item(item_id, kept[0], kept[1], where)

    def _image(self, value: object, key: str, where: str, errors: list[str]) -> Path | None | Literal[False]:
        if value is None or value == "":
            return None
        if not isinstance(value, str):
            errors.append(f"{where}: '{key}' must be a path string relative to {self.src}")
            return False
        source = self.src / value
        if Path(value).is_absolute() or not inside(source, self.roots):
            errors.append(
                f"{where}: '{key}' {value!r} is outside {self.src}; M-BEIR paths are relative to it"
            )
            return False
        if not source.is_file():
            errors.append(
                f"{where}: image {source} not found (is the M-BEIR image tree extracted into {self.src}?)"
            )
            return False
        return source
