"""Claims (notebook 10): the verdict rules, the missing-result error, the reproduction table."""
import datetime as dt

import nbformat
import numpy as np
import pandas as pd
import pytest

from layerif import notebook_record as rec
from layerif import study
from layerif.experiments import claims, reproduction, saved

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
    verdict, p = claims.sign_verdict([1, 2, 3, 4, 5, 6, 7])
    assert verdict == HELD and p == pytest.approx(0.5 ** 7)
    verdict, p = claims.sign_verdict([-1, -2, -3, -4, -5, -6, -7])
    assert verdict == NOT_HELD and p == pytest.approx(0.5 ** 7)
    verdict, p = claims.sign_verdict([1, -1, 2, -2, 3])
    assert verdict == INCONCLUSIVE and 0.05 < p <= 1
    # zeros count for neither direction: 3 up of 6 is not a majority
    assert claims.sign_verdict([1, 1, 1, 0, 0, 0])[0] == INCONCLUSIVE
    with pytest.raises(ValueError, match="changes"):
        claims.sign_verdict([1.0])


def test_profile_and_agreement_verdicts_use_their_thresholds():
    assert claims.profile_verdict(0.1, 0.45) == HELD
    assert claims.profile_verdict(0.85, 0.95) == NOT_HELD
    assert claims.profile_verdict(0.3, 0.7) == INCONCLUSIVE
    t = pd.DataFrame({"ci_low": [-0.5, -0.2], "ci_high": [0.3, 0.4]})
    assert claims.agreement_verdict(t) == HELD
    assert claims.agreement_verdict(t.assign(ci_high=[0.3, 0.9])) == INCONCLUSIVE
    assert claims.agreement_verdict(t.assign(ci_low=[-0.5, 0.6], ci_high=[0.3, 0.9])) == NOT_HELD


def test_profile_interval_separates_shared_from_distinct_profiles():
    rng = np.random.default_rng(0)
    base = rng.normal(size=30)
    shared = pd.DataFrame([base, base * 2 + 0.01 * rng.normal(size=30), base + 0.01 * rng.normal(size=30)])
    lo, hi = claims.profile_interval(shared, n_boot=200)
    assert lo > 0.9 and claims.profile_verdict(lo, hi) == NOT_HELD
    distinct = pd.DataFrame(rng.normal(size=(3, 30)))
    lo, hi = claims.profile_interval(distinct, n_boot=200)
    assert lo < 0 < hi < 0.5 and claims.profile_verdict(lo, hi) == HELD


# ------------------------------------------------------------------ missing results

def _light_params():
    """Parameters that name only claims readable without a model (01, 06)."""
    return {"01_layer_scores": {"sizes": {"smollm2-135m": {}}, "tasks": ["mrpc", "pruning_pool"]},
            "03_lora_moe": {"plans": {}},
            "05_pruning": {"models": [], "methods": [], "sparsity": 0.5, "fig3_models": [],
                           "fig3_sparsities": [], "task_specific": {"models": [], "tasks": [],
                                                                    "method": "wanda"}},
            "06_ablation_hessian_free": {"models": ["smollm2-135m"], "tasks": ["mrpc"], "n_boot": 10},
            "07_ablation_smoothing": {"models": [], "methods": [], "sparsity": 0.7, "epsilons": [0.1]},
            "08_ablation_granularity": {"scores": {}, "methods": [], "sparsity": 0.7}}


def test_missing_results_raise_one_error_naming_every_notebook(tmp_path):
    with pytest.raises(saved.MissingResult) as err:
        claims.claims_table(tmp_path, "smoke", params=_light_params())
    message = str(err.value)
    assert isinstance(err.value, FileNotFoundError) and "\n" not in message
    assert err.value.notebooks == ["01_layer_scores", "06_ablation_hessian_free"]
    assert "smollm2-135m mrpc datainf scores" in message and "agreement table" in message
    assert "`layerif run 01_layer_scores 06_ablation_hessian_free --profile smoke`" in message


def test_no_claims_needed_gives_an_empty_table(tmp_path):
    params = _light_params()
    params["01_layer_scores"]["sizes"] = {}
    params["06_ablation_hessian_free"]["models"] = []
    table = claims.claims_table(tmp_path, "smoke", params=params)
    assert table.empty and list(table.columns) == claims.COLUMNS


def test_score_labels_follow_notebook_01():
    assert saved.score_labels(["mrpc", "openbookqa", "pruning_pool"]) == \
        ["mrpc", "openbookqa:instruct", "pruning_pool"]


def test_pending_rows_name_their_notebook():
    pending = claims.pending_table()
    assert list(pending["notebook"]) == list(claims.PENDING)
    assert (pending["verdict"] == "missing").all()


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
