"""The evaluation writer (experiments/eval_writer.py) without a model: exact files, atomic writes.

The module's side (it computes and logs, and writes nothing by itself) is tested with the tiny
model in tests/test_reranker.py; a full disk is simulated by monkeypatching the writes.
"""

from __future__ import annotations

import errno
import json
import math
import os
from types import SimpleNamespace

import pytest

from datamodules.batches import QueryBatch
from datamodules.formats import TaskMeta
from datamodules.metrics import TaskResult, evaluate_run, summarize
from experiments.eval_writer import EvalWriter
from experiments.runs import RunError
from lightning_modules.evaluation import EvalResult, EvalState, EvalTables, task_results

RUNS = {
    "alpha": {"q1": {"d1": 0.5, "d2": 1.5}, "q2": {"d3": -1.0, "d4": -1.0}},
    "beta": {"q9": {"x": 0.1}},
}
# write_run's format: queries sorted, documents by descending score, ties by descending docid.
ALPHA_TREC = (
    "q1 Q0 d2 1 1.5 rerank-lab\n"
    "q1 Q0 d1 2 0.5 rerank-lab\n"
    "q2 Q0 d4 1 -1.0 rerank-lab\n"
    "q2 Q0 d3 2 -1.0 rerank-lab\n"
)


class TableLogger:
    def __init__(self) -> None:
        self.tables: list[dict] = []

    def log_table(self, **kwargs) -> None:
        self.tables.append(kwargs)


def result(stage: str = "val", step: int = 7, runs=RUNS) -> EvalResult:
    reranked = summarize(
        [
            TaskResult("alpha", "text", "ndcg@10", 0.75, 2),
            TaskResult("beta", "image", "recall@5", 0.5, 1),
        ]
    )
    retriever = summarize(
        [
            TaskResult("alpha", "text", "ndcg@10", 0.5, 2),
            TaskResult("beta", "image", "recall@5", 0.25, 1),
        ]
    )
    return EvalResult(stage, step, reranked, retriever, runs)


def fake(tmp_path, outcome: EvalResult | None, sanity: bool = False):
    """A trainer and module with what the writer reads (the module has merged the ranks' runs)."""
    logger = TableLogger()
    trainer = SimpleNamespace(
        default_root_dir=str(tmp_path), is_global_zero=True, sanity_checking=sanity, loggers=[logger]
    )
    module = SimpleNamespace(eval_result=outcome)
    return trainer, module, logger


def files(root) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_a_validation_writes_the_table_trec_runs_history_line_and_logger_table(tmp_path, capsys):
    trainer, module, logger = fake(tmp_path, result())
    EvalWriter().on_validation_end(trainer, module)
    assert files(tmp_path) == [
        "eval_history.jsonl",
        "runs/val-step7/alpha.trec",
        "runs/val-step7/beta.trec",
    ]
    assert (tmp_path / "runs/val-step7/alpha.trec").read_text() == ALPHA_TREC
    assert (tmp_path / "runs/val-step7/beta.trec").read_text() == "q9 Q0 x 1 0.1 rerank-lab\n"
    (line,) = (tmp_path / "eval_history.jsonl").read_text().splitlines()
    record = json.loads(line)
    assert list(record) == ["stage", "step", "tasks", "families", "average", "retriever"]
    assert record["stage"] == "val" and record["step"] == 7
    assert record["tasks"]["alpha"] == {"family": "text", "metric": "ndcg@10", "value": 0.75, "n_queries": 2}
    assert record["families"] == {"text": 0.75, "image": 0.5} and record["average"] == 0.625
    assert record["retriever"]["average"] == 0.375
    out = capsys.readouterr().out
    assert "val at step 7 (reranked vs first-stage retriever)" in out and "alpha" in out
    (table,) = logger.tables
    assert table["key"] == "val/tasks" and table["step"] == 7
    assert table["columns"] == ["task", "family", "metric", "reranked", "retriever", "delta", "queries"]
    assert table["data"] == [
        ["alpha", "text", "ndcg@10", 0.75, 0.5, 0.25, 2],
        ["beta", "image", "recall@5", 0.5, 0.25, 0.25, 1],
    ]
    assert module.eval_result is None  # taken: written once


def test_each_evaluation_appends_one_line_and_test_gets_its_own_folder(tmp_path):
    writer = EvalWriter()
    trainer, module, _ = fake(tmp_path, result(step=0))
    writer.on_validation_end(trainer, module)
    writer.on_validation_end(trainer, module)  # nothing new to write
    module.eval_result = result("test", step=4, runs=None)  # model.write_runs: false
    writer.on_test_end(trainer, module)
    stages = [
        json.loads(line)["stage"] for line in (tmp_path / "eval_history.jsonl").read_text().splitlines()
    ]
    assert stages == ["val", "test"]
    assert not (tmp_path / "runs" / "test-step4").exists()


def test_sanity_checks_and_missing_results_write_nothing(tmp_path, capsys):
    trainer, module, logger = fake(tmp_path, result(), sanity=True)
    EvalWriter().on_validation_end(trainer, module)
    trainer, module, logger = fake(tmp_path, None)
    EvalWriter().on_validation_end(trainer, module)
    assert files(tmp_path) == [] and not logger.tables and capsys.readouterr().out == ""


def test_predictions_are_one_trec_run_per_task(tmp_path, capsys):
    trainer, module, _ = fake(tmp_path, EvalResult("predict", 0, runs=RUNS))
    EvalWriter().on_predict_end(trainer, module)
    assert files(tmp_path) == ["predictions/alpha.trec", "predictions/beta.trec"]
    assert (tmp_path / "predictions/alpha.trec").read_text() == ALPHA_TREC
    assert f"predictions: one TREC run per task in {tmp_path / 'predictions'}" in capsys.readouterr().out


def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_failed_trec_write_leaves_no_partial_file_and_no_history_line(tmp_path, monkeypatch):
    folder = tmp_path / "runs" / "val-step7"
    folder.mkdir(parents=True)
    (folder / "alpha.trec").write_text("q1 Q0 old 1 1.0 earlier\n")  # an earlier file of that name
    monkeypatch.setattr(os, "fsync", _enospc)  # the disk fills before the data is safe
    trainer, module, _ = fake(tmp_path, result())
    with pytest.raises(RunError, match=r"cannot write .*alpha\.trec: No space left on device"):
        EvalWriter().on_validation_end(trainer, module)
    monkeypatch.undo()
    assert files(tmp_path) == ["runs/val-step7/alpha.trec"]  # no temporary file, nothing else
    assert (folder / "alpha.trec").read_text() == "q1 Q0 old 1 1.0 earlier\n"  # kept whole
    assert not (tmp_path / "eval_history.jsonl").exists()  # the line comes after the runs


def test_a_failed_history_append_leaves_no_half_line(tmp_path, monkeypatch):
    history = tmp_path / "eval_history.jsonl"
    history.write_text('{"stage": "val", "step": 0}\n')
    real_write = os.write

    def half_then_full(fd, data):
        if len(data) > 20:
            real_write(fd, data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", half_then_full)
    trainer, module, _ = fake(tmp_path, result(runs=None))
    with pytest.raises(RunError, match=r"cannot append to .*eval_history\.jsonl: No space left"):
        EvalWriter().on_validation_end(trainer, module)
    monkeypatch.undo()
    assert history.read_text() == '{"stage": "val", "step": 0}\n'


def test_validation_scores_the_merged_runs_like_the_offline_scorer():
    """Validation records runs per rank, merges them in one gather and scores them with
    evaluate_run: two ranks' halves give the numbers of one rank holding everything, to the bit."""
    metas = {"alpha": TaskMeta("alpha", "T2T", "instruction", "ndcg@10")}
    qrels = {"q1": {"d1": 2, "d2": 1}, "q2": {"d4": 1}, "q3": {"d5": 0}}
    queries = [
        QueryBatch("alpha", "q1", ["d1", "d2", "d7"], [3.0, 2.0, 1.0], qrels["q1"], []),
        QueryBatch("alpha", "q2", ["d3", "d4"], [2.0, 1.0], qrels["q2"], [], skipped=["c:1: bad"]),
        QueryBatch("alpha", "q3", ["d5"], [1.0], qrels["q3"], []),  # no relevant document: skipped
    ]
    scores = [[0.1, 1 / 3, 0.2], [-1.0, -1.0], [0.5]]
    whole, halves = EvalState(metas), [EvalState(metas), EvalState(metas)]
    for number, (query, values) in enumerate(zip(queries, scores, strict=True)):
        whole.add(query, values)
        halves[number % 2].add(query, values)
    merged = EvalTables().merged([state.tables for state in halves])
    assert merged == whole.tables and merged.skipped == {"alpha": {"q2": 1}}
    (reranked,), (first,) = task_results(metas, merged)
    expected = evaluate_run(whole.tables.runs["alpha"], {q: qrels[q] for q in ("q1", "q2")}, "ndcg@10")
    assert reranked.value == math.fsum(expected.values()) / 2 and reranked.n_queries == 2
    assert first.value == (1.0 + 1 / math.log2(3)) / 2  # q1 ideal, q2 relevant at rank 2
    assert task_results(metas, EvalTables()) == ([], [])  # nothing seen (partial validation)
    bad = EvalState(metas)
    bad.add(queries[0], [0.1, float("nan"), 0.2])
    with pytest.raises(ValueError, match="finite"):
        task_results(metas, bad.tables)
