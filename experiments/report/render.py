"""The report as text: the per-cell table (``probe_table.md``), the full report (``report.md``) and the
JSON record (``report.json``). Values are fractions in JSON and points (x100) in Markdown."""

from __future__ import annotations

import os
import statistics
from collections.abc import Mapping
from pathlib import Path

from .claims import CLAIMS, cell_name, points
from .runs import WEIGHT_KEYS, Row, RunRecord, families_of, format_value, mean_std

GENERATOR = "experiments.report"


def cell(values: list[float]) -> str:
    if not values:
        return ""
    mean, std = mean_std([100 * v for v in values])
    return f"{mean:.2f}" if std is None else f"{mean:.2f} ± {std:.2f}"


def table_lines(rows: list[Row]) -> list[str]:
    families = families_of(rows)
    extras = list(rows[0].extras) if rows else []
    header = ["objective", "weight", "direction", *extras, "seeds", "MRB avg", *families]
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---"] * 3 + ["---"] * len(extras) + ["---:"] * (2 + len(families))) + "|",
    ]
    for row in rows:
        seeds = ",".join(format_value(r.seed) for r in row.runs)
        values = [
            row.objective,
            row.weight,
            row.direction,
            *(format_value(v) for v in row.extras.values()),
            f"{len(row.runs)} ({seeds})",
            cell(row.finals),
            *(cell([r.families[f] for r in row.runs if f in r.families]) for f in families),
        ]
        lines.append("| " + " | ".join(values) + " |")
    return lines


def retriever_line(rows: list[Row]) -> list[str]:
    retriever = [r.retriever for row in rows for r in row.runs if r.retriever is not None]
    return [f"First-stage retriever: {100 * statistics.fmean(retriever):.2f}."] if retriever else []


def shown_path(path: Path) -> str:
    """A path as committed outputs show it: relative to the current folder (the repository root) when
    it lies under it, never the machine's absolute folder."""
    try:
        return (
            os.path.relpath(Path(path).resolve(), Path.cwd().resolve())
            if Path(path).resolve().is_relative_to(Path.cwd().resolve())
            else Path(path).name
        )
    except (OSError, ValueError):
        return Path(path).name


def baseline_lines(means: Mapping[str, float]) -> list[str]:
    if not means:
        return []
    parts = ", ".join(f"{name} {100 * value:.2f}" for name, value in means.items())
    return [f"Baselines on the same candidates (x100): {parts}."]


def probe_table(
    rows: list[Row],
    root: Path,
    effects: list[str],
    notes: list[str],
    baselines: Mapping[str, float] | None = None,
) -> str:
    lines = [
        f"# Probe table: {shown_path(root)}",
        "",
        "Final `val/mrb_avg` and family scores (x100): mean ± sample std over seeds (`seed_everything`).",
        "",
        *table_lines(rows),
        "",
        *retriever_line(rows),
        *baseline_lines(baselines or {}),
        *effects,
        *notes,
    ]
    return "\n".join(lines).rstrip() + "\n"


def md(text: str) -> str:
    """Text for a Markdown table cell (a bare ``|`` would end the cell)."""
    return text.replace("|", "\\|")


def procedure_text(order: Mapping[str, list[str]], resamples: int, seed: int) -> str:
    tasks = ", ".join(f"{t} ({len(q)})" for t, q in order.items()) or "none"
    return (
        "Procedure (docs/science.md §7). The unit is the training run: each comparison is computed per "
        "seed from the runs sharing that seed (same initialisation and data order in every cell). Tests "
        "over the n seeds: the paired t-test (two-sided) and the exact sign-flip test (all 2^n sign "
        "patterns; its smallest p is 2/2^n), each Holm-adjusted over the comparisons that test a claim of "
        "the paper. Interval: 95% two-level percentile bootstrap, "
        f"{resamples:,} resamples from `numpy.random.default_rng({seed})`: seeds drawn with replacement, "
        "then for every drawn seed each task's queries drawn with replacement (the same draw for every "
        "cell), so it covers seed-to-seed and query noise. A comparison holds (or is contradicted, on "
        "the other side of the paper's sign) only when both adjusted p-values are below 0.05 and the "
        "interval excludes 0 on that side; otherwise it is inconclusive, reported with its minimum "
        "detectable effect (MDE: the difference a paired t-test over these seeds, at the level of "
        "Holm's first step, finds with 80% power given the observed seed SD). Per-query values come "
        "from each run's final-validation TREC files scored against the task's qrels "
        f"(trec_eval semantics). Tasks (queries): {tasks}."
    )


def pvalue(p) -> str:
    return "" if p is None else (f"{p:.3f}" if p >= 0.001 else f"{p:.1e}")


def comparison_table(results: list[dict]) -> list[str]:
    lines = [
        "| comparison | n seeds | per seed (points) | mean ± SD | 95% interval (seeds × queries) | p (t) | p Holm | "
        "sign-flip p Holm | MDE | paper | verdict |",
        "|---|---:|---|---:|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        per_seed = ", ".join(
            f"s{format_value(s)}: {points(v)}" for s, v in zip(r["seeds"], r["values"], strict=True)
        )
        mean = (
            ""
            if r["mean"] is None
            else points(r["mean"]) + ("" if r["std"] is None else f" ± {100 * r['std']:.2f}")
        )
        interval = r["interval"]
        shown = "" if interval is None else f"[{points(interval['low'])}, {points(interval['high'])}]"
        mde = "" if r["mde"] is None else f"{100 * r['mde']:.2f}"
        holm = pvalue(r["p_t_holm"]) if r["claim"] else "(not a claim)"
        lines.append(
            f"| {md(r['title'])} | {r['n_seeds']} | {per_seed} | {mean} | {shown} | {pvalue(r['p_t'])} | {holm} | "
            f"{pvalue(r['p_sign_flip_holm'])} | {mde} | {r['paper']:+.2f} | {md(r['verdict'])} |"
        )
    return lines


def baseline_table(versus: list[dict], means: Mapping[str, float]) -> list[str]:
    names = list(means)
    if not names:
        return ["No baseline could be computed (see the notes)."]
    lines = [
        "| row | " + " | ".join(f"− {n} ({100 * means[n]:.2f})" for n in names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for entry in versus:
        cells = []
        for n in names:
            b = entry["baselines"].get(n)
            if b is None:
                cells.append("")
                continue
            flag = "" if b["low"] > 0 else " **not above**"
            per_seed = ", ".join(points(v) for v in b["per_seed"])
            cells.append(
                f"{points(b['estimate'])} [{points(b['low'])}, {points(b['high'])}]{flag} (seeds: {per_seed})"
            )
        lines.append(f"| {md(entry['row'])} | " + " | ".join(cells) + " |")
    return lines


def gate_lines(gates: list[dict]) -> list[str]:
    mark = {True: "passed", False: "FAILED", None: "not checked"}
    return [f"- {g['gate']}: **{mark[g['passed']]}** ({g['detail']})" for g in gates]


def mechanism_lines(mech: dict) -> list[str]:
    edges = mech["edges"]
    spans = [f"steps {edges[i]:.0f}-{edges[i + 1]:.0f}" for i in range(len(edges) - 1)]
    lines = [
        "| row | "
        + " | ".join(f"W+ {s}" for s in spans)
        + " | "
        + " | ".join(f"ΣW− {s}" for s in spans)
        + " |",
        "|---|" + "---:|" * (2 * len(spans)),
    ]
    for entry in mech["rows"]:
        cols = []
        for key in WEIGHT_KEYS:
            for w in entry["windows"][key]:
                cols.append(
                    ""
                    if w["mean"] is None
                    else f"{w['mean']:.3f}" + ("" if w["std"] is None else f" ± {w['std']:.3f}")
                )
        lines.append(f"| {md(entry['row'])} | " + " | ".join(cols) + " |")
    for ratio in mech["ratios"]:
        for key, label in zip(WEIGHT_KEYS, ("W+", "ΣW−"), strict=True):
            r = ratio[key]
            if not r["per_seed"]:
                continue
            ci = r["interval"]
            shown = "" if ci is None else f", 95% t interval over seeds [{ci['low']:.3f}, {ci['high']:.3f}]"
            per_seed = ", ".join(
                f"s{format_value(s)}: {v:.3f}" for s, v in zip(r["seeds"], r["per_seed"], strict=True)
            )
            lines.append("")
            lines.append(
                f"{label} ratio W_CL / W_SFT under D_{ratio['direction'].upper()} (mean over training): "
                f"{r['mean']:.3f}{shown} ({per_seed}); the paper's mechanism predicts below 1."
            )
    return lines


def verdict_paragraph(results: list[dict], extra: dict) -> str:
    """The verdict, computed: design reach, gates, then each claim with its numbers."""
    sentences = []
    if extra.get("reach"):
        sentences.append(extra["reach"])
    if extra.get("failed_gates"):
        sentences.append(
            "The setting is not valid, so no claim is judged: failed gate(s): "
            + "; ".join(extra["failed_gates"])
            + "."
        )
    by_claim: dict[str, list[dict]] = {}
    for r in results:
        if r["claim"]:
            by_claim.setdefault(r["claim"], []).append(r)
    for claim, text in CLAIMS.items():
        parts = by_claim.get(claim, [])
        if not parts:
            cells = ", ".join(extra["missing"].get(claim, [])) or "cells"
            sentences.append(f"The claim that {text} was not tested (not run: {cells}).")
            continue
        clauses = []
        for p in parts:
            interval = p["interval"]
            shown = (
                "no interval"
                if interval is None
                else f"95% [{points(interval['low'])}, {points(interval['high'])}]"
            )
            mde = "" if p["mde"] is None else f", MDE {100 * p['mde']:.1f}"
            mean = "n/a" if p["mean"] is None else points(p["mean"])
            clauses.append(
                f"{p['title']}: {p['verdict']} ({mean} points over {p['n_seeds']} seeds, {shown}, "
                f"Holm p {pvalue(p['p_t_holm']) or 'n/a'}{mde}; paper {p['paper']:+.2f})"
            )
        sentences.append(f"The claim that {text}: " + "; ".join(clauses) + ".")
    return " ".join(sentences) if sentences else "No claim of the paper could be tested on these runs."


def _findings_lines(rows: list[Row], results: list[dict], verdict: str, extra: dict) -> list[str]:
    """The verdict, the validity gates, the cells, the rows against the baselines and the comparisons."""
    return [
        "## Verdict",
        "",
        verdict,
        "",
        "## Validity gates",
        "",
        *gate_lines(extra["gates"]),
        "",
        "## Cells: final MRB average over seeds",
        "",
        "Final validation (`val/mrb_avg`, x100): mean ± sample std over seeds; `seeds` = n (which).",
        "",
        *table_lines(rows),
        "",
        *retriever_line(rows),
        *baseline_lines(extra["baseline_means"]),
        "",
        "## Against the baselines",
        "",
        "Each row minus each baseline (points): estimate, 95% two-level bootstrap interval (seeds × queries), "
        "per-seed differences. The random order is the exact expectation over random orders of the same "
        "candidates; a row whose interval does not clear it is flagged.",
        "",
        *baseline_table(extra["baselines"], extra["baseline_means"]),
        "",
        "## The comparisons, tested over seeds",
        "",
        extra["setting"]["procedure"],
        "",
        *comparison_table(results),
        "",
    ]


def _mechanism_and_plot_lines(extra: dict, plots: list[str]) -> list[str]:
    """The document weights over training (the paper's mechanism), then the plots."""
    return [
        "## The mechanism: how much weight the documents get",
        "",
        "Mean W+ (`train/weight_pos_mean`) and ΣW− (`train/weight_neg_sum`) over equal spans of training, "
        "mean ± std over seeds (each logged value is one training group's). The paper explains SFT's lead by "
        "W_CL staying smaller than W_SFT.",
        "",
        *mechanism_lines(extra["mechanism"]),
        "",
        "## Plots",
        "",
        *(f"![{name}]({name})" for name in plots),
        "",
    ]


def _runs_lines(runs: list[RunRecord]) -> list[str]:
    """The runs table, then each run's recorded command."""
    lines = [
        "## Runs",
        "",
        "| run | cell | seed | final step | final MRB avg | seconds |",
        "|---|---|---|---:|---:|---:|",
    ]
    for run in runs:
        seconds = (run.done or {}).get("seconds", "")
        lines.append(
            f"| {run.path.name} | {cell_name((run.weight, run.direction))} | {format_value(run.seed)} | "
            f"{run.step} | {100 * run.final:.2f} | {seconds} |"
        )
    lines += [
        "",
        "Each run reproduced by its recorded command, from the repository root (also in `report.json`):",
        "",
        "```sh",
    ]
    for run in runs:
        lines.append(f"# {run.path.name}")
        lines.append(run.command_line or "# (not a sweep run: no command was recorded)")
    return [*lines, "```"]


def report_markdown(
    rows: list[Row],
    root: Path,
    results: list[dict],
    verdict: str,
    extra: dict,
    runs: list[RunRecord],
    plots: list[str],
    notes: list[str],
) -> str:
    lines = [
        f"# Probe report: {shown_path(root)}",
        "",
        "Generated by `python -m experiments.report`; every number and the verdict below are computed from "
        "the run folders (docs/science.md §4 has the paper's tables, §7 the statistics).",
        "",
        *_findings_lines(rows, results, verdict, extra),
        *_mechanism_and_plot_lines(extra, plots),
        *_runs_lines(runs),
    ]
    if notes:
        lines += ["", "## Notes", "", *(f"- {note}" for note in notes)]
    return "\n".join(lines).rstrip() + "\n"


def row_json(row: Row) -> dict:
    mean, std = mean_std(row.finals)
    fams = {}
    for family in families_of([row]):
        fmean, fstd = mean_std([r.families[family] for r in row.runs if family in r.families])
        fams[family] = {"mean": fmean, "std": fstd}
    return {
        "objective": row.objective,
        "weight": row.weight,
        "direction": row.direction,
        "cell": cell_name((row.weight, row.direction)),
        "extras": row.extras,
        "n": len(row.runs),
        "seeds": [r.seed for r in row.runs],
        "mrb_avg": {"mean": mean, "std": std, "values": row.finals},
        "families": fams,
        "runs": [shown_path(r.path) for r in row.runs],
    }


def run_json(run: RunRecord, row: Row, per_query: dict | None = None) -> dict:
    done = run.done or {}
    return {
        "path": shown_path(run.path),
        "objective": run.objective,
        "weight": run.weight,
        "direction": run.direction,
        "cell": cell_name((run.weight, run.direction)),
        "extras": row.extras,
        "seed": run.seed,
        "parameters": done.get("params"),
        "final": {
            "step": run.step,
            "mrb_avg": run.final,
            "families": run.families,
            "tasks": {t: v.get("value") for t, v in run.tasks.items()},
        },
        "sweep_metric": done.get("metric"),
        "seconds": done.get("seconds"),
        "command": run.command,
        "env": done.get("env"),
        "command_line": run.command_line,
        "per_query": per_query,
    }
