"""Streaming training groups: exactly once per epoch over ranks × workers, equal batches, resumable.

The training root holds JSONL / JSONL.gz shards (docs/formats.md §2), on local disk or behind any fsspec
URL (``s3://``, ``gs://``, ``memory://``...). Nothing holds the dataset in memory: a cheap index
pass (one line scan, no JSON parsing) counts the records of every shard and remembers a byte offset
every ``block_size`` records of plain shards; that index is all that is kept.

How one epoch is laid out (a pure function of the index, ``seed``, ``epoch``, ``world_size`` and
``batch_size``; never of ``num_workers``)::

    blocks      each plain shard is cut into blocks of block_size records (seekable); a gzip shard is
                one block (gzip cannot seek)
    sequence    the blocks in a seeded per-epoch order, concatenated: N records
    window      a seeded per-epoch rotation of that sequence; the first R·M·B records are used
    rank r      records [r·M·B, (r+1)·M·B) of the window, read in order and shuffled through a
                bounded buffer (shuffle_buffer records): M batches of B groups
    remainder   the last N − R·M·B (< R·B) records of the window are dropped for this epoch and
                counted (``remainder_dropped``). The rotation changes every epoch, so no record is
                always the one left out.

M = N // (R·B) is the same on every rank, so DDP never waits on a rank that ran out of data.

Workers: a rank's batch j is produced by DataLoader worker ``(j − start) mod K``. Every worker
reads (but does not parse) the rank's records to run the same seeded shuffle; it parses, samples
negatives for and collates only its own batches. The DataLoader returns the workers' outputs
round-robin, so the main process receives batches 0, 1, 2, ... in order.

Position: each batch carries ``(epoch, index)``. The main process calls :meth:`TrainStream.mark_consumed`
for every batch the training loop actually uses (``on_before_batch_transfer``); batches that
workers or Lightning prefetched but that never reached a training step are not counted. The
checkpointed position is therefore exactly "batches consumed this epoch"; a resumed stream skips
them and continues with the next unseen example (same ids, same negatives when ``num_workers``
is unchanged). Bad records (``on_bad_record="skip"``) leave a hole in their batch and are counted;
they never shift other examples, so positions stay exact.

Epochs are the stream's own: one ends when its last batch is consumed. A partly consumed epoch
(``limit_train_batches``, ``max_steps``, an interruption) is continued by the next iteration, never
restarted. A batch whose groups were all skipped as bad records has 0 groups; every rank still gets
it, so the training step must run (a zero loss touching the trainable parameters) to keep DDP in step.

Random negatives come from a bounded per-task reservoir (:class:`~datamodules.groups.DocPool`)
per worker: it is primed with the first ``pool_warmup`` records of the rank and then fed the
documents of the worker's own groups.

Why not Hugging Face ``datasets`` streaming or ``litdata``: ``split_dataset_by_node`` assigns whole
shards when their number divides the world size and otherwise strides examples, neither of which
gives equal batch counts for shards of unequal length; its resumable state needs torchdata's
StatefulDataLoader to see worker positions and drops the shuffle buffer's content on resume
(huggingface/datasets#7444), so examples are lost. ``litdata`` first converts the data into its own
chunk format. Both would be wrapped so thickly that the wrapper would be the engine; the I/O layer
that matters (local disk, object stores, gzip) is fsspec, which this module uses directly.

The shard index lives in :mod:`datamodules.shards`. This file stays over 500 lines because the epoch
layout, the worker protocol, the resume position and the skip accounting are one contract that is
read (and changed) together.
"""

from __future__ import annotations

import gzip
import json
import logging
import posixpath
import random
from bisect import bisect_right
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fsspec.implementations.local import LocalFileSystem
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from datamodules.batches import StreamBatch, TrainBatch
from datamodules.formats import FormatError, TrainGroup, parse_train_group
from datamodules.groups import DocPool, NegativeSampler
from datamodules.shards import Block, StreamIndex, list_shards

__all__ = [
    "BAD_RECORD_POLICIES",
    "StreamBatch",
    "StreamIndex",
    "StreamLoader",
    "TrainStream",
    "list_shards",
]

log = logging.getLogger("rerank_lab.data")

BAD_RECORD_POLICIES = ("error", "skip")
_MAX_SKIP_WARNINGS = 20  # per worker and epoch; the counters hold the totals


# ---- parsing of records behind a URL -------------------------------------------------------------
def _remote_image(fs, base: str, relative: Any, where: str) -> str:
    if not isinstance(relative, str) or not relative:
        raise FormatError(f"{where}: image must be a non-empty relative path string")
    if relative.startswith("/") or "://" in relative:
        raise FormatError(f"{where}: image path {relative!r} is absolute; use a path relative to {base}")
    joined = posixpath.normpath(posixpath.join(base, relative))
    if not joined.startswith(base.rstrip("/") + "/"):
        raise FormatError(f"{where}: image path {relative!r} escapes {base}; keep images inside it")
    return fs.unstrip_protocol(joined)


def _parse_remote_group(fs, record: dict, base: str, where: str) -> TrainGroup:
    """:func:`formats.parse_train_group` for shards behind a URL: images become URLs under ``base``
    (checked with POSIX path rules; object stores have no symlinks)."""
    return parse_train_group(
        record, base, where, resolve_image=lambda image, at: _remote_image(fs, base, image, at)
    )


# ---- the stream ----------------------------------------------------------------------------------
def _check_stream_args(on_bad_record: str, batch_size: int, rank: int, world_size: int) -> None:
    if on_bad_record not in BAD_RECORD_POLICIES:
        raise ValueError(f"on_bad_record must be one of {BAD_RECORD_POLICIES}, got {on_bad_record!r}")
    if batch_size < 1 or world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(
            f"need batch_size >= 1 and 0 <= rank < world_size, got {batch_size}, {rank}, {world_size}"
        )


class TrainStream(IterableDataset):
    """Training groups streamed from JSONL shards; see the module docstring for the layout.

    Args:
        root: folder (or single file) of JSONL / JSONL.gz shards; a local path or an fsspec URL.
        batch_size: groups per batch (B). Batches are formed here; the DataLoader gets
            ``batch_size=None`` (use :meth:`dataloader`).
        rank: global rank of this process.
        world_size: number of ranks (R).
        num_negatives: N negatives per group (group size 1 + N).
        hard_negative_ratio: share of N taken from the record's ``hard_negatives``.
        task_instructions: instruction per task for records without one.
        default_instruction: instruction for records and tasks that have none (else a bad record).
        seed: seed of the block order, rotation, shuffle and negative sampling.
        shuffle: shuffle blocks and records (False: shard order, no rotation, no buffer).
        shuffle_buffer: records held by each worker's shuffle buffer.
        block_size: records per seekable block of a plain shard (the unit of the block shuffle).
        pool_capacity: random-negative reservoir size per task and worker (documents).
        pool_warmup: records at the start of each rank's range that prime the reservoir.
        on_bad_record: ``"error"`` raises ``file:line: reason``; ``"skip"`` drops the record from its
            batch and counts it (never silently).
        index: a prebuilt :class:`StreamIndex` of ``root`` (saves the index pass).
        storage_options: passed to fsspec for URLs.
    """

    def __init__(
        self,
        root: str,
        batch_size: int = 1,
        rank: int = 0,
        world_size: int = 1,
        num_negatives: int = 4,
        hard_negative_ratio: float = 0.5,
        task_instructions: dict[str, str] | None = None,
        default_instruction: str | None = None,
        seed: int = 0,
        shuffle: bool = True,
        shuffle_buffer: int = 1024,
        block_size: int = 128,
        pool_capacity: int = 2048,
        pool_warmup: int = 256,
        on_bad_record: str = "error",
        index: StreamIndex | None = None,
        storage_options: dict | None = None,
    ) -> None:
        _check_stream_args(on_bad_record, batch_size, rank, world_size)
        self.index = index or StreamIndex.build(str(root), block_size, storage_options, on_bad_record)
        for problem in self.index.problems:
            log.warning("skipping unreadable training shard: %s", problem)
        self.root = str(root)
        self.batch_size, self.rank, self.world_size = batch_size, rank, world_size
        self.seed, self.shuffle = seed, shuffle
        self.shuffle_buffer = shuffle_buffer if shuffle else 0
        self.pool_capacity, self.pool_warmup = pool_capacity, pool_warmup
        self.on_bad_record = on_bad_record
        self.sampler = NegativeSampler(
            num_negatives=num_negatives,
            hard_negative_ratio=hard_negative_ratio,
            task_instructions=task_instructions,
            default_instruction=default_instruction,
        )
        self._size_epoch()
        self._local = isinstance(self.index.fs, LocalFileSystem)
        # Position in the main process: what the training loop has consumed.
        self.epoch = 0
        self.consumed = 0
        self.counters = {
            k: 0 for k in ("groups", "skipped", "filled_hard", "other_task", "remainder_dropped")
        }
        self.counters["epochs_completed"] = 0
        self.counters["skipped_shards"] = len(self.index.problems)

    def _size_epoch(self) -> None:
        """``batches_per_epoch`` (per rank) and the ``remainder`` of records an epoch drops; at least
        one batch per rank is needed."""
        n, batch_size, world_size = self.index.num_records, self.batch_size, self.world_size
        self.batches_per_epoch = n // (world_size * batch_size)
        if self.batches_per_epoch == 0:
            left_out = (
                f" ({len(self.index.problems)} shard(s) left out as unreadable, first: {self.index.problems[0]})"
                if self.index.problems
                else ""
            )
            raise FormatError(
                f"{self.root}: {n} training record(s){left_out} cannot give one batch of {batch_size} group(s) to "
                f"each of {world_size} rank(s); add data or lower batch_size"
            )
        self.remainder = n - self.batches_per_epoch * world_size * batch_size

    def __len__(self) -> int:
        """Batches per epoch on every rank (a resumed epoch yields only the unconsumed ones)."""
        return self.batches_per_epoch

    # ---- position ------------------------------------------------------------------------------
    def mark_consumed(self, batch: Any) -> None:
        """Record that the training loop used ``batch`` (a :class:`TrainBatch` or a
        :class:`StreamBatch`). Anything else (evaluation batches, replays without ``stream``) is
        ignored."""
        info = (
            batch.info()
            if isinstance(batch, StreamBatch)
            else batch.stream
            if isinstance(batch, TrainBatch)
            else None
        )
        if not info or info.get("rank") != self.rank:
            return
        if info["epoch"] != self.epoch or info["index"] != self.consumed:
            raise RuntimeError(
                f"stream position out of order: expected epoch {self.epoch} batch {self.consumed}, got epoch "
                f"{info['epoch']} batch {info['index']} (mark_consumed must see every training batch once, in order)"
            )
        for key in ("groups", "skipped", "filled_hard", "other_task"):
            self.counters[key] += int(info[key])
        self.consumed += 1
        if self.consumed == self.batches_per_epoch:
            self.epoch += 1
            self.consumed = 0
            self.counters["epochs_completed"] += 1
            self.counters["remainder_dropped"] += self.remainder

    def _layout(self) -> dict[str, Any]:
        return {
            "world_size": self.world_size,
            "batch_size": self.batch_size,
            "seed": self.seed,
            "shuffle": self.shuffle,
            "shuffle_buffer": self.shuffle_buffer,
            "block_size": self.index.block_size,
            "num_records": self.index.num_records,
            "fingerprint": self.index.fingerprint,
        }

    def state_dict(self) -> dict[str, Any]:
        """``{"epoch", "consumed_batches", "batches_per_epoch", "layout": {...}, "counters": {...}}``."""
        return {
            "version": 1,
            "epoch": self.epoch,
            "consumed_batches": self.consumed,
            "batches_per_epoch": self.batches_per_epoch,
            "layout": self._layout(),
            "counters": dict(self.counters),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a saved position. Mid-epoch, the shards, seed, world size, batch size and
        shuffle settings must be those of the saved run, else the position would be meaningless (an
        error says what changed). At an epoch boundary anything may change. ``num_workers`` may
        always change: the example order does not depend on it (the random negatives do)."""
        if state.get("version") != 1:
            raise ValueError(f"unknown stream state version {state.get('version')!r}")
        saved, now = state["layout"], self._layout()
        mid_epoch = bool(state["consumed_batches"])
        if mid_epoch and (saved["fingerprint"], saved["num_records"]) != (
            now["fingerprint"],
            now["num_records"],
        ):
            raise ValueError(
                f"{self.root}: the training shards changed since the checkpoint ({saved['num_records']} -> "
                f"{now['num_records']} records); the mid-epoch position cannot be restored. Resume with the "
                "original data, or from an end-of-epoch checkpoint"
            )
        if mid_epoch and saved != now:
            changed = sorted(k for k in now if saved.get(k) != now[k])
            raise ValueError(
                f"cannot resume mid-epoch (batch {state['consumed_batches']} of epoch {state['epoch']}) with different "
                f"{', '.join(changed)} (saved {[saved.get(k) for k in changed]}, now {[now[k] for k in changed]}); "
                "resume with the saved settings or from an end-of-epoch checkpoint"
            )
        self.epoch = int(state["epoch"])
        self.consumed = int(state["consumed_batches"])
        self.counters.update(state.get("counters", {}))

    # ---- epoch plan ----------------------------------------------------------------------------
    def _plan(self, epoch: int) -> tuple[list[int], list[int], int]:
        """Block order, cumulative record starts along it, and the rotation offset of ``epoch``."""
        order = list(range(len(self.index.blocks)))
        offset = 0
        if self.shuffle:
            rng = random.Random(f"plan:{self.seed}:{epoch}")
            rng.shuffle(order)
            offset = rng.randrange(self.index.num_records)
        starts, total = [], 0
        for block_id in order:
            starts.append(total)
            total += self.index.blocks[block_id].count
        return order, starts, offset

    def remainder_ids(self, epoch: int) -> list[tuple[int, int]]:
        """The examples this epoch drops (the remainder policy), as ``(shard, record)`` ids."""
        used = self.batches_per_epoch * self.world_size * self.batch_size
        return [(f, r) for f, r, _, _ in self._window(epoch, used, self.remainder, read=False)]

    def _window(
        self, epoch: int, start: int, length: int, read: bool = True
    ) -> Iterator[tuple[int, int, int, bytes]]:
        """Records ``start .. start+length`` of the epoch's rotated sequence: (shard, record, line, raw)."""
        order, starts, offset = self._plan(epoch)
        n = self.index.num_records
        position = (offset + start) % n
        k = bisect_right(starts, position) - 1
        skip = position - starts[k]
        remaining = length
        while remaining > 0:
            block = self.index.blocks[order[k]]
            take = min(block.count - skip, remaining)
            if read:
                yield from self._read_block(block, skip, take)
            else:
                for r in range(block.first + skip, block.first + skip + take):
                    yield block.file, r, 0, b""
            remaining -= take
            skip = 0
            k = (k + 1) % len(order)

    def _read_block(self, block: Block, skip: int, take: int) -> Iterator[tuple[int, int, int, bytes]]:
        path = self.index.files[block.file]
        with self.index.fs.open(path, "rb") as raw_handle:
            handle = gzip.GzipFile(fileobj=raw_handle, mode="rb") if path.endswith(".gz") else raw_handle
            if block.offset:
                handle.seek(block.offset)
            record, line, end = block.first, block.line, block.first + skip + take
            for raw in handle:
                if raw.strip():
                    if record >= block.first + skip:
                        yield block.file, record, line, raw
                    record += 1
                    if record == end:
                        return
                line += 1
        raise FormatError(
            f"{self.index.display[block.file]}: shard changed since it was indexed (expected at least {end} "
            "records); rebuild the stream"
        )

    # ---- parsing and sampling ------------------------------------------------------------------
    def _parse(self, file_id: int, line: int, raw: bytes) -> TrainGroup:
        where = f"{self.index.display[file_id]}:{line}"
        try:
            record = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            detail = (
                f"{err.msg} at column {err.colno}" if isinstance(err, json.JSONDecodeError) else "not UTF-8"
            )
            raise FormatError(f"{where}: invalid JSON ({detail})") from None
        if not isinstance(record, dict):
            raise FormatError(f"{where}: expected a JSON object, got {type(record).__name__}")
        path = self.index.files[file_id]
        if self._local:
            group = parse_train_group(record, Path(path).parent, where)
        else:
            group = _parse_remote_group(self.index.fs, record, posixpath.dirname(path), where)
        return group

    # ---- iteration -----------------------------------------------------------------------------
    def __iter__(self) -> Iterator[StreamBatch]:
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        return self.iter_worker(self.epoch, self.consumed, worker, num_workers)

    def iter_worker(self, epoch: int, start: int, worker: int, num_workers: int) -> Iterator[StreamBatch]:
        """The batches ``j >= start`` of this rank with ``(j - start) % num_workers == worker``, in order."""
        B, M, K = self.batch_size, self.batches_per_epoch, num_workers
        mine = range(start + worker, M, K)
        if not mine:
            return
        # The reservoir of batch j's worker holds the warm-up records plus the groups of the earlier
        # batches of the same residue class j mod K; a resumed worker replays those to rebuild it.
        residue = (start + worker) % K
        pool, primed = self._warm_pool(epoch, residue, K)
        records = enumerate(self._window(epoch, self.rank * M * B, M * B))
        shuffled = self._buffer_shuffle(records, random.Random(f"shuffle:{self.seed}:{epoch}:{self.rank}"))
        current: StreamBatch | None = None
        warned = 0
        for out, (position, (file_id, record, line, raw)) in enumerate(shuffled):
            j = out // B
            if j > mine[-1]:
                return
            own = j >= start and (j - start) % K == worker
            if not own and not (j < start and j % K == residue):
                continue
            if own and current is None:
                current = StreamBatch(
                    epoch,
                    j,
                    self.rank,
                    [],
                    [],
                    on_bad_record=self.on_bad_record,
                    group_size=1 + self.sampler.num_negatives,
                )
            batch = current if own else None
            problem = self._add_record(batch, pool, primed, epoch, position, (file_id, record, line, raw))
            if problem is not None:
                assert batch is not None  # _add_record reports the problems of own records only
                warned = self._skip_record(batch, problem, (file_id, record), warned)
            if own and out % B == B - 1:
                assert current is not None
                yield current
                current = None

    def _warm_pool(self, epoch: int, residue: int, num_workers: int) -> tuple[DocPool, dict[int, TrainGroup]]:
        """The worker's document pool, filled with the rank's first ``pool_warmup`` records, and those
        records' parsed groups by position (a record that does not parse is left to its owner)."""
        B, M = self.batch_size, self.batches_per_epoch
        pool = DocPool(self.pool_capacity, seed=f"{self.seed}:{epoch}:{self.rank}:{residue}:{num_workers}")
        primed: dict[int, TrainGroup] = {}
        warmup = min(self.pool_warmup, M * B)
        for position, (file_id, _, line, raw) in enumerate(self._window(epoch, self.rank * M * B, warmup)):
            try:
                primed[position] = self._parse(file_id, line, raw)
            except FormatError:
                continue  # reported (or raised) by the worker that owns the record
            pool.add_group(primed[position])
        return pool, primed

    def _add_record(
        self,
        batch: StreamBatch | None,
        pool: DocPool,
        primed: dict[int, TrainGroup],
        epoch: int,
        position: int,
        item,
    ) -> FormatError | None:
        """Parse one record (``item``: shard, record, line, raw) and, into ``batch`` (given for the
        worker's own records), sample its group; every parsed group joins ``pool`` once. The problem
        with an own record, if any."""
        file_id, record, line, raw = item
        problem: FormatError | None = None
        try:
            group = primed.get(position) or self._parse(file_id, line, raw)
        except FormatError as err:
            group, problem = None, err
        if batch is not None and group is not None:
            try:
                rng = random.Random(f"neg:{self.seed}:{epoch}:{file_id}:{record}")
                batch.groups.append(self.sampler.sample(group, rng, pool))
                batch.ids.append((file_id, record))
            except FormatError as err:  # e.g. no instruction for the record's task
                problem = err
        if group is not None and position not in primed:
            pool.add_group(group)  # whatever the sampling outcome, so that a replay agrees
        return problem if batch is not None else None

    def _skip_record(
        self, batch: StreamBatch, problem: FormatError, record_id: tuple[int, int], warned: int
    ) -> int:
        """Raise ``problem`` (``on_bad_record="error"``) or record it as skipped in ``batch``, warning for
        the first few; the warnings given so far."""
        if self.on_bad_record == "error":
            raise problem
        batch.skipped.append(str(problem))
        batch.skipped_ids.append(record_id)
        if warned < _MAX_SKIP_WARNINGS:
            warned += 1
            log.warning("skipping bad training record: %s", problem)
        return warned

    def _buffer_shuffle(self, items: Iterator, rng: random.Random) -> Iterator:
        """Shuffle through a buffer of ``shuffle_buffer`` items (the order depends only on ``rng``)."""
        if self.shuffle_buffer <= 0:
            yield from items
            return
        buffer: list = []
        for item in items:
            if len(buffer) < self.shuffle_buffer:
                buffer.append(item)
                continue
            slot = rng.randrange(len(buffer))
            yield buffer[slot]
            buffer[slot] = item
        rng.shuffle(buffer)
        yield from buffer

    # ---- loader --------------------------------------------------------------------------------
    def dataloader(self, collate_fn=None, num_workers: int = 0, **kwargs) -> StreamLoader:
        """A :class:`StreamLoader` over this stream (``batch_size=None``: batches are formed here)."""
        return StreamLoader(self, collate_fn=collate_fn, num_workers=num_workers, **kwargs)


def _as_is(batch: StreamBatch) -> StreamBatch:
    return batch


class StreamLoader(DataLoader):
    """DataLoader over a :class:`TrainStream` that Lightning sees as resumable (``state_dict`` /
    ``load_state_dict`` forward to the stream), with ``len()`` = batches per epoch per rank."""

    def __init__(self, dataset: TrainStream, collate_fn=None, num_workers: int = 0, **kwargs) -> None:
        if kwargs.get("persistent_workers"):
            raise ValueError(
                "persistent_workers=True is not supported: workers must see the stream position of each epoch"
            )
        kwargs.pop("batch_size", None)
        kwargs.pop("shuffle", None)
        super().__init__(  # batch_size=None: collate_fn gets one StreamBatch, not torch's typed list
            dataset,
            batch_size=None,
            collate_fn=collate_fn or _as_is,  # type: ignore[arg-type]
            num_workers=num_workers,
            **kwargs,
        )

    def state_dict(self) -> dict[str, Any]:
        return self.dataset.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.dataset.load_state_dict(state)
