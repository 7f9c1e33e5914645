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
__version__ = "0.1.0"

from . import allocate, baselines, data, evaluate, moe, paper, plots, prune, stats, store, train  # noqa: E402
from .models import describe, linear_modules, load_model, transformer_blocks  # noqa: E402
from .evaluate import EvalConfig  # noqa: E402
from .prune import PruneConfig  # noqa: E402
from .scores import LayerScores, ScoreConfig, layer_scores  # noqa: E402

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
