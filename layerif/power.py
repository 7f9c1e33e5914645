"""Power of the study's paired tests: the minimum detectable effect (MDE) and the n needed.

Two tests cover every comparison of the study, both two-sided at ``alpha``:

* the **paired t test** on differences (over cells, seeds, examples or perplexity windows;
  with many pairs it is the paired z test). Its power is exact under normal differences:
  ``P(|T| > t_{1-alpha/2, n-1})`` with ``T`` noncentral t on ``n - 1`` degrees of freedom and
  noncentrality ``effect * sqrt(n) / sd``.
* the **exact McNemar test** on paired 0/1 outcomes: the binomial test of ``n10`` out of the
  ``D = n10 + n01`` discordant pairs at 1/2, as :func:`layerif.stats.mcnemar` runs it. Its
  power is computed exactly, summing over ``D ~ Binomial(n, discordance)`` the conditional
  probability of the rejection region, for an accuracy difference ``effect = p10 - p01`` at a
  fixed discordance rate ``p10 + p01`` (the one observed, when read from data).

For each: ``*_power`` (power at n), ``*_mde`` (the smallest effect with the target power at
n: a magnitude, the same for either sign) and ``*_n_needed`` (pairs needed for an effect).
Everything is deterministic (no simulation) and pure maths on floats.
"""
from __future__ import annotations

import math

import numpy as np
from scipy import optimize
from scipy import stats as sps

from ._config import check

__all__ = ["POWER", "ALPHA", "mcnemar_mde", "mcnemar_n_needed", "mcnemar_power", "t_mde",
           "t_n_needed", "t_power"]

POWER, ALPHA = 0.8, 0.05
_TAIL = 1e-12        # binomial mass left out at each end of the discordant-count sum
_N_MAX = 10 ** 9     # searches stop here: an effect needing more pairs is "not reachable"


def _check_alpha(alpha: float) -> None:
    check(isinstance(alpha, (int, float)) and 0 < alpha < 1, "alpha", alpha, "a float in (0, 1)")


def _check_alpha_power(alpha: float, power: float) -> None:
    _check_alpha(alpha)
    check(isinstance(power, (int, float)) and alpha < power < 1, "power", power,
          f"a float in (alpha={alpha}, 1)")


def _check_n(n, minimum: int) -> int:
    check(isinstance(n, (int, np.integer)) and not isinstance(n, bool) and n >= minimum, "n", n,
          f"an integer >= {minimum}")
    return int(n)


def _check_effect(effect) -> float:
    check(isinstance(effect, (int, float, np.floating)) and math.isfinite(effect), "effect",
          effect, "a finite number")
    return float(effect)


def _check_positive(value, name: str) -> float:
    check(isinstance(value, (int, float, np.floating)) and math.isfinite(value) and value > 0,
          name, value, "a finite number > 0")
    return float(value)


def _first_n(reaches, start: int, minimum: int) -> float:
    """The smallest ``n >= minimum`` with ``reaches(n)``, bracketed by doubling or halving from
    ``start`` and then bisected (``reaches`` is taken as monotone in n); ``inf`` when not
    reached by :data:`_N_MAX`."""
    lo, hi = start, start
    if reaches(start):
        while lo > minimum and reaches(lo):
            hi, lo = lo, max(minimum, lo // 2)
        if reaches(lo):
            return float(lo)
    else:
        while not reaches(hi):
            lo, hi = hi, 2 * hi
            if hi > _N_MAX:
                return math.inf
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if reaches(mid) else (mid, hi)
    return float(hi)


def _root(fn, guess: float, cap: float = math.inf) -> float:
    """The root of increasing ``fn`` on ``(0, cap]``, bracketed by doubling from ``guess``;
    ``inf`` when ``fn(cap) < 0``."""
    hi = min(guess, cap)
    while fn(hi) < 0:
        if hi >= cap:
            return math.inf
        hi = min(2 * hi, cap)
    return float(optimize.brentq(fn, 0.0, hi, xtol=1e-14, rtol=1e-10))


# ----------------------------------------------------------------------------- paired t

def t_power(effect: float, sd: float, n: int, alpha: float = ALPHA) -> float:
    """Power of the two-sided paired (one-sample) t test of mean difference 0 at ``alpha``,
    when the differences are normal with mean ``effect`` and standard deviation ``sd``.

    Args:
        effect: the true mean difference (either sign).
        sd: the standard deviation of one difference (> 0).
        n: pairs (>= 2).
    """
    effect = _check_effect(effect)
    sd, n = _check_positive(sd, "sd"), _check_n(n, 2)
    _check_alpha(alpha)
    df, nc = n - 1, effect * math.sqrt(n) / sd
    crit = sps.t.ppf(1 - alpha / 2, df)
    # P(T < -crit | nc) = P(T > crit | -nc): scipy's sf is finite where its cdf far in the
    # lower tail can return nan.
    return float(sps.nct.sf(crit, df, nc) + sps.nct.sf(crit, df, -nc))


def t_mde(sd: float, n: int, alpha: float = ALPHA, power: float = POWER) -> float:
    """The smallest ``|mean difference|`` the paired t test detects with ``power`` at n pairs
    (in the differences' unit: ``sd`` times the standardised effect)."""
    sd, n = _check_positive(sd, "sd"), _check_n(n, 2)
    _check_alpha_power(alpha, power)
    guess = (sps.norm.ppf(1 - alpha / 2) + sps.norm.ppf(power)) * sd / math.sqrt(n)
    return _root(lambda e: t_power(e, sd, n, alpha) - power, guess)


def t_n_needed(effect: float, sd: float, alpha: float = ALPHA, power: float = POWER) -> float:
    """The fewest pairs (>= 2) at which the paired t test has ``power`` for a mean difference
    ``effect`` with differences of standard deviation ``sd`` (a whole number as a float;
    ``inf`` for ``effect == 0``)."""
    effect = _check_effect(effect)
    sd = _check_positive(sd, "sd")
    _check_alpha_power(alpha, power)
    if effect == 0:
        return math.inf
    start = max(2, int(((sps.norm.ppf(1 - alpha / 2) + sps.norm.ppf(power)) * sd / effect) ** 2))
    return _first_n(lambda n: t_power(effect, sd, n, alpha) >= power, start, 2)


# ----------------------------------------------------------------------------- exact McNemar

def _check_rates(p10: float, p01: float) -> None:
    for name, p in (("p10", p10), ("p01", p01)):
        check(isinstance(p, (int, float, np.floating)) and 0 <= p <= 1, name, p, "a rate in [0, 1]")
    check(p10 + p01 <= 1 + 1e-12, "p01", p01, f"at most 1 - p10 = {1 - p10:.4g}")


def _critical(d: np.ndarray, alpha: float) -> np.ndarray:
    """Per discordant count ``d``: the largest ``c`` with the two-sided exact binomial p-value
    at 1/2 of ``min(n10, d - n10) = c`` below ``alpha`` (``2 * cdf(c) < alpha``); -1 if none."""
    c = sps.binom.ppf(alpha / 2, d, 0.5)
    c = np.where(sps.binom.cdf(c, d, 0.5) < alpha / 2, c, c - 1)
    return np.where(d > 0, c, -1)


def mcnemar_power(n: int, p10: float, p01: float, alpha: float = ALPHA) -> float:
    """Exact power of the two-sided exact McNemar test at ``alpha`` over ``n`` pairs.

    Args:
        n: pairs (examples scored by both models).
        p10: probability that only the first model is right on an example.
        p01: probability that only the second is.

    The discordant count ``D`` is ``Binomial(n, p10 + p01)`` and, given ``D = d``, ``n10`` is
    ``Binomial(d, p10 / (p10 + p01))``; the test rejects when ``min(n10, d - n10) = c`` has
    ``2 * P(Binomial(d, 1/2) <= c) < alpha`` (scipy's exact two-sided p-value at 1/2). ``D``
    is summed over all but ``1e-12`` of its mass at each end.
    """
    n = _check_n(n, 1)
    _check_rates(p10, p01)
    _check_alpha(alpha)
    psi = p10 + p01
    if psi == 0:
        return 0.0
    lo, hi = sps.binom.ppf(_TAIL, n, psi), sps.binom.isf(_TAIL, n, psi)
    d = np.arange(max(lo - 1, 0), min(hi + 1, n) + 1, dtype=np.float64)
    c = _critical(d, alpha)
    theta = min(p10 / psi, 1.0)
    reject = np.where(c >= 0, sps.binom.cdf(c, d, theta) + sps.binom.sf(d - c - 1, d, theta), 0.0)
    return float(np.clip(np.sum(sps.binom.pmf(d, n, psi) * reject), 0.0, 1.0))


def mcnemar_mde(n: int, discordance: float, alpha: float = ALPHA, power: float = POWER) -> float:
    """The smallest ``|acc_a - acc_b|`` the exact McNemar test detects with ``power`` on n
    pairs at discordance rate ``discordance`` (= ``p10 + p01``, e.g. the observed
    ``(n10 + n01) / n``). ``inf`` when even all discordant pairs favouring one model would
    not give that power (too few pairs or too little discordance)."""
    n = _check_n(n, 1)
    psi = _check_positive(discordance, "discordance")
    check(psi <= 1, "discordance", discordance, "a rate in (0, 1]")
    _check_alpha_power(alpha, power)
    guess = (sps.norm.ppf(1 - alpha / 2) + sps.norm.ppf(power)) * math.sqrt(psi / n)
    return _root(lambda e: mcnemar_power(n, (psi + e) / 2, (psi - e) / 2, alpha) - power, guess, psi)


def mcnemar_n_needed(effect: float, discordance: float, alpha: float = ALPHA,
                     power: float = POWER) -> float:
    """Pairs needed for the exact McNemar test to reach ``power`` when the accuracy difference
    is ``effect`` at discordance rate ``discordance``: the n where the exact power crosses
    ``power``, found by bisection (the exact power saw-tooths in n by a few points at small
    n, so a neighbouring n may fall just short). ``nan`` when ``|effect| > discordance`` (no
    such pair of rates); ``inf`` when ``effect == 0``."""
    effect = _check_effect(effect)
    psi = _check_positive(discordance, "discordance")
    check(psi <= 1, "discordance", discordance, "a rate in (0, 1]")
    _check_alpha_power(alpha, power)
    e = abs(float(effect))
    if e > psi:
        return math.nan
    if e == 0:
        return math.inf
    start = max(1, int(_connor_n(e, psi, alpha, power)))
    return _first_n(lambda n: mcnemar_power(n, (psi + e) / 2, (psi - e) / 2, alpha) >= power, start, 1)


def _connor_n(effect: float, psi: float, alpha: float, power: float) -> float:
    """Connor's (1987) normal approximation to the McNemar n: the bisection's start."""
    za, zb = sps.norm.ppf(1 - alpha / 2), sps.norm.ppf(power)
    return (za * math.sqrt(psi) + zb * math.sqrt(max(psi - effect ** 2, 0.0))) ** 2 / effect ** 2
