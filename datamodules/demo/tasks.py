"""The seven demo tasks: their query templates, instructions, sources and relevance rules."""

from __future__ import annotations

from dataclasses import replace

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


def task_specs(seed: int) -> list[TaskSpec]:
    """The seven demo tasks (one per family it covers), their items drawn with ``seed``."""
    digits_test, digits_train = digit_items(seed)
    faces_test, faces_train = face_items(seed)
    crops_test, crops_train = crop_items(seed)
    docs_test, docs_train = docstring_items(seed)
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
    captions_test, captions_train = labelled_texts(captions, "caption", seed, 5)
    answers = {
        label: [
            template.format(detail=detail) for template in templates for detail in _FACE_ANSWER_DETAILS[label]
        ]
        for label, templates in _FACE_ANSWERS.items()
    }
    answers_test, answers_train = labelled_texts(answers, "answer", seed, 6)
    digit_queries = phrases(
        {
            label: [t.format(word=w, digit=d) for t in _DIGIT_QUERIES]
            for label, (w, d) in _DIGIT_WORDS.items()
        },
        "digit-query",
    )
    doc_queries = phrases(_DOC_QUERIES, "doc-query")

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
        f"56x56 crops of scikit-image's {len(SAMPLE_PICTURES)} sample pictures (test and train crops come "
        "from different pictures)"
    )
    junk_source = "docstrings of " + ", ".join(DOC_TOPICS[OFF_TOPIC])
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
            f"{DOCS_PER_MODULE} per module): files and paths = "
            + ", ".join(DOC_TOPICS[1])
            + "; numbers and maths = "
            + ", ".join(DOC_TOPICS[0])
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
            test=Split(digit_queries, digits_test + image_only(crops_test)),
            train=Split(digit_queries, digits_train + image_only(crops_train)),
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
            test=Split(with_text(digits_test, _SAME_DIGIT_REQUESTS, 0), digits_test + image_only(crops_test)),
            train=Split(
                with_text(digits_train, _SAME_DIGIT_REQUESTS, 1), digits_train + image_only(crops_train)
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
            test=Split(with_text(faces_test, _FACE_QUESTIONS, 0), answers_test + junk_test),
            train=Split(with_text(faces_train, _FACE_QUESTIONS, 1), answers_train + junk_train),
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
