"""``python -m experiments.report RUNS_DIR [--out DIR]``: read the runs, compute, write the outputs."""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import yaml

from datamodules.files import atomic_write

from . import plots, render
from .claims import (
    CLAIMS,
    COMPARISONS,
    available,
    cell_name,
    find_cells,
    seed_differences,
    verdict_of,
    verdict_paragraph,
)
from .queries import (
    CONFIDENCE,
    DEFAULT_RESAMPLES,
    DEFAULT_SEED,
    QueryDataError,
    bootstrap,
    cell_matrix,
    check_against_validation,
    load_query_table,
)
from .runs import Row, find_run_folders, load_run, mean_std


class OutputError(RuntimeError):
    """An output file that is not the report's own: it is never overwritten."""


def effects(rows: list[Row]) -> list[str]:
    """Weight and direction effects of the seed means when the whole W x D grid over {sft, cl} is there."""
    cells, _ = find_cells(rows)
    keys = [(w, d) for w in ("sft", "cl") for d in ("sft", "cl")]
    if any(row.extras for row in rows) or not all(k in cells for k in keys):
        return []
    means = {k: 100 * mean_std([r.final for r in cells[k].runs])[0] for k in keys}
    weight = [means[("sft", d)] - means[("cl", d)] for d in ("sft", "cl")]
    direction = [means[(w, "sft")] - means[(w, "cl")] for w in ("sft", "cl")]
    return [
        f"Changing the weight (W_SFT − W_CL) moves the score {weight[0]:+.2f} at D_SFT and "
        f"{weight[1]:+.2f} at D_CL; changing the direction (D_SFT − D_CL) moves it {direction[0]:+.2f} at "
        f"W_SFT and {direction[1]:+.2f} at W_CL.",
    ]


def procedure_text(n_queries: dict[str, int], resamples: int, seed: int) -> str:
    tasks = ", ".join(f"{t} ({n})" for t, n in n_queries.items()) or "none"
    return (
        "Procedure. Each run's TREC files of its final validation (`runs/val-step<N>/<task>.trec`) are "
        "scored query by query against the task's `qrels.tsv` with the validation's own metric "
        "(`datamodules.metrics.evaluate_run`, trec_eval semantics). Each query's value is averaged over "
        "the seeds of its cell; a cell's score is the mean over tasks of its task means (the MRB average). "
        f"Paired percentile bootstrap over queries, stratified by task: {resamples:,} resamples drawn with "
        f"`numpy.random.default_rng({seed})`; in each, every task's queries are drawn with replacement "
        "(as many as the task has; the same draw for every cell) and each comparison is recomputed from "
        f"the resampled cell averages; the {100 * CONFIDENCE:g}% interval is the 2.5th to 97.5th "
        "percentile. A claim holds when its interval excludes 0 on the paper's side and more than half "
        "of the seeds' paired differences (table above) are on that side too, is contradicted when the "
        "same is true on the other side, and otherwise cannot be told apart from noise. The interval is "
        "over queries with the trained models fixed, so it alone ignores the seed-to-seed spread; the "
        "seed condition keeps one seed far ahead from carrying a claim. No correction is made for testing "
        "several claims. Tasks (queries): " + tasks + "."
    )


def compute(
    rows: list[Row], eval_root: Path | None, resamples: int, seed: int
) -> tuple[list[dict], dict, list[str]]:
    """The comparisons (per seed and over queries), the bootstrap setting, and notes."""
    cells, notes = find_cells(rows)
    for c, row in cells.items():
        if len(row.runs) > 1 and len({r.final for r in row.runs}) == 1:
            notes.append(
                f"{cell_name(c)}: its {len(row.runs)} seeds gave the same final metric to the last digit; "
                "the seed made no difference in these runs (the data order is set by data.seed, not seed_everything)"
            )
    comparisons = available(COMPARISONS, cells)
    needed = sorted({c for comp in comparisons for c in comp.cells})
    tables, failed, qrels = {}, {}, {}
    for c in needed:
        try:
            tables[c] = [load_query_table(run, eval_root, qrels) for run in cells[c].runs]
        except QueryDataError as error:
            failed[c] = str(error)
            notes.append(f"{cell_name(c)}: no per-query metrics: {error}")
    for group in tables.values():
        for table in group:
            notes += check_against_validation(table)
    matrices, n_queries = {}, {}
    loaded = [t for group in tables.values() for t in group]
    if loaded:
        reference = {task: list(v) for task, v in loaded[0].values.items()}
        different = [t for t in loaded if {task: list(v) for task, v in t.values.items()} != reference]
        if different:
            why = (
                f"{different[0].run.path} and {loaded[0].run.path} were validated on different tasks or "
                "queries; a paired comparison needs the same queries"
            )
            notes.append(f"no intervals: {why}")
            failed.update({c: why for c in tables})
        else:
            matrices = {cell_name(c): cell_matrix(group) for c, group in tables.items()}
            n_queries = {task: len(v) for task, v in reference.items()}
    usable = [comp for comp in comparisons if all(c not in failed for c in comp.cells)]
    statistics = {
        comp.key: (lambda means, comp=comp: comp.fn({c: means[cell_name(c)] for c in comp.cells}))
        for comp in usable
    }
    intervals = bootstrap(matrices, statistics, resamples, seed) if statistics else {}
    results = []
    for comp in comparisons:
        result = {
            "key": comp.key,
            "title": comp.title,
            "claim": comp.claim,
            "paper": comp.paper,
            "paper_sign": comp.sign,
            "cells": [cell_name(c) for c in comp.cells],
            "seeds": seed_differences(comp, cells),
            "interval": None,
        }
        if comp.key in intervals:
            interval = dict(intervals[comp.key])
            interval["query_verdict"] = verdict_of(interval["low"], interval["high"], comp.sign)
            seed_values = result["seeds"]["values"]
            interval["verdict"] = verdict_of(interval["low"], interval["high"], comp.sign, seed_values)
            result["interval"] = interval
        else:
            result["why"] = next((failed[c] for c in comp.cells if c in failed), "no per-query data")
        results.append(result)
    setting = {
        "resamples": resamples,
        "seed": seed,
        "confidence": CONFIDENCE,
        "queries": n_queries,
        "procedure": procedure_text(n_queries, resamples, seed),
    }
    missing = {}
    for claim in CLAIMS:
        wanted = {c for comp in COMPARISONS if comp.claim == claim for c in comp.cells}
        missing[claim] = sorted(cell_name(c) for c in wanted if c not in cells)
    setting["missing"] = missing
    return results, setting, notes


# ---- writing ----------------------------------------------------------------------------------
def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def owned_outputs(out: Path) -> dict[str, str]:
    """``{file: sha256}`` the report wrote into ``out`` last time (from its ``report.json``).

    Raises:
        OutputError: when ``out/report.json`` exists but was not written by this report.
    """
    path = out / "report.json"
    if not path.exists():
        return {}
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        record = None
    if not isinstance(record, dict) or record.get("generator") != render.GENERATOR:
        raise OutputError(
            f"{path}: exists and was not written by python -m experiments.report; move it away or pass "
            "another --out (the report never overwrites files it did not write)"
        )
    return dict(record.get("outputs") or {})


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` so that the file appears whole or not at all (:func:`datamodules.files.atomic_write`)."""
    atomic_write(path, lambda handle: handle.write(data))


def write_outputs(out: Path, files: dict[str, bytes], record: dict) -> list[Path]:
    """Write ``files`` and then ``report.json`` (``record`` plus the files' hashes) into ``out``, each
    file atomically. A file already there is replaced only if the previous ``report.json`` lists it
    with its current content.

    Raises:
        OutputError: before anything is written, naming the first file that is not the report's own.
    """
    out.mkdir(parents=True, exist_ok=True)
    owned = owned_outputs(out)
    for name in files:
        path = out / name
        if path.exists() and (not path.is_file() or owned.get(name) != sha256(path.read_bytes())):
            raise OutputError(
                f"{path}: exists and is not an unchanged output of an earlier report; move it away or "
                "pass another --out (the report never overwrites files it did not write)"
            )
    written = []
    for name, data in files.items():
        write_atomic(out / name, data)
        written.append(out / name)
    # Earlier outputs not rewritten this time (plots, after --no-plots) stay the report's own while unchanged.
    kept = {
        name: digest
        for name, digest in owned.items()
        if name not in files and (out / name).is_file() and sha256((out / name).read_bytes()) == digest
    }
    record = {**record, "outputs": {**kept, **{name: sha256(data) for name, data in files.items()}}}
    write_atomic(out / "report.json", (json.dumps(record, indent=2, default=str) + "\n").encode("utf-8"))
    return [*written, out / "report.json"]


# ---- entry point ------------------------------------------------------------------------------
def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.report",
        description="Probe report of the runs under a folder: per-cell table over seeds, paired "
        "differences, bootstrap intervals over queries, W+/W- curves and a computed verdict.",
    )
    parser.add_argument("runs_dir", help="folder searched recursively for run folders")
    parser.add_argument("--out", default=None, help="where to write the report (default: RUNS_DIR)")
    parser.add_argument(
        "--include-unfinished", action="store_true", help="also use sweep runs without done.json"
    )
    parser.add_argument(
        "--eval-root",
        default=None,
        help="MRB root of the validation qrels (default: each run's data.eval_root)",
    )
    parser.add_argument("--resamples", type=int, default=DEFAULT_RESAMPLES, help="bootstrap resamples")
    parser.add_argument("--bootstrap-seed", type=int, default=DEFAULT_SEED, help="seed of the bootstrap")
    parser.add_argument("--no-plots", action="store_true", help="write the text and JSON outputs only")
    args = parser.parse_args(argv)
    if args.resamples < 100:
        parser.error("--resamples must be at least 100")
    return args


def load_runs(root: Path, include_unfinished: bool) -> tuple[list, list[str]]:
    runs, skipped = [], []
    for folder in find_run_folders(root):
        try:
            run = load_run(folder)
        except (OSError, yaml.YAMLError) as error:
            skipped.append(f"{folder}: unreadable ({error})")
            continue
        if run.status == "unfinished" and not include_unfinished:
            skipped.append(f"{folder}: sweep run not finished (no done.json; --include-unfinished uses it)")
        elif run.final is None:
            skipped.append(f"{folder}: no validation recorded")
        else:
            runs.append(run)
    return runs, skipped


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    root = Path(args.runs_dir)
    if not root.is_dir():
        print(f"error: {root} is not a folder", file=sys.stderr)
        return 1
    if not find_run_folders(root):
        print(
            f"no runs found under {root}: a run folder holds config.yaml and eval_history.jsonl or "
            "metrics.jsonl (python -m experiments.cli fit ... or python -m experiments.sweep ...)",
            file=sys.stderr,
        )
        return 1
    runs, skipped = load_runs(root, args.include_unfinished)
    if not runs:
        print(f"no finished run with a validation result under {root}:", file=sys.stderr)
        for line in skipped:
            print(f"  {line}", file=sys.stderr)
        return 1
    from .runs import group_rows

    rows = group_rows(runs)
    eval_root = Path(args.eval_root) if args.eval_root else None
    results, setting, notes = compute(rows, eval_root, args.resamples, args.bootstrap_seed)
    n_queries = setting["queries"]
    method = (
        f"(Intervals: {100 * CONFIDENCE:g}% paired bootstrap over {sum(n_queries.values())} queries in "
        f"{len(n_queries)} task(s), each query averaged over the seeds of its cell, the models fixed; no "
        "correction for several claims.)"
        if n_queries
        else ""
    )
    verdict = verdict_paragraph(results, setting["missing"], method)
    skipped_notes = ["", f"Left out ({len(skipped)}):", *(f"- {line}" for line in skipped)] if skipped else []
    table = render.probe_table(rows, root, effects(rows), skipped_notes)
    ordered = [run for row in rows for run in row.runs]
    files = {"probe_table.md": table.encode("utf-8")}
    if not args.no_plots:
        try:
            files["probe_bar.png"] = plots.bars(rows)
            files["weights.png"] = plots.weights(rows)
            files["intervals.png"] = plots.intervals(results)
        except ImportError:
            notes.append("matplotlib is not installed: no plots (pip install matplotlib)")
    pngs = [name for name in files if name.endswith(".png")]
    all_notes = notes + [f"left out: {line}" for line in skipped]
    files["report.md"] = render.report_markdown(
        rows, root, results, verdict, setting["procedure"], ordered, pngs, all_notes
    ).encode("utf-8")
    row_of = {id(run): row for row in rows for run in row.runs}
    record = {
        "generator": render.GENERATOR,
        "runs_dir": str(root),
        "metric": "val/mrb_avg at the final validation (fractions in [0, 1])",
        "rows": [render.row_json(row) for row in rows],
        "runs": [render.run_json(run, row_of[id(run)]) for run in ordered],
        "comparisons": results,
        "bootstrap": {k: v for k, v in setting.items() if k != "missing"},
        "verdict": verdict,
        "notes": notes,
        "skipped": skipped,
    }
    try:
        written = write_outputs(Path(args.out) if args.out else root, files, record)
    except (OutputError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(table)
    print(f"Verdict: {verdict}\n")
    print(f"{len(runs)} runs in {len(rows)} rows; wrote " + ", ".join(str(p) for p in written))
    return 0
