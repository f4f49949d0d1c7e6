"""The command line of :mod:`datamodules.convert` (``python -m datamodules.convert --help``)."""

from __future__ import annotations

import argparse

from datamodules.convert import KINDS, ConversionError, convert, convert_train
from datamodules.exit_codes import fail, program
from datamodules.formats import FAMILIES, FormatError


def _parser() -> argparse.ArgumentParser:
    import datamodules.convert as package

    parser = argparse.ArgumentParser(
        prog=program("datamodules.convert"),
        description=package.__doc__.split("\n")[0],
        epilog="Formats: see the docstrings of datamodules/convert/{beir,hub,mbeir}.py and README 'Data formats'.",
    )
    parser.add_argument("src", help="source folder (BEIR, MTEB/UMRB Hub snapshot, or M-BEIR root)")
    parser.add_argument(
        "--out", required=True, help="new MRB task folder (MRB_ROOT/TASK) or training root; must not exist"
    )
    parser.add_argument(
        "--from", dest="kind", choices=KINDS, default=None, help="source kind (default: detected)"
    )
    parser.add_argument(
        "--run", default=None, help="first-stage TREC run 'qid Q0 docid rank score tag' (optional)"
    )
    parser.add_argument(
        "--family", choices=FAMILIES, help="MRB family of the task (required without --train)"
    )
    parser.add_argument("--metric", help="ndcg@k, recall@k or mrr@k (required without --train)")
    parser.add_argument("--instruction", required=True, help="the task instruction given to the reranker")
    parser.add_argument("--split", default="test", help="queries/qrels split (default test)")
    parser.add_argument(
        "--top-k", type=int, default=None, help="keep the top K candidates of --run per query"
    )
    parser.add_argument("--full-corpus", action="store_true", help="with --run: keep every document")
    parser.add_argument(
        "--train", action="store_true", help="write training groups (a training root) instead"
    )
    parser.add_argument(
        "--task-name", default=None, help="with --train: the records' task name (default: source name)"
    )
    parser.add_argument("--subset", default=None, help="M-BEIR: the task file stem, e.g. mbeir_cirr_task7")
    parser.add_argument(
        "--pool", default=None, help="M-BEIR: candidate pool file (default cand_pool/local/...)"
    )
    parser.add_argument(
        "--images-root", default=None, metavar="DIR",
        help="reference image files inside DIR in place (symlink OUT/image_root) instead of copying them",
    )  # fmt: skip
    parser.add_argument("--image-field", default="image", help="BEIR: record field holding an image path")
    parser.add_argument("--query-images", default=None, help="BEIR: folder of <query id>.<ext> images")
    parser.add_argument("--corpus-images", default=None, help="BEIR: folder of <document id>.<ext> images")
    return parser


def _images(counts: dict) -> str:
    parts = [f"{n} {what}" for what, n in sorted(counts.items())]
    return ", ".join(parts) if parts else "none"


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.top_k is not None and args.top_k < 1:
        parser.error("--top-k must be >= 1")
    source_args = dict(
        kind=args.kind, split=args.split, image_field=args.image_field, query_images=args.query_images,
        corpus_images=args.corpus_images, subset=args.subset, pool=args.pool, images_root=args.images_root,
    )  # fmt: skip
    try:
        if args.train:
            counts = convert_train(args.src, args.out, args.instruction, args.task_name, **source_args)
        else:
            if not args.family or not args.metric:
                parser.error("--family and --metric are required for an MRB task (or pass --train)")
            counts = convert(
                args.src, args.run, args.out, family=args.family, metric=args.metric,
                instruction=args.instruction, top_k=args.top_k, full_corpus=args.full_corpus, **source_args,
            )  # fmt: skip
    except (ConversionError, FormatError, OSError) as err:
        return fail(err, ConversionError, FormatError)  # bad input: 2; e.g. a full disk: 1
    ignored = counts.get("ignored_by_modality") or {}
    note = (
        f"; ignored by the records' modality: {', '.join(f'{n} {p}' for p, n in sorted(ignored.items()))}"
        if ignored else ""
    )  # fmt: skip
    if args.train:
        skipped = ", ".join(
            f"{n} {why.replace('_', ' ')}" for why, n in sorted(counts["skipped"].items()) if n
        )
        print(
            f"wrote {args.out} ({counts['kind']}): {counts['groups']} training groups, {counts['positives']} "
            f"positives, {counts['hard_negatives']} hard negatives; images: {_images(counts['images'])}; "
            f"skipped: {skipped or 'nothing'}{note}"
        )
    else:
        print(
            f"wrote {args.out} ({counts['kind']}): {counts['queries']} queries, {counts['documents']} documents, "
            f"{counts['judgements']} judgements, {counts['candidates']} candidates; images: "
            f"{_images(counts['images'])}; dropped {counts['dropped_no_relevant']} query(ies) without a relevant "
            f"document and {counts['dropped_no_candidates']} without candidates{note}"
        )
        if args.run is None:
            print(f"next: python -m datamodules.retrieve --task {args.out} (writes candidates.trec)")
    if args.images_root:
        print(
            f"images inside {args.images_root} are referenced in place: pass --images-root {args.images_root} to "
            f"datamodules.validate and set RERANK_LAB_IMAGE_ROOTS={args.images_root} for training and evaluation"
        )
    return 0
