"""The pruning study end to end on a tiny model saved to disk: a pruned model's evaluation is
a stored result (computed once, then loaded; a changed allocation is another identity), each
setting starts from the dense weights, and the notebooks' parameter profiles are valid."""
import numpy as np
import pytest

from layerif import ScoreConfig, store, study
from layerif.evaluate import EvalConfig
from layerif.experiments import pruning, scoring
from layerif.prune import PruneConfig

TASKS = ("arc_easy", "boolq")


@pytest.fixture(scope="module")
def setup(tmp_path_factory, save_tiny):
    path = save_tiny(n_layers=6)
    results = tmp_path_factory.mktemp("results")
    config = ScoreConfig(n_train=7, n_val=7, max_length=24, batch_size=4, device="cpu")
    scoring.score_tasks(str(path), [scoring.POOL], config, results, methods=("datainf",), progress=False)
    scoring.score_tasks(str(path), [scoring.POOL], config.replace(modules="all"), results,
                        methods=("datainf",), progress=False, tag="all-linear")
    run = pruning.PruningRun(results, str(path), PruneConfig(n_samples=2, seq_len=32, batch_size=2),
                             EvalConfig(tasks=TASKS, n_examples=3, ppl_samples=2, ppl_len=16),
                             owl_calibration=(2, 32), device="cpu", progress=False)
    return run, results, str(path)


def test_evaluation_is_saved_then_loaded(setup):
    run, _, _ = setup
    settings = [pruning.Setting("dense"), pruning.Setting("wanda", "LayerIF", 0.5),
                pruning.Setting("magnitude", "OWL", 0.5), pruning.Setting("wanda", "AlphaPruning", 0.5)]
    first = run.evaluate_all(settings)
    assert set(run.log["status"]) == {"computed"}
    again = run.evaluate_all(settings)
    assert set(run.log["status"]) == {"loaded"}
    for s in settings:
        a, b = first[s].examples, again[s].examples
        assert a.index.equals(b.index)
        np.testing.assert_array_equal(a["margin"].to_numpy(), b["margin"].to_numpy())
        assert first[s].perplexity == again[s].perplexity
    pruned = run.log.query("method != 'dense'")
    assert (pruned["global_sparsity"] - 0.5).abs().max() < 0.03  # per-row rounding of tiny matrices
    assert list(again[settings[0]].examples.index.get_level_values("task").unique()) == list(TASKS)


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
    ev, info = own.evaluate(setting)  # another evaluation of the same pruned model: no clash
    assert info["status"] == "computed" and own.folder(setting) != run.folder(setting)
    assert list(ev.examples.index.get_level_values("task").unique()) == ["arc_easy"]
