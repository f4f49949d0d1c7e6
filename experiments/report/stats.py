"""Seed-level statistics of a comparison between probe cells: the training run (seed) is the unit.

For one comparison (a function ``f`` of the cells' MRB averages) over ``n`` seeds shared by all its
cells, with each run's per-query values on the same queries:

* per-seed paired values ``d_s = f({cell: average of the cell's run with seed s})``;
* the paired t-test of ``mean(d) = 0`` (``scipy.stats.ttest_1samp``, two-sided) and, as a check that
  needs no normality, the exact sign-flip test (all ``2^n`` sign patterns of ``d``; Monte Carlo above
  :data:`EXACT_SIGN_FLIP_MAX` seeds). Its smallest possible p is ``2 / 2^n``: at 3 seeds 0.25;
* an interval that covers both sources of noise: a two-level percentile bootstrap that draws seeds
  with replacement, then, for every drawn seed, the queries of each task with replacement (the same
  query draw for every cell of that seed, so cells stay paired);
* Holm's step-down adjustment of the p-values over the declared claims;
* the minimum detectable effect (MDE) of the design that ran: the true mean difference a paired
  t-test over ``n`` seeds, at the claim's level, finds with 80% power given the observed SD of ``d``
  (noncentral t, ``scipy.stats.nct``).

docs/science.md §7 says why this design (and not a bootstrap over queries alone, or a mixed model).

Why the two-level bootstrap and the sign-flip enumeration are written here: ``scipy.stats.bootstrap``
resamples one level of independent observations, and ``scipy.stats.permutation_test`` draws sign
patterns at random unless told to enumerate, and neither stratifies queries by task inside a drawn
seed; both are a few lines of numpy.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np

ALPHA = 0.05
POWER = 0.80
EXACT_SIGN_FLIP_MAX = 16  # seeds up to which every sign pattern is enumerated (65,536 patterns)
SIGN_FLIP_DRAWS = 100_000
DEFAULT_RESAMPLES = 10_000
_CHUNK = 250  # bootstrap resamples computed at a time (bounds memory: cells x chunk x seeds x queries)

# {cell: [seed index][task] -> per-query values}; every cell has the same seeds, tasks and query order.
SeedTable = Mapping[str, Sequence[Mapping[str, np.ndarray]]]


def paired_t(values: Sequence[float]) -> dict:
    """Two-sided one-sample t-test of the per-seed values against 0: ``{"t", "p", "df"}``.

    Fewer than 2 values: no test (``p`` is None). All values equal: ``p`` is 0 when they are not 0
    (no spread: the sign is certain under the model) and 1 when they are all 0."""
    d = np.asarray(values, dtype=np.float64)
    if d.size < 2:
        return {"t": None, "p": None, "df": None}
    if np.all(d == d[0]):
        return {
            "t": None if d[0] == 0 else math.copysign(math.inf, d[0]),
            "p": float(d[0] == 0),
            "df": d.size - 1,
        }
    from scipy import stats

    result = stats.ttest_1samp(d, 0.0)
    return {"t": float(result.statistic), "p": float(result.pvalue), "df": int(d.size - 1)}


def sign_flip_p(values: Sequence[float], seed: int = 0) -> float | None:
    """Two-sided sign-flip p of ``|mean|``: the share of sign patterns whose ``|mean|`` is at least the
    observed one (the observed pattern included). Exact up to :data:`EXACT_SIGN_FLIP_MAX` values."""
    d = np.asarray(values, dtype=np.float64)
    if d.size == 0:
        return None
    observed = abs(d.mean())
    if d.size <= EXACT_SIGN_FLIP_MAX:
        signs = np.array(list(itertools.product((1.0, -1.0), repeat=d.size)))
    else:
        signs = np.random.default_rng(seed).choice((1.0, -1.0), size=(SIGN_FLIP_DRAWS, d.size))
        signs[0] = 1.0
    flipped = np.abs(signs @ d) / d.size
    return float(np.mean(flipped >= observed - 1e-12 * max(1.0, observed)))


def min_sign_flip_p(n: int) -> float:
    """The smallest p the exact sign-flip test can give with ``n`` seeds (all seeds on one side)."""
    return 1.0 if n < 1 else min(1.0, 2.0 / 2**n)


def holm(pvalues: Mapping[str, float | None]) -> dict[str, float | None]:
    """Holm's step-down adjusted p-values (monotone, capped at 1); ``None`` stays ``None`` and does not
    count towards the number of tests."""
    tested = sorted((p, key) for key, p in pvalues.items() if p is not None)
    m = len(tested)
    adjusted: dict[str, float | None] = {key: None for key, p in pvalues.items() if p is None}
    running = 0.0
    for i, (p, key) in enumerate(tested):
        running = max(running, min(1.0, (m - i) * p))
        adjusted[key] = running
    return adjusted


def mde(sd: float | None, n: int, alpha: float = ALPHA, power: float = POWER) -> float | None:
    """Minimum detectable mean difference of a two-sided paired t-test over ``n`` seeds at level
    ``alpha`` with ``power``, for per-seed differences of standard deviation ``sd``. ``None`` when it
    cannot be computed (fewer than 2 seeds or no SD); 0 when the SD is 0."""
    if sd is None or n < 2 or not math.isfinite(sd):
        return None
    if sd == 0:
        return 0.0
    from scipy import optimize, stats

    df, crit = n - 1, stats.t.ppf(1 - alpha / 2, n - 1)

    def shortfall(effect: float) -> float:
        ncp = effect * math.sqrt(n) / sd
        # P(T > crit) + P(T < -crit), the second by symmetry (T(-ncp) = -T(ncp)); scipy's lower tail of
        # nct gives NaN at many degrees of freedom, where that tail is negligible anyway.
        upper, lower = stats.nct.sf(crit, df, ncp), stats.nct.sf(crit, df, -ncp)
        return float(np.nan_to_num(upper) + np.nan_to_num(lower)) - power

    high = sd
    while shortfall(high) < 0:
        high *= 2
    return float(optimize.brentq(shortfall, 0.0, high, xtol=1e-10 * sd))


def run_average(table: Mapping[str, np.ndarray]) -> float:
    return float(np.mean([values.mean() for values in table.values()]))


def seed_averages(cells: SeedTable) -> dict[str, np.ndarray]:
    """``{cell: [average of seed 0, seed 1, ...]}``: each run's MRB average (mean of task means)."""
    return {cell: np.array([run_average(t) for t in runs]) for cell, runs in cells.items()}


Statistic = Callable[[Mapping[str, np.ndarray]], np.ndarray]


def two_level_bootstrap(
    cells: SeedTable,
    statistics: Mapping[str, Statistic],
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    confidence: float = 1 - ALPHA,
) -> dict[str, dict]:
    """Percentile intervals of statistics of the cells' seed-mean averages under a two-level bootstrap.

    Args:
        cells: ``{cell: [per seed: {task: per-query values}]}``; the i-th entry of every cell is the
            same seed, and every run holds the same tasks and queries in the same order.
        statistics: ``{name: f}``, ``f({cell: averages})`` mapping arrays of cell averages (one entry
            per resample) to an array of the statistic.
        resamples: bootstrap resamples B; ``seed``: of ``numpy.random.default_rng``.

    Returns:
        ``{name: {"estimate", "low", "high"}}``: the statistic of the observed seed-mean averages and
        the percentiles of its B resampled values.

    One resample: draw n seeds with replacement; for every drawn seed and task draw that task's queries
    with replacement (as many as it has), the same draw for every cell; a cell's resampled average is
    the mean over drawn seeds of the mean over tasks of the drawn queries' mean.
    """
    names = sorted(cells)
    n = len(cells[names[0]])
    tasks = list(cells[names[0]][0])
    rng = np.random.default_rng(seed)
    seed_draws = rng.integers(0, n, size=(resamples, n))
    totals = np.zeros((len(names), resamples))
    for task in tasks:  # fixed order: the draws depend only on the seed and the data
        matrix = np.stack([np.stack([runs[i][task] for i in range(n)]) for runs in (cells[c] for c in names)])
        q = matrix.shape[-1]  # matrix: [cells, seeds, queries]
        for start in range(0, resamples, _CHUNK):
            stop = min(resamples, start + _CHUNK)
            picked = matrix[:, seed_draws[start:stop]]  # [cells, b, n, queries]
            idx = rng.integers(0, q, size=(stop - start, n, q))
            drawn = np.take_along_axis(picked, idx[None], axis=-1)
            totals[:, start:stop] += drawn.mean(axis=-1).mean(axis=-1)
    resampled = {name: totals[i] / len(tasks) for i, name in enumerate(names)}
    observed = {cell: np.array([values.mean()]) for cell, values in seed_averages(cells).items()}
    tail = 100 * (1 - confidence) / 2
    out = {}
    for key, statistic in statistics.items():
        values = np.asarray(statistic(resampled), dtype=np.float64)
        low, high = np.percentile(values, [tail, 100 - tail])
        out[key] = {
            "estimate": float(np.asarray(statistic(observed))[0]),
            "low": float(low),
            "high": float(high),
        }
    return out


def t_interval(values: Sequence[float], confidence: float = 1 - ALPHA) -> dict | None:
    """Mean and t interval of per-seed values (``None`` below 2 values)."""
    d = np.asarray(values, dtype=np.float64)
    if d.size < 2:
        return None
    from scipy import stats

    half = stats.t.ppf((1 + confidence) / 2, d.size - 1) * d.std(ddof=1) / math.sqrt(d.size)
    return {"mean": float(d.mean()), "low": float(d.mean() - half), "high": float(d.mean() + half)}
