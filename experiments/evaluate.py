"""Score TREC runs against an MRB folder: per-task metric, family means and the average.

    python -m experiments.evaluate --data <mrb_root> --run <file-or-folder> [--json out.json]

``--run`` is a folder of ``<task>.trec`` files, one TREC file whose query ids are ``<task>/<qid>``,
or the literal ``first-stage`` to score each task's ``candidates.trec`` (the retriever baseline;
write ``./first-stage`` for a folder of that name). Metric semantics are trec_eval's
(:mod:`datamodules.metrics`). Problems are reported as ``file:line: reason`` with exit code 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from datamodules.formats import iter_jsonl, list_tasks, read_task_meta
from datamodules.metrics import Summary, TaskResult, evaluate_run, format_table, parse_metric, summarize
from datamodules.trec import FormatError, Run, read_qrels, read_run

FIRST_STAGE = "first-stage"


class EvaluationError(Exception):
    """A user-facing problem with the inputs; the message says where and what to do."""


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.evaluate",
        description="Score TREC run files against an MRB evaluation folder (trec_eval semantics).",
    )
    parser.add_argument("--data", required=True, type=Path, help="MRB root: one folder per task")
    parser.add_argument(
        "--run",
        required=True,
        help="folder of <task>.trec files, one file with '<task>/<qid>' query ids, "
        f"or '{FIRST_STAGE}' to score each task's candidates.trec",
    )
    parser.add_argument("--json", type=Path, help="write the results as JSON to this new file")
    parser.add_argument("--overwrite", action="store_true", help="allow --json to replace an existing file")
    parser.add_argument("--tasks", help="comma-separated task names to score (default: every task)")
    parser.add_argument(
        "--depth", type=int, help="only the top DEPTH documents of each query in the run count (default: all)"
    )
    args = parser.parse_args(argv)
    if args.depth is not None and args.depth < 1:
        parser.error(f"--depth must be >= 1, got {args.depth}")
    return args


def _line_of(path: Path, qid: str) -> int:
    """The first line of a TREC file whose query id is ``qid`` (only used to point at errors)."""
    with open(path, encoding="utf-8") as handle:
        for lineno, line in enumerate(handle, start=1):
            fields = line.split(maxsplit=1)
            if fields and fields[0] == qid:
                return lineno
    return 1


def _query_ids(task_dir: Path) -> set[str]:
    return {record.get("id") for _, record in iter_jsonl(task_dir / "queries.jsonl")}


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
    # (task) -> (run, file it came from, query id as written in that file)
    sources: dict[str, tuple[Run, Path, dict[str, str]]] = {}
    run_path = Path(run_arg)
    if run_arg == FIRST_STAGE:
        for task_dir in task_dirs:
            path = task_dir / "candidates.trec"
            if not path.is_file():
                raise EvaluationError(f"{path}: missing candidates.trec of task {task_dir.name!r}")
            run = read_run(path)
            sources[task_dir.name] = (run, path, {q: q for q in run})
    elif run_path.is_dir():
        if strict:
            for path in sorted(run_path.glob("*.trec")):
                if path.stem not in all_tasks:
                    raise EvaluationError(
                        f"{path}:1: unknown task {path.stem!r} (known: {', '.join(sorted(all_tasks))}); "
                        "rename the file or pass --tasks"
                    )
        for name in names:
            path = run_path / f"{name}.trec"
            if not path.is_file():
                raise EvaluationError(
                    f"{path}: missing run file for task {name!r}; the folder needs one <task>.trec per task "
                    "(or pass --tasks to score a subset)"
                )
            run = read_run(path)
            sources[name] = (run, path, {q: q for q in run})
    elif run_path.is_file():
        combined = read_run(run_path)
        split: dict[str, tuple[Run, Path, dict[str, str]]] = {n: ({}, run_path, {}) for n in names}
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
        sources = split
    else:
        raise EvaluationError(
            f"{run_path}: run not found; give a folder of <task>.trec files, one TREC file, or '{FIRST_STAGE}'"
        )

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


def evaluate(data: Path, run_arg: str, tasks: list[str] | None = None, depth: int | None = None) -> Summary:
    """Score ``run_arg`` (see module docstring) on the tasks under ``data``.

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
        per_query = evaluate_run(runs[task_dir.name], read_qrels(qrels_path), metric, depth=depth)
        if not per_query:
            raise EvaluationError(f"{qrels_path}:1: no query has a relevant document (relevance > 0)")
        results.append(TaskResult.from_per_query(meta.name, meta.family, str(metric), per_query))
    return summarize(results)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit code (2 on a user error)."""
    args = parse_args(argv)
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()] if args.tasks else None
    try:
        if args.json is not None and args.json.exists() and not args.overwrite:
            raise EvaluationError(
                f"{args.json}: already exists; pass --overwrite to replace it or pick another path"
            )
        summary = evaluate(args.data, args.run, tasks, args.depth)
        depth = f", top {args.depth} per query" if args.depth else ""
        print(f"run: {args.run}{depth}")
        print(format_table(summary))
        if args.json is not None:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            # "x" also refuses a file that appeared since the check above.
            with open(args.json, "w" if args.overwrite else "x", encoding="utf-8") as handle:
                handle.write(summary.to_json() + "\n")
            print(f"wrote {args.json}")
    except (EvaluationError, FormatError) as err:
        print(err, file=sys.stderr)
        return 2
    except FileExistsError as err:
        print(f"{err.filename}: already exists; pass --overwrite to replace it", file=sys.stderr)
        return 2
    except OSError as err:
        print(f"{err.filename}: {err.strerror}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
