"""The study's experiment loops (notebooks 00, 01, 02, 04, 06) on a tiny model saved to disk:
each notebook's run() and its invariants, and the verdict rows on hand-built fixtures."""
from collections import Counter

import numpy as np
import pandas as pd
import pytest
from scipy.stats import spearmanr

from layerif import ScoreConfig, allocate, store
from layerif.experiments import agreement, allocation, overview, scoring, sparsity
from layerif.experiments.verdict import HELD, NOT_HELD, UNDERPOWERED, covering, profile_reading

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
    # the shared pass's seconds, split between the methods it computed (the cold cost)
    mrpc = runs.loc["mrpc"]
    saved = [store.load_manifest(p)["extra"]["compute_seconds"] for p in mrpc["path"]]
    assert sum(saved) == pytest.approx(mrpc["seconds"].iloc[0], abs=0.1) and saved[0] == saved[1]
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
    frame = sparsity.study_sparsity(results, model_dir, scoring.POOL, 0.5, (4, 32), device="cpu")
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


# ------------------------------------------------------------------ sizes checked up front

def test_sizes_are_checked_before_any_task_is_scored(model_dir, tmp_path):
    config = ScoreConfig(n_train=9, n_val=4, max_length=24, batch_size=4, device="cpu")
    # n_val=4 is fine for mrpc but too small for the pool (one example per pruning task):
    # nothing may be scored, mrpc included.
    with pytest.raises(ValueError, match=r"n_val=4 is invalid: expected an int >= 7"):
        scoring.score_tasks(model_dir, ["mrpc", scoring.POOL], config, tmp_path, progress=False)
    assert not (tmp_path / "scores").exists()
    with pytest.raises(ValueError, match="task='mrcp'"):
        scoring.check_sizes(["mrpc", "mrcp"], 9, 7)
    with pytest.raises(ValueError, match="n_train=0"):
        scoring.check_sizes(["mrpc"], 0, 7)
    scoring.check_sizes(["mrpc", scoring.POOL], 7, 7)  # the smallest pool: one per task


def test_task_labels_follow_the_templates():
    assert scoring.task_label("openbookqa") == "openbookqa:instruct"   # not its default
    assert scoring.task_label("mrpc") == "mrpc"                        # instruct is its default
    assert scoring.task_label("boolq") == "boolq"                      # offers no instruct
    assert scoring.task_label(scoring.POOL) == scoring.POOL
    assert scoring.task_label("openbookqa", None) == "openbookqa"


# ------------------------------------------------------------------ each notebook's run()

def _scores_params(model_dir):
    return {"sizes": {model_dir: {"n_train": 9, "n_val": 7}}, "tasks": TASKS, "max_length": 24,
            "batch_size": 4}


def test_layer_scores_run_invariants_and_read_only(scored, model_dir):
    results, _, _ = scored
    result = scoring.run(_scores_params(model_dir), results=results)
    assert set(result.runs["status"]) == {"loaded"}          # notebook 01 reuses saved scores
    for (model, task, method), row in result.runs.iterrows():
        s = scoring.load_scores(results, model, task, method)
        assert np.isfinite(s.values.numpy()).all()
        assert (s.aggregate("positive") <= 0).all()
        assert (s.aggregate("top") >= s.aggregate("positive") - 1e-12).all()
        assert len(s.train_ids) == row["n_train"] == 9 and len(s.val_ids) == row["n_val"] == 7
    frame = result.profiles[model_dir]
    assert np.allclose(frame.abs().max(axis=1), 1.0)
    off = frame.T.corr(method="spearman").to_numpy()[~np.eye(3, dtype=bool)]
    assert result.summary.at[model_dir, "mean pairwise Spearman"] == pytest.approx(off.mean())
    assert "mean Spearman between task profiles" in scoring.summary(result)
    with store.read_only("01_layer_scores"):
        again = scoring.run(_scores_params(model_dir), results=results)
        pd.testing.assert_frame_equal(again.summary, result.summary)
        with pytest.raises(store.MissingResult, match="01_layer_scores"):
            scoring.run({**_scores_params(model_dir), "tasks": ["sst2"]}, results=results)


def test_expert_allocation_run_invariants(scored, model_dir):
    results, _, _ = scored
    params = {"models": [model_dir], "tasks": ["mrpc", "openbookqa:instruct"],
              "per_block": [2.5, 5.0]}
    result = allocation.run(params, results=results)
    frame = result.experts[model_dir]
    blocks = frame.drop(columns="total")
    assert (blocks >= 1).all().all() and (blocks.sum(axis=1) == frame["total"]).all()
    layerif_rows = frame.index.get_level_values("method").str.startswith("LayerIF")
    expected = [round(pb * 8) for pb in frame.index.get_level_values("per_block")]
    assert (frame["total"].to_numpy()[layerif_rows] == np.array(expected)[layerif_rows]).all()
    sweep = result.sweeps[model_dir]
    assert list(sweep.index) == list(allocation.BETAS) and (sweep.sum(axis=1) == 40).all()
    s = scoring.load_scores(results, model_dir, "mrpc", "datainf").aggregate("positive")
    np.testing.assert_array_equal(sweep.loc[2.5], allocate.experts(s, 40, 2.5).to_numpy())
    totals = allocation.totals(result)  # one row per method: tasks share their totals
    assert totals.loc[(model_dir, "LayerIF +ve")].tolist() == [20, 40]
    assert not totals.index.duplicated().any() and totals.index.names == ["model", "method"]


def test_sparsity_run_invariants(scored, model_dir):
    results, _, _ = scored
    result = sparsity.run({"models": [model_dir], "target": 0.4, "calibration": [4, 32]},
                          results=results)
    ratios = result.ratios[model_dir]
    blocks = ratios.drop(columns=sparsity.CHECKS)
    assert ((blocks > 0) & (blocks < 1)).all().all()
    assert (ratios["global sparsity"] - 0.4).abs().max() < 1e-9
    spread = sparsity.spread(result)
    assert (spread["min"] <= spread["max"]).all()
    assert spread.loc[(model_dir, "wanda", "Uniform")].tolist() == pytest.approx([0.4, 0.4])
    assert "(Wanda, 40%)" in sparsity.summary(result)
    assert sparsity.check_line(result).endswith(": True")
    assert sparsity.check_line(result).startswith(f"{len(ratios)} allocations")


def test_agreement_run_invariants(scored, model_dir):
    results, _, _ = scored
    result = agreement.run({"models": [model_dir], "tasks": ["mrpc"], "n_boot": 300},
                           results=results)  # the table saved above: read back, not recomputed
    t = result.tables[model_dir]
    assert t["spearman"].between(-1, 1).all() and t["spearman_scores"].between(-1, 1).all()
    ok = t["ci_low"].isna() | ((t["ci_low"] <= t["spearman"] + 1e-9)
                               & (t["spearman"] <= t["ci_high"] + 1e-9))
    assert ok.all()
    assert list(agreement.table(result).index) == [(model_dir, "mrpc")]


def test_overview_run_counts_blocks_and_overlaps(model_dir, monkeypatch):
    from layerif import data

    monkeypatch.setattr(data, "list_tasks", lambda include_hub=False: ["mrpc", "rte"])
    result = overview.run({"models": [model_dir], "examples_per_task": 2})
    assert result.block_counts[model_dir] == (8, 8)
    assert result.models.loc[model_dir, "blocks"] == 8 and len(result.blocks) == 6
    assert list(result.examples.index) == ["mrpc", "mrpc", "rte", "rte"]
    train = {e.text for e in data.load_task("rte", "train")}
    test = {e.text for e in data.load_task("rte", "test")}
    assert result.overlaps["rte"] == len(train & test)
    assert overview.block_check(result) == f"{model_dir} 8 blocks"


# ------------------------------------------------------------------ verdict rows

def _profiles(frame: pd.DataFrame) -> scoring.Profiles:
    corr, summary = scoring.profile_similarity(frame)
    return scoring.Profiles(None, {"m": frame}, {"m": corr}, summary.to_frame("m").T, None)


def test_profile_verdict_rows_on_shared_and_distinct_profiles():
    rng = np.random.default_rng(0)
    base = rng.normal(size=24)
    shared = pd.DataFrame([base + 0.01 * rng.normal(size=24) for _ in range(4)])
    distinct = pd.DataFrame(rng.normal(size=(4, 24)))
    [row] = scoring.verdicts(_profiles(shared), n_boot=200)
    assert row.verdict == NOT_HELD and row.notebook == "01_layer_scores"
    [row] = scoring.verdicts(_profiles(distinct), n_boot=200)
    rho = distinct.T.corr(method="spearman").to_numpy()[~np.eye(4, dtype=bool)].mean()
    assert row.verdict == HELD and row.ours == f"mean pairwise Spearman {rho:.2f} over 4 tasks"
    assert row.statistic == pytest.approx(rho)
    assert [profile_reading(x) for x in (0.49, 0.5, 0.8, 0.81)] == [
        "distinct profiles", "partly task-specific profiles", "partly task-specific profiles",
        "largely shared profiles"]


def test_agreement_verdict_rows_and_the_zero_reading():
    t = pd.DataFrame({"spearman": [0.1, -0.3], "ci_low": [-0.2, -0.6], "ci_high": [0.4, 0.1],
                      "spearman_scores": [0.0, 0.0]}, index=["mrpc", "sst2"])
    [row] = agreement.verdicts(agreement.Agreement({"m": t}))
    assert row.verdict == HELD and row.interval == "lowest -0.60, highest +0.40"
    assert row.ours == "Spearman -0.30 to 0.10 (mean -0.10) over 2 tasks"
    [row] = agreement.verdicts(agreement.Agreement({"m": t.assign(ci_high=[0.6, 0.1])}))
    assert row.verdict == UNDERPOWERED   # one interval crosses 0.5, none lies above it
    assert covering(t["ci_low"], t["ci_high"]) == 2
    assert covering([0.1, np.nan, -1.0], [0.5, 1.0, 0.0]) == 1   # [-1, 0] holds 0, NaN counts none
    assert "the 95% CI covers 0 for 2 of them" in agreement.summary(agreement.Agreement({"m": t}))
