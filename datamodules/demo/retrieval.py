"""The demo's first stage (BM25, pixel cosine or random) and how query pools are drawn from a split.

BM25 is these few lines rather than ``bm25s`` (a dependency for real first stages): the demo's files
are a pure function of the seed, and its BM25 scores go into ``candidates.trec``, so the scoring
and tokenisation must not change with another package's release.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from typing import cast

import numpy as np

from datamodules.demo.spec import DEPTH, N_NEAR_MISSES, OFF_TOPIC, Item, TaskSpec

_TOKEN = re.compile(r"[a-z0-9]+")


class BM25:
    """Okapi BM25 over a fixed collection (Anserini defaults k1 = 0.9, b = 0.4)."""

    def __init__(self, texts: dict[str, str], k1: float = 0.9, b: float = 0.4) -> None:
        self.k1, self.b = k1, b
        self.term_counts = {key: Counter(_TOKEN.findall(text.lower())) for key, text in texts.items()}
        self.lengths = {key: sum(counts.values()) for key, counts in self.term_counts.items()}
        self.mean_length = max(1.0, sum(self.lengths.values()) / max(1, len(self.lengths)))
        document_frequency: Counter[str] = Counter()
        for counts in self.term_counts.values():
            document_frequency.update(counts.keys())
        n = len(self.term_counts)
        self.idf = {
            term: math.log(1.0 + (n - df + 0.5) / (df + 0.5)) for term, df in document_frequency.items()
        }

    def score(self, query: str, key: str) -> float:
        counts, length = self.term_counts[key], self.lengths[key]
        norm = self.k1 * (1.0 - self.b + self.b * length / self.mean_length)
        total = 0.0
        for term in sorted(set(_TOKEN.findall(query.lower()))):
            tf = counts.get(term, 0)
            if tf:
                total += self.idf[term] * tf * (self.k1 + 1.0) / (tf + norm)
        return total


def first_stage_scores(
    spec: TaskSpec, query: Item, pool: list[Item], bm25: BM25 | None, rng: np.random.Generator
) -> list[float]:
    """Scores of the task's first-stage retriever for ``pool`` (higher = better), rounded to 6 decimals."""
    if spec.retriever == "bm25":
        assert bm25 is not None and query.text
        # Ties (BM25 = 0 is common on short texts) are broken at random, not by document id.
        scores = [bm25.score(query.text, doc.key) + 1e-4 * float(rng.random()) for doc in pool]
    elif spec.retriever == "pixels":
        assert query.features is not None  # pixel tasks give every item features
        scores = [float(np.dot(query.features, cast(np.ndarray, doc.features))) for doc in pool]
    else:
        scores = [float(rng.random()) for _ in pool]
    return [round(score, 6) for score in scores]


def draw_pool(query: Item, docs: list[Item], n_relevant: int, rng: np.random.Generator) -> list[Item]:
    """A judged pool of ``DEPTH`` documents: ``n_relevant`` relevant ones (the query's label),
    ``N_NEAR_MISSES`` near misses (the other label) and off-topic ones for the rest; tasks without
    off-topic documents fill the pool with near misses. The query itself is never in its pool."""
    relevant = [doc for doc in docs if doc.label == query.label and doc.key != query.key]
    near = [doc for doc in docs if doc.label not in (query.label, OFF_TOPIC) and doc.key != query.key]
    off_topic = [doc for doc in docs if doc.label == OFF_TOPIC]
    n_near = N_NEAR_MISSES if off_topic else DEPTH - n_relevant
    pool: list[Item] = []
    for group, count in ((relevant, n_relevant), (near, n_near), (off_topic, DEPTH - n_relevant - n_near)):
        pool += [group[i] for i in rng.choice(len(group), count, replace=False)]
    return pool


def pick_queries(queries: list[Item], count: int, rng: np.random.Generator, cycle: bool) -> list[Item]:
    """``count`` queries alternating over the labels present; without repeats unless ``cycle``."""
    labels = sorted({item.label for item in queries})
    by_label = {label: [item for item in queries if item.label == label] for label in labels}
    orders = {label: list(rng.permutation(len(group))) for label, group in by_label.items()}
    picked: list[Item] = []
    for index in range(count):
        label = labels[index % len(labels)]
        position = index // len(labels)
        group, order = by_label[label], orders[label]
        if position >= len(order) and not cycle:
            raise ValueError(f"not enough label-{label} queries: need {position + 1}, have {len(order)}")
        picked.append(group[order[position % len(order)]])
    return picked
