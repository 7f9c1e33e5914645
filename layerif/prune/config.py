"""How a model is pruned: :class:`PruneConfig`, validated at construction, with presets.

A :class:`PruneConfig` holds everything that decides a pruned model apart from the model,
its sparsity ratios and the calibration text: the pruner, the N:M pattern, the calibration
size (rows x tokens, and the seed and source of :func:`layerif.data.calibration_tokens`),
SparseGPT's block width and damping, and the tie rule. ``batch_size`` is a run-time field:
it changes how the calibration passes are batched, not the result, so it is left out of
:meth:`PruneConfig.identity`. :func:`layerif.prune.prune_model` takes one (its only way to be
told how to prune); :func:`layerif.prune.prune` also draws the calibration tokens from it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from .._config import ConfigBase, check, field
from .magnitude import TIES

__all__ = ["METHODS", "PruneConfig"]

METHODS = ("magnitude", "wanda", "sparsegpt")
_SOURCES = ("boolq", "c4")


def _positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


@dataclass
class PruneConfig(ConfigBase):
    """How :func:`layerif.prune.prune_model` and :func:`layerif.prune.prune` prune.

    The defaults are the published setting of SparseGPT, Wanda and the paper: 128
    calibration sequences of 2048 tokens (:meth:`paper`); :meth:`smoke` (tests) shrinks the
    calibration. The book's sizes are ``prune:`` of ``params/<profile>/05_pruning.yaml``
    (``PruneConfig(**params["prune"])``). Both presets use Wanda; pick another pruner with
    ``PruneConfig.preset("paper", method="sparsegpt")``.
    """

    method: str = field("wanda", help="magnitude | wanda | sparsegpt")
    nm: tuple | None = field(None, help="None (unstructured) or (n, m): prune n of every m "
                             "consecutive input weights of each row (every ratio must be n/m)")
    n_samples: int = field(128, help="calibration rows (sequences); unused by magnitude")
    seq_len: int = field(2048, help="tokens per calibration row; unused by magnitude")
    calibration_seed: int | None = field(0, help="passage-order seed of "
                                         "layerif.data.calibration_tokens (None: source order)")
    calibration_source: str = field("boolq", help="calibration text: boolq (offline Wikipedia "
                                    "passages) | c4 (hub, LAYERIF_OFFLINE=0)")
    blocksize: int = field(128, help="SparseGPT: columns per lazy-update block (the mask is "
                           "chosen once per block)")
    percdamp: float = field(0.01, help="SparseGPT: Hessian damping as a fraction of mean(diag H)")
    ties: str = field("exact", help="exact: prune exactly int(numel*s) weights per matrix, ties "
                      "broken by position | reference: the published code's threshold rule "
                      "(prunes every score <= the cut; magnitude and sparsegpt, see "
                      "book/method.md); Wanda prunes exactly per row either way")
    batch_size: int = field(8, help="calibration sequences per forward pass", runtime=True)

    def __post_init__(self):
        check(self.method in METHODS, "method", self.method,
              "'magnitude', 'wanda' or 'sparsegpt'")
        if isinstance(self.nm, list):
            self.nm = tuple(self.nm)
        check(self.nm is None or (
            isinstance(self.nm, tuple) and len(self.nm) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) for v in self.nm)
            and 0 <= self.nm[0] < self.nm[1]), "nm", self.nm,
            "None or a pair of ints (n, m) with 0 <= n < m")
        for name in ("n_samples", "seq_len", "blocksize", "batch_size"):
            value = getattr(self, name)
            check(_positive_int(value), name, value, "an int >= 1")
        check(self.calibration_seed is None or (isinstance(self.calibration_seed, int)
              and not isinstance(self.calibration_seed, bool)), "calibration_seed",
              self.calibration_seed, "an int or None")
        check(self.calibration_source in _SOURCES, "calibration_source",
              self.calibration_source, "'boolq' or 'c4'")
        check(isinstance(self.percdamp, (int, float)) and not isinstance(self.percdamp, bool)
              and math.isfinite(self.percdamp) and self.percdamp >= 0, "percdamp",
              self.percdamp, "a finite float >= 0")
        check(self.ties in TIES, "ties", self.ties, "'exact' or 'reference'")
        if self.method == "sparsegpt" and self.nm is not None:
            check(self.blocksize % self.nm[1] == 0, "blocksize", self.blocksize,
                  f"a multiple of m={self.nm[1]} with nm={self.nm} and method='sparsegpt'")

    def calibration(self, tokenizer):
        """The calibration tokens this config describes (``layerif.data.calibration_tokens``
        with its rows, length, seed and source); None for magnitude, which reads none."""
        if not self.needs_calibration:
            return None
        from ..data import calibration_tokens

        return calibration_tokens(tokenizer, self.n_samples, self.seq_len,
                                  seed=self.calibration_seed, source=self.calibration_source)

    @property
    def needs_calibration(self) -> bool:
        """Whether the method reads calibration activations (all but magnitude)."""
        return self.method != "magnitude"

    @classmethod
    def smoke(cls) -> "PruneConfig":
        """Seconds on a CPU: Wanda on 4 calibration rows of 64 tokens."""
        return cls(n_samples=4, seq_len=64, batch_size=4)

    @classmethod
    def paper(cls) -> "PruneConfig":
        """The paper's (and SparseGPT's, Wanda's) setting: Wanda on 128 rows of 2048 tokens."""
        return cls(n_samples=128, seq_len=2048)
