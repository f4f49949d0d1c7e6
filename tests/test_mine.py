"""`python -m datamodules.mine`: hard negatives from first-stage ranks A..B, judged-relevant documents
never negatives, the false-negative margin guard, per-seed determinism, a summary of every skip, and
output that validates and is never overwritten unasked."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from datamodules import mine as mine_module
from datamodules.mine import MiningError, mine
from datamodules.validate import main as validate_main

RUN = {  # q1: ranks 1..10; d2 and d5 relevant, d7 judged non-relevant, d10 a copy of d2's text
    "q1": [("d1", 10.0), ("d2", 9.0), ("d3", 8.5), ("d4", 8.0), ("d5", 7.0), ("d6", 6.0), ("d7", 5.0),
           ("d8", 4.0), ("d9", 3.0), ("d10", 2.0)],
    "q2": [("d1", 1.0)],
    "q3": [("d9", 5.0)],
}  # fmt: skip


def write_task(root: Path) -> Path:
    root.mkdir(parents=True)
    (root / "task.json").write_text(
        json.dumps({"family": "T2T", "instruction": "Find it", "metric": "ndcg@10"})
    )
    queries = {
        "q1": "first",
        "q2": "only non-relevant judgements",
        "q3": "its positive is its only candidate",
    }
    (root / "queries.jsonl").write_text(
        "".join(json.dumps({"id": q, "text": t}) + "\n" for q, t in queries.items())
    )
    texts = {f"d{i}": f"document {i}" for i in range(1, 11)} | {"d10": "document 2"}
    (root / "corpus.jsonl").write_text(
        "".join(json.dumps({"id": d, "text": t}) + "\n" for d, t in texts.items())
    )
    (root / "qrels.tsv").write_text("q1 0 d2 2\nq1 0 d5 1\nq1 0 d7 0\nq2 0 d3 0\nq3 0 d9 1\n")
    (root / "candidates.trec").write_text(
        "".join(f"{q} Q0 {d} {r} {s} bm25\n" for q, docs in RUN.items() for r, (d, s) in enumerate(docs, 1))
    )
    return root


def groups(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_window_margin_and_summary(tmp_path, capsys):
    task = write_task(tmp_path / "mrb" / "t")
    out = tmp_path / "train" / "t.jsonl"
    args = ["--task", str(task), "--out", str(out), "--num-negatives", "3", "--window", "2:8", "--seed", "0"]
    assert mine_module.main([*args, "--margin", "1.0"]) == 0
    printed = capsys.readouterr().out
    (group,) = groups(out)  # q2 (nothing relevant) and q3 (no eligible candidate) are skipped
    assert group["task"] == "t" and group["instruction"] == "Find it" and group["query"] == {"text": "first"}
    assert group["positives"] == [{"text": "document 2"}, {"text": "document 5"}]
    # ranks 2..8 = d2..d8; d2 and d5 relevant; the guard drops scores >= 9.0 - 1.0 (d3, d4); d7 is judged
    # non-relevant, so a fair negative: exactly d6, d7, d8 remain, in rank order
    assert group["hard_negatives"] == [{"text": "document 6"}, {"text": "document 7"}, {"text": "document 8"}]
    summary = json.loads((tmp_path / "train" / "t.summary.json").read_text())
    assert (summary["groups"], summary["negatives"], summary["queries"]) == (1, 3, 3)
    assert summary["reasons"] == {
        "candidates excluded: judged relevant": 2,  # d2 and d5 (q3's d9 ranks 1, outside the window)
        "candidates excluded: within the margin of the best positive (possible false negative)": 2,
        "eligible candidates not sampled": 0,
        "queries skipped: no eligible candidate in the window": 1,
        "queries skipped: no judged-relevant document": 1,
    }
    assert "1 groups from 3 queries, 3 hard negatives" in printed and "within the margin" in printed
    assert validate_main([str(out)]) == 0


def test_ranks_are_one_based_inclusive_and_copies_of_positives_excluded(tmp_path):
    task = write_task(tmp_path / "t")
    first = mine(task, tmp_path / "a.jsonl", num_negatives=5, window="1:1", seed=0)
    assert groups(tmp_path / "a.jsonl")[0]["hard_negatives"] == [{"text": "document 1"}]
    assert first["reasons"]["groups kept with fewer negatives than asked"] == 1
    summary = mine(task, tmp_path / "b.jsonl", num_negatives=9, window="9:10", seed=0)
    assert groups(tmp_path / "b.jsonl")[0]["hard_negatives"] == [{"text": "document 9"}]  # d10 == d2's text
    assert summary["reasons"]["candidates excluded: same content as a positive"] == 1


def test_deterministic_per_seed(tmp_path):
    task = write_task(tmp_path / "t")
    picks = {}
    for name, seed in (("a", 1), ("b", 1), ("c", 2), ("d", 3)):
        mine(task, tmp_path / f"{name}.jsonl", num_negatives=3, window="1:10", seed=seed)
        picks[name] = [n["text"] for n in groups(tmp_path / f"{name}.jsonl")[0]["hard_negatives"]]
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()
    assert len({tuple(p) for p in picks.values()}) > 1  # 35 possible samples: seeds differ
    assert all(len(p) == 3 and "document 2" not in p and "document 5" not in p for p in picks.values())


def test_never_overwrites_and_rejects_bad_arguments(tmp_path, capsys):
    task = write_task(tmp_path / "t")
    out = tmp_path / "g.jsonl"
    out.write_text("precious\n")
    args = ["--task", str(task), "--out", str(out), "--num-negatives", "2", "--window", "1:5", "--seed", "0"]
    assert mine_module.main(args) == 2
    assert "already exists; pass --overwrite" in capsys.readouterr().err and out.read_text() == "precious\n"
    assert mine_module.main([*args, "--overwrite"]) == 0 and len(groups(out)) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "g.jsonl",
        "g.summary.json",
        "t",
    ]  # no partial files
    for window in ("0:5", "5:2", "x"):
        with pytest.raises(MiningError, match="--window"):
            mine(task, tmp_path / "w.jsonl", num_negatives=2, window=window, seed=0)
    for margin in ("nan", "inf", "-1"):  # issue 23 item 9: nan used to turn the false-negative guard off
        assert (
            mine_module.main(
                [*args[:-2], "--seed", "0", "--out", str(tmp_path / "m.jsonl"), "--margin", margin]
            )
            == 2
        )
        assert (
            capsys.readouterr().err == f"error: --margin must be a finite number >= 0, got {float(margin)}\n"
        )
    assert not (tmp_path / "m.jsonl").exists()


def test_chain_from_a_converted_umrb_task_with_images(tmp_path):
    from datamodules.convert import convert
    from tests.helpers import same_pixels, write_umrb

    images = write_umrb(tmp_path / "src")
    task = tmp_path / "mrb" / "toy"
    convert(tmp_path / "src", None, task, family="IT2T", metric="ndcg@10", instruction="Find it")
    (task / "candidates.trec").write_text(
        "q1 Q0 c1 1 3.0 x\nq1 Q0 c3 2 2.0 x\nq1 Q0 c2 3 1.0 x\nq2 Q0 c2 1 1.0 x\nq2 Q0 c3 2 0.5 x\n"
        "q3 Q0 c3 1 1.0 x\nq3 Q0 c4 2 0.1 x\n"
    )
    out = tmp_path / "train" / "toy.jsonl"
    summary = mine(task, out, num_negatives=1, window="1:3", seed=0)
    assert summary["groups"] == 3 and validate_main([str(out.parent)]) == 0
    by_query = {g["query"].get("text", "(image)"): g for g in groups(out)}
    q2 = by_query["(image)"]  # an image-only query: its image copied next to the output
    assert same_pixels(out.parent / q2["query"]["image"], images["jpg"])
    assert q2["hard_negatives"] == [{"text": "green", "image": q2["hard_negatives"][0]["image"]}]
    assert same_pixels(out.parent / q2["hard_negatives"][0]["image"], images["png2"])


def test_a_named_pipe_image_is_refused_without_hanging(tmp_path):
    """Issue 23 item 3: the image store reads images with the one image rule (a FIFO would block)."""
    import os
    import subprocess
    import sys

    task = write_task(tmp_path / "mrb" / "t")
    (task / "images").mkdir()
    os.mkfifo(task / "images" / "q1.png")
    lines = (task / "queries.jsonl").read_text().splitlines()
    lines[0] = json.dumps({"id": "q1", "text": "first", "image": "images/q1.png"})
    (task / "queries.jsonl").write_text("\n".join(lines) + "\n")
    out = tmp_path / "train" / "t.jsonl"
    args = ["--task", str(task), "--out", str(out), "--num-negatives", "2", "--window", "1:10", "--seed", "0"]
    done = subprocess.run(
        [sys.executable, "-m", "datamodules.mine", *args], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2
    assert done.stderr.strip() == (
        f"error: {task / 'queries.jsonl'}:1: image {task / 'images' / 'q1.png'} is not a regular file (a named pipe, "
        "device or folder); point at an image file"
    )
    assert not out.exists() and [p.name for p in out.parent.iterdir()] == []
