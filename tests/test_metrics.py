"""Metrics against pytrec_eval (an independent trec_eval oracle), hand-computed cases, summaries.

``python tests/test_metrics.py`` runs :func:`benchmark` (40 tasks x 1,000 queries x 100 candidates).
"""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest
import pytrec_eval
import torch

from datamodules import metrics
from datamodules.metrics import (
    MetricSpec,
    TaskResult,
    evaluate_run,
    format_table,
    parse_metric,
    query_metric,
    summarize,
)
from datamodules.ranking import ranked

ORACLE_METRICS = [
    "ndcg@1",
    "ndcg@3",
    "ndcg@10",
    "recall@1",
    "recall@5",
    "recall@20",
    "mrr@1",
    "mrr@3",
    "mrr@1000",
]


def trec_order(docs: dict[str, float]) -> list[str]:
    """trec_eval's ranking: score descending, then document id descending."""
    return [d for d, _ in ranked(docs)]


def oracle(run: dict, qrels: dict, metric: str) -> dict[str, float]:
    """pytrec_eval values for our metric names, on the qrels queries with a relevant document.

    pytrec_eval omits qrels queries missing from the run; those are 0 by our definition.
    """
    spec = parse_metric(metric)
    if spec.name == "mrr":  # recip_rank has no cut-off: cut the run instead
        run = {q: {d: docs[d] for d in trec_order(docs)[: spec.k]} for q, docs in run.items()}
        measure = "recip_rank"
    else:
        measure = f"{'ndcg_cut' if spec.name == 'ndcg' else 'recall'}_{spec.k}"
    results = pytrec_eval.RelevanceEvaluator(qrels, {measure}).evaluate(run)
    judged = [q for q, rels in qrels.items() if any(g > 0 for g in rels.values())]
    return {q: results[q][measure] if q in results else 0.0 for q in judged}


def random_case(seed: int, n_queries: int = 150) -> tuple[dict, dict]:
    """Graded qrels (-1..3) and a run with many tied scores, missing queries, unretrieved relevant
    documents, queries without relevant documents and run-only queries."""
    rng = random.Random(seed)
    run: dict[str, dict[str, float]] = {}
    qrels: dict[str, dict[str, int]] = {}
    for q in range(n_queries):
        qid = f"q{q}"
        # ids of different lengths and cases, so string order differs from numeric order
        pool = [rng.choice(["d", "D", "doc", "x"]) + str(rng.randrange(200)) for _ in range(40)]
        pool = list(dict.fromkeys(pool))
        candidates = rng.sample(pool, rng.randint(1, min(30, len(pool))))
        if rng.random() > 0.1:  # 10% of the queries are missing from the run
            run[qid] = {d: round(rng.gauss(0, 1), 1) for d in candidates}
        if rng.random() > 0.05:  # 5% of the run queries are not in the qrels
            judged = rng.sample(pool, rng.randint(1, 10))
            qrels[qid] = {d: rng.choice([-1, 0, 0, 1, 2, 3]) for d in judged}
    return run, qrels


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("metric", ORACLE_METRICS)
def test_evaluate_run_matches_pytrec_eval(seed: int, metric: str) -> None:
    run, qrels = random_case(seed)
    ours, expected = evaluate_run(run, qrels, metric), oracle(run, qrels, metric)
    assert list(ours) == list(expected)
    for qid, value in expected.items():
        assert ours[qid] == pytest.approx(value, abs=1e-9, rel=0), qid


def test_random_case_exercises_the_edge_cases() -> None:
    run, qrels = random_case(0)
    judged = {q for q, rels in qrels.items() if any(g > 0 for g in rels.values())}
    assert judged - set(run), "no judged query missing from the run"
    assert set(qrels) - judged, "no query without relevant documents"
    assert set(run) - set(qrels), "no run-only query"
    assert any(g > 0 and d not in run.get(q, {}) for q, rels in qrels.items() for d, g in rels.items())
    assert any(len(set(docs.values())) < len(docs) for docs in run.values()), "no ties"


@pytest.mark.parametrize("depth", [1, 3, 7])
def test_depth_is_the_same_as_cutting_the_run(depth: int) -> None:
    run, qrels = random_case(7)
    cut = {q: {d: docs[d] for d in trec_order(docs)[:depth]} for q, docs in run.items()}
    for metric in ("ndcg@5", "recall@5", "mrr@5"):
        ours = evaluate_run(run, qrels, metric, depth=depth)
        expected = oracle(cut, qrels, metric)
        assert ours == pytest.approx(expected, abs=1e-9, rel=0)


def test_chunked_comparison_gives_the_same_values(monkeypatch: pytest.MonkeyPatch) -> None:
    run, qrels = random_case(5)
    expected = {m: evaluate_run(run, qrels, m) for m in ("ndcg@10", "recall@5", "mrr@3")}
    monkeypatch.setattr(metrics, "_CHUNK", 7)  # smaller than many queries: chunks of one hit too
    for metric, values in expected.items():
        assert evaluate_run(run, qrels, metric) == values


@pytest.mark.parametrize("metric", ORACLE_METRICS)
def test_query_metric_matches_evaluate_run(metric: str) -> None:
    run, qrels = random_case(3, n_queries=40)
    expected = evaluate_run(run, qrels, metric)
    for qid, value in expected.items():
        docs = run.get(qid, {})
        ids, scores = list(docs), list(docs.values())
        assert query_metric(metric, ids, scores, qrels[qid]) == pytest.approx(value, abs=1e-12)
        assert query_metric(metric, ids, np.array(scores), qrels[qid]) == pytest.approx(value, abs=1e-12)


def test_query_metric_accepts_low_precision_tensors() -> None:
    scores = torch.tensor([0.5, 2.0, 2.0, -1.0], dtype=torch.bfloat16)
    ids, relevance = ["a", "b", "c", "d"], {"b": 1, "d": 2}
    # order: c, b (tie -> larger id first), a, d
    assert query_metric("mrr@10", ids, scores, relevance) == pytest.approx(1 / 2)
    assert query_metric(MetricSpec("recall", 2), ids, scores, relevance) == pytest.approx(1 / 2)


def test_hand_computed_ndcg_recall_mrr() -> None:
    qrels = {"q": {"a": 2, "b": 1, "c": 0, "d": 3, "e": -2}}
    run = {"q": {"e": 0.95, "a": 0.9, "c": 0.8, "b": 0.7}}  # d (grade 3) is never retrieved
    # ranks: e1 a2 c3 b4. DCG@3 = 2/log2(3); ideal@3 = 3/1 + 2/log2(3) + 1/2
    dcg3 = 2 / math.log2(3)
    assert evaluate_run(run, qrels, "ndcg@3")["q"] == pytest.approx(dcg3 / (3 + 2 / math.log2(3) + 0.5))
    dcg4 = dcg3 + 1 / math.log2(5)
    assert evaluate_run(run, qrels, "ndcg@4")["q"] == pytest.approx(dcg4 / (3 + 2 / math.log2(3) + 0.5))
    assert evaluate_run(run, qrels, "recall@3")["q"] == pytest.approx(1 / 3)
    assert evaluate_run(run, qrels, "recall@100")["q"] == pytest.approx(2 / 3)
    assert evaluate_run(run, qrels, "mrr@10")["q"] == pytest.approx(1 / 2)
    assert evaluate_run(run, qrels, "mrr@1")["q"] == 0.0
    assert evaluate_run(run, qrels, "recall@100", depth=3)["q"] == pytest.approx(1 / 3)


def test_ties_rank_the_larger_document_id_first() -> None:
    qrels = {"q": {"B": 1}}
    # code-point (= UTF-8 byte) order: "é" > "a" > "B", so B is third
    run = {"q": {"a": 1.0, "B": 1.0, "é": 1.0}}
    assert evaluate_run(run, qrels, "mrr@10")["q"] == pytest.approx(1 / 3)
    assert oracle(run, qrels, "mrr@1000")["q"] == pytest.approx(1 / 3)
    run = {"q": {"B": 1.0, "A": 1.0, "C": 0.5}}
    assert evaluate_run(run, qrels, "mrr@1")["q"] == 1.0


def test_missing_and_unjudged_queries() -> None:
    qrels = {"q1": {"a": 1}, "q2": {"a": 0, "b": -1}, "q3": {"c": 2}}
    run = {"q1": {"a": 1.0}, "q2": {"a": 1.0}, "q9": {"a": 1.0}}
    assert evaluate_run(run, qrels, "ndcg@10") == {"q1": 1.0, "q3": 0.0}
    assert evaluate_run({}, qrels, "recall@10") == {"q1": 0.0, "q3": 0.0}
    assert evaluate_run(run, {}, "recall@10") == {}
    assert math.isnan(query_metric("ndcg@10", ["a"], [1.0], qrels["q2"]))


@pytest.mark.parametrize("spec", ["ndcg@10", "NDCG@10", " Recall@5 ", "mrr@1"])
def test_parse_metric_accepts(spec: str) -> None:
    parsed = parse_metric(spec)
    assert str(parsed) == spec.strip().lower()
    assert parsed == MetricSpec(spec.strip().lower().split("@")[0], int(spec.split("@")[1]))


@pytest.mark.parametrize("spec", ["ndcg", "ndcg@0", "ndcg@-1", "map@10", "ndcg@k", "recall@5.0", "", "p@5"])
def test_parse_metric_rejects(spec: str) -> None:
    with pytest.raises(ValueError, match=r"ndcg@k, recall@k or mrr@k"):
        parse_metric(spec)


def test_bad_inputs_raise() -> None:
    with pytest.raises(ValueError, match="scores"):
        query_metric("ndcg@10", ["a", "b"], [1.0], {"a": 1})
    with pytest.raises(ValueError, match="repeat"):
        query_metric("ndcg@10", ["a", "a"], [1.0, 2.0], {"a": 1})
    with pytest.raises(ValueError, match="finite"):
        query_metric("ndcg@10", ["a", "b"], [1.0, math.nan], {"a": 1})
    with pytest.raises(ValueError, match="finite"):
        evaluate_run({"q": {"a": math.inf}}, {"q": {"a": 1}}, "ndcg@10")
    with pytest.raises(ValueError, match="depth"):
        evaluate_run({}, {}, "ndcg@10", depth=0)


def test_summary_json_and_table() -> None:
    results = [
        TaskResult("cirr", "IT2I", "recall@5", 0.5, 100),
        TaskResult("flickr", "T2I", "recall@5", 0.25, 200),
        TaskResult("coco", "T2I", "recall@5", 0.75, 50),
    ]
    summary = summarize(results)
    assert summary.to_dict() == {
        "tasks": {
            "cirr": {"family": "IT2I", "metric": "recall@5", "value": 0.5, "n_queries": 100},
            "flickr": {"family": "T2I", "metric": "recall@5", "value": 0.25, "n_queries": 200},
            "coco": {"family": "T2I", "metric": "recall@5", "value": 0.75, "n_queries": 50},
        },
        "families": {"IT2I": 0.5, "T2I": 0.5},
        "average": 0.5,
    }
    assert json.loads(summary.to_json()) == summary.to_dict()

    baseline = summarize([TaskResult("cirr", "IT2I", "recall@5", 0.375, 100)])
    table = format_table(summary, baseline)
    lines = table.splitlines()
    assert lines[0].split() == ["task", "family", "metric", "value", "retriever", "delta", "n"]
    assert lines[2].split() == ["cirr", "IT2I", "recall@5", "0.5000", "0.3750", "+0.1250", "100"]
    assert lines[3].split() == ["flickr", "T2I", "recall@5", "0.2500", "-", "-", "200"]
    assert lines[-3].split() == ["family", "mean", "(1", "task)", "IT2I", "0.5000", "0.3750", "+0.1250"]
    assert lines[-2].split() == ["family", "mean", "(2", "tasks)", "T2I", "0.5000", "-", "-"]
    assert lines[-1].split() == ["average", "(3", "tasks)", "0.5000", "0.3750", "+0.1250"]
    assert format_table(summary).splitlines()[2].split() == ["cirr", "IT2I", "recall@5", "0.5000", "100"]


def test_task_result_from_per_query_and_summary_errors() -> None:
    result = TaskResult.from_per_query("t", "T2T", "NDCG@10", {"a": 1.0, "b": 0.0, "c": 0.5})
    assert result == TaskResult("t", "T2T", "ndcg@10", 0.5, 3)
    with pytest.raises(ValueError, match="no query"):
        TaskResult.from_per_query("t", "T2T", "ndcg@10", {})
    with pytest.raises(ValueError, match="twice"):
        summarize([result, result])
    with pytest.raises(ValueError, match="no task"):
        summarize([])
    with pytest.raises(ValueError, match="non-finite"):
        summarize([TaskResult("t", "T2T", "ndcg@10", math.nan, 1)])
