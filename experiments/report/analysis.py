"""The report's numbers: each comparison tested over seeds, the baselines, the validity gates and the
weight mechanism. Pure functions of the loaded runs and their per-query tables (no file is read here).

Verdict rule (docs/science.md §7): a comparison ``holds`` (or is ``contradicted``) only when, over the
seeds, (1) the Holm-adjusted paired t-test is below ``alpha``, (2) the Holm-adjusted exact sign-flip
p is below ``alpha`` too (a distribution-free check: at few seeds it cannot get there, and then nothing
is claimed), and (3) the two-level bootstrap interval excludes 0 on the same side; the side decides
between holds and contradicted (the paper's sign). Otherwise it is ``inconclusive``, with the MDE.
When a validity gate fails, every claim reads ``setting not valid (...)`` instead.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from . import stats
from .baselines import FIRST_STAGE, RANDOM_ORDER, ZERO_SHOT, PerQuery
from .claims import Cell, Comparison, cell_name
from .runs import WEIGHT_KEYS, Row, RunRecord

HOLDS, CONTRADICTED, INCONCLUSIVE = "holds", "contradicted", "inconclusive"
NOT_VALID = "setting not valid"
NO_DATA = "not tested"
FIRST_STAGE_MARGIN = 0.02  # gate: the best plain cell may trail the first stage by at most 2 points
SEED_SD_LIMIT = 0.04  # gate (informational): paired seed SD of the contrasts above 4 points


class Tables:
    """Per-query values of every run (by ``id(run)``) and of the baselines, aligned on one query order."""

    def __init__(
        self,
        runs: Mapping[int, PerQuery],
        baselines: Mapping[str, PerQuery],
        failed: Mapping[int, str] | None = None,
    ) -> None:
        self.runs, self.baselines, self.failed = dict(runs), dict(baselines), dict(failed or {})
        first = next(iter(self.runs.values()), None)
        self.order = {task: sorted(values) for task, values in (first or {}).items()}
        # Each run's values in the common order, computed once (every comparison and baseline reads them).
        self.arrays = {key: self.aligned(values) for key, values in self.runs.items()}

    def aligned(self, per_query: PerQuery) -> dict[str, np.ndarray] | None:
        """The values in the common query order; ``None`` when the tasks or queries differ."""
        if {t: sorted(v) for t, v in per_query.items()} != self.order:
            return None
        return {
            t: np.array([per_query[t][q] for q in qids], dtype=np.float64) for t, qids in self.order.items()
        }

    def seeds_of(self, row: Row) -> dict[Any, dict[str, np.ndarray]] | None:
        """``{seed: {task: values}}`` of a row (runs sharing a seed averaged query by query)."""
        by_seed: dict[Any, list[dict[str, np.ndarray]]] = {}
        for run in row.runs:
            table = self.arrays.get(id(run))
            if table is None:
                return None
            by_seed.setdefault(run.seed, []).append(table)
        return {
            seed: {t: np.mean([x[t] for x in group], axis=0) for t in self.order}
            for seed, group in by_seed.items()
        }


def _seed_key(seed: Any) -> tuple:
    return (str(type(seed)), seed)


def _finals_by_seed(row: Row) -> dict[Any, float]:
    by_seed: dict[Any, list[float]] = {}
    for run, final in zip(row.runs, row.finals, strict=True):
        by_seed.setdefault(run.seed, []).append(final)
    return {s: statistics.fmean(v) for s, v in by_seed.items()}


def seed_level(
    fn, cells: Mapping[Cell, Row], order: Sequence[Cell], tables: Tables, resamples: int, seed: int
) -> dict:
    """Per-seed values, paired t, sign-flip and the two-level interval of one statistic ``fn``."""
    found = {c: tables.seeds_of(cells[c]) for c in order}
    per_query = {c: v for c, v in found.items() if v is not None}
    if len(per_query) == len(found):
        shared = sorted(set.intersection(*(set(v) for v in per_query.values())), key=_seed_key)
        averages = {c: {s: stats.run_average(per_query[c][s]) for s in shared} for c in order}
    else:  # no per-query data: the per-seed test still runs on the recorded finals
        finals = {c: _finals_by_seed(cells[c]) for c in order}
        shared = sorted(set.intersection(*(set(f) for f in finals.values())), key=_seed_key)
        averages = {c: {s: finals[c][s] for s in shared} for c in order}
    values = [float(fn({c: averages[c][s] for c in order})) for s in shared]
    out: dict[str, Any] = {
        "seeds": shared,
        "values": values,
        "mean": statistics.fmean(values) if values else None,
        "std": statistics.stdev(values) if len(values) > 1 else None,
        "t_test": stats.paired_t(values),
        "sign_flip_p": stats.sign_flip_p(values),
        "interval": None,
    }
    if shared and len(per_query) == len(found):
        names = {c: cell_name(c) for c in order}
        table = {names[c]: [per_query[c][s] for s in shared] for c in order}
        boot = stats.two_level_bootstrap(
            table, {"x": lambda m: fn({c: m[names[c]] for c in order})}, resamples, seed
        )["x"]
        out["estimate"] = boot["estimate"]
        out["interval"] = {"low": boot["low"], "high": boot["high"]}
    else:
        reasons = [tables.failed[id(r)] for c in order for r in cells[c].runs if id(r) in tables.failed]
        out["why"] = reasons[0] if reasons else "the runs were validated on different tasks or queries"
        if values:
            out["estimate"] = float(fn({c: np.mean(list(averages[c].values())) for c in order}))
    return out


def run_comparisons(
    comparisons: Sequence[Comparison],
    cells: Mapping[Cell, Row],
    tables: Tables,
    resamples: int,
    seed: int,
    alpha: float = stats.ALPHA,
) -> list[dict]:
    """Every comparison over seeds; Holm over the comparisons that carry a claim; the verdicts."""
    results = []
    for comp in comparisons:
        result = {
            "key": comp.key,
            "title": comp.title,
            "claim": comp.claim,
            "paper": comp.paper,
            "paper_sign": comp.sign,
            "cells": [cell_name(c) for c in comp.cells],
            **seed_level(comp.fn, cells, comp.cells, tables, resamples, seed),
        }
        result["n_seeds"] = len(result["values"])
        results.append(result)
    claimed = [r for r in results if r["claim"]]
    m = len(claimed)
    t_holm = stats.holm({r["key"]: r["t_test"]["p"] for r in claimed})
    flip_holm = stats.holm({r["key"]: r["sign_flip_p"] if r["n_seeds"] >= 2 else None for r in claimed})
    for r in results:
        level = alpha / m if r["claim"] and m else alpha  # the MDE at Holm's strictest step
        r["p_t"] = r["t_test"]["p"]
        r["p_t_holm"] = t_holm.get(r["key"]) if r["claim"] else r["p_t"]
        r["p_sign_flip_holm"] = flip_holm.get(r["key"]) if r["claim"] else r["sign_flip_p"]
        r["min_sign_flip_p"] = stats.min_sign_flip_p(r["n_seeds"])
        r["mde"] = stats.mde(r["std"], r["n_seeds"], level)
        r["mde_alpha"] = level
        r["verdict"] = verdict(r, alpha)
    return results


def verdict(result: dict, alpha: float = stats.ALPHA) -> str:
    """holds / contradicted / inconclusive from the adjusted seed-level tests and the interval."""
    if result["n_seeds"] == 0:
        return NO_DATA
    interval, p_t, p_flip = result["interval"], result["p_t_holm"], result["p_sign_flip_holm"]
    if interval is None or p_t is None or p_flip is None:
        return INCONCLUSIVE
    side = 1 if interval["low"] > 0 else -1 if interval["high"] < 0 else 0
    mean_side = np.sign(result["mean"] or 0.0)
    if side == 0 or side != mean_side or p_t >= alpha or p_flip >= alpha:
        return INCONCLUSIVE
    return HOLDS if side * result["paper_sign"] > 0 else CONTRADICTED


def design_reach(results: Sequence[dict], alpha: float = stats.ALPHA) -> str | None:
    """A sentence when no claim can reach significance with the seeds that ran (said up front)."""
    claimed = [r for r in results if r["claim"] and r["n_seeds"]]
    if not claimed:
        return None
    n = min(r["n_seeds"] for r in claimed)
    level = alpha / len(claimed)
    if stats.min_sign_flip_p(n) < level:
        return None
    needed = next(k for k in range(1, 64) if stats.min_sign_flip_p(k) < level)
    return (
        f"This design cannot reach significance: with {n} paired seed(s), the exact sign-flip test's "
        f"smallest p is {stats.min_sign_flip_p(n):.3g}, above the level {level:.3g} that the first of "
        f"{len(claimed)} Holm-adjusted claims needs; no claim can hold or be contradicted whatever the "
        f"data. At least {needed} seeds are needed."
    )


# ---- baselines and gates ------------------------------------------------------------------------
def against_baselines(rows: Sequence[Row], tables: Tables, resamples: int, seed: int) -> list[dict]:
    """Each row minus each baseline, per seed and with the two-level interval (the baseline is fixed)."""
    out = []
    for row in rows:
        seeds = tables.seeds_of(row)
        entry: dict[str, Any] = {
            "row": row.label,
            "cell": cell_name((row.weight, row.direction)),
            "baselines": {},
        }
        for name, per_query in tables.baselines.items():
            base = tables.aligned(per_query)
            if seeds is None or base is None:
                continue
            order = sorted(seeds, key=_seed_key)
            table = {"row": [seeds[s] for s in order], "base": [base for _ in order]}
            boot = stats.two_level_bootstrap(table, {"d": lambda m: m["row"] - m["base"]}, resamples, seed)[
                "d"
            ]
            avg = stats.seed_averages(table)
            entry["baselines"][name] = {
                "value": float(avg["base"][0]),
                "per_seed": [float(x) for x in avg["row"] - avg["base"]],
                "estimate": boot["estimate"],
                "low": boot["low"],
                "high": boot["high"],
            }
        out.append(entry)
    return out


def gates(rows: Sequence[Row], versus: Sequence[dict], results: Sequence[dict]) -> list[dict]:
    """The validity gates: a failed one makes every verdict 'setting not valid'."""
    out = []
    for name in (RANDOM_ORDER, ZERO_SHOT):  # "zero-shot": the untrained judge
        checked = [e for e in versus if name in e["baselines"]]
        failing = [e["row"] for e in checked if e["baselines"][name]["low"] <= 0]
        out.append(
            {
                "gate": f"every trained cell beats the {name}{' judge' if name == ZERO_SHOT else ''} (seed-level interval above 0)",
                "passed": None if not checked else not failing,
                "detail": (
                    ("no --zero-shot runs given" if name == ZERO_SHOT else "no per-query values")
                    if not checked
                    else ("failing: " + "; ".join(failing) if failing else f"{len(checked)} cells")
                ),
            }
        )
    plain = [
        e
        for e, row in zip(versus, rows, strict=True)
        if row.weight == row.direction and row.weight in ("sft", "cl")
    ]
    plain = [e for e in plain if FIRST_STAGE in e["baselines"]]
    if plain:
        best = max(plain, key=lambda e: e["baselines"][FIRST_STAGE]["estimate"])
        estimate, low = best["baselines"][FIRST_STAGE]["estimate"], best["baselines"][FIRST_STAGE]["low"]
        # At this interval width, the smallest mean difference the gate lets through: it tells a reader
        # whether the gate failed on the reranker's level or on the design's query noise.
        needed = -FIRST_STAGE_MARGIN + (estimate - low)
        out.append(
            {
                "gate": f"the best plain cell is not below the first stage by more than {100 * FIRST_STAGE_MARGIN:g} points",
                "passed": low > -FIRST_STAGE_MARGIN,
                "detail": (
                    f"{best['row']}: {100 * estimate:+.2f} points, interval lower bound {100 * low:+.2f}; "
                    f"at this interval's width the gate passes from a mean of {100 * needed:+.2f}"
                ),
                "needed_mean": needed,
            }
        )
    sds = [(r["title"], r["std"]) for r in results if r["std"] is not None]
    wide = [f"{t} ({100 * s:.1f})" for t, s in sds if s > SEED_SD_LIMIT]
    out.append(
        {
            "gate": f"paired seed SD of the contrasts at most {100 * SEED_SD_LIMIT:g} points (informational: else the MDE is stated)",
            "passed": None if not sds else not wide,
            "informational": True,
            "detail": "no contrast with 2+ seeds"
            if not sds
            else ("above: " + "; ".join(wide) if wide else "all within"),
        }
    )
    return out


def apply_gates(results: list[dict], gate_list: Sequence[dict]) -> list[str]:
    """Replace the claims' verdicts by 'setting not valid (...)' when a gate failed; the failed gates."""
    failed = [g["gate"] for g in gate_list if g["passed"] is False and not g.get("informational")]
    if failed:
        for r in results:
            if r["claim"] and r["verdict"] != NO_DATA:
                r["verdict_before_gates"] = r["verdict"]
                r["verdict"] = f"{NOT_VALID} ({'; '.join(failed)})"
    return failed


# ---- the mechanism: W+ and the sum of W- over training ---------------------------------------------
def _window_means(run: RunRecord, key: str, edges: Sequence[float]) -> list[float | None]:
    points = [(float(r["step"]), float(r[key])) for r in run.train if key in r and "step" in r]
    out = []
    for low, high in zip(edges[:-1], edges[1:], strict=True):
        inside = [v for s, v in points if low < s <= high or (low == 0 and s == 0)]
        out.append(statistics.fmean(inside) if inside else None)
    return out


def mechanism(rows: Sequence[Row], windows: int = 3) -> dict:
    """Per row: mean W+ and ΣW- over ``windows`` equal spans of training (mean ± std over seeds), and per
    seed the ratio W_CL / W_SFT of their means over training for rows that differ only by weight."""
    last = max(
        (float(r["step"]) for row in rows for run in row.runs for r in run.train if "step" in r), default=0
    )
    edges = [last * i / windows for i in range(windows + 1)]
    table = []
    for row in rows:
        entry: dict[str, Any] = {
            "row": row.label,
            "cell": cell_name((row.weight, row.direction)),
            "windows": {},
        }
        for key in WEIGHT_KEYS:
            per_run = [_window_means(run, key, edges) for run in row.runs]
            cols = []
            for i in range(windows):
                values = [x for v in per_run if (x := v[i]) is not None]
                cols.append(
                    {
                        "mean": statistics.fmean(values) if values else None,
                        "std": statistics.stdev(values) if len(values) > 1 else None,
                    }
                )
            entry["windows"][key] = cols
        table.append(entry)
    ratios = []
    for cl in rows:
        if cl.weight != "cl":
            continue
        for sft in rows:
            if sft.weight == "sft" and sft.direction == cl.direction and sft.extras == cl.extras:
                ratios.append(_ratio(cl, sft))
    return {"edges": edges, "rows": table, "ratios": ratios}


def _overall(run: RunRecord, key: str) -> float | None:
    values = [float(r[key]) for r in run.train if key in r]
    return statistics.fmean(values) if values else None


def _ratio(cl: Row, sft: Row) -> dict:
    out: dict[str, Any] = {"cl": cl.label, "sft": sft.label, "direction": cl.direction}
    for key in WEIGHT_KEYS:
        a = {run.seed: _overall(run, key) for run in cl.runs}
        b = {run.seed: _overall(run, key) for run in sft.runs}
        seeds = sorted((s for s in a if s in b and a[s] is not None and b[s]), key=_seed_key)
        per_seed = [a[s] / b[s] for s in seeds]
        interval = stats.t_interval(per_seed)
        out[key] = {
            "seeds": seeds,
            "per_seed": per_seed,
            "mean": statistics.fmean(per_seed) if per_seed else None,
            "interval": interval,
        }
    return out
