"""Score a model on every task of an MRB root: ``experiments.evaluate --model`` (no config needed).

    python -m experiments.evaluate --data MRB_ROOT --model DIR_OR_HUB_ID [--json OUT] [--top-k 100]
        [--fusion-alpha A] [--write-runs DIR] [--batch-size N] [--max-length N] [--dtype float32]

``--model`` is an exported reranker (``rerank_config.json``: its objective's score, judge prompt
and budgets) or any base checkpoint (zero-shot judge: z_yes - z_no with the default prompt), a
folder or a Hub id, loaded by :class:`lightning_modules.inference.Reranker`, the code path of
training and export. Each query's top-K first-stage candidates (``candidates.trec``, ordered by
score, ties by document id: the validation order) are reranked with the task's instruction;
candidates below K are not in the run, as in validation. The metrics are those of ``--run``
(trec_eval semantics) and ``--json`` writes the same JSON. ``--fusion-alpha A`` ranks by
A·minmax(reranker) + (1-A)·minmax(first stage) per query, as ``model.fusion_alpha`` does in
validation. ``--write-runs DIR`` keeps the reranker's own scores as ``DIR/<task>.trec``.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from datamodules.datamodule import eval_queries
from datamodules.formats import MRBTask, list_tasks, load_task
from datamodules.metrics import Summary, TaskResult, evaluate_run, parse_metric, summarize
from datamodules.ranking import fuse_runs
from datamodules.trec import write_run

Run = dict[str, dict[str, float]]


def ranked_candidates(task: MRBTask, top_k: int) -> dict[str, list[tuple[str, float]]]:
    """Each query's top-K candidates with first-stage scores, in validation order
    (:func:`datamodules.datamodule.eval_queries`)."""
    return {
        item.qid: list(zip(item.doc_ids, item.first_stage, strict=True))
        for item in eval_queries([task], top_k)
    }


def first_stage_runs(tasks: list[MRBTask], top_k: int) -> dict[str, Run]:
    """Each task's first-stage run cut at ``top_k``: the candidates a reranker scores (validation
    order, :func:`ranked_candidates`), with their first-stage scores."""
    return {t.name: {q: dict(ranked) for q, ranked in ranked_candidates(t, top_k).items()} for t in tasks}


# ``fuse(run, first_stage, alpha)``: the per-query fusion of validation (datamodules/ranking.py).
fuse = fuse_runs


class Progress:
    """A progress line at most every ``every`` seconds, and at the end: queries, pairs, rate, ETA."""

    def __init__(self, total: int, report: Callable[[str], None] | None, every: float = 30.0) -> None:
        self.total, self.report, self.every = total, report, every
        self.done = self.pairs = 0
        self.start = self.last = time.monotonic()

    def step(self, pairs: int) -> None:
        self.done += 1
        self.pairs += pairs
        now = time.monotonic()
        if self.report is None or (now - self.last <= self.every and self.done != self.total):
            return
        self.last = now
        rate = self.pairs / max(now - self.start, 1e-9)
        eta = (self.total - self.done) * (now - self.start) / self.done
        self.report(
            f"scored {self.done}/{self.total} queries, {self.pairs} pairs, {rate:.1f} pairs/s, ETA {eta:.0f} s"
        )


def score_tasks(
    reranker,
    tasks: list[MRBTask],
    top_k: int = 100,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Run]:
    """The reranker's scores of every task's top-K candidates: ``{task: {qid: {docid: score}}}``.

    The queries are validation's (:func:`~datamodules.datamodule.eval_queries`: same queries, same
    candidates, same order), each scored by ``reranker.score`` with its task's instruction."""
    by_name = {task.name: task for task in tasks}
    runs: dict[str, Run] = {task.name: {} for task in tasks}
    items = eval_queries(tasks, top_k)
    meter = Progress(len(items), progress)
    for item in items:
        task = by_name[item.task]
        scores = []
        if item.doc_ids:
            documents = [task.corpus[d] for d in item.doc_ids]
            scores = reranker.score(task.queries[item.qid], documents, instruction=task.meta.instruction)
        runs[item.task][item.qid] = dict(zip(item.doc_ids, scores, strict=True))
        meter.step(len(item.doc_ids))
    return runs


def summarize_runs(tasks: list[MRBTask], runs: Mapping[str, Run]) -> Summary:
    """Task metrics (trec_eval semantics), family means and the average of ``runs``."""
    results = []
    for task in tasks:
        metric = parse_metric(task.meta.metric)
        per_query = evaluate_run(runs[task.name], task.qrels, metric)
        if not per_query:
            raise ValueError(f"{task.root / 'qrels.tsv'}:1: no query has a relevant document (relevance > 0)")
        results.append(TaskResult.from_per_query(task.name, task.meta.family, str(metric), per_query))
    return summarize(results)


def load_tasks(data: Path, names: list[str] | None = None) -> list[MRBTask]:
    """The MRB tasks under ``data`` (strict reading: the first problem is a ``file:line`` error)."""
    tasks = []
    for folder in list_tasks(data, names):
        task = load_task(folder)
        if not (folder / "candidates.trec").is_file():
            raise ValueError(f"{folder / 'candidates.trec'}: missing; a model reranks first-stage candidates")
        tasks.append(task)
    return tasks


def evaluate_model(
    data: Path,
    model: str,
    tasks: list[str] | None = None,
    top_k: int = 100,
    fusion_alpha: float | None = None,
    write_runs: Path | None = None,
    **reranker_args,
) -> Summary:
    """Score ``model`` on the tasks under ``data``; see the module docstring."""
    from lightning_modules.inference import Reranker

    if top_k < 1:
        raise ValueError(f"--top-k must be >= 1, got {top_k}")
    if fusion_alpha is not None and not 0.0 <= fusion_alpha <= 1.0:
        raise ValueError(f"--fusion-alpha must be within [0, 1], got {fusion_alpha}")
    loaded = load_tasks(data, tasks)
    print(f"loading {model}", file=sys.stderr, flush=True)
    reranker = Reranker.from_pretrained(model, **{k: v for k, v in reranker_args.items() if v is not None})
    runs = score_tasks(
        reranker, loaded, top_k, progress=lambda line: print(line, file=sys.stderr, flush=True)
    )
    if write_runs is not None:
        for name, run in runs.items():
            write_run(write_runs / f"{name}.trec", run)
    if fusion_alpha is not None:
        runs = {task.name: fuse_runs(runs[task.name], task.candidates, fusion_alpha) for task in loaded}
    return summarize_runs(loaded, runs)


def add_arguments(parser) -> None:
    """The ``--model`` options of ``experiments.evaluate``."""
    group = parser.add_argument_group("scoring a model (instead of --run)")
    group.add_argument("--model", help="exported reranker or base checkpoint: a folder or a Hub id")
    group.add_argument("--top-k", type=int, default=100, help="candidates reranked per query (default 100)")
    group.add_argument("--fusion-alpha", type=float, help="rank by A*reranker + (1-A)*first stage (min-max)")
    group.add_argument("--write-runs", type=Path, help="write the reranker's scores as DIR/<task>.trec")
    group.add_argument("--batch-size", type=int, help="pairs per forward (default 4 on CPU, 32 on CUDA)")
    group.add_argument("--max-length", type=int, help="tokens per pair (default: the export's, else 3200)")
    group.add_argument("--dtype", default="float32", help="model dtype (float32 or bfloat16)")
    group.add_argument("--device", help="cpu, cuda, ... (default cuda when available)")
    group.add_argument(
        "--no-verify",
        dest="verify",
        action="store_false",
        help="load an export whose files differ from the checksums recorded at export (checksums.sha256)",
    )
