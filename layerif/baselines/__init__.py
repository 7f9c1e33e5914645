"""Model-only baselines for the two allocations, returning the types of ``layerif.allocate``.

* :func:`alpha_hill` -- PL_Alpha_Hill per block from the weight spectra;
* :func:`alphapruning_sparsity`, :func:`owl_sparsity` -- sparsity per layer;
* :func:`alphalora`, :func:`mola` -- LoRA-MoE experts per layer.
"""
from .alpha_hill import alpha_hill, alpha_hill_table, esd_alpha, spectrum
from .alphalora import alphalora
from .alphapruning import alphapruning_sparsity
from .mola import MOLA_PATTERNS, mola
from .owl import owl_sparsity

__all__ = [
    "MOLA_PATTERNS",
    "alpha_hill",
    "alpha_hill_table",
    "alphalora",
    "alphapruning_sparsity",
    "esd_alpha",
    "mola",
    "owl_sparsity",
    "spectrum",
]
