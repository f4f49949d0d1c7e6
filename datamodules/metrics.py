"""Ranking metrics with trec_eval semantics, and the MRB summary (per task, per family, average).

Metrics are written ``ndcg@k``, ``recall@k`` and ``mrr@k`` (docs/formats.md §4). Every value matches what
trec_eval (``pytrec_eval``) reports for the same run and qrels, query by query:

* Ranking: documents are ordered by score, highest first. Equal scores are ordered by document id
  in *descending* string order (byte order of the UTF-8 ids, which is Python's ``str`` order), as
  trec_eval's ``qsort`` comparator does (``strcmp(docno2, docno1)``); the ``rank`` column of a TREC
  file is ignored. Scores are compared as float64 of the parsed values, as trec_eval's ``atof``.
* ``ndcg@k`` is trec_eval's ``ndcg_cut_k``: gain = relevance grade (grades <= 0 give no gain),
  discount ``1 / log2(rank + 1)``, ideal DCG@k built from *all* relevant documents in the qrels,
  retrieved or not.
* ``recall@k`` is ``recall_k``: relevant documents in the top k / all relevant documents in qrels.
* ``mrr@k`` is ``recip_rank`` of the run cut to its top k: ``1 / rank`` of the first relevant
  document if it is within the top k, else 0. (trec_eval's ``recip_rank`` itself has no cut-off.)
* A document is relevant when its grade is > 0 (trec_eval's default ``relevance_level`` of 1).
* A qrels query that has a relevant document but is missing from the run scores 0 (trec_eval
  leaves it out of its output; here it counts). Queries with no relevant document are skipped: they
  get no value and do not count in the mean. Run queries absent from the qrels are ignored.

Only the ranks of the relevant retrieved documents are needed, so :func:`evaluate_run` compares
each of them against the scores of its query in one vectorised pass instead of sorting every run.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import chain
from typing import Any

import numpy as np

from datamodules.trec import Qrels, Run

__all__ = [
    "METRIC_NAMES",
    "MetricSpec",
    "Summary",
    "TaskResult",
    "evaluate_run",
    "format_table",
    "parse_metric",
    "query_metric",
    "summarize",
]

METRIC_NAMES = ("ndcg", "recall", "mrr")
_METRIC_RE = re.compile(r"(ndcg|recall|mrr)@(\d+)", re.IGNORECASE)
# Hits are compared against their query's scores in chunks of this many pairs to bound memory.
_CHUNK = 1 << 21


@dataclass(frozen=True)
class MetricSpec:
    """A parsed metric: ``name`` in :data:`METRIC_NAMES` and a cut-off ``k >= 1``."""

    name: str
    k: int

    def __str__(self) -> str:
        return f"{self.name}@{self.k}"


def parse_metric(spec: str) -> MetricSpec:
    """Parse ``"ndcg@10"``, ``"recall@5"`` or ``"mrr@10"`` (case-insensitive) into a :class:`MetricSpec`.

    Raises:
        ValueError: for anything else; the message lists the accepted forms.
    """
    match = _METRIC_RE.fullmatch(spec.strip()) if isinstance(spec, str) else None
    if match is None or int(match.group(2)) < 1:
        raise ValueError(
            f"unknown metric {spec!r}; expected ndcg@k, recall@k or mrr@k with an integer k >= 1 "
            "(e.g. 'ndcg@10', 'recall@5', 'mrr@10')"
        )
    return MetricSpec(match.group(1).lower(), int(match.group(2)))


def _as_spec(metric: str | MetricSpec) -> MetricSpec:
    return metric if isinstance(metric, MetricSpec) else parse_metric(metric)


def _count_higher(
    scores: np.ndarray, starts: np.ndarray, lengths: np.ndarray, hit_scores: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """For each hit, count the scores of its query (``scores[start:start + length]``) that are
    strictly greater than its own, and those equal to it (itself included)."""
    greater = np.zeros(len(hit_scores), dtype=np.int64)
    equal = np.zeros(len(hit_scores), dtype=np.int64)
    if len(hit_scores) == 0:
        return greater, equal
    cumulative = np.cumsum(lengths)
    n_chunks = -(-int(cumulative[-1]) // _CHUNK)
    cuts = np.searchsorted(cumulative, _CHUNK * np.arange(1, n_chunks), side="right")
    bounds = np.unique(np.concatenate(([0], cuts, [len(hit_scores)])))
    for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
        chunk_lengths = lengths[lo:hi]
        first = np.cumsum(chunk_lengths) - chunk_lengths  # where each hit's block starts
        total = int(chunk_lengths.sum())
        positions = np.repeat(starts[lo:hi] - first, chunk_lengths) + np.arange(total)
        candidates = scores[positions]
        reference = np.repeat(hit_scores[lo:hi], chunk_lengths)
        greater[lo:hi] = np.add.reduceat((candidates > reference).astype(np.int64), first)
        equal[lo:hi] = np.add.reduceat((candidates == reference).astype(np.int64), first)
    return greater, equal


def _metric_values(
    spec: MetricSpec,
    cutoff: int,
    positive_grades: Sequence[Sequence[int]],
    hit_query: np.ndarray,
    hit_rank: np.ndarray,
    hit_grade: np.ndarray,
) -> np.ndarray:
    """Per-query values from the ranks of the relevant retrieved documents ("hits").

    ``positive_grades[q]`` holds every grade > 0 of query ``q`` in the qrels; hits beyond ``cutoff``
    do not count (``cutoff`` is ``k``, or less when the run is cut to a depth).
    """
    n_queries = len(positive_grades)
    inside = hit_rank <= cutoff
    query, rank, grade = hit_query[inside], hit_rank[inside], hit_grade[inside]
    if spec.name == "recall":
        n_relevant = np.array([len(grades) for grades in positive_grades], dtype=np.float64)
        return np.bincount(query, minlength=n_queries) / n_relevant
    if spec.name == "mrr":
        best = np.full(n_queries, np.inf)
        np.minimum.at(best, query, rank.astype(np.float64))
        return np.where(np.isfinite(best), 1.0 / best, 0.0)
    dcg = np.bincount(query, weights=grade / np.log2(rank + 1.0), minlength=n_queries)
    discounts = [math.log2(i + 2) for i in range(min(spec.k, max(map(len, positive_grades), default=0)))]
    ideal = np.array(
        [
            sum(g / d for g, d in zip(sorted(grades, reverse=True), discounts, strict=False))
            for grades in positive_grades
        ]
    )
    return dcg / ideal


def _as_float64(scores: Sequence[float] | np.ndarray | Any) -> np.ndarray:
    if hasattr(scores, "detach"):  # a torch tensor; checked by duck type so torch stays optional here
        scores = scores.detach().cpu().double().numpy()
    return np.asarray(scores, dtype=np.float64).reshape(-1)


def query_metric(
    metric: str | MetricSpec,
    doc_ids: Sequence[str],
    scores: Sequence[float] | np.ndarray | Any,
    relevance: Mapping[str, int],
) -> float:
    """The metric of one query whose documents ``doc_ids`` received ``scores``.

    Args:
        metric: e.g. ``"ndcg@10"`` or a :class:`MetricSpec`.
        doc_ids: the ranked-or-not candidate ids (unique).
        scores: one score per id (list, numpy array or torch tensor of any float dtype); higher is
            better, ties are broken by descending id as in trec_eval.
        relevance: the qrels of this query, ``{doc_id: grade}``; grades > 0 are relevant.

    Returns:
        The value in [0, 1], or ``nan`` when ``relevance`` has no relevant document: such queries
        are skipped by the benchmark, so leave them out of any mean.

    Raises:
        ValueError: if ids and scores differ in length, ids repeat, or a score is not finite.
    """
    spec = _as_spec(metric)
    ids = list(doc_ids)
    values = _as_float64(scores)
    if len(ids) != len(values):
        raise ValueError(f"got {len(ids)} document ids but {len(values)} scores")
    if len(set(ids)) != len(ids):
        raise ValueError("document ids repeat; each candidate must appear once")
    if not np.isfinite(values).all():
        raise ValueError("scores must be finite (found nan or inf)")
    positive = [g for g in relevance.values() if g > 0]
    if not positive:
        return math.nan
    hits = np.array([i for i, d in enumerate(ids) if relevance.get(d, 0) > 0], dtype=np.int64)
    hit_scores = values[hits]
    n_hits = len(hits)
    greater, equal = _count_higher(
        values, np.zeros(n_hits, dtype=np.int64), np.full(n_hits, len(ids), dtype=np.int64), hit_scores
    )
    rank = greater + 1
    for j in np.flatnonzero(equal > 1):
        doc, tied = ids[hits[j]], np.flatnonzero(values == hit_scores[j])
        rank[j] += sum(ids[i] > doc for i in tied)
    grades = np.array([relevance[ids[i]] for i in hits], dtype=np.float64)
    return float(_metric_values(spec, spec.k, [positive], np.zeros(n_hits, dtype=np.int64), rank, grades)[0])


@dataclass
class _Hits:
    """The judged queries of a run and its relevant documents that the run scored ("hits").

    ``qids``/``positive_grades``: each qrels query with a relevant document, and its positive grades.
    ``query``/``doc``/``score``/``grade``: per hit, the index of its query in ``qids``, the document,
    its run score and its grade. ``start``/``length``: per hit, where its query's run scores lie in
    ``score_blocks`` laid end to end (``count`` scores in all; only queries with a hit are kept).
    """

    qids: list[str]
    positive_grades: list[list[int]]
    query: list[int]
    doc: list[str]
    score: list[float]
    grade: list[int]
    start: list[int]
    length: list[int]
    score_blocks: list[Iterable[float]]
    count: int = 0


def _collect_hits(
    run: Mapping[str, Mapping[str, float]] | Run, qrels: Mapping[str, Mapping[str, int]] | Qrels
) -> _Hits:
    """One pass over ``qrels`` in its order: the judged queries and the run's scores of their relevant
    documents (see :class:`_Hits`)."""
    hits = _Hits([], [], [], [], [], [], [], [], [])
    for qid, judgements in qrels.items():
        positive = [g for g in judgements.values() if g > 0]
        if not positive:
            continue
        query_index = len(hits.qids)
        hits.qids.append(qid)
        hits.positive_grades.append(positive)
        docs = run.get(qid)
        if not docs:
            continue
        n_hits = len(hits.doc)
        for doc, grade in judgements.items():
            if grade > 0 and (score := docs.get(doc)) is not None:
                hits.query.append(query_index)
                hits.doc.append(doc)
                hits.score.append(score)
                hits.grade.append(grade)
        if len(hits.doc) > n_hits:  # only queries with a hit need their scores
            hits.start.extend([hits.count] * (len(hits.doc) - n_hits))
            hits.length.extend([len(docs)] * (len(hits.doc) - n_hits))
            hits.score_blocks.append(docs.values())
            hits.count += len(docs)
    return hits


def _hit_ranks(run: Mapping[str, Mapping[str, float]] | Run, hits: _Hits) -> np.ndarray:
    """Each hit's 1-based rank in its query's run; equal scores: the larger document id ranks first.

    Raises:
        ValueError: a run score (of a query with a hit) that is not finite.
    """
    scores = np.fromiter(chain.from_iterable(hits.score_blocks), dtype=np.float64, count=hits.count)
    if not np.isfinite(scores).all():
        raise ValueError("run scores must be finite (found nan or inf)")
    hit_scores = np.array(hits.score, dtype=np.float64)
    greater, equal = _count_higher(
        scores, np.array(hits.start, dtype=np.int64), np.array(hits.length, dtype=np.int64), hit_scores
    )
    rank = greater + 1
    for j in np.flatnonzero(equal > 1):  # equal scores: the larger id ranks first
        doc, score = hits.doc[j], hit_scores[j]
        rank[j] += sum(other > doc for other, s in run[hits.qids[hits.query[j]]].items() if s == score)
    return rank


def evaluate_run(
    run: Mapping[str, Mapping[str, float]] | Run,
    qrels: Mapping[str, Mapping[str, int]] | Qrels,
    metric: str | MetricSpec,
    depth: int | None = None,
) -> dict[str, float]:
    """Per-query values of ``metric`` for every qrels query that has a relevant document.

    Args:
        run: ``{qid: {doc_id: score}}`` as read by :func:`datamodules.trec.read_run`.
        qrels: ``{qid: {doc_id: grade}}`` as read by :func:`datamodules.trec.read_qrels`.
        metric: e.g. ``"recall@5"`` or a :class:`MetricSpec`.
        depth: if given, only the top ``depth`` documents of each query in the run count (as if the
            run were cut there); the ideal DCG still comes from all relevant documents.

    Returns:
        ``{qid: value}`` in qrels order; a query missing from the run gets 0.

    Raises:
        ValueError: for a bad metric or depth, or a run score that is not finite.
    """
    spec = _as_spec(metric)
    if depth is not None and (not isinstance(depth, int) or depth < 1):
        raise ValueError(f"depth must be an integer >= 1, got {depth!r}")
    cutoff = spec.k if depth is None else min(spec.k, depth)
    hits = _collect_hits(run, qrels)
    if not hits.qids:
        return {}
    values = _metric_values(
        spec,
        cutoff,
        hits.positive_grades,
        np.array(hits.query, dtype=np.int64),
        _hit_ranks(run, hits),
        np.array(hits.grade, dtype=np.float64),
    )
    return dict(zip(hits.qids, values.tolist(), strict=True))


@dataclass(frozen=True)
class TaskResult:
    """The score of one MRB task: the mean of its per-query values over ``n_queries`` queries."""

    task: str
    family: str
    metric: str
    value: float
    n_queries: int

    @classmethod
    def from_per_query(
        cls, task: str, family: str, metric: str, per_query: Mapping[str, float]
    ) -> TaskResult:
        """Average per-query values (e.g. from :func:`evaluate_run`) into one task result.

        Raises:
            ValueError: if ``per_query`` is empty (the task has no query with a relevant document).
        """
        if not per_query:
            raise ValueError(f"task {task!r}: no query with a relevant document, nothing to average")
        return cls(
            task,
            family,
            str(_as_spec(metric)),
            math.fsum(per_query.values()) / len(per_query),
            len(per_query),
        )


@dataclass(frozen=True)
class Summary:
    """Task results with family means (mean over the family's tasks) and the overall average
    (mean over all tasks). Families appear in the order their first task was given."""

    tasks: dict[str, TaskResult]
    families: dict[str, float]
    average: float

    def to_dict(self) -> dict[str, Any]:
        """The pinned JSON object of docs/formats.md §4 (``tasks``, ``families``, ``average``)."""
        return {
            "tasks": {
                name: {"family": r.family, "metric": r.metric, "value": r.value, "n_queries": r.n_queries}
                for name, r in self.tasks.items()
            },
            "families": dict(self.families),
            "average": self.average,
        }

    def to_json(self, indent: int | None = 2) -> str:
        """:meth:`to_dict` as JSON text."""
        return json.dumps(self.to_dict(), indent=indent)


def summarize(results: Iterable[TaskResult]) -> Summary:
    """Family means and the average of task results (each task weighs the same).

    Raises:
        ValueError: if there are no results, a task repeats, or a value is not finite.
    """
    tasks: dict[str, TaskResult] = {}
    by_family: dict[str, list[float]] = {}
    for result in results:
        if result.task in tasks:
            raise ValueError(f"task {result.task!r} appears twice")
        if not math.isfinite(result.value):
            raise ValueError(f"task {result.task!r} has a non-finite value {result.value!r}")
        tasks[result.task] = result
        by_family.setdefault(result.family, []).append(result.value)
    if not tasks:
        raise ValueError("no task results to summarize")
    families = {family: math.fsum(values) / len(values) for family, values in by_family.items()}
    average = math.fsum(r.value for r in tasks.values()) / len(tasks)
    return Summary(tasks, families, average)


def format_table(summary: Summary, baseline: Summary | None = None, baseline_label: str = "retriever") -> str:
    """A plain-text table: one row per task, then the family means and the average.

    Args:
        summary: the results to show.
        baseline: optional results to compare with (e.g. the first-stage retriever); adds a
            ``baseline_label`` column and ``delta`` = value - baseline.
        baseline_label: header of the baseline column.
    """
    headers = ["task", "family", "metric", "value"]
    if baseline is not None:
        headers += [baseline_label, "delta"]
    headers.append("n")

    def numbers(value: float, reference: float | None) -> list[str]:
        cells = [f"{value:.4f}"]
        if baseline is not None:
            cells += ["-", "-"] if reference is None else [f"{reference:.4f}", f"{value - reference:+.4f}"]
        return cells

    rows: list[list[str]] = []
    for name, r in summary.tasks.items():
        reference = baseline.tasks[name].value if baseline is not None and name in baseline.tasks else None
        rows.append([name, r.family, r.metric, *numbers(r.value, reference), str(r.n_queries)])
    footer: list[list[str]] = []
    for family, value in summary.families.items():
        reference = baseline.families.get(family) if baseline is not None else None
        n_tasks = sum(r.family == family for r in summary.tasks.values())
        footer.append(
            [f"family mean ({n_tasks} task{'s' * (n_tasks > 1)})", family, "", *numbers(value, reference), ""]
        )
    reference = baseline.average if baseline is not None else None
    n_tasks = len(summary.tasks)
    footer.append(
        [f"average ({n_tasks} task{'s' * (n_tasks > 1)})", "", "", *numbers(summary.average, reference), ""]
    )

    widths = [max(len(row[i]) for row in [headers, *rows, *footer]) for i in range(len(headers))]
    numeric = set(range(3, len(headers)))

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.rjust(w) if i in numeric else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(headers), rule, *map(line, rows), rule, *map(line, footer)])
