"""Notebook 03's recipe chosen on validation examples (issue 22): the choice rule on hand-made
tables, the examples it is scored on (validation: disjoint from the training and test
examples), today's recipe when no search is asked for, and the stored trials on the tiny model.

References: hand-made search tables; the registry's splits read directly; the profile's
committed recipe field by field; each trial's manifest read back from disk.
"""
import warnings

import numpy as np
import pandas as pd
import pytest

from layerif import ScoreConfig, store, study
from layerif.experiments import moe as moe_study
from layerif.experiments import moe_recipe, moe_runs, moe_verdicts, scoring
from layerif.experiments.moe import BASE, LORA
from layerif.experiments.moe_recipe import choose, search_spec, tuned
from layerif.train import TrainConfig


def _table(accuracies, base=None):
    rows = [{"method": LORA, "recipe": f"lr={i}", "val accuracy": a} for i, a in enumerate(accuracies)]
    if base is not None:
        rows.append({"method": BASE, "recipe": "", "val accuracy": base})
    return pd.DataFrame(rows).rename_axis("trial")


def test_choose_takes_the_highest_validation_accuracy_and_the_first_among_ties():
    out = choose(_table([0.5, 0.75, 0.625], base=0.6))
    assert out == {"trial": 1, "recipe": "lr=1", "val accuracy": 0.75, "base val accuracy": 0.6,
                   "beats base": True}
    tie = choose(_table([0.5, 0.7, 0.7, 0.6], base=0.4))
    assert tie["trial"] == 1 and tie["recipe"] == "lr=1"   # listed first wins
    # the base row is never chosen, even when it is the best: the candidate is flagged instead
    flagged = choose(_table([0.55, 0.5], base=0.72))
    assert flagged["trial"] == 0 and flagged["beats base"] is False
    assert flagged["base val accuracy"] == pytest.approx(0.72)
    even = choose(_table([0.6], base=0.6))   # equal to the base is not beating it
    assert even["beats base"] is False
    alone = choose(_table([0.3, 0.4]))
    assert alone["trial"] == 1 and np.isnan(alone["base val accuracy"]) and not alone["beats base"]
    # labels need not be positions: the row's label comes back
    assert choose(_table([0.2, 0.9], base=0.1).set_axis([7, 3, 5]))["trial"] == 3
    with pytest.raises(ValueError, match="at least one candidate"):
        choose(_table([], base=0.5))


def test_search_spec_names_the_bad_parameter():
    assert search_spec({}) is None and search_spec({"recipe_search": None}) is None
    good = {"method": LORA, "task": "sst2", "n_val": 4, "candidates": [{"lr": 1e-3}]}
    assert search_spec({"recipe_search": good}) == good
    with pytest.raises(ValueError, match=r"recipe_search\.candidates=\{'learning_rate'"):
        search_spec({"recipe_search": {**good, "candidates": [{"learning_rate": 1e-3}]}})
    with pytest.raises(ValueError, match=r"recipe_search\.n_val=0"):
        search_spec({"recipe_search": {**good, "n_val": 0}})
    with pytest.raises(ValueError, match="recipe_search="):
        search_spec({"recipe_search": {"method": LORA}})


@pytest.mark.parametrize("profile", ["cpu", "smoke"])
def test_validation_examples_are_disjoint_from_training_and_test(profile):
    """The examples the recipe is scored on share no example (id or prompt) with the ones the
    runs train on or the ones notebook 03 reports."""
    params = study.load_params("03_lora_moe", profile)
    task, n_val = params["recipe_search"]["task"], params["recipe_search"]["n_val"]
    val = scoring.label_examples(task, moe_recipe.RecipeTrials.eval_split, n_val)
    train = scoring.label_examples(task, "train", params["n_train"])
    test = scoring.label_examples(task, moe_study.MoEStudy.eval_split, params["n_eval"])
    assert len(val) == n_val and moe_recipe.RecipeTrials.eval_split == "validation"
    assert moe_study.MoEStudy.eval_split == "test"
    for other in (train, test):
        assert not {e.id for e in val} & {e.id for e in other}
        assert not {e.prompt for e in val} & {e.prompt for e in other}


def test_no_search_gives_exactly_todays_recipe(monkeypatch):
    def no_model(*args, **kwargs):
        raise AssertionError("no model is loaded without a recipe search")

    monkeypatch.setattr(moe_runs, "load_model", no_model)
    cpu = study.load_params("03_lora_moe", "cpu")
    for spec in (None, "absent"):
        params = {k: v for k, v in cpu.items() if k != "recipe_search"}
        if spec is None:
            params["recipe_search"] = None
        table, config, tag = tuned(params, "smollm2-135m", "/nonexistent")
        assert table.empty and config == moe_study.recipe(params)[1] and tag == ""
        # the committed cpu runs' recipe, field by field
        assert (config.epochs, config.lr, config.batch_size, config.grad_accum,
                config.warmup_steps, config.max_length) == (2, 1e-3, 8, 1, 2, 128)
    assert study.load_params("03_lora_moe", "paper")["recipe_search"] is None
    first = cpu["recipe_search"]["candidates"][0]   # today's recipe is the first candidate
    assert TrainConfig.preset("paper", **{**cpu["train"], **first}) == moe_study.recipe(cpu)[1]


def test_recipe_folder_and_name_do_not_depend_on_the_order_of_the_fields():
    """The notebook gets its parameters through papermill (keys sorted), notebook 10 from the
    YAML file (keys as written): both must find the same stored trials."""
    assert moe_recipe.recipe_slug({"lr": 1e-3, "epochs": 2}) == "epochs-2_lr-0.001"
    assert moe_recipe.recipe_slug({"epochs": 2, "lr": 1e-3}) == "epochs-2_lr-0.001"
    assert moe_recipe.recipe_name({"lr": 3e-4, "epochs": 2}) == "epochs=2, lr=0.0003"
    assert moe_recipe.recipe_slug({}) == "train"


@pytest.mark.parametrize("winner, tag", [(0, ""), (2, "epochs-4_lr-0.0001")])
def test_tuned_applies_the_winner_and_tags_only_a_new_recipe(monkeypatch, winner, tag):
    """The chosen candidate's fields replace ``train``'s; today's recipe winning keeps the
    runs' folders (no tag), another gets folders of its own."""
    cpu = study.load_params("03_lora_moe", "cpu")
    accuracies = [0.5, 0.5, 0.5]
    accuracies[winner] = 0.6
    monkeypatch.setattr(moe_recipe, "search", lambda *a, **k: _table(accuracies, base=0.55))
    table, config, got = tuned(cpu, "smollm2-135m", "/nonexistent")
    expected = moe_study.recipe(cpu)[1].replace(**cpu["recipe_search"]["candidates"][winner])
    assert config == expected and got == tag
    assert (config.lr, config.epochs) == ((1e-3, 2) if winner == 0 else (1e-4, 4))
    assert table["chosen"].tolist() == [i == winner for i in range(4)]
    assert table["beats base"].tolist() == [i == winner for i in range(3)] + [False]


def _tuned(monkeypatch, accuracies, base, params):
    table = _table(accuracies, base=base).assign(n_val=64)
    monkeypatch.setattr(moe_recipe, "search", lambda *a, **k: table)
    return tuned(params, "gemma3-270m", "/nonexistent")[0]


def test_no_gain_names_the_best_recipe_and_the_base_model(monkeypatch):
    """A model whose best candidate is not above its base model on validation trains nothing
    (issue 22: no allocation compared under a recipe that does not help); the reason carries
    the numbers it was decided on."""
    cpu = study.load_params("03_lora_moe", "cpu")
    flagged = _tuned(monkeypatch, [0.45, 0.484375, 0.4], 0.515625, cpu)
    why = moe_recipe.no_gain(flagged, cpu)
    assert why is not None
    assert "best: lr=1, 0.484 vs base 0.516" in why and "64 sst2 validation examples" in why
    # equal to the base model is no gain either (choose's rule)
    assert moe_recipe.no_gain(_tuned(monkeypatch, [0.5, 0.5, 0.5], 0.5, cpu), cpu) is not None
    helped = _tuned(monkeypatch, [0.45, 0.6, 0.4], 0.55, cpu)
    assert moe_recipe.no_gain(helped, cpu) is None
    keep = {**cpu, "recipe_search": {**cpu["recipe_search"], "skip_if_no_gain": False}}
    assert moe_recipe.no_gain(flagged, keep) is None
    assert moe_recipe.no_gain(pd.DataFrame(), {**cpu, "recipe_search": None}) is None
    with pytest.raises(ValueError, match="recipe_search.skip_if_no_gain"):
        search_spec({**cpu, "recipe_search": {**cpu["recipe_search"], "skip_if_no_gain": "no"}})


def test_a_model_no_recipe_helps_trains_nothing_and_reads_untestable(monkeypatch):
    cpu = study.load_params("03_lora_moe", "cpu")
    flagged = _tuned(monkeypatch, [0.45, 0.484375, 0.4], 0.515625, cpu)

    def no_model(*args, **kwargs):
        raise AssertionError("a skipped model is not loaded")

    monkeypatch.setattr(moe_runs, "load_model", no_model)
    monkeypatch.setattr(moe_study, "tuned", lambda *a, **k: (flagged, moe_study.recipe(cpu)[1], ""))
    with pytest.raises(ValueError, match="plans.*skipped"):
        moe_study.run({**cpu, "plans": {"gemma3-270m": cpu["plans"]["gemma3-270m"]}}, "cpu")
    why = moe_recipe.no_gain(flagged, cpu)
    result = moe_study.MoEResult({}, {}, pd.DataFrame(), pd.DataFrame(), "", "LayerIF +ve",
                                 skipped={"gemma3-270m": why})
    rows = moe_verdicts.verdicts(result)
    assert [r.claim for r in rows] == ["LayerIF allocation beats AlphaLora (LoRA-MoE)",
                                       "LayerIF allocation beats Mola (LoRA-MoE)"]
    for row, family in zip(rows, ("AlphaLora", "Mola")):
        d = moe_verdicts.paper_effect("gemma3-270m", family)[0]
        assert row.verdict == "untestable here" and row.model == "gemma3-270m"
        assert row.effect == pytest.approx(d) and np.isnan(row.p) and np.isnan(row.mde)
        assert why in row.ours and why in row.test and row.where == "Table 4"


@pytest.fixture(scope="module")
def scored(save_tiny, tmp_path_factory):
    """The tiny checkpoint scored on sst2 (notebook 01's result): (path, label, results)."""
    path = str(save_tiny(4))
    results = tmp_path_factory.mktemp("recipe_results")
    config = ScoreConfig(n_train=6, n_val=4, max_length=32, batch_size=4, device="cpu")
    label = scoring.score_tasks(path, ["sst2"], config, results, methods=("datainf",),
                                progress=False).index[0][0]
    return path, label, results


def _params(label, path):
    return {**study.load_params("03_lora_moe", "smoke"), "labels": [label],
            "plans": {path: {"tasks": [label], "methods": ["LayerIF +ve", LORA, BASE]}},
            "recipe_search": {"method": LORA, "task": label, "n_val": 4, "skip_if_no_gain": False,
                              "candidates": [{"lr": 1e-2}, {"lr": 1e-4, "epochs": 2}]}}


@pytest.mark.slow
def test_trials_round_trip_through_the_store(scored):
    path, label, results = scored
    params = _params(label, path)
    table = moe_recipe.search(params, path, results)
    assert table["method"].tolist() == [LORA, LORA, BASE] and set(table["status"]) == {"computed"}
    assert table["epochs"].isna().tolist() == [True, False, True]
    assert (table["n_val"] == 4).all() and table["val accuracy"].between(0, 1).all()
    folder = results / "moe_recipe" / store.slug(path) / store.slug(label)
    manifests = sorted(folder.rglob("manifest.json"))
    assert len(manifests) == 3
    val = [e.id for e in scoring.label_examples(label, "validation", 4)]
    train = [e.id for e in scoring.label_examples(label, "train", params["n_train"])]
    lrs = set()
    for m in manifests:
        saved = store.load_manifest(m.parent)
        assert saved["kind"] == moe_recipe.KIND
        assert saved["data"]["eval_ids"] == val and saved["data"]["train_ids"] == train
        assert {"train_seconds", "eval_seconds"} <= set(saved["extra"])
        lrs.add(None if saved["config"]["train"] is None else saved["config"]["train"]["lr"])
    assert lrs == {None, 1e-2, 1e-4}
    again = moe_recipe.search(params, path, results)
    assert set(again["status"]) == {"loaded"}
    pd.testing.assert_frame_equal(again.drop(columns="status"), table.drop(columns="status"))
    # notebook 03's run trains every run with the chosen candidate and shows the table
    result = moe_study.run(params, "smoke", results)
    chosen = choose(table)["trial"]
    assert result.recipes["chosen"].tolist() == [i == chosen for i in range(3)]
    candidate = params["recipe_search"]["candidates"][chosen]
    folders = {store.load_manifest(m.parent)["config"]["method"]: m.parent
               for m in (results / "moe").rglob("manifest.json")}
    assert store.load_manifest(folders[LORA])["config"]["train"]["lr"] == candidate["lr"]
    # neither candidate is the smoke recipe: the trained runs' folders carry the recipe
    assert folders[LORA].name == f"seed-0--{moe_recipe.recipe_slug(candidate)}"
    assert folders[BASE].name == "seed-0"   # untrained: no recipe in its identity or folder


class _Captured(Exception):
    pass


def test_layerif_moe_trains_with_the_recipe_notebook_03_chose(monkeypatch):
    """`layerif moe` (single_run) gets the model's searched recipe and its folder tag, as
    notebook 03's runs do; a model no candidate helps is trained all the same, with a warning."""
    cpu = study.load_params("03_lora_moe", "cpu")
    seen = {}

    class Study:
        def __init__(self, results, model, labels, moe_config, train_config, *args, **kwargs):
            seen.update(train_config=train_config, tag=kwargs["recipe_tag"], moe=moe_config)
            raise _Captured

    chosen = moe_study.recipe(cpu)[1].replace(lr=1e-4, epochs=4)
    for table, warns in ((_table([0.5, 0.6], base=0.55), False), (_table([0.5, 0.52], base=0.55), True)):
        table = table.assign(n_val=64, chosen=[False, True, False],
                             **{"beats base": [False, not warns, False]})
        monkeypatch.setattr(moe_study, "tuned", lambda *a, t=table, **k: (t, chosen, "epochs-4_lr-0.0001"))
        monkeypatch.setattr(moe_study, "MoEStudy", Study)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with pytest.raises(_Captured):
                moe_study.single_run("gemma3-270m", "sst2", "MoLA 5555", params=cpu, results="/nonexistent")
        assert any("no candidate recipe beats" in str(w.message) for w in caught) == warns
        assert seen["train_config"] == chosen and seen["tag"] == "epochs-4_lr-0.0001"
        assert seen["moe"] == moe_study.recipe(cpu)[0]

