"""Bootstrap resampling: the index stream, percentile intervals, bootstrap means and
differences, the paired accuracy bootstrap and Spearman's rho with a bootstrap interval.

Resamples come from :func:`iter_bootstrap_indices`, seeded through
``np.random.default_rng(seed)`` only: a fixed seed gives identical results and no global
random state is touched.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Iterator

import numpy as np
from scipy import stats as sps

from .._config import check
from .result import TestResult, check_level, check_n_boot, pair, paired_booleans, vector

__all__ = ["bootstrap_diff_ci", "bootstrap_indices", "bootstrap_mean_ci", "iter_bootstrap_indices",
           "paired_bootstrap", "percentile_ci", "spearman_ci"]

_BLOCK_ELEMENTS = 1 << 21  # indices drawn per block: bounds memory of the bootstrap loops


def iter_bootstrap_indices(n: int, n_boot: int, seed=0) -> Iterator[np.ndarray]:
    """Bootstrap resamples of ``range(n)`` in blocks of rows, ``n_boot`` rows in all.

    Each row is ``n`` indices drawn uniformly with replacement. Blocks hold about two million
    indices, so memory stays bounded for large ``n * n_boot``. The block sizes depend only on
    ``n`` and ``n_boot``, so the concatenated stream is a deterministic function of
    ``(n, n_boot, seed)`` and equals :func:`bootstrap_indices`.

    Args:
        n: number of observations (>= 1).
        n_boot: number of resamples (>= 1).
        seed: anything ``np.random.default_rng`` accepts (an int, a ``SeedSequence``).

    Yields:
        ``int64`` arrays of shape ``[rows, n]``.
    """
    check(isinstance(n, (int, np.integer)) and n >= 1, "n", n, "an integer >= 1")
    n_boot = check_n_boot(n_boot)
    rng = np.random.default_rng(seed)
    rows = max(1, _BLOCK_ELEMENTS // int(n))
    for start in range(0, n_boot, rows):
        yield rng.integers(0, n, size=(min(rows, n_boot - start), int(n)))


def bootstrap_indices(n: int, n_boot: int, seed=0) -> np.ndarray:
    """All bootstrap resamples at once: ``int64[n_boot, n]`` (see :func:`iter_bootstrap_indices`)."""
    return np.concatenate(list(iter_bootstrap_indices(n, n_boot, seed)), axis=0)


def percentile_ci(replicates, level: float = 0.95) -> tuple[float, float]:
    """The percentile interval of bootstrap replicates.

    Returns:
        ``(lo, hi)``: the ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles (linear
        interpolation), so ``lo <= hi`` and both lie within the replicates' range.
    """
    level = check_level(level)
    reps = vector(replicates, "replicates", min_n=1)
    lo, hi = np.quantile(reps, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def _mean_replicates(values: np.ndarray, n_boot: int, seed) -> np.ndarray:
    """Means of ``values`` over each bootstrap resample."""
    return np.concatenate([values[idx].mean(axis=1) for idx in iter_bootstrap_indices(values.size, n_boot, seed)])


def _bootstrap_result(name: str, estimate: float, reps: np.ndarray, n: int, level: float,
                      note: str = "") -> TestResult:
    """Percentile CI, bootstrap z and the centred two-sided p-value of ``reps``."""
    lo, hi = percentile_ci(reps, level)
    centred = reps - reps.mean()
    pvalue = (1 + int(np.sum(np.abs(centred) >= abs(estimate)))) / (1 + reps.size)
    se = float(reps.std(ddof=1)) if reps.size > 1 else math.nan
    z = estimate / se if se > 0 else math.nan
    return TestResult(name, z, min(1.0, pvalue), estimate, lo, hi, n, level, note)


# ----------------------------------------------------------------------------- rank correlation

def _row_pearson(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Pearson correlation of each row pair; ``nan`` where a row is constant."""
    du = u - u.mean(axis=1, keepdims=True)
    dv = v - v.mean(axis=1, keepdims=True)
    denom = np.sqrt((du * du).sum(axis=1) * (dv * dv).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (du * dv).sum(axis=1) / denom
    return np.where(denom > 0, r, np.nan)


def spearman_ci(x, y, n_boot: int = 2000, level: float = 0.95, seed=0) -> TestResult:
    """Spearman's rho with scipy's p-value and a percentile bootstrap interval over pairs.

    Resamples in which ``x`` or ``y`` is constant have no rho; they are dropped and the note
    says how many replicates were used. If fewer than half of ``n_boot`` (or fewer than 2)
    remain, the interval is ``nan``.

    Returns:
        statistic = estimate = rho (``scipy.stats.spearmanr``), its two-sided p-value, and
        the bootstrap interval.
    """
    u, v = pair(x, y, ("x", "y"))
    n_boot, level = check_n_boot(n_boot), check_level(level)
    res = sps.spearmanr(u, v)
    rho = float(res.statistic)
    reps = np.concatenate([_row_pearson(sps.rankdata(u[idx], axis=1), sps.rankdata(v[idx], axis=1))
                           for idx in iter_bootstrap_indices(u.size, n_boot, seed)])
    reps = reps[np.isfinite(reps)]
    enough = reps.size >= max(2, math.ceil(n_boot / 2))
    lo, hi = percentile_ci(reps, level) if enough else (math.nan, math.nan)
    return TestResult("spearman", rho, float(res.pvalue), rho, lo, hi, u.size, level,
                      note=f"bootstrap replicates used: {reps.size}/{n_boot}")


# ----------------------------------------------------------------------------- bootstrap means

def bootstrap_mean_ci(x, n_boot: int = 2000, level: float = 0.95, seed=0) -> TestResult:
    """Mean of ``x`` with a percentile bootstrap interval (interval only: p-value ``nan``)."""
    values = vector(x, "x")
    n_boot, level = check_n_boot(n_boot), check_level(level)
    reps = _mean_replicates(values, n_boot, seed)
    lo, hi = percentile_ci(reps, level)
    mean = float(values.mean())
    return TestResult("bootstrap_mean", mean, math.nan, mean, lo, hi, values.size, level)


def bootstrap_diff_ci(a, b, paired: bool, n_boot: int = 2000, level: float = 0.95, seed=0) -> TestResult:
    """Difference of means ``mean(a) - mean(b)`` with a percentile bootstrap interval.

    ``paired=True`` resamples the pairs (``a`` and ``b`` must have equal length);
    ``paired=False`` resamples each group on its own (independent streams spawned from
    ``seed``). The p-value is two-sided: ``(1 + #{|r - mean(r)| >= |estimate|}) / (1 + n_boot)``
    over the replicates ``r`` (the replicate distribution shifted to the null of no
    difference); statistic = estimate / bootstrap standard error.
    """
    check(isinstance(paired, (bool, np.bool_)), "paired", paired, "True or False")
    n_boot, level = check_n_boot(n_boot), check_level(level)
    if paired:
        x, y = pair(a, b)
        d = x - y
        return _bootstrap_result("bootstrap_diff_paired", float(d.mean()), _mean_replicates(d, n_boot, seed),
                                 x.size, level)
    x, y = vector(a, "a"), vector(b, "b")
    seed_a, seed_b = np.random.default_rng(seed).spawn(2)
    reps = _mean_replicates(x, n_boot, seed_a) - _mean_replicates(y, n_boot, seed_b)
    return _bootstrap_result("bootstrap_diff", float(x.mean() - y.mean()), reps, x.size + y.size, level,
                             note=f"n_a={x.size}, n_b={y.size}")


def paired_bootstrap(correct_a, correct_b, n_boot: int = 10000, level: float = 0.95, seed=0) -> TestResult:
    """Accuracy difference ``acc_a - acc_b`` on the same examples, resampling examples together.

    The paired case of :func:`bootstrap_diff_ci` on the 0/1 correctness vectors (same
    interval, statistic and p-value definitions).
    """
    a, b = paired_booleans(correct_a, correct_b)
    res = bootstrap_diff_ci(a.astype(np.float64), b.astype(np.float64), paired=True, n_boot=n_boot,
                            level=level, seed=seed)
    return dataclasses.replace(res, name="paired_bootstrap")


