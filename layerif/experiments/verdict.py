"""The one rule that turns a paired comparison into a verdict (notebooks 03 and 10).

``ours - baseline`` is **held** when positive and significant at ``level`` by every test named
(an undefined p-value counts for nothing, but at least one must be defined), **not held** when
negative and significant, and **inconclusive at this scale** otherwise -- also when the
difference is no larger than the seed-to-seed spread measured in the same study.
"""
from __future__ import annotations

import numpy as np

from .._config import check

__all__ = ["HELD", "INCONCLUSIVE", "NOT_HELD", "VERDICTS", "decide"]

HELD, NOT_HELD, INCONCLUSIVE = "held", "not held", "inconclusive at this scale"
VERDICTS = (HELD, NOT_HELD, INCONCLUSIVE)


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
