"""Notebook 07: Savitzky-Golay smoothing of LayerIF's scores, smoothed against raw (Table 6).

:func:`run` prunes and evaluates (or loads) LayerIF with and without smoothing at every
(epsilon, pruner) of the parameters, for every model; :func:`summary` says what the numbers
say and :func:`verdicts` decides Table 6's claim by the sign test of its cells.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .. import paper, plots, store
from . import pruning, pruning_tables as tables
from .pruning import DENSE, Setting
from .prose import bullets
from . import pruning_verdicts as pv
from .verdict import Verdict, direction

__all__ = ["NOTEBOOK", "SmoothingStudy", "accuracy_table", "change_table", "conclusion", "figures",
           "paper_table", "run", "settings", "summary", "verdicts", "window_table"]

NOTEBOOK = "07_ablation_smoothing"


@dataclass(frozen=True)
class SmoothingStudy:
    """What notebook 07 shows; every dict is keyed by model name. ``change``:
    :func:`~.pruning_tables.smoothing_table`; ``acc``: :func:`~.pruning_tables.accuracy_table`;
    ``windows``: every smoothed and raw setting on the ``nll`` windows
    (:func:`.pruning.window_evaluations`)."""

    params: dict
    sizes: str
    evals: dict
    log: pd.DataFrame
    change: dict
    acc: dict
    windows: dict


def settings(params: dict) -> list[Setting]:
    """The dense model and LayerIF smoothed and raw at every (epsilon, pruner)."""
    return [Setting(DENSE)] + [Setting(m, "LayerIF", params["sparsity"], epsilon=e, smooth=s)
                               for e in params["epsilons"] for m in params["methods"]
                               for s in (True, False)]


def run(params: dict, profile: str = "smoke", results=None) -> SmoothingStudy:
    """Notebook 07's work for its parameters (``results``: the profile's folder by default)."""
    results = Path(results or store.results_dir(profile))
    runs, evals = pruning.evaluate_models(results, params, params["models"], lambda _: settings(params))
    return SmoothingStudy(
        params, pruning.sizes(params), evals, pruning.log(runs),
        {m: tables.smoothing_table(e, params["sparsity"], params["epsilons"], params["methods"])
         for m, e in evals.items()},
        {m: tables.accuracy_table(e) for m, e in evals.items()},
        {m: pruning.window_evaluations(results, m, params, settings(params)[1:], e) for m, e in evals.items()})


def _pairs(params: dict) -> dict[tuple[float, str], tuple[Setting, Setting]]:
    """(epsilon, pruner) -> (smoothed setting, raw setting), every cell of Table 6."""
    sp = params["sparsity"]
    return {(e, m): tuple(Setting(m, "LayerIF", sp, epsilon=e, smooth=s) for s in (True, False))
            for e in params["epsilons"] for m in params["methods"]}


def window_table(result: SmoothingStudy, level: float = 0.05) -> pd.DataFrame:
    """Per (epsilon, pruner): smoothed minus raw in NLL per token (nats; negative: smoothing
    lets the model predict the held-out text better), paired over the ``nll`` windows:
    difference, its ``1 - level`` interval, p and the windows (:func:`layerif.stats.paired_nll`)."""
    return tables.window_pairs_table(result.windows, _pairs(result.params), ["epsilon", "method"], level)


def paper_table(result: SmoothingStudy) -> pd.DataFrame:
    """Table 6: % change of the average accuracy (epsilon by pruner), beside the paper's."""
    parts = {}
    for model, c in result.change.items():
        ours = c["% change accuracy"].unstack("method")
        ours.index = [f"ϵ={e:g}" for e in ours.index]
        parts[model] = paper.compare(ours, "table6", note=f"{model} for Mistral-7B").round(2)
    return tables.by_model(parts)


def change_table(result: SmoothingStudy) -> pd.DataFrame:
    """Per (epsilon, pruner): % change of accuracy, the perplexity ratio smoothed / raw (three
    significant digits), McNemar's p, margin difference."""
    out = tables.by_model(result.change)
    ratio = (1 + out.pop("% change perplexity") / 100).map(lambda r: f"{r:.3g}")
    return out.round(3).assign(**{"perplexity smoothed / raw": ratio})


def figures(result: SmoothingStudy) -> list:
    """Per model: % change of the mean accuracy, then the log2 perplexity ratio, smoothed vs raw
    (log scale: one diverged cell does not hide the others)."""
    out, sp = [], result.params["sparsity"]
    for model, c in result.change.items():
        log_ratio = np.log2(1 + c["% change perplexity"] / 100).unstack("method")
        out += [plots.grouped_bars(c["% change accuracy"].unstack("method"), reference=(0, "no change"),
                                   ylabel="% change", xlabel="epsilon",
                                   title=f"{model}: mean accuracy, smoothed vs raw ({sp:.0%})"),
                plots.grouped_bars(log_ratio, reference=(0, "no change"), ylabel="log2(smoothed / raw)",
                                   xlabel="epsilon", title=f"{model}: perplexity, smoothed / raw (log2)")]
    return out


def accuracy_table(result: SmoothingStudy) -> pd.DataFrame:
    """Every model's average accuracy, margin and perplexity (the dense model for scale)."""
    out = tables.by_model(result.acc)[[tables.AVERAGE, "margin", "perplexity"]].round(3)
    return tables.readable_perplexity(out)


def _paper_cells() -> np.ndarray:
    printed = paper.table("table6").to_numpy().ravel()
    return printed[np.isfinite(printed)]


def _lines(change: pd.DataFrame, acc: pd.DataFrame, level: float) -> list[str]:
    n = len(change)
    up = int((change["% change accuracy"] > 0).sum())
    better_ppl = int((change["% change perplexity"] < 0).sum())
    sig = int((change["McNemar p"] < level).sum())
    printed = _paper_cells()
    pruned, dense = acc.drop(index=DENSE, level="method"), acc.xs(DENSE, level="method")
    return [f"Smoothing raised the average accuracy in {up} of {n} (epsilon, pruner) cells and "
            f"lowered the perplexity in {better_ppl}; {sig} accuracy differences are significant "
            f"(McNemar, {level}).",
            f"The paper reports {int((printed > 0).sum())} of {printed.size} cells positive "
            f"(Mistral-7B, full test sets). Here, on accuracy smoothing {direction(up, n)}"
            + (" (not reproduced at this scale)" if up < 0.75 * n else "")
            + f"; on perplexity, the more sensitive measure at this scale, it {direction(better_ppl, n)}.",
            f"For scale: the dense model averages {100 * dense[tables.AVERAGE].iloc[0]:.1f}% at perplexity "
            f"{dense['perplexity'].iloc[0]:.1f}; the pruned ones {100 * pruned[tables.AVERAGE].min():.1f}-"
            f"{100 * pruned[tables.AVERAGE].max():.1f}% at perplexity "
            f"{tables.perplexity_text(pruned['perplexity'].min())} to "
            f"{tables.perplexity_text(pruned['perplexity'].max())}."]


def summary(result: SmoothingStudy, level: float = 0.05) -> str:
    """What the numbers say, one bullet per finding and model."""
    return "\n".join(f"• {line}" for line in _summary_lines(result, level))


def _summary_lines(result: SmoothingStudy, level: float) -> list[str]:
    windows = window_table(result, level)
    return [f"{model}: {line}" for model, c in result.change.items()
            for line in _lines(c, result.acc[model], level)
            + [tables.window_line(windows.loc[model], "smoothed", "raw", "(epsilon, pruner) cells")]]


def conclusion(result: SmoothingStudy, level: float = 0.05):
    """What the numbers say, as rendered Markdown bullets."""
    return bullets(_summary_lines(result, level))


def verdicts(result: SmoothingStudy, level: float = 0.05) -> list[Verdict]:
    """Table 6: smoothing raises accuracy, smoothed against raw LayerIF with every (epsilon,
    pruner) cell's examples pooled, by the one rule of :mod:`.pruning_verdicts`. The paper's
    claim is a sign ("an overall increase"); d is its cells' mean relative change applied to
    our raw models' pooled accuracy, in points."""
    printed, rows, sp = _paper_cells(), [], result.params["sparsity"]
    for model, c in result.change.items():
        evals, keys = result.evals[model], list(c.index)
        smooth, raw = (pv.pooled([evals[Setting(m, "LayerIF", sp, epsilon=e, smooth=s)] for e, m in keys], keys)
                       for s in (True, False))
        raw_acc = float(raw.examples["correct"].mean())
        d = float(printed.mean()) * raw_acc
        found = pv.comparison(smooth, raw, d, level, evals.get(Setting(DENSE)))
        change = c["% change accuracy"]
        rows.append(pv.row(
            found, claim="smoothing the scores raises accuracy", model=model, where="Table 6",
            paper_value=f"{int((printed > 0).sum())} of {printed.size} cells positive "
                        f"(mean {printed.mean():+.2f}%)",
            ours=f"{100 * found['test'].estimate:+.1f} accuracy points over {found['test'].n} paired "
                 f"examples; {int((change > 0).sum())} of {len(change)} cells positive "
                 f"(mean {change.mean():+.2f}%)",
            notebook=NOTEBOOK,
            note=f"d: the paper's mean relative change ({printed.mean():+.2f}%) at our raw accuracy "
                 f"({100 * raw_acc:.1f}%), a sign claim in the paper"))
    return rows + _nll_rows(result, level)


def _nll_rows(result: SmoothingStudy, level: float) -> list[Verdict]:
    """Table 6 on the sensitive measure (:mod:`.pruning_verdicts`): smoothed against raw on the
    per-window NLL, every (epsilon, pruner) cell averaged per window; d carries the cells' mean
    relative change over as the same relative drop in perplexity, ln(1 - r) nats per token."""
    printed, rows = _paper_cells(), []
    d = math.log(1 - float(printed.mean()) / 100)
    for model, w in result.windows.items():
        smooth, raw = zip(*_pairs(result.params).values())
        rows.append(pv.window_verdict(
            w, smooth, raw, d, level,
            claim=f"smoothing the scores lowers held-out NLL ({result.params['sparsity']:.0%})",
            model=model, where="Table 6 (sensitive measure)",
            paper_value=f"{int((printed > 0).sum())} of {printed.size} cells positive (mean {printed.mean():+.2f}%)",
            notebook=NOTEBOOK, what=f"{len(smooth)} (epsilon, pruner) cells averaged per window",
            contrast="smoothed - raw",
            note=f"d: the cells' mean {printed.mean():+.2f}% as the same relative drop in perplexity, "
                 f"ln(1 - r) = {d:+.4f}"))
    return rows
