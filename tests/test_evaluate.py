"""`python -m experiments.evaluate` on a hand-made two-task MRB folder."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from experiments.evaluate import main

# alpha (T2I, recall@2): q3 has no relevant document and is skipped.
# beta (T2T, ndcg@3): p2 is judged but missing from the reranked run (scores 0).
TASKS = {
    "alpha": {
        "meta": {"family": "T2I", "instruction": "Find the image.", "metric": "recall@2"},
        "queries": ["q1", "q2", "q3"],
        "corpus": ["d1", "d2", "d3", "d4", "d5"],
        "qrels": "q1 0 d1 1\nq1 0 d2 0\nq2 0 d3 2\nq2 0 d4 1\nq3 0 d5 0\n",
        "candidates": {
            "q1": {"d2": 0.9, "d1": 0.8, "d3": 0.7},
            "q2": {"d1": 0.9, "d2": 0.8, "d3": 0.7, "d4": 0.1},
            "q3": {"d5": 0.3},
        },
        "rerank": {"q1": {"d1": 2.0, "d2": 1.0}, "q2": {"d3": 0.5, "d1": 0.4, "d4": 0.6}},
    },
    "beta": {
        "meta": {"family": "T2T", "instruction": "Find the passage.", "metric": "ndcg@3"},
        "queries": ["p1", "p2"],
        "corpus": ["e1", "e2", "e3", "e4"],
        "qrels": "p1 0 e1 3\np1 0 e2 1\np2 0 e3 1\n",
        "candidates": {"p1": {"e4": 0.9, "e1": 0.5, "e2": 0.5}, "p2": {"e4": 0.2, "e3": 0.1}},
        "rerank": {"p1": {"e2": 0.9, "e1": 0.5, "e4": 0.1}},
    },
}
LOG3 = math.log2(3)
IDEAL_P1 = 3 + 1 / LOG3
RERANK = {  # hand-computed
    "alpha": 0.5 * (1.0 + 1.0),  # q1: d1 in top 2 -> 1; q2: d4, d3 in top 2 -> 2/2
    "beta": 0.5 * ((1 + 3 / LOG3) / IDEAL_P1 + 0.0),
}
FIRST_STAGE = {
    "alpha": 0.5 * (1.0 + 0.0),  # q2: d1, d2 in top 2
    # p1 ranks e4, then the tie e2 > e1 by id: 1/log2(3) + 3/2; p2: e3 second: 1/log2(3)
    "beta": 0.5 * ((1 / LOG3 + 3 / 2) / IDEAL_P1 + 1 / LOG3),
}


def write_trec(path: Path, run: dict[str, dict[str, float]], prefix: str = "") -> None:
    with open(path, "a", encoding="utf-8") as handle:
        for qid, docs in run.items():
            for rank, (doc, score) in enumerate(docs.items(), start=1):
                handle.write(f"{prefix}{qid} Q0 {doc} {rank} {score} test\n")


@pytest.fixture
def mrb(tmp_path: Path) -> Path:
    root = tmp_path / "mrb"
    for name, task in TASKS.items():
        folder = root / name
        folder.mkdir(parents=True)
        (folder / "task.json").write_text(json.dumps(task["meta"]))
        (folder / "queries.jsonl").write_text(
            "".join(json.dumps({"id": q, "text": q}) + "\n" for q in task["queries"])
        )
        (folder / "corpus.jsonl").write_text(
            "".join(json.dumps({"id": d, "text": d}) + "\n" for d in task["corpus"])
        )
        (folder / "qrels.tsv").write_text(task["qrels"])
        write_trec(folder / "candidates.trec", task["candidates"])
    return root


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "runs"
    folder.mkdir()
    for name, task in TASKS.items():
        write_trec(folder / f"{name}.trec", task["rerank"])
    return folder


def expected_json(values: dict[str, float]) -> dict:
    return {
        "tasks": {
            "alpha": {"family": "T2I", "metric": "recall@2", "value": values["alpha"], "n_queries": 2},
            "beta": {"family": "T2T", "metric": "ndcg@3", "value": values["beta"], "n_queries": 2},
        },
        "families": {"T2I": values["alpha"], "T2T": values["beta"]},
        "average": (values["alpha"] + values["beta"]) / 2,
    }


def assert_close(actual: object, expected: object) -> None:
    """Equal structure, numbers equal to 1e-12."""
    if isinstance(expected, dict):
        assert isinstance(actual, dict) and list(actual) == list(expected)
        for key, value in expected.items():
            assert_close(actual[key], value)
    elif isinstance(expected, float):
        assert actual == pytest.approx(expected, abs=1e-12)
    else:
        assert actual == expected


def run_main(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_folder_run(mrb: Path, run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out" / "scores.json"
    code, stdout, _ = run_main(["--data", str(mrb), "--run", str(run_dir), "--json", str(out)], capsys)
    assert code == 0
    assert_close(json.loads(out.read_text()), expected_json(RERANK))
    assert "alpha" in stdout and "average (2 tasks)" in stdout


def _combined_run(tmp_path: Path) -> Path:
    """Every task's reranked run in one TREC file, query ids prefixed with ``<task>/``."""
    combined = tmp_path / "all.trec"
    for name, task in TASKS.items():
        write_trec(combined, task["rerank"], prefix=f"{name}/")
    return combined


def test_single_file_run_scores_like_the_folder(
    mrb: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    combined = _combined_run(tmp_path)
    out = tmp_path / "scores.json"
    assert run_main(["--data", str(mrb), "--run", str(combined), "--json", str(out)], capsys)[0] == 0
    assert_close(json.loads(out.read_text()), expected_json(RERANK))


def test_first_stage_and_depth(mrb: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "first.json"
    assert run_main(["--data", str(mrb), "--run", "first-stage", "--json", str(out)], capsys)[0] == 0
    assert_close(json.loads(out.read_text()), expected_json(FIRST_STAGE))

    out = tmp_path / "top1.json"
    args = [
        "--data",
        str(mrb),
        "--run",
        "first-stage",
        "--depth",
        "1",
        "--tasks",
        "alpha",
        "--json",
        str(out),
    ]
    assert run_main(args, capsys)[0] == 0
    result = json.loads(out.read_text())
    assert list(result["tasks"]) == ["alpha"]
    assert result["average"] == 0.0  # neither q1 nor q2 has a relevant document first


def test_unknown_task(mrb: Path, run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_main(["--data", str(mrb), "--run", str(run_dir), "--tasks", "alpha,gamma"], capsys)
    assert code == 2 and "unknown task" in err and "gamma" in err

    write_trec(run_dir / "gamma.trec", {"q1": {"d1": 1.0}})
    code, _, err = run_main(["--data", str(mrb), "--run", str(run_dir)], capsys)
    assert code == 2 and f"{run_dir / 'gamma.trec'}:1: unknown task 'gamma'" in err
    assert run_main(["--data", str(mrb), "--run", str(run_dir), "--tasks", "alpha,beta"], capsys)[0] == 0


def test_unknown_task_or_bare_id_in_single_file(
    mrb: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    combined = _combined_run(tmp_path)
    write_trec(combined, {"q1": {"d1": 1.0}}, prefix="gamma/")
    n_lines = len(combined.read_text().splitlines())
    code, _, err = run_main(["--data", str(mrb), "--run", str(combined)], capsys)
    assert code == 2 and f"{combined}:{n_lines}: unknown task 'gamma'" in err

    write_trec(combined, {"q1": {"d1": 1.0}})
    code, _, err = run_main(["--data", str(mrb), "--run", str(combined), "--tasks", "alpha,beta"], capsys)
    assert code == 2 and f"{combined}:{n_lines + 1}: query id 'q1' is not '<task>/<qid>'" in err


def test_unknown_query_id(mrb: Path, run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_trec(run_dir / "alpha.trec", {"q9": {"d1": 1.0}})
    n_lines = len((run_dir / "alpha.trec").read_text().splitlines())
    code, _, err = run_main(["--data", str(mrb), "--run", str(run_dir)], capsys)
    assert code == 2
    assert (
        f"{run_dir / 'alpha.trec'}:{n_lines}: query id 'q9' is not in {mrb / 'alpha' / 'queries.jsonl'}"
        in err
    )


def test_malformed_line(mrb: Path, run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = run_dir / "beta.trec"
    lines = path.read_text().splitlines()
    lines[1] = "p1 Q0 e1 2 0.5"  # tag missing
    path.write_text("\n".join(lines) + "\n")
    code, _, err = run_main(["--data", str(mrb), "--run", str(run_dir)], capsys)
    assert code == 2 and f"{path}:2: expected 'qid Q0 docid rank score tag'" in err


def test_missing_run_file(mrb: Path, run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (run_dir / "beta.trec").unlink()
    code, _, err = run_main(["--data", str(mrb), "--run", str(run_dir)], capsys)
    assert code == 2 and f"{run_dir / 'beta.trec'}: missing run file for task 'beta'" in err
    code, _, err = run_main(["--data", str(mrb), "--run", str(run_dir / "nowhere")], capsys)
    assert code == 2 and "run not found" in err


def test_existing_json_is_never_clobbered(
    mrb: Path, run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "precious.json"
    out.write_text("user data\n")
    code, stdout, err = run_main(["--data", str(mrb), "--run", str(run_dir), "--json", str(out)], capsys)
    assert code == 2 and f"{out}: already exists" in err and stdout == ""
    assert out.read_text() == "user data\n"
    args = ["--data", str(mrb), "--run", str(run_dir), "--json", str(out), "--overwrite"]
    assert run_main(args, capsys)[0] == 0
    assert_close(json.loads(out.read_text()), expected_json(RERANK))


def test_judged_queries_missing_from_the_run_are_warned_with_counts(
    mrb: Path, run_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run_main(["--data", str(mrb), "--run", str(run_dir)], capsys)
    assert code == 0
    assert err.splitlines() == [
        "warning: task beta: 1 of 2 judged queries are not in the run and score 0 (first: 'p2'); "
        "rerank every query, or pass the run that covers them"
    ]


def test_run_documents_outside_the_corpus_are_warned_at_their_line(
    mrb: Path, run_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_trec(run_dir / "alpha.trec", {"q1": {"dZ": 0.1, "dY": 0.2}})
    n_lines = len((run_dir / "alpha.trec").read_text().splitlines())
    code, _, err = run_main(["--data", str(mrb), "--run", str(run_dir)], capsys)
    assert code == 0
    assert f"warning: {run_dir / 'alpha.trec'}:{n_lines - 1}: task alpha: 2 run line(s) name documents" in err


def test_qrels_naming_unknown_ids_are_file_line_errors(
    mrb: Path, run_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    qrels = mrb / "alpha" / "qrels.tsv"
    qrels.write_text(qrels.read_text() + "qX 0 d1 1\n")
    code, _, err = run_main(["--data", str(mrb), "--run", str(run_dir)], capsys)
    assert code == 2 and f"{qrels}:6: query id 'qX' is not in queries.jsonl" in err
    qrels.write_text(qrels.read_text().replace("qX 0 d1 1", "q1 0 dX 1"))
    code, _, err = run_main(["--data", str(mrb), "--run", str(run_dir)], capsys)
    assert code == 2 and f"{qrels}:6: document id 'dX' is not in corpus.jsonl" in err


def test_a_training_run_folder_scores_its_latest_validation(
    mrb: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "runs" / "sft-n4-s0-20260101-000000"
    for stage, step, key in (("val", 9, "candidates"), ("val", 10, "rerank"), ("test", 99, "candidates")):
        folder = run / "runs" / f"{stage}-step{step}"
        folder.mkdir(parents=True)
        for name, task in TASKS.items():
            write_trec(folder / f"{name}.trec", task[key])
    (run / "config.yaml").write_text("seed_everything: 0\n")
    out = tmp_path / "scores.json"
    code, stdout, _ = run_main(["--data", str(mrb), "--run", str(run), "--json", str(out)], capsys)
    assert code == 0
    assert_close(json.loads(out.read_text()), expected_json(RERANK))
    chosen = run / "runs" / "val-step10"
    assert stdout.splitlines()[0] == f"run: {run}: the latest validation, at step 10 ({chosen})"
    code, stdout, _ = run_main(["--data", str(mrb), "--run", str(run / "runs")], capsys)
    assert code == 0 and "at step 10" in stdout.splitlines()[0]
