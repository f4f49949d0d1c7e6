"""The seven demo tasks: their query templates, instructions, sources and relevance rules."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from datamodules.demo.images import SAMPLE_PICTURES, crop_items, digit_items, face_items
from datamodules.demo.spec import OFF_TOPIC, Item, Split, TaskSpec
from datamodules.demo.texts import (
    DOC_TOPICS,
    DOCS_PER_MODULE,
    docstring_items,
    image_only,
    labelled_texts,
    phrases,
    with_text,
)

# Hand-written requests of the stdlib-docs task: label 1 = files and paths, 0 = numbers and maths.
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


@dataclass(frozen=True)
class _Task:
    """A demo task as data: ``queries`` and ``docs`` name item pools (:func:`_pools`; ``docs`` are joined in
    order), ``source``, ``relevance`` and ``first_stage`` are templates over :func:`_texts`."""

    name: str
    family: str
    metric: str
    instruction: str
    retriever: str  # "bm25", "pixels" or "random"
    queries: str
    docs: tuple[str, ...]
    source: str
    relevance: str
    first_stage: str


_TASKS = (
    _Task(
        name="stdlib-docs",
        family="T2T",
        metric="ndcg@10",
        instruction="Given a request for Python functionality, retrieve documentation of standard library "
        "functions from the area of the library it asks about.",
        retriever="bm25",
        queries="doc_queries",
        docs=("docs",),
        source="docstrings of Python's standard library (qualified name + first 40 words, at most "
        "{docs_per_module} per module): files and paths = {files_topics}; numbers and maths = {maths_topics}; "
        "queries are 12 hand-written requests per area",
        relevance="a docstring from the area the request is about (files and paths, or numbers and maths); "
        "near misses: the other area; off-topic: {junk_source}",
        first_stage="BM25 (k1 0.9, b 0.4) of the request against the docstrings",
    ),
    _Task(
        name="digits-t2i",
        family="T2I",
        metric="recall@5",
        instruction="Retrieve an image that matches the given caption.",
        retriever="random",
        queries="digit_queries",
        docs=("digits", "crop_images"),
        source="{digits_source}; queries are templated captions naming the digit",
        relevance="an image of the digit the caption names; near misses: the other digit; off-topic: "
        "{crops_source}",
        first_stage="seeded random scores, a stand-in for a weak cross-modal retriever (no text-image "
        "encoder ships offline)",
    ),
    _Task(
        name="digits-i2t",
        family="I2T",
        metric="recall@5",
        instruction="Retrieve a caption that describes the given image.",
        retriever="random",
        queries="digits",
        docs=("captions", "junk"),
        source="{digits_source}; the captions are {caption_templates} templates per digit, half test, half "
        "train",
        relevance="a caption naming the digit in the query image; near misses: captions of the other digit; "
        "off-topic: {junk_source}",
        first_stage="seeded random scores (weak cross-modal stand-in)",
    ),
    _Task(
        name="faces-i2i",
        family="I2I",
        metric="recall@5",
        instruction="Retrieve an image that shows the same kind of subject as the given image.",
        retriever="pixels",
        queries="faces_only",
        docs=("faces",),
        source="{lfw_source}; every query is a face",
        relevance="another face; the rest of the pool are background patches (no off-topic documents)",
        first_stage="{pixels}",
    ),
    _Task(
        name="digits-it2i",
        family="IT2I",
        metric="recall@5",
        instruction="Retrieve an image that satisfies the request about the given image.",
        retriever="pixels",
        queries="digits_with_request",
        docs=("digits", "crop_images"),
        source="{digits_source}; each query is a digit image with a request such as 'the same digit, "
        "written by another person'",
        relevance="another image of the query's digit (never the query image itself); near misses: the "
        "other digit; off-topic: {crops_source}",
        first_stage="{pixels} of the query image (the request is ignored)",
    ),
    _Task(
        name="faces-it2t",
        family="IT2T",
        metric="recall@5",
        instruction="Retrieve the answer to the question about the given image.",
        retriever="bm25",
        queries="faces_with_question",
        docs=("answers", "junk"),
        source="{lfw_source}; each query is a face or a background patch with a question whether it "
        "shows a face; the answers are templated",
        relevance="an answer that is right about the image (yes for a face, no otherwise); near misses: "
        "the wrong answers; off-topic: {junk_source}",
        first_stage="BM25 of the question against the documents (the image is ignored)",
    ),
    _Task(
        name="digits-t2it",
        family="T2IT",
        metric="recall@5",
        instruction="Retrieve an image with its caption that matches the given description.",
        retriever="bm25",
        queries="digit_queries",
        docs=("captioned_digits", "crops"),
        source="{digits_source}, each with a caption that does not name the digit ('Sample 0123 of the "
        "UCI handwritten digits collection.'); queries as in digits-t2i",
        relevance="an image of the digit the query names; near misses: the other digit; off-topic: "
        "{crops_source}, captioned with what the picture shows",
        first_stage="BM25 of the query against the captions, ties broken at random",
    ),
)


def _texts() -> dict[str, str]:
    """The shared descriptions the task templates refer to."""
    return {
        "digits_source": "scikit-learn load_digits(): real 8x8 handwritten digits 0 and 1, dark ink on white, "
        "upscaled x7 (nearest) to 56x56",
        "lfw_source": "scikit-image data.lfw_subset(): 100 real faces and 100 background patches from LFW, "
        "25x25 grayscale upscaled (bilinear) to 56x56",
        "crops_source": f"56x56 crops of scikit-image's {len(SAMPLE_PICTURES)} sample pictures (test and train "
        "crops come from different pictures)",
        "junk_source": "docstrings of " + ", ".join(DOC_TOPICS[OFF_TOPIC]),
        "pixels": "cosine similarity of mean-centred 14x14 downsampled grayscale pixels",
        "docs_per_module": str(DOCS_PER_MODULE),
        "files_topics": ", ".join(DOC_TOPICS[1]),
        "maths_topics": ", ".join(DOC_TOPICS[0]),
        "caption_templates": str(len(_DIGIT_CAPTIONS) * len(_CAPTION_SOURCES)),
    }


def _texts_by_label(
    templates: Mapping[int, Sequence[str]], details: Mapping[int, Sequence[str]]
) -> dict[int, list[str]]:
    """Every template of a label filled with every detail of that label."""
    return {
        label: [t.format(detail=d) for t in templates[label] for d in details[label]] for label in templates
    }


def _digit_captions() -> dict[int, list[str]]:
    return {
        label: [
            template.format(word=word, digit=digit) + tail
            for template in _DIGIT_CAPTIONS
            for tail in _CAPTION_SOURCES
        ]
        for label, (word, digit) in _DIGIT_WORDS.items()
    }


def _captioned(digits: list[Item]) -> list[Item]:
    """Digit images captioned without naming the digit (the digits-t2it documents)."""
    return [
        replace(item, text=_DIGIT_DOC_CAPTIONS[i % len(_DIGIT_DOC_CAPTIONS)].format(number=item.key[-4:]))
        for i, item in enumerate(digits)
    ]


def _pools(seed: int) -> tuple[dict[str, list[Item]], dict[str, list[Item]]]:
    """The item pools the task table names, drawn with ``seed``: (test, train)."""
    digits = digit_items(seed)
    faces = face_items(seed)
    crops = crop_items(seed)
    docs = docstring_items(seed)
    captions = labelled_texts(_digit_captions(), "caption", seed, 5)
    answers = labelled_texts(_texts_by_label(_FACE_ANSWERS, _FACE_ANSWER_DETAILS), "answer", seed, 6)
    digit_words = {
        label: [t.format(word=w, digit=d) for t in _DIGIT_QUERIES] for label, (w, d) in _DIGIT_WORDS.items()
    }
    shared = {
        "digit_queries": phrases(digit_words, "digit-query"),
        "doc_queries": phrases(_DOC_QUERIES, "doc-query"),
    }
    sides = []
    for side in (0, 1):  # 0: test, 1: train (also the offset of the texts given to query images)
        sides.append(
            {
                **shared,
                "digits": digits[side],
                "faces": faces[side],
                "crops": crops[side],
                "crop_images": image_only(crops[side]),
                "docs": docs[side],
                "junk": [item for item in docs[side] if item.label == OFF_TOPIC],
                "captions": captions[side],
                "answers": answers[side],
                "faces_only": [item for item in faces[side] if item.label == 1],
                "digits_with_request": with_text(digits[side], _SAME_DIGIT_REQUESTS, side),
                "faces_with_question": with_text(faces[side], _FACE_QUESTIONS, side),
                "captioned_digits": _captioned(digits[side]),
            }
        )
    return sides[0], sides[1]


def _split(task: _Task, pool: dict[str, list[Item]]) -> Split:
    return Split(pool[task.queries], [item for name in task.docs for item in pool[name]])


def task_specs(seed: int) -> list[TaskSpec]:
    """The seven demo tasks (one per family it covers), their items drawn with ``seed``."""
    test, train = _pools(seed)
    texts = _texts()
    return [
        TaskSpec(
            name=task.name,
            family=task.family,
            metric=task.metric,
            instruction=task.instruction,
            retriever=task.retriever,
            test=_split(task, test),
            train=_split(task, train),
            source=task.source.format(**texts),
            relevance=task.relevance.format(**texts),
            first_stage=task.first_stage.format(**texts),
        )
        for task in _TASKS
    ]
