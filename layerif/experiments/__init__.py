"""The study's experiments: loops over models, tasks and settings that the notebooks call.

Each function computes only what the results store (:mod:`layerif.store`) does not already
hold for the same identity, saves what it computes, and returns tables indexed by block.
Modules: :mod:`.scoring` (notebook 01), :mod:`.allocation` (02, 04), :mod:`.agreement` (06).
"""
from . import agreement, allocation, scoring  # noqa: F401

__all__ = ["agreement", "allocation", "scoring"]
