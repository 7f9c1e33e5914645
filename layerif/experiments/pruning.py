"""Prune and evaluate (notebooks 05, 07, 08): every pruned model's evaluation is a stored result.

A :class:`Setting` names one pruned model: pruner, sparsity allocation, global sparsity and
the allocation's variant (band half-width ``epsilon``, smoothing, which task's scores,
per-block or per-matrix granularity). :class:`PruningRun` holds what the settings of one
model share -- the dense weights (restored before each prune), the calibration and
perplexity tokens, the evaluation examples and the model statistics the baselines need --
and :meth:`PruningRun.evaluate` prunes, evaluates and saves one setting under
``<results>/pruning/<model>/<pruner>/<setting>``, or loads it when saved with the same
identity (the pruner's config, the evaluation config, the exact per-block ratios, the
example and score fingerprints). A re-run therefore computes only what is missing.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from .. import allocate, baselines, store
from ..data import perplexity_tokens
from ..evaluate.zero_shot import PAPER_TASKS
from ..evaluate.suite import EvalConfig, Evaluation, evaluate_suite, examples_fingerprint, task_examples
from ..models import describe, linear_modules, load_model, transformer_blocks
from ..scores import ScoreConfig
from ..prune import PruneConfig, prune_model
from .allocation import EPSILON, block_alpha, outlier_ratios
from .cache import slug
from .scoring import POOL, fingerprint, load_scores, score_tasks

__all__ = ["ALLOCATIONS", "DENSE", "KIND", "PruningRun", "Setting", "grid", "matrix_sparsity",
           "score_for_pruning"]

KIND = "pruned_eval"
DENSE = "dense"
ALLOCATIONS = ("Uniform", "AlphaPruning", "OWL", "LayerIF")
OWL_LAMBDA, OWL_M = 0.08, 5.0


@dataclass(frozen=True)
class Setting:
    """One pruned model of the study (``method="dense"`` for the unpruned one).

    Attributes:
        method: ``magnitude`` | ``wanda`` | ``sparsegpt`` | ``dense``.
        allocation: ``Uniform`` | ``AlphaPruning`` | ``OWL`` | ``LayerIF``.
        sparsity: the parameter-weighted global sparsity.
        epsilon: band half-width of LayerIF / AlphaPruning (None: the authors' per pruner).
        smooth: Savitzky--Golay smoothing of LayerIF's scores.
        scores: task label of the LayerIF scores (the pooled vector by default).
        granularity: ``block`` (one score per block) | ``matrix`` (one per linear matrix).
        aggregation: LayerIF's aggregation (``positive`` | ``top`` | ``all``).
    """

    method: str
    allocation: str = "Uniform"
    sparsity: float = 0.5
    epsilon: float | None = None
    smooth: bool = True
    scores: str = POOL
    granularity: str = "block"
    aggregation: str = "positive"

    def __post_init__(self):
        if self.method == DENSE:
            object.__setattr__(self, "allocation", "Dense")
            object.__setattr__(self, "sparsity", 0.0)
        elif self.allocation not in ALLOCATIONS:
            raise ValueError(f"allocation={self.allocation!r} is invalid: expected one of {ALLOCATIONS}")
        if self.granularity not in ("block", "matrix"):
            raise ValueError(f"granularity={self.granularity!r} is invalid: expected 'block' or 'matrix'")

    @property
    def layerif(self) -> bool:
        return self.allocation == "LayerIF"

    def label(self) -> str:
        """A short human label: ``LayerIF (raw, eps 0.3, boolq scores, per matrix)``."""
        parts = []
        if self.layerif and not self.smooth:
            parts.append("raw")
        if self.epsilon is not None:
            parts.append(f"eps {self.epsilon:g}")
        if self.layerif and self.scores != POOL:
            parts.append(f"{self.scores} scores")
        if self.layerif and self.aggregation != "positive":
            parts.append(self.aggregation)
        if self.granularity == "matrix":
            parts.append("per matrix")
        return self.allocation + (f" ({', '.join(parts)})" if parts else "")

    def folder(self) -> str:
        return slug(f"{self.label()} s{self.sparsity:g}".lower().replace(" ", "-")
                    .replace("(", "").replace(")", "").replace(",", ""))


def matrix_sparsity(scores: pd.DataFrame, target: float, n_params: pd.DataFrame,
                    epsilon: float = 0.1, smooth: bool = True) -> pd.DataFrame:
    """Per-matrix sparsity from per-matrix scores (the granularity ablation, paper §5).

    The block recipe of :func:`layerif.allocate.sparsity` applied to matrices: ``|S|`` of every
    matrix, min-max normalised over all matrices together, smoothed across depth within each
    module type (q with q, down with down), then mapped linearly into ``[1 - eps, 1 + eps]``
    and rescaled so that the parameter-weighted sparsity over all matrices is ``target``.

    Args:
        scores: index = layer, one column per linear module (``LayerScores.per_matrix``
            without its ``path`` column).
        target: global sparsity in (0, 1).
        n_params: parameters of each matrix, shaped like ``scores``.
        epsilon: band half-width.
        smooth: Savitzky--Golay smoothing across depth per module type.

    Returns:
        Sparsities shaped like ``scores``.
    """
    if list(n_params.columns) != list(scores.columns) or not n_params.index.equals(scores.index):
        raise ValueError("n_params is invalid: expected the same layers and modules as scores")
    s = scores.abs()
    lo, hi = s.to_numpy().min(), s.to_numpy().max()
    s = (s - lo) / (hi - lo) if hi > lo else s * 0.0
    if smooth:
        s = s.apply(allocate.smooth_scores)
    flat = pd.Series(s.to_numpy().ravel())
    d = pd.Series(n_params.to_numpy(dtype=float).ravel())
    out = allocate.linear_sparsity(flat, target, d, epsilon=epsilon)
    return pd.DataFrame(out.to_numpy().reshape(s.shape), index=s.index, columns=s.columns)


class PruningRun:
    """The shared state of one model's pruning settings; see the module docstring.

    Args:
        results: the profile's results folder.
        model_name: an embedded model name or a local / hub id.
        prune: calibration sizes and the pruners' options (its ``method`` is replaced by each
            setting's).
        evaluation: what every model is evaluated on.
        owl_calibration: rows x tokens of OWL's outlier ratios (notebook 04's, so that the
            allocations pruned here are the ones it shows).
        device: where the model runs.
        progress: progress bars.
    """

    def __init__(self, results: str | Path, model_name: str, prune: PruneConfig,
                 evaluation: EvalConfig, owl_calibration=(32, 256), device: str = "auto",
                 progress: bool = True):
        self.results, self.model_name = Path(results), model_name
        self.prune_config, self.eval_config = prune, evaluation
        self.owl_calibration = tuple(owl_calibration)
        self.device, self.progress = device, progress
        self._model = self._dense = self._calibration = self._ppl = None
        self._examples = None
        self._stats: dict = {}

    # -- lazily loaded shared state -------------------------------------------------------
    def model(self):
        if self._model is None:
            self._model, self.tokenizer = load_model(self.model_name, device=self.device)
            self._dense = {k: v.detach().clone() for k, v in self._model.state_dict().items()}
        return self._model

    def examples(self) -> dict[str, list]:
        if self._examples is None:
            self._examples = task_examples(self.eval_config)
        return self._examples

    def _restore(self):
        model = self.model()
        model.load_state_dict(self._dense)
        return model

    def _tokens(self):
        self.model()
        if self._calibration is None:
            self._calibration = self.prune_config.replace(method="wanda").calibration(self.tokenizer)
            e = self.eval_config
            self._ppl = perplexity_tokens(self.tokenizer, e.ppl_samples, e.ppl_len)
        return self._calibration, self._ppl

    def _stat(self, name: str):
        if name not in self._stats:
            model = self.model()
            if name == "alpha":
                self._stats[name] = block_alpha(model, self.results)
            elif name == "owl":
                self._stats[name] = outlier_ratios(model, self.tokenizer, self.results,
                                                   *self.owl_calibration, M=OWL_M)
            else:
                self._stats[name] = describe(model)
        return self._stats[name]

    # -- ratios ---------------------------------------------------------------------------
    def ratios(self, setting: Setting) -> tuple[pd.Series, dict | None]:
        """Per-block ratios of a setting, and the per-matrix ratios (granularity ``matrix``)."""
        table = self._stat("describe")
        n_params = table["linear_params"]
        target, method = setting.sparsity, setting.method
        if setting.allocation == "Uniform":
            return allocate.uniform_sparsity(n_params.index, target), None
        if setting.allocation == "OWL":
            return baselines.owl_sparsity(self._stat("owl"), target, OWL_LAMBDA), None
        eps = setting.epsilon
        if setting.allocation == "AlphaPruning":
            eps = EPSILON["alphapruning"][method] if eps is None else eps
            return baselines.alphapruning_sparsity(self._stat("alpha"), target, n_params, eps), None
        if setting.granularity == "matrix":
            ratios = self.matrix_ratios(setting)
            sizes = self.matrix_sizes(ratios.columns)
            paths = table["path"]
            mapping = {f"{paths[layer]}.{module}": float(ratios.at[layer, module])
                       for layer in ratios.index for module in ratios.columns}
            block = (ratios * sizes).sum(axis=1) / sizes.sum(axis=1)
            return block.rename("sparsity"), mapping
        eps = EPSILON["layerif"][method] if eps is None else eps
        scores = load_scores(self.results, self.model_name, setting.scores, "datainf")
        block = scores.aggregate(setting.aggregation)
        return allocate.sparsity(block, target, n_params, eps, smooth=setting.smooth), None

    def matrix_ratios(self, setting: Setting) -> pd.DataFrame:
        """LayerIF's per-matrix sparsities of a ``granularity="matrix"`` setting (layer x module)."""
        eps = EPSILON["layerif"][setting.method] if setting.epsilon is None else setting.epsilon
        scores = load_scores(self.results, self.model_name, setting.scores, "datainf")
        per = scores.per_matrix(setting.aggregation).drop(columns="path")
        return matrix_sparsity(per, setting.sparsity, self.matrix_sizes(per.columns), eps,
                               smooth=setting.smooth)

    def matrix_sizes(self, modules) -> pd.DataFrame:
        """Parameters of each linear matrix: index layer, one column per module name."""
        rows = {}
        for layer, (_, block) in enumerate(transformer_blocks(self.model())):
            named = dict(linear_modules(block))
            rows[layer] = {m: named[m].weight.numel() for m in modules}
        return pd.DataFrame.from_dict(rows, orient="index")[list(modules)].rename_axis("layer")

    # -- one setting ----------------------------------------------------------------------
    def identity(self, setting: Setting, ratios: pd.Series | None, per_matrix: dict | None) -> dict:
        """The store identity of a setting's evaluation."""
        prune = None
        if setting.method != DENSE:
            prune = self.prune_config.replace(method=setting.method).identity()
        config = {"setting": dataclasses.asdict(setting), "prune": prune,
                  "evaluation": self.eval_config.identity(),
                  "ratios": None if ratios is None else [round(float(r), 12) for r in ratios],
                  "per_matrix": None if per_matrix is None else
                  {k: round(v, 12) for k, v in per_matrix.items()}}
        data = {"examples": examples_fingerprint(self.examples()),
                "perplexity": "boolq passages (layerif.data.perplexity_tokens, seed 0)"}
        if setting.layerif:
            data["scores"] = fingerprint(self.results, self.model_name, [setting.scores])
        return store.identity(KIND, config, self.model_name, data)

    def folder(self, setting: Setting) -> Path:
        """``<results>/pruning/<model>/<evaluation>/<method>/<setting>``: one folder per
        evaluation config (``paper7-n20-ppl12x256``, ``arc_easy-n80-ppl12x256``), so that
        evaluations of the same pruned model on other examples sit side by side."""
        e = self.eval_config
        tasks = "paper7" if e.tasks == PAPER_TASKS else "+".join(e.tasks) or "ppl-only"
        name = f"{tasks}-n{e.n_examples or 'all'}-ppl{e.ppl_samples}x{e.ppl_len}"
        if e.split != "test":
            name += f"-{e.split}"
        return (self.results / "pruning" / slug(self.model_name) / slug(name) / setting.method
                / setting.folder())

    def evaluate(self, setting: Setting, overwrite: bool = False) -> tuple[Evaluation, dict]:
        """The evaluation of one setting (loaded when saved with the same identity).

        Returns:
            ``(evaluation, info)``; info holds the achieved global sparsity, the per-block
            ratios, the pruning and evaluation seconds, and whether it was loaded.
        """
        ratios, per_matrix = (None, None) if setting.method == DENSE else self.ratios(setting)
        ident = self.identity(setting, ratios, per_matrix)
        folder = self.folder(setting)
        if not overwrite:
            manifest = store.load_if_matching(folder, ident)
            if manifest is not None:
                frame = store.load_frame(folder)
                return Evaluation(frame, manifest["extra"]["perplexity"]), {**manifest["extra"],
                                                                             "status": "loaded"}
        model = self._restore()
        calibration, ppl_tokens = self._tokens()
        start = time.perf_counter()
        achieved = 0.0
        if setting.method != DENSE:
            config = self.prune_config.replace(method=setting.method)
            report = prune_model(model, config, ratios, calibration, per_matrix=per_matrix,
                                 progress=False)
            achieved = report.attrs["global_sparsity"]
        pruned = time.perf_counter()
        result = evaluate_suite(model, self.tokenizer, self.eval_config, self.examples(),
                                ppl_tokens, progress=False)
        extra = {"perplexity": result.perplexity, "global_sparsity": achieved,
                 "ratios": None if ratios is None else [float(r) for r in ratios],
                 "prune_seconds": round(pruned - start, 2),
                 "eval_seconds": round(time.perf_counter() - pruned, 2), "label": setting.label()}
        store.save_frame(folder, result.examples, ident, extra=extra, overwrite=overwrite)
        return result, {**extra, "status": "computed"}

    def evaluate_all(self, settings, overwrite: bool = False) -> dict[Setting, Evaluation]:
        """:meth:`evaluate` for each setting, with a progress bar; also fills :attr:`log`."""
        out, log = {}, []
        bar = tqdm(list(settings), desc=f"{self.model_name}: pruned models", disable=not self.progress)
        for setting in bar:
            bar.set_postfix_str(f"{setting.method} {setting.label()} {setting.sparsity:g}")
            out[setting], info = self.evaluate(setting, overwrite)
            log.append({**dataclasses.asdict(setting), "label": setting.label(),
                        **{k: info[k] for k in ("status", "perplexity", "global_sparsity",
                                                "prune_seconds", "eval_seconds")}})
        self.log = pd.DataFrame(log)
        return out


def grid(methods, allocations=ALLOCATIONS, sparsities=(0.5,), dense: bool = True,
         **variant) -> list[Setting]:
    """Every (method, allocation, sparsity) setting, plus the dense model first if ``dense``;
    ``variant`` sets the other :class:`Setting` fields of all of them."""
    out = [Setting(DENSE)] if dense else []
    out += [Setting(m, a, float(s), **variant) for s in sparsities for m in methods for a in allocations]
    return out


def score_for_pruning(results: str | Path, model_name: str, tasks, n_train: int, n_val: int,
                      modules: str = "attention", tag: str | None = None, max_length: int = 128,
                      batch_size: int = 8, progress: bool = True) -> pd.DataFrame:
    """DataInf scores of pruning tasks (zero-shot format) in notebook 01's layout, computed
    only when not saved: each task's own scores (task-specific pruning) or the pool's scores
    of all seven linear matrices (``modules="all"``, ``tag="all-linear"``; granularity)."""
    config = ScoreConfig(n_train=n_train, n_val=n_val, max_length=max_length,
                         batch_size=batch_size, modules=modules, memory_budget_gb=8.0)
    return score_tasks(model_name, tasks, config, results, methods=("datainf",), template=None,
                       progress=progress, tag=tag)
