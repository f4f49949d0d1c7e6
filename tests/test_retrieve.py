"""`python -m datamodules.retrieve`: BM25 (bm25s) and sentence-transformers first stages write a
candidates.trec that validates; BM25 scores are the Okapi formula's; nothing is overwritten unasked."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from datamodules import retrieve as retrieve_module
from datamodules.retrieve import RetrievalError, resolve_model, retrieve
from datamodules.trec import read_run
from datamodules.validate import main as validate_main

DOCS = {
    "d1": "red apples grow on apple trees",
    "d2": "green pears and red cherries",
    "d3": "the stock market fell today",
    "d4": "apple pie recipe with cinnamon",
}
QUERIES = {"q1": "red apple", "q2": "stock market news"}
QRELS = "q1 0 d1 1\nq1 0 d4 0\nq2 0 d3 2\n"


def write_task(root: Path, queries=QUERIES, docs=DOCS) -> Path:
    root.mkdir(parents=True)
    (root / "task.json").write_text(json.dumps({"family": "T2T", "instruction": "x", "metric": "ndcg@10"}))
    (root / "queries.jsonl").write_text(
        "".join(json.dumps({"id": q, **t}) + "\n" for q, t in queries.items())
    )
    (root / "corpus.jsonl").write_text(
        "".join(json.dumps({"id": d, "text": t}) + "\n" for d, t in docs.items())
    )
    (root / "qrels.tsv").write_text(QRELS)
    return root


def lucene_bm25(query: str, doc: str, docs: list[str], k1: float = 1.5, b: float = 0.75) -> float:
    """BM25 as Lucene (and bm25s by default) computes it, by hand: idf log(1 + (N - df + .5) / (df + .5)),
    term weight tf / (tf + k1 (1 - b + b |d| / avgdl)) (no (k1 + 1) factor, which only rescales)."""
    tokens = [d.split() for d in docs]
    avg = sum(map(len, tokens)) / len(tokens)
    words, score = doc.split(), 0.0
    for term in query.split():
        df = sum(term in t for t in tokens)
        tf = words.count(term)
        if tf:
            idf = math.log(1 + (len(docs) - df + 0.5) / (df + 0.5))
            score += idf * tf / (tf + k1 * (1 - b + b * len(words) / avg))
    return score


def test_bm25_scores_ranks_and_validates(tmp_path, capsys):
    task = write_task(tmp_path / "mrb" / "t", queries={q: {"text": t} for q, t in QUERIES.items()})
    assert retrieve_module.main(["--task", str(task), "--top-k", "3"]) == 0
    printed = capsys.readouterr().out
    run = read_run(task / "candidates.trec")
    # stop words ("on", "and", "the", "with") removed as bm25s does, the rest scored by hand
    kept = {
        d: " ".join(w for w in t.split() if w not in {"on", "and", "the", "with"}) for d, t in DOCS.items()
    }
    expected = {d: lucene_bm25("red apple", kept[d], list(kept.values())) for d in DOCS}
    # d2 and d4 tie (same idf, tf and length): ranked as trec_eval does, larger id first
    assert list(run["q1"]) == ["d1", "d4", "d2"]
    assert list(run["q1"]) == sorted(expected, key=lambda d: (round(expected[d], 9), d), reverse=True)[:3]
    for d in ("d1", "d2", "d4"):
        assert run["q1"][d] == pytest.approx(expected[d], rel=1e-5)
    assert set(run["q2"]) >= {"d3"} and max(run["q2"], key=run["q2"].get) == "d3"
    assert "ndcg@10 1.0000" in printed  # both relevant documents ranked first
    assert validate_main([str(task)]) == 0


def test_never_overwrites_unless_asked(tmp_path, capsys):
    task = write_task(tmp_path / "t", queries={q: {"text": t} for q, t in QUERIES.items()})
    (task / "candidates.trec").write_text("q1 Q0 d3 1 1.0 mine\nq2 Q0 d3 1 1.0 mine\n")
    assert retrieve_module.main(["--task", str(task)]) == 2
    assert "already exists; pass --overwrite" in capsys.readouterr().err
    assert (task / "candidates.trec").read_text().startswith("q1 Q0 d3 1 1.0 mine")
    assert retrieve_module.main(["--task", str(task), "--overwrite", "--top-k", "2"]) == 0
    assert len(read_run(task / "candidates.trec")["q1"]) == 2
    assert not [p for p in task.iterdir() if p.name.startswith(".")]  # no partial file left


def test_bm25_needs_query_text(tmp_path, tiny_png):
    queries = {"q1": {"text": "red apple"}, "q2": {"image": "q.png"}}
    task = write_task(tmp_path / "t", queries=queries)
    (task / "q.png").write_bytes(tiny_png)
    with pytest.raises(
        RetrievalError, match=r"BM25 needs query text; 1 query\(ies\) have none \(e.g. \['q2'\]\)"
    ):
        retrieve(task)


@pytest.fixture
def tiny_png() -> bytes:
    from tests.helpers import image_bytes

    return image_bytes((1, 2, 3), "PNG")


def test_model_aliases_and_folders(tmp_path):
    path = Path(resolve_model("minilm"))
    assert (path / "modules.json").is_file() and path.name == "model"
    assert resolve_model(str(path.parent)) == str(path)  # the package folder works too
    assert resolve_model("sentence-transformers/all-MiniLM-L6-v2") == "sentence-transformers/all-MiniLM-L6-v2"
    (tmp_path / "empty").mkdir()
    with pytest.raises(RetrievalError, match="not a sentence-transformers model folder"):
        resolve_model(str(tmp_path / "empty"))


@pytest.mark.slow  # loading sentence-transformers and the model: ~15 s here
def test_dense_minilm_offline(tmp_path, tiny_png):
    task = write_task(tmp_path / "t", queries={q: {"text": t} for q, t in QUERIES.items()})
    result = retrieve(task, method="dense", model="minilm", top_k=4)
    run = read_run(task / "candidates.trec")
    assert max(run["q2"], key=run["q2"].get) == "d3" and len(run["q1"]) == 4
    assert all(-1.0 - 1e-6 <= s <= 1.0 + 1e-6 for docs in run.values() for s in docs.values())  # cosines
    assert result["ndcg@10"] > 0.5
    # a text-only model refuses an image-only record, naming it
    image_task = write_task(tmp_path / "i", queries={"q1": {"text": "red apple"}, "q2": {"image": "q.png"}})
    (image_task / "q.png").write_bytes(tiny_png)
    with pytest.raises(
        RetrievalError, match=r"encodes text only; 1 query record\(s\) have no text \(e.g. \['q2'\]\)"
    ):
        retrieve(image_task, method="dense", model="minilm")


# ---- issue 23 items 9 and 15: BM25 never ranks what it cannot read; images go through dense ----------
def image_task(root: Path, tiny_png: bytes, texts: dict[str, str | None]) -> Path:
    from tests.helpers import image_bytes

    task = write_task(root, queries={"q1": {"text": "red apple"}, "q2": {"text": "stock market"}})
    (task / "images").mkdir()
    corpus = []
    for n, (doc, text) in enumerate(texts.items()):
        (task / "images" / f"{doc}.png").write_bytes(image_bytes((40 * n, 200 - 40 * n, 9), "PNG", (12, 10)))
        corpus.append({"id": doc, "image": f"images/{doc}.png", **({"text": text} if text else {})})
    (task / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in corpus))
    return task


def test_bm25_refuses_an_image_only_corpus(tmp_path, capsys, tiny_png):
    task = image_task(tmp_path / "mrb" / "pics", tiny_png, dict.fromkeys(DOCS))
    assert retrieve_module.main(["--task", str(task)]) == 2
    assert capsys.readouterr().err == (
        "error: task pics: no document has text, so BM25 would score every candidate 0; use --method dense --model "
        "with an image-capable sentence-transformers model (CLIP-style)\n"
    )
    assert not (task / "candidates.trec").exists()


def test_bm25_counts_textless_documents_and_flat_queries(tmp_path, capsys, tiny_png):
    task = image_task(
        tmp_path / "mrb" / "mixed", tiny_png, {"d1": "red apple pie", "d2": None, "d3": None, "d4": None}
    )
    assert retrieve_module.main(["--task", str(task)]) == 0
    assert capsys.readouterr().err.splitlines() == [
        "warning: task mixed: 3 of 4 documents have no text; BM25 scores them 0 (first: ['d2', 'd3', 'd4']); "
        "--method dense with an image model ranks them",
        "warning: task mixed: 1 of 2 queries have candidates that all score the same (first: ['q2']); their "
        "order is arbitrary",
    ]
    run = read_run(task / "candidates.trec")
    assert run["q1"]["d1"] > 0 and {run["q1"][d] for d in ("d2", "d3", "d4")} == {0.0}
    assert set(run["q2"].values()) == {0.0}  # no known word: text-less documents do not match it


def test_dense_ranks_images_with_a_clip_style_model(tmp_path, tiny_png):
    import numpy as np
    from sentence_transformers import SentenceTransformer

    from datamodules.images import open_image
    from tests.tiny_clip import build_clip

    model = build_clip(tmp_path / "clip")
    task = image_task(
        tmp_path / "mrb" / "pics", tiny_png, {"d1": None, "d2": "a red apple", "d3": None, "d4": None}
    )
    assert retrieve_module.main(["--task", str(task), "--method", "dense", "--model", str(model)]) == 0
    run = read_run(task / "candidates.trec")
    assert validate_main([str(task)]) == 0 and sorted(run["q1"]) == ["d1", "d2", "d3", "d4"]
    embedder = SentenceTransformer(str(model), device="cpu")

    def unit(vector):
        return vector / np.linalg.norm(vector)

    query = unit(embedder.encode(["red apple"])[0])
    image = unit(embedder.encode([open_image(task / "images" / "d1.png")])[0])
    both = unit(
        unit(embedder.encode(["a red apple"])[0])
        + unit(embedder.encode([open_image(task / "images" / "d2.png")])[0])
    )
    assert run["q1"]["d1"] == pytest.approx(float(query @ image), abs=1e-5)  # an image-only document
    assert run["q1"]["d2"] == pytest.approx(float(query @ both), abs=1e-5)  # text + image: the mean of both
