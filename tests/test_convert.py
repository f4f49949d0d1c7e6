"""`python -m datamodules.convert`: BEIR, MTEB/BEIR Hub tables, UMRB and M-BEIR -> MRB tasks / training groups
that validate and load: counts, ids, qrels and pixels survive the round trip."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from datamodules.convert import ConversionError, convert, detect
from datamodules.convert import cli as convert_module
from datamodules.formats import FormatError, load_task
from datamodules.validate import main as validate_main
from tests.helpers import image_bytes, same_pixels, write_umrb


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
    assert convert_module.main([*args, "--instruction", "x"]) == 2
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


# ---- shared fixture helpers (also used by test_retrieve / test_mine) ----------------------------
def records(path: Path) -> dict[str, dict]:
    return {r["id"]: r for r in map(json.loads, path.read_text().splitlines())}


def write_mbeir(src: Path) -> dict[str, bytes]:
    """An M-BEIR root: query/test + query/train, cand_pool/local, 5-column qrels, mbeir_images tree."""
    jpg, png = image_bytes((250, 250, 0), "JPEG", (16, 12)), image_bytes((0, 128, 255), "PNG")
    (src / "mbeir_images" / "toy_images").mkdir(parents=True)
    (src / "mbeir_images" / "toy_images" / "a.jpg").write_bytes(jpg)
    (src / "mbeir_images" / "toy_images" / "b.png").write_bytes(png)
    name = "mbeir_toy_task3"
    pool = [
        {"txt": "a yellow bus", "img_path": None, "modality": "text", "did": "5:1", "src_content": None},
        {"txt": "a blue sky", "img_path": None, "modality": "text", "did": "5:2", "src_content": None},
        {"txt": "a dog", "img_path": None, "modality": "text", "did": "5:3", "src_content": None},
        {"txt": None, "img_path": "mbeir_images/toy_images/b.png", "modality": "image", "did": "5:4"},
    ]
    queries = {
        "test": [
            {"qid": "5:1", "query_txt": None, "query_img_path": "mbeir_images/toy_images/a.jpg",
             "query_modality": "image", "query_src_content": None, "pos_cand_list": ["5:1"],
             "neg_cand_list": [], "task_id": 3},
            {"qid": "5:2", "query_txt": "what colour is the sky?", "query_img_path": "mbeir_images/toy_images/b.png",
             "query_modality": "image,text", "pos_cand_list": ["5:2"], "neg_cand_list": [], "task_id": 3},
        ],
        "train": [
            {"qid": "5:9", "query_txt": "bus colour", "query_img_path": None, "query_modality": "text",
             "pos_cand_list": ["5:1"], "neg_cand_list": ["5:2", "5:3", "5:1", "5:4"], "task_id": 3},
        ],
    }  # fmt: skip
    for split, rows in queries.items():
        (src / "query" / split).mkdir(parents=True)
        (src / "query" / split / f"{name}_{split}.jsonl").write_text(
            "".join(json.dumps(r) + "\n" for r in rows)
        )
    (src / "cand_pool" / "local").mkdir(parents=True)
    (src / "cand_pool" / "local" / f"{name}_cand_pool.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in pool)
    )
    (src / "qrels" / "test").mkdir(parents=True)
    (src / "qrels" / "test" / f"{name}_test_qrels.txt").write_text(
        "5:1 0 5:1 1 3\n5:2 0 5:2 1 3\n5:2 0 5:3 0 3\n"
    )
    return {"jpg": jpg, "png": png}


# ---- UMRB ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("layout", ["files", "shards", "card"])
def test_umrb_round_trip(tmp_path, capsys, layout):
    src = tmp_path / "UMRB-Toy"
    images = write_umrb(src, layout)
    out = tmp_path / "mrb" / "toy"
    args = [
        str(src),
        "--out",
        str(out),
        "--family",
        "IT2T",
        "--metric",
        "ndcg@10",
        "--instruction",
        "Find it",
    ]
    assert convert_module.main(args) == 0
    printed = capsys.readouterr().out
    assert "(umrb): 3 queries, 4 documents, 4 judgements, 0 candidates" in printed
    assert "ignored by the records' modality: 1 text" in printed  # c2's caption, said not dropped silently
    assert "next: python -m datamodules.retrieve" in printed and not (out / "candidates.trec").exists()
    queries, corpus = records(out / "queries.jsonl"), records(out / "corpus.jsonl")
    assert set(queries) == {"q1", "q2", "q3"} and set(corpus) == {"c1", "c2", "c3", "c4"}
    assert queries["q1"]["text"] == "what is red?" and same_pixels(
        out / queries["q1"]["image"], images["png"]
    )
    assert "text" not in queries["q2"] and queries["q2"]["image"].endswith(".jpg")
    assert (out / queries["q2"]["image"]).read_bytes() == images["jpg"]  # the bytes, verbatim
    assert same_pixels(out / queries["q2"]["image"], images["jpg"])
    assert queries["q3"] == {"id": "q3", "text": "green thing"}
    assert corpus["c2"] == {"id": "c2", "image": queries["q1"]["image"]}  # same bytes: one file
    assert same_pixels(out / corpus["c3"]["image"], images["png2"]) and corpus["c3"]["text"] == "green"
    assert len([p for p in (out / "images").rglob("*") if p.is_file()]) == 3
    assert (out / "qrels.tsv").read_text() == "q1 0 c1 1\nq1 0 c4 0\nq2 0 c2 1\nq3 0 c3 2\n"


def test_hub_problems_name_the_file_and_row(tmp_path):
    from datasets import Dataset

    src = tmp_path / "UMRB-Bad"
    write_umrb(src)
    Dataset.from_dict(
        {"id": ["q1", "q2"], "modality": ["image", "text"], "text": ["x", None],
         "image": [{"bytes": b"not an image", "path": None}, None]}
    ).to_parquet(str(src / "query.parquet"))  # fmt: skip
    with pytest.raises(ConversionError) as err:
        convert(src, None, tmp_path / "out", family="T2T", metric="ndcg@10", instruction="x")
    message = str(err.value)
    assert f"{src / 'query.parquet'} row 1: image bytes cannot be decoded" in message
    assert f"{src / 'query.parquet'} row 2: record 'q2' has modality ['text'] but no text" in message
    assert not (tmp_path / "out").exists()


# ---- MTEB / BEIR as published on the Hub ---------------------------------------------------------
def write_mteb(src: Path, fmt: str) -> None:
    """corpus/queries/qrels configs declared in the dataset card; int corpus ids as in some repos."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    corpus = [{"_id": "d1", "title": "Paris", "text": "capital of France"},
              {"_id": "d2", "title": "", "text": "Berlin, Germany"}, {"_id": "d3", "title": "Rome", "text": ""}]  # fmt: skip
    queries = [{"_id": "q1", "text": "French capital"}, {"_id": "q2", "text": "German city"},
               {"_id": "q3", "text": "no judgement is relevant"}]  # fmt: skip
    qrels = [{"query-id": "q1", "corpus-id": "d1", "score": 1}, {"query-id": "q2", "corpus-id": "d2", "score": 2},
             {"query-id": "q3", "corpus-id": "d3", "score": 0}, {"query-id": "q1", "corpus-id": "d3", "score": 0}]  # fmt: skip
    for name, rows in (("corpus", corpus), ("queries", queries), ("qrels", qrels)):
        (src / name).mkdir(parents=True)
        if fmt == "parquet":
            pq.write_table(pa.Table.from_pylist(rows), src / name / "test-00000-of-00001.parquet")
        else:
            (src / name / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    ext = "parquet" if fmt == "parquet" else "jsonl"
    card = "---\nconfigs:\n" + "".join(
        f"- config_name: {n}\n  data_files:\n  - split: test\n    path: {n}/test-*.{ext}\n" if fmt == "parquet"
        else f"- config_name: {n}\n  data_files:\n  - split: test\n    path: {n}/test.{ext}\n"
        for n in ("corpus", "queries", "qrels")
    ) + "---\n# toy\n"  # fmt: skip
    (src / "README.md").write_text(card)


@pytest.mark.parametrize("fmt", ["parquet", "jsonl"])
def test_mteb_round_trip_with_a_run(tmp_path, fmt):
    src = tmp_path / "mteb-toy"
    write_mteb(src, fmt)
    run = tmp_path / "bm25.trec"
    run.write_text(
        "q1 Q0 d1 1 3.0 x\nq1 Q0 d3 2 2.0 x\nq1 Q0 d2 3 1.0 x\nq2 Q0 d1 1 2.0 x\nq3 Q0 d3 1 1.0 x\n"
    )
    out = tmp_path / "mrb" / "t"
    counts = convert(src, run, out, family="T2T", metric="ndcg@10", instruction="Find", top_k=2)
    assert counts["kind"] == "mteb" and counts["dropped_no_relevant"] == 1
    task = load_task(out)
    assert task.queries["q1"].text == "French capital" and set(task.queries) == {"q1", "q2"}
    assert task.corpus["d1"].text == "Paris\ncapital of France" and task.corpus["d3"].text == "Rome"
    assert task.qrels == {"q1": {"d1": 1, "d3": 0}, "q2": {"d2": 2}}
    assert task.candidates == {"q1": {"d1": 3.0, "d3": 2.0}, "q2": {"d1": 2.0}}


# ---- M-BEIR --------------------------------------------------------------------------------------
def test_mbeir_task_and_training_groups(tmp_path, capsys):
    src = tmp_path / "M-BEIR"
    images = write_mbeir(src)
    out = tmp_path / "mrb" / "toy"
    counts = convert(src, None, out, family="IT2T", metric="recall@5", instruction="Find the caption")
    assert counts["kind"] == "mbeir" and (counts["queries"], counts["documents"], counts["judgements"]) == (
        2,
        4,
        3,
    )
    queries, corpus = records(out / "queries.jsonl"), records(out / "corpus.jsonl")
    assert queries["5:1"].keys() == {"id", "image"} and same_pixels(
        out / queries["5:1"]["image"], images["jpg"]
    )
    assert (
        queries["5:2"]["text"] == "what colour is the sky?"
        and queries["5:2"]["image"] == corpus["5:4"]["image"]
    )
    assert (out / queries["5:1"]["image"]).read_bytes() == images["jpg"]
    assert (out / "qrels.tsv").read_text() == "5:1 0 5:1 1\n5:2 0 5:2 1\n5:2 0 5:3 0\n"

    train = tmp_path / "train"
    code = convert_module.main(
        [str(src), "--out", str(train), "--train", "--split", "train", "--instruction", "Find the caption"]
    )
    assert code == 0 and "1 training groups, 1 positives, 3 hard negatives" in capsys.readouterr().out
    (group,) = map(json.loads, (train / "mbeir_toy_task3.jsonl").read_text().splitlines())
    assert group["task"] == "mbeir_toy_task3" and group["query"] == {"text": "bus colour"}
    assert group["positives"] == [{"text": "a yellow bus"}]  # pos_cand_list: no qrels file for train
    negatives = group["hard_negatives"]  # the listed positive 5:1 is not a negative
    assert [n.get("text") for n in negatives] == ["a blue sky", "a dog", None]
    assert same_pixels(train / negatives[2]["image"], images["png"])
    assert validate_main([str(train)]) == 0


def test_images_referenced_in_place_need_the_named_root(tmp_path, capsys, monkeypatch):
    src = tmp_path / "M-BEIR"
    images = write_mbeir(src)
    tree = src / "mbeir_images"
    out = tmp_path / "mrb" / "toy"
    counts = convert(src, None, out, family="IT2T", metric="recall@5", instruction="x", images_root=tree)
    assert counts["images"] == {"referenced in place": 3} and not (out / "images").exists()
    assert (out / "image_root").is_symlink() and records(out / "queries.jsonl")["5:1"]["image"] == (
        "image_root/toy_images/a.jpg"
    )
    run = out / "candidates.trec"
    run.write_text("5:1 Q0 5:1 1 1.0 x\n5:2 Q0 5:4 1 1.0 x\n")
    capsys.readouterr()
    assert validate_main([str(out)]) == 1  # the tree is outside the task folder: refused unless named
    assert "escapes" in capsys.readouterr().out
    assert validate_main([str(out), "--images-root", str(tree)]) == 0
    monkeypatch.setenv("RERANK_LAB_IMAGE_ROOTS", str(tree))
    task = load_task(out)
    assert same_pixels(task.queries["5:1"].image, images["jpg"])
    monkeypatch.setenv("RERANK_LAB_IMAGE_ROOTS", str(tree / "toy_images" / "elsewhere"))
    with pytest.raises(FormatError, match="escapes"):
        load_task(out)


def test_source_paths_cannot_leave_the_named_roots(tmp_path):
    src = tmp_path / "M-BEIR"
    write_mbeir(src)
    (tmp_path / "secret.png").write_bytes(image_bytes((0, 0, 0), "PNG"))
    pool = src / "cand_pool" / "local" / "mbeir_toy_task3_cand_pool.jsonl"
    pool.write_text(
        pool.read_text() + json.dumps({"did": "5:5", "img_path": "../secret.png", "modality": "image"}) + "\n"
    )
    with pytest.raises(ConversionError, match=r"cand_pool.jsonl:5: 'img_path' '../secret.png' is outside"):
        convert(src, None, tmp_path / "o", family="IT2T", metric="recall@5", instruction="x")


def test_detection_and_forcing(tmp_path):
    write_mbeir(tmp_path / "m")
    write_umrb(tmp_path / "u")
    write_mteb(tmp_path / "t", "parquet")
    write_beir(tmp_path / "b")
    assert [detect(tmp_path / n) for n in "mutb"] == ["mbeir", "umrb", "mteb", "beir"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConversionError, match="not a known retrieval layout"):
        detect(tmp_path / "empty")
    # Forced, the BEIR folder is read as Hub tables (JSONL + TSV qrels): the images that BEIR's
    # --corpus-images folder option supplies by id are then missing, and the error says which record.
    with pytest.raises(ConversionError, match=r"corpus.jsonl:6: record 'd5' has neither text nor image"):
        convert(
            tmp_path / "b",
            None,
            tmp_path / "o",
            family="T2IT",
            metric="ndcg@10",
            instruction="x",
            kind="mteb",
        )
    assert convert(tmp_path / "b", None, tmp_path / "o", family="T2IT", metric="ndcg@10", instruction="x",
                   corpus_images=tmp_path / "b" / "by_id")["kind"] == "beir"  # fmt: skip


# ---- issue 23 item 7: one line naming the source, never a traceback, nothing outside --out --------
def forged_png(width: int, height: int) -> bytes:
    """A 1x1 PNG whose header claims ``width`` x ``height`` (a decompression bomb's header)."""
    import struct
    import zlib

    data = bytearray(image_bytes((1, 2, 3), "PNG", (1, 1)))
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def test_bad_image_bytes_are_reported_at_the_source_row(tmp_path):
    from datasets import Dataset

    src = tmp_path / "UMRB-Bad"
    images = write_umrb(src)
    Dataset.from_dict(
        {"id": ["q1", "q2", "q3"], "modality": ["image", "image", "image"], "text": [None] * 3,
         "image": [{"bytes": forged_png(20_000, 20_000), "path": None},
                   {"bytes": forged_png(9_000, 9_000), "path": None},
                   {"bytes": images["png2"][: len(images["png2"]) // 2], "path": None}]}
    ).to_parquet(str(src / "query.parquet"))  # fmt: skip
    with pytest.raises(ConversionError) as err:
        convert(src, None, tmp_path / "out", family="I2T", metric="ndcg@10", instruction="x")
    lines = str(err.value).splitlines()
    where = src / "query.parquet"
    assert lines[0].startswith(f"{where} row 1: image bytes cannot be decoded (DecompressionBombError: ")
    assert lines[1] == (
        f"{where} row 2: image bytes is 9000x9000 pixels, over the 64,000,000 pixel safety limit "
        "(decompression bomb guard); downscale it"
    )
    assert lines[2].startswith(f"{where} row 3: image bytes cannot be decoded (OSError: ")
    assert not (tmp_path / "out").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["UMRB-Bad"]


def test_non_utf8_qrels_is_one_line_with_its_line(tmp_path, capsys):
    src = tmp_path / "beir"
    run = write_beir(src)
    with open(src / "qrels" / "test.tsv", "ab") as handle:
        handle.write(b"q1\td2\t\xff1\n")
    args = [str(src), "--run", str(run), "--out", str(tmp_path / "out"), "--family", "T2T", "--metric", "mrr@10"]  # fmt: skip
    assert convert_module.main([*args, "--instruction", "x"]) == 2
    assert capsys.readouterr().err == (
        f"error: {src / 'qrels' / 'test.tsv'}:8: not UTF-8 (byte 0xff at column 7); save the file as UTF-8\n"
    )


def test_a_damaged_parquet_page_names_the_file_and_row(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    src = tmp_path / "mteb-toy"
    write_mteb(src, "parquet")
    path = src / "corpus" / "test-00000-of-00001.parquet"
    rows = [{"_id": f"d{i}", "title": "", "text": f"document number {i} " * 5} for i in range(1, 2001)]
    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=500)
    data = bytearray(path.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 200] = b"\xab" * 200
    path.write_bytes(bytes(data))
    with pytest.raises(ConversionError) as err:
        convert(src, None, tmp_path / "out", family="T2T", metric="ndcg@10", instruction="x")
    assert f"{path} row 769: the parquet file is damaged from here on (" in str(err.value)


def test_a_task_name_cannot_leave_the_output_folder(tmp_path, capsys):
    src = tmp_path / "beir"
    write_beir(src)
    out = tmp_path / "deep" / "train"
    args = [str(src), "--out", str(out), "--train", "--instruction", "x", "--task-name", "../../x"]
    assert convert_module.main(args) == 2
    assert capsys.readouterr().err == (
        f"error: --task-name '../../x': must be a plain name (no '/', no leading '.'): it names {out}/<name>.jsonl\n"
    )
    assert sorted(p.name for p in tmp_path.rglob("*") if not p.is_relative_to(src)) == []
