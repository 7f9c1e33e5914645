"""The notebooks whose verdicts notebook 10 collects, and the loop that collects them.

Each listed notebook's module has ``run(params, profile, results) -> result`` (the notebook's
whole work) and ``verdicts(result, level) -> list[Verdict]`` (its claim rows). Notebook 10
calls the same ``run`` with that notebook's parameters for the profile under
:class:`layerif.store.read_only` -- every result is read back, nothing is computed -- and
shows the rows in one table (:func:`claims_table`). Notebooks that decide no claim (00, 02,
04) are not listed. Adding a notebook: one line in :data:`NOTEBOOKS`.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from .. import store, study
from . import agreement, granularity, influence_validation, moe, pruning_study, scoring, smoothing
from .verdict import tally, verdict_table

__all__ = ["NOTEBOOKS", "claims_table", "styled", "tally"]

#: (notebook name, its module), in the order of the claims table.
NOTEBOOKS = [
    ("01_layer_scores", scoring),
    ("03_lora_moe", moe),
    ("05_pruning", pruning_study),
    ("06_ablation_hessian_free", agreement),
    ("07_ablation_smoothing", smoothing),
    ("08_ablation_granularity", granularity),
    ("09_influence_validation", influence_validation),
]


def claims_table(profile: str = "cpu", level: float = 0.05, results: str | Path | None = None,
                 root: str | Path | None = None) -> pd.DataFrame:
    """Every listed notebook's verdict rows for ``profile`` (:func:`.verdict.verdict_table`),
    from its saved results only, each decided at ``level``.

    Raises:
        layerif.store.MissingResult: naming every notebook whose results are absent (or saved
            under other parameters) and the command that produces them.
    """
    rows, missing = [], []
    for name, module in NOTEBOOKS:
        try:
            with store.read_only(name, f"layerif run {name} --profile {profile}"):
                result = module.run(study.load_params(name, profile, root), profile, results)
        except store.MissingResult as err:
            missing.append(err)
            continue
        except FileNotFoundError as err:   # a reader outside the store: name the notebook run
            missing.append(store.MissingResult(name, [str(err)]))
            continue
        rows += module.verdicts(result, level)
    if missing:
        names = list(dict.fromkeys(n for err in missing for n in err.notebooks))
        raise store.MissingResult(names, [w for err in missing for w in err.what],
                                  f"layerif run {' '.join(names)} --profile {profile}")
    return verdict_table(rows)


def styled(table: pd.DataFrame):
    """The claims table as notebook 10 shows it (p-values to 3 digits, a dash for none)."""
    return table.style.hide(axis="index").format({"p-value": "{:.3g}"}, na_rep="—")
