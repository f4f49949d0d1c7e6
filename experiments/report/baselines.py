"""The baselines every probe report carries, query by query on the runs' own validation tasks.

* ``first stage``: the first-stage retriever's own order of the candidates the reranker scored (each
  task's ``candidates.trec`` cut at the runs' ``data.eval_top_k``, :func:`score_model.first_stage_runs`);
* ``random order``: the exact expectation of the metric when those same candidates are put in a
  uniformly random order (no sampling: closed forms below);
* ``zero-shot``: the untrained base model as a judge, when a folder of its ``<task>.trec`` runs is given
  (``experiments.real --prepare-only`` writes one; ``experiments.evaluate --model`` scores any model).

A trained reranker that does not beat the random order of its own candidates has learnt nothing the
metric can see; the report flags it and its validity gates use these tables (docs/science.md §7).

Expectations under a uniformly random order of K candidates, R of them relevant, cut-off k:

* nDCG@k is linear in the gains: each relevant candidate d sits at each rank with probability 1/K, so
  E[DCG@k] = sum_d grade_d * (1/K) * sum_{r=1..min(k,K)} 1/log2(r+1); the ideal DCG is fixed (it comes
  from all judged documents, as trec_eval's), so E[nDCG@k] = E[DCG@k] / IDCG@k.
* recall@k: each relevant candidate is in the top k with probability min(k,K)/K.
* mrr@k: the first relevant candidate is at rank r with probability C(K-r, R-1) / C(K, R).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

from datamodules.metrics import MetricSpec, evaluate_run, parse_metric
from datamodules.trec import FormatError, read_run

from .queries import QueryDataError

PerQuery = dict[str, dict[str, float]]  # {task: {query_id: value}}
FIRST_STAGE, RANDOM_ORDER, ZERO_SHOT = "first stage", "random order", "zero-shot"


def random_order_value(candidates: list[str], grades: Mapping[str, int], spec: MetricSpec) -> float:
    """Exact expected ``spec`` of a uniformly random order of ``candidates`` (qrels ``grades``)."""
    relevant = [grades[d] for d in candidates if grades.get(d, 0) > 0]
    total = [g for g in grades.values() if g > 0]
    K, R = len(candidates), len(relevant)
    if not total:
        raise ValueError("a query without a relevant document has no value")
    if K == 0 or R == 0:
        return 0.0
    top = min(spec.k, K)
    if spec.name == "ndcg":
        ideal = sum(g / math.log2(i + 2) for i, g in enumerate(sorted(total, reverse=True)[: spec.k]))
        discount = sum(1 / math.log2(r + 1) for r in range(1, top + 1)) / K
        return sum(relevant) * discount / ideal
    if spec.name == "recall":
        return R * top / K / len(total)
    if spec.name == "mrr":
        return sum(math.comb(K - r, R - 1) / math.comb(K, R) / r for r in range(1, min(top, K - R + 1) + 1))
    raise ValueError(f"no random-order expectation for {spec}")


def baseline_tables(
    eval_root: Path, metrics: Mapping[str, str], top_k: int, zero_shot: Path | None = None
) -> dict[str, PerQuery]:
    """``{baseline: {task: {qid: value}}}`` for the tasks of ``metrics`` (``{task: metric}``).

    Raises:
        QueryDataError: a task that cannot be read, or a zero-shot folder without a task's run (named).
    """
    from experiments.score_model import load_tasks, ranked_candidates

    try:
        tasks = load_tasks(eval_root, sorted(metrics))
    except (OSError, ValueError, FormatError) as error:
        raise QueryDataError(f"{eval_root}: the baselines need the runs' tasks: {error}") from error
    out: dict[str, PerQuery] = {FIRST_STAGE: {}, RANDOM_ORDER: {}}
    if zero_shot is not None:
        out[ZERO_SHOT] = {}
    for task in tasks:
        spec = parse_metric(metrics[task.name])
        ranked = ranked_candidates(task, top_k)
        first = {q: {d: s for d, s in docs} for q, docs in ranked.items()}
        out[FIRST_STAGE][task.name] = evaluate_run(first, task.qrels, spec)
        out[RANDOM_ORDER][task.name] = {
            q: random_order_value([d for d, _ in ranked.get(q, [])], task.qrels[q], spec)
            for q in out[FIRST_STAGE][task.name]
        }
        if zero_shot is not None:
            path = zero_shot / f"{task.name}.trec"
            try:
                out[ZERO_SHOT][task.name] = evaluate_run(read_run(path), task.qrels, spec)
            except (OSError, FormatError, ValueError) as error:
                raise QueryDataError(
                    f"{path}: the zero-shot judge's run of task {task.name}: {error}"
                ) from error
    return out
