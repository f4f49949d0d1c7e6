"""What an evaluation hands over, and the per-query values it gathers over ranks.

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

from datamodules.metrics import Summary


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
