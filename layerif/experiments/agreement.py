"""Table 3: do Hessian-free (TracIn-style) and DataInf scores give the same expert allocation?

Per task, both methods' influence matrices come from the same gradient passes on the same
examples (notebook 01). The statistic is the Spearman correlation across blocks between the
two expert allocations (the paper's Table 3); its confidence interval resamples the *training
examples* (the same resample for both methods), recomputing scores and allocations each time.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from scipy.stats import spearmanr

from .. import allocate, paper, plots, stats, store
from ..scores import LayerScores, aggregate_values
from .scoring import fingerprint, load_scores
from .prose import bullets
from .verdict import Verdict, agreement_verdict, covering

__all__ = ["NOTEBOOK", "STAND_INS", "Agreement", "agreement_table", "allocation_agreement",
           "comparison", "conclusion", "figures", "run", "study_agreement", "summary", "table", "verdicts"]

NOTEBOOK = "06_ablation_hessian_free"
STAND_INS = {"sst2": "Cola", "sciq": "Text Science Q"}   # ours -> the paper's task


def _experts(block_values: np.ndarray, columns, index, total: int, beta: float, mode: str):
    s = aggregate_values(torch.from_numpy(block_values[:, columns]), mode).numpy()
    return allocate.experts(pd.Series(s, index=index), total, beta).to_numpy()


def _rho(a: np.ndarray, b: np.ndarray) -> float:
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")  # a constant allocation has no rank order
    return float(spearmanr(a, b).statistic)


def allocation_agreement(datainf: LayerScores, hessian_free: LayerScores, per_block: float = 5.0,
                         beta: float = 2.5, aggregation: str = "positive", n_boot: int = 1000,
                         level: float = 0.95, seed: int = 0) -> dict:
    """Spearman between the two methods' expert allocations, with a bootstrap CI.

    Both results must cover the same training examples in the same order.

    Returns:
        A dict: ``spearman`` (allocations), ``ci_low``, ``ci_high``, ``n_boot_used`` (a
        replicate where an allocation is constant is dropped), ``spearman_scores`` (the raw
        block scores), ``n_train``, ``total``.
    """
    if datainf.train_ids != hessian_free.train_ids:
        raise ValueError("datainf and hessian_free scores cover different training examples")
    a, b = datainf.per_block(), hessian_free.per_block()
    total = int(round(per_block * len(a)))
    va, vb = a.to_numpy(), b.to_numpy()
    everything = np.arange(va.shape[1])
    ea = _experts(va, everything, a.index, total, beta, aggregation)
    eb = _experts(vb, everything, b.index, total, beta, aggregation)
    reps = np.array([_rho(_experts(va, idx, a.index, total, beta, aggregation),
                          _experts(vb, idx, b.index, total, beta, aggregation))
                     for idx in stats.bootstrap_indices(va.shape[1], n_boot, seed)])
    reps = reps[np.isfinite(reps)]
    lo, hi = stats.percentile_ci(reps, level) if len(reps) >= 10 else (np.nan, np.nan)
    return {"spearman": _rho(ea, eb), "ci_low": lo, "ci_high": hi, "n_boot_used": len(reps),
            "spearman_scores": _rho(datainf.aggregate(aggregation).to_numpy(),
                                    hessian_free.aggregate(aggregation).to_numpy()),
            "n_train": va.shape[1], "total": total}


def agreement_table(pairs: dict, **kwargs) -> pd.DataFrame:
    """:func:`allocation_agreement` for each ``task -> (datainf, hessian_free)``; index task."""
    rows = {task: allocation_agreement(di, hf, **kwargs) for task, (di, hf) in pairs.items()}
    frame = pd.DataFrame(rows).T.astype(float)
    frame.index.name = "task"
    frame[["n_boot_used", "n_train", "total"]] = frame[["n_boot_used", "n_train", "total"]].astype(int)
    return frame


def study_agreement(results, model_name: str, labels, per_block: float = 5.0, beta: float = 2.5,
                    n_boot: int = 1000, overwrite: bool = False) -> pd.DataFrame:
    """Notebook 06: :func:`agreement_table` from notebook 01's saved scores, saved itself."""
    config = {"per_block": float(per_block), "beta": float(beta), "n_boot": int(n_boot),
              "aggregation": "positive", "seed": 0}
    ident = store.identity("hessian_free_agreement", config, model_name,
                           {"scores": fingerprint(results, model_name, labels,
                                                  ("datainf", "hessian_free"))})

    def compute():
        pairs = {label: (load_scores(results, model_name, label, "datainf"),
                         load_scores(results, model_name, label, "hessian_free"))
                 for label in labels}
        return agreement_table(pairs, per_block=per_block, beta=beta, n_boot=n_boot)

    return store.cached(Path(results) / "agreement" / store.slug(model_name), ident, compute,
                        overwrite=overwrite)


# ------------------------------------------------------------------ notebook 06

@dataclass(frozen=True)
class Agreement:
    """What notebook 06 shows: per model, :func:`agreement_table` (index task)."""

    tables: dict


def run(params: dict, profile: str = "smoke", results=None) -> Agreement:
    """Notebook 06: the agreement table of every model of ``params`` from notebook 01's scores."""
    results = Path(results or store.results_dir(profile))
    return Agreement({m: study_agreement(results, m, params["tasks"], params.get("per_block", 5.0),
                                         params.get("beta", 2.5), params["n_boot"])
                      for m in params["models"]})


def table(result: Agreement) -> pd.DataFrame:
    """Every model's agreement table, index (model, task)."""
    return pd.concat(result.tables, names=["model"])


def comparison(result: Agreement) -> pd.DataFrame:
    """Table 3 beside ours (:func:`layerif.paper.compare`; our stand-ins in :data:`STAND_INS`)."""
    return pd.concat({m: paper.compare(
        t[["spearman"]].rename(columns={"spearman": "Correlation"},
                               index=lambda task: task.split(":")[0]), "table3",
        rows={k: v for k, v in STAND_INS.items() if k in t.index},
        note=f"{m}; 95% CI over training examples in the table above")
        for m, t in result.tables.items()}, names=["model"])


def figures(result: Agreement) -> list:
    """Per model: the allocations' Spearman per task with its bootstrap interval."""
    def named(frame):  # the paper's task names, our stand-ins in brackets, as in the table
        return frame.rename(index=lambda t: t.split(":")[0]).rename(
            index=lambda t: f"{STAND_INS[t]} ({t})" if t in STAND_INS else t)

    return [plots.grouped_bars(named(pd.DataFrame({"ours": t["spearman"]})), reference=0.0,
                               errors=(named(pd.DataFrame({"ours": t["ci_low"]})),
                                       named(pd.DataFrame({"ours": t["ci_high"]}))),
                               title=f"{m}: Spearman(Hessian-free, DataInf) allocations",
                               ylabel="Spearman across blocks")
            for m, t in result.tables.items()]


def summary(result: Agreement) -> str:
    """What the numbers say: per model, the allocations' Spearman, how many intervals cover 0
    (:func:`.verdict.covering`), the raw scores' Spearman, and the paper's range."""
    reported = paper.table("table3")["Correlation"]
    return "\n".join(
        f"{m}: Spearman of the allocations {t['spearman'].min():.2f} to "
        f"{t['spearman'].max():.2f} (mean {t['spearman'].mean():.2f}) over {len(t)} tasks; "
        f"the 95% CI covers 0 for {covering(t['ci_low'], t['ci_high'])} of them; raw block "
        f"scores: mean Spearman {t['spearman_scores'].mean():.2f}. Paper: {reported.min():.2f} "
        f"to {reported.max():.2f} (mean {reported.mean():.2f})." for m, t in result.tables.items())


def conclusion(result: Agreement):
    """:func:`summary` as rendered Markdown."""
    return bullets(summary(result))


def verdicts(result: Agreement, level: float = 0.05) -> list[Verdict]:
    """Table 3: Hessian-free and DataInf allocations show little to no agreement, per model,
    by :func:`.verdict.agreement_verdict` (the saved intervals are 95%: ``level`` is accepted
    for a uniform signature, unused)."""
    printed = paper.table("table3")["Correlation"]
    return [Verdict(
        "Hessian-free and DataInf expert allocations disagree", m, "Table 3",
        f"Spearman {printed.min():.2f} to {printed.max():.2f} (mean {printed.mean():.2f})",
        f"Spearman {t['spearman'].min():.2f} to {t['spearman'].max():.2f} "
        f"(mean {t['spearman'].mean():.2f}) over {len(t)} tasks",
        "per task bootstrap over training examples: all below 0.5 = disagree, any above = agree, "
        "else underpowered",
        np.nan, f"lowest {t['ci_low'].min():+.2f}, highest {t['ci_high'].max():+.2f}",
        agreement_verdict(t), NOTEBOOK, float(t["spearman"].mean()))
        for m, t in result.tables.items()]
