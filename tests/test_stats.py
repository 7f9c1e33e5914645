"""layerif.stats against scipy and hand computations."""
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from layerif import stats


@pytest.fixture
def samples():
    rng = np.random.default_rng(123)
    a = rng.normal(1.0, 2.0, 25)
    b = a - 0.4 + rng.normal(0, 0.8, 25)
    return a, b


def t_interval(d, level=0.95):
    d = np.asarray(d, float)
    half = sps.t.ppf((1 + level) / 2, d.size - 1) * d.std(ddof=1) / math.sqrt(d.size)
    return d.mean() - half, d.mean() + half


@pytest.mark.parametrize("alternative", ["two-sided", "less", "greater"])
def test_paired_t_matches_scipy_and_hand_ci(samples, alternative):
    a, b = samples
    res = stats.paired_t(a, b, alternative=alternative)
    ref = sps.ttest_rel(a, b, alternative=alternative)
    assert res.statistic == pytest.approx(ref.statistic, rel=1e-12)
    assert res.pvalue == pytest.approx(ref.pvalue, rel=1e-12)
    assert res.estimate == pytest.approx(np.mean(a - b), rel=1e-12)
    lo, hi = t_interval(a - b)
    assert (res.ci_low, res.ci_high) == (pytest.approx(lo, rel=1e-10), pytest.approx(hi, rel=1e-10))
    assert res.n == 25 and res.level == 0.95


def test_welch_t_matches_scipy_and_hand_ci(samples):
    rng = np.random.default_rng(5)
    a, b = samples[0], rng.normal(0.0, 0.5, 12)
    res = stats.welch_t(a, b, level=0.9)
    ref = sps.ttest_ind(a, b, equal_var=False)
    assert res.statistic == pytest.approx(ref.statistic, rel=1e-12)
    assert res.pvalue == pytest.approx(ref.pvalue, rel=1e-12)
    va, vb = a.var(ddof=1) / a.size, b.var(ddof=1) / b.size
    df = (va + vb) ** 2 / (va**2 / (a.size - 1) + vb**2 / (b.size - 1))
    half = sps.t.ppf(0.95, df) * math.sqrt(va + vb)
    est = a.mean() - b.mean()
    assert res.estimate == pytest.approx(est, rel=1e-12)
    assert res.ci_low == pytest.approx(est - half, rel=1e-10)
    assert res.ci_high == pytest.approx(est + half, rel=1e-10)
    assert res.n == a.size + b.size


def test_spearman_matches_scipy_and_bootstrap_brackets(samples):
    a, b = samples
    res = stats.spearman_ci(a, b, n_boot=500, seed=1)
    ref = sps.spearmanr(a, b)
    assert res.estimate == pytest.approx(ref.statistic, rel=1e-12)
    assert res.pvalue == pytest.approx(ref.pvalue, rel=1e-12)
    assert res.ci_low < res.estimate < res.ci_high <= 1
    assert "500/500" in res.note
    # brute force: scipy's rho on every resample, then numpy's quantiles
    idx = stats.bootstrap_indices(a.size, 500, seed=1)
    reps = [sps.spearmanr(a[i], b[i]).statistic for i in idx]
    lo, hi = np.quantile(reps, [0.025, 0.975])
    assert (res.ci_low, res.ci_high) == (pytest.approx(lo, rel=1e-10), pytest.approx(hi, rel=1e-10))
    one = stats.spearman_ci(a, b, n_boot=1, seed=1)
    assert one.note.endswith("1/1") and np.isnan(one.ci_low)  # fewer than 2 replicates: no interval


def test_spearman_drops_constant_replicates():
    # 3 points: a resample of one repeated index is constant (probability 3/27 each draw)
    x, y = [1.0, 2.0, 3.0], [1.0, 3.0, 2.0]
    res = stats.spearman_ci(x, y, n_boot=400, seed=0)
    used = int(res.note.split(": ")[1].split("/")[0])
    idx = stats.bootstrap_indices(3, 400, seed=0)
    constant = np.array([len(set(row)) == 1 for row in idx])
    assert used == 400 - constant.sum() and constant.sum() > 0
    assert np.isfinite(res.ci_low)


def test_spearman_no_interval_when_most_replicates_are_constant():
    x, y = [0.0, 0.0, 0.0, 1.0], [0.0, 0.0, 1.0, 1.0]  # x constant unless index 3 is drawn (~68%)
    res = stats.spearman_ci(x, y, n_boot=200, seed=0)
    idx = stats.bootstrap_indices(4, 200, seed=0)
    # both vary exactly when index 3 and one of indices 0, 1 are drawn
    valid = int(((idx == 3).any(axis=1) & (idx < 2).any(axis=1)).sum())
    used = int(res.note.split(": ")[1].split("/")[0])
    assert used == valid
    assert (used < 100) == bool(np.isnan(res.ci_low))


def test_bootstrap_mean_ci_close_to_t_interval():
    x = np.random.default_rng(7).normal(3.0, 1.5, 200)
    res = stats.bootstrap_mean_ci(x, n_boot=4000, seed=3)
    lo, hi = t_interval(x)
    assert res.estimate == pytest.approx(x.mean())
    assert abs((res.ci_high - res.ci_low) - (hi - lo)) < 0.10 * (hi - lo)
    assert abs((res.ci_low + res.ci_high) / 2 - x.mean()) < 0.1 * (hi - lo)


def test_bootstrap_diff_paired_and_unpaired(samples):
    a, b = samples
    paired = stats.bootstrap_diff_ci(a, b, paired=True, n_boot=3000, seed=0)
    lo, hi = t_interval(a - b)
    assert paired.estimate == pytest.approx(np.mean(a - b))
    assert abs((paired.ci_high - paired.ci_low) - (hi - lo)) < 0.25 * (hi - lo)
    # the paired p-value agrees with the t test's to within bootstrap noise
    assert paired.pvalue == pytest.approx(sps.ttest_rel(a, b).pvalue, abs=0.03)
    unpaired = stats.bootstrap_diff_ci(a, b, paired=False, n_boot=3000, seed=0)
    assert unpaired.estimate == pytest.approx(a.mean() - b.mean())
    # ignoring the pairing widens the interval (a and b are strongly correlated)
    assert unpaired.ci_high - unpaired.ci_low > 1.5 * (paired.ci_high - paired.ci_low)
    assert unpaired.n == 50


def test_bootstrap_is_deterministic_per_seed(samples):
    a, b = samples
    one = stats.bootstrap_diff_ci(a, b, paired=False, n_boot=300, seed=11)
    assert one == stats.bootstrap_diff_ci(a, b, paired=False, n_boot=300, seed=11)
    assert one.ci_low != stats.bootstrap_diff_ci(a, b, paired=False, n_boot=300, seed=12).ci_low
    assert np.array_equal(stats.bootstrap_indices(9, 50, 4), stats.bootstrap_indices(9, 50, 4))
    assert not np.array_equal(stats.bootstrap_indices(9, 50, 4), stats.bootstrap_indices(9, 50, 5))


def test_iter_blocks_concatenate_to_bootstrap_indices(monkeypatch):
    monkeypatch.setattr(stats.resample, "_BLOCK_ELEMENTS", 40)  # 40 // 7 = 5 rows per block
    blocks = list(stats.iter_bootstrap_indices(7, 23, seed=2))
    assert [blk.shape for blk in blocks] == [(5, 7)] * 4 + [(3, 7)]
    full = stats.bootstrap_indices(7, 23, seed=2)
    assert full.shape == (23, 7) and full.min() >= 0 and full.max() <= 6
    assert np.array_equal(np.concatenate(blocks), full)


def test_percentile_ci_hand():
    reps = np.arange(101.0)
    assert stats.percentile_ci(reps, 0.9) == (pytest.approx(5.0), pytest.approx(95.0))
    with pytest.raises(ValueError, match="level"):
        stats.percentile_ci(reps, 1.5)


def test_mcnemar_hand_fixture():
    # 2x2: both right 40, only a right 12, only b right 4, both wrong 14 (n = 70)
    a = [1] * 40 + [1] * 12 + [0] * 4 + [0] * 14
    b = [1] * 40 + [0] * 12 + [1] * 4 + [0] * 14
    exact = stats.mcnemar(a, b)
    assert exact.statistic == 12
    assert exact.pvalue == pytest.approx(sps.binomtest(12, 16, 0.5).pvalue, rel=1e-12)
    assert exact.pvalue == pytest.approx(2 * sum(math.comb(16, k) for k in range(12, 17)) / 2**16, rel=1e-12)
    assert exact.estimate == pytest.approx(8 / 70)
    half = 1.959963984540054 * math.sqrt(16 - 64 / 70) / 70
    assert (exact.ci_low, exact.ci_high) == (pytest.approx(8 / 70 - half), pytest.approx(8 / 70 + half))
    chi = stats.mcnemar(a, b, exact=False)
    assert chi.statistic == pytest.approx((8 - 1) ** 2 / 16)
    assert chi.pvalue == pytest.approx(sps.chi2.sf(49 / 16, 1))


def test_mcnemar_no_discordant_pairs():
    a = [True, False, True, True]
    res = stats.mcnemar(a, a)
    assert res.pvalue == 1.0 and res.estimate == 0 and res.ci_low == res.ci_high == 0


def test_paired_bootstrap_identical_and_shifted():
    rng = np.random.default_rng(0)
    a = rng.random(300) < 0.6
    same = stats.paired_bootstrap(a, a, n_boot=2000)
    assert same.estimate == 0 and same.ci_low <= 0 <= same.ci_high and same.pvalue == 1.0
    b = a.copy()
    b[np.flatnonzero(a)[:45]] = False  # b loses 45 of a's correct answers: acc diff 0.15
    res = stats.paired_bootstrap(a, b, n_boot=2000)
    assert res.estimate == pytest.approx(0.15)
    se = math.sqrt(0.15 * 0.85 / 300)  # d is 0/1 with mean 0.15
    assert res.ci_low == pytest.approx(0.15 - 1.96 * se, abs=0.015)
    assert res.pvalue < 0.01


@pytest.mark.parametrize("call, name", [
    (lambda: stats.paired_t([1, 2, 3], [1, 2]), "b"),
    (lambda: stats.paired_t([1.0], [2.0]), "a"),
    (lambda: stats.welch_t([1, 2, np.nan], [1, 2]), "a"),
    (lambda: stats.paired_t([1, 2, 3], [1, 2, 4], alternative="bigger"), "alternative"),
    (lambda: stats.spearman_ci([1, 2, 3], [1, 2, 3], n_boot=0), "n_boot"),
    (lambda: stats.mcnemar([1, 0, 2], [1, 0, 1]), "correct_a"),
    (lambda: stats.paired_bootstrap([1, 0, 1], [1, 0]), "correct_b"),
    (lambda: stats.bootstrap_diff_ci([1, 2], [1, 2], paired="yes"), "paired"),
    (lambda: stats.bootstrap_mean_ci([[1, 2], [3, 4]]), "x"),
])
def test_bad_input_names_the_parameter(call, name):
    with pytest.raises(ValueError, match=rf"^{name}="):
        call()


def test_result_dict_and_str(samples):
    res = stats.paired_t(*samples)
    d = res.as_dict()
    assert set(d) == {"name", "statistic", "pvalue", "estimate", "ci_low", "ci_high", "n", "level", "note",
                      "mde", "n_needed", "effect"}
    assert "paired_t" in str(res) and "95% CI" in str(res)


def test_above_rate_is_the_one_sided_binomial_tail_by_hand():
    from math import comb

    res = stats.above_rate([1] * 7 + [0] * 3, 0.5)
    assert res.pvalue == pytest.approx(sum(comb(10, k) for k in range(7, 11)) / 2**10)
    assert res.estimate == 0.7 and res.statistic == 7 and res.n == 10
    assert res.ci_low < 0.7 < res.ci_high
    # against a rate of 0.25 (four choices), 4 of 8 right
    tail = sum(comb(8, k) * 0.25**k * 0.75 ** (8 - k) for k in range(4, 9))
    assert stats.above_rate([1, 0, 1, 0, 1, 0, 1, 0], 0.25).pvalue == pytest.approx(tail)
    with pytest.raises(ValueError, match="rate=1.5"):
        stats.above_rate([1, 0], 1.5)


# ----------------------------------------------------------------------------- power and sensitive measures

@pytest.mark.filterwarnings("ignore:Precision loss")  # scipy, on the constant differences
def test_paired_t_carries_its_power(samples):
    from layerif import power

    a, b = samples
    res = stats.paired_t(a, b, effect=0.3)
    sd = np.std(a - b, ddof=1)
    assert res.mde == pytest.approx(power.t_mde(sd, 25), rel=1e-12)
    # 80% power at the MDE, by scipy's noncentral t (independently of layerif.power)
    crit, nc = sps.t.ppf(0.975, 24), res.mde * math.sqrt(25) / sd
    assert sps.nct.sf(crit, 24, nc) + sps.nct.cdf(-crit, 24, nc) == pytest.approx(0.8, abs=1e-8)
    assert res.effect == 0.3 and res.n_needed == power.t_n_needed(0.3, sd)
    assert "MDE=" in str(res) and "n for effect 0.3" in str(res)
    plain = stats.paired_t(a, b)
    assert math.isnan(plain.n_needed) and plain.mde == res.mde
    same = stats.paired_t([1.0, 2.0, 3.0], [0.0, 1.0, 2.0], effect=0.5)   # constant difference
    assert math.isnan(same.mde) and math.isnan(same.n_needed) and same.effect == 0.5


def test_mcnemar_carries_the_exact_tests_power():
    from layerif import power

    a = [1] * 40 + [1] * 12 + [0] * 4 + [0] * 14   # n10 = 12, n01 = 4, n = 70
    b = [1] * 40 + [0] * 12 + [1] * 4 + [0] * 14
    res = stats.mcnemar(a, b, effect=0.1)
    assert res.mde == pytest.approx(power.mcnemar_mde(70, 16 / 70), rel=1e-12)
    assert res.n_needed == power.mcnemar_n_needed(0.1, 16 / 70)
    assert power.mcnemar_power(70, (16 / 70 + res.mde) / 2, (16 / 70 - res.mde) / 2) == pytest.approx(0.8, abs=1e-8)
    none = stats.mcnemar([1, 0, 1], [1, 0, 1], effect=0.1)
    assert math.isnan(none.mde) and math.isnan(none.n_needed)


def test_paired_margin_aligns_examples_and_matches_scipy():
    rng = np.random.default_rng(3)
    index = pd.MultiIndex.from_product([["boolq", "piqa"], [str(i) for i in range(15)]], names=["task", "id"])
    a = pd.DataFrame({"margin": rng.normal(0.2, 1.0, 30), "correct": rng.random(30) < 0.5}, index=index)
    b = pd.DataFrame({"margin": a["margin"] - 0.15 + rng.normal(0, 0.4, 30)}, index=index)
    shuffled = b.sample(frac=1.0, random_state=1)   # same examples, other order
    res = stats.paired_margin(a, shuffled, effect=0.1)
    ref = sps.ttest_rel(a["margin"], b["margin"])
    assert res.name == "paired_margin" and res.n == 30
    assert res.estimate == pytest.approx(float((a["margin"] - b["margin"]).mean()), rel=1e-12)
    assert res.statistic == pytest.approx(ref.statistic, rel=1e-12)
    assert res.pvalue == pytest.approx(ref.pvalue, rel=1e-12)
    lo, hi = t_interval(a["margin"] - b["margin"])
    assert (res.ci_low, res.ci_high) == (pytest.approx(lo, rel=1e-10), pytest.approx(hi, rel=1e-10))
    assert math.isfinite(res.mde) and res.n_needed >= 2
    with pytest.raises(ValueError, match="^b="):
        stats.paired_margin(a, b.iloc[:-1])
    with pytest.raises(ValueError, match="^b="):
        stats.paired_margin(a, b.rename(columns={"margin": "m"}))


def test_paired_nll_is_paired_t_on_per_token_means():
    rng = np.random.default_rng(4)
    tokens = np.array([255] * 12)
    nll_b = rng.normal(3.0, 0.2, 12) * tokens
    nll_a = nll_b + rng.normal(0.04, 0.05, 12) * tokens
    wa = pd.DataFrame({"nll_sum": nll_a, "n_tokens": tokens}).rename_axis("window")
    wb = pd.DataFrame({"nll_sum": nll_b, "n_tokens": tokens}).rename_axis("window")
    res = stats.paired_nll(wa, wb, effect=0.02)
    ref = sps.ttest_rel(nll_a / 255, nll_b / 255)
    assert res.name == "paired_nll" and res.n == 12 and "tokens=3060" in res.note
    assert res.estimate == pytest.approx(np.mean((nll_a - nll_b) / 255), rel=1e-12)
    assert res.statistic == pytest.approx(ref.statistic, rel=1e-12)
    assert res.pvalue == pytest.approx(ref.pvalue, rel=1e-12)
    assert res.ci_low == pytest.approx(ref.confidence_interval().low, rel=1e-10)
    with pytest.raises(ValueError, match="^b_windows="):
        stats.paired_nll(wa, wb.assign(n_tokens=254))
    with pytest.raises(ValueError, match="^a_windows="):
        stats.paired_nll(nll_a, wb)
    with pytest.raises(ValueError, match="^effect="):
        stats.paired_nll(wa, wb, effect=float("inf"))
