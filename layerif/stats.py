"""Significance tests and confidence intervals for the study's comparisons.

Every function returns a :class:`TestResult` so that notebooks print and tabulate one shape.
Inputs are array-likes; they are validated (finite, at least two values, equal lengths where
paired) and a bad one raises a one-line ``ValueError`` naming the parameter. Bootstrap
functions draw their resamples from :func:`iter_bootstrap_indices`, seeded through
``np.random.default_rng(seed)`` only, so a fixed seed gives identical results and no global
random state is touched.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Iterator

import numpy as np
from scipy import stats as sps

from ._config import check

__all__ = [
    "TestResult",
    "above_rate",
    "bootstrap_diff_ci",
    "bootstrap_indices",
    "bootstrap_mean_ci",
    "iter_bootstrap_indices",
    "mcnemar",
    "paired_bootstrap",
    "paired_t",
    "percentile_ci",
    "spearman_ci",
    "welch_t",
]

ALTERNATIVES = ("two-sided", "less", "greater")
_BLOCK_ELEMENTS = 1 << 21  # indices drawn per block: bounds memory of the bootstrap loops


@dataclasses.dataclass(frozen=True)
class TestResult:
    """The outcome of one test or interval.

    Attributes:
        name: which procedure produced it (e.g. ``"paired_t"``).
        statistic: the test statistic (t, rho, discordant count, chi-square, bootstrap z);
            ``nan`` where the procedure has none.
        pvalue: the p-value; ``nan`` for interval-only procedures.
        estimate: the effect the interval is about (mean difference, rho, accuracy difference).
        ci_low, ci_high: the two-sided confidence interval at ``level`` (``nan`` if undefined).
        n: the number of observations (pairs for paired procedures, both groups together for
            unpaired ones).
        level: the confidence level of the interval.
        note: extra facts about the computation (group sizes, bootstrap replicates used).
    """

    __test__ = False  # not a pytest test class despite the name

    name: str
    statistic: float
    pvalue: float
    estimate: float
    ci_low: float
    ci_high: float
    n: int
    level: float
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        """The fields as a plain dict (for a DataFrame row or JSON)."""
        return dataclasses.asdict(self)

    def __str__(self) -> str:
        pct = f"{100 * self.level:g}%"
        text = (f"{self.name}: estimate={self.estimate:.4g} [{pct} CI {self.ci_low:.4g}, "
                f"{self.ci_high:.4g}], statistic={self.statistic:.4g}, p={self.pvalue:.4g}, n={self.n}")
        return f"{text} ({self.note})" if self.note else text


# ----------------------------------------------------------------------------- validation

def _vector(values, name: str, min_n: int = 2) -> np.ndarray:
    """``values`` as a finite 1-D float64 array with at least ``min_n`` entries."""
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{name}={values!r} is invalid: expected a 1-D array of numbers") from None
    check(arr.ndim == 1, name, f"array of shape {arr.shape}", "a 1-D array")
    check(arr.size >= min_n, name, f"array of length {arr.size}", f"at least {min_n} values")
    check(bool(np.isfinite(arr).all()), name, f"array with {int((~np.isfinite(arr)).sum())} non-finite values",
          "finite values")
    return arr


def _pair(a, b, names: tuple[str, str] = ("a", "b")) -> tuple[np.ndarray, np.ndarray]:
    """Two validated vectors of equal length."""
    x, y = _vector(a, names[0]), _vector(b, names[1])
    check(x.size == y.size, names[1], f"array of length {y.size}", f"the length of {names[0]} ({x.size})")
    return x, y


def _booleans(values, name: str) -> np.ndarray:
    """Per-example correctness (bools or 0/1) as a bool array."""
    arr = _vector(values, name)
    check(bool(np.isin(arr, (0.0, 1.0)).all()), name, "array with values other than 0/1",
          "booleans (or 0/1) per example")
    return arr.astype(bool)


def _paired_booleans(correct_a, correct_b) -> tuple[np.ndarray, np.ndarray]:
    """Two per-example correctness vectors of equal length."""
    a, b = _booleans(correct_a, "correct_a"), _booleans(correct_b, "correct_b")
    check(a.size == b.size, "correct_b", f"array of length {b.size}", f"the length of correct_a ({a.size})")
    return a, b


def _check_level(level: float) -> float:
    check(isinstance(level, (int, float)) and 0 < level < 1, "level", level, "a float in (0, 1)")
    return float(level)


def _check_n_boot(n_boot: int) -> int:
    check(isinstance(n_boot, (int, np.integer)) and n_boot >= 1, "n_boot", n_boot, "an integer >= 1")
    return int(n_boot)


# ----------------------------------------------------------------------------- bootstrap core

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
    n_boot = _check_n_boot(n_boot)
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
    level = _check_level(level)
    reps = _vector(replicates, "replicates", min_n=1)
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


# ----------------------------------------------------------------------------- t tests

def _t_result(name: str, scipy_test: Callable, args: tuple, estimate: float, n: int,
              alternative: str, level: float, note: str = "") -> TestResult:
    check(alternative in ALTERNATIVES, "alternative", alternative, f"one of {ALTERNATIVES}")
    level = _check_level(level)
    res = scipy_test(*args, alternative=alternative)
    ci = scipy_test(*args, alternative="two-sided").confidence_interval(level)
    return TestResult(name, float(res.statistic), float(res.pvalue), estimate, float(ci.low), float(ci.high),
                      n, level, note)


def paired_t(a, b, alternative: str = "two-sided", level: float = 0.95) -> TestResult:
    """Paired t test of ``mean(a - b) = 0`` (``scipy.stats.ttest_rel``).

    Returns:
        estimate ``mean(a - b)``; the interval is always two-sided,
        ``mean ± t_{(1+level)/2, n-1} · sd(a - b) / sqrt(n)``, whatever ``alternative`` the
        p-value uses.
    """
    x, y = _pair(a, b)
    return _t_result("paired_t", sps.ttest_rel, (x, y), float(np.mean(x - y)), x.size, alternative, level)


def welch_t(a, b, alternative: str = "two-sided", level: float = 0.95) -> TestResult:
    """Welch's unequal-variance t test of ``mean(a) = mean(b)`` (``ttest_ind(equal_var=False)``).

    Returns:
        estimate ``mean(a) - mean(b)`` with the two-sided Welch interval (Welch–Satterthwaite
        degrees of freedom); ``n`` counts both groups.
    """
    x, y = _vector(a, "a"), _vector(b, "b")

    def welch(p, q, alternative):
        return sps.ttest_ind(p, q, equal_var=False, alternative=alternative)

    return _t_result("welch_t", welch, (x, y), float(x.mean() - y.mean()), x.size + y.size, alternative, level,
                     note=f"n_a={x.size}, n_b={y.size}")


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
    u, v = _pair(x, y, ("x", "y"))
    n_boot, level = _check_n_boot(n_boot), _check_level(level)
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
    values = _vector(x, "x")
    n_boot, level = _check_n_boot(n_boot), _check_level(level)
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
    n_boot, level = _check_n_boot(n_boot), _check_level(level)
    if paired:
        x, y = _pair(a, b)
        d = x - y
        return _bootstrap_result("bootstrap_diff_paired", float(d.mean()), _mean_replicates(d, n_boot, seed),
                                 x.size, level)
    x, y = _vector(a, "a"), _vector(b, "b")
    seed_a, seed_b = np.random.default_rng(seed).spawn(2)
    reps = _mean_replicates(x, n_boot, seed_a) - _mean_replicates(y, n_boot, seed_b)
    return _bootstrap_result("bootstrap_diff", float(x.mean() - y.mean()), reps, x.size + y.size, level,
                             note=f"n_a={x.size}, n_b={y.size}")


# ----------------------------------------------------------------------------- paired classifiers

def mcnemar(correct_a, correct_b, exact: bool = True, level: float = 0.95) -> TestResult:
    """McNemar's test for two classifiers scored on the same examples.

    With ``n10`` = examples only ``a`` gets right and ``n01`` = only ``b``: ``exact=True``
    is the two-sided binomial test of ``n10`` out of ``n10 + n01`` at 1/2 (statistic
    ``n10``); ``exact=False`` is the chi-square test with continuity correction,
    ``(|n10 - n01| - 1)^2 / (n10 + n01)`` on 1 degree of freedom. With no discordant pair
    the p-value is 1.

    Returns:
        estimate ``acc_a - acc_b = (n10 - n01) / n`` with the Wald interval for a difference
        of paired proportions, ``est ± z · sqrt(n10 + n01 - (n10 - n01)^2 / n) / n``, clipped
        to [-1, 1].
    """
    a, b = _paired_booleans(correct_a, correct_b)
    level = _check_level(level)
    n10, n01, n = int(np.sum(a & ~b)), int(np.sum(~a & b)), a.size
    discordant = n10 + n01
    if exact:
        stat = float(n10)
        pvalue = float(sps.binomtest(n10, discordant, 0.5).pvalue) if discordant else 1.0
    else:
        stat = (abs(n10 - n01) - 1) ** 2 / discordant if discordant else 0.0
        pvalue = float(sps.chi2.sf(stat, 1)) if discordant else 1.0
    est = (n10 - n01) / n
    half = sps.norm.ppf((1 + level) / 2) * math.sqrt(max(discordant - (n10 - n01) ** 2 / n, 0.0)) / n
    return TestResult("mcnemar_exact" if exact else "mcnemar_chi2", stat, min(1.0, pvalue), est,
                      max(-1.0, est - half), min(1.0, est + half), n, level, note=f"n10={n10}, n01={n01}")


def paired_bootstrap(correct_a, correct_b, n_boot: int = 10000, level: float = 0.95, seed=0) -> TestResult:
    """Accuracy difference ``acc_a - acc_b`` on the same examples, resampling examples together.

    The paired case of :func:`bootstrap_diff_ci` on the 0/1 correctness vectors (same
    interval, statistic and p-value definitions).
    """
    a, b = _paired_booleans(correct_a, correct_b)
    res = bootstrap_diff_ci(a.astype(np.float64), b.astype(np.float64), paired=True, n_boot=n_boot,
                            level=level, seed=seed)
    return dataclasses.replace(res, name="paired_bootstrap")


def above_rate(correct, rate: float, level: float = 0.95) -> TestResult:
    """Is an accuracy above a given rate (chance, or always answering the majority label)?

    The one-sided exact binomial test of ``#correct`` out of ``n`` against ``rate``
    (``H1: accuracy > rate``), with the two-sided Clopper--Pearson interval of the accuracy.

    Returns:
        estimate = accuracy, statistic = ``#correct``, p-value one-sided.
    """
    a = _booleans(correct, "correct")
    check(isinstance(rate, (int, float, np.floating)) and 0 <= rate < 1, "rate", rate,
          "a float in [0, 1)")
    level = _check_level(level)
    k, n = int(a.sum()), a.size
    res = sps.binomtest(k, n, float(rate), alternative="greater")
    ci = sps.binomtest(k, n, float(rate)).proportion_ci(confidence_level=level, method="exact")
    return TestResult("binomial_above_rate", float(k), float(res.pvalue), k / n, float(ci.low),
                      float(ci.high), n, level, note=f"rate={rate:.4g}")
