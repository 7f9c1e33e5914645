"""Evaluation: task accuracy (log-likelihood or generation), perplexity, zero-shot (our
one-pass per-choice scorer, or lm-eval).

lm-eval itself is imported inside :func:`zero_shot`, so importing this package is light.
The functions are bound here after their submodules, so ``layerif.evaluate.accuracy`` is
the function (the submodules stay reachable as ``layerif.evaluate.accuracy`` only through
``importlib`` / ``sys.modules``).
"""
from .accuracy import accuracy
from .choices import choice_logliks
from .perplexity import perplexity
from .suite import EvalConfig, Evaluation, evaluate_suite
from .zero_shot import zero_shot

__all__ = ["EvalConfig", "Evaluation", "accuracy", "choice_logliks", "evaluate_suite", "perplexity",
           "zero_shot"]
