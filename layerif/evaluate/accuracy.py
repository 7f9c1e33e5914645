"""Task accuracy of a causal LM on multiple-choice ``Example`` objects.

Two methods:

* ``"loglik"`` (default; fast, deterministic): each choice is scored by the summed
  log-likelihood of its tokens as a continuation of the prompt; the best-scoring choice is
  the prediction (lm-eval's ``acc``).
* ``"generate"``: greedy decoding from the prompt, then the authors' regex parsing
  (AlphaLoRA/LayerIF evaluation code): ``"Answer: <label words>"`` for the GLUE-style tasks,
  ``"The answer is X."`` (a capital letter, A = first choice) for multiple choice. An answer
  that does not parse, or names no choice, counts as wrong. The authors' prompts put
  "Answer:" in the generated response; ours (``layerif.data`` templates) end the prompt with
  it, so the patterns are matched on the prompt's last line followed by the generated text.

Deviations from the authors' parsing, all on the side of not crediting garbage: the letter
pattern's dot is a literal dot (unescaped in their code, so "The answer is Bob" read as B);
a letter pattern that matches more than once is unparsable (their loop silently reused the
previous example's answer); the "Answer:" words are compared to the choices after trimming
whitespace and case and cutting at the first line break (they compared the raw match).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

import pandas as pd
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .._config import check_finite
from ..models import check_finite_parameters, eval_mode, model_id
from ..tokens import collate, pad_token_id

__all__ = ["ANSWER_PATTERN", "LETTER_PATTERN", "AccuracyResult", "accuracy", "parse_answer"]

ANSWER_PATTERN = re.compile(r"Answer: ([\w\s]+)")
LETTER_PATTERN = re.compile(r"The answer is ([A-Z])\.")
METHODS = ("loglik", "generate")
STYLES = ("auto", "answer", "letter")


@dataclass
class AccuracyResult:
    """Accuracy and per-example predictions.

    Attributes:
        accuracy: share of examples predicted correctly.
        predictions: one row per example (index ``id``): ``label``, ``prediction`` (choice
            index, ``<NA>`` when unparsable), ``correct``, and ``scores`` (per-choice summed
            log-likelihoods, loglik) or ``output`` (generated text, generate).
        method: ``"loglik"`` or ``"generate"``.
        n_unparsed: generated answers that did not parse (0 for loglik).
    """

    accuracy: float
    predictions: pd.DataFrame
    method: str
    n_unparsed: int = 0

    def __repr__(self) -> str:
        return (f"AccuracyResult(accuracy={self.accuracy:.4f}, n={len(self.predictions)}, "
                f"method={self.method!r}, n_unparsed={self.n_unparsed})")


def _norm(text: str) -> str:
    return " ".join(text.strip().split("\n")[0].split()).lower()


def parse_answer(text: str, choices: Sequence[str], style: str = "auto") -> int | None:
    """The choice index named by a generated answer, or None when it does not parse.

    Args:
        text: the generated continuation.
        choices: the example's answer options (letter A is ``choices[0]``).
        style: ``"letter"`` ("The answer is X."), ``"answer"`` ("Answer: <choice text>"),
            or ``"auto"`` (letter when it matches exactly once, else answer).

    Returns:
        A choice index, or None.
    """
    if style not in STYLES:
        raise ValueError(f"style={style!r} is invalid: expected one of {STYLES}")
    if style in ("letter", "auto"):
        letters = LETTER_PATTERN.findall(text)
        if len(letters) == 1:
            index = ord(letters[0]) - ord("A")
            return index if index < len(choices) else None
        if style == "letter":
            return None
    match = ANSWER_PATTERN.search(text)
    if match is None:
        return None
    said = _norm(match.group(1))
    hits = [i for i, c in enumerate(choices) if _norm(c) == said]
    return hits[0] if len(hits) == 1 else None


def _context_and_continuation(example, choice: str) -> tuple[str, str]:
    """Split prompt/choice the way ``example.text`` joins prompt and gold answer."""
    prompt, gold, text = example.prompt, example.choices[example.label], getattr(example, "text", None)
    if text and text.startswith(prompt) and text.endswith(gold) and len(prompt) + len(gold) <= len(text):
        sep = text[len(prompt): len(text) - len(gold)]
    else:
        sep = "" if (prompt[-1:].isspace() or choice[:1].isspace()) else " "
    context, continuation = prompt, sep + choice
    # Whitespace belongs to the continuation: BPE vocabularies attach it to the next word.
    stripped = context.rstrip()
    return stripped, context[len(stripped):] + continuation


def _last_line(prompt: str) -> str:
    # Templates that end the prompt with "Answer:" leave only the label to generate; the
    # patterns are matched on the prompt's last line followed by the generated text.
    return prompt.rsplit("\n", 1)[-1]


def _device(model) -> torch.device:
    return next(model.parameters()).device


def _loglik(model, tokenizer, examples, batch_size, max_length, progress) -> list[list[float]]:
    items = []  # (example, choice, token ids, continuation length)
    for i, ex in enumerate(examples):
        for j, choice in enumerate(ex.choices):
            context, continuation = _context_and_continuation(ex, choice)
            ctx = tokenizer(context, add_special_tokens=True)["input_ids"]
            cont = tokenizer(continuation, add_special_tokens=False)["input_ids"]
            if not ctx or not cont:
                raise ValueError(f"example {getattr(ex, 'id', i)!r}: choice {choice!r} or its "
                                 "prompt tokenizes to nothing")
            ids = (ctx + cont)[-max_length:]  # left-truncate the context, keep the answer
            items.append((i, j, ids, min(len(cont), len(ids) - 1)))
    items.sort(key=lambda it: -len(it[2]))  # similar lengths together: less padding
    pad = pad_token_id(tokenizer)
    scores = [[0.0] * len(ex.choices) for ex in examples]
    device = _device(model)
    for start in tqdm(range(0, len(items), batch_size), desc="loglik", disable=not progress):
        batch = items[start: start + batch_size]
        ids, mask = collate([it[2] for it in batch], pad, device)
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
        for b, (i, j, row, n) in enumerate(batch):
            end = len(row)
            logp = F.log_softmax(logits[b, end - n - 1: end - 1].double(), dim=-1)
            target = torch.tensor(row[end - n:], device=logp.device)
            scores[i][j] = float(logp.gather(-1, target[:, None]).sum())
    return scores


def _generate(model, tokenizer, examples, batch_size, max_new_tokens, progress) -> list[str]:
    pad = pad_token_id(tokenizer)
    device, outputs, side = _device(model), [], tokenizer.padding_side
    tokenizer.padding_side = "left"  # generation continues from the last position of each row
    try:
        for start in tqdm(range(0, len(examples), batch_size), desc="generate", disable=not progress):
            prompts = [ex.prompt for ex in examples[start: start + batch_size]]
            enc = tokenizer(prompts, return_tensors="pt", padding=True).to(device)
            with torch.no_grad():
                out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                     pad_token_id=pad)
            new = out[:, enc["input_ids"].shape[1]:]
            outputs += tokenizer.batch_decode(new, skip_special_tokens=True)
    finally:
        tokenizer.padding_side = side
    return outputs


def accuracy(model, tokenizer, examples: Sequence, method: str = "loglik", batch_size: int = 8,
             *, max_length: int = 1024, max_new_tokens: int = 32, style: str = "auto",
             progress: bool = True) -> AccuracyResult:
    """Accuracy of ``model`` on ``examples`` (objects with id, prompt, choices, label, text).

    Args:
        model: a causal LM (plain, peft, or with a LoRA-MoE adapter); evaluated in eval mode.
        tokenizer: its tokenizer.
        examples: the ``layerif.data.Example`` objects to score.
        method: ``"loglik"`` (summed log-likelihood ranking) or ``"generate"`` (greedy
            decoding and regex parsing).
        batch_size: sequences per forward pass (loglik: prompt+choice pairs).
        max_length: loglik only -- longest scored sequence; longer contexts lose their start.
        max_new_tokens: generate only -- decoding budget.
        style: generate only -- answer format for :func:`parse_answer`.
        progress: show a progress bar.

    Returns:
        An :class:`AccuracyResult`.
    """
    if method not in METHODS:
        raise ValueError(f"method={method!r} is invalid: expected one of {METHODS}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r} is invalid: expected an int >= 1")
    if style not in STYLES:
        raise ValueError(f"style={style!r} is invalid: expected one of {STYLES}")
    examples = list(examples)
    if not examples:
        raise ValueError("examples is empty")
    for ex in examples:
        if not 0 <= ex.label < len(ex.choices):
            raise ValueError(f"example {getattr(ex, 'id', '?')!r}: label={ex.label!r} is invalid: "
                             f"expected an index into its {len(ex.choices)} choices")
    check_finite_parameters(model)
    with eval_mode(model):
        if method == "loglik":
            scores = _loglik(model, tokenizer, examples, batch_size, max_length, progress)
            check_finite(torch.tensor([x for s in scores for x in s], dtype=torch.float64),
                         model_id(model), "choice log-likelihoods (its logits)")
            preds = [max(range(len(s)), key=s.__getitem__) for s in scores]
            extra = {"scores": scores}
        else:
            outputs = _generate(model, tokenizer, examples, batch_size, max_new_tokens, progress)
            preds = [parse_answer(_last_line(ex.prompt) + o, ex.choices, style)
                     for o, ex in zip(outputs, examples)]
            extra = {"output": outputs}
    ids = [str(getattr(ex, "id", i)) for i, ex in enumerate(examples)]
    labels = [int(ex.label) for ex in examples]
    table = pd.DataFrame({
        "label": labels,
        "prediction": pd.array(preds, dtype="Int64"),
        "correct": [p is not None and p == y for p, y in zip(preds, labels)],
        **extra,
    }, index=pd.Index(ids, name="id"))
    n_unparsed = sum(p is None for p in preds)
    return AccuracyResult(float(table["correct"].mean()), table, method, n_unparsed)
