"""Constants and the item / split / task records every part of the demo builder shares."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

MARKER = ".rerank-lab-demo"
"""File that marks a folder as built by ``datamodules.demo`` (and therefore safe to rebuild)."""

DEPTH = 20
"""Candidates per test query (= the size of its judged pool)."""

N_NEAR_MISSES = 6
"""Near misses per pool when the task also has off-topic documents (else the pool is all near misses)."""

OFF_TOPIC = -1
"""Label of documents from another source: never relevant to any query."""

N_TEST_QUERIES = 16
N_TRAIN_GROUPS = 72
N_HARD_NEGATIVES = 10
MAX_POSITIVES = 3
IMAGE_SIZE = 56
"""Side of every image in pixels: 2 x 2 patches of 28 px, i.e. 4 visual tokens for Qwen-VL-style models."""


@dataclass(frozen=True)
class Item:
    """A query or document before it gets an id: text and/or an image, plus its binary label.

    Attributes:
        key: Identity of the underlying source item (a query is never its own candidate).
        label: The binary class relevance is defined by (query label == document label);
            ``OFF_TOPIC`` for documents from another source.
        text: Text part, if any.
        image: Image part as an ``IMAGE_SIZE`` x ``IMAGE_SIZE`` x 3 uint8 array, if any.
        image_key: Where the image lives under ``train/images/`` (``"<source>/<name>"``).
        features: Mean-centred unit vector of 14x14 downsampled grayscale pixels (pixel-cosine first
            stage).
    """

    key: str
    label: int
    text: str | None = None
    image: np.ndarray | None = field(default=None, compare=False, repr=False)
    image_key: str | None = None
    features: np.ndarray | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Split:
    """The query and document items of one side (test or train) of a task."""

    queries: list[Item]
    docs: list[Item]


@dataclass(frozen=True)
class TaskSpec:
    """One demo task: what it is, how its first stage works, and its test / train items."""

    name: str
    family: str
    metric: str
    instruction: str
    retriever: str  # "bm25", "pixels" or "random"
    test: Split
    train: Split
    source: str
    relevance: str
    first_stage: str


def split_by_label(
    items: list[Item], rng: np.random.Generator, test_cap: int | None = None
) -> tuple[list[Item], list[Item]]:
    """Seeded half split within each label: (test, train). The test side keeps at most ``test_cap``
    items per label (keeps the benchmark small on disk); the train side keeps its whole half."""
    test: list[Item] = []
    train: list[Item] = []
    for label in sorted({item.label for item in items}):
        group = [item for item in items if item.label == label]
        order = rng.permutation(len(group))
        half = len(group) // 2
        test.extend(group[i] for i in order[: min(half, test_cap or half)])
        train.extend(group[i] for i in order[half:])
    return test, train
