"""The speed benchmark's workload: MRB-shaped query groups, one per task family, weighted as in MRB.

MRB (docs/science.md §5) has 40 test sets in 9 task families. What a reranker pays per pair depends on
the family: a text query over passages shares little with its candidates, an image query over
captions shares most of each pair. So the benchmark times one query group per family and
reports the throughput of a 40-dataset mix: pairs/s = Σ w·pairs ÷ Σ w·seconds, with w the
family's number of MRB datasets (:data:`FAMILIES`). Per-family numbers are kept in the JSON.

Content. Texts are real prose (docstrings of standard-library modules, deterministic); images are
random PNGs (their content does not change the cost). Sizes follow MRB's shapes, scaled by the
:class:`Workload`: short text queries, passages, captions, natural images of ``image_side``²
pixels and page screenshots of ``image_side`` × 2·``image_side``.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from datamodules.formats import Doc

INSTRUCTION = "Find the document that best matches the query."
TRAIN_NEGATIVES = (4, 16)  # N hard negatives per group in the training measurements
TRAIN_METHODS = ("rerank-lab", "naive", "naive-gc")

# family: (MRB datasets, query kind, document kind); the counts sum to MRB's 40 test sets.
FAMILIES: dict[str, tuple[int, str, str]] = {
    "T2T": (14, "text", "passage"),
    "T2VD": (5, "text", "screenshot"),
    "T2I": (4, "text", "image"),
    "I2T": (4, "image", "caption"),
    "I2I": (1, "image", "image"),
    "T2IT": (2, "text", "image+caption"),
    "IT2T": (5, "image+text", "passage"),
    "IT2I": (2, "image+text", "image"),
    "IT2IT": (3, "image+text", "image+caption"),
}


@dataclass(frozen=True)
class Workload:
    """Sizes of one benchmark run.

    Attributes:
        pairs_per_forward: rerank-lab's training micro-batch in pairs.
        max_length: token cap per pair.
        image_side: side in pixels of natural images (screenshots are twice as tall).
        query_words: (min, max) words of a text query.
        caption_words: (min, max) words of a caption.
        passage_words: (min, max) words of a passage.
        infer_candidates: candidates per inference query.
        infer_batch: Reranker batch size.
        families: the task families timed (default: all nine).
        repeats: timings per family step or inference call; the fastest counts.
    """

    pairs_per_forward: int
    max_length: int
    image_side: int
    query_words: tuple[int, int]
    caption_words: tuple[int, int]
    passage_words: tuple[int, int]
    infer_candidates: int
    infer_batch: int
    families: tuple[str, ...] = tuple(FAMILIES)
    repeats: int = 2


# CPU: about half of MRB's real lengths (images 224² = 64 visual tokens, passages 40-110 words);
# inference in Reranker's CPU batches of 4 pairs.
CPU_WORKLOAD = Workload(4, 640, 224, (6, 14), (8, 20), (40, 110), 16, 4)
QUICK_WORKLOAD = Workload(4, 256, 56, (4, 8), (4, 8), (8, 16), 4, 4, families=("T2T", "I2T"), repeats=1)
# GPU: real lengths (images 448² = 256 visual tokens, screenshots 512, passages ~1k tokens).
GPU_WORKLOAD = Workload(4, 2048, 448, (8, 20), (10, 30), (450, 650), 64, 32)
# make gpu-check: the same shapes, one timing per family and 32 candidates per inference query.
GPU_CHECK_WORKLOAD = Workload(4, 2048, 448, (8, 20), (10, 30), (450, 650), 32, 32, repeats=1)


def _corpus() -> list[str]:
    """Real prose: docstrings of a fixed set of standard-library modules (sorted, deterministic)."""
    import importlib
    import inspect

    texts = []
    for name in ("argparse", "collections", "csv", "datetime", "json", "pathlib", "random", "statistics"):
        module = importlib.import_module(name)
        for _, obj in sorted(vars(module).items()):
            doc = inspect.getdoc(obj) if inspect.isfunction(obj) or inspect.isclass(obj) else None
            if doc and len(doc.split()) >= 8:
                texts.append(" ".join(doc.split()))
    return texts


def make_groups(
    folder: Path, work: Workload, seed: int = 0, documents: int = 64
) -> list[tuple[str, Doc, list[Doc]]]:
    """One ``(family, query, documents)`` group per family of ``work`` (deterministic per seed).

    Images are written to ``folder``; every document has its own image.
    """
    import numpy as np
    from PIL import Image

    rng = random.Random(seed)
    pixels = np.random.default_rng(seed)
    corpus = _corpus()
    folder.mkdir(parents=True, exist_ok=True)
    counter = iter(range(10**9))

    def image(tall: bool = False) -> str:
        path = folder / f"s{seed}-{next(counter)}.png"
        height = work.image_side * (2 if tall else 1)
        Image.fromarray(pixels.integers(0, 256, (height, work.image_side, 3), dtype=np.uint8)).save(path)
        return str(path)

    def text(words: tuple[int, int]) -> str:
        found = rng.choice(corpus).split()
        while len(found) < words[1]:
            found += rng.choice(corpus).split()
        return " ".join(found[: rng.randint(*words)])

    def make(kind: str) -> Doc:
        return {
            "text": lambda: Doc(text=text(work.query_words)),
            "image": lambda: Doc(image=image()),
            "image+text": lambda: Doc(text=text(work.query_words), image=image()),
            "passage": lambda: Doc(text=text(work.passage_words)),
            "caption": lambda: Doc(text=text(work.caption_words)),
            "screenshot": lambda: Doc(image=image(tall=True)),
            "image+caption": lambda: Doc(text=text(work.caption_words), image=image()),
        }[kind]()

    groups = []
    for family in work.families:
        _, query_kind, doc_kind = FAMILIES[family]
        groups.append((family, make(query_kind), [make(doc_kind) for _ in range(documents)]))
    return groups


def weighted_rate(items: Mapping[str, float], seconds: Mapping[str, float]) -> float:
    """Items per second of MRB's mix: Σ w·items ÷ Σ w·seconds over the families timed."""
    weight = {family: FAMILIES[family][0] for family in seconds}
    return sum(weight[f] * items[f] for f in seconds) / sum(weight[f] * seconds[f] for f in seconds)
