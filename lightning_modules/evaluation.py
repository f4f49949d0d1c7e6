"""An evaluation pass's state (:class:`EvalState`) and what it hands over (:class:`EvalResult`).

Validation produces runs and scores them with the offline scorer's code: each rank records, per
task, every query's reranked run and first-stage run (``{qid: {docid: score}}``), its qrels and its
candidates left out as bad records; at the end of the pass ONE gather merges these tables over ranks
(:meth:`RerankerModule.gather_over_ranks`, each query lives on exactly one rank), and every rank
scores the merged runs with :func:`datamodules.metrics.evaluate_run`, the function behind
``experiments.evaluate --run``. Task means are taken with ``math.fsum`` (exact whatever order the
queries arrive in), so 1 and N processes give the same numbers to the last bit, and a validation
scores exactly as its written TREC files do offline.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from datamodules.batches import QueryBatch
from datamodules.formats import TaskMeta
from datamodules.metrics import Summary, TaskResult, evaluate_run

Runs = dict[str, dict[str, dict[str, float]]]  # {task: {qid: {docid: score}}}


@dataclass
class EvalResult:
    """What an evaluation (``val``, ``test``) or prediction (``predict``) leaves for its writer.

    ``summary`` and ``retriever`` are the reranked and first-stage task summaries (``None`` in
    predict); ``runs`` is the reranked ``{task: {qid: {docid: score}}}`` of every rank, already
    merged (``None`` with ``model.write_runs: false``); ``skipped_candidates`` is, per task that had
    bad records (``data.on_bad_record=skip``), the candidates left out, as logged in
    ``<stage>/<task>/skipped_candidates``. Identical on every rank.
    """

    stage: str
    step: int
    summary: Summary | None = None
    retriever: Summary | None = None
    runs: Runs | None = None
    skipped_candidates: dict[str, int] = field(default_factory=dict)


@dataclass
class EvalTables:
    """Per task: the reranked and first-stage runs of the queries seen, the qrels of those with a
    relevant document, and the number of candidates left out per query (``on_bad_record=skip``)."""

    runs: Runs = field(default_factory=dict)
    first_stage: Runs = field(default_factory=dict)
    qrels: dict[str, dict[str, dict[str, int]]] = field(default_factory=dict)
    skipped: dict[str, dict[str, int]] = field(default_factory=dict)

    def merged(self, others: list[EvalTables]) -> EvalTables:
        """These tables and ``others`` (other ranks': disjoint queries) as one."""
        out = EvalTables()
        for name in ("runs", "first_stage", "qrels", "skipped"):
            table = getattr(out, name)
            for part in (self, *others):
                for task, rows in getattr(part, name).items():
                    table.setdefault(task, {}).update(rows)
        return out


class EvalState:
    """One evaluation pass on one rank (module docstring)."""

    def __init__(self, metas: dict[str, TaskMeta]) -> None:
        self.metas = metas
        self.tables = EvalTables(
            runs={name: {} for name in metas},
            first_stage={name: {} for name in metas},
            qrels={name: {} for name in metas},
            skipped={name: {} for name in metas},
        )

    def add(self, batch: QueryBatch, scores: list[float]) -> None:
        """Record a query's ``scores`` (in ``batch.doc_ids`` order) with its first-stage scores and
        qrels; trec_eval skips queries without a relevant document, and so does the scoring."""
        task, qid, tables = batch.task, batch.qid, self.tables
        tables.runs[task][qid] = dict(zip(batch.doc_ids, scores, strict=True))
        tables.first_stage[task][qid] = dict(zip(batch.doc_ids, batch.first_stage, strict=True))
        if batch.skipped:
            tables.skipped[task][qid] = len(batch.skipped)
        if any(grade > 0 for grade in batch.relevance.values()):
            tables.qrels[task][qid] = batch.relevance


def task_results(metas: dict[str, TaskMeta], tables: EvalTables) -> tuple[list[TaskResult], list[TaskResult]]:
    """(reranked, first-stage) results of every task with a scored query, by
    :func:`~datamodules.metrics.evaluate_run` over the (merged) ``tables``. A task no query of
    which was seen (``fast_dev_run``, ``limit_val_batches``) is left out."""
    reranked: list[TaskResult] = []
    retriever: list[TaskResult] = []
    for name, meta in metas.items():
        qrels = tables.qrels.get(name, {})
        if not qrels:
            continue
        for results, runs in ((reranked, tables.runs), (retriever, tables.first_stage)):
            per_query = evaluate_run(runs[name], qrels, meta.metric)
            results.append(TaskResult.from_per_query(name, meta.family, meta.metric, per_query))
    return reranked, retriever
