"""``<out>/peers.json`` and ``<out>/peers.md`` from the runs' results (pure functions: tested without running a model)."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any

TARGETS = {"n3": 1.5, "n7": 2.0}  # training speed-up wanted per N (issue 21); other N: none
INFERENCE_TARGET = 1.3


def _both_sides(ours: list[dict], theirs: list[dict], keys) -> dict:
    """``{key: {side: spread of its values}}`` for each of ``keys``."""
    return {
        key: {
            "rerank-lab": spread([r[key] for r in ours]),
            "sentence-transformers": spread([r[key] for r in theirs]),
        }
        for key in keys
    }


def spread(values: Sequence[float]) -> dict:
    """Median, min and max of repeated figures."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def geometric_mean(values: Sequence[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values))


def _paired(ours: list[dict], theirs: list[dict], key: str) -> list[float]:
    """Ratio ours/theirs of ``key`` for each repeat (runs made back to back)."""
    return [a[key] / b[key] for a, b in zip(ours, theirs, strict=True)]


def _equal_settings(ours: list[dict], theirs: list[dict]) -> dict:
    """Evidence that both sides ran the same computation: the groups each loss received, the
    first step's loss (same initial adapters, before any update) and the prompt tokens."""
    first = [
        abs(a["losses"][0] - b["losses"][0]) / abs(a["losses"][0])
        for a, b in zip(ours, theirs, strict=True)
        if a.get("losses") and b.get("losses")
    ]
    return {
        "same_groups": all(a.get("groups") == b.get("groups") for a, b in zip(ours, theirs, strict=True)),
        "first_step_loss_rel_difference": max(first) if first else None,
        "token_mismatches": sum(r.get("token_mismatches", 0) for r in theirs),
    }


def train_config(ours: list[dict], theirs: list[dict]) -> dict:
    """One (objective, N): speed, memory and dev quality of both sides over the seeds."""
    rates = _paired(ours, theirs, "pairs_per_s")
    dev = {
        "rerank-lab": [r["dev_ndcg10"] for r in ours],
        "sentence-transformers": [r["dev_ndcg10"] for r in theirs],
    }
    means = {side: statistics.fmean(values) for side, values in dev.items()}
    seed_range = max(max(values) - min(values) for values in dev.values())
    difference = means["rerank-lab"] - means["sentence-transformers"]
    return {
        "speedup": statistics.median(rates),
        "speedup_per_repeat": rates,
        **_both_sides(ours, theirs, ("pairs_per_s", "peak_rss_mib")),
        "memory_ratio": statistics.median(_paired(ours, theirs, "peak_rss_mib")),
        "dev_ndcg10": dev,
        "dev_ndcg10_mean": means,
        "dev_ndcg10_difference": difference,
        "dev_seed_range": seed_range,
        # equal learning: the two sides' means differ by no more than one side's seeds do
        "equal_quality": abs(difference) <= seed_range,
        **_equal_settings(ours, theirs),
        "runs": {"rerank-lab": ours, "sentence-transformers": theirs},
    }


def inference_summary(ours: list[dict], theirs: list[dict]) -> dict:
    """Inference: speed-up over the repeats, memory, and the largest score difference on any pair."""
    differences = [
        abs(a - b)
        for mine, other in zip(ours, theirs, strict=True)
        for row_a, row_b in zip(mine["scores"], other["scores"], strict=True)
        for a, b in zip(row_a, row_b, strict=True)
    ]
    strip = [{k: v for k, v in r.items() if k != "scores"} for r in ours + theirs]
    return {
        "speedup": statistics.median(_paired(ours, theirs, "pairs_per_s")),
        "speedup_per_repeat": _paired(ours, theirs, "pairs_per_s"),
        "pairs": ours[0]["pairs"],
        **_both_sides(ours, theirs, ("pairs_per_s", "peak_rss_mib")),
        "max_abs_score_difference": max(differences),
        "runs": strip,
    }


def summarize(specs: list[dict], results: list[dict], header: dict) -> dict:
    """``peers.json``: per configuration figures, the headline ratios and the targets."""
    train: dict[str, Any] = {}
    infer: dict[str, list] = {"rerank-lab": [], "sentence-transformers": []}
    for spec, result in zip(specs, results, strict=True):
        if spec["kind"] == "infer":
            infer[spec["side"]].append(result)
            continue
        sides = train.setdefault(f"{spec['objective']}/n{spec['negatives']}", {})
        sides.setdefault(spec["side"], []).append(result | {"seed": spec["seed"]})
    configs = {key: train_config(s["rerank-lab"], s["sentence-transformers"]) for key, s in train.items()}
    by_n: dict[str, list[float]] = {}
    for key, config in configs.items():
        by_n.setdefault(key.split("/")[1], []).append(config["speedup"])
    inference = inference_summary(infer["rerank-lab"], infer["sentence-transformers"])
    report = {
        **header,
        "train_speedup": {n: geometric_mean(values) for n, values in by_n.items()},
        "memory_ratio": max(c["memory_ratio"] for c in configs.values()),
        "inference_speedup": inference["speedup"],
        "max_abs_score_difference": inference["max_abs_score_difference"],
        "equal_quality": all(c["equal_quality"] for c in configs.values()),
        "equal_settings": all(
            c["same_groups"]
            and c["token_mismatches"] == 0
            and (c["first_step_loss_rel_difference"] or 0) < 1e-3
            for c in configs.values()
        ),
        "load_average": spread([r[k] for r in results for k in ("load_before", "load_after")]),
        "train": configs,
        "inference": inference,
    }
    report["targets"] = {
        **{f"train_speedup_{n}>={t}": report["train_speedup"].get(n, 0) >= t for n, t in TARGETS.items()},
        "memory_ratio<=1": report["memory_ratio"] <= 1,
        f"inference_speedup>={INFERENCE_TARGET}": report["inference_speedup"] >= INFERENCE_TARGET,
        "equal_quality": report["equal_quality"],
        "equal_settings": report["equal_settings"],
        "max_abs_score_difference<1e-3": report["max_abs_score_difference"] < 1e-3,
    }
    return report


def _range(figure: dict, digits: int = 2) -> str:
    return f"{figure['median']:.{digits}f} ({figure['min']:.{digits}f}-{figure['max']:.{digits}f})"


def markdown(report: dict) -> str:
    """The Markdown report (``<out>/peers.md``): the table a reader wants, with the conditions it was measured under."""
    load = report["load_average"]
    lines = [
        "# rerank-lab vs sentence-transformers",
        "",
        f"{report['device']}, {report['threads']} thread per run, one run at a time, sides alternating; "
        f"load average {load['min']:.1f}-{load['max']:.1f} (median {load['median']:.1f}) over the runs"
        + (" (--quick: a smoke run, not a measurement)" if report["quick"] else "")
        + ". Figures: median (min-max) over the repeats.",
        "",
        "| training | rerank-lab pairs/s | sentence-transformers pairs/s | speed-up | peak RSS MiB (ours / theirs) "
        "| dev nDCG@10 per seed (ours / theirs) |",
        "|---|---|---|---|---|---|",
    ]
    for key, config in report["train"].items():
        rates, rss, dev = config["pairs_per_s"], config["peak_rss_mib"], config["dev_ndcg10"]
        lines.append(
            f"| {key} | {_range(rates['rerank-lab'])} | {_range(rates['sentence-transformers'])} "
            f"| {config['speedup']:.2f}x | {rss['rerank-lab']['median']:.0f} / {rss['sentence-transformers']['median']:.0f} "
            f"| {', '.join(f'{v:.3f}' for v in dev['rerank-lab'])} / {', '.join(f'{v:.3f}' for v in dev['sentence-transformers'])} |"
        )
    inference = report["inference"]
    rates, rss = inference["pairs_per_s"], inference["peak_rss_mib"]
    lines += [
        "",
        "| inference | rerank-lab pairs/s | CrossEncoder.predict pairs/s | speed-up | peak RSS MiB (ours / theirs) | max score difference |",
        "|---|---|---|---|---|---|",
        f"| {inference['pairs']} pairs | {_range(rates['rerank-lab'])} | {_range(rates['sentence-transformers'])} "
        f"| {inference['speedup']:.2f}x | {rss['rerank-lab']['median']:.0f} / {rss['sentence-transformers']['median']:.0f} "
        f"| {inference['max_abs_score_difference']:.1e} |",
        "",
        "Targets: "
        + ", ".join(f"{name} {'met' if ok else 'MISSED'}" for name, ok in report["targets"].items()),
        "",
    ]
    return "\n".join(lines)
