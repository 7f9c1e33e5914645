"""Prune and evaluate (notebooks 05, 07, 08): every pruned model's evaluation is a stored result.

A :class:`Setting` names one pruned model: pruner, sparsity allocation, global sparsity and
the allocation's variant (band half-width ``epsilon``, smoothing, which task's scores,
per-block or per-matrix granularity). :class:`PruningRun` holds what the settings of one
model share -- the dense weights (restored before each prune), the calibration and
perplexity tokens, the evaluation examples and the model statistics the baselines need --
and :meth:`PruningRun.evaluate` prunes, evaluates and saves one setting under
``<results>/pruning/<model>/<pruner>/<setting>``, or loads it when saved with the same
identity (the pruner's config, the evaluation config, the exact per-block ratios, the
example and score fingerprints) through :func:`layerif.store.cached`. A re-run therefore
computes only what is missing; under :func:`layerif.store.read_only` nothing is computed
(the model is still loaded where a setting's ratios, part of its identity, need it).
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
from ..notebook_params import load_options
from ..scores import ScoreConfig
from ..prune import PruneConfig, prune_model
from .allocation import EPSILON, block_alpha, outlier_ratios
from .scoring import POOL, fingerprint, load_scores, score_tasks

__all__ = ["ALLOCATIONS", "DENSE", "KIND", "PruningRun", "Setting", "evaluate_models", "from_params",
           "grid", "log", "score_for_pruning", "seconds", "sizes", "task_specific_settings",
           "window_evaluations"]

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
        return store.slug(f"{self.label()} s{self.sparsity:g}".lower().replace(" ", "-")
                    .replace("(", "").replace(")", "").replace(",", ""))


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
        load_kwargs: more arguments of :func:`layerif.load_model` (the model's ``dtype``:
            :func:`layerif.notebook_params.load_options`).
    """

    def __init__(self, results: str | Path, model_name: str, prune: PruneConfig,
                 evaluation: EvalConfig, owl_calibration=(32, 256), device: str = "auto",
                 progress: bool = True, load_kwargs: dict | None = None):
        self.results, self.model_name = Path(results), model_name
        self.load_kwargs = dict(load_kwargs or {})
        self.prune_config, self.eval_config = prune, evaluation
        self.owl_calibration = tuple(owl_calibration)
        self.device, self.progress = device, progress
        self._model = self._dense = self._calibration = self._ppl = None
        self._examples = None
        self._stats: dict = {}

    # -- lazily loaded shared state -------------------------------------------------------
    def model(self):
        if self._model is None:
            self._model, self.tokenizer = load_model(self.model_name, device=self.device, **self.load_kwargs)
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
        return allocate.matrix_sparsity(per, setting.sparsity, self.matrix_sizes(per.columns), eps,
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
        """The store identity of a setting's evaluation (with the model's ``load_kwargs``
        dtype when not float32)."""
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
        return store.identity(KIND, config, self.model_name, data,
                              dtype=self.load_kwargs.get("dtype"))

    def folder(self, setting: Setting) -> Path:
        """``<results>/pruning/<model>/<evaluation>/<method>/<setting>``: one folder per
        evaluation config (``paper7-n20-ppl12x256``, ``arc_easy-n80-ppl12x256``), so that
        evaluations of the same pruned model on other examples sit side by side."""
        e = self.eval_config
        tasks = "paper7" if e.tasks == PAPER_TASKS else "+".join(e.tasks)
        name = (f"{tasks}-n{e.n_examples or 'all'}-" if tasks else "ppl-only-") + f"ppl{e.ppl_samples}x{e.ppl_len}"
        if e.split != "test":
            name += f"-{e.split}"
        return (self.results / "pruning" / store.slug(self.model_name) / store.slug(name)
                / setting.method / setting.folder())

    def evaluate(self, setting: Setting, overwrite: bool = False) -> tuple[Evaluation, dict]:
        """The evaluation of one setting (loaded when saved with the same identity).

        Returns:
            ``(evaluation, info)``; info holds the achieved global sparsity, the per-block
            ratios and the pruning and evaluation seconds of the run that computed it.
        """
        ratios, per_matrix = (None, None) if setting.method == DENSE else self.ratios(setting)
        return store.cached(self.folder(setting), self.identity(setting, ratios, per_matrix),
                            lambda: self._compute(setting, ratios, per_matrix),
                            overwrite=overwrite, load=_load, save_as=_save)

    def _compute(self, setting: Setting, ratios, per_matrix) -> tuple[Evaluation, dict]:
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
        return result, {**result.saved_extra(), "global_sparsity": achieved,
                        "ratios": None if ratios is None else [float(r) for r in ratios],
                        "prune_seconds": round(pruned - start, 2),
                        "eval_seconds": round(time.perf_counter() - pruned, 2),
                        "label": setting.label()}

    def evaluate_all(self, settings, overwrite: bool = False) -> dict[Setting, Evaluation]:
        """:meth:`evaluate` for each setting, with a progress bar; also fills :attr:`log`."""
        out, log = {}, []
        bar = tqdm(list(settings), desc=f"{self.model_name}: pruned models", disable=not self.progress)
        for setting in bar:
            bar.set_postfix_str(f"{setting.method} {setting.label()} {setting.sparsity:g}")
            out[setting], info = self.evaluate(setting, overwrite)
            log.append({**dataclasses.asdict(setting), "label": setting.label(),
                        **{k: info[k] for k in ("perplexity", "global_sparsity", "prune_seconds",
                                                "eval_seconds")}})
        self.log = pd.DataFrame(log)
        return out


def _load(folder: Path) -> tuple[Evaluation, dict]:
    extra = store.load_manifest(folder)["extra"]
    return Evaluation.from_saved(store.load_frame(folder), extra), extra


def _save(folder: Path, value: tuple[Evaluation, dict], ident: dict, extra, overwrite: bool):
    """The per-example frame; its log-likelihood columns ``ll_*`` are NaN past an example's
    choices (BoolQ's two of ARC's four)."""
    examples, info = value[0].examples, value[1]
    store.save_frame(folder, examples, ident, extra=info, overwrite=overwrite,
                     allow_nonfinite=[c for c in examples.columns if str(c).startswith("ll_")])


def from_params(results: str | Path, model_name: str, params: dict, **evaluation) -> PruningRun:
    """A pruning notebook's :class:`PruningRun` of one model from its ``prune``, ``evaluation``
    (fields replaced by ``evaluation``), ``owl_calibration`` and ``model_dtype``
    (:func:`layerif.notebook_params.load_options`) parameters."""
    eval_config = EvalConfig(**params["evaluation"])
    return PruningRun(results, model_name, PruneConfig(**params["prune"]),
                      eval_config.replace(**evaluation) if evaluation else eval_config,
                      params.get("owl_calibration", (32, 256)), load_kwargs=load_options(params))


def window_evaluations(results: str | Path, model_name: str, params: dict, settings,
                       evals: dict | None = None) -> dict:
    """{Setting: Evaluation} of ``settings`` on the ``nll`` perplexity windows of ``params``
    (``ppl_samples`` x ``ppl_len``), the unit of the paired per-window NLL test: where they are
    the evaluation's own windows and ``evals`` kept them, those evaluations; otherwise each
    setting evaluated on perplexity only (a stored result beside the zero-shot ones)."""
    e, nll = EvalConfig(**params["evaluation"]), params["nll"]
    if (evals is not None and (e.ppl_samples, e.ppl_len) == (nll["ppl_samples"], nll["ppl_len"])
            and all(s in evals and evals[s].windows is not None for s in settings)):
        return {s: evals[s] for s in settings}
    return from_params(results, model_name, params, tasks=(), **nll).evaluate_all(settings)


def evaluate_models(results: str | Path, params: dict, models, settings) -> tuple[dict, dict]:
    """``({model: PruningRun}, {model: {Setting: Evaluation}})`` of a pruning notebook;
    ``settings(model)`` lists the settings of each model."""
    runs = {m: from_params(results, m, params) for m in models}
    return runs, {m: run.evaluate_all(settings(m)) for m, run in runs.items()}


def log(runs: dict) -> pd.DataFrame:
    """Every setting's :attr:`PruningRun.log` row (achieved sparsity, perplexity, seconds), by model."""
    return pd.concat({m: r.log for m, r in runs.items()}, names=["model"])


def seconds(log: pd.DataFrame) -> pd.DataFrame:
    """Per model: the pruning and evaluation seconds of its settings (:func:`log`), summed as
    measured by the runs that computed them (the cold cost; a re-run loads them)."""
    return log.groupby("model", sort=False)[["prune_seconds", "eval_seconds"]].sum().round(0)


def sizes(params: dict) -> str:
    """The sizes sentence of a pruning notebook (calibration, examples, perplexity text)."""
    prune, e = PruneConfig(**params["prune"]), EvalConfig(**params["evaluation"])
    return (f"calibration {prune.n_samples} x {prune.seq_len} tokens; {e.n_examples or 'all'} "
            f"examples per task; perplexity on {e.ppl_samples} x {e.ppl_len} tokens")


def task_specific_settings(params: dict, task: str) -> list[Setting]:
    """Notebook 05's ``task_specific`` settings of one task: its pruner at ``sparsity`` with
    the task's own scores, with the pooled scores, and uniform (in that order)."""
    ts, sp = params["task_specific"], params["sparsity"]
    return [Setting(ts["method"], "LayerIF", sp, scores=task), Setting(ts["method"], "LayerIF", sp),
            Setting(ts["method"], "Uniform", sp)]


def grid(methods, allocations=ALLOCATIONS, sparsities=(0.5,), dense: bool = True,
         **variant) -> list[Setting]:
    """Every (method, allocation, sparsity) setting, plus the dense model first if ``dense``;
    ``variant`` sets the other :class:`Setting` fields of all of them."""
    out = [Setting(DENSE)] if dense else []
    out += [Setting(m, a, float(s), **variant) for s in sparsities for m in methods for a in allocations]
    return out


def score_for_pruning(results: str | Path, model_name: str, tasks, n_train: int, n_val: int,
                      modules: str = "attention", tag: str | None = None, max_length: int = 128,
                      batch_size: int = 8, progress: bool = True,
                      load_kwargs: dict | None = None) -> pd.DataFrame:
    """DataInf scores of pruning tasks (zero-shot format) in notebook 01's layout, computed
    only when not saved: each task's own scores (task-specific pruning) or the pool's scores
    of all seven linear matrices (``modules="all"``, ``tag="all-linear"``; granularity).
    ``load_kwargs``: more arguments of :func:`layerif.load_model` (the model's ``dtype``)."""
    config = ScoreConfig(n_train=n_train, n_val=n_val, max_length=max_length,
                         batch_size=batch_size, modules=modules, memory_budget_gb=8.0)
    return score_tasks(model_name, tasks, config, results, methods=("datainf",), template=None,
                       progress=progress, tag=tag, load_kwargs=load_kwargs)
