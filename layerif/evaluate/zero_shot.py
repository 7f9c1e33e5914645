"""Zero-shot multiple-choice accuracy through stock lm-evaluation-harness, fully offline.

The model is evaluated in memory (``HFLM(pretrained=<model>, tokenizer=...)``, no save and
reload) and each task is an lm-eval task config built in Python from our task registry
(:func:`layerif.data.load_task`): a ``custom_dataset`` callable hands lm-eval the examples,
so no YAML file, working-directory path or hub download is involved, and
``TaskManager(include_defaults=False)`` keeps lm-eval's own task index out of the way.

Scoring is lm-eval's ``multiple_choice``: the log-likelihood of each choice given the
prompt; ``acc`` takes the arg-max, ``acc_norm`` the arg-max after dividing by the choice's
length in characters.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import pandas as pd
from torch import nn

__all__ = ["PAPER_TASKS", "lm_eval_task", "zero_shot"]

# The paper's zero-shot tasks (Table 2).
PAPER_TASKS = ("boolq", "hellaswag", "winogrande", "arc_easy", "arc_challenge", "rte", "openbookqa")


def _delimiter(examples) -> tuple[str, bool]:
    """The text between prompt and answer, read off ``Example.text = prompt + sep + gold``.

    Returns ``(sep, uniform)``; when examples disagree, the separator goes into each choice.
    """
    seps = set()
    for ex in examples:
        gold = ex.choices[ex.label]
        text = getattr(ex, "text", None)
        if isinstance(text, str) and text.startswith(ex.prompt) and text.endswith(gold) \
                and len(text) >= len(ex.prompt) + len(gold):
            seps.add(text[len(ex.prompt):len(text) - len(gold)])
        else:
            seps.add(" ")  # lm-eval's default target_delimiter
    return (seps.pop(), True) if len(seps) == 1 else ("", False)


def lm_eval_task(name: str, examples: Sequence) -> dict:
    """An lm-eval ``multiple_choice`` task config (a dict) over in-memory examples.

    Args:
        name: task name (lm-eval's task key is ``"layerif_" + name``).
        examples: objects with ``prompt: str``, ``choices: list[str]``, ``label: int`` and
            optionally ``text`` (``prompt + separator + gold choice``, which fixes the
            separator; ``" "`` otherwise), e.g. :class:`layerif.data.Example`.

    Returns:
        A config dict accepted by ``lm_eval.tasks.TaskManager.load``.

    Raises:
        ValueError: no examples, or an example whose label does not index its choices.
    """
    examples = list(examples)
    if not examples:
        raise ValueError(f"examples for task {name!r} are empty: expected at least one example")
    for ex in examples:
        if not (isinstance(ex.label, int) and 0 <= ex.label < len(ex.choices)):
            raise ValueError(f"example {getattr(ex, 'id', ex)!r} has label={ex.label!r} outside its {len(ex.choices)} choices")
    sep, uniform = _delimiter(examples)
    strip = 0
    if uniform and sep == "" and all(c.startswith(" ") for ex in examples for c in ex.choices):
        # Our registry writes " yes"; lm-eval writes "yes" after target_delimiter " ". Same
        # scored text, but acc_norm divides by len(choice), so match lm-eval's split.
        sep, strip = " ", 1
    docs = []
    for ex in examples:
        text = getattr(ex, "text", None)
        gold = ex.choices[ex.label]
        own = text[len(ex.prompt):len(text) - len(gold)] if not uniform and isinstance(text, str) \
            and text.startswith(ex.prompt) and text.endswith(gold) else " "
        choices = [c[strip:] for c in ex.choices] if uniform else [own + c for c in ex.choices]
        docs.append({"id": str(getattr(ex, "id", len(docs))), "prompt": ex.prompt,
                     "choices": choices, "label": int(ex.label)})

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


def zero_shot(
    model: nn.Module,
    tokenizer,
    tasks: Sequence[str] | Mapping[str, Sequence] = PAPER_TASKS,
    limit: int | None = None,
    batch_size: int = 8,
    split: str = "test",
) -> pd.DataFrame:
    """Zero-shot accuracy of an in-memory model on multiple-choice tasks via lm-eval.

    Args:
        model: a Hugging Face causal LM (pruned or not), already on its device.
        tokenizer: its tokenizer.
        tasks: registry task names (loaded with :func:`layerif.data.load_task`), or a
            mapping ``{name: examples}`` of in-memory examples.
        limit: score only the first ``limit`` examples of each task.
        batch_size: lm-eval batch size.
        split: registry split for named tasks. The registry's ``"test"`` is the held-out
            split lm-eval scores: the official validation set of BoolQ, HellaSwag and
            WinoGrande, the official test set of ARC and OpenBookQA, a re-split for RTE
            (``layerif.data.task_info(name)["split_rule"]``).

    Returns:
        A DataFrame indexed by task with columns ``acc``, ``acc_stderr``, ``acc_norm``,
        ``acc_norm_stderr`` and ``n`` (examples scored).

    Raises:
        ValueError: empty ``tasks``, a bad ``limit`` or ``batch_size``.
    """
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit={limit!r} is invalid: expected a positive int or None")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r} is invalid: expected a positive int")
    if isinstance(tasks, str):
        tasks = [tasks]
    if not tasks:
        raise ValueError(f"tasks={tasks!r} is empty: expected task names or {{name: examples}}")
    if isinstance(tasks, Mapping):
        named = dict(tasks)
    else:
        from ..data import load_task

        named = {t: load_task(t, split) for t in tasks}
    configs = [lm_eval_task(name, examples) for name, examples in named.items()]

    was_training = model.training
    model.eval()
    # lm-eval warns at length about being handed a model object; that is what we intend.
    quiet = logging.getLogger("lm_eval")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
        out = simple_evaluate(
            model=lm,
            tasks=configs,
            task_manager=TaskManager(include_defaults=False),
            limit=limit,
            log_samples=False,
            # > 0 or lm-eval skips standard errors; acc/acc_norm use the closed form anyway.
            bootstrap_iters=1000,
        )
    finally:
        quiet.setLevel(level)
        model.train(was_training)

    rows = []
    for name in named:
        res = out["results"][f"layerif_{name}"]
        n = out["n-samples"][f"layerif_{name}"]["effective"]
        rows.append({"task": name, "acc": res["acc,none"], "acc_stderr": res["acc_stderr,none"],
                     "acc_norm": res["acc_norm,none"], "acc_norm_stderr": res["acc_norm_stderr,none"],
                     "n": n})
    return pd.DataFrame(rows).set_index("task")
