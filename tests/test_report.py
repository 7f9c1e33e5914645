"""The book's computed prose (issue 25): notebook 10's summary, the reproduction totals, and the
sentences of notebooks 05, 07-09 that used to contradict their numbers or type them."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from layerif import study
from layerif.experiments import influence_validation, pruning_study, pruning_tables, report, reproduction
from layerif.experiments.verdict import HELD, NOT_HELD, RULED_OUT, UNDERPOWERED, UNTESTABLE


def _claims() -> pd.DataFrame:
    rows = [("a beats b", "m1", "+1.0 points", "McNemar; untestable if at chance", "[-1, 2]",
             UNDERPOWERED, "05"),
            ("a beats c", "m1", "+3.0 points", "McNemar", "[1, 4]", HELD, "05"),
            ("a beats d", "m2", "+0.1", "McNemar (chance-level rule); untestable: dense model at "
             "chance on this measure (accuracy 0.25)", "[-9, 9]", UNTESTABLE, "05"),
            ("moe beats e", "m1", "+0.2", "t; untestable: fine-tuning made the model worse than its "
             "base (-0.1)", "[-1, 0]", UNTESTABLE, "03"),
            ("moe beats f", "m2", "+0.1", "t", "", UNTESTABLE, "03"),
            ("r", "m1", "-0.2", "bootstrap", "[-0.5, -0.1]", NOT_HELD, "09"),
            ("s", "m1", "+0.1", "bootstrap", "[-0.1, 0.2]", RULED_OUT, "09")]
    return pd.DataFrame(rows, columns=["claim", "model", "ours", "test", "interval", "verdict", "notebook"])


def test_untestable_reasons_are_read_from_each_rows_own_text():
    table = _claims()
    found = [report.reason(r) for _, r in table[table["verdict"] == UNTESTABLE].iterrows()]
    assert found == [report.AT_CHANCE, report.RECIPE_FAILED, report.NO_INTERVAL]


def test_the_summary_counts_every_verdict_once():
    lines = report._verdict_lines(_claims())
    # hand count of _claims(): 7 rows, 3 notebooks, 1 held, 1 not held, 1 ruled out, 1 underpowered, 3 untestable
    assert lines[0] == ("**7 claim rows** from 3 notebooks: 1 held, 1 not held, 1 ruled out at this "
                        "scale, 1 underpowered, 3 untestable here.")
    assert lines[1].startswith("**Testable here: 4.** Held: a beats c (m1). Not held: r (m1).")
    assert "**Not testable here: 3**" in lines[2] and f"{report.AT_CHANCE} (1)" in lines[2]


def test_notebook_09s_retrainings_come_from_its_config():
    params = study.load_params("09_influence_validation", "cpu")
    loo = params["loo"]   # the book's: 3 seeds x 1 block x (12 examples + the full set) = 39
    assert influence_validation.retrainings(params) == len(loo["seeds"]) * len(loo["blocks"]) * (loo["n_train"] + 1)
    assert influence_validation.retrainings({"loo": {"seeds": [0, 1, 2], "blocks": [-1], "n_train": 12}}) == 39


def test_perplexity_is_shown_to_what_it_carries():
    assert pruning_tables.perplexity_text(23.456) == "23.5"
    assert pruning_tables.perplexity_text(1.0e11) == "diverged (> 1e+04)"
    assert pruning_tables.perplexity_text(float("nan")) == "—"
    table = pd.DataFrame({"perplexity": [70.04, 3.2e9], "% change perplexity": [1.0, 2.0]})
    shown = pruning_tables.readable_perplexity(table)
    assert list(shown["perplexity"]) == ["70", "diverged (> 1e+04)"]
    assert list(shown["% change perplexity"]) == [1.0, 2.0]   # a change is not a perplexity


def test_the_not_reproduced_line_agrees_with_the_counts_beside_it():
    # one pair significantly worse (McNemar p < 0.05, LayerIF lower): the old line said "no
    # comparison significant" right after "significantly worse in 1"
    frame = pd.DataFrame({"McNemar p": [0.01, 0.5], "acc difference": [-0.1, 0.02],
                          "margin CI low": [-1.0, -0.5], "margin CI high": [-0.2, 0.5],
                          "perplexity ratio": [1.1, 0.9]})
    lines = pruning_study._paired_lines("m", frame, [], 0.5, 0.05)
    assert "significantly worse in 1" in lines[0]
    assert lines[1].endswith("and 1 on accuracy and 1 on margin are significantly against it.")
    assert "no comparison is significantly in its favour" in lines[1]


def test_cold_cost_sums_each_result_the_notebooks_read_once(tmp_path):
    base = tmp_path / "results" / "cpu"
    for rel in ("pruning/0", "pruning/1", "scores/0", "pruning/old"):  # old: read by no notebook
        (base / rel).mkdir(parents=True)
        (base / rel / "manifest.json").write_text("{}")
    used = {"results/cpu/pruning/0": {"seconds": 90.0, "computed": False},
            "results/cpu/pruning/1": {"seconds": 30.0, "computed": True},
            "results/cpu/scores/0": {"seconds": None, "computed": False}}
    cold = reproduction.cold_cost("cpu", tmp_path, used=used)
    assert cold.loc["pruning"].tolist() == [2, 2, 2.0] and cold.loc["scores"].tolist() == [1, 0, 0.0]
    assert cold.attrs["unread"] == 1
    table = pd.DataFrame({"wall_min": [1.5, np.nan], "machine": ["x", None]})
    text = reproduction.totals(table, cold).data
    assert "1.5 min over the 1 of 2 notebooks" in text and "Cold cost: 2.0 min" in text
    assert "the 3 stored results the notebooks read" in text and "scores (1 of 1)" in text
    assert "no notebook read (earlier parameters): 1." in text


def test_used_results_is_the_union_of_the_records(monkeypatch):
    records = {"a.ipynb": {"results": {"r/1": {"seconds": 5.0, "computed": True}}},
               "b.ipynb": {"results": {"r/1": {"seconds": 5.0, "computed": False},
                                       "r/2": {"seconds": None, "computed": False}}},
               "c.ipynb": None}
    status = pd.DataFrame({"path": list(records)}, index=["a", "b", "c"])
    monkeypatch.setattr(reproduction.study, "status", lambda profile, root: status)
    monkeypatch.setattr(reproduction.notebook_record, "read_record", records.get)
    assert reproduction.used_results("cpu") == {"r/1": {"seconds": 5.0, "computed": True},
                                                "r/2": {"seconds": None, "computed": False}}
    # the notebook showing the table: its record on disk is a previous execution's, left out
    assert reproduction.used_results("cpu", running="a") == {"r/1": {"seconds": 5.0, "computed": False},
                                                             "r/2": {"seconds": None, "computed": False}}
    assert reproduction.used_results("cpu", running="b") == {"r/1": {"seconds": 5.0, "computed": True}}


def test_the_running_notebook_is_not_read_from_its_own_previous_record():
    table = reproduction.reproduction_table("cpu", running="10_summary")
    row = table.loc["10_summary"]
    assert row["state"] == reproduction.RUNNING and np.isnan(row["wall_min"])
    assert list(reproduction.shown(table).columns) == reproduction.SHOWN
    assert "params" not in reproduction.SHOWN


@pytest.mark.parametrize("markdown", ["- **a** 1\n- b"])
def test_the_summary_is_glued_as_html(markdown):
    from IPython.display import Markdown

    html = report.as_html(Markdown(markdown)).data
    assert "<li><strong>a</strong> 1</li>" in html and "<li>b</li>" in html
