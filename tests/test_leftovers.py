"""Hidden names are never data (issue 23, items 1-2): what a killed convert or mine leaves in a root is
neither a task nor a shard, it is reported, and the next convert / mine of the same output removes it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from datamodules.files import leftovers, remove_leftovers
from datamodules.formats import list_tasks
from datamodules.shards import StreamIndex, list_shards
from experiments.evaluate import evaluate
from tests.helpers import validate_cli, write_clean_train, write_task

GONE = 9_999_999  # above Linux's pid_max: no such process


def mrb_with_leftovers(root: Path) -> None:
    write_task(root / "a")
    write_task(root / "b", queries=2)
    # q1's relevant document is ranked first in b: its average differs from a copy's with 3 queries
    (root / "b" / "candidates.trec").write_text(
        "".join(f"q{i} Q0 d{j} {j + 1} {10 - j}.5 bm25\n" for i in range(2) for j in range(6))
    )
    shutil.copytree(root / "a", root / f".c.converting-{GONE}")  # complete hidden copy
    (root / f".d.converting-{GONE}").mkdir()
    (root / f".d.converting-{GONE}" / "task.json").write_text("{")  # partial: would fail to load
    shutil.copytree(root / "a", root / ".snapshot")  # a hidden folder that is no leftover


def test_hidden_task_folders_are_never_scored(tmp_path, capsys, caplog):
    root = tmp_path / "mrb"
    mrb_with_leftovers(root)
    assert [p.name for p in list_tasks(root)] == ["a", "b"]
    summary = evaluate(root, "first-stage")
    assert sorted(summary.tasks) == ["a", "b"]
    expected = (summary.tasks["a"].value + summary.tasks["b"].value) / 2
    assert abs(summary.average - expected) < 1e-12
    assert f".c.converting-{GONE}: left behind by process {GONE}" in caplog.text
    code, lines = validate_cli(capsys, root)
    assert code == 0
    assert lines[:2] == [
        f"note: {root / f'.c.converting-{GONE}'}: left behind by process {GONE}, which is gone (a killed "
        "convert, mine, retrieve or write); it is never read as data: delete it",
        f"note: {root / f'.d.converting-{GONE}'}: left behind by process {GONE}, which is gone (a killed "
        "convert, mine, retrieve or write); it is never read as data: delete it",
    ]
    assert lines[2].startswith(f"OK: MRB root {root}: 2 task(s), 5 queries")


def test_hidden_shards_are_never_trained_on(tmp_path, capsys):
    root = tmp_path / "train"
    write_clean_train(root, n=24)
    groups = (root / "a.jsonl").read_text().splitlines()[:3]
    (root / f".x.mining-{GONE}.jsonl").write_text("\n".join(groups) + "\n")  # a killed mine's partial
    (root / ".cache").mkdir()
    (root / ".cache" / "old.jsonl").write_text("\n".join(groups) + "\n")
    assert [Path(p).name for p in list_shards(str(root))[2]] == ["a.jsonl", "b.jsonl.gz"]
    assert StreamIndex.build(str(root)).num_records == 24
    code, lines = validate_cli(capsys, root)
    assert code == 0
    assert lines == [
        f"note: {root / f'.x.mining-{GONE}.jsonl'}: left behind by process {GONE}, which is gone (a killed "
        "convert, mine, retrieve or write); it is never read as data: delete it",
        f"OK: training root {root}: 2 file(s), 24 record(s), 3 image(s) checked",
    ]


def test_the_next_run_of_a_tool_removes_its_own_leftovers_only(tmp_path):
    out = tmp_path / "train" / "x.jsonl"
    out.parent.mkdir()
    mine_left = out.with_name(f".x.mining-{GONE}.jsonl")
    mine_left.write_text("{}\n")
    convert_left = out.with_name(f".x.jsonl.converting-{GONE}")
    convert_left.mkdir()
    other = out.with_name(f".y.mining-{GONE}.jsonl")  # another output's leftover: not ours to remove
    other.write_text("{}\n")
    alive = out.with_name(".x.mining-1.jsonl")  # pid 1 exists: a running tool's temporary
    alive.write_text("{}\n")
    assert leftovers(out.parent) == [convert_left, mine_left, other]
    assert remove_leftovers(out) == [convert_left, mine_left]
    assert sorted(p.name for p in out.parent.iterdir()) == [".x.mining-1.jsonl", f".y.mining-{GONE}.jsonl"]


def test_convert_removes_the_leftover_of_a_killed_convert(tmp_path):
    from datamodules.convert import convert

    src = tmp_path / "beir"
    src.mkdir()
    (src / "corpus.jsonl").write_text(
        "".join(json.dumps({"_id": f"d{i}", "text": f"doc {i}"}) + "\n" for i in range(3))
    )
    (src / "queries.jsonl").write_text(json.dumps({"_id": "q0", "text": "query"}) + "\n")
    (src / "qrels").mkdir()
    (src / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq0\td1\t1\n")
    out = tmp_path / "mrb" / "t"
    killed = out.with_name(f".t.converting-{GONE}")
    killed.mkdir(parents=True)
    (killed / "task.json").write_text("{")
    convert(src, None, out, "T2T", "ndcg@10", "find it")
    assert sorted(p.name for p in out.parent.iterdir()) == ["t"]
