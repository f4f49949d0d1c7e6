"""The training stream: exactly-once coverage over ranks × workers, equal batches, exact resume,
negative sampling rules, bad-record policy, fsspec URLs, and the Lightning wiring."""

from __future__ import annotations

import gzip
import json
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import lightning as L
import pytest
import torch
from PIL import Image

from datamodules.batches import TrainBatch, encode_train
from datamodules.formats import Doc, FormatError, TrainGroup
from datamodules.groups import DocPool, NegativeSampler
from datamodules.stream import StreamIndex, TrainStream

SHARD_SIZES = (13, 7, 22, 3, 9, 1)  # uneven on purpose; 55 records


def record(k: int, task: str, hard: int = 2, positives: int = 1) -> dict:
    return {
        "task": task,
        "instruction": f"find {task}",
        "query": {"text": f"query {k}"},
        "positives": [{"text": f"positive {k}.{i}"} for i in range(positives)],
        "hard_negatives": [{"text": f"hard {k}.{i}"} for i in range(hard)],
    }


def write_train_root(root: Path, sizes=SHARD_SIZES, tasks=("alpha", "beta"), gz_last=True, hard=2) -> int:
    """Shards of records numbered 0.. (query text "query <k>"), with blank lines and one gzip shard."""
    root.mkdir(parents=True, exist_ok=True)
    k = 0
    for shard, size in enumerate(sizes):
        lines = []
        for i in range(size):
            lines.append(json.dumps(record(k, tasks[k % len(tasks)], hard=hard)))
            if i % 4 == 1:
                lines.append("   ")
            k += 1
        text = "\n".join(lines) + "\n"
        if gz_last and shard == len(sizes) - 1:
            with gzip.open(root / f"shard{shard}.jsonl.gz", "wt", encoding="utf-8") as handle:
                handle.write(text)
        else:
            (root / "sub" if shard % 2 else root).mkdir(exist_ok=True)
            ((root / "sub" if shard % 2 else root) / f"shard{shard}.jsonl").write_text(text, encoding="utf-8")
    return k


def query_number(group) -> int:
    return int(group.query.text.split()[1])


@pytest.fixture(scope="module")
def train_root(tmp_path_factory) -> tuple[Path, int]:
    root = tmp_path_factory.mktemp("stream") / "train"
    return root, write_train_root(root)


def stream(root, **kwargs) -> TrainStream:
    defaults = dict(batch_size=2, shuffle_buffer=8, block_size=4, pool_warmup=8, num_negatives=3)
    return TrainStream(str(root), **{**defaults, **kwargs})


def walk(s: TrainStream, num_workers: int) -> list:
    return list(s.dataloader(num_workers=num_workers))


def test_every_example_exactly_once_over_2_ranks_x_2_workers(train_root):
    root, n = train_root
    index = StreamIndex.build(str(root), block_size=4)
    assert index.num_records == n == 55
    counts: Counter = Counter()
    batches = []
    for rank in range(2):
        s = stream(root, rank=rank, world_size=2, index=index)
        out = walk(s, num_workers=2)
        assert [b.index for b in out] == list(range(len(s)))  # round-robin over workers keeps the order
        assert all(len(b.groups) == 2 for b in out)
        batches.append(len(out))
        counts.update(query_number(g) for b in out for g in b.groups)
    dropped = s.remainder_ids(0)
    # 55 records, 2 ranks x batch 2: 13 batches per rank, 3 records dropped (the documented remainder)
    assert batches == [13, 13] and len(dropped) == 3 == s.remainder
    assert max(counts.values()) == 1
    assert len(counts) + len(dropped) == n


def test_equal_batches_with_uneven_shards_and_rotating_remainder(train_root):
    root, n = train_root
    index = StreamIndex.build(str(root), block_size=4)
    dropped_per_epoch = []
    for epoch in range(3):
        per_rank = []
        for rank in range(3):
            s = stream(root, rank=rank, world_size=3, batch_size=4, index=index)
            s.epoch = epoch
            per_rank.append(walk(s, num_workers=0))
        assert {len(batches) for batches in per_rank} == {n // 12}  # 4 batches on every rank
        ids = [i for batches in per_rank for b in batches for i in b.ids]
        dropped = s.remainder_ids(epoch)
        assert len(set(ids)) == len(ids) and not set(ids) & set(dropped)
        assert len(ids) + len(dropped) == n
        dropped_per_epoch.append(set(dropped))
    assert len(set(map(frozenset, dropped_per_epoch))) > 1  # not always the same records left out


def test_example_order_does_not_depend_on_num_workers(train_root):
    root, _ = train_root
    order = {}
    for workers in (0, 2):
        order[workers] = [b.ids for b in walk(stream(root, rank=1, world_size=2), workers)]
    assert order[0] == order[2]


def _signature(batches) -> list:
    return [(b.epoch, b.index, b.ids, [g.documents for g in b.groups]) for b in batches]


@pytest.mark.parametrize("num_workers", [0, 2])
def test_resume_mid_epoch_continues_with_the_next_unseen_example(train_root, num_workers):
    root, _ = train_root
    full = _signature(walk(stream(root), num_workers))
    interrupted = stream(root)
    iterator = iter(interrupted.dataloader(num_workers=num_workers))
    for _ in range(9):
        interrupted.mark_consumed(next(iterator))
    next(iterator)  # prefetched by the loader but never trained on: must not count
    state = interrupted.state_dict()
    del iterator
    assert state["epoch"] == 0 and state["consumed_batches"] == 9
    resumed = stream(root)
    resumed.load_state_dict(state)
    rest = _signature(walk(resumed, num_workers))
    assert rest == full[9:]  # same ids and the same negatives as the uninterrupted run
    assert resumed.counters["groups"] == 18


def test_epoch_boundary_advances_and_resumes_into_the_next_epoch(train_root):
    root, _ = train_root
    s = stream(root)
    first = walk(s, 0)
    for batch in first:
        s.mark_consumed(batch)
    assert (s.epoch, s.consumed) == (1, 0)
    assert s.counters["epochs_completed"] == 1 and s.counters["remainder_dropped"] == s.remainder
    second = walk(s, 0)
    assert {b.epoch for b in second} == {1}
    assert [b.ids for b in second] != [b.ids for b in first]  # reshuffled
    ids = [i for b in second for i in b.ids]
    assert len(second) == len(first) == 27 and len(set(ids)) == len(ids) == 54  # 55 records, 1 left out
    with pytest.raises(RuntimeError, match="out of order"):
        s.mark_consumed(second[1])


def test_load_state_dict_refuses_a_changed_layout_mid_epoch(train_root, tmp_path):
    root, _ = train_root
    s = stream(root)
    s.mark_consumed(walk(s, 0)[0])
    state = s.state_dict()
    with pytest.raises(ValueError, match="world_size"):
        stream(root, world_size=2).load_state_dict(state)
    other = tmp_path / "other"
    write_train_root(other, sizes=(20, 20))
    with pytest.raises(ValueError, match="changed since the checkpoint"):
        stream(other).load_state_dict(state)
    s.consumed = 0  # at an epoch boundary the layout and the data may change freely
    stream(root, world_size=2).load_state_dict(s.state_dict())
    resumed = stream(other)
    resumed.load_state_dict(s.state_dict())
    assert (resumed.epoch, resumed.consumed) == (0, 0) and resumed.counters["groups"] == 2


# ---- negatives -----------------------------------------------------------------------------------
def test_negatives_never_contain_a_positive_and_prefer_the_same_task(tmp_path):
    root = tmp_path / "train"
    root.mkdir()
    lines = []
    for k in range(40):
        rec = record(k, "alpha" if k % 2 else "beta", hard=3, positives=2)
        # (a positive among the hard negatives is a bad record: tests/test_broken_training.py)
        rec["positives"].append({"text": "shared positive"})  # also appears in other records' pools
        lines.append(json.dumps(rec))
    (root / "a.jsonl").write_text("\n".join(lines) + "\n")
    s = TrainStream(str(root), batch_size=4, num_negatives=6, hard_negative_ratio=0.5, shuffle_buffer=16)
    groups = [g for b in walk(s, 0) for g in b.groups]
    assert len(groups) == 40
    for g in groups:
        k = query_number(g)
        own_positives = {f"positive {k}.0", f"positive {k}.1", "shared positive"}
        positive, *negatives = g.documents
        assert positive.text in own_positives and g.positives == (True,) + (False,) * 6
        assert not {d.text for d in negatives} & own_positives
        assert len(set(negatives)) == 6 and g.query not in negatives
        hard = [d for d in negatives if d.text.startswith(f"hard {k}.")]
        assert len(hard) == 3 and g.filled_hard == 0
        randoms = [d for d in negatives if d not in hard]
        task_of = {0: "beta", 1: "alpha"}
        assert g.other_task == 0
        assert all(task_of[int(d.text.split()[1].split(".")[0]) % 2] == g.task for d in randoms)


def test_too_few_hard_negatives_are_filled_with_random_ones_and_counted(tmp_path):
    root = tmp_path / "train"
    write_train_root(root, sizes=(30,), gz_last=False, hard=0)
    s = TrainStream(str(root), batch_size=3, num_negatives=4, hard_negative_ratio=0.5, shuffle_buffer=8)
    batches = walk(s, 0)
    groups = [g for b in batches for g in b.groups]
    assert all(g.filled_hard == 2 and len(g.documents) == 5 for g in groups)
    assert sum(b.info()["filled_hard"] for b in batches) == 2 * len(groups) == 60


def test_pool_is_bounded_seeded_and_falls_back_to_other_tasks():
    pool = DocPool(capacity=5, seed=1)
    pool.add("a", [Doc(text=f"a{i}") for i in range(100)])
    pool.add("b", [Doc(text="b0")])
    assert pool.size("a") == 5 and len(pool) == 6
    again = DocPool(capacity=5, seed=1)
    again.add("a", [Doc(text=f"a{i}") for i in range(100)])
    assert again._docs["a"] == pool._docs["a"]
    group = TrainGroup("b", "find", Doc(text="q"), (Doc(text="b0"),), (), "f.jsonl:1")
    sampled = NegativeSampler(num_negatives=3, hard_negative_ratio=0.0).sample(group, random.Random(0), pool)
    assert sampled.other_task == 3 and Doc(text="b0") not in sampled.documents[1:]
    with pytest.raises(ValueError, match="f.jsonl:1: only 5 distinct"):
        NegativeSampler(num_negatives=6, hard_negative_ratio=0.0).sample(group, random.Random(0), pool)


# ---- bad records ---------------------------------------------------------------------------------
@pytest.fixture
def bad_root(tmp_path) -> tuple[Path, list[str]]:
    root = tmp_path / "train"
    root.mkdir()
    lines = [json.dumps(record(k, "alpha")) for k in range(20)]
    lines[4] = '{"task": "alpha", "query": {"text": "broken"'  # invalid JSON, line 5
    lines[11] = json.dumps({"task": "alpha", "query": {"text": "q"}, "positives": []})  # line 12
    (root / "a.jsonl").write_text("\n".join(lines) + "\n")
    return root, [f"{root / 'a.jsonl'}:5:", f"{root / 'a.jsonl'}:12:"]


def first_error(s: TrainStream, num_workers: int) -> str:
    try:
        walk(s, num_workers)
    except FormatError as err:
        # Drop the traceback: its frames hold the loader iterator in a reference cycle, and a loader
        # collected later by the GC waits 5 s for workers whose queues were finalised first.
        err.__traceback__ = None
        return str(err)
    return ""


def test_bad_record_error_names_file_and_line(bad_root):
    root, wheres = bad_root
    message = first_error(TrainStream(str(root), batch_size=2, shuffle=False), 0)
    assert message.startswith(wheres[0]) and "invalid JSON" in message
    message = first_error(TrainStream(str(root), batch_size=2, shuffle_buffer=4), 2)  # raised in a worker
    assert any(where in message for where in wheres)


def test_bad_record_skip_is_counted_never_silent(bad_root):
    root, wheres = bad_root
    s = TrainStream(str(root), batch_size=2, on_bad_record="skip", shuffle_buffer=6)
    batches = walk(s, 2)
    assert len(batches) == 10  # positions are kept: the holes do not shift other examples
    skipped = [message for b in batches for message in b.skipped]
    assert sorted(m.split(" ")[0] for m in skipped) == sorted(wheres)
    assert sum(len(b.groups) for b in batches) == 18
    for batch in batches:
        s.mark_consumed(batch)
    assert s.counters["skipped"] == 2 and s.counters["groups"] == 18


def test_resume_with_skipped_records_replays_the_same_negatives(bad_root):
    root, _ = bad_root
    path = root / "a.jsonl"
    lines = path.read_text().splitlines()
    lines[7] = json.dumps({k: v for k, v in record(7, "alpha").items() if k != "instruction"})
    path.write_text("\n".join(lines) + "\n")

    def make():
        return TrainStream(str(root), batch_size=2, on_bad_record="skip", shuffle_buffer=6, pool_warmup=2)

    def signature(batches):
        return [(b.index, b.ids, b.skipped_ids, [g.documents for g in b.groups]) for b in batches]

    full = signature(walk(make(), 2))
    assert sum(len(ids) for _, _, ids, _ in full) == 3  # bad JSON, no positives, no instruction
    interrupted = make()
    for batch in walk(interrupted, 2)[:5]:
        interrupted.mark_consumed(batch)
    resumed = make()
    resumed.load_state_dict(interrupted.state_dict())
    assert signature(walk(resumed, 2)) == full[5:]


def test_collate_refuses_bad_images_with_file_line_or_skips_and_counts(tmp_path, tiny_model_dir):
    from datamodules.encoding import PairEncoder

    root = tmp_path / "train"
    (root / "img").mkdir(parents=True)
    Image.new("RGB", (56, 56), (200, 10, 10)).save(root / "img" / "ok.png")
    Image.new("1", (8200, 8200)).save(root / "img" / "bomb.png")  # 67 M pixels, tiny on disk
    lines = []
    for k in range(8):
        rec = record(k, "alpha")
        rec["positives"] = [{"text": f"positive {k}", "image": "img/ok.png"}]
        lines.append(rec)
    lines[2]["positives"][0]["image"] = "img/missing.png"
    lines[5]["positives"][0]["image"] = "img/bomb.png"
    (root / "a.jsonl").write_text("\n".join(json.dumps(r) for r in lines) + "\n")
    encoder = PairEncoder.from_pretrained(tiny_model_dir, max_length=512, min_pixels=3136, max_pixels=3136)

    skip = TrainStream(str(root), batch_size=8, num_negatives=2, on_bad_record="skip", shuffle=False)
    (batch,) = walk(skip, 0)
    out = encode_train(encoder, batch)
    assert out.positives.shape == (6, 3) and sum(len(g) for g in out.groups) == 18
    assert out.stream["skipped"] == 2 and out.stream["groups"] == 6
    assert sorted(m.split(": ")[0] for m in out.skipped_records) == [
        f"{root / 'a.jsonl'}:{i}" for i in (3, 6)
    ]
    assert any("safety limit" in m for m in out.skipped_records)

    strict = TrainStream(str(root), batch_size=8, num_negatives=2, shuffle=False)
    with pytest.raises(FormatError, match=r"a\.jsonl:3: .*missing\.png"):
        encode_train(encoder, walk(strict, 0)[0])


# ---- URLs ----------------------------------------------------------------------------------------
def test_fsspec_url_root_streams_exactly_once_with_url_images():
    import fsspec

    fs = fsspec.filesystem("memory")
    base = "/rerank-lab-test/train"
    lines = []
    for k in range(12):
        rec = record(k, "alpha")
        rec["query"]["image"] = f"img/q{k}.png"
        lines.append(json.dumps(rec))
    fs.pipe(f"{base}/a.jsonl", ("\n".join(lines[:7]) + "\n").encode())
    fs.pipe(f"{base}/b.jsonl.gz", gzip.compress(("\n".join(lines[7:]) + "\n").encode()))
    fs.pipe(f"{base}/bad.jsonl", json.dumps({**record(99, "alpha"), "query": {"image": "../x.png"}}).encode())
    try:
        s = TrainStream(f"memory://{base}", batch_size=1, on_bad_record="skip")  # 13 records: 13 batches
        batches = walk(s, 0)
        groups = [g for b in batches for g in b.groups]
        assert sorted(query_number(g) for g in groups) == list(range(12))
        assert all(g.query.image == f"memory://{base}/img/q{query_number(g)}.png" for g in groups)
        (skipped,) = [m for b in batches for m in b.skipped]
        assert skipped.startswith(f"memory://{base}/bad.jsonl:1:") and "escapes" in skipped
    finally:
        fs.rm("/rerank-lab-test", recursive=True)


# ---- Lightning wiring ----------------------------------------------------------------------------
class StreamData(L.LightningDataModule):
    """The wiring RerankDataModule uses, on a stream whose batches are just example ids."""

    def __init__(self, root: str, num_workers: int) -> None:
        super().__init__()
        self.root, self.num_workers = root, num_workers
        self.train_stream: TrainStream | None = None

    def setup(self, stage: str) -> None:
        if self.train_stream is None:
            self.train_stream = stream(
                self.root, rank=self.trainer.global_rank, world_size=self.trainer.world_size, batch_size=2
            )

    def train_dataloader(self):
        return self.train_stream.dataloader(collate_fn=collate_ids, num_workers=self.num_workers)

    def on_before_batch_transfer(self, batch, dataloader_idx: int):
        self.train_stream.mark_consumed(batch)
        return batch

    def state_dict(self):
        return {"train_stream": self.train_stream.state_dict()}

    def load_state_dict(self, state) -> None:
        self.train_stream.load_state_dict(state["train_stream"])


@dataclass
class IdBatch(TrainBatch):
    """A training batch that carries only its example ids (and its stream position)."""

    ids: list[list[int]] = field(default_factory=list)


def collate_ids(batch) -> IdBatch:
    return IdBatch(
        groups=[],
        positives=torch.zeros(0, 0, dtype=torch.bool),
        stream=batch.info(),
        ids=[list(i) for i in batch.ids],
    )


class IdModel(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.seen: list[list[int]] = []

    def training_step(self, batch, batch_idx):
        self.seen.append(batch.ids)
        return (self.weight - 1.0).pow(2).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _trainer(tmp_path, **kwargs) -> L.Trainer:
    return L.Trainer(
        default_root_dir=tmp_path,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        **kwargs,
    )


@pytest.mark.filterwarnings("ignore:Your `IterableDataset` has `__len__` defined")  # it is exact here
@pytest.mark.filterwarnings("ignore:Be aware that when using `ckpt_path`")
def test_lightning_checkpoint_resume_mid_epoch_with_workers(train_root, tmp_path):
    root, _ = train_root
    full_model = IdModel()
    _trainer(tmp_path / "full", max_epochs=2, enable_checkpointing=False).fit(
        full_model, StreamData(str(root), 2)
    )
    assert len(full_model.seen) == 2 * 27

    checkpoint = L.pytorch.callbacks.ModelCheckpoint(
        dirpath=tmp_path / "ckpt", every_n_train_steps=10, save_top_k=-1
    )
    first = IdModel()
    _trainer(tmp_path / "a", max_steps=10, callbacks=[checkpoint]).fit(first, StreamData(str(root), 2))
    ckpt = next((tmp_path / "ckpt").glob("*step=10*.ckpt"))
    assert torch.load(ckpt, weights_only=False)["StreamData"]["train_stream"]["consumed_batches"] == 10
    resumed = IdModel()
    _trainer(tmp_path / "b", max_epochs=2, enable_checkpointing=False).fit(
        resumed, StreamData(str(root), 2), ckpt_path=ckpt
    )
    assert first.seen + resumed.seen == full_model.seen
