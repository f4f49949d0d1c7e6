"""The report's seed-level statistics: each test against an independent computation, and calibration:
no effect under seed noise rarely gives a claim; a large effect over enough seeds gives 'holds'."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as scipy_stats

from datamodules.metrics import evaluate_run, parse_metric
from experiments.report import analysis, stats
from experiments.report.baselines import random_order_value
from experiments.report.claims import COMPARISONS
from experiments.report.runs import Row, RunRecord


def test_paired_t_is_scipys_one_sample_test():
    values = [0.03, -0.01, 0.05, 0.02, 0.04]
    ours = stats.paired_t(values)
    theirs = scipy_stats.ttest_1samp(values, 0.0)
    assert ours["p"] == pytest.approx(theirs.pvalue) and ours["t"] == pytest.approx(theirs.statistic)
    assert stats.paired_t([0.1])["p"] is None
    assert stats.paired_t([0.1, 0.1, 0.1])["p"] == 0.0 and stats.paired_t([0.0, 0.0])["p"] == 1.0


def test_sign_flip_is_exact_and_its_floor_is_two_over_two_to_the_n():
    values = [0.2, -0.05, 0.1, 0.3]
    observed = abs(np.mean(values))
    patterns = list(itertools.product((1, -1), repeat=4))
    by_hand = sum(abs(np.mean(np.multiply(p, values))) >= observed - 1e-15 for p in patterns) / len(patterns)
    assert stats.sign_flip_p(values) == pytest.approx(by_hand)
    assert stats.sign_flip_p([0.1, 0.2, 0.3]) == stats.min_sign_flip_p(3) == 0.25
    assert stats.min_sign_flip_p(6) == pytest.approx(1 / 32)
    many = list(np.linspace(0.01, 0.2, 18))  # Monte Carlo above 16 seeds, with the observed pattern kept
    assert stats.sign_flip_p(many) == pytest.approx(1 / stats.SIGN_FLIP_DRAWS, abs=3e-5)


def test_holm_step_down():
    adjusted = stats.holm({"a": 0.01, "b": 0.04, "c": 0.03, "d": None})
    assert adjusted == {
        "a": pytest.approx(0.03),
        "c": pytest.approx(0.06),
        "b": pytest.approx(0.06),
        "d": None,
    }
    assert stats.holm({"a": 0.6, "b": 0.7}) == {"a": 1.0, "b": 1.0}


def test_mde_has_the_stated_power_and_shrinks_with_seeds():
    sd, n = 0.06, 6
    effect = stats.mde(sd, n)
    crit = scipy_stats.t.ppf(0.975, n - 1)
    ncp = effect * math.sqrt(n) / sd
    power = scipy_stats.nct.sf(crit, n - 1, ncp) + scipy_stats.nct.cdf(-crit, n - 1, ncp)  # both tails
    assert power == pytest.approx(0.8, abs=1e-6)
    assert stats.mde(sd, 12) < effect < stats.mde(sd, 3)
    assert stats.mde(sd, 6, alpha=0.01) > effect  # a Holm-adjusted level needs a larger effect
    # many seeds: the normal approximation (z_0.975 + z_0.8) * sd / sqrt(n)
    assert stats.mde(1.0, 400) == pytest.approx((1.959964 + 0.841621) / 20, rel=0.01)
    assert stats.mde(0.05, 1) is None and stats.mde(0.0, 5) == 0.0


def _cells(seed_values: dict[str, list[np.ndarray]]) -> dict[str, list[dict[str, np.ndarray]]]:
    return {cell: [{"t": v} for v in runs] for cell, runs in seed_values.items()}


def test_two_level_bootstrap_covers_seed_noise_that_a_query_bootstrap_misses():
    rng = np.random.default_rng(0)
    queries = rng.normal(0.5, 0.02, 200)  # query noise small
    offsets = rng.normal(0, 0.05, 6)  # seed noise large: paired differences vary by seed
    a = [queries + o for o in offsets]
    b = [queries.copy() for _ in offsets]
    stat = {"d": lambda m: m["A"] - m["B"]}
    two_level = stats.two_level_bootstrap(_cells({"A": a, "B": b}), stat, resamples=2000, seed=1)["d"]
    assert two_level == stats.two_level_bootstrap(_cells({"A": a, "B": b}), stat, resamples=2000, seed=1)["d"]
    assert two_level["estimate"] == pytest.approx(offsets.mean())
    # The width follows the seed SD / sqrt(n) (percentile bootstrap: a little narrower than the t interval).
    t_half = scipy_stats.t.ppf(0.975, 5) * offsets.std(ddof=1) / math.sqrt(6)
    assert 0.6 * t_half < (two_level["high"] - two_level["low"]) / 2 < 1.2 * t_half
    # With no seed noise at all, only query noise is left: about the query bootstrap's width.
    flat = stats.two_level_bootstrap(_cells({"A": [queries + 0.01] * 6, "B": b}), stat, 2000, 1)["d"]
    assert flat["high"] - flat["low"] < 1e-9  # paired, identical per query: no spread at all


def _record(weight: str, seed: int, final: float) -> RunRecord:
    return RunRecord(Path(f"{weight}-{seed}"), {}, "url", weight, "sft", seed, "finished", final=final)


def _simulate(effect: float, seed_sd: float, n_seeds: int, rng, query_sd: float = 0.25, queries: int = 150):
    """One synthetic sweep: W_SFT x D_SFT vs W_CL x D_SFT, per-query values with query and seed noise."""
    base = rng.normal(0.5, query_sd, queries)
    rows, tables = {}, {}
    for weight, shift in (("sft", effect), ("cl", 0.0)):
        runs = []
        for s in range(n_seeds):
            values = base + shift + rng.normal(0, seed_sd) + rng.normal(0, 0.05, queries)
            run = _record(weight, s, float(values.mean()))
            tables[id(run)] = {"t": {f"q{i:03d}": float(v) for i, v in enumerate(values)}}
            runs.append(run)
        rows[(weight, "sft")] = Row("url", weight, "sft", {}, runs)
    comparison = next(c for c in COMPARISONS if c.key == "weight_at_dsft")
    results = analysis.run_comparisons([comparison], rows, analysis.Tables(tables, {}), resamples=400, seed=0)
    return results[0]["verdict"]


def test_no_effect_under_seed_noise_rarely_gives_a_claim():
    """Seed SD 6 points, no true effect, 8 seeds: the rule claims a side in at most ~alpha of sweeps."""
    rng = np.random.default_rng(42)
    verdicts = [_simulate(0.0, 0.06, 8, rng) for _ in range(120)]
    claimed = sum(v != "inconclusive" for v in verdicts)
    assert claimed / len(verdicts) <= 0.06, claimed
    # At 3 seeds nothing can be claimed, whatever the data.
    assert {_simulate(0.0, 0.06, 3, rng) for _ in range(20)} == {"inconclusive"}
    assert _simulate(0.3, 0.01, 3, rng) == "inconclusive"


def test_a_large_effect_over_eight_seeds_holds():
    rng = np.random.default_rng(7)
    verdicts = [_simulate(0.10, 0.03, 8, rng) for _ in range(40)]
    assert sum(v == "holds" for v in verdicts) >= 38, verdicts
    assert _simulate(-0.10, 0.03, 8, rng) == "contradicted"


@pytest.mark.parametrize("metric", ["ndcg@3", "recall@3", "mrr@3", "ndcg@10"])
def test_random_order_is_the_exact_mean_over_all_orders(metric):
    candidates = ["a", "b", "c", "d", "e"]
    grades = {"b": 2, "d": 1, "x": 1, "c": 0}  # x is judged relevant but not among the candidates
    spec = parse_metric(metric)
    values = []
    for order in itertools.permutations(candidates):
        run = {"q": {doc: float(len(order) - i) for i, doc in enumerate(order)}}
        values.append(evaluate_run(run, {"q": grades}, spec)["q"])
    assert random_order_value(candidates, grades, spec) == pytest.approx(np.mean(values), abs=1e-12)
    assert random_order_value([], grades, spec) == 0.0
