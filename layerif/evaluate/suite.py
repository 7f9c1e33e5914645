"""One evaluation of a language model for the pruning study: zero-shot tasks plus perplexity.

:class:`EvalConfig` fixes what is evaluated (tasks, examples per task, perplexity windows) so
that every model of a comparison is scored on the *same* examples; :func:`evaluate_suite`
returns the per-example results (correctness and the gold choice's log-likelihood margin: the
units of the paired tests on accuracy and margin) with the perplexity and its per-window NLL
sums (the unit of the paired per-window test).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import pandas as pd

from .._config import ConfigBase, check, field
from ..models import finite_parameters
from .perplexity import perplexity
from .zero_shot import PAPER_TASKS, zero_shot
from .zero_shot import summarize as summarize_task

__all__ = ["EvalConfig", "Evaluation", "evaluate_suite", "examples_fingerprint", "summarize",
           "task_examples"]

BACKENDS = ("layerif", "lm-eval")


def _positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


@dataclass
class EvalConfig(ConfigBase):
    """What a pruned (or dense) model is evaluated on; every model of a study shares one."""

    tasks: tuple = field(PAPER_TASKS, help="zero-shot tasks (registry names); the paper's seven "
                         "by default (boolq, hellaswag, winogrande, arc_easy, arc_challenge, rte, "
                         "openbookqa); empty: perplexity only")
    n_examples: int | None = field(None, help="first n examples of each task's held-out split "
                                   "(seeded order of layerif.data.load_task); None: all")
    split: str = field("test", help="registry split scored (the held-out one lm-eval scores)")
    ppl_samples: int = field(32, help="perplexity windows of held-out BoolQ passages")
    ppl_len: int = field(256, help="tokens per perplexity window")
    batch_size: int = field(8, help="sequences per forward pass", runtime=True)
    backend: str = field("layerif", help="layerif (cached-context scorer) | lm-eval (stock "
                         "lm-evaluation-harness); equal log-likelihoods to 1e-4", runtime=True)

    def __post_init__(self):
        if isinstance(self.tasks, str):
            self.tasks = (self.tasks,)
        self.tasks = tuple(self.tasks)
        from ..data import list_tasks

        known = list_tasks(include_hub=True)
        unknown = [t for t in self.tasks if t not in known]
        check(not unknown, "tasks", unknown, f"task names from {', '.join(known)} (an empty "
              "sequence: perplexity only)")
        check(self.n_examples is None or _positive_int(self.n_examples), "n_examples",
              self.n_examples, "a positive int or None")
        check(self.split in ("train", "validation", "test"), "split", self.split,
              "'train', 'validation' or 'test'")
        check(_positive_int(self.ppl_samples), "ppl_samples", self.ppl_samples, "a positive int")
        check(_positive_int(self.ppl_len) and self.ppl_len >= 2, "ppl_len", self.ppl_len,
              "an int >= 2")
        check(_positive_int(self.batch_size), "batch_size", self.batch_size, "a positive int")
        check(self.backend in BACKENDS, "backend", self.backend, f"one of {BACKENDS}")

    @classmethod
    def smoke(cls) -> "EvalConfig":
        """Seconds: 4 examples of each task, 4 x 64 perplexity tokens."""
        return cls(n_examples=4, ppl_samples=4, ppl_len=64)

    @classmethod
    def paper(cls) -> "EvalConfig":
        """The authors' setting: every held-out example (lm-eval's full test sets)."""
        return cls(n_examples=None, ppl_samples=128, ppl_len=2048)


@dataclass
class Evaluation:
    """One model's evaluation.

    Attributes:
        examples: one row per (task, id): label, prediction, correct, margin (the gold
            choice's log-likelihood minus the best other choice's), ``ll_*``, ...
        perplexity: on the held-out windows.
        windows: one row per perplexity window (index ``window``): ``nll_sum`` and
            ``n_tokens`` (:func:`layerif.evaluate.perplexity.window_nll`), the unit of the
            paired per-window test (:func:`layerif.stats.paired_nll`); ``None`` for an
            evaluation saved before windows were kept.
    """

    examples: pd.DataFrame
    perplexity: float
    windows: pd.DataFrame | None = None

    def summary(self) -> pd.DataFrame:
        """Per task: acc, margin (with standard errors), chance, majority, n."""
        return summarize(self.examples)

    def saved_extra(self) -> dict:
        """What a result folder keeps beside :attr:`examples` (its manifest's ``extra``, not
        its identity): the perplexity and, when present, the windows as two lists."""
        out = {"perplexity": float(self.perplexity)}
        if self.windows is not None:
            out["windows"] = {"nll_sum": [float(v) for v in self.windows["nll_sum"]],
                              "n_tokens": [int(v) for v in self.windows["n_tokens"]]}
        return out

    @classmethod
    def from_saved(cls, examples: pd.DataFrame, extra: dict) -> "Evaluation":
        """The evaluation back from its examples and :meth:`saved_extra` (other keys of
        ``extra`` are ignored; without ``windows``, as saved before they were kept, the
        windows are ``None``)."""
        check(isinstance(extra, dict) and "perplexity" in extra, "extra", extra,
              "a dict with a 'perplexity' entry (Evaluation.saved_extra)")
        saved = extra.get("windows")
        windows = None
        if saved is not None:
            windows = pd.DataFrame({"nll_sum": pd.Series(saved["nll_sum"], dtype="float64"),
                                    "n_tokens": pd.Series(saved["n_tokens"], dtype="int64")})
            windows.index = pd.RangeIndex(len(windows), name="window")
        return cls(examples, float(extra["perplexity"]), windows)


def summarize(examples: pd.DataFrame) -> pd.DataFrame:
    """Per task (rows of a ``(task, id)``-indexed per-example frame): the columns of
    :func:`layerif.evaluate.zero_shot.summarize` -- acc, margin and their standard errors,
    chance, majority, n."""
    rows = {task: summarize_task(ex) for task, ex in examples.groupby(level="task", sort=False)}
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("task")


def task_examples(config: EvalConfig) -> dict[str, list]:
    """The examples :func:`evaluate_suite` scores, by task."""
    from ..data import load_task

    return {t: list(load_task(t, config.split, n=config.n_examples)) for t in config.tasks}


def examples_fingerprint(examples: dict[str, list]) -> dict[str, str]:
    """sha256 (16 hex digits) of each task's example ids, prompts and choices, in order."""
    out = {}
    for task, exs in examples.items():
        payload = [[str(e.id), e.prompt, list(e.choices), int(e.label)] for e in exs]
        out[task] = hashlib.sha256(json.dumps(payload).encode()).hexdigest()[:16]
    return out


def evaluate_suite(model, tokenizer, config: EvalConfig, examples: dict[str, list] | None = None,
                   ppl_tokens=None, progress: bool = True) -> Evaluation:
    """Zero-shot per-example results and perplexity of ``model`` under ``config``.

    The per-window NLL sums are an output (:attr:`Evaluation.windows`), not part of what is
    evaluated: the config, and so a saved result's identity, does not change with them.

    Args:
        model, tokenizer: a causal LM (dense or pruned) and its tokenizer.
        config: the evaluation's sizes.
        examples: the tasks' examples, if already loaded (:func:`task_examples`).
        ppl_tokens: the perplexity windows, if already drawn.
        progress: progress bars.

    In a process group (torchrun) the ``"layerif"`` backend and the perplexity shard their
    examples and windows across the ranks; every rank returns the whole evaluation.
    """
    from ..data import perplexity_tokens

    check(isinstance(config, EvalConfig), "config", config, "an EvalConfig")
    examples = task_examples(config) if examples is None else examples
    if ppl_tokens is None:
        ppl_tokens = perplexity_tokens(tokenizer, config.ppl_samples, config.ppl_len)
    per_example = pd.DataFrame()
    with finite_parameters(model):  # one scan of the weights for the tasks and the perplexity
        if examples:
            _, per_example = zero_shot(model, tokenizer, examples, batch_size=config.batch_size,
                                       backend=config.backend, per_example=True, progress=progress)
        ppl, windows = perplexity(model, ppl_tokens, batch_size=config.batch_size,
                                  progress=progress, per_window=True)
    return Evaluation(per_example, ppl, windows)
