"""An evaluation pass's state (:class:`EvalState`), what it hands over (:class:`EvalResult`), and the
per-query values it gathers over ranks.

``RerankerModule`` (lightning_modules/reranker.py) keeps, per task, the per-query metric values of
its rank in torchmetrics ``CatMetric`` objects (float64, NaN an error): at the end of an evaluation
``compute()`` gathers every rank's values (torchmetrics' DDP sync, also for a rank that saw no
query of the task), and the task mean is taken with ``math.fsum`` (datamodules/metrics.py), exact
whatever order the values arrive in, so 1 and N processes give the same numbers to the last bit.
A mean reduced across ranks (``MeanMetric``) would depend on the summation order. The module
then leaves an :class:`EvalResult` for the evaluation writer (experiments/eval_writer.py).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from torchmetrics.aggregation import CatMetric

from datamodules.formats import TaskMeta
from datamodules.metrics import Summary, TaskResult, query_metric


@dataclass
class EvalResult:
    """What an evaluation (``val``, ``test``) or prediction (``predict``) leaves for its writer.

    ``summary`` and ``retriever`` are the reranked and first-stage task summaries, identical on
    every rank (``None`` in predict); ``runs`` is THIS rank's ``{task: {qid: {docid: score}}}``
    (``None`` with ``model.write_runs: false``), merged over ranks with
    :meth:`RerankerModule.gather_over_ranks`, a collective every rank must call.
    """

    stage: str
    step: int
    summary: Summary | None = None
    retriever: Summary | None = None
    runs: dict[str, dict[str, dict[str, float]]] | None = None


def per_query_values(device: torch.device) -> CatMetric:
    """A float64 CatMetric of per-query values (NaN is an error, never dropped)."""
    # set_dtype after .to(): Metric.to() resets the dtype to the default (float32).
    return CatMetric(nan_strategy="error").to(device).set_dtype(torch.float64)


def all_values(metric: CatMetric) -> list[float]:
    """Every rank's values of ``metric`` (a collective under DDP: all ranks call it, task by task
    in the same order); empty when no rank saw a query of the task."""
    with warnings.catch_warnings():  # a rank without queries of a task still joins the gather
        warnings.filterwarnings("ignore", message=".*was called before the ``update`` method")
        values = metric.compute()
    # compute() squeezes a single value to a 0-d tensor: reshape to keep a list.
    return values.reshape(-1).tolist() if isinstance(values, torch.Tensor) else []


class EvalState:
    """One evaluation pass on one rank: per task, each scored query's run (``{docid: score}``), its
    metric values (reranked and first stage, float64 CatMetrics) and its candidates left out as bad
    records (``data.on_bad_record=skip``)."""

    SIDES = ("reranked", "retriever")

    def __init__(self, metas: dict[str, TaskMeta], device: torch.device) -> None:
        self.metas = metas
        self.runs: dict[str, dict[str, dict[str, float]]] = {name: {} for name in metas}
        self.metrics = {name: {side: per_query_values(device) for side in self.SIDES} for name in metas}
        self.skipped: dict[str, dict[str, int]] = {name: {} for name in metas}

    def add(self, batch: dict, scores: list[float], with_metric: bool = True) -> None:
        """Record a query's ``scores`` (in ``batch["doc_ids"]`` order) and, with ``with_metric``,
        its metric values; trec_eval skips queries without a relevant document, so do we."""
        task, qid = batch["task"], batch["qid"]
        self.runs[task][qid] = dict(zip(batch["doc_ids"], scores, strict=True))
        if batch.get("skipped"):
            self.skipped[task][qid] = len(batch["skipped"])
        relevance = batch["relevance"]
        if not with_metric or not any(grade > 0 for grade in relevance.values()):
            return
        metric = self.metas[task].metric
        for side, ranking in zip(self.SIDES, (scores, batch["first_stage"]), strict=True):
            value = query_metric(metric, batch["doc_ids"], ranking, relevance)
            values = self.metrics[task][side]
            values.update(torch.tensor([value], dtype=torch.float64, device=values.device))

    def task_results(self) -> tuple[list[TaskResult], list[TaskResult]]:
        """(reranked, first-stage) results of every task some rank scored, identical on every
        rank: a collective under DDP (every rank calls it)."""
        reranked, retriever = [], []
        for name, meta in self.metas.items():
            values = {side: all_values(metric) for side, metric in self.metrics[name].items()}
            if not values["reranked"]:  # partial validation (fast_dev_run, limit_val_batches)
                continue
            for results, side in ((reranked, "reranked"), (retriever, "retriever")):
                per_query = dict(enumerate(values[side]))
                results.append(TaskResult.from_per_query(name, meta.family, meta.metric, per_query))
        return reranked, retriever
