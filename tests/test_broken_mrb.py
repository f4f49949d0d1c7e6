"""The broken-input matrix, MRB side: every planted fault of an MRB task is reported as
``file:line: reason`` by ``datamodules.validate`` (exit 1) AND by evaluation at the same file:line
(``on_bad_record=error``: a FormatError; ``skip``: left out and counted per task; a task that
cannot be read as a whole: an error either way) -- never another traceback, never a hang (named
pipes run under an alarm), never silent loss. Also the three validator/reader drifts of issue 12."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from datamodules.datamodule import RerankDataModule
from datamodules.formats import FormatError, list_tasks, load_task, read_task_meta
from tests.broken_inputs import IMAGE_FAULTS, extreme_aspect, make_fifo, no_hang, png, validate, write_task


def _image_case(fault: str):
    def plant(task: Path) -> None:
        (task / "images" / "d4.png").unlink()
        IMAGE_FAULTS[fault][0](task / "images" / "d4.png")

    return plant, "corpus.jsonl:5", IMAGE_FAULTS[fault][1], "record"


def _rewrite(name: str, edit: Callable[[bytes], bytes]) -> Callable[[Path], None]:
    def plant(task: Path) -> None:
        (task / name).write_bytes(edit((task / name).read_bytes()))

    return plant


def _replace_line(name: str, lineno: int, text: bytes) -> Callable[[Path], None]:
    def edit(data: bytes) -> bytes:
        lines = data.split(b"\n")
        lines[lineno - 1] = text
        return b"\n".join(lines)

    return _rewrite(name, edit)


def _remove_task_json(task: Path) -> None:
    (task / "task.json").unlink()


def _rename_task_json(task: Path) -> None:
    (task / "task.json").rename(task / "Task.json")


def _fifo_queries(task: Path) -> None:
    (task / "queries.jsonl").unlink()
    os.mkfifo(task / "queries.jsonl")


# case -> (plant, file:line (relative to the task), reason, "record" | "task": what skip does)
MRB_CASES = {
    **{f"image-{fault}": _image_case(fault) for fault in IMAGE_FAULTS},
    "non-utf8-line-5": (
        _replace_line("corpus.jsonl", 5, b'{"id": "d4", "text": "caf\xe9", "image": "images/d4.png"}'),
        "corpus.jsonl:5",
        "not UTF-8",
        "record",
    ),
    "invalid-json": (
        _replace_line("corpus.jsonl", 4, b'{"id": "d3", '),
        "corpus.jsonl:4",
        "invalid JSON",
        "record",
    ),
    "image-escapes": (
        _replace_line("corpus.jsonl", 5, b'{"id": "d4", "image": "../../outside.png"}'),
        "corpus.jsonl:5",
        "escapes",
        "record",
    ),
    "qrels-unknown-query": (
        _rewrite("qrels.tsv", lambda b: b + b"qX 0 d0 1\n"),
        "qrels.tsv:4",
        "query id 'qX' is not in queries.jsonl",
        "record",
    ),
    "qrels-unknown-document": (
        _rewrite("qrels.tsv", lambda b: b + b"q0 0 dX 1\n"),
        "qrels.tsv:4",
        "document id 'dX' is not in corpus.jsonl",
        "record",
    ),
    "candidate-unknown-document": (
        _rewrite("candidates.trec", lambda b: b + b"q0 Q0 dZ 7 0.5 bm25\n"),
        "candidates.trec:13",
        "document id 'dZ' is not in corpus.jsonl",
        "record",
    ),
    "query-without-candidates": (
        _rewrite(
            "candidates.trec", lambda b: b"\n".join(x for x in b.split(b"\n") if not x.startswith(b"q1 "))
        ),
        "queries.jsonl:2",
        "no candidate",
        "record",
    ),
    "qrels-non-utf8": (_replace_line("qrels.tsv", 2, b"q0 0 d\xff1 0"), "qrels.tsv:2", "not UTF-8", "record"),
    "score-not-finite": (
        _replace_line("candidates.trec", 3, b"q0 Q0 d2 3 nan bm25"),
        "candidates.trec:3",
        "not finite",
        "record",
    ),
    "task-json-list": (
        _rewrite("task.json", lambda b: b"[" + b + b"]"),
        "task.json:1",
        "expected a JSON object",
        "task",
    ),
    "task-json-invalid": (
        _rewrite("task.json", lambda b: b"{\n  oops"),
        "task.json:2",
        "invalid JSON",
        "task",
    ),
    "task-json-missing": (_remove_task_json, "task.json:1", "missing task.json", "task"),
    "task-json-wrong-case": (_rename_task_json, "task.json:1", "Task.json is there", "task"),
    "queries-fifo": (_fifo_queries, "queries.jsonl:1", "not a regular file", "task"),
    # Issue 23 item 4: a task whose every query is left out would vanish from the average with skip.
    "queries-empty": (
        _rewrite("queries.jsonl", lambda b: b""),
        "queries.jsonl:1",
        "no query defined",
        "task",
    ),
    "corpus-empty": (
        _rewrite("corpus.jsonl", lambda b: b""),
        "corpus.jsonl:1",
        "no document defined",
        "task",
    ),
    "candidates-empty": (
        _rewrite("candidates.trec", lambda b: b""),
        "queries.jsonl:1",
        "no candidate",
        "task",
    ),
    "no-relevant-judgement": (
        _rewrite("qrels.tsv", lambda b: b.replace(b" 1\n", b" 0\n").replace(b" 2\n", b" 0\n")),
        "qrels.tsv:1",
        "the task cannot be scored",
        "task",
    ),
}


def _datamodule(model_dir: Path, root: Path, policy: str) -> RerankDataModule:
    return RerankDataModule(
        model_name_or_path=str(model_dir),
        eval_root=str(root),
        on_bad_record=policy,
        max_length=512,
        min_pixels=3136,
        max_pixels=3136,
    )


@pytest.mark.parametrize("case", sorted(MRB_CASES))
def test_mrb_fault_is_reported_at_its_line_by_validate_and_evaluation(case, tmp_path, capsys, tiny_model_dir):
    plant, where, reason, level = MRB_CASES[case]
    root = tmp_path / "mrb"
    write_task(root / "t")
    png(tmp_path / "outside.png")
    plant(root / "t")
    expected = f"{root / 't' / where}:"

    code, lines = validate(capsys, root)
    assert code == 1, lines
    assert any(line.startswith(expected) and reason in line for line in lines), (expected, lines)

    with no_hang(), pytest.raises(FormatError) as raised:  # strict evaluation: same file:line
        list(_datamodule(tiny_model_dir, root, "error").val_dataloader())
    assert str(raised.value).startswith(expected) and reason in str(raised.value), str(raised.value)

    module = _datamodule(tiny_model_dir, root, "skip")
    with no_hang():
        if level == "task":  # a task is never dropped: an error with skip too
            with pytest.raises(FormatError, match=reason.replace("(", r"\(").replace(")", r"\)")):
                list(module.val_dataloader())
            return
        batches = list(module.val_dataloader())
    assert {b.qid for b in batches} == {"q0", "q1"}  # every judged query is still scored
    reported = module.eval_load_problems.get("t", []) + [m for b in batches for m in b.skipped]
    assert any(m.startswith(expected) and reason in m for m in reported), reported


def test_skipped_candidates_are_left_out_of_the_ranking_and_counted(tmp_path, tiny_model_dir):
    root = tmp_path / "mrb"
    write_task(root / "t")
    (root / "t" / "images" / "d1.png").write_bytes(b"")
    module = _datamodule(tiny_model_dir, root, "skip")
    batches = {b.qid: b for b in module.val_dataloader()}
    assert sorted(batches["q0"].doc_ids) == ["d0", "d2", "d3", "d4", "d5"]
    assert len(batches["q0"].first_stage) == 5 and len(batches["q0"].pairs) == 5
    assert [m.split(": ")[0] for m in batches["q0"].skipped] == [f"{root / 't' / 'corpus.jsonl'}:2"]


def test_a_bad_query_image_leaves_out_its_candidates_counted(tmp_path, tiny_model_dir):
    root = tmp_path / "mrb"
    write_task(root / "t")
    lines = (root / "t" / "queries.jsonl").read_text().splitlines()
    lines[1] = json.dumps({"id": "q1", "text": "query 1", "image": "images/q1.png"})
    (root / "t" / "queries.jsonl").write_text("\n".join(lines) + "\n")
    extreme_aspect(root / "t" / "images" / "q1.png")
    batches = {b.qid: b for b in _datamodule(tiny_model_dir, root, "skip").val_dataloader()}
    assert batches["q1"].doc_ids == [] and len(batches["q1"].skipped) == 6
    assert batches["q1"].skipped[0].startswith(f"{root / 't' / 'queries.jsonl'}:2: image")
    with pytest.raises(FormatError, match=r"queries\.jsonl:2: image .*aspect ratio"):
        list(_datamodule(tiny_model_dir, root, "error").val_dataloader())


def test_on_bad_record_is_checked_with_its_config_key():
    with pytest.raises(ValueError, match="data.on_bad_record must be one of"):
        RerankDataModule(on_bad_record="ignore")


# ---- drifts between the validator and the readers (issue 12) -------------------------------------
def test_rank_column_is_not_read_by_either(tmp_path, capsys):
    root = tmp_path / "mrb"
    write_task(root / "t")
    path = root / "t" / "candidates.trec"
    path.write_text(path.read_text().replace("Q0 d0 1 ", "Q0 d0 first "))
    code, lines = validate(capsys, root)
    assert code == 0, lines
    assert load_task(root / "t").candidates["q0"]["d0"] == 10.0


def test_task_json_holding_a_list_is_a_format_error_not_an_attribute_error(tmp_path):
    write_task(tmp_path / "t")
    (tmp_path / "t" / "task.json").write_text('["T2I", "find", "ndcg@5"]')
    with pytest.raises(FormatError, match=r"task\.json:1: expected a JSON object .* got list"):
        read_task_meta(tmp_path / "t")


def test_queries_without_relevant_documents_pass_both(tmp_path, capsys):
    root = tmp_path / "mrb"
    write_task(root / "t")
    with open(root / "t" / "queries.jsonl", "a") as handle:
        handle.write(json.dumps({"id": "q2", "text": "unjudged"}) + "\n")
    with open(root / "t" / "qrels.tsv", "a") as handle:
        handle.write("q2 0 d3 0\n")  # judged, nothing relevant: the metrics skip it
    with open(root / "t" / "queries.jsonl", "a") as handle:
        handle.write(json.dumps({"id": "q3", "text": "not in qrels at all"}) + "\n")
    code, lines = validate(capsys, root)
    assert code == 0, lines
    assert lines[0] == (  # issue 23 item 5: not an error, but said, with the count and the first ids
        f"note: {root / 't' / 'queries.jsonl'}: 2 of 4 queries have no relevant judgement in qrels.tsv and "
        "will not be scored (trec_eval skips them); first: 'q2', 'q3'"
    )
    assert lines[1].startswith("OK: MRB root") and " 4 queries" in lines[1]
    assert load_task(root / "t").qrels["q2"] == {"d3": 0}


def test_a_task_folder_without_task_json_is_named_not_dropped(tmp_path, capsys):
    root = tmp_path / "mrb"
    write_task(root / "a")
    write_task(root / "b")
    (root / "b" / "task.json").unlink()
    with pytest.raises(FormatError, match=r"b/task\.json:1: missing task\.json"):
        list_tasks(root)
    assert list_tasks(root, ["a"]) == [root / "a"]  # selecting the intact task still works
    code, lines = validate(capsys, root)
    assert code == 1 and lines[0].startswith(f"{root / 'b' / 'task.json'}:1: missing task.json")


def test_validation_with_skip_reports_skipped_candidates_per_task(tmp_path, capsys, tiny_model_dir):
    from lightning_modules.reranker import RerankerModule
    from tests.helpers import cpu_trainer

    root = tmp_path / "mrb"
    write_task(root / "t")
    make_fifo(root / "t" / "images" / "bad.png")
    lines = (root / "t" / "corpus.jsonl").read_text().splitlines()
    lines[1] = json.dumps({"id": "d1", "text": "document 1", "image": "images/bad.png"})
    (root / "t" / "corpus.jsonl").write_text("\n".join(lines) + "\n")
    trainer = cpu_trainer(tmp_path / "run")
    module = RerankerModule(str(tiny_model_dir), lora_r=0)
    with no_hang(60):
        (metrics,) = trainer.validate(
            module, datamodule=_datamodule(tiny_model_dir, root, "skip"), verbose=False
        )
    assert metrics["val/t/skipped_candidates"] == 2.0  # d1 is a candidate of both queries
    record = json.loads((tmp_path / "run" / "eval_history.jsonl").read_text())
    assert record["skipped_candidates"] == {"t": 2}  # the run folder's record of it
    out = capsys.readouterr().out
    assert "val: task t: 2 candidate(s) left out as bad records in 2 query(ies)" in out
    assert 0.0 <= metrics["val/t/ndcg@5"] <= 1.0


def _fifo_image_task(root: Path) -> Path:
    write_task(root / "t")
    (root / "t" / "images" / "d4.png").unlink()
    make_fifo(root / "t" / "images" / "d4.png")
    return root / "t" / "corpus.jsonl"


def test_cli_validate_on_a_fifo_image_ends_with_one_file_line_error(tmp_path, capsys, tiny_model_dir):
    from experiments.cli import main as cli_main

    corpus = _fifo_image_task(tmp_path / "mrb")
    args = [
        "validate",
        "--config",
        "experiments/configs/demo.yaml",
        f"--model.model_name_or_path={tiny_model_dir}",
        f"--data.eval_root={tmp_path / 'mrb'}",
        f"--runs_dir={tmp_path / 'runs'}",
    ]
    with no_hang(120), pytest.raises(SystemExit) as raised:
        cli_main(args)
    assert raised.value.code == 1
    err = capsys.readouterr().err
    assert f"error: {corpus}:5: image {corpus.parent / 'images' / 'd4.png'} is not a regular file" in err
    assert "Traceback" not in err


def test_error_message_unwraps_an_error_raised_in_a_dataloader_worker(tmp_path, tiny_model_dir):
    from datamodules.trec import error_message

    corpus = _fifo_image_task(tmp_path / "mrb")
    module = _datamodule(tiny_model_dir, tmp_path / "mrb", "error")
    module.hparams.num_workers = 1
    with no_hang(60), pytest.raises(FormatError) as raised:
        list(module.val_dataloader())
    assert "Traceback" in str(raised.value)  # what torch hands the main process
    assert error_message(raised.value).startswith(f"{corpus}:5: image ")
    assert error_message(FormatError("a.jsonl:3: bad")) == "a.jsonl:3: bad"
