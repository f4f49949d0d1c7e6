"""Write a source as an MRB task folder or a training root: under a temporary name, validated, then
renamed into place. An existing output is never touched."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from datamodules.convert.common import ConversionError, ImageStore, read_run_lines
from datamodules.files import remove_leftovers, staged_folder
from datamodules.formats import image_roots
from datamodules.ranking import ranked
from datamodules.trec import write_run
from datamodules.validate import ImageChecker, Report, validate_task, validate_training


def _fresh(out: Path) -> None:
    """Refuse an existing ``out``; clear what a killed convert of the same output left beside it."""
    if out.exists() or out.is_symlink():
        raise ConversionError(f"{out}: already exists; refusing to overwrite it (choose a new --out)")
    if out.parent.is_dir():
        remove_leftovers(out)


def _finish(report: Report) -> None:
    if report.problems:
        raise ConversionError("the converted output does not validate:\n" + "\n".join(report.problems))


def _doc(text: str | None, image: str | None) -> dict[str, Any]:
    record: dict[str, Any] = {}
    if text:
        record["text"] = text
    if image:
        record["image"] = image
    return record


class _Docs:
    """Streams a source's queries or corpus into records with stored images, keeping ``keep`` only."""

    def __init__(self, store: ImageStore, errors: list[str]) -> None:
        self.store, self.errors = store, errors

    def records(self, items, keep: set[str] | None):
        seen: set[str] = set()
        for item in items:
            if keep is not None and item.id not in keep:
                continue
            if item.id in seen:
                self.errors.append(f"{item.where}: duplicate id {item.id!r}")
                continue
            image = self.store.add(item.image, item.where, self.errors) if item.image is not None else None
            if item.image is not None and image is None:
                continue
            if not item.text and not image:
                self.errors.append(f"{item.where}: record {item.id!r} has neither text nor image")
                continue
            seen.add(item.id)
            yield item.id, _doc(item.text, image)


def _raise_errors(errors: list[str]) -> None:
    """One ``ConversionError`` listing the first 200 problems (and how many more), if any."""
    if errors:
        raise ConversionError(
            "\n".join(errors[:200]) + (f"\n... {len(errors) - 200} more" if len(errors) > 200 else "")
        )


def _kept_queries(qrels, candidates, qrels_where: str, run: Path | None) -> tuple[set[str], dict[str, Any]]:
    """The queries a task keeps (a relevant document and, with a run, candidates) and the drop counts."""
    relevant = {q for q, docs in qrels.items() if any(r > 0 for r in docs.values())}
    kept = {q for q in relevant if candidates is None or candidates.get(q)}
    counts: dict[str, Any] = {
        "dropped_no_relevant": len(set(qrels) - relevant),
        "dropped_no_candidates": len(relevant - kept),
    }
    if not kept:
        raise ConversionError(
            f"{qrels_where}: no query has a relevant document" + (f" and candidates in {run}" if run else "")
        )
    return kept, counts


def _write_task_docs(
    tmp: Path, source, docs: _Docs, kept: set[str], needed: set[str] | None, errors: list[str]
):
    """``queries.jsonl`` (the kept queries) and ``corpus.jsonl`` (``needed``, or all); the ids written."""
    written: dict[str, set[str]] = {}
    for kind, items, keep in (
        ("queries", source.queries(errors), kept),
        ("corpus", source.corpus(errors), needed),
    ):
        with open(tmp / f"{kind}.jsonl", "w", encoding="utf-8") as handle:
            written[kind] = set()
            for item_id, record in docs.records(items, keep):
                handle.write(json.dumps({"id": item_id, **record}, ensure_ascii=False) + "\n")
                written[kind].add(item_id)
    return written


def _write_judgements(tmp: Path, meta: dict[str, str], qrels, kept: set[str], candidates) -> None:
    """``task.json``, ``qrels.tsv`` of the kept queries and, with a run, their ``candidates.trec``."""
    (tmp / "task.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    with open(tmp / "qrels.tsv", "w", encoding="utf-8") as handle:
        for q in sorted(kept):
            for d, grade in sorted(qrels[q].items()):
                handle.write(f"{q} 0 {d} {grade}\n")
    if candidates is not None:
        write_run(tmp / "candidates.trec", {q: candidates[q] for q in kept}, tag="first-stage")


def _validate_task(tmp: Path, images_root: Path | None, has_candidates: bool) -> None:
    """Validate the task folder (a missing candidates.trec is expected without a run)."""
    report = Report()
    with image_roots(*([images_root] if images_root else [])):
        validate_task(tmp, report, ImageChecker())
    if not has_candidates:  # the one file a task without a run lacks until retrieve writes it
        missing = f"{tmp / 'candidates.trec'}:1: missing candidates.trec"
        report.messages[:] = [p for p in report.messages if p != missing]
    _finish(report)


def write_task(
    source, out: Path, meta: dict[str, str], run: Path | None = None, top_k: int | None = None,
    full_corpus: bool = False, images_root: Path | None = None,
) -> dict[str, Any]:  # fmt: skip
    """The MRB task folder ``out``; without ``run`` it has no candidates.trec yet (see retrieve)."""
    errors: list[str] = []
    qrels, qrels_where = source.qrels(errors)
    candidates = read_run_lines(run, errors) if run is not None else None
    if errors:
        raise ConversionError("\n".join(errors))
    if candidates is not None and top_k is not None:
        candidates = {q: dict(ranked(docs, top_k)) for q, docs in candidates.items()}
    kept, counts = _kept_queries(qrels, candidates, qrels_where, run)
    needed = None
    if candidates is not None and not full_corpus:
        needed = {d for q in kept for d in (*qrels[q], *candidates[q])}
    _fresh(out)
    with staged_folder(out, "converting") as tmp:
        store = ImageStore(tmp, images_root)
        written = _write_task_docs(tmp, source, _Docs(store, errors), kept, needed, errors)
        for q in sorted(kept - written["queries"]):
            errors.append(f"{qrels_where}: query {q!r} is not in {source.where('queries')}")
        judged = {d for q in kept for d in qrels[q]}
        for d in sorted((needed if needed is not None else judged) - written["corpus"]):
            errors.append(
                f"{qrels_where}{f' / {run}' if run else ''}: document {d!r} is not in {source.where('corpus')}"
            )
        _raise_errors(errors)
        _write_judgements(tmp, meta, qrels, kept, candidates)
        _validate_task(tmp, images_root, candidates is not None)
    counts.update(
        queries=len(written["queries"]),
        documents=len(written["corpus"]),
        images=dict(store.counts),
        candidates=sum(len(candidates[q]) for q in kept) if candidates is not None else 0,
        judgements=sum(len(qrels[q]) for q in kept),
        ignored_by_modality=dict(getattr(source, "ignored", {})),
    )
    return counts


def _hard_negatives(qrels, negatives, skipped: Counter[str]) -> dict[str, list[str]]:
    """Each query's listed negatives, first occurrence kept, minus those judged relevant (counted)."""
    hard: dict[str, list[str]] = {}
    for q, docs in negatives.items():
        relevant = {d for d, g in qrels.get(q, {}).items() if g > 0}
        hard[q] = [d for d in dict.fromkeys(docs) if d not in relevant]
        skipped["negatives_judged_relevant"] += len(set(docs) & relevant)
    return hard


def _write_groups(
    path: Path,
    queries,
    task: str,
    instruction: str,
    corpus: dict,
    positives: dict,
    hard: dict,
    skipped: Counter[str],
) -> tuple[int, int]:
    """One group per query record (``queries``: ``(qid, record)``); the groups and negatives written.
    Negatives identical to a positive are left out (and counted)."""
    groups, written_negatives = 0, 0
    with open(path, "w", encoding="utf-8") as handle:
        for qid, query in queries:
            record = {
                "task": task,
                "instruction": instruction,
                "query": query,
                "positives": [corpus[d] for d in positives[qid] if d in corpus],
                "hard_negatives": _distinct(
                    [corpus[d] for d in hard.get(qid, []) if d in corpus],
                    [corpus[d] for d in positives[qid] if d in corpus],
                ),
            }
            skipped["negatives_identical_to_a_positive"] += len(hard.get(qid, [])) - len(
                record["hard_negatives"]
            )
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
            groups += 1
            written_negatives += len(record["hard_negatives"])
    return groups, written_negatives


def _missing_train_docs(
    source, qrels_where: str, positives: dict, hard: dict, corpus: dict, errors: list[str]
) -> None:
    """An error per positive or listed negative document that the corpus lacks."""
    for d in sorted({d for q in positives for d in positives[q]} - set(corpus)):
        errors.append(f"{qrels_where}: positive document {d!r} is not in {source.where('corpus')}")
    missing_negatives = {d for q in hard for d in hard[q]} - set(corpus)
    for d in sorted(missing_negatives):
        errors.append(f"{source.where('queries')}: negative {d!r} is not in {source.where('corpus')}")


def write_train(
    source, out: Path, task: str, instruction: str, images_root: Path | None = None
) -> dict[str, Any]:
    """A training root ``out`` holding ``<task>.jsonl``: positives = judged relevant, hard negatives =
    the negatives the source lists (M-BEIR ``neg_cand_list``) minus any judged relevant."""
    errors: list[str] = []
    qrels, qrels_where = source.qrels(errors)
    negatives = source.negatives(errors)
    if errors:
        raise ConversionError("\n".join(errors))
    positives = {q: sorted(d for d, g in docs.items() if g > 0) for q, docs in qrels.items()}
    positives = {q: docs for q, docs in positives.items() if docs}
    skipped: Counter[str] = Counter(no_relevant=len(qrels) - len(positives))
    if not positives:
        raise ConversionError(f"{qrels_where}: no query has a relevant document")
    hard = _hard_negatives(qrels, negatives, skipped)
    needed = {d for q in positives for d in (*positives[q], *hard.get(q, ()))}
    _fresh(out)
    with staged_folder(out, "converting") as tmp:
        store = ImageStore(tmp, images_root)
        docs = _Docs(store, errors)
        corpus = dict(docs.records(source.corpus(errors), needed))
        _missing_train_docs(source, qrels_where, positives, hard, corpus, errors)
        queries = docs.records(source.queries(errors), set(positives))
        groups, written_negatives = _write_groups(
            tmp / f"{task}.jsonl", queries, task, instruction, corpus, positives, hard, skipped
        )
        if groups < len(positives) and not errors:
            errors.append(
                f"{qrels_where}: {len(positives) - groups} judged query(ies) not in {source.where('queries')}"
            )
        _raise_errors(errors)
        report = Report()
        with image_roots(*([images_root] if images_root else [])):
            validate_training(tmp, report)
        _finish(report)
    return {
        "groups": groups,
        "positives": sum(len(positives[q]) for q in positives),
        "hard_negatives": written_negatives,
        "skipped": dict(skipped),
        "images": dict(store.counts),
        "ignored_by_modality": dict(getattr(source, "ignored", {})),
    }


def _distinct(negatives: list[dict], positives: list[dict]) -> list[dict]:
    """Negatives whose content differs from every positive's (validate rejects identical ones)."""
    seen = {json.dumps(p, sort_keys=True) for p in positives}
    return [n for n in negatives if json.dumps(n, sort_keys=True) not in seen]
