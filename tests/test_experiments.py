"""The study's experiment loops (notebooks 01, 02, 04, 06) on a tiny model saved to disk."""
from collections import Counter

import numpy as np
import pandas as pd
import pytest
from scipy.stats import spearmanr

from layerif import ScoreConfig, allocate, store
from layerif.experiments import agreement, allocation, scoring

TASKS = ["mrpc", "openbookqa", scoring.POOL]


@pytest.fixture(scope="module")
def model_dir(save_tiny):
    return str(save_tiny(n_layers=8))


@pytest.fixture(scope="module")
def scored(model_dir, tmp_path_factory):
    results = tmp_path_factory.mktemp("results")
    config = ScoreConfig(n_train=9, n_val=7, max_length=24, batch_size=4, device="cpu")
    runs = scoring.score_tasks(model_dir, TASKS, config, results, progress=False)
    return results, config, runs


def test_pruning_pool_is_even_and_nested():
    pool = scoring.pruning_pool("train", 16)
    counts = Counter(e.id.split("/")[0] for e in pool)
    assert len(pool) == 16 and len(counts) == len(scoring.PRUNING_TASKS)
    assert max(counts.values()) - min(counts.values()) <= 1
    bigger = {e.id for e in scoring.pruning_pool("train", 30)}
    assert {e.id for e in pool} <= bigger
    with pytest.raises(ValueError, match="n=3"):
        scoring.pruning_pool("train", 3)


def test_scores_saved_once_then_loaded(scored, model_dir):
    results, config, runs = scored
    assert set(runs["status"]) == {"computed"}
    assert list(runs.index.get_level_values("task").unique()) == ["mrpc", "openbookqa:instruct",
                                                                   scoring.POOL]
    again = scoring.score_tasks(model_dir, TASKS, config, results, progress=False)
    assert set(again["status"]) == {"loaded"}
    first = scoring.load_scores(results, model_dir, "mrpc", "datainf")
    assert first.task == "mrpc" and len(first.train_ids) == 9
    # A different slice of data is a different identity: refused, never read silently.
    with pytest.raises(store.ResultMismatch):
        scoring.score_tasks(model_dir, ["mrpc"], config.replace(n_train=8), results,
                            progress=False)


def test_score_frame_matches_saved_scores(scored, model_dir):
    results, _, runs = scored
    frame = scoring.score_frame(runs, "positive")
    s = scoring.load_scores(results, model_dir, "openbookqa:instruct", "datainf")
    expected = s.per_block().clip(upper=0).sum(axis=1)
    np.testing.assert_allclose(frame.loc["openbookqa:instruct"].to_numpy(), expected.to_numpy())
    normed = scoring.score_frame(runs, "positive", normalise=True)
    assert np.allclose(normed.abs().max(axis=1), 1.0)
    corr, summary = scoring.profile_similarity(frame)
    assert corr.shape == (3, 3) and summary["tasks"] == 3
    rho = spearmanr(frame.iloc[0], frame.iloc[1]).statistic
    assert corr.iloc[0, 1] == pytest.approx(rho)


def test_expert_allocations(scored, model_dir):
    results, _, _ = scored
    labels = ["mrpc", "openbookqa:instruct"]
    frame = allocation.study_experts(results, model_dir, labels, per_block=(2.5, 5.0), beta=2.5,
                                     device="cpu")
    blocks = frame.drop(columns="total")
    assert (blocks.sum(axis=1) == frame["total"]).all() and (blocks >= 1).all().all()
    # LayerIF rows are allocate.experts of the saved scores; MoLA 5555 is uniform.
    s = scoring.load_scores(results, model_dir, "mrpc", "datainf").aggregate("top")
    expected = allocate.experts(s, 40, 2.5).to_numpy()
    np.testing.assert_array_equal(blocks.loc[("LayerIF Top 25%", "mrpc", 5.0)].to_numpy(), expected)
    assert (blocks.loc[("MoLA 5555", "(model only)", 5.0)] == 5).all()
    assert frame.loc[("LayerIF +ve", "mrpc", 2.5), "total"] == 20
    # Saved: the same call loads the same table.
    again = allocation.study_experts(results, model_dir, labels, per_block=(2.5, 5.0),
                                     beta=2.5, device="cpu")
    pd.testing.assert_frame_equal(again, frame, check_dtype=False, check_index_type=False)
    rows = allocation.fig4_rows(frame)
    d = allocation.allocation_distances(rows)
    i, j = rows.index[0], rows.index[1]
    assert d.loc[i, j] == pytest.approx(np.abs(rows.loc[i] - rows.loc[j]).mean())
    summary = allocation.distance_summary(d)
    assert summary["LayerIF between tasks"] == pytest.approx(d.iloc[0, 1])


def test_beta_sweep_spreads_with_beta(scored, model_dir):
    results, _, _ = scored
    s = scoring.load_scores(results, model_dir, "mrpc", "datainf").aggregate("positive")
    sweep = allocation.beta_sweep(s, 40, betas=(0.5, 5.0))
    assert (sweep.sum(axis=1) == 40).all()
    assert np.ptp(sweep.loc[5.0]) >= np.ptp(sweep.loc[0.5])


def test_sparsity_allocations_hit_target(scored, model_dir):
    results, _, _ = scored
    frame = allocation.study_sparsity(results, model_dir, scoring.POOL, 0.5, (4, 32), device="cpu")
    blocks = frame.drop(columns=["global sparsity", "mean sparsity"])
    assert np.allclose(frame["global sparsity"], 0.5)
    assert set(frame.index.get_level_values("allocation")) == {
        "Uniform", "AlphaPruning", "OWL", "LayerIF (raw)", "LayerIF"}
    s = scoring.load_scores(results, model_dir, scoring.POOL, "datainf").aggregate("positive")
    n_params = pd.Series(1.0, index=s.index)  # the tiny model's blocks are equal-sized
    raw = allocate.sparsity(s, 0.5, n_params, 0.3, smooth=False)
    np.testing.assert_allclose(blocks.loc[("magnitude", "LayerIF (raw)")].to_numpy(), raw.to_numpy())
    assert not np.allclose(blocks.loc[("magnitude", "LayerIF")], blocks.loc[("wanda", "LayerIF")])


def test_agreement_against_direct_computation(scored, model_dir):
    results, _, _ = scored
    di = scoring.load_scores(results, model_dir, "mrpc", "datainf")
    hf = scoring.load_scores(results, model_dir, "mrpc", "hessian_free")
    row = agreement.allocation_agreement(di, hf, per_block=5.0, n_boot=300)
    ea = allocate.experts(di.aggregate("positive"), 40).to_numpy()
    eb = allocate.experts(hf.aggregate("positive"), 40).to_numpy()
    assert row["spearman"] == pytest.approx(spearmanr(ea, eb).statistic)
    assert row["spearman_scores"] == pytest.approx(
        spearmanr(di.aggregate("positive"), hf.aggregate("positive")).statistic)
    assert row["ci_low"] <= row["spearman"] + 1e-9 <= row["ci_high"] + 2e-9
    assert 10 <= row["n_boot_used"] <= 300
    table = agreement.study_agreement(results, model_dir, ["mrpc"], n_boot=300)
    assert table.loc["mrpc", "spearman"] == pytest.approx(row["spearman"])
