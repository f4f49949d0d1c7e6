"""``python -m experiments.report RUNS_DIR [--out DIR]``: read the runs, compute, write the outputs."""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
from pathlib import Path

import numpy as np

from datamodules.exit_codes import InputError, fail, program
from datamodules.exit_codes import report as report_error
from datamodules.files import atomic_write

from . import analysis, plots, render, stats
from .analysis import Tables
from .baselines import baseline_tables
from .claims import CLAIMS, COMPARISONS, available, cell_name, find_cells
from .queries import (
    DEFAULT_SEED,
    QueryDataError,
    check_against_validation,
    eval_root_of,
    load_query_table,
)
from .runs import Row, RunFolderError, find_run_folders, load_run, mean_std


class OutputError(RuntimeError):
    """An output file that is not the report's own: it is never overwritten."""


def effects(rows: list[Row]) -> list[str]:
    """Weight and direction effects of the seed means when the whole W x D grid over {sft, cl} is there."""
    cells, _ = find_cells(rows)
    keys = [(w, d) for w in ("sft", "cl") for d in ("sft", "cl")]
    if any(row.extras for row in rows) or not all(k in cells for k in keys):
        return []
    means = {k: 100 * mean_std(cells[k].finals)[0] for k in keys}
    weight = [means[("sft", d)] - means[("cl", d)] for d in ("sft", "cl")]
    direction = [means[(w, "sft")] - means[(w, "cl")] for w in ("sft", "cl")]
    return [
        f"Changing the weight (W_SFT − W_CL) moves the score {weight[0]:+.2f} at D_SFT and "
        f"{weight[1]:+.2f} at D_CL; changing the direction (D_SFT − D_CL) moves it {direction[0]:+.2f} at "
        f"W_SFT and {direction[1]:+.2f} at W_CL (seed means; the tests are in report.md).",
    ]


def load_tables(rows: list[Row], eval_root: Path | None, zero_shot: Path | None) -> tuple[Tables, list[str]]:
    """Per-query values of every run's final validation and of the baselines, with notes on what failed."""
    notes: list[str] = []
    run_tables: dict = {}
    qrels: dict = {}
    failed: dict = {}
    for row in rows:
        for run in row.runs:
            try:
                table = load_query_table(run, eval_root, qrels)
            except QueryDataError as error:
                notes.append(f"{row.label}, seed {run.seed}: no per-query metrics: {error}")
                failed[id(run)] = str(error)
                continue
            notes += check_against_validation(table)
            run_tables[id(run)] = table.values
    baselines = {}
    loaded = [run for row in rows for run in row.runs if id(run) in run_tables]
    if loaded:
        run = loaded[0]
        metrics = {task: str(v.get("metric")) for task, v in run.tasks.items()}
        top_k = int(run.config.get("data.eval_top_k") or 100)
        try:
            baselines = baseline_tables(eval_root_of(run, eval_root), metrics, top_k, zero_shot)
        except QueryDataError as error:
            notes.append(f"no baselines: {error}")
    tables = Tables(run_tables, baselines, failed)
    for row in rows:
        for run in row.runs:
            if id(run) in run_tables and tables.arrays[id(run)] is None:
                notes.append(
                    f"{run.path}: validated on other tasks or queries than {loaded[0].path}; its row has no "
                    "interval (a paired comparison needs the same queries)"
                )
    return tables, notes


def compute(
    rows: list[Row], eval_root: Path | None, resamples: int, seed: int, zero_shot: Path | None = None
) -> tuple[list[dict], dict, list[str]]:
    """The comparisons tested over seeds, everything else the report shows (baselines, gates,
    mechanism, per-query values), and notes."""
    cells, notes = find_cells(rows)
    for c, row in cells.items():
        if len(row.runs) > 1 and len({r.final for r in row.runs}) == 1:
            notes.append(
                f"{cell_name(c)}: its {len(row.runs)} seeds gave the same final metric to the last digit; "
                "the seed made no difference in these runs"
            )
    tables, table_notes = load_tables(rows, eval_root, zero_shot)
    notes += table_notes
    results = analysis.run_comparisons(available(COMPARISONS, cells), cells, tables, resamples, seed)
    versus = analysis.against_baselines(rows, tables, resamples, seed)
    gate_list = analysis.gates(rows, versus, results)
    failed = analysis.apply_gates(results, gate_list)
    missing = {}
    for claim in CLAIMS:
        wanted = {c for comp in COMPARISONS if comp.claim == claim for c in comp.cells}
        missing[claim] = sorted(cell_name(c) for c in wanted if c not in cells)
    extra = {
        "tables": tables,
        "baselines": versus,
        "baseline_means": {
            name: statistics.fmean(np.mean(list(v.values())) for v in per_query.values())
            for name, per_query in tables.baselines.items()
        },
        "gates": gate_list,
        "failed_gates": failed,
        "mechanism": analysis.mechanism(rows),
        "reach": analysis.design_reach(results),
        "missing": missing,
        "setting": {
            "resamples": resamples,
            "seed": seed,
            "alpha": stats.ALPHA,
            "power": stats.POWER,
            "queries": {task: len(qids) for task, qids in tables.order.items()},
            "procedure": render.procedure_text(tables.order, resamples, seed),
        },
    }
    return results, extra, notes


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
        prog=program("experiments.report"),
        description="Probe report of the runs under a folder: per-cell table over seeds, the paper's "
        "comparisons tested over seeds (paired t, sign-flip, two-level bootstrap, Holm, MDE), baselines, "
        "validity gates, the W+/W- mechanism and a computed verdict.",
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
    parser.add_argument(
        "--zero-shot",
        default=None,
        help="folder of <task>.trec runs of the untrained model on the same tasks (a baseline and a gate)",
    )
    parser.add_argument("--resamples", type=int, default=stats.DEFAULT_RESAMPLES, help="bootstrap resamples")
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
        except RunFolderError as error:
            skipped.append(f"{folder}: left out: {error}")
            continue
        except OSError as error:
            skipped.append(f"{folder}: unreadable ({error})")
            continue
        if run.status == "unfinished" and not include_unfinished:
            skipped.append(f"{folder}: sweep run not finished (no done.json; --include-unfinished uses it)")
        elif run.final is None:
            skipped.append(f"{folder}: no validation recorded")
        else:
            runs.append(run)
    return runs, skipped


def load(args: argparse.Namespace) -> tuple[Path, list, list[str]]:
    """The runs folder, its finished runs and the lines of those left out; :class:`InputError` when
    there is nothing to report on."""
    root = Path(args.runs_dir)
    if not root.is_dir():
        raise InputError(f"{root} is not a folder")
    if not find_run_folders(root):
        raise InputError(
            f"no runs found under {root}: a run folder holds config.yaml and, once validated, "
            "eval_history.jsonl (python -m experiments.cli fit ... or python -m experiments.sweep ...)"
        )
    runs, skipped = load_runs(root, args.include_unfinished)
    if not runs:
        raise InputError("\n  ".join([f"no finished run with a validation result under {root}:", *skipped]))
    if args.zero_shot and not Path(args.zero_shot).is_dir():
        raise InputError(f"--zero-shot {args.zero_shot}: not a folder of <task>.trec runs")
    return root, runs, skipped


def plots_of(rows, results, notes: list[str]) -> dict[str, bytes]:
    """The three figures, or none (with a note) when matplotlib is missing."""
    try:
        return {
            "probe_bar.png": plots.bars(rows),
            "weights.png": plots.weights(rows),
            "intervals.png": plots.intervals(results),
        }
    except ImportError:
        notes.append("matplotlib is not installed: no plots (pip install -e '.[report]')")
        return {}


def record_of(root: Path, rows, ordered, results, extra, verdict: str, notes, skipped) -> dict:
    """``report.json``: rows, runs (with per-query values), comparisons, baselines, gates, mechanism."""
    row_of = {id(run): row for row in rows for run in row.runs}
    tables: Tables = extra["tables"]
    return {
        "generator": render.GENERATOR,
        "runs_dir": render.shown_path(root),
        "metric": "val/mrb_avg at the final validation (fractions in [0, 1])",
        "rows": [render.row_json(row) for row in rows],
        "runs": [render.run_json(run, row_of[id(run)], tables.runs.get(id(run))) for run in ordered],
        "comparisons": results,
        "baselines": {
            "means": extra["baseline_means"],
            "per_query": tables.baselines,
            "versus": extra["baselines"],
        },
        "gates": extra["gates"],
        "mechanism": extra["mechanism"],
        "design": {"reach": extra["reach"], "missing": extra["missing"]},
        "statistics": extra["setting"],
        "verdict": verdict,
        "notes": notes,
        "skipped": skipped,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    try:
        root, runs, skipped = load(args)
    except InputError as error:
        return report_error(str(error))
    from .runs import group_rows

    rows = group_rows(runs)
    eval_root = Path(args.eval_root) if args.eval_root else None
    zero_shot = Path(args.zero_shot) if args.zero_shot else None
    results, extra, notes = compute(rows, eval_root, args.resamples, args.bootstrap_seed, zero_shot)
    verdict = render.verdict_paragraph(results, extra)
    skipped_notes = ["", f"Left out ({len(skipped)}):", *(f"- {line}" for line in skipped)] if skipped else []
    table = render.probe_table(rows, root, effects(rows), skipped_notes, extra["baseline_means"])
    ordered = [run for row in rows for run in row.runs]
    files = {"probe_table.md": table.encode("utf-8")}
    if not args.no_plots:
        files.update(plots_of(rows, results, notes))
    pngs = [name for name in files if name.endswith(".png")]
    all_notes = notes + [f"left out: {line}" for line in skipped]
    files["report.md"] = render.report_markdown(
        rows, root, results, verdict, extra, ordered, pngs, all_notes
    ).encode("utf-8")
    record = record_of(root, rows, ordered, results, extra, verdict, notes, skipped)
    try:
        written = write_outputs(Path(args.out) if args.out else root, files, record)
    except (OutputError, OSError) as error:  # --out holds files it did not write: 2; a full disk: 1
        return fail(error, OutputError)
    print(table)
    print(f"Verdict: {verdict}\n")
    print(f"{len(runs)} runs in {len(rows)} rows; wrote " + ", ".join(str(p) for p in written))
    return 0
