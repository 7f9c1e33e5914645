"""layerif.power against Monte Carlo runs of the very same tests, brute-force enumeration,
numerical integration and statsmodels.

Monte Carlo checks use 20,000 simulated studies (fixed seed): the standard error of a
rejection rate near 0.8 is sqrt(0.8 * 0.2 / 20000) = 0.0028, so "within 4 SE" is 0.011.
"""
import math
from functools import lru_cache

import numpy as np
import pytest
from scipy import integrate
from scipy import stats as sps

from layerif import power

SIMS = 20_000
SE4 = 4 * math.sqrt(0.8 * 0.2 / SIMS)


def t_power_by_integration(effect, sd, n, alpha=0.05):
    """Power of the two-sided one-sample t test by integrating over the sample variance:
    T = (Z + nc) / sqrt(V / df), V ~ chi2(df); no noncentral-t code involved."""
    df, nc = n - 1, effect * math.sqrt(n) / sd
    crit = sps.t.ppf(1 - alpha / 2, df)

    def given_v(v):
        s = crit * math.sqrt(v / df)
        return (sps.norm.cdf(nc - s) + sps.norm.cdf(-nc - s)) * sps.chi2.pdf(v, df)

    lo, hi = sps.chi2.ppf(1e-14, df), sps.chi2.isf(1e-14, df)
    return integrate.quad(given_v, lo, hi, points=[df], limit=400, epsabs=1e-12)[0]


# ----------------------------------------------------------------------------- paired t

@pytest.mark.parametrize("effect, sd, n", [(0.5, 1.0, 34), (0.3, 2.0, 12), (-1.2, 0.7, 3),
                                           (0.02, 0.1, 400), (0.0, 1.0, 10)])
def test_t_power_equals_numerical_integration(effect, sd, n):
    assert power.t_power(effect, sd, n) == pytest.approx(t_power_by_integration(effect, sd, n), abs=1e-7)


# statsmodels 0.15.0, TTestPower().solve_power(..., alpha=0.05, power=0.8): its solver stops
# at ~1e-5 relative, hence the tolerance.
SM_MDE = {2: 11.549889754978167, 3: 3.264043552819638, 5: 1.6819970833232674,
          12: 0.8886543444414026, 34: 0.4950291315285059, 1000: 0.08868101827724957}
SM_NOBS = {0.2: 198.150820955562, 0.5: 33.36713118431779, 0.8: 14.30276455812943,
           1.2: 7.58772381704109}


@pytest.mark.parametrize("n", sorted(SM_MDE))
def test_t_mde_matches_statsmodels_fixture(n):
    mde = power.t_mde(2.5, n)   # in units of sd = 2.5
    assert mde / 2.5 == pytest.approx(SM_MDE[n], rel=5e-5)
    assert power.t_power(mde, 2.5, n) == pytest.approx(0.8, abs=1e-9)


@pytest.mark.parametrize("es", sorted(SM_NOBS))
def test_t_n_needed_is_statsmodels_nobs_rounded_up(es):
    n = power.t_n_needed(-es * 3.0, 3.0)   # the sign does not matter (two-sided)
    assert n == math.ceil(SM_NOBS[es])
    assert power.t_power(es * 3.0, 3.0, int(n)) >= 0.8 > power.t_power(es * 3.0, 3.0, int(n) - 1)


def test_t_against_statsmodels_when_installed():
    smp = pytest.importorskip("statsmodels.stats.power")
    ref = smp.TTestPower()
    for es, n in [(0.35, 20), (0.1, 500), (1.5, 4)]:
        assert power.t_power(es, 1.0, n) == pytest.approx(ref.power(es, n, 0.05), abs=1e-9)
        assert power.t_mde(1.0, n) == pytest.approx(ref.solve_power(nobs=n, alpha=0.05, power=0.8), rel=1e-4)


def test_t_n_needed_tends_to_the_z_formula():
    za, zb = sps.norm.ppf(0.975), sps.norm.ppf(0.8)
    z_n = ((za + zb) / 0.05) ** 2        # 3140 pairs for 0.05 sd
    assert z_n < power.t_n_needed(0.05, 1.0) <= z_n + 3


def test_paired_t_monte_carlo_at_n_needed_and_at_mde():
    rng = np.random.default_rng(20250)
    sd, effect = 1.7, 0.85                              # standardised 0.5: 34 pairs
    n = int(power.t_n_needed(effect, sd))
    assert n == 34
    base = rng.normal(0.0, 1.0, (SIMS, n))             # model b per pair; a = b + difference
    a = base + rng.normal(effect, sd, (SIMS, n))
    rate = np.mean(sps.ttest_rel(a, base, axis=1).pvalue < 0.05)
    assert abs(rate - 0.8) < 0.02 and abs(rate - power.t_power(effect, sd, n)) < SE4
    mde = power.t_mde(sd, 9)                            # 9 cells, the MDE at 80% power
    diffs = rng.normal(mde, sd, (SIMS, 9))
    rate = np.mean(sps.ttest_1samp(diffs, 0.0, axis=1).pvalue < 0.05)
    assert abs(rate - 0.8) < SE4


# ----------------------------------------------------------------------------- exact McNemar

@lru_cache(maxsize=None)
def binom_p(n10, d):
    """The exact McNemar p-value as layerif.stats.mcnemar computes it."""
    return sps.binomtest(n10, d, 0.5).pvalue if d else 1.0


def test_mcnemar_power_equals_enumeration_of_every_table():
    n, p10, p01 = 25, 0.3, 0.06
    total = 0.0
    for n10 in range(n + 1):
        for n01 in range(n - n10 + 1):
            prob = sps.multinomial.pmf([n10, n01, n - n10 - n01], n, [p10, p01, 1 - p10 - p01])
            total += prob * (binom_p(n10, n10 + n01) < 0.05)
    assert power.mcnemar_power(n, p10, p01) == pytest.approx(total, abs=1e-10)
    assert power.mcnemar_power(n, p01, p10) == pytest.approx(total, abs=1e-10)   # symmetric


def _mcnemar_rate(rng, n, p10, p01):
    counts = rng.multinomial(n, [p10, p01, 1 - p10 - p01], size=SIMS)
    d = counts[:, 0] + counts[:, 1]
    return np.mean([binom_p(int(a), int(b)) < 0.05 for a, b in zip(counts[:, 0], d)])


def test_mcnemar_monte_carlo_at_n_needed():
    effect, psi = 0.1, 0.3
    n = int(power.mcnemar_n_needed(effect, psi))
    p10, p01 = (psi + effect) / 2, (psi - effect) / 2
    assert power.mcnemar_power(n, p10, p01) >= 0.8 > power.mcnemar_power(n - 1, p10, p01)
    rate = _mcnemar_rate(np.random.default_rng(7), n, p10, p01)
    # stated tolerance 0.03: the exact test's power saw-tooths in n
    assert abs(rate - 0.8) < 0.03 and abs(rate - power.mcnemar_power(n, p10, p01)) < SE4


def test_mcnemar_mde_monte_carlo_at_420_examples():
    # The example: 420 paired examples, 17.5% discordant -> an MDE near 6 points.
    mde = power.mcnemar_mde(420, 0.175)
    assert 0.05 < mde < 0.065
    p10, p01 = (0.175 + mde) / 2, (0.175 - mde) / 2
    assert power.mcnemar_power(420, p10, p01) == pytest.approx(0.8, abs=1e-8)
    assert abs(_mcnemar_rate(np.random.default_rng(8), 420, p10, p01) - 0.8) < SE4


def test_mcnemar_n_needed_near_connor_for_large_n():
    za, zb = sps.norm.ppf(0.975), sps.norm.ppf(0.8)
    for effect, psi in [(0.02, 0.2), (0.0029, 0.175)]:
        connor = (za * math.sqrt(psi) + zb * math.sqrt(psi - effect**2)) ** 2 / effect**2
        assert power.mcnemar_n_needed(effect, psi) == pytest.approx(connor, rel=0.03)


def test_mcnemar_unreachable_cases():
    assert power.mcnemar_mde(5, 0.5) == math.inf          # < 6 discordant pairs: never p < 0.05
    assert math.isnan(power.mcnemar_n_needed(0.3, 0.2))  # |effect| above the discordance
    assert power.mcnemar_n_needed(0.0, 0.2) == math.inf
    assert power.mcnemar_power(100, 0.0, 0.0) == 0.0
    assert power.t_n_needed(0.0, 1.0) == math.inf


@pytest.mark.parametrize("call, name", [
    (lambda: power.t_mde(0.0, 10), "sd"),
    (lambda: power.t_mde(1.0, 1), "n"),
    (lambda: power.t_n_needed(float("nan"), 1.0), "effect"),
    (lambda: power.t_mde(1.0, 10, power=0.01), "power"),
    (lambda: power.mcnemar_power(10, 0.7, 0.6), "p01"),
    (lambda: power.mcnemar_mde(10, 1.5), "discordance"),
    (lambda: power.mcnemar_power(10, 0.1, 0.1, alpha=0), "alpha"),
])
def test_bad_input_names_the_parameter(call, name):
    with pytest.raises(ValueError, match=rf"^{name}="):
        call()
