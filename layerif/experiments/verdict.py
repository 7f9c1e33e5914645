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
           "agreement_verdict", "covering", "decide", "direction", "interval", "interval_verdict",
           "profile_reading", "profile_verdict", "sign_verdict"]

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


def interval_verdict(low: float, high: float, *, above: float = 0.0, at_least: float | None = None,
                     below: float = 0.0) -> str:
    """A statistic's verdict from its interval (a CI, a range over cases, or one value given
    as both ends): **held** when the whole interval lies above ``above`` (``low > above``) --
    with ``at_least``, when it reaches that instead (``low >= at_least``) --, **not held** when
    it lies below ``below`` (``high < below``), else (also when undefined) inconclusive.

    The defaults are the rule of a correlation's interval: held above 0, not held below 0."""
    if np.isfinite(low) and (low > above if at_least is None else low >= at_least):
        return HELD
    if np.isfinite(high) and high < below:
        return NOT_HELD
    return INCONCLUSIVE


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


def direction(count: int, n: int) -> str:
    """How ``count`` of ``n`` cells moving the claimed way reads: ``helps`` when at least 3 in 4
    do, ``hurts`` when at most 1 in 4 do, else ``is mixed`` (notebook 07's reading)."""
    return "helps" if count >= 0.75 * n else "hurts" if count <= 0.25 * n else "is mixed"


def interval(lo: float, hi: float, scale: float = 1.0, unit: str = "") -> str:
    """A verdict row's interval as printed: ``[+0.12, +0.50] unit`` (``undefined`` if not finite)."""
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return "undefined"
    return f"[{scale * lo:+.2f}, {scale * hi:+.2f}]{unit}"


def profile_reading(mean: float) -> str:
    """Notebook 01's reading of one model's mean pairwise Spearman between task profiles (the
    point estimate; the verdict, :func:`profile_verdict`, reads its interval against the same
    thresholds): ``distinct`` below :data:`DISTINCT`, ``largely shared`` above :data:`SHARED`."""
    if mean < DISTINCT:
        return "distinct profiles"
    return "largely shared profiles" if mean > SHARED else "partly task-specific profiles"


def covering(low, high, value: float = 0.0) -> int:
    """How many intervals ``[low, high]`` contain ``value`` (notebook 06's reading: a 95%
    interval covering 0 shows no rank agreement either way; undefined intervals count for none)."""
    low, high = np.asarray(low, dtype=float), np.asarray(high, dtype=float)
    return int(((low <= value) & (high >= value)).sum())


# -- five verdicts, one rule (issue 22): a claimed effect against the interval and the power --

RULED_OUT, UNDERPOWERED, UNTESTABLE = "ruled out at this scale", "underpowered", "untestable here"
#: The five verdicts of :func:`decide_effect`, in the order of the claims table's tally.
FIVE_VERDICTS = (HELD, NOT_HELD, RULED_OUT, UNDERPOWERED, UNTESTABLE)
VERDICTS = VERDICTS + (RULED_OUT, UNDERPOWERED, UNTESTABLE)   # Verdict rows accept them too
__all__ += ["EffectDecision", "FIVE_VERDICTS", "RULED_OUT", "UNDERPOWERED", "UNTESTABLE", "decide_effect",
            "untestable_reason"]


@dataclass(frozen=True)
class EffectDecision:
    """A claim "A beats B by ``effect``" decided by :func:`decide_effect`: the verdict (one of
    :data:`FIVE_VERDICTS`), why, and the power figures the row reports (the MDE and the n
    needed for ``effect``, in the caller's units and counts)."""

    verdict: str
    reason: str
    effect: float
    mde: float = float("nan")
    n_needed: float = float("nan")


def _g(x: float) -> str:
    return f"{x:.3g}" if np.isfinite(x) else ("unreachable" if x == np.inf else "undefined")


def decide_effect(ci_low: float, ci_high: float, effect: float, *, mde: float = float("nan"),
                  n_needed: float = float("nan"), untestable: str | None = None) -> EffectDecision:
    """The one rule for a claim "A beats B by ``effect``" (the paper's effect d).

    The interval ``[ci_low, ci_high]`` is of the difference A - B in the unit of ``effect``;
    the claim's direction is the sign of ``effect`` (a negative d: A lowers the measure, e.g.
    the NLL). Read in that direction:

    * **untestable here** when ``untestable`` gives a reason (the base model is at chance on
      the measure, the recipe made the model worse than its base; :func:`untestable_reason`)
      or the interval is undefined;
    * **held** when the interval lies above 0 (on the claimed side);
    * **not held** when it lies below 0;
    * **ruled out at this scale** when it contains 0 but excludes ``effect``: any effect is
      smaller than the paper's;
    * **underpowered** when it contains both 0 and ``effect``; the decision carries ``mde``
      (the smallest effect the test detects at this n) and ``n_needed`` (the n that would
      detect ``effect``), e.g. from :class:`layerif.stats.TestResult`.
    """
    check(isinstance(effect, (int, float, np.floating)) and np.isfinite(effect) and effect != 0,
          "effect", effect, "a finite non-zero effect d (its sign: the claimed direction)")
    check(untestable is None or (isinstance(untestable, str) and untestable.strip() != ""),
          "untestable", untestable, "None or a non-empty reason")
    found = EffectDecision(HELD, "", float(effect), float(mde), float(n_needed))
    if untestable is not None:
        return _replace(found, UNTESTABLE, untestable)
    if not (np.isfinite(ci_low) and np.isfinite(ci_high)) or ci_low > ci_high:
        return _replace(found, UNTESTABLE, f"no interval ([{ci_low}, {ci_high}])")
    sign = 1.0 if effect > 0 else -1.0
    lo, hi = sorted((sign * ci_low, sign * ci_high))
    d = abs(effect)
    shown = f"[{_g(ci_low)}, {_g(ci_high)}]"
    if lo > 0:
        smaller = f", below d = {_g(effect)}" if hi < d else ""
        return _replace(found, HELD, f"interval {shown} on the claimed side of 0{smaller}")
    if hi < 0:
        return _replace(found, NOT_HELD, f"interval {shown} on the other side of 0")
    if hi < d:
        return _replace(found, RULED_OUT, f"interval {shown} contains 0 but excludes d = {_g(effect)}")
    return _replace(found, UNDERPOWERED, f"interval {shown} contains 0 and d = {_g(effect)}; MDE "
                    f"{_g(mde)} at this n, n needed for d: {_g(n_needed)}")


def _replace(decision: EffectDecision, verdict: str, reason: str) -> EffectDecision:
    return EffectDecision(verdict, reason, decision.effect, decision.mde, decision.n_needed)


def untestable_reason(base_correct=None, chance: float | None = None, trained_vs_base=None,
                      level: float = 0.05) -> str | None:
    """Why a claim cannot be tested here, or ``None``.

    Args:
        base_correct: the dense / base model's per-example 0/1 correctness on the measure;
            with ``chance``, "at chance" when the one-sided binomial test
            (:func:`layerif.stats.above_rate`) does not put it above ``chance`` at ``level``.
        trained_vs_base: a :class:`layerif.stats.TestResult` of trained minus base (e.g.
            :func:`layerif.stats.mcnemar`): "made worse" when its interval lies below 0.
    """
    check((base_correct is None) == (chance is None), "chance", chance,
          "given together with base_correct")
    if base_correct is not None:
        res = stats.above_rate(base_correct, chance)
        if not res.pvalue < level:
            return (f"base model at chance on this measure (accuracy {res.estimate:.3f} vs chance "
                    f"{chance:.3f}, p = {res.pvalue:.2g}, n = {res.n})")
    if trained_vs_base is not None and trained_vs_base.ci_high < 0:
        return (f"fine-tuning made the model worse than its base ({trained_vs_base.estimate:+.3g}, "
                f"interval [{trained_vs_base.ci_low:+.3g}, {trained_vs_base.ci_high:+.3g}])")
    return None
