"""Writing one task's MRB test folder, its training JSONL file and the benchmark's README."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from datamodules.demo.retrieval import BM25, draw_pool, first_stage_scores, pick_queries
from datamodules.demo.spec import (
    DEPTH,
    MAX_POSITIVES,
    N_HARD_NEGATIVES,
    N_NEAR_MISSES,
    N_TEST_QUERIES,
    N_TRAIN_GROUPS,
    Item,
    TaskSpec,
)
from datamodules.trec import write_run


def _save_png(image: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image, mode="RGB").save(path, format="PNG")


def _json_line(record: dict[str, Any]) -> str:
    return json.dumps(record, ensure_ascii=False) + "\n"


def write_test_task(spec: TaskSpec, task_dir: Path, seed: int, salt: int) -> dict[str, Any]:
    """Write one MRB test folder for ``spec`` into ``task_dir``; returns its row of the summary."""
    rng = np.random.default_rng([seed, 100 + salt])
    bm25 = BM25({doc.key: doc.text or "" for doc in spec.test.docs}) if spec.retriever == "bm25" else None
    queries = pick_queries(spec.test.queries, N_TEST_QUERIES, rng, cycle=False)
    pools = [draw_pool(query, spec.test.docs, 3 + index % 3, rng) for index, query in enumerate(queries)]
    scores = [
        first_stage_scores(spec, query, pool, bm25, rng) for query, pool in zip(queries, pools, strict=True)
    ]

    corpus_items = {doc.key: doc for pool in pools for doc in pool}
    order = rng.permutation(len(corpus_items))
    keys = sorted(corpus_items)
    doc_ids = {keys[position]: f"d{rank:03d}" for rank, position in enumerate(order, start=1)}
    query_ids = [f"q{index:02d}" for index in range(1, len(queries) + 1)]

    def record(item: Item, item_id: str) -> dict[str, Any]:
        out: dict[str, Any] = {"id": item_id}
        if item.text:
            out["text"] = item.text
        if item.image is not None:
            out["image"] = f"images/{item_id}.png"
            _save_png(item.image, task_dir / out["image"])
        return out

    task_dir.mkdir(parents=True, exist_ok=True)
    meta = {"family": spec.family, "instruction": spec.instruction, "metric": spec.metric}
    (task_dir / "task.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    with open(task_dir / "queries.jsonl", "w", encoding="utf-8") as handle:
        for query, query_id in zip(queries, query_ids, strict=True):
            handle.write(_json_line(record(query, query_id)))
    by_id = sorted((doc_id, key) for key, doc_id in doc_ids.items())
    with open(task_dir / "corpus.jsonl", "w", encoding="utf-8") as handle:
        for doc_id, key in by_id:
            handle.write(_json_line(record(corpus_items[key], doc_id)))
    run: dict[str, dict[str, float]] = {}
    with open(task_dir / "qrels.tsv", "w", encoding="utf-8") as handle:
        for query, query_id, pool, pool_scores in zip(queries, query_ids, pools, scores, strict=True):
            run[query_id] = {doc_ids[doc.key]: score for doc, score in zip(pool, pool_scores, strict=True)}
            for doc_id in sorted(doc_ids[doc.key] for doc in pool if doc.label == query.label):
                handle.write(f"{query_id} 0 {doc_id} 1\n")
    write_run(task_dir / "candidates.trec", run, tag=f"demo-{spec.retriever}")
    return {
        "family": spec.family,
        "metric": spec.metric,
        "queries": len(queries),
        "corpus": len(corpus_items),
        "depth": DEPTH,
    }


def _train_doc(item: Item, train_dir: Path, written: set[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    if item.text:
        out["text"] = item.text
    if item.image is not None:
        assert item.image_key is not None
        out["image"] = f"images/{item.image_key}.png"
        if item.image_key not in written:
            written.add(item.image_key)
            _save_png(item.image, train_dir / out["image"])
    return out


def write_train_file(spec: TaskSpec, train_dir: Path, seed: int, salt: int, written: set[str]) -> int:
    """Write ``train/<task>.jsonl`` (images once each, tracked in ``written``); returns the group count."""
    rng = np.random.default_rng([seed, 200 + salt])
    bm25 = BM25({doc.key: doc.text or "" for doc in spec.train.docs}) if spec.retriever == "bm25" else None
    queries = pick_queries(spec.train.queries, N_TRAIN_GROUPS, rng, cycle=True)
    with open(train_dir / f"{spec.name}.jsonl", "w", encoding="utf-8") as handle:
        for index, query in enumerate(queries):
            pool = draw_pool(query, spec.train.docs, 3 + index % 3, rng)
            scores = first_stage_scores(spec, query, pool, bm25, rng)
            ranked = [pool[i] for i in sorted(range(len(pool)), key=lambda i: -scores[i])]
            positives = [doc for doc in ranked if doc.label == query.label][:MAX_POSITIVES]
            hard_negatives = [doc for doc in ranked if doc.label != query.label][:N_HARD_NEGATIVES]
            group = {
                "task": spec.name,
                "instruction": spec.instruction,
                "query": _train_doc(query, train_dir, written),
                "positives": [_train_doc(doc, train_dir, written) for doc in positives],
                "hard_negatives": [_train_doc(doc, train_dir, written) for doc in hard_negatives],
            }
            handle.write(_json_line(group))
    return len(queries)


def readme_text(
    specs: list[TaskSpec], tasks: dict[str, dict[str, Any]], groups: dict[str, int], seed: int
) -> str:
    """The benchmark's README.md: how it was built, how relevance works, and one section per task."""
    lines = [
        "# rerank-lab demo benchmark",
        "",
        f"Built by `python -m datamodules.demo --out <dir> --seed {seed}` from real data that ships inside "
        "installed packages (no network). Rebuilding with the same seed gives byte-identical files.",
        "",
        "- `mrb/<task>/`: MRB-format test sets (rerank-lab's docs/formats.md §1).",
        f"- `train/<task>.jsonl`: {sum(groups.values())} training groups (docs/formats.md §2), each with up to "
        f"{MAX_POSITIVES} positives and {N_HARD_NEGATIVES} hard negatives (the first stage's top-ranked "
        "non-relevant documents of the group's pool); images under `train/images/`.",
        "",
        "Relevance rests on binary properties (digit 0 vs 1, face vs background, files vs numbers "
        "documentation) that a tiny randomly initialised model can learn in minutes on CPU. Each test query "
        f"is judged against its own pool of {DEPTH} documents drawn from the test half of the sources: 3 to 5 "
        f"relevant ones, near misses (same kind of item, the other class: {N_NEAR_MISSES} per pool, or the "
        "whole rest of the pool when a task has no off-topic documents) and off-topic documents from another "
        "source. The first stage ranks the pool and `candidates.trec` holds all of it, so every relevant "
        "document is a candidate: a perfect reranker scores 1.0, a random reordering about 0.25 (recall@5) "
        "or 0.35 (ndcg@10), and a model that only learned what is off-topic about 0.5. Documents outside a "
        "query's pool are unjudged for it (not relevant, as in TREC pooling). Training groups are built the "
        "same way from the train half: disjoint images, docstrings, captions and answers (the templated "
        "query texts are shared).",
        "",
        "| task | family | metric | queries | corpus | depth | train groups |",
        "|---|---|---|---|---|---|---|",
    ]
    for spec in specs:
        info = tasks[spec.name]
        lines.append(
            f"| {spec.name} | {spec.family} | {spec.metric} | {info['queries']} | {info['corpus']} | "
            f"{info['depth']} | {groups[spec.name]} |"
        )
    for spec in specs:
        lines += [
            "",
            f"## {spec.name} ({spec.family}, {spec.metric})",
            "",
            f"- Instruction: {spec.instruction}",
            f"- Source: {spec.source}.",
            f"- Relevance: {spec.relevance}.",
            f"- First stage (`candidates.trec`): {spec.first_stage}.",
        ]
    return "\n".join(lines) + "\n"
