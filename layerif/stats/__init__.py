"""Significance tests, confidence intervals and power for the study's comparisons.

Every function returns a :class:`TestResult` so that notebooks print and tabulate one shape.
Inputs are array-likes; they are validated (finite, at least two values, equal lengths where
paired) and a bad one raises a one-line ``ValueError`` naming the parameter. Bootstrap
functions draw their resamples from :func:`iter_bootstrap_indices`, seeded through
``np.random.default_rng(seed)`` only, so a fixed seed gives identical results and no global
random state is touched.

The paired tests (:func:`paired_t`, :func:`mcnemar`, :func:`paired_margin`,
:func:`paired_nll`) also carry their power (:mod:`layerif.power`): ``mde``, the smallest
effect detected with 80% power at the ``n`` tested, and, for a given ``effect``,
``n_needed``; both at two-sided alpha ``1 - level``.

Submodules: ``result`` (:class:`TestResult`, input checks), ``resample`` (bootstrap,
Spearman), ``parametric`` (t tests, McNemar, a rate above chance), ``paired`` (margin and
per-window NLL).
"""
from .paired import paired_margin, paired_nll
from .parametric import above_rate, mcnemar, paired_t, welch_t
from .resample import (bootstrap_diff_ci, bootstrap_indices, bootstrap_mean_ci, iter_bootstrap_indices,
                       paired_bootstrap, percentile_ci, spearman_ci)
from .result import ALTERNATIVES, TestResult

__all__ = [
    "ALTERNATIVES",
    "TestResult",
    "above_rate",
    "bootstrap_diff_ci",
    "bootstrap_indices",
    "bootstrap_mean_ci",
    "iter_bootstrap_indices",
    "mcnemar",
    "paired_bootstrap",
    "paired_margin",
    "paired_nll",
    "paired_t",
    "percentile_ci",
    "spearman_ci",
    "welch_t",
]
