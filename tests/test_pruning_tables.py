"""The pruning study's pure parts: settings, the tables built from per-example evaluations,
and notebooks 05 / 07 / 08's sentences and verdict rows (against hand computations and scipy)."""
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from layerif import paper
from layerif.evaluate.suite import Evaluation
from layerif.experiments import granularity, pruning, pruning_tables as tables, smoothing
from layerif.experiments.pruning import Setting
from layerif.experiments.verdict import direction, interval


# ----------------------------------------------------------------------------- settings
def test_settings_labels_folders_and_grid():
    grid = pruning.grid(["wanda", "sparsegpt"], sparsities=[0.2, 0.5])
    assert grid[0] == Setting("dense") and grid[0].sparsity == 0.0 and len(grid) == 1 + 2 * 2 * 4
    variants = [Setting("wanda", "LayerIF", 0.7, epsilon=e, smooth=s) for e in (0.1, 0.2) for s in (True, False)]
    variants += [Setting("wanda", "LayerIF", 0.7, granularity="matrix"),
                 Setting("wanda", "LayerIF", 0.7, scores="boolq")]
    assert len({v.folder() for v in variants}) == len(variants)
    assert Setting("wanda", "LayerIF", 0.7, epsilon=0.1, smooth=False).label() == "LayerIF (raw, eps 0.1)"
    with pytest.raises(ValueError, match="allocation='Random'"):
        Setting("wanda", "Random")
    with pytest.raises(ValueError, match="granularity='row'"):
        Setting("wanda", granularity="row")


# ----------------------------------------------------------------------------- tables
TASKS = ("boolq", "arc_easy")


def _evaluation(correct: dict, margins: dict, ppl: float, labels=None) -> Evaluation:
    rows = []
    for task in TASKS:
        for i, c in enumerate(correct[task]):
            label = labels[task][i] if labels else 0
            rows.append({"task": task, "id": f"{task}/{i}", "label": label,
                         "n_choices": 2 if task == "boolq" else 4, "correct": bool(c), "correct_norm": bool(c),
                         "margin": margins[task][i]})
    return Evaluation(pd.DataFrame(rows).set_index(["task", "id"]), ppl)


def _random_eval(seed, n=30, ppl=20.0, p=0.6):
    rng = np.random.default_rng(seed)
    correct = {t: rng.random(n) < p for t in TASKS}
    margins = {t: rng.normal(0.2, 1.0, n) for t in TASKS}
    return _evaluation(correct, margins, ppl)


def test_dense_check_against_scipy_binomial():
    n = 40
    correct = {"boolq": [1] * 26 + [0] * 14, "arc_easy": [1] * 18 + [0] * 22}
    labels = {"boolq": [0] * 25 + [1] * 15, "arc_easy": [0, 1, 2, 3] * 10}
    ev = _evaluation(correct, {t: [0.0] * n for t in TASKS}, 10.0, labels)
    check = tables.dense_check(ev, fixed_choices=["boolq"])
    # boolq (fixed yes/no): chance 0.5, majority 25/40 = 0.625 -> tested against 0.625
    assert check.at["boolq", "majority answer"] == pytest.approx(0.625)
    assert check.at["boolq", "p (acc > bar)"] == pytest.approx(
        sps.binomtest(26, 40, 0.625, alternative="greater").pvalue)
    assert not check.at["boolq", "above chance"]
    # without fixed choices the bar is chance: 26/40 against 0.5
    loose = tables.dense_check(ev)
    assert loose.at["boolq", "p (acc > bar)"] == pytest.approx(
        sps.binomtest(26, 40, 0.5, alternative="greater").pvalue)
    # arc_easy: chance 0.25; 18/40 is far above
    assert check.at["arc_easy", "chance"] == pytest.approx(0.25)
    assert check.at["arc_easy", "p (acc > bar)"] == pytest.approx(
        sps.binomtest(18, 40, 0.25, alternative="greater").pvalue)
    assert check.at["arc_easy", "above chance"]
    assert check.at["arc_easy", "ci_low"] < 0.45 < check.at["arc_easy", "ci_high"]
    # acc decides; acc_norm (here: the examples' correct_norm, equal to correct) tested beside it
    assert (check["metric"] == "acc").all()
    assert check.at["arc_easy", "acc_norm"] == pytest.approx(18 / 40)
    assert check.at["boolq", "p (acc_norm > bar)"] == pytest.approx(check.at["boolq", "p (acc > bar)"])
    flipped = Evaluation(ev.examples.assign(correct_norm=~ev.examples["correct"]), 10.0)
    other = tables.dense_check(flipped, fixed_choices=["boolq"])
    assert other.at["arc_easy", "acc_norm"] == pytest.approx(22 / 40)
    assert other.at["arc_easy", "p (acc_norm > bar)"] == pytest.approx(
        sps.binomtest(22, 40, 0.25, alternative="greater").pvalue)
    assert other.at["arc_easy", "p (acc > bar)"] == check.at["arc_easy", "p (acc > bar)"]


def test_accuracy_table_and_paper_layout_by_hand():
    evals = {Setting("dense"): _random_eval(0, ppl=10.0)}
    for k, (m, a) in enumerate([(m, a) for m in ("magnitude", "wanda") for a in pruning.ALLOCATIONS]):
        evals[Setting(m, a, 0.5)] = _random_eval(k + 1, ppl=20.0 + k)
    t = tables.accuracy_table(evals, above=["arc_easy"])
    s = Setting("wanda", "OWL", 0.5)
    ex = evals[s].examples
    per_task = ex.groupby(level="task")["correct"].mean()
    row = t.loc[("wanda", "OWL", 0.5)]
    assert row["boolq"] == pytest.approx(per_task["boolq"])
    assert row[tables.AVERAGE] == pytest.approx(per_task.mean())
    assert row[tables.AVERAGE_ABOVE] == pytest.approx(per_task["arc_easy"])
    assert row["margin"] == pytest.approx(ex.groupby(level="task")["margin"].mean().mean())
    se = ex.groupby(level="task")["correct"].agg(lambda c: c.astype(float).std(ddof=1) / np.sqrt(len(c)))
    assert row["average stderr"] == pytest.approx(np.sqrt((se ** 2).sum()) / 2)
    assert row["perplexity"] == evals[s].perplexity
    layout = tables.method_by_allocation(t)
    assert list(layout.columns) == ["Magnitude", "Wanda", "Average"]
    assert layout.at["OWL", "Wanda"] == pytest.approx(per_task.mean())
    assert layout.at["OWL", "Average"] == pytest.approx((layout.at["OWL", "Magnitude"] + layout.at["OWL", "Wanda"]) / 2)


def test_paired_comparison_counts_discordant_pairs():
    a, b = _random_eval(1), _random_eval(2)
    out = tables.paired_comparison(a, b)
    ca, cb = a.examples["correct"].to_numpy(), b.examples["correct"].to_numpy()
    n10, n01 = int((ca & ~cb).sum()), int((~ca & cb).sum())
    assert out["acc difference"] == pytest.approx((n10 - n01) / len(ca))
    assert out["McNemar p"] == pytest.approx(sps.binomtest(n10, n10 + n01, 0.5).pvalue)
    diff = a.examples["margin"].to_numpy() - b.examples["margin"].to_numpy()
    assert out["margin difference"] == pytest.approx(diff.mean())
    assert out["margin CI low"] < diff.mean() < out["margin CI high"]
    assert out["perplexity ratio"] == pytest.approx(1.0)
    other = Evaluation(b.examples.iloc[:-1], 1.0)
    with pytest.raises(ValueError, match="same examples"):
        tables.paired_comparison(a, other)


def test_table8_uses_scipy_paired_t_over_sparsity_task_cells():
    sparsities = (0.2, 0.5)
    evals = {}
    for k, a in enumerate(pruning.ALLOCATIONS):
        for j, s in enumerate(sparsities):
            evals[Setting("sparsegpt", a, s)] = _random_eval(10 * k + j)
    t = tables.table8(evals, "sparsegpt", sparsities)
    cells = {a: [evals[Setting("sparsegpt", a, s)].examples.groupby(level="task", sort=False)["correct"].mean()[task]
                 for s in sparsities for task in TASKS] for a in pruning.ALLOCATIONS}
    assert t.at["LayerIF", "average accuracy"] == pytest.approx(np.mean(cells["LayerIF"]))
    for base in ("AlphaPruning", "Uniform", "OWL"):
        assert t.at[base, "t-test p (per setting)"] == pytest.approx(
            sps.ttest_rel(cells["LayerIF"], cells[base]).pvalue)
        assert t.at[base, "examples"] == 2 * 2 * 30


def test_smoothing_table_percentage_change():
    evals = {}
    for k, eps in enumerate((0.1, 0.3)):
        for smooth in (True, False):
            evals[Setting("wanda", "LayerIF", 0.7, epsilon=eps, smooth=smooth)] = \
                _random_eval(2 * k + smooth, ppl=30.0 + smooth)
    t = tables.smoothing_table(evals, 0.7, (0.1, 0.3), ["wanda"])
    acc = {s: evals[s].examples.groupby(level="task")["correct"].mean().mean() for s in evals}
    s_, r_ = Setting("wanda", "LayerIF", 0.7, epsilon=0.3, smooth=True), Setting("wanda", "LayerIF", 0.7, epsilon=0.3, smooth=False)
    assert t.at[(0.3, "wanda"), "% change accuracy"] == pytest.approx(100 * (acc[s_] - acc[r_]) / acc[r_])
    assert t.at[(0.3, "wanda"), "% change perplexity"] == pytest.approx(100 * (31 - 30) / 30)


def test_task_specific_table_reads_each_task_alone():
    by_task = {}
    for k, task in enumerate(TASKS):
        by_task[task] = {Setting("wanda", "LayerIF", 0.5, scores=task): _random_eval(k),
                         Setting("wanda", "LayerIF", 0.5): _random_eval(k + 5),
                         Setting("wanda", "Uniform", 0.5): _random_eval(k + 9)}
    t = tables.task_specific_table(by_task, TASKS)
    own = by_task["arc_easy"][Setting("wanda", "LayerIF", 0.5, scores="arc_easy")]
    assert t.at["arc_easy", "own scores"] == pytest.approx(own.examples["correct"].mean())
    w = tables.wins(tables.versus({**by_task["boolq"], Setting("wanda", "AlphaPruning", 0.5): _random_eval(3),
                                   Setting("wanda", "OWL", 0.5): _random_eval(4)}, "LayerIF", 0.5, ["wanda"]))
    assert w["comparisons"] == 3


def test_fixed_choice_tasks():
    from layerif.data import load_task

    examples = {t: list(load_task(t, "test", n=6)) for t in ("boolq", "rte", "arc_easy", "winogrande")}
    assert tables.fixed_choice_tasks(examples) == ["boolq", "rte"]


def _smoothing_study(change, acc):
    """Four (epsilon, pruner) cells; on 20 shared windows the smoothed models sit 0.05 nats per
    token below the raw ones in three cells and 0.05 above in the fourth (epsilon 0.3, magnitude)."""
    params = {"sparsity": 0.7, "epsilons": [0.1, 0.3], "methods": ["wanda", "magnitude"]}
    rng, base = np.random.default_rng(5), np.random.default_rng(6).normal(3.0, 0.1, 20)
    shift = {(e, m, True): (0.05 if (e, m) == (0.3, "magnitude") else -0.05)
             for e in params["epsilons"] for m in params["methods"]}
    windows = {Setting(m, "LayerIF", 0.7, epsilon=e, smooth=flag): Evaluation(pd.DataFrame(), 1.0, pd.DataFrame(
        {"nll_sum": 100 * (base + shift.get((e, m, flag), 0.0) + rng.normal(0, 0.005, 20)),
         "n_tokens": np.full(20, 100)}).rename_axis("window"))
        for e in params["epsilons"] for m in params["methods"] for flag in (True, False)}
    evals = {Setting("dense"): _random_eval(0), **{s: _random_eval(k + 1) for k, s in enumerate(windows)}}
    return smoothing.SmoothingStudy(params, "", {"m": evals}, pd.DataFrame(), {"m": change}, {"m": acc},
                                    {"m": windows})


def test_smoothing_summary_and_verdict_count_cells():
    change = pd.DataFrame({"% change accuracy": [1.0, -2.0, 3.0, 0.5], "% change perplexity": [-1.0, -2.0, -3.0, 4.0],
                           "McNemar p": [0.5, 0.01, 0.9, 0.2]},
                          index=pd.MultiIndex.from_product([[0.1, 0.3], ["wanda", "magnitude"]], names=["epsilon", "method"]))
    acc = tables.accuracy_table({Setting("dense"): _random_eval(0, ppl=10.0),
                                 Setting("wanda", "LayerIF", 0.7): _random_eval(1, ppl=300.0)})
    study = _smoothing_study(change, acc)
    lines = smoothing.summary(study).splitlines()
    printed = paper.table("table6").to_numpy().ravel()
    printed = printed[np.isfinite(printed)]
    assert lines[0].startswith("• m: Smoothing raised the average accuracy in 3 of 4") and "lowered the perplexity in 3" in lines[0]
    assert "1 accuracy differences are significant" in lines[0]
    assert f"reports {(printed > 0).sum()} of {printed.size} cells positive" in lines[1]
    assert "on accuracy smoothing helps" in lines[1] and "it helps." in lines[1]
    assert "at perplexity 300 to 300" in lines[2]   # three significant digits (tables.perplexity_text)
    assert "smoothed significantly lower than raw for 3 and significantly higher for 1 of 4" in lines[3]
    windows = study.windows["m"]
    smooth, raw = (sum(e.windows["nll_sum"] / 100 for s, e in windows.items() if s.smooth == flag) / 4
                   for flag in (True, False))
    nll = smoothing.verdicts(study)[-1]
    assert nll.p == pytest.approx(sps.ttest_rel(smooth, raw).pvalue)
    assert nll.statistic == pytest.approx(float((smooth - raw).mean()))   # -0.025 nats
    assert nll.effect == pytest.approx(math.log(1 - printed.mean() / 100)) and nll.unit == "nats"
    assert "NLL per token (smoothed - raw, averaged per window)" in nll.test
    table = smoothing.window_table(study)
    assert table.loc[("m", 0.3, "magnitude"), "NLL difference"] == pytest.approx(0.05, abs=0.01)


def test_direction_and_interval_rules():
    assert [direction(k, 8) for k in (8, 6, 5, 3, 2, 0)] == ["helps", "helps", "is mixed", "is mixed", "hurts", "hurts"]
    assert interval(-0.123, 0.456, 100, " points") == "[-12.30, +45.60] points"
    assert interval(np.nan, 1.0) == "undefined"


def test_granularity_summary_and_verdict():
    sp, methods, evals = 0.7, ["wanda", "magnitude"], {}
    for k, m in enumerate(methods):
        for g in ("block", "matrix"):
            evals[Setting(m, "LayerIF", sp, scores=granularity.LABEL, granularity=g)] = \
                _random_eval(10 * k + (g == "matrix"), ppl=20.0 + (g == "matrix"))
    for k, a in enumerate(("positive", "top", "all")):
        evals[Setting("wanda", "LayerIF", 0.5, aggregation=a)] = _random_eval(30 + k, ppl=40.0 + k)
    evals[Setting("wanda", "Uniform", 0.5)] = _random_eval(40, ppl=50.0)
    params = {"sparsity": sp, "methods": methods}
    rng, base = np.random.default_rng(5), np.random.default_rng(6).normal(3.0, 0.1, 20)
    windows = {s: Evaluation(pd.DataFrame(), 1.0, pd.DataFrame(
        {"nll_sum": 100 * (base + (0.0 if s.granularity == "block" else 0.05) + rng.normal(0, 0.01, 20)),
         "n_tokens": np.full(20, 100)}).rename_axis("window"))
        for s in evals if s.sparsity == sp}
    study = granularity.GranularityStudy(
        params, "", {"m": evals}, pd.DataFrame(), pd.DataFrame(),
        {"m": tables.granularity_table(evals, sp, methods, scores=granularity.LABEL)}, {},
        {"m": tables.aggregation_table(evals, "wanda", 0.5)}, {"m": windows})
    lines = granularity.summary(study).splitlines()
    assert "per block significantly lower than per matrix for 2 and significantly higher for 0 of 2" in lines[2]
    block_w = sum(windows[s].windows["nll_sum"] / 100 for s in windows if s.granularity == "block") / 2
    matrix_w = sum(windows[s].windows["nll_sum"] / 100 for s in windows if s.granularity == "matrix") / 2
    [_, nll] = granularity.verdicts(study)
    assert nll.p == pytest.approx(sps.ttest_rel(block_w, matrix_w).pvalue)
    assert nll.statistic == pytest.approx(float((block_w - matrix_w).mean()))
    assert nll.effect == pytest.approx(math.log(1 - 0.0214)) and nll.verdict == "held" and nll.unit == "nats"
    assert "NLL per token (per block - per matrix, averaged per window)" in nll.test
    assert "per block has the lower perplexity for 2 of 2" in lines[0]
    assert "LayerIF (all): 42, Uniform: 50." in lines[1]
    g = study.granularity["m"]   # accuracy points, the unit of notebook 10's row
    assert f"{100 * (g['per block'] - g['per matrix']).mean():+.1f} accuracy points" in lines[0]
    [row, _] = granularity.verdicts(study)
    block = [evals[Setting(m, "LayerIF", sp, scores=granularity.LABEL)] for m in methods]
    matrix = [evals[Setting(m, "LayerIF", sp, scores=granularity.LABEL, granularity="matrix")] for m in methods]
    a = np.concatenate([e.examples["correct"].to_numpy() for e in block])
    b = np.concatenate([e.examples["correct"].to_numpy() for e in matrix])
    n10, n01 = int((a & ~b).sum()), int((~a & b).sum())
    assert row.p == pytest.approx(sps.binomtest(n10, n10 + n01, 0.5).pvalue)
    assert row.statistic == pytest.approx(100 * (n10 - n01) / len(a)) and row.effect == 2.14
    assert row.unit == "points" and row.n_unit == "examples" and "sensitive: gold margin" in row.test


def test_perplexity_wins_counts_settings_where_layerif_is_lowest():
    evals = {Setting("dense"): _random_eval(0, ppl=5.0)}
    ppl = {("wanda", 0.5): [10, 11, 12, 9], ("sparsegpt", 0.5): [10, 9, 12, 11], ("sparsegpt", 0.3): [8, 9, 9, 7]}
    for (m, sp), values in ppl.items():
        for a, v in zip(pruning.ALLOCATIONS, values):
            evals[Setting(m, a, sp)] = _random_eval(int(v), ppl=float(v))
    evals[Setting("magnitude", "LayerIF", 0.5)] = _random_eval(1, ppl=1.0)  # incomplete setting: ignored
    w = tables.perplexity_wins(tables.accuracy_table(evals))
    assert (w["settings"], w["wins"]) == (3, 2)
    assert w["p"] == pytest.approx(sps.binomtest(2, 3, 0.25, alternative="greater").pvalue)
