"""Training groups: 1 positive + N negatives per query (docs/formats.md §2, docs/science.md §5).

A share ``hard_negative_ratio`` of the N negatives comes from the record's mined
``hard_negatives``; the rest are random documents of other groups, drawn from a :class:`DocPool`:
documents of the same task first, of other tasks when the task has too few (counted as
``other_task``). A group's own positives (and its query) are never used as negatives. When a
record has too few hard negatives the gap is filled with random ones and counted
(``filled_hard``).

The pool is either every document of an in-memory list of records (``DocPool()``, unbounded) or,
when streaming, a bounded per-task reservoir of the documents seen so far
(``DocPool(capacity=...)``, reservoir sampling with its own seeded generator).
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from datamodules.formats import Doc, FormatError, TrainGroup


@dataclass(frozen=True)
class SampledGroup:
    """One training example: the documents in order (positive first) and their labels."""

    task: str
    instruction: str
    query: Doc
    documents: tuple[Doc, ...]
    positives: tuple[bool, ...]
    source: str  # "file:line" of the record
    filled_hard: int  # hard-negative slots that had to be filled with random documents
    other_task: int = 0  # random negatives taken from other tasks (the task's pool was too small)


class DocPool:
    """Documents that random negatives are drawn from, per task.

    Args:
        capacity: at most this many distinct documents are kept per task (reservoir sampling:
            every document seen so far has the same chance to be in the pool). ``None`` keeps all.
        seed: seed of the reservoir's replacement decisions (only used with a capacity).
    """

    def __init__(self, capacity: int | None = None, seed: int | str = 0) -> None:
        if capacity is not None and capacity < 1:
            raise ValueError(f"pool capacity must be >= 1 or None, got {capacity}")
        self.capacity = capacity
        self._rng = random.Random(f"pool:{seed}")
        self._docs: dict[str, list[Doc]] = {}
        self._members: dict[str, set[Doc]] = {}
        self._seen: dict[str, int] = {}

    def __len__(self) -> int:
        return sum(len(docs) for docs in self._docs.values())

    def size(self, task: str) -> int:
        return len(self._docs.get(task, ()))

    def add(self, task: str, docs: Iterable[Doc]) -> None:
        """Offer documents of ``task`` to the pool (duplicates of current members are ignored)."""
        pool = self._docs.setdefault(task, [])
        members = self._members.setdefault(task, set())
        for doc in docs:
            if doc in members:
                continue
            seen = self._seen.get(task, 0) + 1
            self._seen[task] = seen
            if self.capacity is None or len(pool) < self.capacity:
                pool.append(doc)
                members.add(doc)
                continue
            slot = self._rng.randrange(seen)
            if slot < self.capacity:
                members.discard(pool[slot])
                pool[slot] = doc
                members.add(doc)

    def add_group(self, group: TrainGroup) -> None:
        self.add(group.task, (*group.positives, *group.hard_negatives))

    def draw(self, rng: random.Random, task: str, count: int, exclude: set[Doc]) -> tuple[list[Doc], int]:
        """``count`` distinct documents not in ``exclude``: from ``task`` first, then other tasks.

        Returns the documents and how many came from other tasks. Raises ``ValueError`` when the
        whole pool cannot supply ``count`` documents. ``exclude`` is extended with the picks.
        """
        picked = _draw_from(rng, [self._docs.get(task, [])], count, exclude)
        same_task = len(picked)
        if same_task < count:
            others = [self._docs[name] for name in sorted(self._docs) if name != task]
            picked += _draw_from(rng, others, count - same_task, exclude)
        if len(picked) < count:
            raise ValueError(
                f"only {len(picked)} distinct documents are available as random negatives but {count} are "
                "needed; lower num_negatives (or raise hard_negative_ratio), add data, or enlarge the pool"
            )
        return picked, len(picked) - same_task


def _draw_from(rng: random.Random, lists: Sequence[list[Doc]], count: int, exclude: set[Doc]) -> list[Doc]:
    """Up to ``count`` distinct documents drawn uniformly from the concatenation of ``lists``."""
    total = sum(len(docs) for docs in lists)
    picked: list[Doc] = []
    if count <= 0 or total == 0:
        return picked

    def at(index: int) -> Doc:
        for docs in lists:
            if index < len(docs):
                return docs[index]
            index -= len(docs)
        raise IndexError(index)

    # Rejection sampling is O(count) when the pool is large; a random full scan settles the rest.
    for _ in range(4 * count + 8):
        doc = at(rng.randrange(total))
        if doc not in exclude:
            picked.append(doc)
            exclude.add(doc)
            if len(picked) == count:
                return picked
    for index in rng.sample(range(total), total):
        doc = at(index)
        if doc not in exclude:
            picked.append(doc)
            exclude.add(doc)
            if len(picked) == count:
                break
    return picked


class NegativeSampler:
    """Draws the negatives of each group from its record and from a pool of other groups' documents.

    Args:
        groups: records whose documents form the default (unbounded) pool; leave empty when the
            caller passes its own pool to :meth:`sample` (streaming).
        num_negatives: N, the negatives per group.
        hard_negative_ratio: share of N taken from the record's hard negatives (paper: 0.5).
        task_instructions: fallback instruction per task when a record has none.
        default_instruction: fallback when neither the record nor ``task_instructions`` has one.
    """

    def __init__(
        self,
        groups: Sequence[TrainGroup] = (),
        num_negatives: int = 4,
        hard_negative_ratio: float = 0.5,
        task_instructions: dict[str, str] | None = None,
        default_instruction: str | None = None,
    ) -> None:
        if num_negatives < 1:
            raise ValueError(f"num_negatives must be >= 1, got {num_negatives}")
        if not 0.0 <= hard_negative_ratio <= 1.0:
            raise ValueError(f"hard_negative_ratio must be in [0, 1], got {hard_negative_ratio}")
        self.num_negatives = num_negatives
        self.num_hard = round(num_negatives * hard_negative_ratio)
        self.task_instructions = dict(task_instructions or {})
        self.default_instruction = default_instruction
        self.pool = DocPool()
        for group in groups:
            self.pool.add_group(group)

    def instruction(self, group: TrainGroup) -> str:
        instruction = group.instruction or self.task_instructions.get(group.task) or self.default_instruction
        if not instruction:
            raise FormatError(
                f"{group.source}: no 'instruction' in the record and none configured for task {group.task!r}; "
                "add one to the record or configure the task's instruction"
            )
        return instruction

    def sample(self, group: TrainGroup, rng: random.Random, pool: DocPool | None = None) -> SampledGroup:
        """Pick one positive, ``num_hard`` hard negatives and random negatives for ``group``."""
        instruction = self.instruction(group)
        positive = group.positives[rng.randrange(len(group.positives))]
        exclude = {*group.positives, group.query}
        hard = [d for d in dict.fromkeys(group.hard_negatives) if d not in exclude]
        chosen_hard = rng.sample(hard, min(self.num_hard, len(hard)))
        exclude.update(chosen_hard)
        try:
            randoms, other_task = (self.pool if pool is None else pool).draw(
                rng, group.task, self.num_negatives - len(chosen_hard), exclude
            )
        except ValueError as err:
            raise ValueError(f"{group.source}: {err}") from None
        return SampledGroup(
            task=group.task,
            instruction=instruction,
            query=group.query,
            documents=(positive, *chosen_hard, *randoms),
            positives=(True,) + (False,) * self.num_negatives,
            source=group.source,
            filled_hard=self.num_hard - len(chosen_hard),
            other_task=other_task,
        )
