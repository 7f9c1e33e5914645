"""The one result type of :mod:`layerif.stats` and the checks on its inputs."""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from .._config import check

__all__ = ["ALTERNATIVES", "TestResult", "booleans", "check_effect", "check_level", "check_n_boot",
           "pair", "paired_booleans", "vector"]

ALTERNATIVES = ("two-sided", "less", "greater")


@dataclasses.dataclass(frozen=True)
class TestResult:
    """The outcome of one test or interval.

    Attributes:
        name: which procedure produced it (e.g. ``"paired_t"``).
        statistic: the test statistic (t, rho, discordant count, chi-square, bootstrap z);
            ``nan`` where the procedure has none.
        pvalue: the p-value; ``nan`` for interval-only procedures.
        estimate: the effect the interval is about (mean difference, rho, accuracy difference).
        ci_low, ci_high: the two-sided confidence interval at ``level`` (``nan`` if undefined).
        n: the number of observations (pairs for paired procedures, both groups together for
            unpaired ones).
        level: the confidence level of the interval.
        note: extra facts about the computation (group sizes, bootstrap replicates used).
        mde: the minimum detectable effect: the smallest ``|estimate|`` the test detects with
            80% power at ``n`` and two-sided alpha ``1 - level`` (``nan`` where the test has no
            power calculation or the data leave it undefined; ``inf`` where no effect would be
            detected at this ``n``).
        n_needed: the ``n`` at which the test has 80% power for ``effect`` (``nan`` when no
            effect was given, ``inf`` when none would do).
        effect: the effect ``n_needed`` is for (e.g. the paper's), in the estimate's unit.
    """

    __test__ = False  # not a pytest test class despite the name

    name: str
    statistic: float
    pvalue: float
    estimate: float
    ci_low: float
    ci_high: float
    n: int
    level: float
    note: str = ""
    mde: float = math.nan
    n_needed: float = math.nan
    effect: float = math.nan

    def as_dict(self) -> dict[str, Any]:
        """The fields as a plain dict (for a DataFrame row or JSON)."""
        return dataclasses.asdict(self)

    def __str__(self) -> str:
        pct = f"{100 * self.level:g}%"
        text = (f"{self.name}: estimate={self.estimate:.4g} [{pct} CI {self.ci_low:.4g}, "
                f"{self.ci_high:.4g}], statistic={self.statistic:.4g}, p={self.pvalue:.4g}, n={self.n}")
        if not math.isnan(self.mde):
            text += f", MDE={self.mde:.4g}"
        if not math.isnan(self.n_needed):
            text += f", n for effect {self.effect:.4g}: {self.n_needed:.6g}"
        return f"{text} ({self.note})" if self.note else text


def vector(values, name: str, min_n: int = 2) -> np.ndarray:
    """``values`` as a finite 1-D float64 array with at least ``min_n`` entries."""
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{name}={values!r} is invalid: expected a 1-D array of numbers") from None
    check(arr.ndim == 1, name, f"array of shape {arr.shape}", "a 1-D array")
    check(arr.size >= min_n, name, f"array of length {arr.size}", f"at least {min_n} values")
    check(bool(np.isfinite(arr).all()), name, f"array with {int((~np.isfinite(arr)).sum())} non-finite values",
          "finite values")
    return arr


def pair(a, b, names: tuple[str, str] = ("a", "b")) -> tuple[np.ndarray, np.ndarray]:
    """Two validated vectors of equal length."""
    x, y = vector(a, names[0]), vector(b, names[1])
    check(x.size == y.size, names[1], f"array of length {y.size}", f"the length of {names[0]} ({x.size})")
    return x, y


def booleans(values, name: str) -> np.ndarray:
    """Per-example correctness (bools or 0/1) as a bool array."""
    arr = vector(values, name)
    check(bool(np.isin(arr, (0.0, 1.0)).all()), name, "array with values other than 0/1",
          "booleans (or 0/1) per example")
    return arr.astype(bool)


def paired_booleans(correct_a, correct_b) -> tuple[np.ndarray, np.ndarray]:
    """Two per-example correctness vectors of equal length."""
    a, b = booleans(correct_a, "correct_a"), booleans(correct_b, "correct_b")
    check(a.size == b.size, "correct_b", f"array of length {b.size}", f"the length of correct_a ({a.size})")
    return a, b


def check_level(level: float) -> float:
    """A confidence level in (0, 1)."""
    check(isinstance(level, (int, float)) and 0 < level < 1, "level", level, "a float in (0, 1)")
    return float(level)


def check_n_boot(n_boot: int) -> int:
    """A number of bootstrap resamples (>= 1)."""
    check(isinstance(n_boot, (int, np.integer)) and n_boot >= 1, "n_boot", n_boot, "an integer >= 1")
    return int(n_boot)


def check_effect(effect) -> float | None:
    """An effect to power a test for: ``None`` or a finite number."""
    check(effect is None or (isinstance(effect, (int, float, np.floating)) and math.isfinite(effect)),
          "effect", effect, "None or a finite number (in the estimate's unit)")
    return None if effect is None else float(effect)
