"""Convert the retrieval formats users hold into an MRB task folder (or a training root).

Usage::

    python -m datamodules.convert SRC --out MRB_ROOT/TASK --family T2T --metric ndcg@10 \\
        --instruction "Given a question, find the passage that answers it" \\
        [--run first_stage.trec [--top-k 100] [--full-corpus]] [--from beir|mteb|umrb|mbeir] \\
        [--split test] [--subset NAME] [--pool FILE] [--images-root DIR] \\
        [--image-field image] [--query-images DIR] [--corpus-images DIR]
    python -m datamodules.convert SRC --out TRAIN_ROOT --train --instruction TEXT [--task NAME] ...

SRC is detected as one of (``--from`` forces it):

- ``beir``: BEIR JSONL, ``corpus.jsonl`` + ``queries.jsonl`` + ``qrels/<split>.tsv``
  (:mod:`datamodules.convert.beir`);
- ``mteb``: an MTEB/BEIR dataset as published on the Hub -- ``corpus``, ``queries``, ``qrels``
  configs or folders, parquet or JSONL (:mod:`datamodules.convert.hub`);
- ``umrb``: the UMRB layout (``izhx/UMRB-*``): ``query``/``corpus``/``qrels`` parquet with embedded
  images (:mod:`datamodules.convert.hub`);
- ``mbeir``: M-BEIR (UniIR) JSONL, queries + candidate pool + 5-column qrels
  (:mod:`datamodules.convert.mbeir`).

An MRB task keeps the queries that have a relevant document (and, with ``--run``, candidates; the
run cut to ``--top-k``, and unless ``--full-corpus`` only the documents the kept queries' judgements
and candidates name). Without ``--run`` the whole corpus is kept and candidates.trec is left for
``python -m datamodules.retrieve`` to write. ``--train`` writes training groups instead: positives =
judged relevant, hard negatives = the negatives the source lists (M-BEIR ``neg_cand_list``); mine
more with ``python -m datamodules.mine``.

Embedded image bytes and copied image files are written once each under content-addressed names
(``images/ab/<sha256>.<ext>``), byte for byte. ``--images-root DIR`` references image files inside
DIR in place (through the symlink ``OUT/image_root``) instead of copying them; name the same DIR to
``datamodules.validate --images-root`` and in ``RERANK_LAB_IMAGE_ROOTS`` for training and evaluation.
No image path may leave SRC, the image folders named here, or DIR.

The output is never overwritten: it is written under a temporary name, checked with
:mod:`datamodules.validate`, and renamed into place only when it is clean.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from datamodules.convert import beir, hub, mbeir
from datamodules.convert.common import ConversionError
from datamodules.convert.write import write_task, write_train
from datamodules.formats import FAMILIES
from datamodules.metrics import parse_metric

KINDS = ("beir", "mteb", "umrb", "mbeir")

__all__ = ["KINDS", "ConversionError", "convert", "convert_train", "detect", "open_source"]


def detect(src: Path) -> str:
    """The kind of source folder ``src`` holds; ConversionError naming what was looked for."""
    if not src.is_dir():
        raise ConversionError(f"{src}: source folder not found")
    if mbeir.looks_like(src):
        return "mbeir"
    if beir.looks_like(src):
        return "beir"
    kind = hub.looks_like(src)
    if kind:
        return kind
    raise ConversionError(
        f"{src}: not a known retrieval layout: expected BEIR (corpus.jsonl, queries.jsonl, qrels/*.tsv), "
        "MTEB/UMRB Hub tables (corpus + queries/query + qrels as parquet/JSONL, or a README with configs), "
        "or M-BEIR (cand_pool/, query/); force one with --from"
    )


def open_source(
    src: str | Path,
    kind: str | None = None,
    split: str = "test",
    image_field: str = "image",
    query_images: str | Path | None = None,
    corpus_images: str | Path | None = None,
    subset: str | None = None,
    pool: str | Path | None = None,
    images_root: str | Path | None = None,
):
    src = Path(src)
    kind = kind or detect(src)
    root = Path(images_root) if images_root else None
    if root is not None and not root.is_dir():
        raise ConversionError(f"{root}: --images-root folder not found")
    if kind == "beir":
        return beir.BeirSource(src, split, image_field, _opt(query_images), _opt(corpus_images), root)
    if kind in ("mteb", "umrb"):
        return hub.HubSource(src, kind, split, root)
    if kind == "mbeir":
        return mbeir.MbeirSource(src, split, subset, _opt(pool), root)
    raise ConversionError(f"unknown source kind {kind!r}; known: {' '.join(KINDS)}")


def convert(
    src: str | Path,
    run: str | Path | None,
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
    kind: str | None = None,
    subset: str | None = None,
    pool: str | Path | None = None,
    images_root: str | Path | None = None,
) -> dict[str, Any]:
    """Write the MRB task folder ``out``; returns counts. Raises ConversionError listing all problems."""
    if family not in FAMILIES:
        raise ConversionError(f"unknown family {family!r}; known: {' '.join(FAMILIES)}")
    try:
        parse_metric(metric)
    except ValueError as err:
        raise ConversionError(str(err)) from None
    if not instruction.strip():
        raise ConversionError("--instruction must be a non-empty string")
    if Path(out).exists():
        raise ConversionError(f"{out}: already exists; refusing to overwrite it (choose a new --out)")
    source = open_source(
        src, kind, split, image_field, query_images, corpus_images, subset, pool, images_root
    )
    meta = {"family": family, "instruction": instruction, "metric": metric}
    counts = write_task(
        source, Path(out), meta, _opt(run), top_k, full_corpus, Path(images_root) if images_root else None
    )
    counts["kind"] = source.kind
    return counts


def convert_train(
    src: str | Path, out: str | Path, instruction: str, task: str | None = None, **source_args: Any
) -> dict[str, Any]:
    """Write the training root ``out`` (``<task>.jsonl`` + images); returns counts."""
    if not instruction.strip():
        raise ConversionError("--instruction must be a non-empty string")
    if Path(out).exists():
        raise ConversionError(f"{out}: already exists; refusing to overwrite it (choose a new --out)")
    source = open_source(src, **source_args)
    name = task or getattr(source, "subset", None) or Path(src).resolve().name
    if Path(name).name != name or name.startswith(".") or "\\" in name:
        raise ConversionError(
            f"--task-name {name!r}: must be a plain name (no '/', no leading '.'): it names {out}/<name>.jsonl"
        )
    images_root = source_args.get("images_root")
    counts = write_train(source, Path(out), name, instruction, Path(images_root) if images_root else None)
    counts["kind"] = source.kind
    return counts


def _opt(path: str | Path | None) -> Path | None:
    return Path(path) if path else None
