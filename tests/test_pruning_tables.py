"""The pruning study's pure parts: per-matrix allocation, settings, and the tables built from
per-example evaluations (against hand computations and scipy)."""
import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from layerif.evaluate.suite import Evaluation
from layerif.experiments import pruning, pruning_tables as tables
from layerif.experiments.pruning import Setting


# ----------------------------------------------------------------------------- allocation
def _matrix_fixture():
    rng = np.random.default_rng(0)
    modules = ["q", "k", "down"]
    scores = pd.DataFrame(-rng.random((9, 3)), columns=modules).rename_axis("layer")
    sizes = pd.DataFrame({"q": 4, "k": 1, "down": 12}, index=scores.index)
    return scores, sizes


@pytest.mark.parametrize("smooth", [False, True])
def test_matrix_sparsity_meets_the_weighted_target(smooth):
    scores, sizes = _matrix_fixture()
    out = pruning.matrix_sparsity(scores, 0.6, sizes, epsilon=0.2, smooth=smooth)
    assert out.shape == scores.shape and list(out.columns) == list(scores.columns)
    weighted = (out * sizes).to_numpy().sum() / sizes.to_numpy().sum()
    assert weighted == pytest.approx(0.6, abs=1e-12)
    assert out.to_numpy().max() / out.to_numpy().min() <= 1.2 / 0.8 + 1e-12


def test_matrix_sparsity_without_smoothing_is_the_linear_map_of_abs_scores():
    scores, sizes = _matrix_fixture()
    out = pruning.matrix_sparsity(scores, 0.5, sizes, epsilon=0.1, smooth=False)
    a = scores.abs().to_numpy()
    r = (a - a.min()) / (a.max() - a.min()) * 0.2 + 0.9
    eta = 0.5 * sizes.to_numpy().sum() / (r * sizes.to_numpy()).sum()
    np.testing.assert_allclose(out.to_numpy(), eta * r, rtol=1e-12)


def test_matrix_sparsity_rejects_misaligned_sizes():
    scores, sizes = _matrix_fixture()
    with pytest.raises(ValueError, match="n_params"):
        pruning.matrix_sparsity(scores, 0.5, sizes[["k", "q", "down"]])


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


def test_smoothing_verdicts_count_cells_and_read_the_paper_table():
    change = pd.DataFrame({"% change accuracy": [1.0, -2.0, 3.0, 0.5], "% change perplexity": [-1.0, -2.0, -3.0, 4.0],
                           "McNemar p": [0.5, 0.01, 0.9, 0.2]},
                          index=pd.MultiIndex.from_product([[0.1, 0.3], ["wanda", "magnitude"]], names=["epsilon", "method"]))
    acc = tables.accuracy_table({Setting("dense"): _random_eval(0, ppl=10.0),
                                 Setting("wanda", "LayerIF", 0.7): _random_eval(1, ppl=300.0)})
    paper_table = pd.DataFrame([[1.0, -1.0], [2.0, np.nan]])
    lines = tables.smoothing_verdicts(change, acc, paper_table)
    assert lines[0].startswith("Smoothing raised the average accuracy in 3 of 4") and "lowered the perplexity in 3" in lines[0]
    assert "1 accuracy differences are significant" in lines[0]
    assert "reports 2 of 3 cells positive" in lines[1] and "on accuracy smoothing helps" in lines[1]
    assert "at perplexity 300-300" in lines[2]


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
