"""Notebook 09's validation of layer scores: statistics against scipy / brute force, and the
retraining machinery (cached block inputs, tails) against whole-model computations."""
import itertools

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats as sps

from layerif import allocate, blocks, influence, stats, store
from layerif.experiments import approximation, retraining, validation
from layerif.experiments import influence_validation as iv
from layerif.experiments import validation_verdicts as vv
from layerif.experiments import verdict as rules
from layerif.experiments.verdict import (HELD, NOT_HELD, RULED_OUT, UNDERPOWERED, UNTESTABLE,
                                         verdict_table)
from layerif.gradients import attached_lora, example_losses
from test_blocks import restricted_losses

TEXTS = ["the cat sat on the mat", "a dog barked twice", "birds sing at dawn here",
         "rain fell all night", "we ate soup", "she reads books daily"]


def test_correlations_match_scipy_and_constant_is_nan():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=20), rng.normal(size=20)
    got = validation.correlations(a, b)
    assert got["pearson"] == pytest.approx(sps.pearsonr(a, b).statistic)
    assert got["spearman"] == pytest.approx(sps.spearmanr(a, b).statistic)
    assert np.isnan(validation.correlations(a, np.ones(20))["spearman"])
    with pytest.raises(ValueError, match="b="):
        validation.correlations(a, b[:5])


def test_row_spearman_equals_scipy_row_by_row_with_ties_and_constant_rows():
    rng = np.random.default_rng(5)
    a = rng.normal(size=(40, 9)).astype(np.float32)
    b = np.round(rng.normal(size=(40, 9)), 1)          # ties: average ranks, as spearmanr
    a[3], b[7] = 1.5, -2.0                              # a constant row in each: nan
    got = validation.row_spearman(a, b)
    want = [validation.correlations(x, y)["spearman"] for x, y in zip(a, b)]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
    assert np.isnan(got[3]) and np.isnan(got[7]) and np.isfinite(np.delete(got, [3, 7])).all()
    np.testing.assert_allclose(validation.row_spearman(a[4:9], b[0]),
                               [sps.spearmanr(x, b[0]).statistic for x in a[4:9]], atol=1e-12)


def test_block_scores_and_expert_distance_by_hand():
    values = np.array([[-1.0, 2.0, -3.0, 0.5], [4.0, -0.5, -0.5, -2.0]])
    assert validation.block_scores(values).tolist() == [-4.0, -3.0]
    assert validation.block_scores(values, "all").tolist() == [-1.5, 1.0]
    assert validation.block_scores(values, "top").tolist() == [-3.0, -2.0]  # 1 of 4 smallest
    # [3, 2, 1] -> [1, 2, 3]: 2 experts move out of 6
    assert validation.expert_distance([3, 2, 1], [1, 2, 3]) == pytest.approx(2 / 6)
    with pytest.raises(ValueError, match="b="):
        validation.expert_distance([3, 2, 1], [1, 1, 1])


def test_compare_methods_identity_and_negation():
    rng = np.random.default_rng(1)
    ref = rng.normal(size=(8, 12))
    table = validation.compare_methods({"exact": ref, "same": ref.copy(), "neg": -ref}, "exact")
    same, neg = table.loc["same"], table.loc["neg"]
    assert same["pooled_pearson"] == pytest.approx(1) and same["experts_moved"] == 0
    assert same["sparsity_max_diff"] == 0 and same["scores_all"] == pytest.approx(1)
    assert neg["pooled_pearson"] == pytest.approx(-1)
    assert neg["median_block_spearman"] == pytest.approx(-1)
    assert neg["scores_all"] == pytest.approx(-1)  # "all" is linear: the order reverses


def test_bootstrap_stability_matches_a_brute_force_loop():
    rng = np.random.default_rng(2)
    values = rng.normal(size=(7, 15))
    per_block, summary = validation.bootstrap_stability(values, n_boot=50, seed=3)
    reps = np.array([np.minimum(values[:, idx], 0).sum(axis=1)
                     for idx in stats.bootstrap_indices(15, 50, 3)])
    np.testing.assert_allclose(per_block["score_low"], np.quantile(reps, 0.025, axis=0))
    np.testing.assert_allclose(per_block["score"], np.minimum(values, 0).sum(axis=1))
    full = allocate.experts(pd.Series(np.minimum(values, 0).sum(axis=1)), 35, 2.5).to_numpy()
    changed = np.mean([allocate.experts(pd.Series(r), 35, 2.5).to_numpy() != full for r in reps],
                      axis=0)
    np.testing.assert_allclose(per_block["experts_changed"], changed)
    pairs = [sps.spearmanr(a, b).statistic for a, b in zip(reps[:-1], reps[1:])]
    assert summary["rank_stability"] == pytest.approx(np.mean(pairs))
    full_scores = np.minimum(values, 0).sum(axis=1)
    assert summary["rank_vs_full"] == pytest.approx(np.mean([sps.spearmanr(r, full_scores).statistic
                                                             for r in reps]))
    moved = [validation.expert_distance(allocate.experts(pd.Series(r), 35, 2.5), full) for r in reps]
    assert summary["experts_moved"] == pytest.approx(np.mean(moved))
    assert (per_block["sparsity_low"] <= per_block["sparsity_high"]).all()


def test_subsets_sweep_loo_and_gain_tables():
    s = pd.Series([-5.0, -1.0, -3.0, -2.0, -4.0])
    agree = validation.subset_stability({"a": s, "b": s * 2, "c": s.iloc[::-1].reset_index(drop=True)})
    assert agree["min_pairwise_spearman"] == pytest.approx(0.8)  # ranks 15342 vs 24351: 1 - 6*4/120
    assert agree["max_pairwise_spearman"] == pytest.approx(1)   # a and b: the same ranking
    sweep = validation.sweep_table({8: s.iloc[::-1].reset_index(drop=True), 16: s})
    assert sweep.loc[16, "experts_moved"] == 0 and sweep.loc[8, "spearman"] == pytest.approx(0.8)
    rng = np.random.default_rng(4)
    actual = rng.normal(size=(3, 10))
    table = validation.loo_table(actual, {"perfect": actual, "noise": rng.normal(size=10)}, n_boot=50)
    assert table.loc["perfect", "spearman"] == pytest.approx(1)
    assert table.loc["perfect", "spearman_per_seed"] == pytest.approx(1)
    noise = validation.retraining_noise(actual)
    pairs = [sps.spearmanr(a, b).statistic for a, b in itertools.combinations(actual, 2)]
    assert noise["seed_spearman"] == pytest.approx(np.mean(pairs))
    gains = pd.Series([0.3, 0.1, 0.2], index=[0, 2, 4])
    scores = pd.DataFrame({"x": [-3.0, 9.0, -1.0, 9.0, -2.0]})  # |S| at 0, 2, 4: 3, 1, 2
    assert validation.gain_table(gains, scores, n_boot=50).loc["x", "spearman"] == pytest.approx(1)


def test_leave_one_out_predictions_and_retraining_are_consistent(tiny64):
    model, tok = tiny64
    cfg = retraining.LooConfig(n_train=4, n_val=2, steps=3, lr=1e-2, max_length=24)
    frame = retraining.leave_one_out(model, tok, TEXTS[:4], TEXTS[4:], -1, 0, cfg, progress=False)
    assert list(frame.index) == [0, 1, 2, 3] and frame["loss_full"].nunique() == 1
    # Hessian-free at the initial point, by brute force on the whole model: -<v, g_k> / n
    ids, mask = blocks.token_batch(tok, TEXTS, 24)
    vocab = torch.unique(ids[mask > 0])
    with attached_lora(model, "attention", cfg.lora_rank, cfg.lora_alpha, 0):
        params = [p for n, p in model.named_parameters() if n.startswith("model.layers.3.")
                  and "lora_" in n]
        losses = restricted_losses(model, ids, mask, vocab)
        grad = [torch.cat([g.ravel() for g in torch.autograd.grad(losses[i], params,
                                                                  retain_graph=True)])
                for i in range(6)]
    v = grad[4] + grad[5]
    expected = np.array([float(v @ g) for g in grad[:4]]) / 4
    np.testing.assert_allclose(frame["hessian_free_init"], expected, rtol=1e-6, atol=1e-12)
    assert set(p for p, _ in model.named_parameters() if "lora_" in p) == set()


def test_block_gains_equal_whole_model_training(tiny64):
    model, tok = tiny64
    cfg = retraining.GainConfig(blocks=(1, 3), n_train=4, steps=2, lr=1e-3, max_length=24)
    gains = retraining.block_gains(model, tok, TEXTS[:4], TEXTS[4:], cfg, progress=False)
    ids, mask = blocks.token_batch(tok, TEXTS[:4], 24)
    vids, vmask = blocks.token_batch(tok, TEXTS[4:], 24)
    lm, vlm = mask.clone(), vmask.clone()
    lm[:, 0] = vlm[:, 0] = 0
    block = model.model.layers[1].self_attn
    params = [block.q_proj.weight, block.k_proj.weight, block.v_proj.weight, block.o_proj.weight]
    saved = [p.detach().clone() for p in params]
    opt = torch.optim.Adam(params, lr=1e-3)
    for _ in range(2):
        opt.zero_grad()
        example_losses(model, ids, mask, lm).mean().backward()
        opt.step()
    with torch.no_grad():
        after = float(example_losses(model, vids, vmask, vlm).mean())
        for p, x in zip(params, saved):
            p.copy_(x)
    assert gains.loc[1, "loss_after"] == pytest.approx(after, rel=1e-9)
    assert gains.loc[1, "gain"] == pytest.approx(gains.loc[1, "loss_before"] - after)


def test_influence_grid_is_linear_in_the_validation_subsets(tiny64, tmp_path):
    model, tok = tiny64
    cfg = approximation.ApproxConfig(n_train=6, n_val=4, val_subsets=2, sizes=(3,),
                                     dampings=(0.1, 1.0), batch_size=3, max_length=24,
                                     warmup_lr=1e-2)
    grid = approximation.influence_grid(model, tok, TEXTS, TEXTS[:4], cfg, progress=False)
    whole = approximation.grid_matrix(grid, "datainf", 0.1)
    parts = sum(approximation.grid_matrix(grid, "datainf", 0.1, None, j) for j in (0, 1))
    np.testing.assert_allclose(parts, whole, rtol=1e-9, atol=1e-12)
    assert np.abs(approximation.grid_matrix(grid, "exact", 0.1)).sum() > 0
    assert approximation.grid_matrix(grid, "datainf", 0.1, 3).shape == (4, 3)
    table = approximation.approximation_table(grid, per_block=2.0)
    assert set(table.index.get_level_values("method")) == {"datainf", "exact_block", "hessian_free"}
    assert table.drop(columns=["experts_moved", "sparsity_max_diff"]).abs().le(1 + 1e-9).all().all()
    assert set(approximation.sweep_scores(grid)) == {3, 6}


def test_exact_matches_a_float64_inverse():
    """The 'exact' reference of part 1 against numpy's dense inverse (independent)."""
    rng = np.random.default_rng(5)
    g, v = rng.normal(size=(10, 6)), rng.normal(size=(3, 6))
    lam = 0.1 * (g ** 2).mean()
    h = np.linalg.solve(g.T @ g / 10 + lam * np.eye(6), v.sum(0))
    got = influence.exact([torch.from_numpy(g)], [torch.from_numpy(v)], 0.1)[0].numpy()
    np.testing.assert_allclose(got, -(g @ h), rtol=1e-10)


# ------------------------------------------------------------------ verdicts (hand-made tables)

def _agreement(di: float, hf: float) -> pd.DataFrame:
    """approximation_table's shape: (damping, method) rows; DataInf's scores move with damping."""
    rows = {(d, m): {"scores_positive": v} for d, shift in ((0.01, -0.1), (0.1, 0.0), (1.0, 0.05))
            for m, v in (("datainf", di + shift), ("hessian_free", hf), ("exact_block", 1.0))}
    return pd.DataFrame(rows).T.rename_axis(["damping", "method"])


@pytest.mark.parametrize("di, hf, verdict, closer", [
    (0.93, 0.5, HELD, "DataInf"), (0.89, 0.5, NOT_HELD, "DataInf"),
    (0.04, 0.58, NOT_HELD, "Hessian-free"), (np.nan, 0.58, UNTESTABLE, "DataInf")])
def test_approximation_verdict_uses_0_9_at_the_default_damping(di, hf, verdict, closer):
    row = vv.approximation_verdict(_agreement(di, hf), 0.1, "m").iloc[0]
    assert list(row.index) == vv.COLUMNS and row["verdict"] == verdict and row["model"] == "m"
    assert row["value"] == pytest.approx(di, nan_ok=True)
    assert f"{closer}'s block scores are closer" in row["sentence"]
    assert ("does NOT hold" in row["sentence"]) == (verdict == NOT_HELD)
    if np.isfinite(di):
        assert (row["low"], row["high"]) == pytest.approx((di - 0.1, di + 0.05))
    with pytest.raises(ValueError, match="damping="):
        vv.approximation_verdict(_agreement(di, hf), 0.3)


def _loo(cis: dict) -> pd.DataFrame:
    """loo_summary's shape: (block, predictor) rows, one CI of DataInf per block."""
    rows = {}
    for block, (lo, hi) in cis.items():
        for name, rho in (("datainf", (lo + hi) / 2), ("exact", 0.9)):
            rows[(block, name)] = {"spearman": rho, "ci_low": lo if name == "datainf" else 0.5,
                                   "ci_high": hi if name == "datainf" else 1.0, "n": 12,
                                   "seed_spearman": 0.5, "noise_to_signal": 1.0}
    return pd.DataFrame(rows).T.rename_axis(["block", "predictor"])


def test_loo_verdicts_follow_the_interval_per_block():
    table = vv.loo_verdicts(_loo({-1: (0.1, 0.99), 3: (-0.9, -0.2), 5: (-0.3, 0.8),
                                  7: (np.nan, np.nan)}))
    assert list(table["subject"]) == ["block -1", "block 3", "block 5", "block 7"]
    assert list(table["verdict"]) == [HELD, NOT_HELD, UNDERPOWERED, UNTESTABLE]
    assert "DataInf predicts leave-one-out retraining of block -1 here (CI excludes 0)" in table["sentence"][0]
    assert "OPPOSITE" in table["sentence"][1] and "CI includes 0" in table["sentence"][2]
    assert table["sentence"][0].count("Best predictor: exact") == 1  # 0.9 > DataInf's 0.545
    assert table.loc[1, "low"] == -0.9 and table.loc[1, "high"] == -0.2
    with pytest.raises(ValueError, match="predictor="):
        vv.loo_verdicts(_loo({-1: (0.1, 0.9)}), "hessian_free")


def _gains(lo: float, hi: float) -> pd.DataFrame:
    rows = {(m, a): {"spearman": (lo + hi) / 2 if m == "datainf" else 0.9, "n_blocks": 7,
                     "ci_low": lo if m == "datainf" else 0.4, "ci_high": hi if m == "datainf" else 1.0}
            for m in ("datainf", "hessian_free") for a in ("positive", "top", "all")}
    return pd.DataFrame(rows).T


def test_gain_verdicts_one_row_per_task_and_method():
    table = vv.gain_verdicts({"sst2": _gains(-1.0, -0.13), "mrpc": _gains(-1.0, 0.83),
                              "csqa": _gains(0.2, 0.9)})
    assert list(table["subject"]) == ["sst2, datainf", "sst2, hessian_free", "mrpc, datainf",
                                      "mrpc, hessian_free", "csqa, datainf", "csqa, hessian_free"]
    assert list(table["verdict"]) == [NOT_HELD, HELD, UNDERPOWERED, HELD, HELD, HELD]
    assert "ranks blocks OPPOSITE to the gain (CI below 0)" in table["sentence"][0]
    assert "no evidence" in table["sentence"][2] and "as the paper reads it" in table["sentence"][4]
    only = vv.gain_verdicts({"sst2": _gains(-1.0, -0.13)}, ("datainf",))
    assert len(only) == 1 and only["high"][0] == -0.13
    with pytest.raises(ValueError, match="methods="):
        vv.gain_verdicts({"sst2": _gains(-1.0, -0.13)}, ("exact",))


def _stability(ranks) -> tuple[pd.DataFrame, pd.DataFrame]:
    tasks = [f"t{i}" for i in range(len(ranks))]
    blocks = pd.DataFrame({"experts_changed": 0.5},
                          index=pd.MultiIndex.from_product([tasks, range(3)], names=["task", "layer"]))
    summary = pd.DataFrame({"rank_stability": ranks, "experts_moved": 0.1}, index=tasks)
    return blocks, summary


@pytest.mark.parametrize("ranks, subsets, verdicts", [
    ([0.81, 0.92], (0.8, 0.95), [HELD, HELD]),
    ([0.71, 0.87], (0.26, 0.77), [RULED_OUT, RULED_OUT]),   # a case falls short of 0.8
    ([0.1, 0.45], (0.1, 0.49), [NOT_HELD, NOT_HELD]),
    ([0.79, 0.99], (0.49, 0.5), [RULED_OUT, RULED_OUT]),
    ([0.9, 0.95], (np.nan, 0.9), [HELD, UNTESTABLE])])
def test_stability_verdicts_need_every_case_past_the_threshold(ranks, subsets, verdicts):
    sub = {"mean_pairwise_spearman": np.mean(subsets), "min_pairwise_spearman": subsets[0],
           "max_pairwise_spearman": subsets[1], "mean_experts_moved": 0.2, "n_subsets": 4}
    table = vv.stability_verdicts({"a": _stability(ranks)}, sub, "m")
    assert list(table["model"]) == ["a", "m"] and list(table["verdict"]) == verdicts
    assert table.loc[0, "value"] == pytest.approx(np.mean(ranks))
    assert [table.loc[1, "low"], table.loc[1, "high"]] == pytest.approx(list(subsets), nan_ok=True)
    assert "changes in 50% of replicates" in table.loc[0, "sentence"]


@pytest.mark.parametrize("rhos, verdict, enough", [
    ([0.80, 0.91, 0.97], HELD, "from n = 16 on"),
    ([0.95, 0.85, 0.92], HELD, "from n = 32 on"),    # 16 falls below: settled only from 32
    ([0.96, 0.91, 0.93], HELD, "from n = 8 on"),
    ([0.2, 0.3, 0.4], NOT_HELD, "no smaller n reaches it"),
    ([0.6, 0.95, 0.7], RULED_OUT, "no smaller n reaches it"),
    ([0.6, 0.95, np.nan], UNTESTABLE, "no smaller n reaches it")])
def test_sweep_verdict_reads_the_largest_smaller_n(rhos, verdict, enough):
    sweep = pd.DataFrame({"spearman": [*rhos, 1.0], "reference_n": 64},
                         index=pd.Index([8, 16, 32, 64], name="n_train"))
    row = vv.sweep_verdict(sweep).iloc[0]
    assert row["verdict"] == verdict and row["value"] == pytest.approx(rhos[-1], nan_ok=True)
    assert enough in row["sentence"]
    assert (row["low"], row["high"]) == (np.nanmin(rhos), np.nanmax(rhos))


def test_sweep_verdict_on_a_real_sweep_table():
    s = pd.Series([-5.0, -1.0, -3.0, -2.0, -4.0])
    sweep = validation.sweep_table({8: s.iloc[::-1].reset_index(drop=True), 16: s})
    row = vv.sweep_verdict(sweep).iloc[0]
    assert row["value"] == pytest.approx(0.8) and row["verdict"] == RULED_OUT
    with pytest.raises(ValueError, match="sweep="):
        vv.sweep_verdict(sweep.loc[[16]])


# ------------------------------------------------------------------ the one interval rule

@pytest.mark.parametrize("low, high, kw, expected", [
    (0.1, 0.9, {}, HELD),                 # a correlation's CI above 0
    (0.0, 0.9, {}, UNDERPOWERED),         # touching 0 is not above it; the CI reaches above
    (-0.9, -0.1, {}, NOT_HELD),           # below 0
    (-0.9, 0.0, {}, RULED_OUT),           # touching 0 is not below it; nothing above 0
    (-0.5, 0.5, {}, UNDERPOWERED),        # includes 0
    (np.nan, np.nan, {}, UNTESTABLE),     # undefined
    (np.nan, 0.5, {}, UNTESTABLE),        # half undefined, and the defined end decides nothing
    (np.nan, -0.2, {}, NOT_HELD),         # only the defined end decides
    (0.9, 0.95, {"at_least": 0.9, "below": 0.5}, HELD),        # reaching the threshold holds
    (0.85, 0.99, {"at_least": 0.9, "below": 0.5}, UNDERPOWERED),
    (0.85, 0.99, {"at_least": 0.9, "below": 0.5, "over": "cases"}, RULED_OUT),  # 0.85 falls short
    (0.6, 0.85, {"at_least": 0.9, "below": 0.5}, RULED_OUT),   # a CI wholly short of 0.9
    (0.2, 0.49, {"at_least": 0.9, "below": 0.5}, NOT_HELD),
    (0.2, 0.5, {"at_least": 0.9, "below": 0.5}, RULED_OUT),    # below is strict
    (0.3, 0.3, {"above": 0.25, "below": 0.1}, HELD),            # a strict threshold other than 0
])
def test_interval_verdict_every_branch(low, high, kw, expected):
    assert rules.interval_verdict(low, high, **kw) == expected


def _set_reading(low, high, claimed, opposite, over):
    """The threshold rule read on the interval as a set of points (an independent reference):
    every point claimed -> held, every point opposite -> not held; a CI with some claimed
    point -> underpowered; else ruled out. An undefined end: the defined end alone (as a
    one-point set) can still be held / not held, else untestable."""
    if not (np.isfinite(low) and np.isfinite(high)):
        if np.isfinite(low) and claimed(low):
            return HELD
        if np.isfinite(high) and opposite(high):
            return NOT_HELD
        return UNTESTABLE
    points = np.linspace(low, high, 4001) if low <= high else np.array([low, high])
    if all(claimed(x) for x in points):
        return HELD
    if all(opposite(x) for x in points):
        return NOT_HELD
    return UNDERPOWERED if over == "ci" and any(claimed(x) for x in points) else RULED_OUT


def test_interval_verdict_equals_reading_the_interval_as_a_set_of_points():
    grid = [np.nan, -1.0, -0.1, 0.0, 0.1, 0.49, 0.5, 0.79, 0.8, 0.89, 0.9, 0.95, 1.0]
    rules_kw = [({}, lambda x: x > 0, lambda x: x < 0),
                ({"at_least": vv.STABLE, "below": vv.UNSTABLE}, lambda x: x >= 0.8, lambda x: x < 0.5),
                ({"at_least": vv.APPROX_HOLDS, "below": vv.APPROX_HOLDS}, lambda x: x >= 0.9,
                 lambda x: x < 0.9)]
    for (kw, claimed, opposite), over in itertools.product(rules_kw, ("ci", "cases")):
        for low, high in itertools.product(grid, grid):
            if np.isfinite(low) and np.isfinite(high) and low > high:
                continue
            want = _set_reading(low, high, claimed, opposite, over)
            assert rules.interval_verdict(low, high, over=over, **kw) == want, (low, high, kw, over)
    with pytest.raises(ValueError, match="^over="):
        rules.interval_verdict(0.1, 0.2, over="range")


# ------------------------------------------------------------------ notebook 09's run and rows

def _result(loo_cis=None) -> iv.Result:
    """A Result of hand-made part tables (the shapes run() builds)."""
    sweep = pd.DataFrame({"spearman": [0.8, 0.93, 1.0], "experts_spearman": [0.7, 0.9, 1.0],
                          "experts_moved": [0.2, 0.1, 0.0], "sparsity_max_diff": [0.03, 0.01, 0.0],
                          "reference_n": 32}, index=pd.Index([8, 16, 32], name="n_train"))
    subsets = {"mean_pairwise_spearman": 0.55, "min_pairwise_spearman": 0.26,
               "max_pairwise_spearman": 0.77, "mean_experts_moved": 0.24, "n_subsets": 4}
    return iv.Result(model="m", damping=0.1, agreement=_agreement(0.04, 0.58), loo=pd.DataFrame(),
                     loo_table=_loo(loo_cis or {-1: (0.1, 0.99)}), gains={},
                     gain_tables={"sst2": _gains(-1.0, -0.13), "mrpc": _gains(-1.0, 0.83)},
                     stability={"a": _stability([0.81, 0.92]), "b": _stability([0.7, 0.88])},
                     stability_tasks=("t0", "t1"), subsets=subsets, sweep=sweep)


def test_verdicts_are_the_parts_rows_with_datainf_gains_only():
    result = _result()
    table = verdict_table(iv.verdicts(result))
    assert list(table["ours"]) == ["+0.04 (damping 0.1)", "+0.55 (block -1)", "-0.56 (sst2, datainf)",
                                   "-0.09 (mrpc, datainf)", "+0.86 (resampled training examples)",
                                   "+0.79 (resampled training examples)",
                                   "+0.55 (disjoint validation subsets)", "+0.93 (n = 16 vs 32)"]
    assert list(table["verdict"]) == [NOT_HELD, HELD, NOT_HELD, UNDERPOWERED, HELD, RULED_OUT,
                                      RULED_OUT, HELD]
    assert list(table["model"]) == ["m", "m", "m", "m", "a", "b", "m", "m"]
    assert table.loc[1, "interval"] == "[+0.10, +0.99] (bootstrap CI over examples)"
    assert table.loc[0, "interval"] == "[-0.06, +0.09] (range over the damping sweep)"
    assert table.loc[2, "where"] == iv.WHERE["gain"][0] and table.loc[2, "paper"] == "read, not measured"
    assert table.loc[1, "test"].endswith("; held: CI above 0; not held: below 0; else underpowered "
                                         "(CI contains 0)")
    assert table["p-value"].isna().all() and (table["notebook"] == iv.NOTEBOOK).all()
    # notebook 09's own table keeps both methods of part 3
    frame = iv.verdict_frame(result)
    assert len(frame) == 10 and list(frame["subject"][2:6]) == [
        "sst2, datainf", "sst2, hessian_free", "mrpc, datainf", "mrpc, hessian_free"]


def test_undefined_intervals_read_undefined():
    row = iv.verdicts(_result({-1: (np.nan, np.nan)}))[1]
    assert row.interval == "undefined (bootstrap CI over examples)" and row.verdict == UNTESTABLE


def test_summary_prints_the_numbers_then_the_verdicts():
    result = _result()
    text = iv.summary(result, "n_sweep").splitlines()
    assert text[0] == ("n = 8: Spearman with n = 32 is 0.80; expert allocation Spearman 0.70, "
                       "20.0% of experts move, sparsity differs by at most 0.030.")
    assert len(text) == 3 and text[2].startswith("Verdict: the block scores have settled before n = 32")
    assert iv.summary(result, "gain").count("\n") == 3   # 2 tasks x 2 methods, no numbers first
    with pytest.raises(ValueError, match="part="):
        iv.summary(result, "pruning")


def test_run_under_read_only_names_the_missing_result(tmp_path):
    params = {"model_name": "smollm2-135m", "approx": {"n_train": 8, "n_val": 4, "val_subsets": 2,
                                                       "sizes": [4], "dampings": [0.1]},
              "loo": {"n_train": 4}, "gain": {"blocks": [0, 1]}, "gain_tasks": ["mrpc"],
              "stability_models": [], "stability_tasks": [], "n_boot": 10, "alloc": {}}
    with store.read_only(iv.NOTEBOOK), pytest.raises(store.MissingResult) as err:
        iv.run(params, "smoke", tmp_path)
    assert err.value.notebook == iv.NOTEBOOK and "grid" in str(err.value)
    assert f"`layerif run {iv.NOTEBOOK}`" in str(err.value)
    with pytest.raises(store.MissingResult) as err:   # notebook 01's scores: named, not computed
        approximation.score_stability(tmp_path, "smollm2-135m", ["mrpc"], 10)
    assert err.value.notebook == "01_layer_scores" and "smollm2-135m mrpc datainf scores" in str(err.value)


# ------------------------------------------------------------------ notebook 09's invariants

def test_tables_keep_their_invariants():
    """Correlations in [-1, 1], bootstrap CIs bracketing their estimates, valid allocations."""
    rng = np.random.default_rng(7)
    actual = rng.normal(size=(3, 12))
    loo = validation.loo_table(actual, {"near": actual + rng.normal(size=(3, 12)),
                                        "noise": rng.normal(size=12)}, n_boot=100)
    gains = pd.Series(rng.normal(size=7), index=range(0, 14, 2))
    gain = validation.gain_table(gains, pd.DataFrame(rng.normal(size=(14, 3))), n_boot=100)
    for t in (loo, gain):
        assert t["spearman"].between(-1, 1).all()
        assert ((t["ci_low"] <= t["spearman"] + 1e-9) & (t["spearman"] <= t["ci_high"] + 1e-9)).all()
    compared = validation.compare_methods({"a": rng.normal(size=(6, 10)), "b": rng.normal(size=(6, 10))}, "a")
    assert compared.filter(regex="spearman|pearson").stack().between(-1 - 1e-9, 1 + 1e-9).all()
    per_block, _ = validation.bootstrap_stability(rng.normal(size=(6, 20)), n_boot=30, per_block=5.0,
                                                  target=0.5)
    assert (per_block["experts"] >= 1).all() and per_block["experts"].sum() == 30
    assert (per_block["score_low"] <= per_block["score_high"]).all()
    assert per_block["sparsity"].between(0, 1).all()
    assert abs(per_block["sparsity"].mean() - 0.5) < 1e-9   # equal block sizes
