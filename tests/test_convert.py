"""`python -m datamodules.convert`: BEIR/MTEB + a first-stage run -> an MRB task that validates and loads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from datamodules import convert as convert_module
from datamodules.convert import ConversionError, convert
from datamodules.formats import load_task
from datamodules.validate import main as validate_main


def write_beir(src: Path) -> Path:
    """6 documents (one image by field, one by id folder), 4 queries, qrels with a header, a run."""
    (src / "qrels").mkdir(parents=True)
    (src / "pics").mkdir()
    (src / "by_id").mkdir()
    Image.new("RGB", (20, 20), (255, 0, 0)).save(src / "pics" / "red.png")
    Image.new("RGB", (20, 20), (0, 0, 255)).save(src / "by_id" / "d5.jpg")
    Image.new("RGB", (20, 20), (0, 255, 0)).save(src / "by_id" / "q3.png")
    corpus = [
        {"_id": "d0", "title": "Paris", "text": "Capital of France."},
        {"_id": "d1", "title": "", "text": "Berlin is in Germany."},
        {"_id": "d2", "title": "Red", "text": "", "image": "pics/red.png"},
        {"_id": "d3", "title": "Unused", "text": "never referenced"},
        {"_id": 4, "text": "numeric id"},
        {"_id": "d5", "text": ""},  # image from the id folder only
    ]
    (src / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in corpus))
    queries = [
        {"_id": "q1", "text": "capital of France?"},
        {"_id": "q2", "text": "only non-relevant judgements"},
        {"_id": "q3", "text": "blue square"},
        {"_id": "q4", "text": "no candidates"},
    ]
    (src / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries))
    (src / "qrels" / "test.tsv").write_text(
        "query-id\tcorpus-id\tscore\nq1\td0\t2\nq1\td1\t0\nq2\td1\t0\nq3\td5\t1\nq3\t4\t1\nq4\td0\t1\n"
    )
    run = src / "run.trec"
    run.write_text(
        "q1 Q0 d1 1 9.5 bm25\nq1 Q0 d0 2 9.0 bm25\nq1 Q0 d2 3 1.0 bm25\n"
        "q2 Q0 d1 1 3.0 bm25\nq3 Q0 d2 1 5.0 bm25\nq3 Q0 d5 2 4.0 bm25\nq3 Q0 4 3 0.5 bm25\n"
    )
    return run


def test_round_trip_validates_and_loads(tmp_path, capsys):
    src = tmp_path / "beir"
    run = write_beir(src)
    out = tmp_path / "mrb" / "mytask"
    code = convert_module.main(
        [str(src), "--run", str(run), "--out", str(out), "--family", "T2IT", "--metric", "ndcg@10",
         "--instruction", "Find the matching document", "--top-k", "2", "--corpus-images", str(src / "by_id"),
         "--query-images", str(src / "by_id")]
    )  # fmt: skip
    assert code == 0
    summary = capsys.readouterr().out
    assert (
        "2 queries" in summary
        and "1 query(ies) without a relevant document and 1 without candidates" in summary
    )

    assert validate_main([str(tmp_path / "mrb")]) == 0
    assert capsys.readouterr().out.startswith("OK: MRB root")
    task = load_task(out)
    assert (task.meta.family, task.meta.metric, task.meta.instruction) == (
        "T2IT",
        "ndcg@10",
        "Find the matching document",
    )
    assert set(task.queries) == {"q1", "q3"}
    assert task.queries["q3"].image and Path(task.queries["q3"].image).is_file()
    # top-2 candidates per query; only referenced documents kept (d3 never is)
    assert task.candidates == {"q1": {"d1": 9.5, "d0": 9.0}, "q3": {"d2": 5.0, "d5": 4.0}}
    assert set(task.corpus) == {"d0", "d1", "d2", "d5", "4"}
    assert (
        task.corpus["d0"].text == "Paris\nCapital of France."
        and task.corpus["d1"].text == "Berlin is in Germany."
    )
    assert task.corpus["d2"].text == "Red" and Image.open(task.corpus["d2"].image).getpixel((0, 0)) == (
        255,
        0,
        0,
    )
    assert task.corpus["d5"].text is None and Path(task.corpus["d5"].image).suffix == ".jpg"
    assert task.qrels == {"q1": {"d0": 2, "d1": 0}, "q3": {"d5": 1, "4": 1}}
    assert str(Path(task.corpus["d2"].image)).startswith(str(out.resolve()))


def test_never_overwrites_an_existing_folder(tmp_path, capsys):
    src = tmp_path / "beir"
    run = write_beir(src)
    out = tmp_path / "mrb" / "taken"
    out.mkdir(parents=True)
    (out / "keep.txt").write_text("precious")
    args = [str(src), "--run", str(run), "--out", str(out), "--family", "T2T", "--metric", "mrr@10"]
    assert convert_module.main([*args, "--instruction", "x"]) == 1
    assert "refusing to overwrite" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_problems_are_listed_and_nothing_is_left_behind(tmp_path):
    src = tmp_path / "beir"
    run = write_beir(src)
    with open(run, "a") as handle:
        handle.write("q1 Q0 d9 4 0.1 bm25\nq1 Q0 d0 5 abc bm25\n")
    out = tmp_path / "mrb" / "t"
    with pytest.raises(ConversionError) as err:
        convert(src, run, out, family="T2T", metric="ndcg@10", instruction="x")
    assert f"{run}:9: score 'abc' is not a number" in str(err.value)
    run.write_text(run.read_text().replace("q1 Q0 d0 5 abc bm25\n", ""))
    with pytest.raises(ConversionError, match="document 'd9' is not in"):
        convert(src, run, out, family="T2T", metric="ndcg@10", instruction="x")
    assert not out.exists() and list((tmp_path / "mrb").iterdir()) == []  # no partial output
    with pytest.raises(ConversionError, match="unknown family"):
        convert(src, run, out, family="XX", metric="ndcg@10", instruction="x")
