"""Evaluation: task accuracy (log-likelihood or generation), perplexity, lm-eval zero-shot.

lm-eval itself is imported inside :func:`zero_shot`, so importing this package is light.
The functions are bound here after their submodules, so ``layerif.evaluate.accuracy`` is
the function (the submodules stay reachable as ``layerif.evaluate.accuracy`` only through
``importlib`` / ``sys.modules``).
"""
from .accuracy import accuracy
from .perplexity import perplexity
from .zero_shot import zero_shot

__all__ = ["accuracy", "perplexity", "zero_shot"]
