"""Claims (notebook 10): the verdict rules, the missing-result error, the reproduction table."""
import datetime as dt

import nbformat
import numpy as np
import pandas as pd
import pytest

from layerif import notebook_record as rec
from layerif import study
from layerif.experiments import claims, reproduction, saved
from layerif.experiments import verdict as rules
from layerif.experiments import validation_verdicts as vv

from layerif.experiments.verdict import HELD, INCONCLUSIVE, NOT_HELD, decide


# ------------------------------------------------------------------ verdict rules

@pytest.mark.parametrize("difference, pvalues, noise, expected", [
    (0.05, [0.01], np.nan, HELD),                 # better, significant
    (-0.05, [0.01], np.nan, NOT_HELD),            # worse, significant
    (0.05, [0.20], np.nan, INCONCLUSIVE),         # not significant
    (0.05, [0.01, 0.20], np.nan, INCONCLUSIVE),   # every named test must agree
    (0.05, [0.01, np.nan], np.nan, HELD),         # an undefined test does not count
    (0.05, [np.nan], np.nan, INCONCLUSIVE),       # no test at all decides nothing
    (0.05, [0.001], 0.06, INCONCLUSIVE),          # within the seed-to-seed spread
    (-0.08, [0.001], 0.06, NOT_HELD),             # beyond it
    (0.0, [0.001], np.nan, INCONCLUSIVE),
])
def test_decide(difference, pvalues, noise, expected):
    assert decide(difference, pvalues, 0.05, noise) == expected


def test_decide_rejects_a_bad_level():
    with pytest.raises(ValueError, match="level"):
        decide(0.1, [0.01], level=1.5)


def test_sign_verdict_is_the_one_sided_sign_test():
    verdict, p = rules.sign_verdict([1, 2, 3, 4, 5, 6, 7])
    assert verdict == HELD and p == pytest.approx(0.5 ** 7)
    verdict, p = rules.sign_verdict([-1, -2, -3, -4, -5, -6, -7])
    assert verdict == NOT_HELD and p == pytest.approx(0.5 ** 7)
    verdict, p = rules.sign_verdict([1, -1, 2, -2, 3])
    assert verdict == INCONCLUSIVE and 0.05 < p <= 1
    # zeros count for neither direction: 3 up of 6 is not a majority
    assert rules.sign_verdict([1, 1, 1, 0, 0, 0])[0] == INCONCLUSIVE
    with pytest.raises(ValueError, match="changes"):
        rules.sign_verdict([1.0])


def test_profile_and_agreement_verdicts_use_their_thresholds():
    assert rules.profile_verdict(0.1, 0.45) == HELD
    assert rules.profile_verdict(0.85, 0.95) == NOT_HELD
    assert rules.profile_verdict(0.3, 0.7) == INCONCLUSIVE
    t = pd.DataFrame({"ci_low": [-0.5, -0.2], "ci_high": [0.3, 0.4]})
    assert rules.agreement_verdict(t) == HELD
    assert rules.agreement_verdict(t.assign(ci_high=[0.3, 0.9])) == INCONCLUSIVE
    assert rules.agreement_verdict(t.assign(ci_low=[-0.5, 0.6], ci_high=[0.3, 0.9])) == NOT_HELD


def test_profile_interval_separates_shared_from_distinct_profiles():
    rng = np.random.default_rng(0)
    base = rng.normal(size=30)
    shared = pd.DataFrame([base, base * 2 + 0.01 * rng.normal(size=30), base + 0.01 * rng.normal(size=30)])
    lo, hi = claims.profile_interval(shared, n_boot=200)
    assert lo > 0.9 and rules.profile_verdict(lo, hi) == NOT_HELD
    distinct = pd.DataFrame(rng.normal(size=(3, 30)))
    lo, hi = claims.profile_interval(distinct, n_boot=200)
    assert lo < 0 < hi < 0.5 and rules.profile_verdict(lo, hi) == HELD


# ------------------------------------------------------------------ missing results

VALIDATION_PARAMS = {"model_name": "smollm2-135m", "gain_tasks": ["mrpc", "openbookqa:instruct"],
                     "loo": {"task": "sst2", "n_train": 4, "n_val": 2, "blocks": [-1], "seeds": [0, 1]},
                     "stability_models": ["smollm2-135m"], "stability_tasks": ["mrpc"]}


def _light_params():
    """Parameters that name only claims readable without a model (01, 06)."""
    return {"01_layer_scores": {"sizes": {"smollm2-135m": {}}, "tasks": ["mrpc", "pruning_pool"]},
            "03_lora_moe": {"plans": {}},
            "05_pruning": {"models": [], "methods": [], "sparsity": 0.5, "fig3_models": [],
                           "fig3_sparsities": [], "task_specific": {"models": [], "tasks": [],
                                                                    "method": "wanda"}},
            "06_ablation_hessian_free": {"models": ["smollm2-135m"], "tasks": ["mrpc"], "n_boot": 10},
            "07_ablation_smoothing": {"models": [], "methods": [], "sparsity": 0.7, "epsilons": [0.1]},
            "08_ablation_granularity": {"scores": {}, "methods": [], "sparsity": 0.7},
            "09_influence_validation": VALIDATION_PARAMS}


def test_missing_results_raise_one_error_naming_every_notebook(tmp_path):
    with pytest.raises(saved.MissingResult) as err:
        claims.claims_table(tmp_path, "smoke", params=_light_params())
    message = str(err.value)
    assert isinstance(err.value, FileNotFoundError) and "\n" not in message
    assert err.value.notebooks == ["01_layer_scores", "06_ablation_hessian_free",
                                   "09_influence_validation"]
    assert "smollm2-135m mrpc datainf scores" in message and "agreement table" in message
    assert ("`layerif run 01_layer_scores 06_ablation_hessian_free 09_influence_validation "
            "--profile smoke`") in message


def test_no_claims_needed_gives_an_empty_table(tmp_path, monkeypatch):
    monkeypatch.setattr(claims, "CLAIMS", [c for c in claims.CLAIMS if c[0] != claims.VALIDATION])
    params = _light_params()
    params["01_layer_scores"]["sizes"] = {}
    params["06_ablation_hessian_free"]["models"] = []
    table = claims.claims_table(tmp_path, "smoke", params=params)
    assert table.empty and list(table.columns) == claims.COLUMNS


def test_score_labels_follow_notebook_01():
    assert saved.score_labels(["mrpc", "openbookqa", "pruning_pool"]) == \
        ["mrpc", "openbookqa:instruct", "pruning_pool"]


# ------------------------------------------------------------------ notebook 09

def _verdict(part, verdict, model="", low=0.1, high=0.9) -> dict:
    return {"part": part, "claim": f"{part} claim", "model": model, "subject": "block -1",
            "statistic": "Spearman", "value": 0.5, "low": low, "high": high,
            "interval": "bootstrap CI", "criterion": "held: CI above 0", "verdict": verdict,
            "sentence": "Verdict: ..."}


def test_validation_rows_from_verdict_rows():
    verdicts = pd.DataFrame([_verdict("retraining", HELD), _verdict("gain", NOT_HELD, low=-1, high=-0.1),
                             _verdict("stability", INCONCLUSIVE, "gemma3-270m", np.nan, np.nan)],
                            columns=vv.COLUMNS)
    rows = pd.DataFrame(claims.validation_rows(verdicts, "smollm2-135m"), columns=claims.COLUMNS)
    assert list(rows["verdict"]) == [HELD, NOT_HELD, INCONCLUSIVE]
    assert list(rows["model"]) == ["smollm2-135m", "smollm2-135m", "gemma3-270m"]
    assert (rows["notebook"] == "09_influence_validation").all() and rows["p-value"].isna().all()
    assert list(rows["interval"]) == ["[+0.10, +0.90] (bootstrap CI)", "[-1.00, -0.10] (bootstrap CI)",
                                      "undefined (bootstrap CI)"]
    assert rows.loc[0, "ours"] == "+0.50 (block -1)" and rows.loc[0, "claim"] == "retraining claim"
    assert rows.loc[0, "test"] == "Spearman; held: CI above 0"
    assert rows.loc[1, "where"] == claims.VALIDATION_WHERE["gain"][0]
    for bad in (_verdict("pruning", HELD), _verdict("gain", "holds")):
        with pytest.raises(ValueError, match="verdicts="):
            claims.validation_rows(pd.DataFrame([bad]), "m")


def test_validation_claim_checks_the_store_before_reading(tmp_path):
    params = VALIDATION_PARAMS
    with pytest.raises(saved.MissingResult) as err:
        claims.validation_claim(tmp_path, params, "smoke")
    assert err.value.notebooks == ["09_influence_validation"]
    assert "smollm2-135m influence grid" in str(err.value)
    assert "leave-one-out block -1 seed 1" in str(err.value)
    assert "`layerif run 09_influence_validation --profile smoke`" in str(err.value)
    # notebook 09's own results present, notebook 01's scores absent: named, nothing computed
    folder = tmp_path / "validation" / "smollm2-135m"
    subs = ["grid", "loo/block-1-seed0", "loo/block-1-seed1", "gains/mrpc", "gains/openbookqa-instruct"]
    for sub in subs:
        (folder / sub).mkdir(parents=True)
        (folder / sub / "manifest.json").write_text("{}")
    with pytest.raises(saved.MissingResult) as err:
        claims.validation_claim(tmp_path, params, "smoke")
    assert err.value.notebooks == ["01_layer_scores"] and "mrpc datainf scores" in str(err.value)


# ------------------------------------------------------------------ reproduction table

SOURCE = """---
jupytext:
  text_representation:
    extension: .md
    format_name: myst
kernelspec:
  display_name: Python 3
  language: python
  name: python3
---

# {title}
"""


@pytest.fixture
def fake_study(tmp_path):
    """A study of two notebooks; the first executed (cpu) with a record of 90 s."""
    (tmp_path / "notebooks").mkdir()
    (tmp_path / "params" / "cpu").mkdir(parents=True)
    for name in ("a_first", "b_second"):
        (tmp_path / "notebooks" / f"{name}.md").write_text(SOURCE.format(title=name))
        (tmp_path / "params" / "cpu" / f"{name}.yaml").write_text("n_examples: 20\n")
    params = study.load_params("a_first", "cpu", tmp_path)
    inputs = rec.make_inputs((tmp_path / "notebooks" / "a_first.md").read_bytes(), "cpu", params, {})
    started = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)
    record = rec.make_record(inputs, started, 90.0, tmp_path, "notebooks/a_first.md")
    out = study.executed_dir("cpu", tmp_path)
    out.mkdir(parents=True)
    nb = rec.with_record(nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# a")]), record)
    rec.write_atomic(nb, out / "a_first.ipynb")
    return tmp_path


def test_reproduction_table_reads_the_run_records(fake_study):
    table = reproduction.reproduction_table("cpu", fake_study)
    assert list(table.index) == ["a_first", "b_second"] and list(table.columns) == reproduction.COLUMNS
    first, second = table.loc["a_first"], table.loc["b_second"]
    assert first["state"] == "current" and first["wall_min"] == 1.5
    assert first["started"].startswith("2026-01-02T03:04:05")
    assert first["params"] == '{"n_examples": 20}' and first["layerif_version"]
    assert "CPUs" in first["machine"] and first["message"] == ""
    assert second["state"] == "missing" and np.isnan(second["wall_min"])
    assert second["params"] == '{"n_examples": 20}' and "layerif run b_second" in second["message"]
    total = reproduction.total_wall_time(table)
    assert total["minutes"] == 1.5 and total["recorded"] == 1 and total["notebooks"] == 2


def test_reproduction_table_sees_a_stale_notebook(fake_study):
    (fake_study / "params" / "cpu" / "a_first.yaml").write_text("n_examples: 40\n")
    row = reproduction.reproduction_table("cpu", fake_study).loc["a_first"]
    assert row["state"] == "stale" and "params" in row["message"]
    assert row["params"] == '{"n_examples": 20}'   # what it ran with, not the file's new value
