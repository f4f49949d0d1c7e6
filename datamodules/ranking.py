"""The ranking rules every tool shares: trec_eval's candidate order and score fusion.

* :func:`ranked`: a query's documents by score, highest first, equal scores by the larger document
  id first (trec_eval's ``qsort`` comparator, ``strcmp(docno2, docno1)``). Validation's candidate
  order, ``evaluate --model``, TREC files, ``convert --top-k`` and mining windows all use it; the
  metrics (datamodules/metrics.py) count ranks by the same rule without sorting.
* :func:`fuse`: ``alpha·minmax(reranker) + (1 - alpha)·minmax(first stage)`` over one query's
  candidates (``model.fusion_alpha`` in validation, ``--fusion-alpha`` of ``evaluate --model``);
  :func:`fuse_runs` applies it to every query of a run.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

Run = dict[str, dict[str, float]]


def ranked(scores: Mapping[str, float], top_k: int | None = None) -> list[tuple[str, float]]:
    """``(doc_id, score)`` pairs in trec_eval order, cut to the first ``top_k`` when given."""
    order = sorted(scores.items(), key=lambda item: (item[1], item[0]), reverse=True)
    return order if top_k is None else order[:top_k]


def minmax(values: Sequence[float]) -> list[float]:
    """``values`` scaled to [0, 1] over their own range (all 0 when they are all equal)."""
    low, high = min(values), max(values)
    return [(v - low) / (high - low) if high > low else 0.0 for v in values]


def fuse(scores: Sequence[float], first_stage: Sequence[float], alpha: float) -> list[float]:
    """One query's fused scores, in the candidates' order: ``alpha·minmax(scores) + (1 -
    alpha)·minmax(first_stage)``, each min-max normalised over the query (float64)."""
    if len(scores) != len(first_stage):
        raise ValueError(f"got {len(scores)} reranker scores but {len(first_stage)} first-stage scores")
    if not scores:
        return []
    return [
        alpha * x + (1 - alpha) * y
        for x, y in zip(
            minmax([float(s) for s in scores]), minmax([float(s) for s in first_stage]), strict=True
        )
    ]


def fuse_runs(
    run: Mapping[str, Mapping[str, float]], first_stage: Mapping[str, Mapping[str, float]], alpha: float
) -> Run:
    """:func:`fuse` for every query of ``run`` (``first_stage`` holds each of its documents)."""
    fused: Run = {}
    for qid, scores in run.items():
        docs = list(scores)
        values = fuse([scores[d] for d in docs], [first_stage[qid][d] for d in docs], alpha)
        fused[qid] = dict(zip(docs, values, strict=True))
    return fused
