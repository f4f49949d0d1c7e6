"""What both sides of the peer benchmark read: the same training groups in the same order, the same
dev candidate lists, and a chat template that makes sentence-transformers tokenise each pair exactly
as rerank-lab does.

Groups. The real task's training records (``groups.jsonl``: 1 positive + 8 mined negatives per
query) are shuffled once with a fixed data seed (independent of the training seed) and cut to
``1 + N`` documents: the positive, then the first N mined negatives. Both trainers get this list,
one group per optimizer step, in this order; nothing is sampled at training time.

Prompt. rerank-lab renders a pair through the checkpoint's chat template (judge system prompt,
``<Instruct>: ... <Query>: ... <Document>: ...`` user turn, assistant generation prompt;
:mod:`datamodules.encoding`). sentence-transformers renders a ``(query, document)`` pair as two
messages with roles ``query`` and ``document`` through the tokenizer's chat template, which the
stock ChatML template cannot carry. :func:`pair_template` writes a Jinja template for those roles by
rendering rerank-lab's layout with placeholders where the query and document texts go, so the text
(and, for text without special-token strings, the token ids) is identical by construction;
:func:`check_same_tokens` verifies it on the pairs used.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from datamodules.formats import Doc, iter_train_groups, load_task

DATA_SEED = 0  # the groups' order; training seeds change the adapters' init and dropout only
_QUERY_MARK, _DOCUMENT_MARK = "\ue100QUERY\ue101", "\ue100DOCUMENT\ue101"
# Jinja reading the text of the message with a role, whether content is a string or a list of parts
# (empty when there is none: sentence-transformers also renders single texts, e.g. for dataset stats).
_ROLE_TEXT = (
    "{{% set found = messages | selectattr('role', 'eq', '{role}') | list %}}{{% if found %}}"
    "{{% set m = found[0].content %}}{{% if m is string %}}{{{{ m }}}}{{% else %}}{{{{ m[0].text }}}}{{% endif %}}"
    "{{% endif %}}"
)


@dataclass(frozen=True)
class Group:
    """One training group: the positive first, then N negatives."""

    instruction: str
    query: str
    documents: tuple[str, ...]

    @property
    def size(self) -> int:
        return len(self.documents)


def load_groups(train_root: str | Path, count: int, negatives: int, seed: int = DATA_SEED) -> list[Group]:
    """``count`` groups of ``1 + negatives`` text documents from a training root, in a fixed order."""
    records = [g for g in iter_train_groups(train_root) if len(g.hard_negatives) >= negatives]
    random.Random(seed).shuffle(records)
    if len(records) < count:
        raise ValueError(f"{train_root}: {len(records)} groups with >= {negatives} negatives, {count} needed")
    return [
        Group(
            r.instruction or "",
            r.query.text or "",
            tuple(d.text or "" for d in (r.positives[0], *r.hard_negatives[:negatives])),
        )
        for r in records[:count]
    ]


@dataclass(frozen=True)
class DevList:
    """One dev query with its first-stage candidates (top-k) and its judgements."""

    query_id: str
    query: str
    doc_ids: tuple[str, ...]
    documents: tuple[str, ...]
    relevance: dict[str, int]


def load_dev(task_dir: str | Path, queries: int, top_k: int) -> tuple[str, str, list[DevList]]:
    """(instruction, metric, candidate lists) of the first ``queries`` judged dev queries."""
    task = load_task(task_dir)
    lists = []
    for qid in sorted(task.queries):
        relevance = task.qrels.get(qid, {})
        ranked = sorted(task.candidates.get(qid, {}).items(), key=lambda item: (-item[1], item[0]))[:top_k]
        if not ranked or not any(g > 0 for g in relevance.values()):
            continue
        ids = tuple(doc_id for doc_id, _ in ranked)
        texts = tuple(task.corpus[doc_id].text or "" for doc_id in ids)
        lists.append(DevList(qid, task.queries[qid].text or "", ids, texts, dict(relevance)))
    return task.meta.instruction, task.meta.metric, lists[:queries]


def pair_template(encoder, instruction: str) -> str:
    """A chat template for sentence-transformers' ``query``/``document`` messages that renders
    rerank-lab's layout for ``instruction`` (see the module docstring)."""
    rendered = encoder.render(instruction, Doc(text=_QUERY_MARK), Doc(text=_DOCUMENT_MARK))
    before, rest = rendered.split(_QUERY_MARK)
    middle, after = rest.split(_DOCUMENT_MARK)

    def raw(text: str) -> str:
        return "{% raw %}" + text + "{% endraw %}" if text else ""

    return "".join(
        [
            raw(before),
            _ROLE_TEXT.format(role="query"),
            raw(middle),
            _ROLE_TEXT.format(role="document"),
            raw(after),
        ]
    )


def check_same_tokens(cross_encoder, encoder, instruction: str, pairs: Sequence[tuple[str, str]]) -> int:
    """How many ``pairs`` sentence-transformers tokenises differently from rerank-lab (0 expected)."""
    features = cross_encoder.preprocess(list(pairs))
    differ = 0
    for row, (query, document) in enumerate(pairs):
        mask = features["attention_mask"][row].bool()
        theirs = features["input_ids"][row][mask].tolist()
        ours = encoder.encode(instruction, Doc(text=query), Doc(text=document)).input_ids
        differ += theirs != ours
    return differ
