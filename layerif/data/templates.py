"""Every prompt template of the task registry, in one place.

A template turns a task *record* (the normalised fields of one source row, see
``registry.py``) into ``(prompt, choices)``; the gold index is the record's ``label``.

The one rule for all templates: **every choice carries its own leading delimiter** (a single
space, lm-eval's ``target_delimiter``), so an example's causal-LM text is exactly
``prompt + choices[label]`` and a log-likelihood scorer scores ``choices[i]`` given ``prompt``
with no glue of its own.

Two families:

``zeroshot``
    lm-eval (v0.4) zero-shot formats, the ones AlphaPruning/OWL/Wanda report on. Where lm-eval
    has no format for a task (CommonsenseQA), the OLMES ranked-classification format is used.
    WinoGrande is approximated, see :func:`_winogrande`.
``instruct``
    The MoE fine-tuning format of MoLA/AlphaLoRA, which LayerIF follows: an instruction block
    ending in a newline, then the authors' ``instruction + " " + output`` concatenation with
    ``output = "Answer: <label words>"`` for GLUE tasks and ``"Answer: The answer is <letter>."``
    for multiple-choice QA (the letter format of MoLA's ScienceQA preparation, options written
    ``(A) x (B) y``). That concatenation is why these prompts end in ``"\\n Answer:"`` (with the
    space): the texts the authors trained and computed influence on look exactly like this.
    SST-2 stands in for CoLA offline; its instruction names SST-2's own classes (positive /
    negative) rather than pretending to be an acceptability judgement.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

__all__ = ["TEMPLATES", "Template", "letters"]

Record = dict[str, Any]


@dataclass(frozen=True)
class Template:
    """One prompt format: ``render(record) -> (prompt, choices)``; ``doc`` shows its shape."""

    name: str
    doc: str
    render: Callable[[Record], tuple[str, list[str]]]


def letters(n: int) -> list[str]:
    """``["A", "B", ...]``: option letters of the instruct QA format."""
    return [chr(ord("A") + i) for i in range(n)]


def _options(choices: list[str]) -> str:
    return " ".join(f"({k}) {c}" for k, c in zip(letters(len(choices)), choices))


def _answer_letters(n: int) -> list[str]:
    return [f" The answer is {k}." for k in letters(n)]


def _spaced(items: list[str]) -> list[str]:
    return [" " + c for c in items]


# --- zero-shot (lm-eval) -------------------------------------------------------------------

def _boolq(r: Record):
    return f"{r['passage']}\nQuestion: {r['question']}?\nAnswer:", [" no", " yes"]


def _hellaswag(r: Record):
    return r["ctx"], _spaced(r["endings"])


def _winogrande(r: Record):
    """lm-eval scores WinoGrande by *partial evaluation*: the words after the blank, given the
    sentence up to the blank with each option filled in, i.e. one prompt per choice. A single
    shared prompt cannot express that, so here the prompt is the text before the blank and
    each choice is ``option + rest of sentence``. Then
    ``log p(choice | prompt) = log p(option | prefix) + log p(rest | prefix, option)``: the
    partial score plus the option's own likelihood (which the partial score leaves out).
    ``prompt + choice`` is the filled-in sentence, as the ``text`` rule requires."""
    sentence = r["sentence"]
    blank = sentence.index("_")
    head, tail = sentence[:blank], sentence[blank + 1:]
    prompt = head.rstrip()
    sep = head[len(prompt):]  # the space before the blank moves into the choice
    return prompt, [sep + r["option1"] + tail, sep + r["option2"] + tail]


def _question_answer(r: Record):
    return f"Question: {r['question']}\nAnswer:", _spaced(r["choices"])


def _openbookqa(r: Record):
    return r["question"], _spaced(r["choices"])


def _piqa(r: Record):
    return f"Question: {r['goal']}\nAnswer:", _spaced([r["sol1"], r["sol2"]])


def _rte(r: Record):
    return f"{r['sentence1']}\nQuestion: {r['sentence2']} True or False?\nAnswer:", [" True", " False"]


def _mrpc(r: Record):
    prompt = (f"Sentence 1: {r['sentence1']}\nSentence 2: {r['sentence2']}\n"
              "Question: Do both sentences mean the same thing?\nAnswer:")
    return prompt, [" no", " yes"]


def _sst2(r: Record):
    return f"{r['sentence']}\nQuestion: Is this sentence positive or negative?\nAnswer:", [" negative", " positive"]


def _cola(r: Record):
    return f"{r['sentence']}\nQuestion: Does this sentence make sense?\nAnswer:", [" no", " yes"]


def _sciq(r: Record):
    return f"{r['context'].lstrip()}\nQuestion: {r['question']}\nAnswer:", _spaced(r["choices"])


# --- instruct (MoLA / AlphaLoRA MoE format) -------------------------------------------------

def _mrpc_instruct(r: Record):
    prompt = ("Tell me if the statements are equivalent, not equivalent.\n"
              f"Sentence 1: {r['sentence1']}\nSentence 2: {r['sentence2']}\n Answer:")
    return prompt, [" not equivalent", " equivalent"]


def _sst2_instruct(r: Record):
    prompt = f"Tell me if the sentiment of the sentence is positive, negative.\nSentence: {r['sentence']}\n Answer:"
    return prompt, [" negative", " positive"]


def _cola_instruct(r: Record):
    prompt = f"Tell me if the sentence is acceptable, unacceptable.\nSentence: {r['sentence']}\n Answer:"
    return prompt, [" unacceptable", " acceptable"]


def _qa_instruct(r: Record):
    prompt = f"Question: {r['question']}\nOptions: {_options(r['choices'])}\n Answer:"
    return prompt, _answer_letters(len(r["choices"]))


def _context_qa_instruct(r: Record):
    context = r["context"].strip() or "N/A"
    prompt = f"Context: {context}\nQuestion: {r['question']}\nOptions: {_options(r['choices'])}\n Answer:"
    return prompt, _answer_letters(len(r["choices"]))


def _t(name: str, doc: str, fn) -> Template:
    return Template(name, doc, fn)


_QA = _t("zeroshot", 'Question: {question}\\nAnswer: | " {choice}"', _question_answer)
_QA_INSTRUCT = _t("instruct", 'Question: {question}\\nOptions: (A) {c0} (B) {c1} ...\\n Answer: '
                  '| " The answer is {letter}."', _qa_instruct)
_CQA_INSTRUCT = _t("instruct", 'Context: {context or N/A}\\nQuestion: {question}\\nOptions: (A) {c0} ...'
                   '\\n Answer: | " The answer is {letter}."', _context_qa_instruct)

#: ``TEMPLATES[task][template_name]``; each task's default is in the registry.
TEMPLATES: dict[str, dict[str, Template]] = {
    "boolq": {"zeroshot": _t("zeroshot", '{passage}\\nQuestion: {question}?\\nAnswer: | " no" / " yes"', _boolq)},
    "hellaswag": {"zeroshot": _t("zeroshot", '{ctx} | " {ending}"  (ctx/endings lm-eval-preprocessed)', _hellaswag)},
    "winogrande": {"zeroshot": _t("zeroshot", '{sentence before _} | " {option}{rest of sentence}"  '
                                  "(approximates lm-eval's partial scoring)", _winogrande)},
    "arc_easy": {"zeroshot": _QA},
    "arc_challenge": {"zeroshot": _QA},
    "openbookqa": {"zeroshot": _t("zeroshot", '{question_stem} | " {choice}"', _openbookqa),
                   "instruct": _QA_INSTRUCT},
    "csqa": {"zeroshot": _QA, "instruct": _QA_INSTRUCT},
    "piqa": {"zeroshot": _t("zeroshot", 'Question: {goal}\\nAnswer: | " {sol1}" / " {sol2}"', _piqa)},
    "rte": {"zeroshot": _t("zeroshot", '{sentence1}\\nQuestion: {sentence2} True or False?\\nAnswer: '
                           '| " True" / " False"', _rte)},
    "mrpc": {"zeroshot": _t("zeroshot", "Sentence 1: {sentence1}\\nSentence 2: {sentence2}\\nQuestion: Do both "
                            'sentences mean the same thing?\\nAnswer: | " no" / " yes"', _mrpc),
             "instruct": _t("instruct", "Tell me if the statements are equivalent, not equivalent.\\nSentence 1: "
                            '{sentence1}\\nSentence 2: {sentence2}\\n Answer: | " not equivalent" / " equivalent"',
                            _mrpc_instruct)},
    "sst2": {"zeroshot": _t("zeroshot", '{sentence}\\nQuestion: Is this sentence positive or negative?\\nAnswer: '
                            '| " negative" / " positive"', _sst2),
             "instruct": _t("instruct", "Tell me if the sentiment of the sentence is positive, negative.\\n"
                            'Sentence: {sentence}\\n Answer: | " negative" / " positive"', _sst2_instruct)},
    "sciq": {"zeroshot": _t("zeroshot", '{support}\\nQuestion: {question}\\nAnswer: | " {choice}"', _sciq),
             "instruct": _CQA_INSTRUCT},
    "cola": {"zeroshot": _t("zeroshot", '{sentence}\\nQuestion: Does this sentence make sense?\\nAnswer: '
                            '| " no" / " yes"', _cola),
             "instruct": _t("instruct", "Tell me if the sentence is acceptable, unacceptable.\\nSentence: "
                            '{sentence}\\n Answer: | " unacceptable" / " acceptable"', _cola_instruct)},
    "scienceqa": {"instruct": _CQA_INSTRUCT},
}
