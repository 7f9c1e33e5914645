"""Notebook 09's validation of layer scores: statistics against scipy / brute force, and the
retraining machinery (cached block inputs, tails) against whole-model computations."""
import itertools

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats as sps

from layerif import allocate, influence, stats
from layerif.experiments import approximation, retraining, validation
from layerif.experiments import validation_verdicts as vv
from layerif.experiments.verdict import HELD, INCONCLUSIVE, NOT_HELD
from layerif.gradients import attached_lora, example_losses

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


def _restricted_losses(model, ids, mask, vocab):
    """Per-example loss with the softmax over ``vocab`` only, from the whole model's logits."""
    logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1][..., vocab]
    lut = {int(t): i for i, t in enumerate(vocab)}
    targets = torch.tensor([[lut.get(int(t), 0) for t in row] for row in ids[:, 1:]])
    nll = -logits.log_softmax(-1).gather(-1, targets[..., None])[..., 0]
    m = mask[:, 1:].to(nll.dtype)
    return (nll * m).sum(1) / m.sum(1)


def test_tail_losses_equal_whole_model_losses(tiny64):
    model, tok = tiny64
    ids, mask = retraining.token_batch(tok, TEXTS, 32)
    loss_mask = mask.clone()
    loss_mask[:, 0] = 0
    reference = example_losses(model, ids, mask, loss_mask)
    hidden = retraining.block_inputs(model, ids, mask, [0, 2, 3])
    for start in (0, 2, 3):
        torch.testing.assert_close(retraining.tail_losses(model, start, hidden[start], ids, mask),
                                   reference, rtol=1e-12, atol=1e-12)
    # restricted softmax: brute force from the whole model's logits
    vocab = torch.unique(ids[mask > 0])
    torch.testing.assert_close(retraining.tail_losses(model, 2, hidden[2], ids, mask, vocab),
                               _restricted_losses(model, ids, mask, vocab), rtol=1e-10, atol=1e-12)
    assert len(list(model.model.layers)) == 4  # the tail was put back


def test_leave_one_out_predictions_and_retraining_are_consistent(tiny64):
    model, tok = tiny64
    cfg = retraining.LooConfig(n_train=4, n_val=2, steps=3, lr=1e-2, max_length=24)
    frame = retraining.leave_one_out(model, tok, TEXTS[:4], TEXTS[4:], -1, 0, cfg, progress=False)
    assert list(frame.index) == [0, 1, 2, 3] and frame["loss_full"].nunique() == 1
    # Hessian-free at the initial point, by brute force on the whole model: -<v, g_k> / n
    ids, mask = retraining.token_batch(tok, TEXTS, 24)
    vocab = torch.unique(ids[mask > 0])
    with attached_lora(model, "attention", cfg.lora_rank, cfg.lora_alpha, 0):
        params = [p for n, p in model.named_parameters() if n.startswith("model.layers.3.")
                  and "lora_" in n]
        losses = _restricted_losses(model, ids, mask, vocab)
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
    ids, mask = retraining.token_batch(tok, TEXTS[:4], 24)
    vids, vmask = retraining.token_batch(tok, TEXTS[4:], 24)
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
    (0.04, 0.58, NOT_HELD, "Hessian-free"), (np.nan, 0.58, INCONCLUSIVE, "DataInf")])
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
    assert list(table["verdict"]) == [HELD, NOT_HELD, INCONCLUSIVE, INCONCLUSIVE]
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
    assert list(table["verdict"]) == [NOT_HELD, HELD, INCONCLUSIVE, HELD, HELD, HELD]
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
    ([0.71, 0.87], (0.26, 0.77), [INCONCLUSIVE, INCONCLUSIVE]),
    ([0.1, 0.45], (0.1, 0.49), [NOT_HELD, NOT_HELD]),
    ([0.79, 0.99], (0.49, 0.5), [INCONCLUSIVE, INCONCLUSIVE])])
def test_stability_verdicts_need_every_case_past_the_threshold(ranks, subsets, verdicts):
    sub = {"mean_pairwise_spearman": np.mean(subsets), "min_pairwise_spearman": subsets[0],
           "max_pairwise_spearman": subsets[1], "mean_experts_moved": 0.2, "n_subsets": 4}
    table = vv.stability_verdicts({"a": _stability(ranks)}, sub, "m")
    assert list(table["model"]) == ["a", "m"] and list(table["verdict"]) == verdicts
    assert table.loc[0, "value"] == pytest.approx(np.mean(ranks))
    assert (table.loc[1, "low"], table.loc[1, "high"]) == subsets
    assert "changes in 50% of replicates" in table.loc[0, "sentence"]


@pytest.mark.parametrize("rhos, verdict, enough", [
    ([0.80, 0.91, 0.97], HELD, "from n = 16 on"),
    ([0.95, 0.85, 0.92], HELD, "from n = 32 on"),    # 16 falls below: settled only from 32
    ([0.96, 0.91, 0.93], HELD, "from n = 8 on"),
    ([0.2, 0.3, 0.4], NOT_HELD, "no smaller n reaches it"),
    ([0.6, 0.95, 0.7], INCONCLUSIVE, "no smaller n reaches it")])
def test_sweep_verdict_reads_the_largest_smaller_n(rhos, verdict, enough):
    sweep = pd.DataFrame({"spearman": [*rhos, 1.0], "reference_n": 64},
                         index=pd.Index([8, 16, 32, 64], name="n_train"))
    row = vv.sweep_verdict(sweep).iloc[0]
    assert row["verdict"] == verdict and row["value"] == rhos[-1] and enough in row["sentence"]
    assert (row["low"], row["high"]) == (min(rhos), max(rhos))


def test_sweep_verdict_on_a_real_sweep_table():
    s = pd.Series([-5.0, -1.0, -3.0, -2.0, -4.0])
    sweep = validation.sweep_table({8: s.iloc[::-1].reset_index(drop=True), 16: s})
    row = vv.sweep_verdict(sweep).iloc[0]
    assert row["value"] == pytest.approx(0.8) and row["verdict"] == INCONCLUSIVE
    with pytest.raises(ValueError, match="sweep="):
        vv.sweep_verdict(sweep.loc[[16]])
