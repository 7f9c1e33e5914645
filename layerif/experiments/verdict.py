"""The rules that turn the study's tests into verdicts (notebooks 03 and 10).

:func:`decide` is the one rule for a paired comparison:

``ours - baseline`` is **held** when positive and significant at ``level`` by every test named
(an undefined p-value counts for nothing, but at least one must be defined), **not held** when
negative and significant, and **inconclusive at this scale** otherwise -- also when the
difference is no larger than the seed-to-seed spread measured in the same study.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import numpy as np
import pandas as pd

from .. import stats
from .._config import check

__all__ = ["COLUMNS", "Verdict", "verdict_table", "DISTINCT", "HELD", "INCONCLUSIVE", "NOT_HELD", "SHARED", "VERDICTS",
           "agreement_verdict", "decide", "profile_verdict", "sign_verdict"]

HELD, NOT_HELD, INCONCLUSIVE = "held", "not held", "inconclusive at this scale"
VERDICTS = (HELD, NOT_HELD, INCONCLUSIVE)
SHARED, DISTINCT = 0.8, 0.5   # notebook 01's reading of the mean pairwise Spearman


@dataclass(frozen=True)
class Verdict:
    """One claim decided on one model: the one row type of every notebook's verdicts and of
    notebook 10's claims table.

    ``ours`` is the measured effect as a sentence fragment (with its unit and size), ``statistic``
    the same effect as a number (NaN when the claim has none), ``interval`` its confidence
    interval as printed, ``p`` the deciding test's p-value (NaN when the test is an interval
    rule), ``verdict`` one of :data:`VERDICTS`."""

    claim: str
    model: str
    where: str
    paper: str
    ours: str
    test: str
    p: float
    interval: str
    verdict: str
    notebook: str
    statistic: float = float("nan")

    def __post_init__(self):
        check(self.verdict in VERDICTS, "verdict", self.verdict, f"one of {VERDICTS}")

    def sentence(self) -> str:
        """The row as one sentence: claim, model, verdict, the evidence."""
        p = "" if not np.isfinite(self.p) else f", p = {self.p:.3g}"
        return (f"{self.claim} ({self.model}, {self.where}): {self.verdict} -- ours {self.ours}"
                f"{p}, interval {self.interval}; paper {self.paper}.")


#: Column names of :func:`verdict_table` (the claims table of notebook 10), in order.
COLUMNS = ["claim", "model", "where", "paper", "ours", "test", "p-value", "interval", "verdict",
           "notebook"]


def verdict_table(rows) -> pd.DataFrame:
    """Verdict rows as the claims table (:data:`COLUMNS`, ``p`` shown as ``p-value``)."""
    records = [asdict(r) for r in rows]
    frame = pd.DataFrame(records, columns=[f.name for f in fields(Verdict)])
    return frame.rename(columns={"p": "p-value"})[COLUMNS]


def decide(difference: float, pvalues, level: float = 0.05, noise: float = np.nan) -> str:
    """``ours - baseline`` -> one of :data:`VERDICTS` (see the module docstring)."""
    check(0 < level < 1, "level", level, "a float in (0, 1)")
    ps = [float(p) for p in np.atleast_1d(pvalues) if np.isfinite(p)]
    significant = bool(ps) and all(p < level for p in ps)
    if not significant or not np.isfinite(difference) or difference == 0:
        return INCONCLUSIVE
    if np.isfinite(noise) and abs(difference) <= noise:
        return INCONCLUSIVE
    return HELD if difference > 0 else NOT_HELD


def sign_verdict(changes, level: float = 0.05) -> tuple[str, float]:
    """Do the cells move in the claimed direction (> 0)? One-sided sign tests both ways.

    Returns ``(verdict, p)``: held when the share of positive cells is above 1/2 at ``level``
    (p of that test), not held when the share of negative ones is, else inconclusive (the
    smaller of the two p-values). Cells equal to 0 count for neither direction.
    """
    x = np.asarray(changes, dtype=float)
    check(x.size >= 2 and np.isfinite(x).all(), "changes", changes, "two or more finite numbers")
    up = stats.above_rate(x > 0, 0.5).pvalue
    down = stats.above_rate(x < 0, 0.5).pvalue
    if up < level:
        return HELD, up
    if down < level:
        return NOT_HELD, down
    return INCONCLUSIVE, min(up, down)


def profile_verdict(ci_low: float, ci_high: float) -> str:
    """Fig. 1's "distinct profiles per task" from the interval of the mean pairwise Spearman:
    held when it lies below 0.5 (notebook 01's "distinct"), not held when above 0.8
    ("largely shared"), else inconclusive."""
    if ci_high < DISTINCT:
        return HELD
    if ci_low > SHARED:
        return NOT_HELD
    return INCONCLUSIVE


def agreement_verdict(table: pd.DataFrame, threshold: float = 0.5) -> str:
    """Table 3's "little to no agreement" from notebook 06's per-task intervals: held when
    every task's 95% interval of the allocations' Spearman lies below ``threshold``, not held
    when any lies above it, else inconclusive."""
    if (table["ci_low"] > threshold).any():
        return NOT_HELD
    if (table["ci_high"] < threshold).all():
        return HELD
    return INCONCLUSIVE
