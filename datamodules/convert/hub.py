"""Hugging Face Hub retrieval datasets in a local folder or Hub snapshot: MTEB/BEIR and UMRB.

Three tables, each a config of the dataset (``corpus``, ``queries`` or ``query``, ``qrels`` -- older
MTEB repos call the qrels config ``default``), stored as parquet or JSONL (qrels also TSV):

- MTEB/BEIR: corpus ``_id``/``id``, ``title``, ``text``; queries ``_id``/``id``, ``text``; qrels
  ``query-id``, ``corpus-id``, ``score``. Multimodal MTEB tasks add ``modality`` and ``image``.
- UMRB (``izhx/UMRB-*``): ``query.parquet``, ``corpus.parquet``, ``qrels.parquet`` (or the Hub's
  parquet-converter folders ``query/``, ``corpus/``, ``qrels/`` of shards); rows ``id``,
  ``modality`` (text / image / image,text), ``text``, ``image`` (the Hub ``Image`` feature:
  ``{bytes, path}`` with the bytes embedded); qrels ``query-id``, ``Q0``, ``corpus-id``, ``score``.

Where the folder has a dataset card (README.md with ``configs:``) the files of each config and split
are resolved from it with the ``datasets`` library's own pattern resolution; otherwise by the names
above (``<config>.parquet``, ``<config>-*.parquet``, ``<config>/<split>-*.parquet``,
``<config>/<split>/*.parquet``, ``<config>/<split>.jsonl``). Parquet is read with ``pyarrow`` in
batches (image bytes are never decoded or re-encoded); an image column is recognised by the
``datasets`` ``Image`` feature stored in the parquet schema, or by a ``{bytes, path}`` struct named
``image``. The corpus is the union of all its splits; queries and qrels use ``--split``, or their only
split when they have one.
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
    read_qrels_tsv,
)  # fmt: skip
from datamodules.extras import require
from datamodules.formats import FormatError, iter_jsonl

TOOL = "python -m datamodules.convert"

ROLES = {"corpus": ("corpus",), "queries": ("queries", "query"), "qrels": ("qrels", "default")}
_SUFFIXES = (".parquet", ".jsonl", ".jsonl.gz", ".tsv")


def _is_data(path: Path) -> bool:
    return path.is_file() and path.name.endswith(_SUFFIXES) and not path.name.startswith(".")


def _split_of(name: str) -> str:
    for suffix in _SUFFIXES:
        name = name.removesuffix(suffix)
    return name.split("-")[0]


def card_configs(src: Path) -> dict[str, dict[str, list[Path]]]:
    """``{config: {split: files}}`` from the dataset card's ``configs:`` (empty without a card)."""
    readme = src / "README.md"
    if not readme.is_file():
        return {}
    require(TOOL, "data", "datasets")
    from datasets.data_files import DataFilesDict, sanitize_patterns
    from datasets.utils.metadata import MetadataConfigs
    from huggingface_hub import DatasetCard

    try:
        configs = MetadataConfigs.from_dataset_card_data(DatasetCard.load(readme).data)
    except Exception as err:  # a malformed card: say which file and why
        raise ConversionError(f"{readme}:1: cannot read the dataset card's configs ({err})") from None
    found: dict[str, dict[str, list[Path]]] = {}
    for name, config in configs.items():
        try:
            patterns = sanitize_patterns(config.get("data_files"))
            files = DataFilesDict.from_patterns(patterns, base_path=str(src))
        except FileNotFoundError as err:
            raise ConversionError(f"{readme}:1: config {name!r}: data files not found here ({err})") from None
        found[name] = {split: [Path(f) for f in listed] for split, listed in files.items()}
    return found


def folder_configs(src: Path) -> dict[str, dict[str, list[Path]]]:
    """The same mapping from file and folder names when there is no card."""
    found: dict[str, dict[str, list[Path]]] = {}
    for names in ROLES.values():
        for name in names:
            splits: dict[str, list[Path]] = {}
            for path in sorted(src.glob(f"{name}*")):
                if _is_data(path) and (path.name.split(".")[0] == name or path.name.startswith(f"{name}-")):
                    splits.setdefault("(all)", []).append(path)
            folder = src / name
            if folder.is_dir():
                for path in sorted(p for p in folder.rglob("*") if _is_data(p)):
                    parts = path.relative_to(folder).parts
                    split = parts[0] if len(parts) > 1 else _split_of(parts[0])
                    splits.setdefault(split, []).append(path)
            if splits:
                found[name] = splits
    return found


def looks_like(src: Path) -> str | None:
    """``"umrb"``, ``"mteb"`` or None."""
    try:
        configs = card_configs(src) or folder_configs(src)
    except ConversionError:
        configs = folder_configs(src)
    if "corpus" not in configs or not any(name in configs for name in ROLES["qrels"]):
        return None
    if "query" in configs:
        return "umrb"
    return "mteb" if "queries" in configs else None


class HubSource:
    """MTEB/BEIR or UMRB tables from a local folder; see the module docstring."""

    def __init__(self, src: Path, kind: str, split: str = "test", images_root: Path | None = None) -> None:
        self.src, self.kind, self.split = src, kind, split
        self.roots = [p for p in (src, images_root) if p is not None]
        self.configs = card_configs(src) or folder_configs(src)
        self.ignored: Counter[str] = Counter()
        self.files = {role: self._files(role) for role in ROLES}
        if any(f.name.endswith(".parquet") for files in self.files.values() for f in files):
            require(TOOL, "data", "datasets", "pyarrow")

    def _files(self, role: str) -> list[Path]:
        name = next((n for n in ROLES[role] if n in self.configs), None)
        if name is None:
            raise ConversionError(
                f"{self.src}: no {' or '.join(ROLES[role])} table (config, <name>.parquet/.jsonl or folder); "
                f"found {sorted(self.configs) or 'none'}"
            )
        splits = self.configs[name]
        if role == "corpus":
            return [f for files in splits.values() for f in files]
        if self.split in splits:
            return splits[self.split]
        if len(splits) == 1:
            return next(iter(splits.values()))
        raise ConversionError(
            f"{self.src}: {name} has no split {self.split!r}; choose one of {sorted(splits)} with --split"
        )

    def where(self, kind: str) -> str:
        return ", ".join(str(p) for p in self.files[kind])

    # ---- rows ------------------------------------------------------------------------------------
    def _rows(self, path: Path, errors: list[str]) -> Iterator[tuple[str, dict, set[str]]]:
        """``(where, row, image columns)`` of a parquet or JSONL file."""
        if path.name.endswith(".parquet"):
            import pyarrow as pa
            import pyarrow.parquet as pq

            try:
                handle = pq.ParquetFile(path)
            except Exception as err:
                errors.append(f"{path}:1: not a readable parquet file ({err})")
                return
            image_columns = _image_columns(handle.schema_arrow)
            row = 0
            batches = handle.iter_batches(batch_size=256)
            while True:
                try:
                    batch = next(batches, None)
                except (pa.ArrowException, OSError) as err:  # a corrupt page: name the file and where
                    errors.append(f"{path} row {row + 1}: the parquet file is damaged from here on ({err})")
                    return
                if batch is None:
                    return
                for record in batch.to_pylist():
                    row += 1
                    yield f"{path} row {row}", record, image_columns
        else:
            try:
                for lineno, record in iter_jsonl(path):
                    yield f"{path}:{lineno}", record, {"image"}
            except FormatError as err:
                errors.append(str(err))

    def qrels(self, errors: list[str]) -> tuple[Qrels, str]:
        qrels: Qrels = {}
        for path in self.files["qrels"]:
            if path.name.endswith(".tsv"):
                for qid, docs in read_qrels_tsv(path, errors).items():
                    for docid, grade in docs.items():
                        add_judgement(qrels, qid, docid, grade, str(path), errors)
                continue
            for where, row, _ in self._rows(path, errors):
                row_qid = row.get("query-id", row.get("query_id"))
                row_docid = row.get("corpus-id", row.get("corpus_id"))
                add_judgement(qrels, row_qid, row_docid, row.get("score"), where, errors)
        return qrels, self.where("qrels")

    def negatives(self, errors: list[str]) -> dict[str, list[str]]:
        return {}

    def queries(self, errors: list[str]) -> Iterator[Item]:
        return self._items("queries", errors)

    def corpus(self, errors: list[str]) -> Iterator[Item]:
        return self._items("corpus", errors)

    def _items(self, role: str, errors: list[str]) -> Iterator[Item]:
        id_keys = ("_id", "id", "corpus-id" if role == "corpus" else "query-id")
        for path in self.files[role]:
            for where, row, image_columns in self._rows(path, errors):
                raw_id = next((row[k] for k in id_keys if row.get(k) is not None), None)
                item_id = check_id(raw_id, where, errors, "id")
                if item_id is None:
                    continue
                parts = [row.get("title"), row.get("text")] if role == "corpus" else [row.get("text")]
                if role == "queries" and "text" not in row and "query" in row:
                    parts = [row.get("query")]
                text = join_text(parts, where, errors)
                if text is False:
                    continue
                image = self._image(row, image_columns, path, where, errors)
                if image is False:
                    continue
                modality = parse_modality(row.get("modality"), where, errors)
                if modality == set():
                    continue
                kept = apply_modality(item_id, text, image, modality, where, errors, self.ignored)
                if kept is not None:
                    yield Item(item_id, kept[0], kept[1], where)

    def _image(
        self, row: dict, columns: set[str], path: Path, where: str, errors: list[str]
    ) -> bytes | Path | None | Literal[False]:
        values = [row.get(c) for c in sorted(columns) if row.get(c) is not None]
        if not values:
            return None
        if len(values) > 1:
            errors.append(
                f"{where}: more than one image column ({sorted(columns)}); MRB records hold one image"
            )
            return False
        value = values[0]
        if isinstance(value, dict):
            if value.get("bytes"):
                return bytes(value["bytes"])
            value = value.get("path")
            if not value:
                return None
        if not isinstance(value, str):
            errors.append(f"{where}: image must be the Image feature {{bytes, path}} or a path string")
            return False
        source = Path(value) if Path(value).is_absolute() else path.parent / value
        if not inside(source, self.roots):
            errors.append(
                f"{where}: image path {value!r} is outside {self.src}; move it inside or name its folder "
                "with --images-root"
            )
            return False
        if not source.is_file():
            errors.append(f"{where}: image {value!r} not found (no embedded bytes and no file at {source})")
            return False
        return source


def _image_columns(schema) -> set[str]:
    """Columns holding images: the ``datasets`` Image feature, else a ``{bytes, path}`` struct named image."""
    import pyarrow as pa
    from datasets import Features
    from datasets import Image as ImageFeature

    columns: set[str] = set()
    if schema.metadata and b"huggingface" in schema.metadata:
        try:
            features = Features.from_arrow_schema(schema)
            columns = {name for name, feature in features.items() if isinstance(feature, ImageFeature)}
        except Exception:  # unreadable feature metadata: fall back to the column shape below
            columns = set()
    if not columns and "image" in schema.names:
        field = schema.field("image")
        if (
            pa.types.is_struct(field.type)
            and {"bytes", "path"} <= {f.name for f in field.type}
            or pa.types.is_string(field.type)
            or pa.types.is_large_string(field.type)
        ):
            columns = {"image"}
    return columns
