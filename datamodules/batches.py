"""The data contract between the DataModule and the module: what one batch is, and how it is encoded.

Three batch types, each a dataclass:

* :class:`StreamBatch`: what a training stream worker yields (sampled groups, not yet encoded);
* :class:`TrainBatch`: B encoded groups of 1 + N pairs (``RerankerModule.training_step``);
* :class:`QueryBatch`: one evaluated query with its encoded first-stage candidates
  (``RerankerModule.validation_step`` / ``test_step`` / ``predict_step``).

Both encoders live here: :func:`encode_train` (a ``StreamBatch`` -> ``TrainBatch``) and
:func:`encode_query` (an ``EvalQuery`` of a task -> ``QueryBatch``). Encoding runs in DataLoader
workers; pairs stay lists of token ids and pixels, collated into tensors only by the module's
scoring path (lightning_modules/scoring.py), one micro-batch at a time.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from PIL import Image

from datamodules.encoding import EncodedPair, PairEncoder
from datamodules.formats import Doc, FormatError, MRBTask
from datamodules.groups import SampledGroup

log = logging.getLogger("rerank_lab.data")

# What encoding a record can raise for a bad record (missing or oversized image, pair too long).
ENCODE_ERRORS = (OSError, ValueError, Image.DecompressionBombError)


def visual_tokens(pairs: list[EncodedPair], image_token_id: int | None) -> int:
    """Image tokens over all ``pairs`` (0 for a backbone without images)."""
    return sum(p.input_ids.count(image_token_id) for p in pairs) if image_token_id is not None else 0


@dataclass
class StreamBatch:
    """What a stream worker yields for one rank batch; :func:`encode_train` turns it into a
    :class:`TrainBatch`. ``ids`` and ``skipped_ids`` name examples as ``(shard index, record index
    in the shard)``."""

    epoch: int
    index: int
    rank: int
    groups: list[SampledGroup]
    ids: list[tuple[int, int]]
    skipped: list[str] = field(default_factory=list)  # "file:line: reason"
    skipped_ids: list[tuple[int, int]] = field(default_factory=list)
    on_bad_record: str = "error"
    group_size: int = 0

    def info(self, groups: list[SampledGroup] | None = None, extra_skipped: int = 0) -> dict[str, int]:
        """Position and counters of this batch (``groups``: those kept by the encoder), carried
        into the :class:`TrainBatch` as ``stream``."""
        groups = self.groups if groups is None else groups
        return {
            "epoch": self.epoch,
            "index": self.index,
            "rank": self.rank,
            "groups": len(groups),
            "skipped": len(self.skipped) + extra_skipped,
            "filled_hard": sum(g.filled_hard for g in groups),
            "other_task": sum(g.other_task for g in groups),
        }


@dataclass
class TrainBatch:
    """B groups of 1 + N encoded pairs, the positive first (``positives[:, 0]``).

    Attributes:
        groups: the encoded pairs of each group, in group order.
        positives: ``[B, 1 + N]`` bool, which pairs are positive (0 rows when every group of the
            batch was skipped as a bad record).
        tasks: each group's task name.
        filled_hard: hard-negative slots filled with random documents (too few hard negatives).
        truncated: pairs whose document text was cut to ``max_length``.
        visual_tokens: image tokens over all pairs.
        stream: position and counters of the stream batch (:meth:`StreamBatch.info`), for
            ``TrainStream.mark_consumed``; ``None`` for a batch that is not stream progress
            (overfit replays, hand-made batches).
        skipped_records: ``file:line: reason`` of the groups left out (``on_bad_record=skip``).
    """

    groups: list[list[EncodedPair]]
    positives: torch.Tensor
    tasks: list[str] = field(default_factory=list)
    filled_hard: int = 0
    truncated: int = 0
    visual_tokens: int = 0
    stream: dict[str, int] | None = None
    skipped_records: list[str] = field(default_factory=list)

    @classmethod
    def of_groups(
        cls, groups: list[list[EncodedPair]], positives: torch.Tensor, image_token_id: int | None = None
    ) -> TrainBatch:
        """A batch of already encoded groups (benchmarks, tests): counters derived from the pairs."""
        pairs = [pair for group in groups for pair in group]
        return cls(
            groups=groups,
            positives=positives,
            truncated=sum(p.truncated for p in pairs),
            visual_tokens=visual_tokens(pairs, image_token_id),
        )

    @property
    def pairs(self) -> list[EncodedPair]:
        """Every pair of the batch, group by group."""
        return [pair for group in self.groups for pair in group]


@dataclass
class QueryBatch:
    """One query of one task with its encoded candidates (the top-K of the first stage).

    Attributes:
        task: the task's name.
        qid: the query id.
        doc_ids: the candidates scored, in first-stage order (bad records left out).
        first_stage: their first-stage scores, in ``doc_ids`` order.
        relevance: the query's qrels, ``{doc_id: grade}``.
        pairs: the encoded (query, candidate) pairs, in ``doc_ids`` order.
        skipped: ``file:line: reason`` of the candidates left out (``on_bad_record=skip``).
    """

    task: str
    qid: str
    doc_ids: list[str]
    first_stage: list[float]
    relevance: dict[str, int]
    pairs: list[EncodedPair]
    skipped: list[str] = field(default_factory=list)


def encode_train(encoder: PairEncoder, batch: StreamBatch) -> TrainBatch:
    """Encode a :class:`StreamBatch` into a :class:`TrainBatch`.

    A group whose images are missing, undecodable or oversized (or that cannot fit ``max_length``)
    raises ``file:line: reason`` with ``on_bad_record="error"``; with ``"skip"`` it leaves the batch
    and is counted in ``stream`` and ``skipped_records``.
    """
    groups, kept, skipped = [], [], []
    for group in batch.groups:
        try:
            encoded = encoder.encode_group(
                group.instruction, group.query, group.documents, where=group.source
            )
        except ENCODE_ERRORS as err:
            message = str(err) if str(err).startswith(group.source) else f"{group.source}: {err}"
            if batch.on_bad_record == "error":
                raise FormatError(message) from err
            skipped.append(message)
            log.warning("skipping bad training record: %s", message)
            continue
        groups.append(encoded)
        kept.append(group)
    pairs = [pair for encoded in groups for pair in encoded]
    positives = torch.tensor([g.positives for g in kept], dtype=torch.bool)
    return TrainBatch(
        groups=groups,
        positives=positives.view(len(kept), batch.group_size),
        tasks=[g.task for g in kept],
        filled_hard=sum(g.filled_hard for g in kept),
        truncated=sum(p.truncated for p in pairs),
        visual_tokens=visual_tokens(pairs, encoder.image_token_id),
        stream=batch.info(kept, extra_skipped=len(skipped)),
        skipped_records=batch.skipped + skipped,
    )


def encode_query(
    encoder: PairEncoder,
    task: MRBTask,
    qid: str,
    doc_ids: list[str],
    first_stage: list[float],
    bad: Callable[[str], None],
) -> QueryBatch:
    """Encode one query's candidates into a :class:`QueryBatch`.

    When the whole query cannot be encoded, its candidates are encoded one by one to find the bad
    record(s); ``bad(message)`` is called with each ``file:line: reason`` (it raises to stop,
    ``on_bad_record=error``, or returns to leave the record out).
    """
    query = task.queries[qid]
    documents = [task.corpus[d] for d in doc_ids]
    relevance = dict(task.qrels.get(qid, {}))
    where = task.where("queries", qid)
    try:
        pairs = (
            encoder.encode_group(task.meta.instruction, query, documents, where=where) if documents else []
        )
        return QueryBatch(task.name, qid, list(doc_ids), list(first_stage), relevance, pairs)
    except ENCODE_ERRORS:
        pairs, kept, skipped = _encode_each(encoder, task, qid, query, doc_ids, documents, bad)
    return QueryBatch(
        task.name,
        qid,
        [doc_ids[i] for i in kept],
        [first_stage[i] for i in kept],
        relevance,
        pairs,
        skipped,
    )


def _encode_each(
    encoder: PairEncoder,
    task: MRBTask,
    qid: str,
    query: Doc,
    doc_ids: list[str],
    documents: list[Doc],
    bad: Callable[[str], None],
) -> tuple[list[EncodedPair], list[int], list[str]]:
    """``(pairs, kept indices, skipped messages)`` of a query's candidates encoded one by one."""

    def message(kind: str, record_id: str, err: Exception) -> str:
        where = task.where(kind, record_id)
        return str(err) if str(err).startswith(where) else f"{where}: {err}"

    instruction, where = task.meta.instruction, task.where("queries", qid)
    try:
        encoder.encode_group(instruction, query, [], where=where)
    except ENCODE_ERRORS as err:
        bad(text := message("queries", qid, err))
        more = f" (and its {len(documents) - 1} other candidate(s))" if len(documents) > 1 else ""
        return [], [], [text + more] * len(documents)
    pairs, kept, skipped = [], [], []
    for i, (doc_id, document) in enumerate(zip(doc_ids, documents, strict=True)):
        try:
            (pair,) = encoder.encode_group(instruction, query, [document], where=where)
        except ENCODE_ERRORS as err:
            bad(text := message("corpus", doc_id, err))
            skipped.append(text)
            continue
        pairs.append(pair)
        kept.append(i)
    return pairs, kept, skipped
