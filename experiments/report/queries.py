"""Per-query metrics of the final validation of each run, and the paired bootstrap over queries.

Per-query values come from the TREC run each validation writes (``<run>/runs/val-step<N>/<task>.trec``,
N = the step of the run's last validation) scored against the task's ``qrels.tsv`` with the project's
trec_eval-exact code (:func:`datamodules.metrics.evaluate_run`), with the metric the validation used.

Why the bootstrap is written here with numpy rather than ``scipy.stats.bootstrap``: the headline
number is the MRB average, a mean of *task* means, so queries are resampled within their own task
(a stratified bootstrap: each task keeps its number of queries in every resample), which
``scipy.stats.bootstrap`` does not offer. One joint resampling of every cell also lets all
comparisons, including the non-linear ``|weight effect| - |direction effect|``, be read off the same
resamples. The resampling itself is a few lines of ``numpy.random.Generator.integers``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from datamodules.metrics import evaluate_run
from datamodules.trec import FormatError, read_qrels, read_run

from .runs import RunRecord

DEFAULT_RESAMPLES = 10_000
DEFAULT_SEED = 0
CONFIDENCE = 0.95
# Resampled means of one task are computed this many query draws at a time (bounds memory).
_DRAWS_PER_CHUNK = 1 << 20


class QueryDataError(ValueError):
    """Per-query metrics that cannot be computed for a run; the message names the file."""


@dataclass
class QueryTable:
    """Per-query values of one run: ``{task: {qid: value}}`` in the run's final validation."""

    run: RunRecord
    step: int
    values: dict[str, dict[str, float]]


def eval_root_of(run: RunRecord, override: Path | None) -> Path:
    """The MRB root the run validated on: ``--eval-root``, else its ``data.eval_root`` (a relative path
    is relative to the folder the sweep ran the command in, else to the current folder)."""
    if override is not None:
        return override
    root = run.config.get("data.eval_root")
    if not root:
        raise QueryDataError(f"{run.path / 'config.yaml'}: data.eval_root is not set; pass --eval-root")
    root = Path(str(root))
    if not root.is_absolute() and run.done and run.done.get("cwd"):
        root = Path(run.done["cwd"]) / root
    return root


def load_query_table(
    run: RunRecord, eval_root: Path | None, qrels_cache: dict[Path, dict] | None = None
) -> QueryTable:
    """Score the TREC files of the run's final validation query by query.

    Raises:
        QueryDataError: a missing TREC folder, TREC file or qrels file (named), or a TREC/qrels line
            that does not parse.
    """
    if run.step is None or not run.tasks:
        raise QueryDataError(f"{run.path / 'eval_history.jsonl'}: no validation with per-task results")
    folder = run.path / "runs" / f"val-step{run.step}"
    if not folder.is_dir():
        raise QueryDataError(
            f"{folder}: missing; the final validation wrote no TREC runs (model.write_runs was off?)"
        )
    root = eval_root_of(run, eval_root)
    cache = {} if qrels_cache is None else qrels_cache
    values: dict[str, dict[str, float]] = {}
    for task in sorted(run.tasks):
        trec, qrels_path = folder / f"{task}.trec", root / task / "qrels.tsv"
        for path in (trec, qrels_path):
            if not path.is_file():
                raise QueryDataError(f"{path}: missing (needed for the per-query metrics of {run.path})")
        metric = run.tasks[task].get("metric")
        if not metric:
            raise QueryDataError(f"{run.path / 'eval_history.jsonl'}: task {task!r} has no metric recorded")
        try:
            if qrels_path not in cache:
                cache[qrels_path] = read_qrels(qrels_path)
            per_query = evaluate_run(read_run(trec), cache[qrels_path], metric)
        except (FormatError, ValueError, OSError) as error:
            raise QueryDataError(f"{trec}: {error}") from error
        values[task] = {q: per_query[q] for q in sorted(per_query)}
    return QueryTable(run, run.step, values)


def check_against_validation(table: QueryTable, tolerance: float = 1e-9) -> list[str]:
    """Notes for every task whose per-query mean differs from the value the validation recorded."""
    notes = []
    for task, per_query in table.values.items():
        recorded = table.run.tasks.get(task, {}).get("value")
        if recorded is None or not per_query:
            continue
        mean = math.fsum(per_query.values()) / len(per_query)
        if abs(mean - recorded) > tolerance:
            notes.append(
                f"{table.run.path}: task {task}: the TREC run scores {mean:.6f} but the validation "
                f"recorded {recorded:.6f}; the intervals use the TREC values"
            )
    return notes


def cell_matrix(tables: list[QueryTable]) -> dict[str, np.ndarray]:
    """``{task: values}`` of one cell: each query's value averaged over the cell's runs (seeds).

    Raises:
        QueryDataError: when the runs were validated on different tasks or queries.
    """
    first = tables[0]
    out = {}
    for table in tables[1:]:
        if {t: list(v) for t, v in table.values.items()} != {t: list(v) for t, v in first.values.items()}:
            raise QueryDataError(
                f"{table.run.path} and {first.run.path} were validated on different tasks or queries; "
                "a paired comparison needs the same queries"
            )
    for task in first.values:
        stacked = np.array([list(t.values[task].values()) for t in tables], dtype=np.float64)
        out[task] = stacked.mean(axis=0)
    return out


def average(cell: Mapping[str, np.ndarray]) -> float:
    """The MRB average of a cell: the mean over tasks of the task means."""
    return float(np.mean([values.mean() for values in cell.values()]))


Statistic = Callable[[Mapping[str, np.ndarray]], np.ndarray]


def bootstrap(
    cells: Mapping[str, Mapping[str, np.ndarray]],
    statistics: Mapping[str, Statistic],
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
    confidence: float = CONFIDENCE,
) -> dict[str, dict]:
    """Paired, task-stratified percentile bootstrap of statistics of the cells' MRB averages.

    Args:
        cells: ``{cell: {task: per-query values}}``, every cell with the same tasks and query order
            (each query's values are paired across cells).
        statistics: ``{name: f}`` where ``f({cell: averages})`` maps arrays of cell averages (one
            entry per resample) to an array of the statistic.
        resamples: bootstrap resamples B.
        seed: seed of ``numpy.random.default_rng``; the same seed gives the same intervals.
        confidence: two-sided level of the percentile interval.

    Returns:
        ``{name: {"estimate", "low", "high"}}``: the statistic on the observed averages and the
        ``(1 - confidence) / 2`` and ``(1 + confidence) / 2`` percentiles (numpy's linear
        interpolation) of its B resampled values.

    In every resample, each task's queries are drawn with replacement (as many as the task has), the
    same draw for every cell; a cell's resampled average is the mean over tasks of the means of its
    drawn values.
    """
    names = sorted(cells)
    if not names:
        return {}
    tasks = list(next(iter(cells.values())))
    rng = np.random.default_rng(seed)
    sums = np.zeros((len(names), resamples))
    for task in tasks:  # tasks in a fixed order: the draws depend only on the seed and the data
        matrix = np.stack([cells[name][task] for name in names])  # [cells, queries]
        n = matrix.shape[1]
        chunk = max(1, _DRAWS_PER_CHUNK // max(n, 1))
        means = np.empty((len(names), resamples))
        for start in range(0, resamples, chunk):
            stop = min(resamples, start + chunk)
            idx = rng.integers(0, n, size=(stop - start, n))
            means[:, start:stop] = matrix[:, idx].mean(axis=-1)
        sums += means
    resampled = {name: sums[i] / len(tasks) for i, name in enumerate(names)}
    observed = {name: np.array([average(cells[name])]) for name in names}
    alpha = (1 - confidence) / 2
    out = {}
    for key, statistic in statistics.items():
        values = np.asarray(statistic(resampled), dtype=np.float64)
        low, high = np.percentile(values, [100 * alpha, 100 * (1 - alpha)])
        out[key] = {
            "estimate": float(np.asarray(statistic(observed))[0]),
            "low": float(low),
            "high": float(high),
        }
    return out
