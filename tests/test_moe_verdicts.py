"""Notebook 03's claims (layerif.experiments.moe_verdicts): the five verdicts on hand-made runs.

References: the paper's d read from the printed Table 7 / Table 4; the interval recomputed by
moe_compare.versus over the tasks kept; the MDE and n needed from layerif.power on the
per-setting differences computed here by hand; each verdict also read off the interval as a
set of points against 0 and d.
"""
import numpy as np
import pandas as pd
import pytest

from layerif import paper, power
from layerif.experiments import moe_compare
from layerif.experiments import moe_tables as tables
from layerif.experiments import moe_verdicts as mv
from layerif.experiments import verdict as V
from layerif.experiments.moe import BASE, MoERun, MoESetting

N = 100                         # held-out examples per (task, budget)
TASKS = ("sst2", "csqa")
METHODS = {5.0: ("LayerIF +ve", "AlphaLoRA", "MoLA 5555"), 2.5: ("LayerIF +ve", "AlphaLoRA", "MoLA 1234")}


def _run(correct) -> MoERun:
    correct = np.asarray(correct, dtype=bool)
    frame = pd.DataFrame({"correct": correct, "label": np.arange(correct.size) % 2, "n_choices": 2,
                          "margin": correct - 0.5},
                         index=pd.Index([f"e{i}" for i in range(correct.size)], name="id"))
    return MoERun(frame, pd.Series([1.0, 0.5]), pd.DataFrame(),
                  {"train_seconds": 1.0, "eval_seconds": 1.0, "trainable_params": 10})


def _runs(acc: dict, base: dict, jitter: float | None = 0.0, seed: int = 0) -> dict:
    """Runs of every method per task and budget: ``acc[task] = (ours, baselines)`` accuracy,
    each model correct where its uniform draw per example is below it; the baselines' draw is
    LayerIF's plus ``jitter`` times a centred uniform (0: one draw, few discordant pairs; None:
    independent draws); ``base[task]``: the base model's accuracy."""
    rng = np.random.default_rng(seed)
    out = {}
    for task in TASKS:
        mine, theirs = acc[task]
        out[MoESetting(BASE, task)] = _run(rng.random(N) < base[task])
        for pb, methods in METHODS.items():
            u = rng.random(N)
            for m in methods:
                v = (u if m == "LayerIF +ve" else rng.random(N) if jitter is None
                     else u + jitter * (rng.random(N) - 0.5))
                out[MoESetting(m, task, pb)] = _run(v < (mine if m == "LayerIF +ve" else theirs))
    return out


def _result(runs) -> tables.MoEResult:
    return tables.notebook_tables({"m": runs}, pd.DataFrame(), {"plans": {"m": {"tasks": ["sst2"]}},
                                                                "n_eval": N}, "sizes")


def _by_hand(runs, family: str, tasks) -> tuple[np.ndarray, float]:
    """Per-setting accuracy differences (points) of LayerIF minus the family over ``tasks``,
    each family cell the mean over its methods at that budget; and the paper's d."""
    fam = tables.FAMILIES[family]
    diffs = []
    for task in tasks:
        for pb in (2.5, 5.0):
            cell = lambda ms: np.mean([r.examples["correct"].mean() for s, r in runs.items()
                                       if s.method in ms and s.task == task and s.per_block == pb])
            diffs.append(100 * (cell(("LayerIF +ve",)) - cell(fam)))
    t7 = paper.table("table7")
    return np.array(diffs), t7.at["LayerIF", "Average Accuracy"] - t7.at[family, "Average Accuracy"]


def _read(lo, hi, d):
    """The verdict read off the interval as 2001 points."""
    pts = np.linspace(lo, hi, 2001)
    return (V.HELD if (pts > 0).all() else V.NOT_HELD if (pts < 0).all()
            else V.RULED_OUT if not (lo <= d <= hi) else V.UNDERPOWERED)


SCENARIOS = {   # name: (acc per task, base per task, jitter, seed, the verdict it is built for)
    "held": ({"sst2": (0.95, 0.6), "csqa": (0.9, 0.6)}, {"sst2": 0.5, "csqa": 0.5}, 0.1, 0, V.HELD),
    "not held": ({"sst2": (0.6, 0.95), "csqa": (0.6, 0.9)}, {"sst2": 0.5, "csqa": 0.5}, 0.1, 0, V.NOT_HELD),
    # equal accuracies, a few discordant pairs each way: an interval of +-2 points around 0
    "ruled out": ({"sst2": (0.8, 0.8), "csqa": (0.8, 0.8)}, {"sst2": 0.5, "csqa": 0.5}, 0.06, 2,
                  V.RULED_OUT),
    # independent draws: discordance ~40%, an interval of +-6 points
    "underpowered": ({"sst2": (0.78, 0.75), "csqa": (0.78, 0.75)}, {"sst2": 0.5, "csqa": 0.5}, None, 0,
                     V.UNDERPOWERED),
}


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_each_comparison_branch_on_hand_made_runs(name):
    acc, base, jitter, seed, want = SCENARIOS[name]
    runs = _runs(acc, base, jitter, seed)
    rows = mv.verdicts(_result(runs))
    assert [r.claim for r in rows] == ["LayerIF allocation beats AlphaLora (LoRA-MoE)",
                                       "LayerIF allocation beats Mola (LoRA-MoE)"]
    for row, family in zip(rows, ("AlphaLora", "Mola")):
        diffs, d = _by_hand(runs, family, TASKS)
        assert row.effect == pytest.approx(d) and row.unit == "points" and row.n_unit == "settings"
        assert row.statistic == pytest.approx(diffs.mean())
        assert row.mde == pytest.approx(power.t_mde(diffs.std(ddof=1), diffs.size), rel=1e-6)
        assert row.n_needed == power.t_n_needed(d, diffs.std(ddof=1))
        assert row.ci_low <= row.statistic <= row.ci_high
        assert row.verdict == _read(row.ci_low, row.ci_high, d) == want, (family, row.interval)
        assert row.interval == f"[{row.ci_low:+.2f}, {row.ci_high:+.2f}] points"
        assert "left out" not in row.ours and f"over {diffs.size} settings" in row.ours


def test_a_task_at_chance_is_left_out_and_the_rest_decides():
    runs = _runs({"sst2": (0.95, 0.6), "csqa": (0.5, 0.5)}, {"sst2": 0.5, "csqa": 0.5})
    for s, r in runs.items():          # csqa: every model exactly at the bar (50 of 100)
        if s.task == "csqa":
            runs[s] = _run(np.arange(N) < N // 2)
    result = _result(runs)
    assert mv.task_reasons(result, "m", ("LayerIF +ve", "AlphaLoRA")).keys() == {"csqa"}
    row = mv.verdicts(result)[0]
    diffs, d = _by_hand(runs, "AlphaLora", ("sst2",))
    assert row.statistic == pytest.approx(diffs.mean()) and "over 2 settings" in row.ours
    assert "csqa left out: no model compared is above the chance bar 0.50" in row.ours
    kept = {s: r for s, r in runs.items() if s.task == "sst2"}
    ref = moe_compare.versus(kept, "LayerIF +ve", {"AlphaLora": ("AlphaLoRA",)}).loc["AlphaLora"]
    assert (row.ci_low, row.ci_high) == pytest.approx((100 * ref["bootstrap CI low"],
                                                       100 * ref["bootstrap CI high"]))
    assert row.p == ref["bootstrap p"] and row.verdict == V.HELD


def test_every_task_at_chance_or_made_worse_is_untestable():
    at_chance = _runs({"sst2": (0.5, 0.5), "csqa": (0.5, 0.5)}, {"sst2": 0.5, "csqa": 0.5})
    at_chance = {s: _run(np.arange(N) < N // 2) for s in at_chance}
    worse = _runs({"sst2": (0.75, 0.7), "csqa": (0.75, 0.7)}, {"sst2": 0.99, "csqa": 0.99})
    for runs, why in ((at_chance, "chance bar"), (worse, "worse than its base")):
        result = _result(runs)
        for row in mv.verdicts(result):
            assert row.verdict == V.UNTESTABLE and why in row.test
            assert np.isnan(row.mde) and np.isnan(row.n_needed) and np.isfinite(row.effect)
            # the numbers over every task stay on the row, for the record
            t7 = result.models["m"]["table7"].loc[row.claim.split()[3]]
            assert row.statistic == pytest.approx(100 * t7["LayerIF +ve - baseline"])


def test_gemma_stands_for_table4_and_says_its_d_is_the_printed_difference():
    t4 = paper.table("table4")
    d, text, which = mv.paper_effect("gemma3-270m", "Mola")
    assert d == pytest.approx(t4.at["Average", "LayerIF (+ve)"] - t4.at["Average", "MoLA(3,5,7,8)"])
    assert text == "87.81 vs 87.47 (table4, Average)" and "a sign" in which
    d, text, which = mv.paper_effect("smollm2-135m", "AlphaLora")
    assert d == pytest.approx(82.28 - 79.30) and text == "82.28 vs 79.30 (table7, Average Accuracy)"
    assert which == "d: Table 7's Average Accuracy difference"
