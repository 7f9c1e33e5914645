"""The pruning study end to end on a tiny model saved to disk: a pruned model's evaluation is
a stored result (computed once, then loaded, also read-only; a changed allocation is another
identity), each setting starts from the dense weights, notebooks 05 / 07 / 08's ``run`` keeps
their invariants (every model at its target sparsity, on the same examples) and computes
nothing under ``store.read_only``, and the notebooks' parameter profiles are valid."""
import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from layerif import ScoreConfig, store, study
from layerif.evaluate import EvalConfig
from layerif.experiments import granularity, pruning, pruning_study, scoring, smoothing
from layerif.prune import PruneConfig

TASKS = ("arc_easy", "boolq")
SIZES = {"prune": {"n_samples": 2, "seq_len": 32, "batch_size": 2}, "owl_calibration": [2, 32],
         "evaluation": {"tasks": list(TASKS), "n_examples": 3, "ppl_samples": 2, "ppl_len": 16}}


@pytest.fixture(scope="module")
def setup(tmp_path_factory, save_tiny):
    path = save_tiny(n_layers=6)
    results = tmp_path_factory.mktemp("results")
    config = ScoreConfig(n_train=7, n_val=7, max_length=24, batch_size=4, device="cpu")
    scoring.score_tasks(str(path), [scoring.POOL], config, results, methods=("datainf",), progress=False)
    pruning.score_for_pruning(results, str(path), [scoring.POOL], 7, 7, modules="all",
                              tag="all-linear", progress=False)  # as notebook 08's run
    run = pruning.PruningRun(results, str(path), PruneConfig(n_samples=2, seq_len=32, batch_size=2),
                             EvalConfig(tasks=TASKS, n_examples=3, ppl_samples=2, ppl_len=16),
                             owl_calibration=(2, 32), device="cpu", progress=False)
    return run, results, str(path)


def test_evaluation_is_saved_then_loaded(setup):
    run, _, _ = setup
    settings = [pruning.Setting("dense"), pruning.Setting("wanda", "LayerIF", 0.5),
                pruning.Setting("magnitude", "OWL", 0.5), pruning.Setting("wanda", "AlphaPruning", 0.5)]
    first = run.evaluate_all(settings)
    fresh = pruning.PruningRun(run.results, run.model_name, run.prune_config, run.eval_config,
                               run.owl_calibration, device="cpu", progress=False)
    with store.read_only("05_pruning"):  # computing anything raises here
        again = fresh.evaluate_all(settings)
        with pytest.raises(store.MissingResult, match="05_pruning"):
            fresh.evaluate(pruning.Setting("magnitude", "Uniform", 0.3))
    for s in settings:
        a, b = first[s].examples, again[s].examples
        assert a.index.equals(b.index)
        np.testing.assert_array_equal(a["margin"].to_numpy(), b["margin"].to_numpy())
        assert first[s].perplexity == again[s].perplexity
    pruned = run.log.query("method != 'dense'")
    assert (pruned["global_sparsity"] - 0.5).abs().max() < 0.03  # per-row rounding of tiny matrices
    assert list(again[settings[0]].examples.index.get_level_values("task").unique()) == list(TASKS)
    dense_only = pruning.PruningRun(run.results, run.model_name, run.prune_config, run.eval_config,
                                    device="cpu", progress=False)
    with store.read_only("05_pruning"):
        dense_only.evaluate(settings[0])
    assert dense_only._model is None  # the dense model's identity needs no model: none was loaded


def test_each_setting_starts_from_the_dense_weights(setup):
    run, _, _ = setup
    dense = pruning.Setting("dense")
    def zeros():
        return sum(int((p == 0).sum()) for p in run.model().parameters())

    before, _ = run.evaluate(dense, overwrite=True)
    dense_zeros = zeros()
    run.evaluate(pruning.Setting("magnitude", "Uniform", 0.6), overwrite=True)
    assert zeros() > dense_zeros + 1000
    after, _ = run.evaluate(dense, overwrite=True)  # recomputed after a prune: same numbers
    np.testing.assert_allclose(after.examples["margin"], before.examples["margin"], atol=1e-6)
    assert after.perplexity == pytest.approx(before.perplexity, rel=1e-6)
    assert zeros() == dense_zeros  # the model held now is the dense one again


def test_another_allocation_is_another_identity(setup):
    run, _, _ = setup
    setting = pruning.Setting("wanda", "Uniform", 0.5)
    run.evaluate(setting)
    ratios, _ = run.ratios(setting)
    ident = run.identity(setting, ratios * 0.9, None)
    with pytest.raises(store.ResultMismatch):
        store.load_if_matching(run.folder(setting), ident)


def test_per_matrix_setting_prunes_each_matrix_at_its_ratio(setup):
    run, _, _ = setup
    label = f"{scoring.POOL}--all-linear"
    setting = pruning.Setting("magnitude", "LayerIF", 0.6, scores=label, granularity="matrix")
    table = run.matrix_ratios(setting)
    sizes = run.matrix_sizes(table.columns)
    assert (table * sizes).to_numpy().sum() / sizes.to_numpy().sum() == pytest.approx(0.6, abs=1e-9)
    block_ratios, mapping = run.ratios(setting)
    assert len(mapping) == table.size and len(block_ratios) == len(table)
    run.evaluate(setting, overwrite=True)
    model = run.model()
    named = dict(model.named_modules())
    for path, ratio in mapping.items():
        w = named[path].weight
        assert int((w == 0).sum()) == int(w.numel() * ratio)  # exactly int(numel * s) zeros
    # per block from the same scores: the block's weighted mean equals the ratio of its matrices
    block = pruning.Setting("magnitude", "LayerIF", 0.6, scores=label)
    assert run.ratios(block)[1] is None


@pytest.mark.parametrize("profile", ["smoke", "cpu", "paper"])
@pytest.mark.parametrize("name", ["05_pruning", "07_ablation_smoothing", "08_ablation_granularity"])
def test_profiles_are_valid_configs(profile, name):
    params = study.load_params(name, profile)
    prune, evaluation = PruneConfig(**params["prune"]), EvalConfig(**params["evaluation"])
    EvalConfig(tasks=(), **params["nll"])             # the per-window NLL test's windows
    if profile == "paper":
        assert (prune.n_samples, prune.seq_len) == (128, 2048)  # the paper's calibration
        assert evaluation.n_examples is None                      # full test sets
    methods = params.get("methods", [])
    assert set(methods) <= {"magnitude", "wanda", "sparsegpt"} and methods
    pruning.grid(methods, sparsities=params.get("fig3_sparsities", [params["sparsity"]]))
    for eps in params.get("epsilons", []):
        pruning.Setting(methods[0], "LayerIF", params["sparsity"], epsilon=eps, smooth=False)
    assert 0 < params["sparsity"] < 1


def test_evaluations_on_other_examples_sit_side_by_side(setup):
    run, results, model_dir = setup
    setting = pruning.Setting("magnitude", "Uniform", 0.5)
    run.evaluate(setting)
    own = pruning.PruningRun(results, model_dir, run.prune_config,
                             run.eval_config.replace(tasks=("arc_easy",), n_examples=4),
                             device="cpu", progress=False)
    ev, _ = own.evaluate(setting)  # another evaluation of the same pruned model: no clash
    assert own.folder(setting) != run.folder(setting)
    assert list(ev.examples.index.get_level_values("task").unique()) == ["arc_easy"]


def _invariants(log: pd.DataFrame, evals: dict) -> None:
    """Every pruned model reached its global sparsity; every model saw the same examples."""
    pruned = log.query("method != 'dense'")
    assert (pruned["global_sparsity"] - pruned["sparsity"]).abs().max() < 0.03  # tiny matrices
    index = next(iter(evals.values())).examples.index
    assert all(ev.examples.index.equals(index) for ev in evals.values())


def _read_only_again(module, params, results, name):
    with store.read_only(name):
        return module.run(params, results=results)


def test_notebook_05_run(setup):
    _, results, model = setup
    params = {**SIZES, "models": [model], "methods": ["magnitude", "wanda"], "sparsity": 0.5,
              "fig3_models": [], "fig3_sparsities": [0.5],
              "task_specific": {"models": [model], "tasks": ["arc_easy"], "method": "wanda",
                                "n_train": 4, "n_val": 4, "n_examples": 3},
              "nll": {"ppl_samples": 2, "ppl_len": 16}}   # the evaluation's own windows: reused
    result = pruning_study.run(params, results=results)
    evals = result.evals[model]
    assert result.windows[model] == {s: e for s, e in evals.items() if s.method != "dense"}
    assert len(evals) == 1 + 2 * 4 and result.acc[model][pruning_study.tables.AVERAGE].between(0, 1).all()
    _invariants(result.log, evals)
    rows = pruning_study.verdicts(result)
    assert [r.claim for r in rows][:3] == [f"LayerIF sparsity beats {b} at 50%" for b in ("Uniform", "AlphaPruning", "OWL")]
    assert len(rows) == 3 + 3 + 1 + 1 and all(r.notebook == "05_pruning" for r in rows)
    ppl = result.acc[model]["perplexity"].drop(index="dense", level="method").unstack("allocation")
    wins = int((ppl.idxmin(axis=1) == "LayerIF").sum())
    assert rows[6].p == pytest.approx(sps.binomtest(wins, 2, 0.25, alternative="greater").pvalue)
    # the NLL rows: LayerIF - Uniform per window, the two pruners averaged, by scipy
    per_token = {s: e.windows["nll_sum"] / e.windows["n_tokens"] for s, e in evals.items() if s.method != "dense"}
    w = {a: sum(per_token[pruning.Setting(m, a, 0.5)] for m in ("magnitude", "wanda")) / 2
         for a in ("LayerIF", "Uniform")}
    assert rows[3].p == pytest.approx(sps.ttest_rel(w["LayerIF"], w["Uniform"]).pvalue)
    assert rows[3].statistic == pytest.approx(float((w["LayerIF"] - w["Uniform"]).mean()))
    again = _read_only_again(pruning_study, params, results, "05_pruning")
    pd.testing.assert_frame_equal(pruning_study.paired_table(again), pruning_study.paired_table(result))
    assert pruning_study.verdicts(again) == rows and pruning_study.summary(again) == pruning_study.summary(result)
    # other windows than the evaluation's: each pruned setting on perplexity only, stored
    more = pruning_study.run({**params, "nll": {"ppl_samples": 3, "ppl_len": 16}}, results=results)
    assert all(e.windows.shape == (3, 2) and e.examples.empty for e in more.windows[model].values())
    assert (results / "pruning" / store.slug(model) / "ppl-only-ppl3x16").is_dir()
    assert len(pruning_study.window_table(more)) == 2 * 3


def test_notebook_05_table8_on_the_per_window_nll(setup):
    """Fig. 3's models: SparseGPT at every fig3 sparsity on the windows, and Table 8's NLL rows
    (LayerIF - baseline per window, the sparsities averaged) equal to scipy's paired t."""
    _, results, model = setup
    params = {**SIZES, "models": [model], "methods": ["sparsegpt"], "sparsity": 0.5,
              "fig3_models": [model], "fig3_sparsities": [0.4, 0.5],
              "task_specific": {"models": [], "tasks": [], "method": "wanda", "n_train": 4, "n_val": 4,
                                "n_examples": 3},
              "nll": {"ppl_samples": 2, "ppl_len": 16}}   # the evaluation's own windows: reused
    listed = pruning_study.settings(params, model)
    assert len(listed) == len(set(listed)) == 1 + 2 * 4   # SparseGPT at 50% (Table 2 and Fig. 3) once
    result = pruning_study.run(params, results=results)
    assert len(result.log.loc[model]) == len(listed)       # one log row (and its seconds) each
    gpt = {s for s in result.windows[model] if s.method == "sparsegpt"}
    assert {(s.allocation, s.sparsity) for s in gpt} == {(a, sp) for a in pruning.ALLOCATIONS for sp in (0.4, 0.5)}
    rows = [r for r in pruning_study.verdicts(result) if r.where == "Table 8 (sensitive measure)"]
    assert [r.claim for r in rows] == [f"LayerIF lowers held-out NLL vs {b} across sparsities (SparseGPT)"
                                       for b in pruning_study.BASELINES]
    per_token = {s: result.windows[model][s].windows["nll_sum"] / result.windows[model][s].windows["n_tokens"]
                 for s in gpt}
    w = {a: sum(per_token[pruning.Setting("sparsegpt", a, sp)] for sp in (0.4, 0.5)) / 2
         for a in ("LayerIF", "OWL")}
    assert rows[2].p == pytest.approx(sps.ttest_rel(w["LayerIF"], w["OWL"]).pvalue)
    assert rows[2].statistic == pytest.approx(float((w["LayerIF"] - w["OWL"]).mean()))
    table = pruning_study.window_table(result)
    assert set(table.index.get_level_values("sparsity")) == {0.4, 0.5}


def test_notebook_07_run(setup):
    _, results, model = setup
    params = {**SIZES, "models": [model], "methods": ["magnitude", "wanda"], "sparsity": 0.6,
              "epsilons": [0.1, 0.3], "nll": {"ppl_samples": 2, "ppl_len": 16}}  # the evaluation's windows
    result = smoothing.run(params, results=results)
    evals = result.evals[model]
    assert result.windows[model] == {s: e for s, e in evals.items() if s.method != "dense"}
    change = result.change[model]
    assert len(change) == 2 * 2 and change["McNemar p"].between(0, 1).all()
    _invariants(result.log, result.evals[model])
    seconds = pruning.seconds(result.log)
    assert list(seconds.index) == [model]
    assert seconds.at[model, "eval_seconds"] == pytest.approx(result.log["eval_seconds"].sum(), abs=0.5)
    # the NLL row: smoothed - raw per window, the four cells averaged, by scipy
    rows = smoothing.verdicts(result)
    assert len(rows) == 2 and rows[1].claim == "smoothing the scores lowers held-out NLL (60%)"
    per_token = {s: e.windows["nll_sum"] / e.windows["n_tokens"] for s, e in evals.items() if s.method != "dense"}
    w = {flag: sum(per_token[pruning.Setting(m, "LayerIF", 0.6, epsilon=e, smooth=flag)]
                   for e in (0.1, 0.3) for m in ("magnitude", "wanda")) / 4 for flag in (True, False)}
    assert rows[1].p == pytest.approx(sps.ttest_rel(w[True], w[False]).pvalue)
    assert rows[1].statistic == pytest.approx(float((w[True] - w[False]).mean()))
    table = smoothing.window_table(result)
    assert list(table.index.names) == ["model", "epsilon", "method"] and len(table) == 2 * 2
    cell = pruning.Setting("wanda", "LayerIF", 0.6, epsilon=0.3, smooth=True)
    raw = pruning.Setting("wanda", "LayerIF", 0.6, epsilon=0.3, smooth=False)
    assert table.loc[(model, 0.3, "wanda"), "NLL difference"] == pytest.approx(
        float((per_token[cell] - per_token[raw]).mean()), abs=1e-4)
    again = _read_only_again(smoothing, params, results, "07_ablation_smoothing")
    pd.testing.assert_frame_equal(smoothing.change_table(again), smoothing.change_table(result))
    assert smoothing.verdicts(again) == rows and smoothing.summary(again) == smoothing.summary(result)


def test_notebook_08_run(setup):
    run, results, model = setup
    params = {**SIZES, "scores": {model: {"n_train": 7, "n_val": 7}}, "methods": ["magnitude"],
              "sparsity": 0.6, "aggregation_method": "wanda", "aggregation_sparsity": 0.5,
              "nll": {"ppl_samples": 2, "ppl_len": 16}}   # the evaluation's own windows: reused
    result = granularity.run(params, results=results)
    assert all(result.windows[model][s] is result.evals[model][s] for s in result.windows[model])
    assert set(result.score_runs["status"]) == {"loaded"}  # the fixture's, same identity
    ratios = result.ratios[model].drop(columns="per block")
    sizes = run.matrix_sizes(ratios.columns)
    assert (ratios * sizes).to_numpy().sum() / sizes.to_numpy().sum() == pytest.approx(0.6, abs=1e-9)
    assert result.granularity[model]["McNemar p"].between(0, 1).all()
    row, nll = granularity.verdicts(result)
    assert row.claim == "per-block scores beat per-matrix scores (60%)" and nll.n_unit == "windows"
    _invariants(result.log, result.evals[model])
    again = _read_only_again(granularity, params, results, "08_ablation_granularity")
    pd.testing.assert_frame_equal(granularity.aggregation_table(again), granularity.aggregation_table(result))
    assert granularity.verdicts(again) == [row, nll]
