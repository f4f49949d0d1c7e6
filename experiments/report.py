"""Compare runs: ``python -m experiments.report RUNS_DIR [--out DIR]``.

Finds every run folder under RUNS_DIR (a folder with ``config.yaml`` and ``eval_history.jsonl`` or
``metrics.jsonl``, as ``experiments.cli`` writes them; hidden folders are skipped) and writes into
``--out`` (default: RUNS_DIR):

* ``probe_table.md`` (also printed): one row per (objective, weight, direction) and per value of
  any other config key that differs between the runs (``data.num_negatives``, a temperature, ...);
  the final ``val/mrb_avg`` and the family scores as mean ± sample std over seeds
  (``seed_everything``), x100 like the paper. Plain ``sft`` / ``cl`` count as W_SFT D_SFT /
  W_CL D_CL. With the whole 2x2 grid, the weight and direction effects follow the table.
* ``probe_bar.png``: the table as bars with error bars (dots: single seeds; dashed: retriever).
* ``weights.png``: W+ (``train/weight_pos_mean``) and W- (``train/weight_neg_sum``) over training
  steps, one line per row (mean over seeds, band: ± std): the paper's "W_CL stays smaller".
* ``report.json``: the same numbers for scripts.

Only local files are read (never W&B). A run of a sweep folder whose ``done.json`` is missing
(still running, or failed) is left out unless ``--include-unfinished``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from experiments.keys import flatten

FAMILIES = ("T2T", "I2I", "T2I", "I2T", "T2VD", "T2IT", "IT2T", "IT2I", "IT2IT")
ORDER = {"sft": 0, "cl": 1, "url": 2, "constant": 3, "tau_mask": 4, "multi_token": 5, "projection": 6}
# Config keys that never make two runs different experiments (names, folders, loggers, the seed).
IGNORED = (
    "seed_everything",
    "runs_dir",
    "run_name",
    "ckpt_path",
    "trainer.default_root_dir",
    "trainer.logger",
    "trainer.callbacks",
    "data.model_name_or_path",
    "data.trust_remote_code",
    "model.objective",
    "model.objective_args.weight",
    "model.objective_args.direction",
)
WEIGHT_KEYS = ("train/weight_pos_mean", "train/weight_neg_sum")


@dataclass
class RunRecord:
    """What the report needs from one run folder."""

    path: Path
    config: dict[str, Any]
    objective: str
    weight: str
    direction: str
    seed: Any
    status: str
    final: float | None = None
    step: int | None = None
    families: dict[str, float] = field(default_factory=dict)
    retriever: float | None = None
    train: list[dict] = field(default_factory=list)


@dataclass
class Row:
    """Runs that differ only by seed."""

    objective: str
    weight: str
    direction: str
    extras: dict[str, Any]
    runs: list[RunRecord]

    @property
    def label(self) -> str:
        extra = " ".join(f"{k}={format_value(v)}" for k, v in self.extras.items())
        return " ".join(x for x in (self.objective, f"W={self.weight} D={self.direction}", extra) if x)


# ---- reading run folders ----------------------------------------------------------------------
def read_jsonl(path: Path) -> list[dict]:
    rows = []
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                rows.append(json.loads(line))
            except ValueError:
                continue  # a line cut short by a run still writing
    return rows


def find_run_folders(root: Path) -> list[Path]:
    """Run folders under ``root`` (itself included), not descending into one or into hidden folders."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        if "config.yaml" in filenames and ({"eval_history.jsonl", "metrics.jsonl"} & set(filenames)):
            found.append(Path(dirpath))
            dirnames[:] = []
            continue
        dirnames[:] = sorted(
            d for d in dirnames if not d.startswith(".") and d not in ("wandb", "checkpoints")
        )
    return sorted(found)


def probe_cell(model: dict) -> tuple[str, str, str]:
    """(objective, weight, direction); plain sft / cl are W_SFT D_SFT / W_CL D_CL."""
    objective = str(model.get("objective", "?"))
    args = model.get("objective_args") or {}
    if objective in ("sft", "cl"):
        return objective, objective, objective
    default = "sft" if objective == "url" else "-"
    return objective, str(args.get("weight", default)), str(args.get("direction", default))


def sweep_status(path: Path) -> str:
    """``finished`` / ``unfinished`` for runs of a sweep folder (experiments.sweep), else ``unknown``."""
    parent = path.parent
    if (parent / "done.json").is_file():
        return "finished"
    if (parent / "run.log").is_file():
        return "unfinished"
    return "unknown"


def load_run(path: Path) -> RunRecord:
    config = yaml.safe_load((path / "config.yaml").read_text(encoding="utf-8")) or {}
    objective, weight, direction = probe_cell(config.get("model") or {})
    record = RunRecord(
        path=path,
        config=flatten(config),
        objective=objective,
        weight=weight,
        direction=direction,
        seed=config.get("seed_everything"),
        status=sweep_status(path),
    )
    metrics = read_jsonl(path / "metrics.jsonl")
    evals = [r for r in read_jsonl(path / "eval_history.jsonl") if r.get("stage", "val") == "val"]
    if evals:
        last = evals[-1]
        record.final, record.step = last.get("average"), last.get("step")
        record.families = dict(last.get("families") or {})
        record.retriever = (last.get("retriever") or {}).get("average")
    else:
        vals = [r for r in metrics if "val/mrb_avg" in r]
        if vals:
            last = vals[-1]
            record.final, record.step = last["val/mrb_avg"], last.get("step")
            record.families = {k.split("/")[-1]: v for k, v in last.items() if k.startswith("val/family/")}
            record.retriever = last.get("val/retriever_avg")
    record.train = [r for r in metrics if any(k in r for k in WEIGHT_KEYS)]
    return record


# ---- the table --------------------------------------------------------------------------------
def format_value(value: Any) -> str:
    return format(value, "g") if isinstance(value, float) else str(value)


def sort_key(value: Any) -> tuple:
    if isinstance(value, bool) or value is None:
        return (2, str(value))
    if isinstance(value, int | float):
        return (0, float(value))
    return (1, ORDER.get(str(value), 99), str(value))


def varying_keys(runs: list[RunRecord]) -> list[str]:
    """Config keys (other than names, folders and the seed) whose values differ between runs."""
    keys = sorted({k for r in runs for k in r.config})
    varying = []
    for key in keys:
        if any(key == p or key.startswith(p + ".") for p in IGNORED):
            continue
        # Runs without the key come from code that did not have it yet: no evidence of a difference.
        values = {json.dumps(r.config[key], sort_keys=True, default=str) for r in runs if key in r.config}
        if len(values) > 1:
            varying.append(key)
    return varying


def column_names(keys: list[str]) -> dict[str, str]:
    """Short column names (last dotted part) unless two keys would share one."""
    short = [k.rsplit(".", 1)[-1] for k in keys]
    return {k: (s if short.count(s) == 1 else k) for k, s in zip(keys, short, strict=True)}


def group_rows(runs: list[RunRecord]) -> list[Row]:
    keys = varying_keys(runs)
    names = column_names(keys)
    groups: dict[tuple, Row] = {}
    for run in runs:
        extras = {names[k]: run.config.get(k) for k in keys}
        ident = (run.objective, run.weight, run.direction, json.dumps(extras, sort_keys=True, default=str))
        row = groups.setdefault(ident, Row(run.objective, run.weight, run.direction, extras, []))
        row.runs.append(run)
    rows = list(groups.values())
    rows.sort(
        key=lambda r: (
            sort_key(r.objective),
            sort_key(r.weight),
            sort_key(r.direction),
            tuple(sort_key(v) for v in r.extras.values()),
        )
    )
    for row in rows:
        row.runs.sort(key=lambda r: sort_key(r.seed))
    return rows


def mean_std(values: list[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (n - 1); no std for a single value."""
    mean = statistics.fmean(values)
    return mean, (statistics.stdev(values) if len(values) > 1 else None)


def cell(values: list[float]) -> str:
    if not values:
        return ""
    mean, std = mean_std([100 * v for v in values])
    return f"{mean:.2f}" if std is None else f"{mean:.2f} ± {std:.2f}"


def families_of(rows: list[Row]) -> list[str]:
    present = {f for row in rows for run in row.runs for f in run.families}
    return [f for f in FAMILIES if f in present] + sorted(present - set(FAMILIES))


def effects(rows: list[Row]) -> list[str]:
    """Weight and direction effects when the whole W x D grid over {sft, cl} is present."""
    if any(row.extras for row in rows):
        return []
    means: dict[tuple[str, str], float] = {}
    for objective in ("sft", "cl", "url"):  # URL cells win over the plain objectives
        for row in rows:
            if row.objective == objective and row.weight in ("sft", "cl") and row.direction in ("sft", "cl"):
                means[(row.weight, row.direction)] = 100 * mean_std([r.final for r in row.runs])[0]
    if len(means) < 4:
        return []
    weight = [means[("sft", d)] - means[("cl", d)] for d in ("sft", "cl")]
    direction = [means[(w, "sft")] - means[(w, "cl")] for w in ("sft", "cl")]
    return [
        f"Changing the weight (W_SFT − W_CL) moves the score {weight[0]:+.2f} at D_SFT and "
        f"{weight[1]:+.2f} at D_CL; changing the direction (D_SFT − D_CL) moves it {direction[0]:+.2f} at "
        f"W_SFT and {direction[1]:+.2f} at W_CL.",
    ]


def markdown(rows: list[Row], root: Path, notes: list[str]) -> str:
    families = families_of(rows)
    extras = list(rows[0].extras) if rows else []
    header = ["objective", "weight", "direction", *extras, "seeds", "MRB avg", *families]
    lines = [
        f"# Probe table: {root}",
        "",
        "Final `val/mrb_avg` and family scores (x100): mean ± sample std over seeds (`seed_everything`).",
        "",
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
            cell([r.final for r in row.runs]),
            *(cell([r.families[f] for r in row.runs if f in r.families]) for f in families),
        ]
        lines.append("| " + " | ".join(values) + " |")
    retriever = [r.retriever for row in rows for r in row.runs if r.retriever is not None]
    lines.append("")
    if retriever:
        lines.append(f"First-stage retriever: {100 * statistics.fmean(retriever):.2f}.")
    lines += effects(rows)
    lines += notes
    return "\n".join(lines).rstrip() + "\n"


def to_json(rows: list[Row], root: Path, skipped: list[str]) -> dict:
    out = []
    for row in rows:
        mean, std = mean_std([r.final for r in row.runs])
        fams = {}
        for family in families_of([row]):
            fmean, fstd = mean_std([r.families[family] for r in row.runs if family in r.families])
            fams[family] = {"mean": fmean, "std": fstd}
        out.append(
            {
                "objective": row.objective,
                "weight": row.weight,
                "direction": row.direction,
                "extras": row.extras,
                "n": len(row.runs),
                "seeds": [r.seed for r in row.runs],
                "mrb_avg": {"mean": mean, "std": std, "values": [r.final for r in row.runs]},
                "families": fams,
                "runs": [str(r.path) for r in row.runs],
            }
        )
    return {"runs_dir": str(root), "rows": out, "skipped": skipped}


# ---- plots ------------------------------------------------------------------------------------
def row_style(row: Row, index: int) -> dict:
    colors = {"sft": "tab:blue", "cl": "tab:orange"}
    color = colors.get(row.weight, f"C{2 + index % 8}") if not row.extras else f"C{index % 10}"
    return {"color": color, "linestyle": "--" if row.direction == "cl" else "-"}


def plot_bars(rows: list[Row], path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(5.0, 1.1 * len(rows) + 2), 4.2))
    for i, row in enumerate(rows):
        values = [100 * r.final for r in row.runs]
        mean, std = mean_std(values)
        style = row_style(row, i)
        ax.bar(
            i,
            mean,
            yerr=std or 0.0,
            capsize=4,
            color=style["color"],
            alpha=0.8,
            hatch="//" if row.direction == "cl" else None,
            edgecolor="black",
            linewidth=0.6,
        )
        ax.scatter([i] * len(values), values, color="black", s=10, zorder=3)
    retriever = [r.retriever for row in rows for r in row.runs if r.retriever is not None]
    if retriever:
        ax.axhline(
            100 * statistics.fmean(retriever), color="gray", linestyle="--", linewidth=1, label="retriever"
        )
        ax.legend(loc="lower right", fontsize=8)
    ax.set_xticks(range(len(rows)), [row.label.replace(" ", "\n", 1) for row in rows], fontsize=8)
    ax.set_ylabel("final val/mrb_avg (x100)")
    ax.set_title("MRB average, mean ± std over seeds")
    low = min(100 * r.final for row in rows for r in row.runs)
    ax.set_ylim(bottom=max(0.0, math.floor(low - 10)))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def mean_curve(runs: list[RunRecord], key: str) -> tuple[list[int], list[float], list[float]]:
    """Steps and mean ± std over seeds of one training statistic (steps any seed logged)."""
    by_step: dict[int, list[float]] = {}
    for run in runs:
        for r in run.train:
            if key in r and "step" in r:
                by_step.setdefault(int(r["step"]), []).append(float(r[key]))
    steps = sorted(by_step)
    means = [statistics.fmean(by_step[s]) for s in steps]
    stds = [statistics.stdev(by_step[s]) if len(by_step[s]) > 1 else 0.0 for s in steps]
    return steps, means, stds


def plot_weights(rows: list[Row], path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    titles = {
        "train/weight_pos_mean": "W+ (positive weight, mean over groups)",
        "train/weight_neg_sum": "W− (sum of negative weights, mean over groups)",
    }
    for ax, key in zip(axes, WEIGHT_KEYS, strict=True):
        drawn = False
        for i, row in enumerate(rows):
            steps, means, stds = mean_curve(row.runs, key)
            if not steps:
                continue
            style = row_style(row, i)
            ax.plot(steps, means, label=row.label, **style)
            if any(stds):
                ax.fill_between(
                    steps,
                    [m - s for m, s in zip(means, stds, strict=True)],
                    [m + s for m, s in zip(means, stds, strict=True)],
                    color=style["color"],
                    alpha=0.15,
                )
            drawn = True
        if not drawn:
            ax.text(0.5, 0.5, f"no {key} logged", ha="center", va="center", transform=ax.transAxes)
        ax.set_title(titles[key], fontsize=10)
        ax.set_xlabel("step")
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        axes[0].legend(fontsize=7)
    fig.suptitle("Training weights per objective (solid: D_SFT, dashed: D_CL; mean over seeds)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---- entry point ------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.report",
        description="Table + plots comparing the runs under a folder (probe grid, W curves).",
    )
    parser.add_argument("runs_dir", help="folder searched recursively for run folders")
    parser.add_argument("--out", default=None, help="where to write the table and plots (default: RUNS_DIR)")
    parser.add_argument(
        "--include-unfinished", action="store_true", help="also use sweep runs without done.json"
    )
    args = parser.parse_args(argv)

    root = Path(args.runs_dir)
    if not root.is_dir():
        print(f"error: {root} is not a folder", file=sys.stderr)
        return 1
    folders = find_run_folders(root)
    if not folders:
        print(
            f"no runs found under {root}: a run folder holds config.yaml and eval_history.jsonl or "
            "metrics.jsonl (python -m experiments.cli fit ... or python -m experiments.sweep ...)",
            file=sys.stderr,
        )
        return 1
    runs, skipped, notes = [], [], []
    for folder in folders:
        try:
            run = load_run(folder)
        except (OSError, yaml.YAMLError) as error:
            skipped.append(f"{folder}: unreadable ({error})")
            continue
        if run.status == "unfinished" and not args.include_unfinished:
            skipped.append(f"{folder}: sweep run not finished (no done.json; --include-unfinished uses it)")
        elif run.final is None:
            skipped.append(f"{folder}: no validation recorded")
        else:
            runs.append(run)
    if not runs:
        print(f"no finished run with a validation result under {root}:", file=sys.stderr)
        for line in skipped:
            print(f"  {line}", file=sys.stderr)
        return 1
    if skipped:
        notes += ["", f"Left out ({len(skipped)}):", *(f"- {line}" for line in skipped)]
    rows = group_rows(runs)
    out = Path(args.out) if args.out else root
    out.mkdir(parents=True, exist_ok=True)
    table = markdown(rows, root, notes)
    (out / "probe_table.md").write_text(table, encoding="utf-8")
    (out / "report.json").write_text(
        json.dumps(to_json(rows, root, skipped), indent=2) + "\n", encoding="utf-8"
    )
    print(table)
    written = [out / "probe_table.md", out / "report.json"]
    try:
        import matplotlib

        matplotlib.use("Agg")
    except ImportError:
        print("matplotlib is not installed: no plots (pip install matplotlib)", file=sys.stderr)
    else:
        plot_bars(rows, out / "probe_bar.png")
        plot_weights(rows, out / "weights.png")
        written += [out / "probe_bar.png", out / "weights.png"]
    print(f"{len(runs)} runs in {len(rows)} rows; wrote " + ", ".join(str(p) for p in written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
