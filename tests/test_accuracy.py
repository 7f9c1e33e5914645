"""Accuracy: log-likelihood ranking against a per-sequence float64 reference, greedy
generation against a hand-rolled greedy loop, and the answer parser on hand-made strings."""
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from layerif.evaluate.accuracy import _context_and_continuation, accuracy, parse_answer


@dataclass
class Ex:  # the fields of layerif.data.Example that accuracy() reads
    id: str
    prompt: str
    choices: list
    label: int
    text: str


def _ex(i, prompt, choices, label, sep=" "):
    return Ex(str(i), prompt, choices, label, prompt + sep + choices[label])


def _reference_scores(model, tok, ex):
    """Sum of log p(continuation chars | prompt), one unpadded sequence per choice."""
    out = []
    for c in ex.choices:
        ctx = tok(ex.prompt)["input_ids"]
        full = tok(ex.prompt + " " + c)["input_ids"]  # char tokenizer: concatenation is exact
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([full])).logits[0], -1)
        out.append(sum(float(logp[t - 1, full[t]]) for t in range(len(ctx), len(full))))
    return out


EXAMPLES = [
    _ex(0, "Q: is the sky blue? A:", ["yes", "no"], 0),
    _ex(1, "Pick a colour:", ["red", "green", "a very long blue"], 2),
    _ex(2, "2+2=", ["4", "5", "22"], 0),
    _ex(3, "The cat", ["sat", "flew away quickly", "ran"], 1),
    _ex(4, "x", ["y", "z"], 1),
]


def test_loglik_matches_per_sequence_reference(tiny64):
    model, tok = tiny64
    res = accuracy(model, tok, EXAMPLES, method="loglik", batch_size=3, progress=False)
    ref = [_reference_scores(model, tok, ex) for ex in EXAMPLES]
    for got, want in zip(res.predictions["scores"], ref):
        assert got == pytest.approx(want, rel=1e-9, abs=1e-9)
    preds = [max(range(len(s)), key=s.__getitem__) for s in ref]
    assert res.predictions["prediction"].tolist() == preds
    expected = sum(p == ex.label for p, ex in zip(preds, EXAMPLES)) / len(EXAMPLES)
    assert res.accuracy == pytest.approx(expected)
    assert res.predictions.index.tolist() == ["0", "1", "2", "3", "4"]
    assert res.predictions.index.name == "id" and res.n_unparsed == 0


def test_loglik_accuracy_counts_correct_rankings(tiny64):
    model, tok = tiny64
    ref = [_reference_scores(model, tok, ex) for ex in EXAMPLES]
    best = [max(range(len(s)), key=s.__getitem__) for s in ref]
    # relabel: first three examples right by construction, last two wrong
    relabelled = [_ex(i, ex.prompt, ex.choices, b if i < 3 else (b + 1) % len(ex.choices))
                  for i, (ex, b) in enumerate(zip(EXAMPLES, best))]
    res = accuracy(model, tok, relabelled, progress=False)
    assert res.accuracy == pytest.approx(3 / 5)
    assert res.predictions["correct"].tolist() == [True, True, True, False, False]


def test_context_split_follows_the_example_text():
    ex = Ex("a", "Question?", ["yes", "no"], 1, "Question?\nno")
    assert _context_and_continuation(ex, "yes") == ("Question?", "\nyes")
    ex = Ex("b", "Answer: ", ["x"], 0, "Answer: x")
    assert _context_and_continuation(ex, "x") == ("Answer:", " x")
    ex = Ex("c", "Q", ["x"], 0, "unrelated")  # fall back to a single space
    assert _context_and_continuation(ex, "x") == ("Q", " x")


@pytest.mark.parametrize("text,choices,style,expected", [
    ("The answer is B.", ["p", "q", "r"], "auto", 1),
    ("Let me think. The answer is A. Done", ["p", "q"], "letter", 0),
    ("The answer is D.", ["p", "q", "r"], "auto", None),          # no fourth choice
    ("The answer is B", ["p", "q"], "letter", None),               # no full stop
    ("The answer is Bob.", ["p", "q"], "letter", None),            # not a single letter
    ("The answer is A. The answer is B.", ["p", "q"], "letter", None),  # ambiguous
    ("the answer is a.", ["p", "q"], "auto", None),                # case matters
    ("Answer: equivalent", ["not equivalent", "equivalent"], "answer", 1),
    ("Answer: not equivalent\nExplanation: ...", ["not equivalent", "equivalent"], "auto", 0),
    ("Answer:  Acceptable ", ["unacceptable", "acceptable"], "answer", 1),
    ("Answer: maybe", ["no", "yes"], "answer", None),
    ("I think yes", ["no", "yes"], "auto", None),
    ("", ["no", "yes"], "auto", None),
    ("Answer: yes. The answer is A.", ["no", "yes"], "auto", 0),   # letter pattern first
    ("Answer: yes. The answer is A.", ["no", "yes"], "answer", 1),
])
def test_parse_answer(text, choices, style, expected):
    assert parse_answer(text, choices, style) == expected


class Scripted(nn.Module):
    """Stands in for a causal LM whose ``generate`` appends a scripted answer per prompt."""

    def __init__(self, tok, answers):
        super().__init__()
        self.tok, self.answers = tok, answers
        self.w = nn.Parameter(torch.zeros(1))
        self.seen_padding_side = None

    def generate(self, input_ids, attention_mask, max_new_tokens, **kw):
        self.seen_padding_side = self.tok.padding_side
        rows = []
        for ids, mask in zip(input_ids, attention_mask):
            prompt = self.tok.decode(ids[mask.bool()], skip_special_tokens=True)
            rows.append(self.tok(self.answers[prompt], add_special_tokens=False)["input_ids"] + [2])
        width = max(len(r) for r in rows)
        new = torch.tensor([r + [0] * (width - len(r)) for r in rows])
        return torch.cat([input_ids, new], dim=1)


def test_generate_parses_scripted_outputs():
    from layerif.testing import char_tokenizer

    tok = char_tokenizer()
    exs = [Ex("m1", "Sentence pair one.\n Answer:", [" not equivalent", " equivalent"], 1, ""),
           Ex("m2", "Pair two?", ["not equivalent", "equivalent"], 0, ""),
           Ex("q1", "Which? A) x B) y", ["x", "y"], 1, ""),
           Ex("q2", "Another one", ["x", "y", "z"], 2, ""),
           Ex("q3", "Rambling", ["x", "y"], 0, "")]
    # m1: the prompt ends with "Answer:" (layerif.data's instruct templates), only the label is generated
    answers = {"Sentence pair one.\n Answer:": " equivalent", "Pair two?": "Answer: equivalent",
               "Which? A) x B) y": "The answer is B.", "Another one": "The answer is C.",
               "Rambling": "I am not sure"}
    model = Scripted(tok, answers)
    res = accuracy(model, tok, exs, method="generate", batch_size=2, progress=False)
    preds = res.predictions["prediction"]
    assert preds.iloc[:4].tolist() == [1, 1, 1, 2] and preds.isna().tolist() == [False] * 4 + [True]
    assert res.predictions["correct"].tolist() == [True, False, True, True, False]
    assert res.accuracy == pytest.approx(3 / 5) and res.n_unparsed == 1
    assert res.predictions.loc["q1", "output"] == "The answer is B."
    assert model.seen_padding_side == "left" and tok.padding_side == "right"


def test_generate_matches_a_hand_rolled_greedy_loop(tiny64):
    model, tok = tiny64
    exs = [_ex(0, "Hello, how are", ["you"], 0), _ex(1, "abc", ["d"], 0), _ex(2, "The answer is", ["A"], 0)]
    res = accuracy(model, tok, exs, method="generate", batch_size=3, max_new_tokens=6, progress=False)
    for ex, got in zip(exs, res.predictions["output"]):
        ids = tok(ex.prompt)["input_ids"]
        new = []
        with torch.no_grad():
            for _ in range(6):
                nxt = int(model(torch.tensor([ids + new])).logits[0, -1].argmax())
                new.append(nxt)
                if nxt == tok.eos_token_id:
                    break
        assert got == tok.decode(new, skip_special_tokens=True)


@pytest.mark.parametrize("kwargs,match", [
    ({"method": "sample"}, "method='sample'"), ({"batch_size": 0}, "batch_size=0"),
    ({"style": "free"}, "style='free'"),
])
def test_bad_arguments(tiny, kwargs, match):
    model, tok = tiny
    with pytest.raises(ValueError, match=match):
        accuracy(model, tok, EXAMPLES, progress=False, **kwargs)


def test_bad_label_and_empty(tiny):
    model, tok = tiny
    with pytest.raises(ValueError, match="label=3"):
        accuracy(model, tok, [Ex("z", "p", ["a", "b"], 3, "")], progress=False)
    with pytest.raises(ValueError, match="empty"):
        accuracy(model, tok, [], progress=False)
