"""The study's one-screen summary: notebook 10's opening, glued onto the landing page.

Built from the claims table (:func:`.notebooks.claims_table`, one row per claim and model) and
notebook 09's result (:func:`.influence_validation.run`): the verdict tally, what could be
tested, what could not and why (model at chance, the fine-tuning recipe failed, too few
examples), and notebook 09's findings about the scores themselves. Every number is read from
those two objects; nothing here computes a result.
"""
from __future__ import annotations

import pandas as pd

from .. import store, study
from . import influence_validation
from .prose import bullets
from .verdict import HELD, NOT_HELD, RULED_OUT, UNDERPOWERED, UNTESTABLE, VERDICTS

__all__ = ["AT_CHANCE", "RECIPE_FAILED", "as_html", "findings", "reason", "summary", "validation_result"]

AT_CHANCE = "the models are at chance on the measure"
RECIPE_FAILED = "the fine-tuning recipe made the model worse than its base"
NO_INTERVAL = "no interval could be computed"
VALIDATION = "09_influence_validation"


def reason(row: pd.DataFrame | pd.Series) -> str:
    """Why a claims-table row is ``untestable here``: read from the ``untestable:`` part of its
    ``test`` text (the rule's own words), else from the row's text."""
    test = str(row.get("test", ""))
    text = (test.split("untestable:", 1)[1] if "untestable:" in test else
            " ".join(str(row.get(c, "")) for c in ("ours", "test", "interval"))).lower()
    found = [why for why, keys in ((AT_CHANCE, ("chance",)), (RECIPE_FAILED, ("worse than its base",)))
             if any(k in text for k in keys)]
    return " and ".join(found) if found else NO_INTERVAL


def _rows(table: pd.DataFrame, verdict: str) -> pd.DataFrame:
    return table[table["verdict"] == verdict]


def _named(rows: pd.DataFrame, limit: int = 4) -> str:
    names = list(dict.fromkeys(f"{c} ({m})" for c, m in zip(rows["claim"], rows["model"])))
    more = f", and {len(names) - limit} more" if len(names) > limit else ""
    return "; ".join(names[:limit]) + more


def _verdict_lines(table: pd.DataFrame) -> list[str]:
    counts = table["verdict"].value_counts().reindex(list(VERDICTS), fill_value=0)
    tested = len(table) - int(counts[UNTESTABLE])
    lines = [f"**{len(table)} claim rows** from {table['notebook'].nunique()} notebooks: "
             + ", ".join(f"{int(counts[v])} {v}" for v in VERDICTS) + ".",
             f"**Testable here: {tested}.** Held: {_named(_rows(table, HELD)) or 'none'}. "
             f"Not held: {_named(_rows(table, NOT_HELD)) or 'none'}."]
    untestable = _rows(table, UNTESTABLE)
    if len(untestable):
        why = untestable.apply(reason, axis=1).value_counts()
        lines.append(f"**Not testable here: {len(untestable)}**, because "
                     + "; ".join(f"{why_} ({n})" for why_, n in why.items()) + ".")
    under, ruled = _rows(table, UNDERPOWERED), _rows(table, RULED_OUT)
    if len(under):
        lines.append(f"**Underpowered: {len(under)}** (the interval holds both no effect and the "
                     f"paper's; each row gives the n that would decide it): {_named(under)}.")
    if len(ruled):
        lines.append(f"**Ruled out at this scale: {len(ruled)}** (any effect here is smaller than "
                     f"the paper's): {_named(ruled)}.")
    return lines


def findings(result: influence_validation.Result) -> list[str]:
    """Notebook 09's two findings about the scores: DataInf's block scores against the exact
    inverse, and |S_l| against the gain of training a block alone (DataInf, "+ve")."""
    at = result.agreement.xs(result.damping, level="damping")
    gain = result.gain_summary.xs(("datainf", "positive"), level=("method", "aggregation"))
    per_task = ", ".join(f"{task} {r['spearman']:+.2f} [{r['ci_low']:+.2f}, {r['ci_high']:+.2f}]"
                         for task, r in gain.iterrows())
    return [f"**Are the block scores what DataInf claims to approximate?** DataInf's '+ve' block "
            f"scores rank the blocks like the exact inverse at Spearman "
            f"{at.at['datainf', 'scores_positive']:.2f} (Hessian-free: "
            f"{at.at['hessian_free', 'scores_positive']:.2f}; damping {result.damping:g}).",
            f"**Does |S_l| say which block gains from training?** Spearman between DataInf's "
            f"|S_l| and the validation-loss gain of fine-tuning that block alone, with its "
            f"interval: {per_task} (the paper's reading predicts a positive value)."]


def summary(table: pd.DataFrame, result: influence_validation.Result):
    """The one-screen summary as rendered Markdown (:func:`.prose.bullets`)."""
    return bullets(_verdict_lines(table) + findings(result))


def as_html(markdown) -> "object":
    """A Markdown display object as an HTML one (``text/html``): what myst-nb's glue can paste
    into another page (cross-document glue renders HTML, not Markdown)."""
    from IPython.display import HTML
    from markdown_it import MarkdownIt

    return HTML(MarkdownIt("commonmark").render(markdown.data))


def validation_result(profile: str = "cpu", results=None, root=None) -> influence_validation.Result:
    """Notebook 09's result for ``profile``, read back from the store (never computed)."""
    with store.read_only(VALIDATION, f"layerif run {VALIDATION} --profile {profile}"):
        return influence_validation.run(study.load_params(VALIDATION, profile, root), profile, results)
