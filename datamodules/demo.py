"""The bundled demo benchmark: training groups + MRB-format test tasks built from real, offline data.

``python -m datamodules.demo --out DIR [--seed 0]`` writes::

    DIR/README.md                     what each task is: source, relevance, first stage, metric
    DIR/train/<task>.jsonl            training groups (design.md §4), one file per task
    DIR/train/images/<source>/*.png   their images, shared between the files
    DIR/mrb/<task>/...                one MRB test set per task (task.json, queries.jsonl, corpus.jsonl,
                                      qrels.tsv, candidates.trec, images/)

Everything comes from data that ships inside installed packages (scikit-learn's handwritten
digits, scikit-image's LFW subset and sample pictures, the docstrings of Python's standard library),
so the build needs no network and takes a few seconds on one CPU core.

The demo trains a tiny, randomly initialised VLM for a few minutes on CPU, so relevance rests on
binary properties such a model can pick up quickly. Each test query is judged against its own
pool of ``DEPTH`` candidates with three kinds of documents:

* 3 to 5 *relevant* ones: same kind of item, and the class the query asks for (the digit 0 for
  "a handwritten zero");
* *near misses*: same kind of item, the other class (a handwritten 1) -- telling them apart needs
  the query;
* *off-topic* ones from another source (a crop of a sample photograph) -- a property of the
  document alone, which a tiny model learns within a few hundred steps.

A random reordering of the candidates therefore scores far below a perfect one (about 0.25 vs
1.0 recall@5), a model that only learned what is on-topic lands in between (about 0.5), and one
that also matches the query reaches the top. Training groups are drawn the same way from the
other half of every source (disjoint images, docstrings, captions and answers).

The output is a pure function of the seed: building twice gives byte-identical files. An existing
non-empty folder is only ever replaced when it carries this builder's marker file.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import math
import re
import shutil
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from datamodules.trec import write_run

MARKER = ".rerank-lab-demo"
"""File that marks a folder as built by this module (and therefore safe to rebuild)."""

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

_TOKEN = re.compile(r"[a-z0-9]+")
_TEST_IMAGES_PER_CLASS = 36


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


# --------------------------------------------------------------------------------------------- images


def _gray_to_rgb(gray: np.ndarray) -> np.ndarray:
    return np.repeat(gray[:, :, None], 3, axis=2)


def _pixel_features(image: np.ndarray, side: int = 14) -> np.ndarray:
    """Mean-centred unit vector of the image's darkness, area-downsampled to ``side`` x ``side``."""
    block = image.shape[0] // side
    gray = image.astype(np.float64).mean(axis=2)[: side * block, : side * block]
    darkness = 1.0 - gray.reshape(side, block, side, block).mean(axis=(1, 3)).ravel() / 255.0
    centred = darkness - darkness.mean()
    norm = np.linalg.norm(centred)
    return centred / norm if norm > 0 else centred


def _digit_items(seed: int) -> tuple[list[Item], list[Item]]:
    """Real 8x8 handwritten digits 0 and 1 (scikit-learn), dark ink on white, upscaled x7 (nearest)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    items: list[Item] = []
    for index in np.flatnonzero(np.isin(digits.target, (0, 1))):
        ink = digits.images[index] / 16.0
        gray = np.round(255.0 * (1.0 - ink)).astype(np.uint8)
        big = np.kron(gray, np.ones((IMAGE_SIZE // 8, IMAGE_SIZE // 8), dtype=np.uint8))
        image = _gray_to_rgb(big)
        items.append(
            Item(
                key=f"digit-{index:04d}",
                label=int(digits.target[index]),
                image=image,
                image_key=f"digits/{index:04d}",
                features=_pixel_features(image),
            )
        )
    return _split_by_label(items, np.random.default_rng([seed, 1]), test_cap=_TEST_IMAGES_PER_CLASS)


def _face_items(seed: int) -> tuple[list[Item], list[Item]]:
    """scikit-image's LFW subset: 100 faces (label 1) and 100 background patches (label 0), 25x25."""
    from skimage import data

    images = data.lfw_subset()
    items: list[Item] = []
    for index, face in enumerate(images):
        gray = np.round(255.0 * np.clip(face, 0.0, 1.0)).astype(np.uint8)
        big = np.asarray(Image.fromarray(gray).resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BILINEAR))
        image = _gray_to_rgb(big)
        items.append(
            Item(
                key=f"lfw-{index:03d}",
                label=int(index < 100),
                image=image,
                image_key=f"lfw/{index:03d}",
                features=_pixel_features(image),
            )
        )
    return _split_by_label(items, np.random.default_rng([seed, 2]), test_cap=_TEST_IMAGES_PER_CLASS)


# scikit-image sample picture -> what it shows (all ship inside the package)
_SAMPLE_PICTURES: dict[str, str] = {
    "astronaut": "a portrait of an astronaut in front of a flag",
    "brick": "a brick wall",
    "camera": "a man with a camera on a tripod",
    "cell": "a living cell under a microscope",
    "chelsea": "a cat lying down",
    "clock": "a clock on a wall",
    "coffee": "a cup of coffee on a saucer",
    "coins": "a set of old coins",
    "colorwheel": "a wheel of hues",
    "grass": "a patch of grass",
    "gravel": "a patch of gravel",
    "horse": "the silhouette of a horse",
    "immunohistochemistry": "stained tissue under a microscope",
    "logo": "the scikit-image logo",
    "microaneurysms": "a scan of blood vessels in an eye",
    "moon": "the surface of the moon",
    "motorcycle": "a motorcycle parked in a workshop",
    "page": "a page of printed text",
    "retina": "the back of a human eye",
    "rocket": "a rocket on its launch pad",
    "text": "a sheet of handwritten text",
}
_CROPS_PER_PICTURE = 4
_CROP_CAPTIONS = (
    "A detail of {what}.",
    "Close-up crop showing {what}.",
    "Part of a picture of {what}.",
    "A small piece of an image of {what}.",
)


def _as_rgb_uint8(array: np.ndarray) -> np.ndarray:
    array = np.asarray(array)
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    elif array.dtype != np.uint8:
        array = np.round(255.0 * np.clip(array, 0.0, 1.0)).astype(np.uint8)
    if array.ndim == 2:
        return _gray_to_rgb(array)
    if array.shape[2] == 4:  # RGBA (the logo): composite on white
        alpha = array[:, :, 3:4].astype(np.float64) / 255.0
        return np.round(array[:, :, :3] * alpha + 255.0 * (1.0 - alpha)).astype(np.uint8)
    return array[:, :, :3]


def _crop_items(seed: int) -> tuple[list[Item], list[Item]]:
    """Off-topic documents: 56x56 crops of scikit-image's sample pictures, each with a caption.

    Pictures (not crops) are split between test and train, so test crops come from unseen
    pictures. Every crop must show some structure (pixel std >= 8), not a flat patch.
    """
    from skimage import data

    rng = np.random.default_rng([seed, 3])
    names = sorted(_SAMPLE_PICTURES)
    test_names = {names[i] for i in rng.permutation(len(names))[: len(names) // 2]}
    test: list[Item] = []
    train: list[Item] = []
    for name in names:
        array = data.stereo_motorcycle()[0] if name == "motorcycle" else getattr(data, name)()
        picture = Image.fromarray(_as_rgb_uint8(array))
        scale = 2 * IMAGE_SIZE / min(picture.size)
        size = (
            max(2 * IMAGE_SIZE, round(picture.width * scale)),
            max(2 * IMAGE_SIZE, round(picture.height * scale)),
        )
        small = np.asarray(picture.resize(size, Image.Resampling.BILINEAR))
        crops: list[np.ndarray] = []
        for _ in range(100):
            top = int(rng.integers(0, small.shape[0] - IMAGE_SIZE + 1))
            left = int(rng.integers(0, small.shape[1] - IMAGE_SIZE + 1))
            crop = np.ascontiguousarray(small[top : top + IMAGE_SIZE, left : left + IMAGE_SIZE])
            if crop.astype(np.float64).std() >= 8.0:
                crops.append(crop)
            if len(crops) == _CROPS_PER_PICTURE:
                break
        for index, crop in enumerate(crops):
            caption = _CROP_CAPTIONS[index % len(_CROP_CAPTIONS)].format(what=_SAMPLE_PICTURES[name])
            item = Item(
                key=f"crop-{name}-{index}",
                label=OFF_TOPIC,
                text=caption,
                image=crop,
                image_key=f"pictures/{name}-{index}",
                features=_pixel_features(crop),
            )
            (test if name in test_names else train).append(item)
    return test, train


def _split_by_label(
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


# ----------------------------------------------------------------------------------------------- text

# Area 1 = files and paths, 0 = numbers and maths, OFF_TOPIC = concurrency and data formats (never
# asked about). The module lists are fixed and sorted.
_DOC_TOPICS: dict[int, tuple[str, ...]] = {
    1: ("filecmp", "fnmatch", "glob", "pathlib", "posixpath", "shutil", "tempfile", "zipfile"),
    0: ("cmath", "decimal", "fractions", "math", "random", "statistics"),
    OFF_TOPIC: ("csv", "html", "json", "queue", "sched", "threading"),
}
_DOCS_PER_MODULE = 30
_DOC_WORDS = 40

_DOC_QUERIES: dict[int, tuple[str, ...]] = {
    1: (
        "functions for working with file system paths",
        "how to copy, move or delete files and directories",
        "find files whose names match a wildcard pattern",
        "create temporary files and folders",
        "compare two files or two directories",
        "split a path into its directory and file name",
        "read and write zip archives",
        "check whether a path exists or is a directory",
        "list the files inside a folder",
        "change the permissions of a file",
        "turn a relative path into an absolute path",
        "get the extension of a file name",
    ),
    0: (
        "mathematical functions on numbers",
        "compute square roots, logarithms and powers",
        "trigonometric functions of an angle in radians",
        "mean, median and standard deviation of data",
        "exact arithmetic with fractions",
        "decimal arithmetic with control over rounding",
        "draw random numbers from a distribution",
        "greatest common divisor of two integers",
        "functions on complex numbers",
        "round a number down or up to an integer",
        "test whether a float is infinite or not a number",
        "shuffle a list or pick a random sample from it",
    ),
}


def _docstring(obj: Any) -> str | None:
    doc = inspect.getdoc(obj)
    if not doc:
        return None
    words = doc.split()
    return " ".join(words[:_DOC_WORDS]) if len(words) >= 6 else None


def _module_docs(module_name: str) -> list[tuple[str, str]]:
    """(qualified name, first words of its docstring) for a module's own public functions, classes
    and methods, in sorted order; exceptions and non-routines are left out."""
    module = importlib.import_module(module_name)
    found: list[tuple[str, str]] = []
    for name in sorted(dir(module)):
        obj = getattr(module, name)
        if name.startswith("_") or getattr(obj, "__module__", None) != module_name:
            continue
        if inspect.isclass(obj):
            if issubclass(obj, BaseException):
                continue
            members = [(f"{module_name}.{name}", obj)]
            members += [
                (f"{module_name}.{name}.{attr}", getattr(obj, attr))
                for attr in sorted(vars(obj))
                if not attr.startswith("_") and inspect.isroutine(getattr(obj, attr))
            ]
        elif inspect.isroutine(obj):
            members = [(f"{module_name}.{name}", obj)]
        else:
            continue
        for qualified, member in members:
            doc = _docstring(member)
            if doc:
                found.append((qualified, doc))
    return found


def _docstring_items(seed: int) -> tuple[list[Item], list[Item]]:
    """Docstrings of three areas of the standard library: label 1 = files and paths, 0 = numbers and
    maths, ``OFF_TOPIC`` = concurrency and data formats."""
    rng = np.random.default_rng([seed, 4])
    items: list[Item] = []
    seen: set[str] = set()
    for label, modules in sorted(_DOC_TOPICS.items()):
        for module_name in modules:
            docs = _module_docs(module_name)
            keep = sorted(rng.permutation(len(docs))[:_DOCS_PER_MODULE]) if docs else []
            for index in keep:
                qualified, doc = docs[index]
                text = f"{qualified}: {doc}"
                if doc in seen:  # identical docstrings (inherited, aliases) would be ambiguous
                    continue
                seen.add(doc)
                items.append(Item(key=f"doc-{qualified}", label=label, text=text))
    return _split_by_label(items, rng)


_DIGIT_WORDS = {0: ("zero", "0"), 1: ("one", "1")}
_DIGIT_QUERIES = (
    "a handwritten {word}",
    "the digit {digit} written by hand",
    "a scanned handwritten {word}",
    "handwritten numeral {digit}",
    "the number {word} in handwriting",
    "a hand-drawn digit {digit}",
    "a {word} written with a pen",
    "a small scan of the digit {word}",
)
_DIGIT_CAPTIONS = (
    "A handwritten {word}.",
    "The digit {digit}, written by hand.",
    "A scanned handwritten {word}.",
    "Handwritten numeral {digit}.",
    "The number {word} in handwriting.",
    "A hand-drawn digit {digit}.",
    "A {word} written with a pen.",
    "An 8 by 8 pixel scan of the digit {word}.",
)
_CAPTION_SOURCES = (
    "",
    " From a handwriting form.",
    " Scanned in grayscale.",
    " Part of the UCI digits collection.",
    " Black ink on white paper.",
    " One of many writers.",
)
_SAME_DIGIT_REQUESTS = (
    "the same digit, written by another person",
    "another handwritten example of this digit",
    "this digit in different handwriting",
    "find more samples of the same number",
    "same digit, different writer",
    "other scans showing this digit",
)
_FACE_QUESTIONS = (
    "Is there a human face in this picture?",
    "Does this image show a person's face?",
    "Is this a photo of a face?",
    "Can you see a face in this image?",
    "Is the picture a close-up of somebody's face?",
    "Does the photo contain a face?",
)
_FACE_ANSWERS = {
    1: (
        "Yes. The picture shows a human face{detail}.",
        "Yes, it is a close-up of a person's face{detail}.",
        "Yes: a face fills the picture{detail}.",
        "Yes, there is a face here{detail}.",
        "It does show a face{detail}.",
        "Yes, this is a person's face{detail}.",
    ),
    0: (
        "No. There is no face in this picture; it shows {detail}.",
        "No, it is not a face but {detail}.",
        "No: the picture only contains {detail}.",
        "There is no face here, only {detail}.",
        "It does not show a face; it shows {detail}.",
        "No, this is {detail}, not a face.",
    ),
}
_FACE_ANSWER_DETAILS = {
    1: (
        "",
        ", in grayscale",
        ", cropped tightly",
        ", seen from the front",
        ", with the eyes and nose visible",
        ", taken from a news photo",
        ", centred in the frame",
        ", in low resolution",
    ),
    0: (
        "part of the background",
        "a patch of background",
        "an out-of-focus background",
        "a textured surface",
        "a blurry region of a photo",
        "part of a scene",
        "a piece of the backdrop",
        "a low-resolution background patch",
    ),
}
_DIGIT_DOC_CAPTIONS = (
    "Sample {number} of the UCI handwritten digits collection.",
    "A digit scanned from a handwriting form (item {number}).",
    "Handwritten digit number {number}, scanned at 8 by 8 pixels.",
    "Item {number}: one digit written by hand.",
)


def _labelled_texts(
    templates: dict[int, list[str]], prefix: str, seed: int, salt: int
) -> tuple[list[Item], list[Item]]:
    items = [
        Item(key=f"{prefix}-{label}-{index:02d}", label=label, text=text)
        for label, texts in sorted(templates.items())
        for index, text in enumerate(texts)
    ]
    return _split_by_label(items, np.random.default_rng([seed, salt]))


def _phrases(texts: dict[int, Sequence[str]], prefix: str) -> list[Item]:
    """Query phrasings (shared by test and train: the same templated queries, different documents)."""
    return [
        Item(key=f"{prefix}-{label}-{index:02d}", label=label, text=text)
        for label, options in sorted(texts.items())
        for index, text in enumerate(options)
    ]


def _image_only(items: list[Item]) -> list[Item]:
    """The same items without their text part (image documents of T2I / IT2I tasks)."""
    return [replace(item, text=None) for item in items]


def _with_text(images: list[Item], texts: Sequence[str], offset: int) -> list[Item]:
    """Image queries that also carry a text part (IT2* families), phrasings assigned round-robin."""
    return [replace(item, text=texts[(index + offset) % len(texts)]) for index, item in enumerate(images)]


# ------------------------------------------------------------------------------------------ retrieval


class BM25:
    """Okapi BM25 over a fixed collection (Anserini defaults k1 = 0.9, b = 0.4)."""

    def __init__(self, texts: dict[str, str], k1: float = 0.9, b: float = 0.4) -> None:
        self.k1, self.b = k1, b
        self.term_counts = {key: Counter(_TOKEN.findall(text.lower())) for key, text in texts.items()}
        self.lengths = {key: sum(counts.values()) for key, counts in self.term_counts.items()}
        self.mean_length = max(1.0, sum(self.lengths.values()) / max(1, len(self.lengths)))
        document_frequency: Counter[str] = Counter()
        for counts in self.term_counts.values():
            document_frequency.update(counts.keys())
        n = len(self.term_counts)
        self.idf = {
            term: math.log(1.0 + (n - df + 0.5) / (df + 0.5)) for term, df in document_frequency.items()
        }

    def score(self, query: str, key: str) -> float:
        counts, length = self.term_counts[key], self.lengths[key]
        norm = self.k1 * (1.0 - self.b + self.b * length / self.mean_length)
        total = 0.0
        for term in sorted(set(_TOKEN.findall(query.lower()))):
            tf = counts.get(term, 0)
            if tf:
                total += self.idf[term] * tf * (self.k1 + 1.0) / (tf + norm)
        return total


def _first_stage(
    spec: TaskSpec, query: Item, pool: list[Item], bm25: BM25 | None, rng: np.random.Generator
) -> list[float]:
    """Scores of the task's first-stage retriever for ``pool`` (higher = better), rounded to 6 decimals."""
    if spec.retriever == "bm25":
        assert bm25 is not None and query.text
        # Ties (BM25 = 0 is common on short texts) are broken at random, not by document id.
        scores = [bm25.score(query.text, doc.key) + 1e-4 * float(rng.random()) for doc in pool]
    elif spec.retriever == "pixels":
        assert query.features is not None
        scores = [float(np.dot(query.features, doc.features)) for doc in pool]
    else:
        scores = [float(rng.random()) for _ in pool]
    return [round(score, 6) for score in scores]


def _draw_pool(query: Item, docs: list[Item], n_relevant: int, rng: np.random.Generator) -> list[Item]:
    """A judged pool of ``DEPTH`` documents: ``n_relevant`` relevant ones (the query's label),
    ``N_NEAR_MISSES`` near misses (the other label) and off-topic ones for the rest; tasks without
    off-topic documents fill the pool with near misses. The query itself is never in its pool."""
    relevant = [doc for doc in docs if doc.label == query.label and doc.key != query.key]
    near = [doc for doc in docs if doc.label not in (query.label, OFF_TOPIC) and doc.key != query.key]
    off_topic = [doc for doc in docs if doc.label == OFF_TOPIC]
    n_near = N_NEAR_MISSES if off_topic else DEPTH - n_relevant
    pool: list[Item] = []
    for group, count in ((relevant, n_relevant), (near, n_near), (off_topic, DEPTH - n_relevant - n_near)):
        pool += [group[i] for i in rng.choice(len(group), count, replace=False)]
    return pool


def _pick_queries(queries: list[Item], count: int, rng: np.random.Generator, cycle: bool) -> list[Item]:
    """``count`` queries alternating over the labels present; without repeats unless ``cycle``."""
    labels = sorted({item.label for item in queries})
    by_label = {label: [item for item in queries if item.label == label] for label in labels}
    orders = {label: list(rng.permutation(len(group))) for label, group in by_label.items()}
    picked: list[Item] = []
    for index in range(count):
        label = labels[index % len(labels)]
        position = index // len(labels)
        group, order = by_label[label], orders[label]
        if position >= len(order) and not cycle:
            raise ValueError(f"not enough label-{label} queries: need {position + 1}, have {len(order)}")
        picked.append(group[order[position % len(order)]])
    return picked


# ------------------------------------------------------------------------------------------- the tasks


def _task_specs(seed: int) -> list[TaskSpec]:
    digits_test, digits_train = _digit_items(seed)
    faces_test, faces_train = _face_items(seed)
    crops_test, crops_train = _crop_items(seed)
    docs_test, docs_train = _docstring_items(seed)
    junk_test = [item for item in docs_test if item.label == OFF_TOPIC]
    junk_train = [item for item in docs_train if item.label == OFF_TOPIC]
    captions = {
        label: [
            template.format(word=word, digit=digit) + tail
            for template in _DIGIT_CAPTIONS
            for tail in _CAPTION_SOURCES
        ]
        for label, (word, digit) in _DIGIT_WORDS.items()
    }
    captions_test, captions_train = _labelled_texts(captions, "caption", seed, 5)
    answers = {
        label: [
            template.format(detail=detail) for template in templates for detail in _FACE_ANSWER_DETAILS[label]
        ]
        for label, templates in _FACE_ANSWERS.items()
    }
    answers_test, answers_train = _labelled_texts(answers, "answer", seed, 6)
    digit_queries = _phrases(
        {
            label: [t.format(word=w, digit=d) for t in _DIGIT_QUERIES]
            for label, (w, d) in _DIGIT_WORDS.items()
        },
        "digit-query",
    )
    doc_queries = _phrases(_DOC_QUERIES, "doc-query")

    def captioned(digits: list[Item]) -> list[Item]:
        return [
            replace(item, text=_DIGIT_DOC_CAPTIONS[i % len(_DIGIT_DOC_CAPTIONS)].format(number=item.key[-4:]))
            for i, item in enumerate(digits)
        ]

    faces_only = (
        [item for item in faces_test if item.label == 1],
        [item for item in faces_train if item.label == 1],
    )
    digits_source = (
        "scikit-learn load_digits(): real 8x8 handwritten digits 0 and 1, dark ink on white, upscaled x7 "
        "(nearest) to 56x56"
    )
    lfw_source = (
        "scikit-image data.lfw_subset(): 100 real faces and 100 background patches from LFW, 25x25 "
        "grayscale upscaled (bilinear) to 56x56"
    )
    crops_source = (
        f"56x56 crops of scikit-image's {len(_SAMPLE_PICTURES)} sample pictures (test and train crops come "
        "from different pictures)"
    )
    junk_source = "docstrings of " + ", ".join(_DOC_TOPICS[OFF_TOPIC])
    pixels = "cosine similarity of mean-centred 14x14 downsampled grayscale pixels"
    return [
        TaskSpec(
            name="stdlib-docs",
            family="T2T",
            metric="ndcg@10",
            instruction="Given a request for Python functionality, retrieve documentation of standard library "
            "functions from the area of the library it asks about.",
            retriever="bm25",
            test=Split(doc_queries, docs_test),
            train=Split(doc_queries, docs_train),
            source="docstrings of Python's standard library (qualified name + first 40 words, at most "
            f"{_DOCS_PER_MODULE} per module): files and paths = "
            + ", ".join(_DOC_TOPICS[1])
            + "; numbers and maths = "
            + ", ".join(_DOC_TOPICS[0])
            + "; queries are 12 hand-written requests "
            "per area",
            relevance="a docstring from the area the request is about (files and paths, or numbers and maths); "
            "near misses: the other area; off-topic: " + junk_source,
            first_stage="BM25 (k1 0.9, b 0.4) of the request against the docstrings",
        ),
        TaskSpec(
            name="digits-t2i",
            family="T2I",
            metric="recall@5",
            instruction="Retrieve an image that matches the given caption.",
            retriever="random",
            test=Split(digit_queries, digits_test + _image_only(crops_test)),
            train=Split(digit_queries, digits_train + _image_only(crops_train)),
            source=f"{digits_source}; queries are templated captions naming the digit",
            relevance="an image of the digit the caption names; near misses: the other digit; off-topic: "
            + crops_source,
            first_stage="seeded random scores, a stand-in for a weak cross-modal retriever (no text-image "
            "encoder ships offline)",
        ),
        TaskSpec(
            name="digits-i2t",
            family="I2T",
            metric="recall@5",
            instruction="Retrieve a caption that describes the given image.",
            retriever="random",
            test=Split(digits_test, captions_test + junk_test),
            train=Split(digits_train, captions_train + junk_train),
            source=f"{digits_source}; the captions are "
            f"{len(_DIGIT_CAPTIONS) * len(_CAPTION_SOURCES)} templates per digit, half test, half train",
            relevance="a caption naming the digit in the query image; near misses: captions of the other digit; "
            "off-topic: " + junk_source,
            first_stage="seeded random scores (weak cross-modal stand-in)",
        ),
        TaskSpec(
            name="faces-i2i",
            family="I2I",
            metric="recall@5",
            instruction="Retrieve an image that shows the same kind of subject as the given image.",
            retriever="pixels",
            test=Split(faces_only[0], faces_test),
            train=Split(faces_only[1], faces_train),
            source=f"{lfw_source}; every query is a face",
            relevance="another face; the rest of the pool are background patches (no off-topic documents)",
            first_stage=pixels,
        ),
        TaskSpec(
            name="digits-it2i",
            family="IT2I",
            metric="recall@5",
            instruction="Retrieve an image that satisfies the request about the given image.",
            retriever="pixels",
            test=Split(
                _with_text(digits_test, _SAME_DIGIT_REQUESTS, 0), digits_test + _image_only(crops_test)
            ),
            train=Split(
                _with_text(digits_train, _SAME_DIGIT_REQUESTS, 1), digits_train + _image_only(crops_train)
            ),
            source=f"{digits_source}; each query is a digit image with a request such as 'the same digit, "
            "written by another person'",
            relevance="another image of the query's digit (never the query image itself); near misses: the "
            "other digit; off-topic: " + crops_source,
            first_stage=pixels + " of the query image (the request is ignored)",
        ),
        TaskSpec(
            name="faces-it2t",
            family="IT2T",
            metric="recall@5",
            instruction="Retrieve the answer to the question about the given image.",
            retriever="bm25",
            test=Split(_with_text(faces_test, _FACE_QUESTIONS, 0), answers_test + junk_test),
            train=Split(_with_text(faces_train, _FACE_QUESTIONS, 1), answers_train + junk_train),
            source=f"{lfw_source}; each query is a face or a background patch with a question whether it "
            "shows a face; the answers are templated",
            relevance="an answer that is right about the image (yes for a face, no otherwise); near misses: "
            "the wrong answers; off-topic: " + junk_source,
            first_stage="BM25 of the question against the documents (the image is ignored)",
        ),
        TaskSpec(
            name="digits-t2it",
            family="T2IT",
            metric="recall@5",
            instruction="Retrieve an image with its caption that matches the given description.",
            retriever="bm25",
            test=Split(digit_queries, captioned(digits_test) + crops_test),
            train=Split(digit_queries, captioned(digits_train) + crops_train),
            source=f"{digits_source}, each with a caption that does not name the digit ('Sample 0123 of the "
            "UCI handwritten digits collection.'); queries as in digits-t2i",
            relevance="an image of the digit the query names; near misses: the other digit; off-topic: "
            + crops_source
            + ", captioned with what the picture shows",
            first_stage="BM25 of the query against the captions, ties broken at random",
        ),
    ]


# ------------------------------------------------------------------------------------------- writing


def _save_png(image: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image, mode="RGB").save(path, format="PNG")


def _json_line(record: dict[str, Any]) -> str:
    return json.dumps(record, ensure_ascii=False) + "\n"


def _build_test_task(spec: TaskSpec, task_dir: Path, seed: int, salt: int) -> dict[str, Any]:
    rng = np.random.default_rng([seed, 100 + salt])
    bm25 = BM25({doc.key: doc.text or "" for doc in spec.test.docs}) if spec.retriever == "bm25" else None
    queries = _pick_queries(spec.test.queries, N_TEST_QUERIES, rng, cycle=False)
    pools = [_draw_pool(query, spec.test.docs, 3 + index % 3, rng) for index, query in enumerate(queries)]
    scores = [_first_stage(spec, query, pool, bm25, rng) for query, pool in zip(queries, pools, strict=True)]

    corpus_items = {doc.key: doc for pool in pools for doc in pool}
    order = rng.permutation(len(corpus_items))
    keys = sorted(corpus_items)
    doc_ids = {keys[position]: f"d{rank:03d}" for rank, position in enumerate(order, start=1)}
    query_ids = [f"q{index:02d}" for index in range(1, len(queries) + 1)]

    def record(item: Item, item_id: str) -> dict[str, Any]:
        out: dict[str, Any] = {"id": item_id}
        if item.text:
            out["text"] = item.text
        if item.image is not None:
            out["image"] = f"images/{item_id}.png"
            _save_png(item.image, task_dir / out["image"])
        return out

    task_dir.mkdir(parents=True, exist_ok=True)
    meta = {"family": spec.family, "instruction": spec.instruction, "metric": spec.metric}
    (task_dir / "task.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    with open(task_dir / "queries.jsonl", "w", encoding="utf-8") as handle:
        for query, query_id in zip(queries, query_ids, strict=True):
            handle.write(_json_line(record(query, query_id)))
    by_id = sorted((doc_id, key) for key, doc_id in doc_ids.items())
    with open(task_dir / "corpus.jsonl", "w", encoding="utf-8") as handle:
        for doc_id, key in by_id:
            handle.write(_json_line(record(corpus_items[key], doc_id)))
    run: dict[str, dict[str, float]] = {}
    with open(task_dir / "qrels.tsv", "w", encoding="utf-8") as handle:
        for query, query_id, pool, pool_scores in zip(queries, query_ids, pools, scores, strict=True):
            run[query_id] = {doc_ids[doc.key]: score for doc, score in zip(pool, pool_scores, strict=True)}
            for doc_id in sorted(doc_ids[doc.key] for doc in pool if doc.label == query.label):
                handle.write(f"{query_id} 0 {doc_id} 1\n")
    write_run(task_dir / "candidates.trec", run, tag=f"demo-{spec.retriever}")
    return {
        "family": spec.family,
        "metric": spec.metric,
        "queries": len(queries),
        "corpus": len(corpus_items),
        "depth": DEPTH,
    }


def _train_doc(item: Item, train_dir: Path, written: set[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    if item.text:
        out["text"] = item.text
    if item.image is not None:
        assert item.image_key is not None
        out["image"] = f"images/{item.image_key}.png"
        if item.image_key not in written:
            written.add(item.image_key)
            _save_png(item.image, train_dir / out["image"])
    return out


def _build_train_file(spec: TaskSpec, train_dir: Path, seed: int, salt: int, written: set[str]) -> int:
    rng = np.random.default_rng([seed, 200 + salt])
    bm25 = BM25({doc.key: doc.text or "" for doc in spec.train.docs}) if spec.retriever == "bm25" else None
    queries = _pick_queries(spec.train.queries, N_TRAIN_GROUPS, rng, cycle=True)
    with open(train_dir / f"{spec.name}.jsonl", "w", encoding="utf-8") as handle:
        for index, query in enumerate(queries):
            pool = _draw_pool(query, spec.train.docs, 3 + index % 3, rng)
            scores = _first_stage(spec, query, pool, bm25, rng)
            ranked = [pool[i] for i in sorted(range(len(pool)), key=lambda i: -scores[i])]
            positives = [doc for doc in ranked if doc.label == query.label][:MAX_POSITIVES]
            hard_negatives = [doc for doc in ranked if doc.label != query.label][:N_HARD_NEGATIVES]
            group = {
                "task": spec.name,
                "instruction": spec.instruction,
                "query": _train_doc(query, train_dir, written),
                "positives": [_train_doc(doc, train_dir, written) for doc in positives],
                "hard_negatives": [_train_doc(doc, train_dir, written) for doc in hard_negatives],
            }
            handle.write(_json_line(group))
    return len(queries)


def _readme(
    specs: list[TaskSpec], tasks: dict[str, dict[str, Any]], groups: dict[str, int], seed: int
) -> str:
    lines = [
        "# rerank-lab demo benchmark",
        "",
        f"Built by `python -m datamodules.demo --out <dir> --seed {seed}` from real data that ships inside "
        "installed packages (no network). Rebuilding with the same seed gives byte-identical files.",
        "",
        "- `mrb/<task>/`: MRB-format test sets (design.md §4).",
        f"- `train/<task>.jsonl`: {sum(groups.values())} training groups (design.md §4), each with up to "
        f"{MAX_POSITIVES} positives and {N_HARD_NEGATIVES} hard negatives (the first stage's top-ranked "
        "non-relevant documents of the group's pool); images under `train/images/`.",
        "",
        "Relevance rests on binary properties (digit 0 vs 1, face vs background, files vs numbers "
        "documentation) that a tiny randomly initialised model can learn in minutes on CPU. Each test query "
        f"is judged against its own pool of {DEPTH} documents drawn from the test half of the sources: 3 to 5 "
        f"relevant ones, near misses (same kind of item, the other class: {N_NEAR_MISSES} per pool, or the "
        "whole rest of the pool when a task has no off-topic documents) and off-topic documents from another "
        "source. The first stage ranks the pool and `candidates.trec` holds all of it, so every relevant "
        "document is a candidate: a perfect reranker scores 1.0, a random reordering about 0.25 (recall@5) "
        "or 0.35 (ndcg@10), and a model that only learned what is off-topic about 0.5. Documents outside a "
        "query's pool are unjudged for it (not relevant, as in TREC pooling). Training groups are built the "
        "same way from the train half: disjoint images, docstrings, captions and answers (the templated "
        "query texts are shared).",
        "",
        "| task | family | metric | queries | corpus | depth | train groups |",
        "|---|---|---|---|---|---|---|",
    ]
    for spec in specs:
        info = tasks[spec.name]
        lines.append(
            f"| {spec.name} | {spec.family} | {spec.metric} | {info['queries']} | {info['corpus']} | "
            f"{info['depth']} | {groups[spec.name]} |"
        )
    for spec in specs:
        lines += [
            "",
            f"## {spec.name} ({spec.family}, {spec.metric})",
            "",
            f"- Instruction: {spec.instruction}",
            f"- Source: {spec.source}.",
            f"- Relevance: {spec.relevance}.",
            f"- First stage (`candidates.trec`): {spec.first_stage}.",
        ]
    return "\n".join(lines) + "\n"


def _prepare_out(out: Path) -> None:
    """Make ``out`` ready: create it, or clear a previous build; never touch anything else."""
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a folder; choose another --out")
    if out.is_dir() and any(out.iterdir()):
        if not (out / MARKER).is_file():
            raise FileExistsError(
                f"{out} is not empty and was not made by datamodules.demo (no {MARKER} file); "
                "choose an empty or new folder"
            )
        for name in ("mrb", "train"):
            if (out / name).is_dir():
                shutil.rmtree(out / name)
        for name in ("README.md", MARKER):
            (out / name).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)


def build_demo(out: Path, seed: int = 0) -> dict[str, Any]:
    """Build the demo benchmark into ``out`` (see the module docstring).

    Args:
        out: Target folder: new, empty, or a previous build of this function (it is rebuilt).
        seed: Seeds every split, pool, query choice and random first stage.

    Returns:
        A summary: ``{"out", "seed", "tasks": {name: {family, metric, queries, corpus, depth}},
        "train_groups": {name: n}, "files": n, "bytes": n, "seconds": s}``.

    Raises:
        FileExistsError: ``out`` holds something this builder did not make.
    """
    start = time.perf_counter()
    out = Path(out)
    _prepare_out(out)
    marker = {"builder": "datamodules.demo", "seed": seed}
    (out / MARKER).write_text(json.dumps(marker) + "\n", encoding="utf-8")
    specs = _task_specs(seed)
    tasks = {
        spec.name: _build_test_task(spec, out / "mrb" / spec.name, seed, salt)
        for salt, spec in enumerate(specs)
    }
    train_dir = out / "train"
    train_dir.mkdir(parents=True, exist_ok=True)
    written: set[str] = set()
    groups = {
        spec.name: _build_train_file(spec, train_dir, seed, salt, written) for salt, spec in enumerate(specs)
    }
    (out / "README.md").write_text(_readme(specs, tasks, groups, seed), encoding="utf-8")
    files = [path for path in out.rglob("*") if path.is_file()]
    return {
        "out": str(out),
        "seed": seed,
        "tasks": tasks,
        "train_groups": groups,
        "files": len(files),
        "bytes": sum(path.stat().st_size for path in files),
        "seconds": round(time.perf_counter() - start, 2),
    }


def main(argv: list[str] | None = None) -> int:
    """Command line: ``python -m datamodules.demo --out DIR [--seed 0]``."""
    parser = argparse.ArgumentParser(
        prog="python -m datamodules.demo",
        description="Build the demo benchmark (training groups + MRB test tasks) from offline package data.",
    )
    parser.add_argument(
        "--out", type=Path, required=True, help="target folder (new, empty, or a previous build)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of every split and random choice")
    args = parser.parse_args(argv)
    try:
        summary = build_demo(args.out, seed=args.seed)
    except FileExistsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{'task':<16}{'family':<8}{'metric':<10}{'queries':>8}{'corpus':>8}{'depth':>7}{'train':>7}")
    for name, info in summary["tasks"].items():
        print(
            f"{name:<16}{info['family']:<8}{info['metric']:<10}{info['queries']:>8}{info['corpus']:>8}"
            f"{info['depth']:>7}{summary['train_groups'][name]:>7}"
        )
    print(
        f"wrote {summary['files']} files ({summary['bytes'] / 1e6:.2f} MB) to {summary['out']} "
        f"in {summary['seconds']:.1f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
