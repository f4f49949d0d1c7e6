"""Text items of the demo: standard-library docstrings by area, and templated texts as items."""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from datamodules.demo.spec import OFF_TOPIC, Item, split_by_label

# Area 1 = files and paths, 0 = numbers and maths, OFF_TOPIC = concurrency and data formats (never
# asked about). The module lists are fixed and sorted.
DOC_TOPICS: dict[int, tuple[str, ...]] = {
    1: ("filecmp", "fnmatch", "glob", "pathlib", "posixpath", "shutil", "tempfile", "zipfile"),
    0: ("cmath", "decimal", "fractions", "math", "random", "statistics"),
    OFF_TOPIC: ("csv", "html", "json", "queue", "sched", "threading"),
}
DOCS_PER_MODULE = 30
_DOC_WORDS = 40


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
            members: list[tuple[str, object]] = [(f"{module_name}.{name}", obj)]
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


def docstring_items(seed: int) -> tuple[list[Item], list[Item]]:
    """Docstrings of three areas of the standard library: label 1 = files and paths, 0 = numbers and
    maths, ``OFF_TOPIC`` = concurrency and data formats."""
    rng = np.random.default_rng([seed, 4])
    items: list[Item] = []
    seen: set[str] = set()
    for label, modules in sorted(DOC_TOPICS.items()):
        for module_name in modules:
            docs = _module_docs(module_name)
            keep = sorted(rng.permutation(len(docs))[:DOCS_PER_MODULE]) if docs else []
            for index in keep:
                qualified, doc = docs[index]
                text = f"{qualified}: {doc}"
                if doc in seen:  # identical docstrings (inherited, aliases) would be ambiguous
                    continue
                seen.add(doc)
                items.append(Item(key=f"doc-{qualified}", label=label, text=text))
    return split_by_label(items, rng)


def labelled_texts(
    templates: dict[int, list[str]], prefix: str, seed: int, salt: int
) -> tuple[list[Item], list[Item]]:
    """Text-only items from ``{label: texts}``, split half test / half train within each label."""
    items = [
        Item(key=f"{prefix}-{label}-{index:02d}", label=label, text=text)
        for label, texts in sorted(templates.items())
        for index, text in enumerate(texts)
    ]
    return split_by_label(items, np.random.default_rng([seed, salt]))


def phrases(texts: Mapping[int, Sequence[str]], prefix: str) -> list[Item]:
    """Query phrasings (shared by test and train: the same templated queries, different documents)."""
    return [
        Item(key=f"{prefix}-{label}-{index:02d}", label=label, text=text)
        for label, options in sorted(texts.items())
        for index, text in enumerate(options)
    ]


def image_only(items: list[Item]) -> list[Item]:
    """The same items without their text part (image documents of T2I / IT2I tasks)."""
    return [replace(item, text=None) for item in items]


def with_text(images: list[Item], texts: Sequence[str], offset: int) -> list[Item]:
    """Image queries that also carry a text part (IT2* families), phrasings assigned round-robin."""
    return [replace(item, text=texts[(index + offset) % len(texts)]) for index, item in enumerate(images)]
