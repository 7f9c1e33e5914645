"""The five-verdict rule (layerif.experiments.verdict.decide_effect) on hand-made intervals."""
import math

import numpy as np
import pytest

from layerif import stats
from layerif.experiments import verdict as V

D = 0.03  # the paper's effect: +3 accuracy points


@pytest.mark.parametrize("lo, hi, want", [
    (0.01, 0.08, V.HELD),            # above 0
    (0.005, 0.02, V.HELD),           # above 0 though below d: the reason says so
    (-0.09, -0.01, V.NOT_HELD),      # below 0
    (-0.035, 0.004, V.RULED_OUT),    # SmolLM2's MoE interval [-3.5, +0.4] against d = +3.0
    (-0.027, 0.017, V.RULED_OUT),
    (-0.02, 0.05, V.UNDERPOWERED),   # contains 0 and d
    (-0.02, 0.03, V.UNDERPOWERED),   # d on the edge: not excluded
    (0.0, 0.01, V.RULED_OUT),        # 0 on the edge: not above 0
])
def test_each_branch_on_hand_intervals(lo, hi, want):
    got = V.decide_effect(lo, hi, D, mde=0.059, n_needed=2200.0)
    assert got.verdict == want and got.effect == D
    assert got.mde == 0.059 and got.n_needed == 2200.0
    if want == V.UNDERPOWERED:
        assert "0.059" in got.reason and "2.2e+03" in got.reason
    if want == V.HELD and hi < D:
        assert "below d" in got.reason


def test_a_negative_effect_is_the_claimed_direction():
    # NLL of A - B; the claim: A lowers it by 0.04 nats per token.
    assert V.decide_effect(-0.06, -0.02, -0.04).verdict == V.HELD
    assert V.decide_effect(0.01, 0.05, -0.04).verdict == V.NOT_HELD
    assert V.decide_effect(-0.02, 0.01, -0.04).verdict == V.RULED_OUT
    assert V.decide_effect(-0.05, 0.01, -0.04).verdict == V.UNDERPOWERED


def test_untestable_with_a_reason_or_without_an_interval():
    got = V.decide_effect(0.01, 0.08, D, untestable="dense model at chance")
    assert got.verdict == V.UNTESTABLE and got.reason == "dense model at chance"
    assert V.decide_effect(math.nan, 0.1, D).verdict == V.UNTESTABLE
    with pytest.raises(ValueError, match="^effect="):
        V.decide_effect(-0.1, 0.1, 0.0)
    with pytest.raises(ValueError, match="^untestable="):
        V.decide_effect(-0.1, 0.1, D, untestable="  ")


def test_the_rule_agrees_with_a_brute_force_reading_on_random_intervals():
    rng = np.random.default_rng(0)
    for _ in range(500):
        lo, hi = np.sort(rng.uniform(-0.1, 0.1, 2))
        d = rng.choice([-1, 1]) * rng.uniform(0.005, 0.08)
        grid = np.linspace(lo, hi, 2001)            # the interval as points
        toward = grid * np.sign(d)
        if (toward > 0).all():
            want = V.HELD
        elif (toward < 0).all():
            want = V.NOT_HELD
        elif not (lo <= d <= hi):
            want = V.RULED_OUT
        else:
            want = V.UNDERPOWERED
        assert V.decide_effect(lo, hi, d).verdict == want


def test_untestable_reason_at_chance_and_made_worse():
    at_chance = [1] * 7 + [0] * 13            # 35% against a pooled chance of 35.7%
    reason = V.untestable_reason(at_chance, chance=0.357)
    assert reason is not None and "at chance" in reason
    assert V.untestable_reason([1] * 18 + [0] * 2, chance=0.5) is None   # 90% vs 50%: p < 0.001
    worse = stats.mcnemar([0] * 30 + [1] * 10, [1] * 30 + [1] * 10)     # trained loses 30 of 40
    assert "worse" in V.untestable_reason(trained_vs_base=worse)
    better = stats.mcnemar([1] * 30 + [1] * 10, [0] * 30 + [1] * 10)
    assert V.untestable_reason(trained_vs_base=better) is None
    with pytest.raises(ValueError, match="^chance="):
        V.untestable_reason([1, 0, 1])


def test_verdict_rows_accept_the_five_verdicts_only():
    for v in V.FIVE_VERDICTS:
        row = V.Verdict("c", "m", "w", "p", "o", "t", 0.5, "[0, 1]", v, "10")
        assert row.verdict == v
    assert V.FIVE_VERDICTS == V.VERDICTS == ("held", "not held", "ruled out at this scale", "underpowered",
                                             "untestable here")
    with pytest.raises(ValueError, match="^verdict="):
        V.Verdict("c", "m", "w", "p", "o", "t", 0.5, "[0, 1]", "inconclusive at this scale", "10")


def test_untestable_carries_no_power_figures():
    got = V.decide_effect(-1.0, 1.0, 3.0, mde=4.0, n_needed=900.0, untestable="dense model at chance")
    assert got.verdict == V.UNTESTABLE and math.isnan(got.mde) and math.isnan(got.n_needed)
    assert got.effect == 3.0


def test_decided_builds_the_row_from_the_decision():
    decision = V.decide_effect(-2.5, 0.4, 3.0, mde=4.4, n_needed=4.0)
    row = V.decided(decision, -2.5, 0.4, unit="points", n_unit="settings", claim="c", model="m",
                    where="w", paper="p", ours="o", test="t", p=0.2, notebook="n", statistic=-1.0)
    assert row.verdict == V.RULED_OUT and row.interval == "[-2.50, +0.40] points"
    assert (row.effect, row.ci_low, row.ci_high, row.mde, row.n_needed) == (3.0, -2.5, 0.4, 4.4, 4.0)
    shown = V.verdict_table([row]).iloc[0]
    assert list(shown.index) == V.COLUMNS
    assert (shown["paper effect d"], shown["MDE"], shown["n needed"]) == ("+3 points", "4.4 points", "4 settings")
    unreachable = V.decided(V.decide_effect(-2.0, 5.0, 3.0, mde=math.inf, n_needed=math.inf), -2.0, 5.0,
                            unit="points", n_unit="examples", claim="c", model="m", where="w", paper="p",
                            ours="o", test="t", p=0.2, notebook="n")
    shown = V.verdict_table([unreachable]).iloc[0]
    assert (shown["MDE"], shown["n needed"], shown["verdict"]) == ("none at this n", "unreachable", V.UNDERPOWERED)


def test_rows_with_nan_fields_compare_equal():
    a = V.Verdict("c", "m", "w", "p", "o", "t", float("nan"), "[0, 1]", V.HELD, "10", statistic=float("nan"))
    b = V.Verdict("c", "m", "w", "p", "o", "t", float("nan"), "[0, 1]", V.HELD, "10", statistic=float("nan"))
    assert a == b and a != V.Verdict("c", "m", "w", "p", "o", "t", 0.5, "[0, 1]", V.HELD, "10")


def test_tally_counts_the_five_per_notebook_against_a_hand_count():
    verdicts = [V.HELD, V.HELD, V.RULED_OUT, V.UNTESTABLE, V.NOT_HELD, V.UNDERPOWERED, V.UNTESTABLE]
    books = ["01", "03", "03", "03", "05", "05", "05"]
    rows = [V.Verdict("c", "m", "w", "p", "o", "t", 0.5, "[0, 1]", v, b) for v, b in zip(verdicts, books)]
    counts = V.tally(rows)
    assert list(counts.columns) == list(V.VERDICTS) and list(counts.index) == ["01", "03", "05", "all"]
    for book in ("01", "03", "05"):
        for v in V.VERDICTS:
            want = sum(1 for vv, bb in zip(verdicts, books) if vv == v and bb == book)
            assert counts.at[book, v] == want
    assert counts.loc["all"].tolist() == [2, 1, 1, 1, 2]
    assert V.tally(V.verdict_table(rows)).equals(counts)
