"""Score TREC runs against an MRB folder: per-task metric, family means and the average.

    python -m experiments.evaluate --data <mrb_root> --run <file-or-folder> [--json out.json]
    python -m experiments.evaluate --data <mrb_root> --model <dir-or-hub-id> [--json out.json]

``--model`` scores a checkpoint itself (an exported reranker, or a base model as a zero-shot
judge) on every task and reports the same metrics and JSON (:mod:`experiments.score_model`).
``--run`` is a folder of ``<task>.trec`` files, one TREC file whose query ids are ``<task>/<qid>``,
a run folder of ``experiments.cli`` (``runs/<name>-<time>/``: its latest validation,
``runs/val-step<N>/``, is scored and the step is printed), or the literal ``first-stage`` to score
each task's ``candidates.trec`` (the retriever baseline; write ``./first-stage`` for a folder of
that name). Metric semantics are trec_eval's (:mod:`datamodules.metrics`). The MRB folder is read
by the same readers as training and ``datamodules.validate`` (:mod:`datamodules.formats`).
Problems are reported as ``file:line: reason`` with exit code 2; what is scored but suspicious
(judged queries missing from the run, which score 0; run documents absent from the corpus) is
reported as a ``warning:`` line on stderr with counts.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from datamodules.exit_codes import fail, program
from datamodules.exit_codes import report as report_error
from datamodules.formats import list_tasks, read_docs, read_judgements, read_task_meta
from datamodules.metrics import Summary, TaskResult, evaluate_run, format_table, parse_metric, summarize
from datamodules.trec import FormatError, Run, read_run
from experiments import score_model

FIRST_STAGE = "first-stage"


class EvaluationError(Exception):
    """A user-facing problem with the inputs; the message says where and what to do."""


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=program("experiments.evaluate"),
        description="Score TREC run files against an MRB evaluation folder (trec_eval semantics).",
    )
    parser.add_argument("--data", required=True, type=Path, help="MRB root: one folder per task")
    parser.add_argument(
        "--run",
        help="folder of <task>.trec files, one file with '<task>/<qid>' query ids, a run folder "
        f"(its latest validation), or '{FIRST_STAGE}' to score each task's candidates.trec",
    )
    parser.add_argument("--json", type=Path, help="write the results as JSON to this new file")
    parser.add_argument("--overwrite", action="store_true", help="allow --json to replace an existing file")
    parser.add_argument("--tasks", help="comma-separated task names to score (default: every task)")
    parser.add_argument(
        "--depth", type=int, help="only the top DEPTH documents of each query in the run count (default: all)"
    )
    score_model.add_arguments(parser)  # --model and its options
    args = parser.parse_args(argv)
    if (args.run is None) == (args.model is None):
        parser.error("give exactly one of --run (score TREC runs) or --model (score a checkpoint)")
    if args.depth is not None and args.depth < 1:
        parser.error(f"--depth must be >= 1, got {args.depth}")
    return args


def _line_of(path: Path, qid: str, docid: str | None = None) -> int:
    """The first line of a TREC file with query id ``qid`` (and document ``docid``), to point at it."""
    with open(path, encoding="utf-8", errors="replace") as handle:
        for lineno, line in enumerate(handle, start=1):
            fields = line.split()
            if fields and fields[0] == qid and (docid is None or fields[2:3] == [docid]):
                return lineno
    return 1


_STEP_FOLDER = re.compile(r"(val|test)-step(\d+)")


def resolve_run(run_arg: str) -> tuple[str, str]:
    """``(run to read, what it is)``. A run folder of ``experiments.cli`` (it holds ``runs/`` with
    ``val-step<N>/`` folders, or is that ``runs/`` folder) becomes its latest validation
    (``test-step<N>`` when it was never validated); anything else is returned as it is."""
    path = Path(run_arg)
    if run_arg == FIRST_STAGE or not path.is_dir() or any(path.glob("*.trec")):
        return run_arg, run_arg
    for folder in (path / "runs", path):
        steps = [
            (m.group(1) == "val", int(m.group(2)), p)
            for p in folder.glob("*-step*")
            if p.is_dir() and (m := _STEP_FOLDER.fullmatch(p.name))
        ]
        if steps:
            is_val, step, chosen = max(steps)
            stage = "validation" if is_val else "test"
            return str(chosen), f"{run_arg}: the latest {stage}, at step {step} ({chosen})"
    return run_arg, run_arg


def _query_ids(task_dir: Path) -> set[str]:
    return set(read_docs(task_dir / "queries.jsonl", task_dir)[1])


# (task) -> (run, file it came from, query id as written in that file)
_Sources = dict[str, tuple[Run, Path, dict[str, str]]]


def _first_stage_sources(task_dirs: list[Path]) -> _Sources:
    """Each task's own ``candidates.trec`` (``--run first-stage``)."""
    sources: _Sources = {}
    for task_dir in task_dirs:
        path = task_dir / "candidates.trec"
        if not path.is_file():
            raise EvaluationError(f"{path}: missing candidates.trec of task {task_dir.name!r}")
        run = read_run(path)
        sources[task_dir.name] = (run, path, {q: q for q in run})
    return sources


def _folder_sources(run_path: Path, names: list[str], all_tasks: set[str], strict: bool) -> _Sources:
    """A folder of ``<task>.trec`` files: one per task scored, none of an unknown task when ``strict``."""
    if strict:
        for path in sorted(run_path.glob("*.trec")):
            if path.stem not in all_tasks:
                raise EvaluationError(
                    f"{path}:1: unknown task {path.stem!r} (known: {', '.join(sorted(all_tasks))}); "
                    "rename the file or pass --tasks"
                )
    sources: _Sources = {}
    for name in names:
        path = run_path / f"{name}.trec"
        if not path.is_file():
            raise EvaluationError(
                f"{path}: missing run file for task {name!r}; the folder needs one <task>.trec per task "
                "(or pass --tasks to score a subset)"
            )
        run = read_run(path)
        sources[name] = (run, path, {q: q for q in run})
    return sources


def _combined_sources(run_path: Path, names: list[str], all_tasks: set[str], strict: bool) -> _Sources:
    """One TREC file whose query ids are ``<task>/<qid>``, split by task; each task scored needs a query."""
    combined = read_run(run_path)
    split: _Sources = {n: ({}, run_path, {}) for n in names}
    for qid, docs in combined.items():
        task, slash, local = qid.partition("/")
        if not slash or not task or not local:
            raise EvaluationError(
                f"{run_path}:{_line_of(run_path, qid)}: query id {qid!r} is not '<task>/<qid>'; "
                "a single run file must prefix each query id with its task"
            )
        if task in split:
            split[task][0][local] = docs
            split[task][2][local] = qid
        elif strict:  # with --tasks, lines of other tasks are not ours to check
            raise EvaluationError(
                f"{run_path}:{_line_of(run_path, qid)}: unknown task {task!r} in query id {qid!r} "
                f"(known: {', '.join(sorted(all_tasks))})"
            )
    for name, (run, _, _) in split.items():
        if not run:
            raise EvaluationError(
                f"{run_path}: no query of task {name!r} (expected ids '{name}/<qid>'); "
                "pass --tasks to score a subset"
            )
    return split


def _checked_runs(task_dirs: list[Path], sources: _Sources) -> dict[str, Run]:
    """Each task's run, once every query id in it is one of the task's queries.jsonl."""
    runs: dict[str, Run] = {}
    for task_dir in task_dirs:
        run, path, written = sources[task_dir.name]
        known = _query_ids(task_dir)
        for qid in run:
            if qid not in known:
                raise EvaluationError(
                    f"{path}:{_line_of(path, written[qid])}: query id {written[qid]!r} is not in "
                    f"{task_dir / 'queries.jsonl'}"
                )
        runs[task_dir.name] = run
    return runs


def load_runs(run_arg: str, task_dirs: list[Path], all_tasks: set[str], strict: bool) -> dict[str, Run]:
    """Read the run of every task in ``task_dirs`` and check its query ids against queries.jsonl.

    Args:
        run_arg: the ``--run`` value.
        task_dirs: the task folders to score.
        all_tasks: every task name under the MRB root.
        strict: reject runs for tasks that are not under the root (off when ``--tasks`` selects a
            subset, so a run covering more tasks can still be scored).

    Raises:
        EvaluationError, FormatError: with ``file:line: reason``.
    """
    names = [d.name for d in task_dirs]
    run_path = Path(run_arg)
    if run_arg == FIRST_STAGE:
        sources = _first_stage_sources(task_dirs)
    elif run_path.is_dir():
        sources = _folder_sources(run_path, names, all_tasks, strict)
    elif run_path.is_file():
        sources = _combined_sources(run_path, names, all_tasks, strict)
    else:
        raise EvaluationError(
            f"{run_path}: run not found; give a folder of <task>.trec files, one TREC file, or '{FIRST_STAGE}'"
        )
    return _checked_runs(task_dirs, sources)


def _run_source(run_arg: str, task_dir: Path) -> Path:
    path = Path(run_arg)
    if run_arg == FIRST_STAGE:
        return task_dir / "candidates.trec"
    return path / f"{task_dir.name}.trec" if path.is_dir() else path


def check_coverage(
    task: str, run: Run, qrels: dict, corpus: dict, source: Path, prefix: str = ""
) -> list[str]:
    """Warnings (with counts) about a task's run: judged queries it lacks (they score 0) and
    documents it names that the corpus does not hold."""
    warnings = []
    judged = sorted(q for q, docs in qrels.items() if any(g > 0 for g in docs.values()))
    missing = [q for q in judged if q not in run]
    if missing:
        warnings.append(
            f"warning: task {task}: {len(missing)} of {len(judged)} judged queries are not in the run and "
            f"score 0 (first: {missing[0]!r}); rerank every query, or pass the run that covers them"
        )
    unknown = [(q, d) for q, docs in run.items() for d in docs if d not in corpus]
    if unknown:
        qid, docid = unknown[0]
        warnings.append(
            f"warning: {source}:{_line_of(source, prefix + qid, docid)}: task {task}: {len(unknown)} run "
            f"line(s) name documents that are not in corpus.jsonl (first: {docid!r}); they cannot be relevant"
        )
    return warnings


def evaluate(
    data: Path,
    run_arg: str,
    tasks: list[str] | None = None,
    depth: int | None = None,
    warnings: list[str] | None = None,
) -> Summary:
    """Score ``run_arg`` (see module docstring) on the tasks under ``data``; ``warnings`` (when
    given) receives the coverage warnings of :func:`check_coverage`.

    Raises:
        EvaluationError, FormatError: with ``file:line: reason``.
    """
    task_dirs = list_tasks(data, tasks)
    all_tasks = {d.name for d in list_tasks(data)}
    runs = load_runs(run_arg, task_dirs, all_tasks, strict=not tasks)
    results = []
    for task_dir in task_dirs:
        meta = read_task_meta(task_dir)
        qrels_path = task_dir / "qrels.tsv"
        metric = parse_metric(meta.metric)
        queries = read_docs(task_dir / "queries.jsonl", task_dir)[1]
        corpus = read_docs(task_dir / "corpus.jsonl", task_dir)[1]
        qrels = read_judgements(qrels_path, queries, corpus)  # unknown ids are file:line errors
        source = _run_source(run_arg, task_dir)
        prefix = f"{task_dir.name}/" if source.is_file() and source.name != f"{task_dir.name}.trec" else ""
        if warnings is not None:
            warnings.extend(check_coverage(meta.name, runs[task_dir.name], qrels, corpus, source, prefix))
        per_query = evaluate_run(runs[task_dir.name], qrels, metric, depth=depth)
        if not per_query:
            raise EvaluationError(f"{qrels_path}:1: no query has a relevant document (relevance > 0)")
        results.append(TaskResult.from_per_query(meta.name, meta.family, str(metric), per_query))
    return summarize(results)


def model_summary(args, tasks: list[str] | None) -> Summary:
    """Run :func:`experiments.score_model.evaluate_model` for parsed ``experiments.evaluate`` arguments; input problems
    become ``EvaluationError`` (one line, exit 2) instead of tracebacks."""
    if getattr(args, "depth", None) is not None:
        raise EvaluationError("--depth applies to --run; with --model use --top-k")
    try:
        return score_model.evaluate_model(
            args.data,
            args.model,
            tasks,
            top_k=args.top_k,
            fusion_alpha=args.fusion_alpha,
            write_runs=args.write_runs,
            batch_size=args.batch_size,
            max_length=args.max_length,
            dtype=args.dtype,
            device=args.device,
            verify=getattr(args, "verify", True),
        )
    except (ValueError, OSError) as err:
        if type(err).__name__ == "FormatError":
            raise
        raise EvaluationError(f"--model {args.model}: {err}") from None


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit code (2 on a user error)."""
    args = parse_args(argv)
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()] if args.tasks else None
    try:
        if args.json is not None and args.json.exists() and not args.overwrite:
            raise EvaluationError(
                f"{args.json}: already exists; pass --overwrite to replace it or pick another path"
            )
        warnings: list[str] = []
        if args.model is not None:
            summary, described = model_summary(args, tasks), f"model {args.model}"
        else:
            run, described = resolve_run(args.run)
            summary = evaluate(args.data, run, tasks, args.depth, warnings)
        for warning in warnings:
            print(warning, file=sys.stderr)
        depth = f", top {args.depth} per query" if args.depth else ""
        print(f"run: {described}{depth}")
        print(format_table(summary))
        if args.json is not None:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            # "x" also refuses a file that appeared since the check above.
            with open(args.json, "w" if args.overwrite else "x", encoding="utf-8") as handle:
                handle.write(summary.to_json() + "\n")
            print(f"wrote {args.json}")
    except (EvaluationError, FormatError) as err:
        return report_error(err)
    except FileExistsError as err:
        return report_error(f"{err.filename}: already exists; pass --overwrite to replace it")
    except OSError as err:  # a missing or unreadable input: 2; e.g. a full disk: 1
        return fail(err, PermissionError)
    return 0


if __name__ == "__main__":
    sys.exit(main())
