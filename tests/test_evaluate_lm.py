"""Perplexity and lm-eval zero-shot on the in-memory tiny Llama, against hand computations."""
import math
from dataclasses import dataclass

import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from layerif.evaluate.perplexity import perplexity
from layerif.evaluate.zero_shot import lm_eval_task, zero_shot
from layerif.prune import PruneConfig, prune_model


@dataclass
class _Example:
    """Same fields as layerif.data.Example (zero_shot only reads the attributes)."""

    id: str
    prompt: str
    choices: list
    label: int
    text: str


def test_perplexity_equals_exp_of_hf_mean_loss(tiny64):
    model, _ = tiny64
    tokens = torch.randint(4, 104, (5, 17), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():  # HF's own shifted loss, one row at a time (rows have equal length)
        losses = [float(model(input_ids=row[None], labels=row[None]).loss) for row in tokens]
    want = math.exp(sum(losses) / len(losses))
    # HF upcasts logits to float32 for its loss, hence rel=1e-6 on a float64 model.
    assert perplexity(model, tokens, batch_size=2, progress=False) == pytest.approx(want, rel=1e-6)
    assert perplexity(model, tokens, batch_size=8, progress=False) == pytest.approx(want, rel=1e-6)


def test_perplexity_rejects_bad_tokens(tiny):
    model, _ = tiny
    with pytest.raises(ValueError, match="tokens of shape"):
        perplexity(model, torch.ones(3, 1, dtype=torch.long))
    with pytest.raises(ValueError, match="tokens of shape"):
        perplexity(model, torch.ones(2, 5))


def _examples():
    # Choices of very different lengths so that acc and acc_norm can disagree.
    specs = [
        ("The sky is", ["blue", "a green field of grass", "red"], 0),
        ("2 + 2 =", ["4", "five", "twenty-two"], 0),
        ("Cats say", ["moo", "meow meow"], 1),
        ("Water is", ["dry", "wet and cold", "hot"], 1),
        ("Q: capital of France?\nA:", ["Paris", "Berlin", "a big city in Spain"], 0),
        ("Fire is", ["cold", "hot"], 1),
        ("Snow is", ["white", "black as night", "green"], 0),
        ("One, two,", ["three", "ten", "nine hundred"], 0),
    ]
    return [_Example(str(i), p, c, y, f"{p} {c[y]}") for i, (p, c, y) in enumerate(specs)]


def _hand_scores(model, tokenizer, examples):
    """acc / acc_norm from summed log-probs of ' ' + choice after the prompt (BOS prepended)."""
    acc, acc_norm = [], []
    with torch.no_grad():
        for ex in examples:
            lls = []
            for choice in ex.choices:
                ids = tokenizer(ex.prompt + " " + choice, return_tensors="pt").input_ids
                n_cont = len(" " + choice)  # one token per character
                logp = F.log_softmax(model(input_ids=ids).logits[0, :-1].double(), -1)
                target = ids[0, 1:]
                lls.append(float(logp[-n_cont:].gather(1, target[-n_cont:, None]).sum()))
            acc.append(float(max(range(len(lls)), key=lls.__getitem__) == ex.label))
            normed = [ll / len(c) for ll, c in zip(lls, ex.choices)]
            acc_norm.append(float(max(range(len(normed)), key=normed.__getitem__) == ex.label))
    return acc, acc_norm


def _stderr(xs):
    mean = sum(xs) / len(xs)
    return math.sqrt(sum((x - mean) ** 2 for x in xs) / (len(xs) - 1) / len(xs))


def test_zero_shot_on_pruned_in_memory_model_matches_hand_ranking(tiny):
    model, tokenizer = tiny
    calibration = torch.randint(4, 104, (4, 16), generator=torch.Generator().manual_seed(0))
    prune_model(model, PruneConfig(method="wanda", n_samples=4, seq_len=16), 0.5, calibration,
                progress=False)
    examples = _examples()
    # Two tasks in one run, and limit=6 cuts the first to its first 6 examples.
    table = zero_shot(model, tokenizer, {"toy": examples, "toy_head": examples[:5]}, limit=6, batch_size=3,
                      backend="lm-eval")
    acc, acc_norm = _hand_scores(model, tokenizer, examples)
    assert list(table.index) == ["toy", "toy_head"]
    assert table.loc["toy", "n"] == 6 and table.loc["toy_head", "n"] == 5
    assert table.loc["toy", "acc"] == pytest.approx(sum(acc[:6]) / 6)
    assert table.loc["toy", "acc_norm"] == pytest.approx(sum(acc_norm[:6]) / 6)
    assert table.loc["toy", "acc_stderr"] == pytest.approx(_stderr(acc[:6]))
    assert table.loc["toy", "acc_norm_stderr"] == pytest.approx(_stderr(acc_norm[:6]))
    assert table.loc["toy_head", "acc"] == pytest.approx(sum(acc[:5]) / 5)
    assert table.loc["toy_head", "acc_norm"] == pytest.approx(sum(acc_norm[:5]) / 5)


def test_task_config_reads_the_separator_off_example_text():
    ex = [_Example("0", "Q?\nAnswer:", ["yes", "no"], 1, "Q?\nAnswer:\nno")]
    assert lm_eval_task("t", ex)["target_delimiter"] == "\n"
    mixed = ex + [_Example("1", "R?", ["a", "b"], 0, "R? a")]
    cfg = lm_eval_task("t", mixed)
    assert cfg["target_delimiter"] == ""
    docs = cfg["custom_dataset"]()["test"]
    assert docs[0]["choices"] == ["\nyes", "\nno"] and docs[1]["choices"] == [" a", " b"]
    # The registry's form: text = prompt + choice, choices carry the space.
    reg = [_Example("0", "Q?", [" yes", " no"], 0, "Q? yes")]
    cfg = lm_eval_task("t", reg)
    assert cfg["target_delimiter"] == " " and cfg["custom_dataset"]()["test"][0]["choices"] == ["yes", "no"]
    with pytest.raises(ValueError, match="label=2"):
        lm_eval_task("t", [_Example("0", "Q", ["a", "b"], 2, "Q a")])
    with pytest.raises(ValueError, match="empty"):
        lm_eval_task("t", [])
