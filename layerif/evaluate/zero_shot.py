"""Zero-shot multiple-choice accuracy, fully offline: our one-pass scorer or stock lm-eval.

Scoring is lm-eval's ``multiple_choice``: the log-likelihood of each choice given the
prompt; ``acc`` takes the arg-max, ``acc_norm`` the arg-max after dividing by the choice's
length in characters. Two backends compute it:

* ``"layerif"`` (default): :func:`layerif.evaluate.choices.choice_logliks`, lm-eval's exact
  token ids but each context and each continuation run once (a shared key/value cache).
* ``"lm-eval"``: stock lm-evaluation-harness, the reference. The model is evaluated in memory
  (``HFLM(pretrained=<model>, tokenizer=...)``, no save and reload) and each task is an
  lm-eval task config built in Python from our task registry (:func:`layerif.data.load_task`):
  a ``custom_dataset`` callable hands lm-eval the examples, so no YAML file,
  working-directory path or hub download is involved, and
  ``TaskManager(include_defaults=False)`` keeps lm-eval's own task index out of the way.

Both read the separator and choice texts from
:func:`layerif.evaluate.choices.lm_eval_docs`.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from torch import nn

from ..models import check_finite_parameters, eval_mode, finite_parameters
from .choices import choice_frame, choice_logliks, lm_eval_docs

__all__ = ["BACKENDS", "PAPER_TASKS", "lm_eval_task", "summarize", "zero_shot"]

# The paper's zero-shot tasks (Table 2).
PAPER_TASKS = ("boolq", "hellaswag", "winogrande", "arc_easy", "arc_challenge", "rte", "openbookqa")


def lm_eval_task(name: str, examples: Sequence) -> dict:
    """An lm-eval ``multiple_choice`` task config (a dict) over in-memory examples.

    Args:
        name: task name (lm-eval's task key is ``"layerif_" + name``).
        examples: objects with ``prompt: str``, ``choices: list[str]``, ``label: int`` and
            optionally ``text`` (``prompt + separator + gold choice``, which fixes the
            separator; ``" "`` otherwise), e.g. :class:`layerif.data.Example`. The separator
            and choice texts are :func:`layerif.evaluate.choices.lm_eval_docs`'s.

    Returns:
        A config dict accepted by ``lm_eval.tasks.TaskManager.load``.

    Raises:
        ValueError: no examples, or an example whose label does not index its choices.
    """
    sep, docs = lm_eval_docs(examples, name)

    def dataset(**_):
        import datasets

        return datasets.DatasetDict({"test": datasets.Dataset.from_list(docs)})

    return {
        "task": f"layerif_{name}",
        "custom_dataset": dataset,
        "test_split": "test",
        "output_type": "multiple_choice",
        "doc_to_text": lambda doc: doc["prompt"],
        "doc_to_choice": lambda doc: doc["choices"],
        "doc_to_target": lambda doc: doc["label"],
        "target_delimiter": sep,
        "metric_list": [
            {"metric": "acc", "aggregation": "mean", "higher_is_better": True},
            {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True},
        ],
        "num_fewshot": 0,
        "metadata": {"version": 1.0},
    }


BACKENDS = ("layerif", "lm-eval")


def _check(backend, limit, batch_size) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r} is invalid: expected one of {BACKENDS}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit={limit!r} is invalid: expected a positive int or None")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r} is invalid: expected a positive int")


def _stderr(x: np.ndarray) -> float:
    """lm-eval's ``mean_stderr``: sample standard deviation (ddof=1) over sqrt(n)."""
    return float(np.std(x, ddof=1) / math.sqrt(len(x))) if len(x) > 1 else float("nan")


def summarize(per_example: pd.DataFrame) -> dict:
    """One task's summary row from its :func:`choice_frame` rows.

    ``acc`` / ``acc_norm`` / ``margin`` with lm-eval's standard error, ``chance`` (mean of
    1 / number of choices), ``majority`` (share of the most frequent gold index), ``n``.
    """
    row = {}
    for name, col in (("acc", "correct"), ("acc_norm", "correct_norm"), ("margin", "margin")):
        x = per_example[col].to_numpy(dtype=np.float64)
        row[name], row[f"{name}_stderr"] = float(x.mean()), _stderr(x)
    row["chance"] = float((1.0 / per_example["n_choices"]).mean())
    row["majority"] = float(per_example["label"].value_counts(normalize=True).max())
    row["n"] = len(per_example)
    return row


def _lm_eval(model, tokenizer, named, limit, batch_size, log_samples) -> dict:
    """Run stock lm-eval on the in-memory tasks; its output dict."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    configs = [lm_eval_task(name, examples) for name, examples in named.items()]
    # lm-eval warns at length about being handed a model object; that is what we intend.
    quiet = logging.getLogger("lm_eval")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with eval_mode(model):
            lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
            return simple_evaluate(
                model=lm,
                tasks=configs,
                task_manager=TaskManager(include_defaults=False),
                limit=limit,
                log_samples=log_samples,
                # > 0 or lm-eval skips standard errors; acc/acc_norm use the closed form anyway.
                bootstrap_iters=1000,
            )
    finally:
        quiet.setLevel(level)


def _lm_eval_frame(samples: list[dict]) -> pd.DataFrame:
    """Per-example frame (as :func:`choice_frame`) from lm-eval's logged samples."""
    samples = sorted(samples, key=lambda s: s["doc_id"])
    return choice_frame([s["doc"]["id"] for s in samples], [int(s["doc"]["label"]) for s in samples],
                        [[float(r[0]) for r in s["filtered_resps"]] for s in samples],
                        [[len(c) for c in s["doc"]["choices"]] for s in samples])


def zero_shot(
    model: nn.Module,
    tokenizer,
    tasks: Sequence[str] | Mapping[str, Sequence] = PAPER_TASKS,
    limit: int | None = None,
    batch_size: int = 8,
    split: str = "test",
    backend: str = "layerif",
    per_example: bool = False,
    progress: bool = True,
):
    """Zero-shot multiple-choice accuracy of an in-memory model, scored as lm-eval does.

    Args:
        model: a Hugging Face causal LM (pruned or not), already on its device.
        tokenizer: its tokenizer.
        tasks: registry task names (loaded with :func:`layerif.data.load_task`), or a
            mapping ``{name: examples}`` of in-memory examples.
        limit: score only the first ``limit`` examples of each task.
        batch_size: examples per context forward (``"layerif"``) or lm-eval's batch size.
        split: registry split for named tasks. The registry's ``"test"`` is the held-out
            split lm-eval scores: the official validation set of BoolQ, HellaSwag and
            WinoGrande, the official test set of ARC and OpenBookQA, a re-split for RTE
            (``layerif.data.task_info(name)["split_rule"]``).
        backend: ``"layerif"`` (default: :func:`~layerif.evaluate.choices.choice_logliks`,
            each context and continuation run once, lm-eval's tokenization) or ``"lm-eval"``
            (stock ``simple_evaluate``, one forward per (context, choice); the reference).
            In a process group (torchrun) ``"layerif"`` shards each task's examples across
            the ranks and every rank gets all the results; ``"lm-eval"`` is not sharded.
        per_example: also return the per-example frame.
        progress: progress bars (``"layerif"`` only).

    Returns:
        A DataFrame indexed by task with columns ``acc``, ``acc_stderr``, ``acc_norm``,
        ``acc_norm_stderr``, ``n`` (examples scored), ``margin``, ``margin_stderr`` (mean
        gold log-likelihood minus the best other choice's), ``chance`` (mean 1 / number of
        choices) and ``majority`` (share of the most frequent gold index). With
        ``per_example=True``, ``(summary, per_example)``: the :func:`choice_frame` rows of
        every task, indexed by ``(task, id)``.

    Raises:
        ValueError: empty ``tasks``, a bad ``backend``, ``limit`` or ``batch_size``.
    """
    _check(backend, limit, batch_size)
    if isinstance(tasks, str):
        tasks = [tasks]
    if not tasks:
        raise ValueError(f"tasks={tasks!r} is empty: expected task names or {{name: examples}}")
    if isinstance(tasks, Mapping):
        named = {name: list(examples) for name, examples in tasks.items()}
    else:
        from ..data import load_task

        named = {t: load_task(t, split) for t in tasks}
    frames, rows = {}, []
    if backend == "lm-eval":
        check_finite_parameters(model)  # the layerif backend checks in choice_logliks
        out = _lm_eval(model, tokenizer, named, limit, batch_size, log_samples=per_example)
        for name in named:
            res = out["results"][f"layerif_{name}"]
            row = {"acc": res["acc,none"], "acc_stderr": res["acc_stderr,none"],
                   "acc_norm": res["acc_norm,none"], "acc_norm_stderr": res["acc_norm_stderr,none"],
                   "n": out["n-samples"][f"layerif_{name}"]["effective"]}
            if per_example:
                frames[name] = _lm_eval_frame(out["samples"][f"layerif_{name}"])
                extra = summarize(frames[name])
                row.update({k: extra[k] for k in ("margin", "margin_stderr", "chance", "majority")})
            rows.append({"task": name, **row})
    else:
        with finite_parameters(model):  # one scan of the weights for all tasks
            for name, examples in named.items():
                frames[name] = choice_logliks(model, tokenizer, examples[:limit], batch_size, progress)
                rows.append({"task": name, **summarize(frames[name])})
    columns = ["acc", "acc_stderr", "acc_norm", "acc_norm_stderr", "n",
               "margin", "margin_stderr", "chance", "majority"]
    summary = pd.DataFrame(rows).set_index("task").reindex(columns=columns)
    if not per_example:
        return summary
    return summary, _concat(frames)


def _concat(frames: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Per-task frames into one indexed by (task, id), the ll_ columns in order."""
    k = max(int(f["n_choices"].max()) for f in frames.values())
    columns = ["label", "n_choices", *[f"ll_{j}" for j in range(k)],
               "prediction", "correct", "prediction_norm", "correct_norm", "margin"]
    frame = pd.concat(frames, names=["task", "id"])
    return frame.reindex(columns=columns)
