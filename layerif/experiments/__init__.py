"""The study's experiments: loops over models, tasks and settings that the notebooks call.

Each function computes only what the results store (:mod:`layerif.store`) does not already
hold for the same identity, saves what it computes, and returns tables indexed by block.
Modules: :mod:`.overview` (notebook 00), :mod:`.scoring` (01), :mod:`.allocation` (02),
:mod:`.sparsity` (04), :mod:`.moe` and
:mod:`.moe_tables` (03), :mod:`.pruning` and :mod:`.pruning_tables` (05, 07, 08),
:mod:`.agreement` (06), :mod:`.influence_validation` with :mod:`.validation`,
:mod:`.approximation`, :mod:`.retraining` and :mod:`.validation_verdicts` (09),
:mod:`.notebooks` (10: the notebooks it re-reads, their claims table) and :mod:`.reproduction`;
every verdict by the rules of :mod:`.verdict`.
"""
from . import agreement, allocation, scoring  # noqa: F401

__all__ = ["agreement", "allocation", "scoring"]
