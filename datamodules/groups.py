"""Training groups: 1 positive + N negatives per query (design.md §4, paper.md §5).

A share ``hard_negative_ratio`` of the N negatives comes from the record's mined
``hard_negatives``; the rest are random documents of other groups, from the same task when the
task has enough of them. A group's own positives are never used as negatives. When a record has
too few hard negatives the gap is filled with random ones and counted (``filled_hard``).
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from datamodules.formats import Doc, TrainGroup


@dataclass(frozen=True)
class SampledGroup:
    """One training example: the documents in order (positive first) and their labels."""

    task: str
    instruction: str
    query: Doc
    documents: tuple[Doc, ...]
    positives: tuple[bool, ...]
    source: str
    filled_hard: int  # hard-negative slots that had to be filled with random documents


class NegativeSampler:
    """Draws the negatives of each group from its record and from a pool of other groups' documents.

    Args:
        groups: every training record (the pool of random negatives is built from them).
        num_negatives: N, the negatives per group.
        hard_negative_ratio: share of N taken from the record's hard negatives (paper: 0.5).
        task_instructions: fallback instruction per task when a record has none.
    """

    def __init__(
        self,
        groups: Sequence[TrainGroup],
        num_negatives: int = 4,
        hard_negative_ratio: float = 0.5,
        task_instructions: dict[str, str] | None = None,
    ) -> None:
        if num_negatives < 1:
            raise ValueError(f"num_negatives must be >= 1, got {num_negatives}")
        if not 0.0 <= hard_negative_ratio <= 1.0:
            raise ValueError(f"hard_negative_ratio must be in [0, 1], got {hard_negative_ratio}")
        self.num_negatives = num_negatives
        self.num_hard = round(num_negatives * hard_negative_ratio)
        self.task_instructions = task_instructions or {}
        pool: dict[str, list[Doc]] = defaultdict(list)
        for group in groups:
            pool[group.task].extend(group.positives)
            pool[group.task].extend(group.hard_negatives)
        self.pool = {task: list(dict.fromkeys(docs)) for task, docs in pool.items()}
        self.all_docs = list(dict.fromkeys(d for docs in self.pool.values() for d in docs))

    def _random(self, rng: random.Random, group: TrainGroup, count: int, exclude: set[Doc]) -> list[Doc]:
        picked: list[Doc] = []
        for candidates in (self.pool.get(group.task, []), self.all_docs):
            order = rng.sample(range(len(candidates)), len(candidates))
            for index in order:
                if len(picked) == count:
                    return picked
                doc = candidates[index]
                if doc not in exclude:
                    picked.append(doc)
                    exclude.add(doc)
        if len(picked) < count:
            raise ValueError(
                f"{group.source}: only {len(picked)} documents are available as random negatives but "
                f"{count} are needed; lower num_negatives or add data"
            )
        return picked

    def sample(self, group: TrainGroup, rng: random.Random) -> SampledGroup:
        instruction = group.instruction or self.task_instructions.get(group.task)
        if not instruction:
            raise ValueError(f"{group.source}: no 'instruction' in the record and none configured for task {group.task!r}")
        positive = group.positives[rng.randrange(len(group.positives))]
        exclude = set(group.positives)
        hard = [d for d in dict.fromkeys(group.hard_negatives) if d not in exclude]
        chosen_hard = rng.sample(hard, min(self.num_hard, len(hard)))
        exclude.update(chosen_hard)
        filled = self.num_hard - len(chosen_hard)
        randoms = self._random(rng, group, self.num_negatives - len(chosen_hard), exclude)
        documents = (positive, *chosen_hard, *randoms)
        return SampledGroup(
            task=group.task,
            instruction=instruction,
            query=group.query,
            documents=documents,
            positives=(True,) + (False,) * self.num_negatives,
            source=group.source,
            filled_hard=filled,
        )
