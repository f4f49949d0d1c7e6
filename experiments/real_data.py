"""A real text reranking task that ships offline: code search over Python's standard library.

    python -m experiments.real_data --out runs/real/data [--test-queries 60] [--seed 0]
    python -m experiments.real_data --out runs/real_v2/data --test-queries 200 --dev-queries 150 --test-percent 25

The text is the CPython standard library's own source, as installed with the interpreter (written
by the CPython developers, not by this project). The task is CodeSearchNet-style: a **query** is
the first sentence of a public function's docstring ("Return the number of days in the given
month."), its one **relevant document** is that function's code with the docstring removed
(signature and body, cut to ``max_chars``). Query and document are different texts: natural
language against code, sharing at most identifiers.

Which functions: public (no leading underscore) functions and methods with a docstring whose
first sentence has 4 to 40 words and no doctest, and whose code without the docstring has at least
two lines. Excluded folders: tests, ``idlelib``, ``pydoc_data``, ``lib2to3``, ``turtledemo``,
``ensurepip``, ``encodings``, ``site-packages``. A first sentence shared by several functions is
no query (it would have several right answers); their code stays in the corpus. Sources are
parsed with :mod:`ast` (nothing is imported or run).

Held-out split by module: a module's functions are either all training queries or all test
queries (``sha256(module) % 100 < test_percent``), so test queries come from code the reranker
never saw as a query. Written (MRB layout, docs/formats.md; every corpus holds every function):

    <out>/pool/stdlib-code-train/   task.json, queries.jsonl (training queries), corpus.jsonl, qrels.tsv
    <out>/mrb/stdlib-code/          the same for ``test_queries`` held-out queries (sampled by seed)
    <out>/dev/stdlib-code/          with ``dev_queries`` > 0: ``dev_queries`` queries of other held-out
                                    modules, for recipe choices (learning rate, steps); ``mrb/`` is
                                    then the test split, scored once per run

With a dev split the held-out modules are divided again by module (``sha256("dev:" + module) % 100
< dev_percent`` goes to dev), so dev and test never share a module and neither shares one with training.
    <out>/manifest.json             Python version, counts, parameters

``candidates.trec`` is added by ``datamodules.retrieve`` and training groups by ``datamodules.mine``
(``experiments.real`` runs both).
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import os
import random
import re
import sys
import sysconfig
import textwrap
from dataclasses import dataclass
from pathlib import Path

from datamodules.exit_codes import program
from datamodules.files import write_text

SKIP_DIRS = {
    "test",
    "tests",
    "idlelib",
    "pydoc_data",
    "lib2to3",
    "turtledemo",
    "ensurepip",
    "encodings",
    "site-packages",
    "dist-packages",
    "__pycache__",
}
INSTRUCTION = "Given a description of what a Python function does, judge whether the code implements it."
TASK_NAME = "stdlib-code"
_SENTENCE_END = re.compile(r"(?<=[.!?])\s")


@dataclass(frozen=True)
class Function:
    qualname: str  # module.Class.function
    module: str
    summary: str  # first docstring sentence
    code: str  # source without the docstring


def first_sentence(docstring: str) -> str:
    """The first sentence of a docstring's first paragraph, on one line."""
    paragraph = docstring.strip().split("\n\n")[0]
    line = " ".join(paragraph.split())
    return _SENTENCE_END.split(line, maxsplit=1)[0].strip()


def code_without_docstring(source: str, node: ast.FunctionDef | ast.AsyncFunctionDef) -> str:
    """The function's source (dedented, blank lines dropped) without its docstring statement."""
    lines = source.splitlines()
    doc = node.body[0]
    start = min([node.lineno, *(d.lineno for d in node.decorator_list)])
    keep = lines[start - 1 : doc.lineno - 1] + lines[doc.end_lineno : node.end_lineno]
    # A docstring on the def line itself ("def f(): 'doc'") leaves nothing worth keeping.
    text = textwrap.dedent("\n".join(line for line in keep if line.strip()))
    return text


def module_functions(path: Path, module: str) -> list[Function]:
    """Public functions/methods with a usable docstring in one source file."""
    try:
        source = path.read_text(encoding="utf-8")
        tree = ast.parse(source, filename=str(path))
    except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
        return []
    found: list[Function] = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ClassDef):
                if not child.name.startswith("_"):
                    visit(child, f"{prefix}{child.name}.")
            elif isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                docstring = ast.get_docstring(child, clean=True)
                if child.name.startswith("_") or not docstring or child.body[0].lineno == child.lineno:
                    continue
                summary = first_sentence(docstring)
                words = len(summary.split())
                if not 4 <= words <= 40 or ">>>" in summary:
                    continue
                code = code_without_docstring(source, child)
                if len(code.splitlines()) < 2:
                    continue
                found.append(Function(f"{module}.{prefix}{child.name}", module, summary, code))

    visit(tree, "")
    return found


def stdlib_functions(root: Path | None = None) -> list[Function]:
    """Every usable function of the standard library at ``root`` (default: this interpreter's)."""
    root = Path(root or sysconfig.get_paths()["stdlib"])
    functions: list[Function] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS and not d.startswith(("config-", ".")))
        for name in sorted(filenames):
            if not name.endswith(".py") or name.startswith("test_"):
                continue
            path = Path(dirpath) / name
            parts = path.relative_to(root).with_suffix("").parts
            module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            functions.extend(module_functions(path, module))
    return functions


def _held_out(module: str, test_percent: int) -> bool:
    return int(hashlib.sha256(module.encode()).hexdigest(), 16) % 100 < test_percent


def _dev_module(module: str, dev_percent: int) -> bool:
    return int(hashlib.sha256(f"dev:{module}".encode()).hexdigest(), 16) % 100 < dev_percent


def _write_task(folder: Path, corpus: list[dict], queries: list[Function], metric: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    meta = {"family": "T2T", "instruction": INSTRUCTION, "metric": metric}
    files = {
        "task.json": json.dumps(meta, indent=2) + "\n",
        "corpus.jsonl": "".join(json.dumps(doc) + "\n" for doc in corpus),
        "queries.jsonl": "".join(json.dumps({"id": f.qualname, "text": f.summary}) + "\n" for f in queries),
        "qrels.tsv": "".join(f"{f.qualname} 0 {f.qualname} 1\n" for f in queries),
    }
    for name, text in files.items():
        write_text(folder / name, text)


def _unique_functions(stdlib: Path | None) -> list[Function]:
    """The standard library's functions, one per qualified name (a property's getter and setter
    share a name: the first is kept)."""
    functions, names = [], set()
    for f in stdlib_functions(stdlib):
        if f.qualname not in names:
            names.add(f.qualname)
            functions.append(f)
    return functions


def _code_corpus(functions: list[Function], max_chars: int) -> list[dict]:
    """One document per distinct code text (its first ``max_chars`` characters), named by the function."""
    corpus, seen_code = [], set()
    for f in functions:
        code = f.code[:max_chars]
        if code in seen_code:
            continue  # identical code (aliases, overloads): one document
        seen_code.add(code)
        corpus.append({"id": f.qualname, "text": code})
    return corpus


def _usable_queries(functions: list[Function], corpus: list[dict]) -> list[Function]:
    """Functions whose summary no other function shares and whose code is a corpus document."""
    counts: dict[str, int] = {}
    for f in functions:
        counts[f.summary.lower()] = counts.get(f.summary.lower(), 0) + 1
    in_corpus = {doc["id"] for doc in corpus}
    return [f for f in functions if counts[f.summary.lower()] == 1 and f.qualname in in_corpus]


def _split_queries(
    usable: list[Function], seed: int, sizes: dict[str, int], test_percent: int, dev_percent: int
) -> tuple[list[Function], list[Function], list[Function]]:
    """``(train, dev, test)``: whole modules held out for test (and, with dev queries, some of those
    for dev), each a seeded sample of at most ``sizes[split]`` queries, sorted by name."""
    rng = random.Random(seed)
    test = [f for f in usable if _held_out(f.module, test_percent)]
    train = [f for f in usable if not _held_out(f.module, test_percent)]
    dev: list[Function] = []
    if sizes["dev"] > 0:
        dev = [f for f in test if _dev_module(f.module, dev_percent)]
        test = [f for f in test if not _dev_module(f.module, dev_percent)]
        dev = sorted(rng.sample(dev, min(sizes["dev"], len(dev))), key=lambda f: f.qualname)
    test = sorted(rng.sample(test, min(sizes["test"], len(test))), key=lambda f: f.qualname)
    train = sorted(rng.sample(train, min(sizes["train"], len(train))), key=lambda f: f.qualname)
    return train, dev, test


def build_real_data(
    out: Path,
    test_queries: int = 60,
    train_queries: int = 2000,
    test_percent: int = 20,
    max_chars: int = 240,
    seed: int = 0,
    stdlib: Path | None = None,
    dev_queries: int = 0,
    dev_percent: int = 40,
) -> dict:
    """Write the training pool and the held-out test task under ``out``; returns the manifest."""
    functions = _unique_functions(stdlib)
    corpus = _code_corpus(functions, max_chars)
    usable = _usable_queries(functions, corpus)
    sizes = {"test": test_queries, "train": train_queries, "dev": dev_queries}
    train, dev, test = _split_queries(usable, seed, sizes, test_percent, dev_percent)
    _write_task(out / "mrb" / TASK_NAME, corpus, test, "ndcg@10")
    if dev:
        _write_task(out / "dev" / TASK_NAME, corpus, dev, "ndcg@10")
    _write_task(out / "pool" / f"{TASK_NAME}-train", corpus, train, "ndcg@10")
    manifest = {
        "source": f"CPython {sys.version.split()[0]} standard library (installed with the interpreter)",
        "functions": len(functions),
        "corpus": len(corpus),
        "usable_queries": len(usable),
        "train_queries": len(train),
        "test_queries": len(test),
        "test_modules": len({f.module for f in test}),
        "dev_queries": len(dev),
        "dev_modules": len({f.module for f in dev}),
        "params": {
            "test_percent": test_percent,
            "dev_percent": dev_percent if dev else None,
            "max_chars": max_chars,
            "seed": seed,
        },
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=program("experiments.real_data"), description=__doc__.splitlines()[0]
    )
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--test-queries", type=int, default=60)
    parser.add_argument("--train-queries", type=int, default=2000)
    parser.add_argument("--max-chars", type=int, default=240, help="code characters kept per document")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--test-percent", type=int, default=20, help="share of modules held out (dev + test)")
    parser.add_argument("--dev-queries", type=int, default=0, help="queries of the dev split (0: none)")
    parser.add_argument(
        "--dev-percent", type=int, default=40, help="share of the held-out modules that form the dev split"
    )
    args = parser.parse_args(argv)
    manifest = build_real_data(
        args.out,
        args.test_queries,
        args.train_queries,
        test_percent=args.test_percent,
        max_chars=args.max_chars,
        seed=args.seed,
        dev_queries=args.dev_queries,
        dev_percent=args.dev_percent,
    )
    print(json.dumps(manifest, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
