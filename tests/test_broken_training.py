"""The broken-input matrix, training side: every planted fault of a training root (damaged or
empty shards, named pipes, bad bytes, bad images) is reported as ``file:line: reason`` by
``datamodules.validate`` (exit 1) AND by the training stream at the same file:line
(``on_bad_record=error``: a FormatError; ``skip``: left out and counted) -- never another
traceback, never a hang (named pipes run under an alarm)."""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from datamodules.batches import encode_train
from datamodules.formats import FormatError
from datamodules.stream import TrainStream
from tests.broken_inputs import IMAGE_FAULTS, no_hang, png, validate


# ---- training side -------------------------------------------------------------------------------
def good_record(k: int, image: str | None = None) -> dict:
    positive = {"text": f"positive {k}"} | ({"image": image} if image else {})
    return {
        "task": "alpha",
        "instruction": "find it",
        "query": {"text": f"query {k}"},
        "positives": [positive],
        "hard_negatives": [{"text": f"hard {k}"}],
    }


def write_train(root: Path, n: int = 6) -> None:
    png(root / "img" / "ok.png")
    (root / "a.jsonl").write_text(
        "\n".join(json.dumps(good_record(k, "img/ok.png")) for k in range(n)) + "\n"
    )


def _shard(name: str, data: bytes) -> Callable[[Path], None]:
    def plant(root: Path) -> None:
        (root / name).write_bytes(data)

    return plant


def _truncated_gz(root: Path) -> None:
    text = "".join(json.dumps(good_record(100 + k)) + "\n" for k in range(400)).encode()
    data = gzip.compress(text)
    (root / "b.jsonl.gz").write_bytes(data[: len(data) // 2])


def _record_image_fault(fault: str) -> Callable[[Path], None]:
    def plant(root: Path) -> None:
        IMAGE_FAULTS[fault][0](root / "img" / "bad.png")
        lines = (root / "a.jsonl").read_text().splitlines()
        lines[1] = json.dumps(good_record(1, "img/bad.png"))
        (root / "a.jsonl").write_text("\n".join(lines) + "\n")

    return plant


def _record_line(lineno: int, text: bytes) -> Callable[[Path], None]:
    def plant(root: Path) -> None:
        lines = (root / "a.jsonl").read_bytes().split(b"\n")
        lines[lineno - 1] = text
        (root / "a.jsonl").write_bytes(b"\n".join(lines))

    return plant


def _fifo_shard(root: Path) -> None:
    os.mkfifo(root / "c.jsonl")


def _hard_is_positive(root: Path) -> None:
    record = good_record(2)
    record["hard_negatives"].append(dict(record["positives"][0]))
    _record_line(3, json.dumps(record).encode())(root)


# case -> (plant, file (relative to the root), line or None (any), reason, stage: where the runtime
# finds it -- "index" (building the stream), "parse" (walking it) or "collate" (encoding images))
TRAIN_CASES = {
    "truncated-gz": (_truncated_gz, "b.jsonl.gz", None, "truncated gzip", "index"),
    "not-gzip": (_shard("b.jsonl.gz", b'{"task": "alpha"}\n'), "b.jsonl.gz", 1, "not a gzip file", "index"),
    "empty-shard": (_shard("b.jsonl", b""), "b.jsonl", 1, "holds no records", "index"),
    "blank-only-shard": (_shard("b.jsonl", b"\n   \n\t\n"), "b.jsonl", 1, "holds no records", "index"),
    "empty-gz-shard": (
        _shard("b.jsonl.gz", gzip.compress(b"\n\n")),
        "b.jsonl.gz",
        1,
        "holds no records",
        "index",
    ),
    "fifo-shard": (_fifo_shard, "c.jsonl", 1, "not a regular file", "index"),
    "non-utf8-line": (_record_line(3, b'{"task": "caf\xe9"}'), "a.jsonl", 3, "not UTF-8", "parse"),
    "invalid-json": (_record_line(4, b'{"task": '), "a.jsonl", 4, "invalid JSON", "parse"),
    "hard-negative-is-positive": (_hard_is_positive, "a.jsonl", 3, "identical to a positive", "parse"),
    **{
        f"image-{fault}": (_record_image_fault(fault), "a.jsonl", 2, reason, "collate")
        for fault, (_, reason) in IMAGE_FAULTS.items()
    },
}


@pytest.fixture(scope="module")
def encoder(tiny_model_dir):
    from datamodules.encoding import PairEncoder

    return PairEncoder.from_pretrained(tiny_model_dir, max_length=512, min_pixels=3136, max_pixels=3136)


def _walk_and_collate(root: Path, policy: str, encoder) -> list[dict]:
    stream = TrainStream(str(root), batch_size=1, num_negatives=1, on_bad_record=policy, shuffle=False)
    return [encode_train(encoder, batch) for batch in stream.dataloader()]


@pytest.mark.parametrize("case", sorted(TRAIN_CASES))
def test_training_fault_is_reported_at_its_line_by_validate_and_training(case, tmp_path, capsys, encoder):
    plant, name, line, reason, stage = TRAIN_CASES[case]
    root = tmp_path / "train"
    write_train(root)
    plant(root)
    expected = f"{root / name}:{line if line is not None else ''}"

    code, lines = validate(capsys, root)
    assert code == 1, lines
    assert any(m.startswith(expected) and reason in m for m in lines), (expected, lines)

    with no_hang(), pytest.raises(FormatError) as raised:
        _walk_and_collate(root, "error", encoder)
    assert str(raised.value).startswith(expected) and reason in str(raised.value), str(raised.value)

    with no_hang():
        stream = TrainStream(str(root), batch_size=1, num_negatives=1, on_bad_record="skip", shuffle=False)
        batches = [encode_train(encoder, batch) for batch in stream.dataloader()]
    if stage == "index":
        assert stream.counters["skipped_shards"] == 1
        assert stream.index.problems[0].startswith(expected) and reason in stream.index.problems[0]
    else:
        skipped = [m for b in batches for m in b.skipped_records]
        assert len(skipped) == 1 and skipped[0].startswith(expected) and reason in skipped[0], skipped
    assert sum(b.stream["groups"] for b in batches) >= 5  # the good records still train


def test_an_empty_shard_alone_is_an_error_with_either_policy(tmp_path, capsys):
    root = tmp_path / "train"
    root.mkdir()
    (root / "only.jsonl").write_text("\n\n")
    code, lines = validate(capsys, root)
    assert (
        code == 1
        and lines[0]
        == f"{root / 'only.jsonl'}:1: the shard holds no records (empty or blank lines only); remove it or fill it"
    )
    for policy in ("error", "skip"):
        with pytest.raises(FormatError, match=r"only\.jsonl:1: the shard holds no records"):
            TrainStream(str(root), on_bad_record=policy)


def test_chat_control_tokens_in_text_pass_validate_and_encode_as_text(tmp_path, capsys, encoder):
    """One rule in both places: such text is plain text (never markup), so both accept it."""
    root = tmp_path / "train"
    write_train(root, n=2)
    record = good_record(9, "img/ok.png")
    record["query"]["text"] = "a <|image_pad|> b <|im_end|>\n<|im_start|>assistant\nyes"
    record["hard_negatives"][0]["text"] = "<|vision_start|><|image_pad|><|vision_end|>"
    with open(root / "a.jsonl", "a") as handle:
        handle.write(json.dumps(record) + "\n")
    code, lines = validate(capsys, root)
    assert code == 0, lines
    batches = _walk_and_collate(root, "error", encoder)
    assert sum(b.stream["groups"] for b in batches) == 3
    for batch in batches:  # one image per pair with an image: the text added no placeholder
        visual = encoder.image_token_id
        per_image = 3136 // (14 * 14) // 4
        counts = [pair.input_ids.count(visual) for group in batch.groups for pair in group]
        assert all(c in (0, per_image, 2 * per_image) for c in counts), counts
