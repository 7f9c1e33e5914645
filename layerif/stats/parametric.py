"""Parametric and exact tests: paired and Welch t, McNemar, a rate above chance.

The paired tests (:func:`paired_t`, :func:`mcnemar`) also return their power
(:mod:`layerif.power`): the minimum detectable effect at the ``n`` tested and, for a given
``effect``, the ``n`` that would detect it, at 80% power and two-sided alpha ``1 - level``.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable

import numpy as np
from scipy import stats as sps

from .. import power
from .._config import check
from .result import ALTERNATIVES, TestResult, booleans, check_effect, check_level, pair, paired_booleans, vector

__all__ = ["above_rate", "mcnemar", "paired_t", "welch_t"]


def _powered(res: TestResult, mde_of: Callable[[float], float],
             n_needed_of: Callable[[float, float], float], effect: float | None) -> TestResult:
    """``res`` with ``mde_of(alpha)`` and ``n_needed_of(effect, alpha)`` at alpha
    ``1 - level`` (left ``nan`` for a level at or below 0.2, where alpha would reach the
    power)."""
    alpha = 1 - res.level
    res = dataclasses.replace(res, effect=math.nan if effect is None else effect)
    if alpha >= power.POWER:
        return res
    needed = math.nan if effect is None else n_needed_of(effect, alpha)
    return dataclasses.replace(res, mde=mde_of(alpha), n_needed=needed)


def _t_result(name: str, scipy_test: Callable, args: tuple, estimate: float, n: int,
              alternative: str, level: float, note: str = "") -> TestResult:
    check(alternative in ALTERNATIVES, "alternative", alternative, f"one of {ALTERNATIVES}")
    level = check_level(level)
    res = scipy_test(*args, alternative=alternative)
    ci = scipy_test(*args, alternative="two-sided").confidence_interval(level)
    return TestResult(name, float(res.statistic), float(res.pvalue), estimate, float(ci.low), float(ci.high),
                      n, level, note)


def paired_t(a, b, alternative: str = "two-sided", level: float = 0.95,
             effect: float | None = None) -> TestResult:
    """Paired t test of ``mean(a - b) = 0`` (``scipy.stats.ttest_rel``), with its power.

    Args:
        effect: an effect on ``mean(a - b)`` (e.g. the paper's) for ``n_needed``, the pairs
            that would detect it (:func:`layerif.power.t_n_needed`).

    Returns:
        estimate ``mean(a - b)``; the interval is always two-sided,
        ``mean ± t_{(1+level)/2, n-1} · sd(a - b) / sqrt(n)``, whatever ``alternative`` the
        p-value uses. ``mde`` and ``n_needed`` are the two-sided test's at the observed
        ``sd(a - b)`` (``nan`` when every difference is equal).
    """
    x, y = pair(a, b)
    effect = check_effect(effect)
    d = x - y
    res = _t_result("paired_t", sps.ttest_rel, (x, y), float(np.mean(d)), x.size, alternative, level)
    sd = float(np.std(d, ddof=1))
    if not sd > 0:
        return dataclasses.replace(res, effect=math.nan if effect is None else effect)
    return _powered(res, lambda alpha: power.t_mde(sd, x.size, alpha),
                    lambda e, alpha: power.t_n_needed(e, sd, alpha), effect)


def welch_t(a, b, alternative: str = "two-sided", level: float = 0.95) -> TestResult:
    """Welch's unequal-variance t test of ``mean(a) = mean(b)`` (``ttest_ind(equal_var=False)``).

    Returns:
        estimate ``mean(a) - mean(b)`` with the two-sided Welch interval (Welch–Satterthwaite
        degrees of freedom); ``n`` counts both groups.
    """
    x, y = vector(a, "a"), vector(b, "b")

    def welch(p, q, alternative):
        return sps.ttest_ind(p, q, equal_var=False, alternative=alternative)

    return _t_result("welch_t", welch, (x, y), float(x.mean() - y.mean()), x.size + y.size, alternative, level,
                     note=f"n_a={x.size}, n_b={y.size}")


def mcnemar(correct_a, correct_b, exact: bool = True, level: float = 0.95,
            effect: float | None = None) -> TestResult:
    """McNemar's test for two classifiers scored on the same examples, with its power.

    With ``n10`` = examples only ``a`` gets right and ``n01`` = only ``b``: ``exact=True``
    is the two-sided binomial test of ``n10`` out of ``n10 + n01`` at 1/2 (statistic
    ``n10``); ``exact=False`` is the chi-square test with continuity correction,
    ``(|n10 - n01| - 1)^2 / (n10 + n01)`` on 1 degree of freedom. With no discordant pair
    the p-value is 1.

    Args:
        effect: an accuracy difference ``acc_a - acc_b`` (a fraction, e.g. the paper's) for
            ``n_needed``, the examples that would detect it.

    Returns:
        estimate ``acc_a - acc_b = (n10 - n01) / n`` with the Wald interval for a difference
        of paired proportions, ``est ± z · sqrt(n10 + n01 - (n10 - n01)^2 / n) / n``, clipped
        to [-1, 1]. ``mde`` and ``n_needed`` are the exact test's
        (:func:`layerif.power.mcnemar_mde`, :func:`~layerif.power.mcnemar_n_needed`) at the
        observed discordance ``(n10 + n01) / n`` (``nan`` without discordant pairs;
        ``n_needed`` is ``nan`` when ``|effect|`` exceeds the discordance).
    """
    a, b = paired_booleans(correct_a, correct_b)
    level = check_level(level)
    effect = check_effect(effect)
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
    res = TestResult("mcnemar_exact" if exact else "mcnemar_chi2", stat, min(1.0, pvalue), est,
                     max(-1.0, est - half), min(1.0, est + half), n, level, note=f"n10={n10}, n01={n01}")
    if not discordant:
        return dataclasses.replace(res, effect=math.nan if effect is None else effect)
    psi = discordant / n
    return _powered(res, lambda alpha: power.mcnemar_mde(n, psi, alpha),
                    lambda e, alpha: power.mcnemar_n_needed(e, psi, alpha), effect)


def above_rate(correct, rate: float, level: float = 0.95) -> TestResult:
    """Is an accuracy above a given rate (chance, or always answering the majority label)?

    The one-sided exact binomial test of ``#correct`` out of ``n`` against ``rate``
    (``H1: accuracy > rate``), with the two-sided Clopper--Pearson interval of the accuracy.

    Returns:
        estimate = accuracy, statistic = ``#correct``, p-value one-sided.
    """
    a = booleans(correct, "correct")
    check(isinstance(rate, (int, float, np.floating)) and 0 <= rate < 1, "rate", rate,
          "a float in [0, 1)")
    level = check_level(level)
    k, n = int(a.sum()), a.size
    res = sps.binomtest(k, n, float(rate), alternative="greater")
    ci = sps.binomtest(k, n, float(rate)).proportion_ci(confidence_level=level, method="exact")
    return TestResult("binomial_above_rate", float(k), float(res.pvalue), k / n, float(ci.low),
                      float(ci.high), n, level, note=f"rate={rate:.4g}")
