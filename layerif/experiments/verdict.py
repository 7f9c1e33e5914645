"""The one verdict vocabulary of the study and the rules that lead to it (every notebook, and 10).

Five verdicts (:data:`VERDICTS`), one rule per kind of claim:

* **A comparison** "A beats B by the paper's effect d" (LoRA-MoE, pruning): :func:`decide_effect`
  on ONE measure whose interval and d share a unit. *held*: the interval of A - B lies on the
  claimed side of 0; *not held*: on the other side; *ruled out at this scale*: it contains 0
  but excludes d (any effect is smaller than the paper's); *underpowered*: it contains 0 and
  d (the row gives the MDE and the n that would detect d); *untestable here*: the dense or
  base model is at chance on the measure, the recipe made the model worse than its base
  (:func:`untestable_reason`), or there is no interval.
* **A threshold claim** on a correlation or an agreement (notebooks 01, 06, 09), which says
  "the statistic lies beyond t" rather than "A beats B by d": :func:`interval_verdict` (and
  :func:`profile_verdict`, :func:`agreement_verdict`). *held*: the interval lies wholly in
  the claimed region; *not held*: wholly in the opposite region named by the rule; otherwise,
  when the interval is a **confidence interval** (``over="ci"``) the truth may lie anywhere
  in it: *underpowered* when it reaches into the claimed region (more data could decide),
  *ruled out at this scale* when it stops short of it (the claimed strength is excluded, the
  opposite is not shown). When the interval is a **range over cases** (``over="cases"``:
  tasks, subsets, a single value), every case is known and each must meet the claim: a case
  that falls short makes the claim *ruled out at this scale*. An undefined interval is
  *untestable here*. These rows have no d, MDE or n needed (NaN).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import numpy as np
import pandas as pd

from .. import stats
from .._config import check

__all__ = ["COLUMNS", "DISTINCT", "EffectDecision", "FIVE_VERDICTS", "HELD", "NOT_HELD", "RULED_OUT",
           "SHARED", "UNDERPOWERED", "UNTESTABLE", "VERDICTS", "Verdict", "agreement_verdict", "covering",
           "decide_effect", "decided", "direction", "interval", "interval_verdict", "profile_reading",
           "profile_verdict", "tally", "untestable_reason", "verdict_table"]

HELD, NOT_HELD = "held", "not held"
RULED_OUT, UNDERPOWERED, UNTESTABLE = "ruled out at this scale", "underpowered", "untestable here"
#: The five verdicts, in the order of the claims table's tally.
VERDICTS = FIVE_VERDICTS = (HELD, NOT_HELD, RULED_OUT, UNDERPOWERED, UNTESTABLE)
SHARED, DISTINCT = 0.8, 0.5   # notebook 01's reading of the mean pairwise Spearman
_NAN = float("nan")


@dataclass(frozen=True, eq=False)
class Verdict:
    """One claim decided on one model: the one row type of every notebook's verdicts and of
    notebook 10's claims table.

    ``ours`` is the measured effect as a sentence fragment (with its unit and size),
    ``statistic`` the same effect as a number in ``unit`` (NaN when the claim has none),
    ``interval`` its interval as printed, ``p`` the deciding test's p-value (NaN when the test
    is an interval rule), ``verdict`` one of :data:`VERDICTS`. A comparison row
    (:func:`decided`) also carries, in ``unit``: ``effect`` (the paper's d), ``ci_low`` /
    ``ci_high`` (the interval the verdict reads) and ``mde`` (the smallest effect the test
    detects with 80% power at this n); and ``n_needed``, the n that would detect d, counted in
    ``n_unit`` (examples, settings, windows). Threshold rows leave them NaN."""

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
    statistic: float = _NAN
    effect: float = _NAN
    ci_low: float = _NAN
    ci_high: float = _NAN
    mde: float = _NAN
    n_needed: float = _NAN
    unit: str = ""
    n_unit: str = ""

    def __post_init__(self):
        check(self.verdict in VERDICTS, "verdict", self.verdict, f"one of {VERDICTS}")

    def __eq__(self, other) -> bool:
        """Every field equal, NaN equal to NaN (a row read back equals the row computed)."""
        if not isinstance(other, Verdict):
            return NotImplemented
        return all(_same(getattr(self, f.name), getattr(other, f.name)) for f in fields(self))

    __hash__ = None

    def sentence(self) -> str:
        """The row as one sentence: claim, model, verdict, the evidence."""
        p = "" if not np.isfinite(self.p) else f", p = {self.p:.3g}"
        power = ""
        if self.verdict == UNDERPOWERED:
            power = f"; MDE {_amount(self.mde, self.unit)}, n needed {_count(self.n_needed, self.n_unit)}"
        return (f"{self.claim} ({self.model}, {self.where}): {self.verdict} -- ours {self.ours}"
                f"{p}, interval {self.interval}{power}; paper {self.paper}.")


def _same(a, b) -> bool:
    both_nan = isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b)
    return both_nan or a == b


#: Column names of :func:`verdict_table` (the claims table of notebook 10), in order.
COLUMNS = ["claim", "model", "where", "paper", "paper effect d", "ours", "test", "p-value",
           "interval", "MDE", "n needed", "verdict", "notebook"]


def _amount(x: float, unit: str, sign: str = "") -> str | None:
    """A d or an MDE as shown: 3 significant digits and the unit; None when NaN."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return None
    if math.isinf(x):
        return "none at this n"
    return f"{x:{sign}.3g} {unit}".rstrip()


def _count(n: float, unit: str) -> str | None:
    """An n needed as shown: a whole number with thousands separators and what it counts."""
    if n is None or (isinstance(n, float) and math.isnan(n)):
        return None
    if math.isinf(n):
        return "unreachable"
    return f"{int(n):,} {unit}".rstrip()


def verdict_table(rows) -> pd.DataFrame:
    """Verdict rows as the claims table (:data:`COLUMNS`): ``p`` shown as ``p-value`` (a
    number), the paper's d and the MDE with their unit, the n needed with what it counts
    (None where a row has none; "unreachable" / "none at this n" where no n would do)."""
    records = []
    for r in rows:
        rec = asdict(r)
        rec.update({"p-value": r.p, "paper effect d": _amount(r.effect, r.unit, "+"),
                    "MDE": _amount(r.mde, r.unit), "n needed": _count(r.n_needed, r.n_unit)})
        records.append(rec)
    return pd.DataFrame(records, columns=COLUMNS)


def tally(rows) -> pd.DataFrame:
    """The five verdicts counted per notebook (rows, plus ``all``), every verdict a column in
    :data:`VERDICTS` order (0 where none); ``rows``: Verdict rows or a claims table."""
    frame = rows if isinstance(rows, pd.DataFrame) else verdict_table(rows)
    counts = pd.crosstab(frame["notebook"], pd.Categorical(frame["verdict"], VERDICTS), dropna=False)
    counts = counts.reindex(columns=list(VERDICTS), fill_value=0)
    counts.loc["all"] = counts.sum(axis=0)
    counts.columns.name, counts.index.name = "verdict", "notebook"
    return counts.astype(int)


# -- comparisons: "A beats B by the paper's effect d" ----------------------------------------

@dataclass(frozen=True)
class EffectDecision:
    """A claim "A beats B by ``effect``" decided by :func:`decide_effect`: the verdict (one of
    :data:`VERDICTS`), why, and the power figures the row reports (the MDE and the n needed
    for ``effect``, in the caller's units and counts)."""

    verdict: str
    reason: str
    effect: float
    mde: float = _NAN
    n_needed: float = _NAN


def _g(x: float) -> str:
    return f"{x:.3g}" if np.isfinite(x) else ("unreachable" if x == np.inf else "undefined")


def decide_effect(ci_low: float, ci_high: float, effect: float, *, mde: float = _NAN,
                  n_needed: float = _NAN, untestable: str | None = None) -> EffectDecision:
    """The one rule for a claim "A beats B by ``effect``" (the paper's effect d).

    The interval ``[ci_low, ci_high]`` is of the difference A - B in the unit of ``effect``;
    the claim's direction is the sign of ``effect`` (a negative d: A lowers the measure, e.g.
    the NLL). Read in that direction:

    * **untestable here** when ``untestable`` gives a reason (the base model is at chance on
      the measure, the recipe made the model worse than its base; :func:`untestable_reason`)
      or the interval is undefined; no MDE or n needed then (NaN: more data of a measure
      that cannot show the effect would not decide it);
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
        return EffectDecision(UNTESTABLE, untestable, float(effect))
    if not (np.isfinite(ci_low) and np.isfinite(ci_high)) or ci_low > ci_high:
        return EffectDecision(UNTESTABLE, f"no interval ([{ci_low}, {ci_high}])", float(effect))
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


def decided(decision: EffectDecision, ci_low: float, ci_high: float, *, unit: str, n_unit: str,
            decimals: int = 2, **row) -> Verdict:
    """A comparison's :class:`Verdict` row from its :func:`decide_effect` decision: the verdict,
    d, MDE and n needed from ``decision``, the interval ``[ci_low, ci_high]`` (printed with
    ``unit``); ``row`` gives the other fields (claim, model, where, paper, ours, test, p,
    notebook, statistic); ``decimals``: of the printed interval."""
    return Verdict(**row, interval=interval(ci_low, ci_high, 1.0, f" {unit}", decimals), verdict=decision.verdict,
                   effect=decision.effect, ci_low=float(ci_low), ci_high=float(ci_high),
                   mde=decision.mde, n_needed=decision.n_needed, unit=unit, n_unit=n_unit)


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


# -- threshold claims on a correlation or an agreement ---------------------------------------

_OVER = ("ci", "cases")


def interval_verdict(low: float, high: float, *, above: float = 0.0, at_least: float | None = None,
                     below: float = 0.0, over: str = "ci") -> str:
    """A threshold claim's verdict from its interval ``[low, high]`` (the module docstring's
    rule). The claimed region is ``> above`` -- with ``at_least``, ``>= at_least`` --; the
    opposite region is ``< below``.

    **held** when ``low`` is in the claimed region, **not held** when ``high`` is in the
    opposite one (a defined end decides alone), **untestable here** when neither does and an
    end is undefined; otherwise, for a confidence
    interval (``over="ci"``), **underpowered** when ``high`` reaches the claimed region and
    **ruled out at this scale** when it does not; for a range over cases (``over="cases"``,
    also one value given as both ends), **ruled out at this scale** (a case falls short).

    The defaults are the rule of a correlation's interval: held above 0, not held below 0."""
    check(over in _OVER, "over", over, f"one of {_OVER}")

    def claimed(x: float) -> bool:
        return x > above if at_least is None else x >= at_least

    if np.isfinite(low) and claimed(low):
        return HELD
    if np.isfinite(high) and high < below:
        return NOT_HELD
    if not (np.isfinite(low) and np.isfinite(high)):
        return UNTESTABLE
    return UNDERPOWERED if over == "ci" and claimed(high) else RULED_OUT


def profile_verdict(ci_low: float, ci_high: float) -> str:
    """Fig. 1's "distinct profiles per task" from the confidence interval of the mean pairwise
    Spearman (a claim of low values): held when it lies below 0.5 (notebook 01's "distinct"),
    not held when above 0.8 ("largely shared"), untestable when undefined; otherwise
    underpowered when it reaches below 0.5, ruled out at this scale when it does not."""
    # the same rule on the negated interval: claimed region -rho > -DISTINCT
    return interval_verdict(-ci_high, -ci_low, above=-DISTINCT, below=-SHARED)


def agreement_verdict(table: pd.DataFrame, threshold: float = 0.5) -> str:
    """Table 3's "little to no agreement" from notebook 06's per-task confidence intervals of
    the allocations' Spearman: not held when any task's interval lies above ``threshold``,
    untestable when a task's interval is undefined, held when every one lies below it; else
    underpowered (some interval crosses ``threshold``, none lies above it: more training
    examples could decide)."""
    low, high = table["ci_low"].astype(float), table["ci_high"].astype(float)
    if (low > threshold).any():
        return NOT_HELD
    if not (np.isfinite(low).all() and np.isfinite(high).all()):
        return UNTESTABLE
    return HELD if (high < threshold).all() else UNDERPOWERED


def direction(count: int, n: int) -> str:
    """How ``count`` of ``n`` cells moving the claimed way reads: ``helps`` when at least 3 in 4
    do, ``hurts`` when at most 1 in 4 do, else ``is mixed`` (notebook 07's reading)."""
    return "helps" if count >= 0.75 * n else "hurts" if count <= 0.25 * n else "is mixed"


def interval(lo: float, hi: float, scale: float = 1.0, unit: str = "", decimals: int = 2) -> str:
    """A verdict row's interval as printed: ``[+0.12, +0.50] unit`` (``undefined`` if not finite)."""
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return "undefined"
    return f"[{scale * lo:+.{decimals}f}, {scale * hi:+.{decimals}f}]{unit}"


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
