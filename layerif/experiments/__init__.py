"""The study's experiments: loops over models, tasks and settings that the notebooks call.

Each function computes only what the results store (:mod:`layerif.store`) does not already
hold for the same identity, saves what it computes, and returns tables indexed by block.
Modules: :mod:`.scoring` (notebook 01), :mod:`.allocation` (02, 04), :mod:`.moe` and
:mod:`.moe_tables` (03), :mod:`.pruning` and :mod:`.pruning_tables` (05, 07, 08),
:mod:`.agreement` (06), :mod:`.validation`, :mod:`.approximation` and :mod:`.retraining`
(09), :mod:`.claims`, :mod:`.saved`, :mod:`.reproduction` and :mod:`.verdict` (10).
"""
from . import agreement, allocation, scoring  # noqa: F401

__all__ = ["agreement", "allocation", "scoring"]
