"""The report's figures, rendered to PNG bytes (matplotlib, Agg backend) so they can be written atomically.

* ``probe_bar.png``: final MRB average per row, mean ± std over seeds (dots: single seeds).
* ``weights.png``: W+ and W− over training steps, one line per row (mean over seeds, band ± std).
* ``intervals.png``: every comparison with its 95% two-level interval (seeds, queries) and the paper's value.
"""

from __future__ import annotations

import io
import math
import statistics

from .runs import WEIGHT_KEYS, Row, mean_curve, mean_std

METADATA = {"Software": "experiments.report (rerank-lab)"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120, metadata=METADATA)
    _pyplot().close(fig)
    return buffer.getvalue()


def row_style(row: Row, index: int) -> dict:
    colors = {"sft": "tab:blue", "cl": "tab:orange"}
    color = colors.get(row.weight, f"C{2 + index % 8}") if not row.extras else f"C{index % 10}"
    return {"color": color, "linestyle": "--" if row.direction == "cl" else "-"}


def bars(rows: list[Row]) -> bytes:
    plt = _pyplot()
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
    return _png(fig)


def weights(rows: list[Row]) -> bytes:
    plt = _pyplot()
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
            ax.plot(steps, means, label=f"{row.label} (n={len(row.runs)})", **style)
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
    handles, _ = axes[0].get_legend_handles_labels()
    if handles:
        axes[0].legend(fontsize=7)
    fig.suptitle("Training weights per cell (solid: D_SFT, dashed: D_CL; mean ± std over seeds)", fontsize=10)
    fig.tight_layout()
    return _png(fig)


def intervals(results: list[dict]) -> bytes:
    """Forest plot: mean and 95% two-level interval per comparison (points), the paper's value as a cross."""
    plt = _pyplot()
    shown = [r for r in results if r.get("interval")]
    fig, ax = plt.subplots(figsize=(9, 0.55 * max(len(shown), 1) + 1.9))
    colors = {"holds": "tab:green", "contradicted": "tab:red"}
    for y, result in enumerate(reversed(shown)):
        interval = result["interval"]
        low, high, estimate = 100 * interval["low"], 100 * interval["high"], 100 * result["estimate"]
        color = colors.get(result["verdict"], "tab:gray") if result["claim"] else "tab:blue"
        ax.plot([low, high], [y, y], color=color, linewidth=2.5)
        ax.plot([estimate], [y], "o", color=color)
        ax.plot([result["paper"]], [y], "x", color="black")
    if not shown:
        ax.text(0.5, 0.5, "no per-query data: no intervals", ha="center", va="center", transform=ax.transAxes)
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_yticks(range(len(shown)), [r["title"] for r in reversed(shown)], fontsize=8)
    ax.set_xlabel("difference in MRB average (points); x: the paper's value")
    ax.set_title(
        "95% two-level bootstrap intervals (seeds, then queries)\n"
        "green: the claim holds, red: contradicted, gray: inconclusive or not valid, blue: not a claim",
        fontsize=9,
    )
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return _png(fig)
