"""LayerIF: per-layer influence-function scores for LLMs and what to do with them.

The main entry points::

    import layerif
    model, tokenizer = layerif.load_model()                       # embedded SmolLM2-135M
    train = layerif.data.load_task("mrpc", "train", n=300)
    val = layerif.data.load_task("mrpc", "validation", n=50)
    scores = layerif.layer_scores(model, tokenizer, train, val)   # LayerScores
    s = scores.aggregate("positive")                              # pd.Series by block
    experts = layerif.allocate.experts(s, total=150)              # LoRA-MoE experts per block
    ratios = layerif.allocate.sparsity(s, 0.5, layerif.describe(model)["linear_params"])

Subpackages: ``data``, ``allocate``, ``baselines``, ``prune``, ``moe``, ``train``,
``evaluate``, ``store`` (saved results), ``stats``, ``plots``, ``paper`` (the
paper's numbers), ``experiments`` and ``study`` (the notebooks' loops and runner).
"""
from __future__ import annotations

import importlib

from ._version import __version__

# Subpackages and names are imported on first use (PEP 562), so ``import layerif.<light
# module>`` (the notebook runner's record, the store's paths) does not load torch.
_NAMES = {"describe": "models", "linear_modules": "models", "load_model": "models",
          "transformer_blocks": "models", "EvalConfig": "evaluate", "PruneConfig": "prune",
          "LayerScores": "scores", "ScoreConfig": "scores", "layer_scores": "scores"}

__all__ = [
    "EvalConfig",
    "LayerScores",
    "PruneConfig",
    "ScoreConfig",
    "__version__",
    "allocate",
    "baselines",
    "data",
    "describe",
    "evaluate",
    "layer_scores",
    "linear_modules",
    "load_model",
    "moe",
    "paper",
    "plots",
    "prune",
    "stats",
    "store",
    "train",
    "transformer_blocks",
]


def __getattr__(name: str):
    if name in _NAMES:
        value = getattr(importlib.import_module(f".{_NAMES[name]}", __name__), name)
        globals()[name] = value
        return value
    if not name.startswith("_"):
        try:
            return importlib.import_module(f".{name}", __name__)
        except ModuleNotFoundError as err:
            if err.name != f"{__name__}.{name}":
                raise
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
