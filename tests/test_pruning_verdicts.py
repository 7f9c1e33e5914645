"""The pruning claims (layerif.experiments.pruning_verdicts and the verdicts of notebooks 05, 07,
08): each of the five verdicts on hand-made per-example evaluations.

References: scipy's exact binomial test for McNemar's p; the closed-form Wald interval of paired
proportions, and a brute-force paired bootstrap of the same difference; layerif.power's exact
McNemar MDE and n at the discordance counted here; each verdict also read off the interval
as a set of points against 0 and d.
"""
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from layerif import paper, power, stats
from layerif.evaluate.suite import Evaluation
from layerif.experiments import pruning_study, pruning_tables as tables, smoothing
from layerif.experiments import pruning_verdicts as pv
from layerif.experiments import verdict as V
from layerif.experiments.pruning import DENSE, Setting

TASKS = {"boolq": 2, "arc_easy": 4}     # task -> choices: pooled chance (1/2 + 1/4) / 2


def _eval(correct: dict, seed: int = 0) -> Evaluation:
    rng = np.random.default_rng(seed)
    rows = [{"task": t, "id": f"{t}/{i}", "label": 0, "n_choices": TASKS[t], "correct": bool(c),
             "correct_norm": bool(c),
             "margin": float(rng.normal(0.5 if c else -0.5, 1.0))}
            for t, cs in correct.items() for i, c in enumerate(cs)]
    return Evaluation(pd.DataFrame(rows).set_index(["task", "id"]), 20.0)


def _pair(n10: int, n01: int, n11: int, n00: int):
    """Two evaluations with exactly these paired counts per task (the same on both tasks)."""
    a = [1] * n10 + [0] * n01 + [1] * n11 + [0] * n00
    b = [0] * n10 + [1] * n01 + [1] * n11 + [0] * n00
    return _eval({t: a for t in TASKS}), _eval({t: b for t in TASKS}, 1)


DENSE_OK = _eval({t: [1] * 70 + [0] * 30 for t in TASKS})          # 70% vs chance 37.5%
DENSE_CHANCE = _eval({t: [1] * 37 + [0] * 63 for t in TASKS})      # 37% vs 37.5%


def _read(lo, hi, d):
    pts = np.linspace(lo, hi, 2001)
    return (V.HELD if (pts > 0).all() else V.NOT_HELD if (pts < 0).all()
            else V.RULED_OUT if not (lo <= d <= hi) else V.UNDERPOWERED)


@pytest.mark.parametrize("counts, d, want", [
    ((30, 5, 50, 15), 2.0, V.HELD),
    ((5, 30, 50, 15), 2.0, V.NOT_HELD),
    ((3, 3, 80, 14), 5.0, V.RULED_OUT),         # 12 discordant of 200: +-2.4 points around 0
    ((20, 17, 50, 13), 2.0, V.UNDERPOWERED),    # 74 discordant of 200: +-8.4 points around +1.5
])
def test_comparison_branches_against_closed_forms(counts, d, want):
    a, b = _pair(*counts)
    found = pv.comparison(a, b, d, 0.05, DENSE_OK)
    n10, n01 = 2 * counts[0], 2 * counts[1]
    n = 2 * sum(counts)
    est = (n10 - n01) / n
    half = sps.norm.ppf(0.975) * math.sqrt(n10 + n01 - (n10 - n01) ** 2 / n) / n
    dec = found["decision"]
    assert found["test"].pvalue == pytest.approx(sps.binomtest(n10, n10 + n01, 0.5).pvalue)
    assert (found["test"].ci_low, found["test"].ci_high) == pytest.approx((est - half, est + half))
    psi = (n10 + n01) / n
    assert dec.mde == pytest.approx(100 * power.mcnemar_mde(n, psi), rel=1e-9)
    assert dec.n_needed == power.mcnemar_n_needed(d / 100, psi)
    assert dec.verdict == _read(100 * (est - half), 100 * (est + half), d) == want
    row = pv.row(found, claim="c", model="m", where="w", paper_value="p", ours="o", notebook="n")
    assert row.interval == f"[{100 * (est - half):+.2f}, {100 * (est + half):+.2f}] points"
    assert row.statistic == pytest.approx(100 * est) and row.n_unit == "examples"
    assert f"sensitive: gold margin {found['margin']['margin difference']:+.2f} nats" in row.test


def test_no_discordant_pair_bounds_the_difference_by_the_discordance():
    for right, wrong, want in ((5, 1, V.UNDERPOWERED), (300, 100, V.RULED_OUT)):   # 12 or 800 alike
        a, b = _pair(0, 0, right, wrong)
        found = pv.comparison(a, b, 2.0, 0.05, DENSE_OK)
        n = 2 * (right + wrong)
        bound = 1 - 0.025 ** (1 / n)                  # Clopper-Pearson upper limit of 0 of n
        assert (found["test"].ci_low, found["test"].ci_high) == pytest.approx((-bound, bound))
        assert found["decision"].verdict == want


def test_untestable_when_the_dense_model_or_both_pruned_models_are_at_chance():
    a, b = _pair(30, 5, 50, 15)                       # a decisive difference on accuracy ...
    found = pv.comparison(a, b, 2.0, 0.05, DENSE_CHANCE)
    assert found["decision"].verdict == V.UNTESTABLE and "dense model at chance" in found["untestable"]
    assert "accuracy 0.370 vs chance 0.375" in found["untestable"]
    at_chance_a = _eval({t: [1] * 38 + [0] * 62 for t in TASKS})
    at_chance_b = _eval({t: [0] * 62 + [1] * 38 for t in TASKS}, 1)
    found = pv.comparison(at_chance_a, at_chance_b, 2.0, 0.05, DENSE_OK)
    assert found["decision"].verdict == V.UNTESTABLE and "neither pruned model" in found["untestable"]
    # the dense model is checked on the compared tasks only: wrong on BoolQ, right on ARC-Easy
    dense = _eval({"boolq": [0] * 100, "arc_easy": [1] * 70 + [0] * 30})
    a = _eval({"arc_easy": [1] * 30 + [0] * 5 + [1] * 50 + [0] * 15})
    b = _eval({"arc_easy": [0] * 30 + [1] * 5 + [1] * 50 + [0] * 15}, 1)
    assert pv.chance_reason(dense, a, b) is None
    assert "dense model at chance" in pv.chance_reason(dense, *_pair(30, 5, 50, 15))


def test_the_wald_interval_matches_a_brute_force_paired_bootstrap():
    rng = np.random.default_rng(3)
    a = rng.random(3000) < 0.55
    b = np.where(rng.random(3000) < 0.8, a, rng.random(3000) < 0.5)    # ~10% discordant
    wald = stats.mcnemar(a, b)
    boot = stats.paired_bootstrap(a, b, n_boot=4000, seed=1)
    assert wald.estimate == pytest.approx(boot.estimate)
    assert wald.ci_low == pytest.approx(boot.ci_low, abs=0.002)
    assert wald.ci_high == pytest.approx(boot.ci_high, abs=0.002)


def test_notebook_05_rows_use_the_tables_d_and_the_dense_model():
    sp, methods = 0.5, ["wanda", "magnitude"]
    evals = {Setting(DENSE): DENSE_OK}
    for k, m in enumerate(methods):
        for j, alloc in enumerate(("LayerIF", "Uniform", "AlphaPruning", "OWL")):
            base = [1] * (60 if alloc == "LayerIF" else 50) + [0] * (40 if alloc == "LayerIF" else 50)
            evals[Setting(m, alloc, sp)] = _eval({t: base for t in TASKS}, 10 * k + j)
    params = {"models": ["m"], "methods": methods, "sparsity": sp, "task_specific": {}, "fig3_sparsities": []}
    windows = {s: _windows(0.1 if s.allocation == "LayerIF" else 0.0, seed=i)
               for i, s in enumerate(s for s in evals if s.method != DENSE)}
    result = pruning_study.PruningStudy(params, "", {"m": evals}, pd.DataFrame(), {}, {},
                                        {"m": tables.accuracy_table(evals)}, {}, {}, {}, {}, {"m": windows})
    rows = pruning_study.verdicts(result)
    assert len(rows) == 3 + 3 + 1   # three baselines on accuracy and on NLL, the perplexity row
    for row in rows[3:6]:           # LayerIF's windows 0.1 nats per token above every baseline's
        assert row.unit == "nats" and row.n_unit == "windows" and row.verdict == V.NOT_HELD
        assert row.statistic == pytest.approx(0.1, abs=0.02) and row.effect < 0
    t2 = paper.table("table2")
    for row, base in zip(rows[:3], ("Uniform", "AlphaPruning", "OWL")):
        assert row.effect == pytest.approx(t2.at["LayerIF", "Average"] - t2.at[base, "Average"])
        assert row.statistic == pytest.approx(10.0) and row.verdict == V.HELD   # 60% vs 50% everywhere
        assert row.ours == "+10.0 accuracy points over 400 paired examples"
    result.evals["m"][Setting(DENSE)] = DENSE_CHANCE
    assert {r.verdict for r in pruning_study.verdicts(result)[:3]} == {V.UNTESTABLE}


def test_lowest_perplexity_reads_the_win_rate_interval():
    lo, hi = pv.rate_interval(6, 6)
    ref = sps.binomtest(6, 6).proportion_ci(0.95, method="exact")
    assert (lo, hi) == pytest.approx((ref.low, ref.high))
    assert V.interval_verdict(lo, hi, above=0.25, below=0.25) == V.HELD
    lo, hi = pv.rate_interval(0, 3)
    assert V.interval_verdict(lo, hi, above=0.25, below=0.25) == V.UNDERPOWERED
    assert all(math.isnan(x) for x in pv.rate_interval(1, 1))


def test_smoothing_row_pools_cells_and_scales_the_papers_relative_change():
    sp, keys, evals = 0.7, [(0.1, "wanda"), (0.3, "wanda"), (0.1, "magnitude")], {Setting(DENSE): DENSE_OK}
    for k, (e, m) in enumerate(keys):
        evals[Setting(m, "LayerIF", sp, epsilon=e, smooth=True)] = _eval({t: [1] * 70 + [0] * 30 for t in TASKS}, k)
        evals[Setting(m, "LayerIF", sp, epsilon=e, smooth=False)] = _eval({t: [1] * 60 + [0] * 40 for t in TASKS}, k)
    change = tables.smoothing_table(evals, sp, [0.1, 0.3], ["wanda"])
    change = pd.concat([change, tables.smoothing_table(evals, sp, [0.1], ["magnitude"])])
    study = smoothing.SmoothingStudy({"sparsity": sp}, "", {"m": evals}, pd.DataFrame(), {"m": change}, {}, {})  # no windows: the accuracy row alone
    [row] = smoothing.verdicts(study)
    printed = paper.table("table6").to_numpy().ravel()
    printed = printed[np.isfinite(printed)]
    assert row.effect == pytest.approx(printed.mean() * 0.6)       # the paper's mean % at our raw 60%
    assert row.statistic == pytest.approx(10.0) and "600 paired examples" in row.ours
    assert "3 of 3 cells positive" in row.ours and row.verdict == V.HELD


def _windows(shift: float, n: int = 40, seed: int = 0, tokens: int = 256) -> Evaluation:
    """An evaluation holding only per-window NLL sums: 3 nats per token plus ``shift`` plus
    window noise (sd 0.05) shared by every seed (the windows' own difficulty) and a little
    model noise (sd 0.01)."""
    base = np.random.default_rng(99).normal(0.0, 0.05, n)
    own = np.random.default_rng(seed).normal(0.0, 0.01, n)
    frame = pd.DataFrame({"nll_sum": (3.0 + shift + base + own) * tokens, "n_tokens": np.full(n, tokens)})
    return Evaluation(pd.DataFrame(), math.exp(3.0 + shift), frame.rename_axis("window"))


def test_nll_d_carries_the_relative_accuracy_gain_to_perplexity():
    t2 = paper.table("table2")
    r = (t2.at["LayerIF", "Average"] - t2.at["Uniform", "Average"]) / t2.at["Uniform", "Average"]
    assert pv.nll_d("table2", "LayerIF", "Uniform", "Average") == pytest.approx(math.log(1 - r))
    assert pv.nll_d("table2", "LayerIF", "Uniform", "Average") == pytest.approx(-0.0049679, abs=1e-6)


def test_window_mean_averages_the_nll_sums_per_window_and_checks_the_windows():
    a, b = _windows(0.0, seed=1), _windows(0.3, seed=2)
    got = pv.window_mean([a, b])
    assert np.allclose(got["nll_sum"], (a.windows["nll_sum"] + b.windows["nll_sum"]) / 2)
    assert got["n_tokens"].equals(a.windows["n_tokens"])
    with pytest.raises(ValueError, match="not on the same windows"):
        pv.window_mean([a, _windows(0.0, tokens=128)])
    with pytest.raises(ValueError, match="no per-window NLL"):
        pv.window_mean([a, Evaluation(pd.DataFrame(), 1.0)])


@pytest.mark.parametrize("shift, d, want", [
    (-0.02, -0.01, V.HELD), (0.02, -0.01, V.NOT_HELD), (0.0, -0.05, V.RULED_OUT), (0.0, -0.004, None)])
def test_window_comparison_matches_scipys_paired_t_and_reads_the_five_verdicts(shift, d, want):
    a, b = _windows(shift, seed=1).windows, _windows(0.0, seed=2).windows
    found = pv.window_comparison(a, b, d, 0.05)
    diff = a["nll_sum"] / a["n_tokens"] - b["nll_sum"] / b["n_tokens"]
    ref = sps.ttest_rel(a["nll_sum"] / a["n_tokens"], b["nll_sum"] / b["n_tokens"])
    ci = ref.confidence_interval(0.95)
    t = found["test"]
    assert t.estimate == pytest.approx(diff.mean()) and t.pvalue == pytest.approx(ref.pvalue)
    assert (t.ci_low, t.ci_high) == pytest.approx((ci.low, ci.high))
    read = _read(-t.ci_high, -t.ci_low, -d)        # the claim's direction: lower NLL
    assert found["decision"].verdict == read and (want is None or read == want)
    if read == V.UNDERPOWERED:
        assert found["decision"].n_needed > t.n and found["decision"].mde > abs(d)


def test_window_versus_pairs_each_pruner_and_sparsity_with_its_baselines():
    evals = {Setting("wanda", a, 0.5): _windows(0.1 if a == "LayerIF" else 0.0, seed=i)
             for i, a in enumerate(("LayerIF", "Uniform", "OWL"))}
    evals[Setting("sparsegpt", "LayerIF", 0.3)] = _windows(0.0, seed=7)
    table = tables.window_versus(evals, "LayerIF", ("Uniform", "AlphaPruning", "OWL"))
    assert list(table.index) == [("wanda", 0.5, "Uniform"), ("wanda", 0.5, "OWL")]
    a, b = evals[Setting("wanda", "LayerIF", 0.5)].windows, evals[Setting("wanda", "OWL", 0.5)].windows
    ref = sps.ttest_rel(a["nll_sum"] / 256, b["nll_sum"] / 256)
    assert table.loc[("wanda", 0.5, "OWL"), "p"] == pytest.approx(ref.pvalue)
    assert table.loc[("wanda", 0.5, "OWL"), "windows"] == 40
