"""The bundled demo benchmark (datamodules.demo): formats, families, candidates, headroom, determinism."""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

import pytest
from PIL import Image

from datamodules import formats
from datamodules.demo import DEPTH, IMAGE_SIZE, MARKER, build_demo, main
from datamodules.metrics import evaluate_run

REQUIRED_FAMILIES = {"T2T", "T2I", "I2T", "I2I", "IT2I", "IT2T"}


def _hashes(root: Path, skip: tuple[str, ...] = ()) -> dict[str, str]:
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file() and path.name not in skip
    }


def _mean(values: dict[str, float]) -> float:
    return sum(values.values()) / len(values)


@pytest.fixture(scope="module")
def tasks(demo_dir: Path) -> list[formats.MRBTask]:
    return [formats.load_task(folder) for folder in formats.list_tasks(demo_dir / "mrb")]


@pytest.fixture(scope="module")
def groups(demo_dir: Path) -> list[formats.TrainGroup]:
    return list(formats.iter_train_groups(demo_dir / "train"))


def test_tasks_load_and_cover_the_families(demo_dir: Path, tasks: list[formats.MRBTask]) -> None:
    families = {task.meta.family for task in tasks}
    assert families >= REQUIRED_FAMILIES and len(families) >= 6
    for task in tasks:
        assert task.meta.metric == ("ndcg@10" if task.meta.family == "T2T" else "recall@5"), task.name
        assert task.meta.instruction.endswith(".")
        assert 12 <= len(task.queries) <= 20, task.name
        query_side, doc_side = task.meta.family.split("2")  # e.g. "IT2T": image + text -> text
        assert {doc.kind for doc in task.queries.values()} == {query_side}, task.name
        assert {doc.kind for doc in task.corpus.values()} == {doc_side}, task.name
        for doc in [*task.queries.values(), *task.corpus.values()]:
            if doc.image:
                with Image.open(doc.image) as image:
                    assert image.size == (IMAGE_SIZE, IMAGE_SIZE) and image.mode == "RGB"
    readme = (demo_dir / "README.md").read_text(encoding="utf-8")
    assert all(f"## {task.name} ({task.meta.family}, {task.meta.metric})" in readme for task in tasks)


def test_candidates_hold_relevant_and_non_relevant_documents(tasks: list[formats.MRBTask]) -> None:
    for task in tasks:
        assert set(task.candidates) == set(task.queries) == set(task.qrels), task.name
        for qid, candidates in task.candidates.items():
            relevant = {doc for doc, grade in task.qrels[qid].items() if grade > 0}
            assert len(candidates) == DEPTH >= 20
            assert relevant <= set(candidates), f"{task.name}/{qid}: a judged relevant doc is not a candidate"
            assert 1 <= len(relevant) < len(candidates), f"{task.name}/{qid}"


def test_reranking_has_headroom_over_random_order(tasks: list[formats.MRBTask]) -> None:
    """A perfect reranker must score far above a random reordering of the same candidates, so that
    what a model learns shows in the metric."""
    rng = random.Random(0)
    for task in tasks:
        metric = task.meta.metric
        oracle = _mean(
            evaluate_run(
                {q: {d: float(task.qrels[q].get(d, 0)) for d in docs} for q, docs in task.candidates.items()},
                task.qrels,
                metric,
            )
        )
        shuffled = [
            _mean(
                evaluate_run(
                    {q: {d: rng.random() for d in docs} for q, docs in task.candidates.items()},
                    task.qrels,
                    metric,
                )
            )
            for _ in range(100)
        ]
        expected_random = sum(shuffled) / len(shuffled)
        first_stage = _mean(evaluate_run(task.candidates, task.qrels, metric))
        assert oracle == pytest.approx(1.0), task.name
        assert expected_random < 0.4, (task.name, expected_random)
        assert first_stage < 0.95, (task.name, first_stage)  # the first stage leaves room to rerank


def test_training_groups_parse_and_match_the_tasks(
    demo_dir: Path, tasks: list[formats.MRBTask], groups: list[formats.TrainGroup]
) -> None:
    instructions = {task.name: task.meta.instruction for task in tasks}
    assert 300 <= len(groups) <= 600
    assert {group.task for group in groups} == set(instructions)
    for group in groups:
        assert group.instruction == instructions[group.task]
        assert len(group.positives) >= 1 and len(group.hard_negatives) >= 8, group.source
        assert not set(group.positives) & set(group.hard_negatives), group.source
        for doc in (group.query, *group.positives, *group.hard_negatives):
            assert doc.image is None or Path(doc.image).is_file()
            assert doc.image is None or Path(doc.image).is_relative_to((demo_dir / "train").resolve())


def test_train_documents_are_not_test_documents(
    tasks: list[formats.MRBTask], groups: list[formats.TrainGroup]
) -> None:
    def key(doc: formats.Doc) -> tuple[str | None, str | None]:
        image = hashlib.sha256(Path(doc.image).read_bytes()).hexdigest() if doc.image else None
        return doc.text, image

    test_docs = {key(doc) for task in tasks for doc in task.corpus.values()}
    train_docs = {key(doc) for group in groups for doc in (*group.positives, *group.hard_negatives)}
    assert not test_docs & train_docs


def test_same_seed_gives_identical_files_and_rebuild_keeps_other_files(tmp_path: Path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    summary = build_demo(first, seed=0)
    assert summary["seconds"] < 30 and summary["bytes"] < 5_000_000
    assert set(summary["tasks"]) == {p.name for p in (first / "mrb").iterdir()}
    (first / "notes.txt").write_text("mine", encoding="utf-8")
    assert main(["--out", str(first)]) == 0  # a previous build is rebuilt in place
    build_demo(second, seed=0)
    assert _hashes(first, skip=("notes.txt",)) == _hashes(second)
    assert (first / "notes.txt").read_text(encoding="utf-8") == "mine"


def test_another_seed_gives_other_data(tmp_path: Path, demo_dir: Path) -> None:
    build_demo(tmp_path / "other", seed=1)
    name = "mrb/digits-t2i/candidates.trec"
    assert (tmp_path / "other" / name).read_bytes() != (demo_dir / name).read_bytes()


def test_refuses_a_folder_it_did_not_make(tmp_path: Path) -> None:
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "data.txt").write_text("user data", encoding="utf-8")
    with pytest.raises(FileExistsError, match=MARKER):
        build_demo(foreign)
    assert main(["--out", str(foreign)]) == 2
    assert [p.name for p in foreign.iterdir()] == ["data.txt"]
    assert (foreign / "data.txt").read_text(encoding="utf-8") == "user data"
    a_file = tmp_path / "file"
    a_file.write_text("x", encoding="utf-8")
    with pytest.raises(FileExistsError):
        build_demo(a_file)


def test_without_the_demo_extra_the_demo_says_what_to_install(monkeypatch, capsys):
    import sys

    from datamodules.demo import images

    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)  # import fails as if not installed
    with pytest.raises(SystemExit) as stopped:
        images.digit_items(0)
    assert stopped.value.code == 2
    assert capsys.readouterr().err == (
        "error: building the demo benchmark needs the [demo] extra (scikit-learn): pip install -e '.[demo]'\n"
    )
