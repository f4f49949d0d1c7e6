"""`python -m datamodules.validate`: every rule finds its planted problem at the right file:line, clean
folders report nothing, and --stream walks the real stream."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import good_record, png, validate_cli, write_clean_train, write_task

PROJECT = Path(__file__).resolve().parents[1]


def test_clean_training_root_reports_nothing(tmp_path, capsys):
    write_clean_train(tmp_path / "train")
    code, lines = validate_cli(capsys, tmp_path / "train")
    assert code == 0
    assert lines == [f"OK: training root {tmp_path / 'train'}: 2 file(s), 24 record(s), 3 image(s) checked"]


def test_every_training_rule_finds_its_planted_problem(tmp_path, capsys):
    root = tmp_path / "train"
    write_clean_train(root, n=4)
    outside = tmp_path / "outside.png"
    png(outside)
    os.symlink(outside, root / "images" / "link.png")
    png(root / "images" / "big.png", size=(8200, 8200))  # over the decompression-bomb limit
    (root / "images" / "garbage.png").write_bytes(b"this is not a png")
    good = root / "images" / "q0.png"
    (root / "images" / "truncated.png").write_bytes(good.read_bytes()[:-30])

    def doc(image):
        return {**good_record(0), "positives": [{"text": "p", "image": image}]}

    planted = {
        1: "{not json",
        2: "[1, 2]",
        3: {**good_record(0), "task": ""},
        4: {**good_record(0), "positives": []},
        5: {**good_record(0), "hard_negatives": {"text": "x"}},
        6: {**good_record(0), "query": {"text": ""}},
        7: doc(str(good)),  # absolute
        8: doc("../outside.png"),
        9: doc("images/link.png"),  # symlink escaping the folder
        10: doc("images/missing.png"),
        11: doc("images/garbage.png"),
        12: doc("images/truncated.png"),
        13: doc("images/big.png"),
        14: {**good_record(0), "hard_negatives": [{"text": "positive 0"}]},
        15: {**good_record(0), "instruction": 3},
        16: {**good_record(0), "query": {"text": 5}},
    }
    expected = {
        1: "invalid JSON",
        2: "expected a JSON object",
        3: "'task' must be a non-empty string",
        4: "'positives' must be a non-empty list",
        5: "'hard_negatives' must be a list",
        6: "query: needs 'text' or 'image'",
        7: "is absolute",
        8: "escapes",
        9: "escapes",
        10: "not found",
        11: "cannot be decoded",
        12: "cannot be decoded",
        13: "pixel safety limit",
        14: "identical to a positive",
        15: "'instruction' must be a string",
        16: "'text' must be a string",
    }
    bad = root / "bad.jsonl"
    bad.write_text("\n".join(v if isinstance(v, str) else json.dumps(v) for v in planted.values()) + "\n")
    (root / "broken.jsonl.gz").write_bytes(b"\x1f\x8b\x08\x00" + bytes(6) + b"not deflate data at all")

    code, lines = validate_cli(capsys, root)
    assert code == 1
    assert lines[-1].startswith("FAILED: 17 problem(s)")
    problems = lines[:-1]
    for line, reason in expected.items():
        hits = [p for p in problems if p.startswith(f"{bad}:{line}:")]
        assert len(hits) == 1 and reason in hits[0], (line, hits)
    assert [p for p in problems if p.startswith(f"{root / 'broken.jsonl.gz'}:")], problems
    assert len(problems) == 17


def test_stream_walk_reports_exactly_once_coverage(tmp_path, capsys):
    root = tmp_path / "train"
    write_clean_train(root, n=30)
    code, lines = validate_cli(
        capsys, root, "--stream", "--world-size", 2, "--num-workers", 2, "--batch-size", 2
    )
    assert code == 0, lines
    assert lines[0].startswith("OK: training root")
    assert "batches per rank [7, 7] (equal)" in lines[1] and "2 remainder example(s) dropped" in lines[1]
    assert lines[-1] == "examples: 28 seen, 0 duplicated, 0 missing"  # + 2 dropped by design = 30


def test_stream_walk_counts_bad_records_and_fails(tmp_path, capsys):
    root = tmp_path / "train"
    write_clean_train(root, n=12)
    with open(root / "a.jsonl", "a") as handle:
        handle.write("{oops\n")
    code, lines = validate_cli(capsys, root, "--stream", "--world-size", 1, "--num-workers", 0)
    assert code == 1
    assert (
        lines[0]
        == f"{root / 'a.jsonl'}:8: invalid JSON (Expecting property name enclosed in double quotes at column 2)"
    )
    assert "1 bad record(s) skipped" in lines[-2]
    assert lines[-1] == "examples: 13 seen, 0 duplicated, 0 missing"


# ---- MRB -----------------------------------------------------------------------------------------
def test_clean_mrb_root_reports_nothing(tmp_path, capsys):
    for name in ("t1", "t2"):
        write_task(tmp_path / "mrb" / name)
    code, lines = validate_cli(capsys, tmp_path / "mrb")
    assert code == 0
    assert lines == [
        f"OK: MRB root {tmp_path / 'mrb'}: 2 task(s), 6 queries, 12 documents, 12 judgements, 36 candidates, "
        "2 image(s) checked"
    ]
    code, lines = validate_cli(capsys, tmp_path / "mrb" / "t1")  # a single task folder works too
    assert code == 0 and lines[0].startswith("OK: MRB root")


def test_every_mrb_rule_finds_its_planted_problem(tmp_path, capsys):
    root = tmp_path / "mrb"
    task = root / "t1"
    write_task(task, queries=5, docs=6)
    (task / "task.json").write_text(json.dumps({"family": "X2Y", "instruction": "", "metric": "map"}))
    with open(task / "queries.jsonl", "a") as handle:
        handle.write(json.dumps({"id": "q0", "text": "again"}) + "\n")  # line 6: duplicate
        handle.write(json.dumps({"id": "q 9", "text": "space"}) + "\n")  # line 7
        handle.write(json.dumps({"id": "q7"}) + "\n")  # line 8: no text/image, and no qrels/candidates
        handle.write(json.dumps({"id": "q8", "image": "../../x.png"}) + "\n")  # line 9: escapes
    qrels = (task / "qrels.tsv").read_text().splitlines()
    qrels[0] = "q0 0 d0"  # 3 fields
    qrels[1] = "q0 0 d1 high"  # not an integer
    qrels += ["q0 0 d0 1", "q0 0 d0 2", "qX 0 d0 1", "q1 0 dX 1"]  # lines 11-14
    (task / "qrels.tsv").write_text("\n".join(qrels) + "\n")
    candidates = [
        line for line in (task / "candidates.trec").read_text().splitlines() if not line.startswith("q4 ")
    ]
    candidates[0] = "q0 Q0 d0 1 0.5"  # 5 fields
    candidates[1] = "q0 Q0 d1 2 abc bm25"
    candidates[2] = "q0 Q0 d2 3 inf bm25"
    candidates[3] = "q0 Q0 d3 first 1.0 bm25"  # the rank column is not read (trec_eval): fine
    candidates += ["q0 Q0 d5 9 1.0 bm25", "q1 Q0 dZ 9 1.0 bm25"]  # lines 25-26
    (task / "candidates.trec").write_text("\n".join(candidates) + "\n")
    write_task(root / "t2")
    (root / "t2" / "candidates.trec").unlink()

    code, lines = validate_cli(capsys, root)
    assert code == 1
    problems = lines[:-1]
    expected = [
        ("t1/task.json:1:", "unknown family 'X2Y'"),
        ("t1/task.json:1:", "'instruction' must be a non-empty string"),
        ("t1/task.json:1:", "unknown metric 'map'"),
        ("t1/queries.jsonl:6:", "duplicate id 'q0' (first defined on line 1)"),
        ("t1/queries.jsonl:7:", "contains whitespace"),
        ("t1/queries.jsonl:8:", "needs 'text' or 'image'"),
        ("t1/queries.jsonl:9:", "escapes"),
        ("t1/qrels.tsv:1:", "expected 'qid 0 docid relevance', got 3 field(s)"),
        ("t1/qrels.tsv:2:", "relevance 'high' is not an integer"),
        ("t1/qrels.tsv:12:", "lists document 'd0' twice"),
        ("t1/qrels.tsv:13:", "query id 'qX' is not in queries.jsonl"),
        ("t1/qrels.tsv:14:", "document id 'dX' is not in corpus.jsonl"),
        ("t1/candidates.trec:1:", "got 5 field(s)"),
        ("t1/candidates.trec:2:", "score 'abc' is not a number"),
        ("t1/candidates.trec:3:", "score 'inf' is not finite"),
        ("t1/candidates.trec:25:", "lists document 'd5' twice"),
        ("t1/candidates.trec:26:", "document id 'dZ' is not in corpus.jsonl"),
        # q7 and q8 have no relevant document: the metrics skip them, so they are no problem.
        ("t1/queries.jsonl:5:", "query 'q4' has relevant documents but no candidate"),
        ("t2/candidates.trec:1:", "missing candidates.trec"),
    ]
    for where, reason in expected:
        hits = [p for p in problems if p.startswith(f"{root}/{where}") and reason in p]
        assert len(hits) == 1, (where, reason, problems)
    unexpected = [p for p in problems if not any(p.startswith(f"{root}/{w}") and r in p for w, r in expected)]
    assert not unexpected


def test_cli_runs_as_a_module(tmp_path):
    write_task(tmp_path / "mrb" / "t1")
    (tmp_path / "mrb" / "t1" / "qrels.tsv").write_text("q0 0 d0\n")
    result = subprocess.run(
        [sys.executable, "-m", "datamodules.validate", str(tmp_path / "mrb")],
        cwd=PROJECT,
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 1
    assert f"{tmp_path / 'mrb' / 't1' / 'qrels.tsv'}:1: expected 'qid 0 docid relevance'" in result.stdout


@pytest.mark.parametrize("layout", ["empty", "neither"])
def test_unrecognised_roots_are_an_error(tmp_path, capsys, layout):
    root = tmp_path / "root"
    root.mkdir()
    if layout == "neither":
        (root / "notes.txt").write_text("hello")
    code, lines = validate_cli(capsys, root)
    assert code == 1 and "neither an MRB root" in lines[0]


def test_stream_walk_failure_is_reported_with_file_line(tmp_path, capsys):
    root = tmp_path / "train"
    write_clean_train(root, n=6)
    code, lines = validate_cli(
        capsys, root, "--stream", "--world-size", 2, "--num-workers", 2, "--num-negatives", 12
    )
    assert code == 1
    assert lines[0].startswith("FAILED: 0 problem(s), stream walk failed")
    assert lines[1].startswith(f"stream: ValueError: {root}") and "random negatives" in lines[1]
    assert lines[-1] == "examples: 0 seen, 0 duplicated, 0 missing"


def test_a_folder_holding_a_training_root_and_an_mrb_root_validates_each(demo_dir, capsys):
    """The folder the demo builds (``data/`` with ``train/`` and ``mrb/``) is two roots, not one
    training root whose MRB files are 2,307 bad training records."""
    code, lines = validate_cli(capsys, demo_dir)
    assert code == 0, lines[:5]
    assert [line.split(":")[0] for line in lines] == ["OK", "OK"]
    assert lines[0].startswith(f"OK: MRB root {demo_dir / 'mrb'}: 7 task(s)")
    assert lines[1].startswith(f"OK: training root {demo_dir / 'train'}: 7 file(s)")


def test_mixed_folder_problems_are_reported_per_root(tmp_path, capsys):
    write_task(tmp_path / "data" / "bench" / "t1")
    write_clean_train(tmp_path / "data" / "shards", n=4)
    (tmp_path / "data" / "shards" / "a.jsonl").write_text("{oops\n")
    code, lines = validate_cli(capsys, tmp_path / "data")
    assert code == 1
    assert lines[0].startswith(f"OK: MRB root {tmp_path / 'data' / 'bench'}: 1 task(s)")
    assert lines[1].startswith(f"{tmp_path / 'data' / 'shards' / 'a.jsonl'}:1: invalid JSON")
    assert lines[2].startswith("FAILED: 1 problem(s); training root")


def test_non_utf8_bytes_are_reported_at_their_own_line(tmp_path, capsys):
    write_task(tmp_path / "mrb" / "t1")
    corpus = tmp_path / "mrb" / "t1" / "corpus.jsonl"
    lines = corpus.read_bytes().split(b"\n")
    lines[4] = b'{"id": "d4", "text": "caf\xe9"}'
    corpus.write_bytes(b"\n".join(lines))
    code, out = validate_cli(capsys, tmp_path / "mrb")
    assert code == 1
    assert out[0] == f"{corpus}:5: not UTF-8 (byte 0xe9 at column 26); save the file as UTF-8"
