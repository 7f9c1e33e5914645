"""Per-choice log-likelihoods of multiple-choice examples: lm-eval's numbers, one pass each.

The context / continuation split and the token ids are exactly those of lm-eval's
``multiple_choice`` scoring for the task config :func:`layerif.evaluate.zero_shot.lm_eval_task`
builds: the separator (``target_delimiter``) and choice texts come from :func:`lm_eval_docs`
(the one place that logic lives), the request is ``(prompt, delimiter + choice)``, trailing
whitespace of the context moves to the continuation, the context is ``tok_encode(context)``
and the continuation is ``tok_encode(context + continuation)[len(context ids):]`` (lm-eval's
``HFLM._encode_pair`` with ``add_bos_token=None``: the tokenizer's own special tokens, so
Gemma's BOS and no BOS for SmolLM2).

What differs is the cost. lm-eval runs one forward per (context, choice) pair; here each
context runs once (left-padded, length-sorted batches, ``use_cache=True``, logits only at its
last position), its key/value cache is repeated once per choice, and the continuations run
once on top of it, right-padded, with an attention mask over ``[context pads | context |
continuation | continuation pads]`` and ``position_ids = cumsum(mask) - 1`` (as ``generate``
does). A continuation's first token is scored off the context's last logit, so single-token
continuations (BoolQ, RTE) need no second forward at all. Log-softmax is taken in float32
(float64 for a float64 model). Sequences are not truncated to the model's context window.
"""
from __future__ import annotations

import inspect
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from .. import distributed
from .._config import check_finite
from ..models import check_finite_parameters, eval_mode, model_id
from ..tokens import collate, pad_token_id

__all__ = ["choice_frame", "choice_logliks", "encode_pair", "lm_eval_docs"]

DEFAULT_DELIMITER = " "  # lm-eval's default target_delimiter


def _separator(ex) -> str | None:
    """The text between prompt and gold answer in ``ex.text``, None when it is not that shape."""
    gold, text = ex.choices[ex.label], getattr(ex, "text", None)
    if isinstance(text, str) and text.startswith(ex.prompt) and text.endswith(gold) \
            and len(text) >= len(ex.prompt) + len(gold):
        return text[len(ex.prompt):len(text) - len(gold)]
    return None


def lm_eval_docs(examples: Sequence, name: str = "examples") -> tuple[str, list[dict]]:
    """The ``target_delimiter`` and lm-eval docs (id, prompt, choices, label) for ``examples``.

    The separator is read off ``Example.text = prompt + sep + gold`` (``" "`` when absent).
    When all examples agree it is the task's delimiter; when they disagree the delimiter is
    ``""`` and each example's own separator goes into its choices. A uniform ``""`` with
    every choice starting with a space (the registry's ``" yes"``) becomes delimiter ``" "``
    and choices without their space: the same scored text, and lm-eval's split, which
    matters for ``acc_norm`` (it divides by ``len(choice)``).

    Raises:
        ValueError: no examples, or an example whose label does not index its choices.
    """
    examples = list(examples)
    if not examples:
        raise ValueError(f"examples for task {name!r} are empty: expected at least one example")
    for ex in examples:
        if not (isinstance(ex.label, int) and 0 <= ex.label < len(ex.choices)):
            raise ValueError(f"example {getattr(ex, 'id', ex)!r} has label={ex.label!r} outside "
                             f"its {len(ex.choices)} choices")
    own = [_separator(ex) for ex in examples]
    seps = {DEFAULT_DELIMITER if s is None else s for s in own}
    uniform = len(seps) == 1
    sep, strip = (seps.pop() if uniform else ""), 0
    if uniform and sep == "" and all(c.startswith(" ") for ex in examples for c in ex.choices):
        sep, strip = " ", 1
    docs = []
    for ex, s in zip(examples, own):
        prefix = "" if uniform else (DEFAULT_DELIMITER if s is None else s)
        docs.append({"id": str(getattr(ex, "id", len(docs))), "prompt": ex.prompt,
                     "choices": [prefix + c[strip:] for c in ex.choices], "label": int(ex.label)})
    return sep, docs


def _tok_encode(tokenizer, text: str) -> list[int]:
    """lm-eval's ``HFLM.tok_encode`` with ``add_bos_token=None``."""
    prefix = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if prefix is not None and text.startswith(tokenizer.decode(prefix)):
        return tokenizer.encode(text, add_special_tokens=False)
    return tokenizer.encode(text)


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """Context and continuation token ids exactly as lm-eval's causal ``loglikelihood``."""
    if context == "":
        prefix = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        cont = tokenizer.encode(continuation, add_special_tokens=False)
        return ([prefix], cont) if prefix != cont[0] else (cont[:1], cont[1:])
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces > 0:
        context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
    whole = _tok_encode(tokenizer, context + continuation)
    ctx = _tok_encode(tokenizer, context)
    return ctx, whole[len(ctx):]


def _token_logp(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log p(target) at each position, the softmax in float32 at least."""
    logits = logits if logits.dtype == torch.float64 else logits.float()
    return logits.gather(-1, targets[..., None])[..., 0] - torch.logsumexp(logits, dim=-1)


def _left_pad(rows: list[list[int]], pad: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for b, r in enumerate(rows):
        ids[b, width - len(r):] = torch.tensor(r)
        mask[b, width - len(r):] = 1
    return ids.to(device), mask.to(device)


def _cache_kwarg(model) -> str:
    """transformers >= 5.2x takes ``cache=``; earlier 5.x ``past_key_values=``."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _positions(mask: torch.Tensor) -> torch.Tensor:
    return (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)


@torch.no_grad()
def _score_batch(model, batch, pad: int, device) -> list[list[float]]:
    """Summed log-likelihoods ``[example][choice]`` for ``batch`` = [(ctx ids, [cont ids])]."""
    ids, mask = _left_pad([ctx for ctx, _ in batch], pad, device)
    out = model(input_ids=ids, attention_mask=mask, position_ids=_positions(mask),
                use_cache=True, logits_to_keep=1)
    last = out.logits[:, -1]  # predicts each continuation's first token
    rows = [(b, j) for b, (_, conts) in enumerate(batch) for j in range(len(conts))]
    firsts = torch.tensor([batch[b][1][j][0] if batch[b][1][j] else 0 for b, j in rows], device=device)
    row_of = torch.tensor([b for b, _ in rows], device=device)
    first_lp = _token_logp(last[row_of], firsts).double().cpu()
    scores = [[0.0] * len(conts) for _, conts in batch]
    for r, (b, j) in enumerate(rows):
        if batch[b][1][j]:
            scores[b][j] = float(first_lp[r])
    long_rows = [(b, j) for b, j in rows if len(batch[b][1][j]) > 1]
    if not long_rows:  # single-token continuations: no second forward
        return scores
    cache = out.cache if getattr(out, "cache", None) is not None else out["past_key_values"]
    cache.batch_select_indices(torch.tensor([b for b, _ in long_rows], device=device))
    conts = [batch[b][1][j] for b, j in long_rows]
    cont_ids, cont_mask = collate([c[:-1] for c in conts], pad, device)
    width = cont_ids.shape[1]
    full = torch.cat([mask[[b for b, _ in long_rows]], cont_mask], dim=1)
    logits = model(input_ids=cont_ids, attention_mask=full, position_ids=_positions(full)[:, -width:],
                   use_cache=True, **{_cache_kwarg(model): cache}).logits
    targets, _ = collate([c[1:] for c in conts], 0, device)  # masked past each continuation
    lp = (_token_logp(logits, targets).double() * cont_mask).sum(-1).cpu()
    for r, (b, j) in enumerate(long_rows):
        scores[b][j] += float(lp[r])
    return scores


def choice_frame(ids: Sequence[str], labels: Sequence[int], logliks: Sequence[Sequence[float]],
                 lengths: Sequence[Sequence[int]]) -> pd.DataFrame:
    """The per-example table from per-choice log-likelihoods and choice lengths (characters).

    Columns: ``label``, ``n_choices``, ``ll_0 .. ll_{K-1}`` (NaN past an example's choices),
    ``prediction``, ``correct``, ``prediction_norm``, ``correct_norm`` (arg-max of
    ``ll / len(choice)``, lm-eval's ``acc_norm``), ``margin`` (gold minus best other choice).
    Ties go to the first choice, as ``np.argmax`` in lm-eval.
    """
    k = max(len(ll) for ll in logliks)
    table = np.full((len(logliks), k), np.nan)
    pred, pred_norm, margin = [], [], []
    for i, (ll, n, y) in enumerate(zip(logliks, lengths, labels)):
        ll = np.asarray(ll, dtype=np.float64)
        table[i, :len(ll)] = ll
        pred.append(int(np.argmax(ll)))
        pred_norm.append(int(np.argmax(ll / np.asarray(n, dtype=np.float64))))
        others = np.delete(ll, y)
        margin.append(float(ll[y] - others.max()) if len(others) else np.nan)
    labels = np.asarray(labels, dtype=np.int64)
    frame = pd.DataFrame({"label": labels, "n_choices": np.array([len(ll) for ll in logliks], dtype=np.int64)},
                         index=pd.Index([str(i) for i in ids], name="id"))
    for j in range(k):
        frame[f"ll_{j}"] = table[:, j]
    frame["prediction"] = np.asarray(pred, dtype=np.int64)
    frame["correct"] = frame["prediction"].to_numpy() == labels
    frame["prediction_norm"] = np.asarray(pred_norm, dtype=np.int64)
    frame["correct_norm"] = frame["prediction_norm"].to_numpy() == labels
    frame["margin"] = np.asarray(margin, dtype=np.float64)
    return frame


def choice_logliks(model, tokenizer, examples: Sequence, batch_size: int = 8,
                   progress: bool = True) -> pd.DataFrame:
    """Summed log-likelihood of every choice of every example, as lm-eval scores them.

    Args:
        model: a Hugging Face causal LM (any device and float dtype); run in eval mode, its
            mode restored after.
        tokenizer: its tokenizer.
        examples: :class:`layerif.data.Example` objects (id, prompt, choices, label, text)
            of one task (the separator is read off them together, as for one lm-eval task).
        batch_size: examples per context forward (their continuations run together after).
        progress: show a progress bar.

    In a process group each rank scores its shard of the examples
    (:func:`layerif.distributed.shard`) and every rank returns the whole table.

    Returns:
        One row per example (index ``id``), see :func:`choice_frame`.

    Raises:
        ValueError: bad ``batch_size``, no examples, a label outside its choices; NaN or inf
            in the model's parameters or log-likelihoods (:class:`layerif._config.NonFiniteError`).
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r} is invalid: expected a positive int")
    sep, docs = lm_eval_docs(examples)
    encoded = []
    for doc in docs:
        pairs = [encode_pair(tokenizer, doc["prompt"], sep + c) for c in doc["choices"]]
        if any(ctx != pairs[0][0] for ctx, _ in pairs):  # cannot happen: one context string
            raise AssertionError(f"example {doc['id']!r}: contexts tokenize differently")
        encoded.append((pairs[0][0], [cont for _, cont in pairs]))
    order = sorted(distributed.shard(range(len(docs))), key=lambda i: -len(encoded[i][0]))
    pad = pad_token_id(tokenizer)
    check_finite_parameters(model)
    device = next(model.parameters()).device
    mine: dict[int, list[float]] = {}
    progress = progress and distributed.is_main()
    with eval_mode(model):
        for start in tqdm(range(0, len(order), batch_size), desc="choices", disable=not progress):
            part = order[start:start + batch_size]
            for i, s in zip(part, _score_batch(model, [encoded[i] for i in part], pad, device)):
                mine[i] = s
    scores: list = [None] * len(docs)
    for part in distributed.all_gather_objects(mine):
        for i, s in part.items():
            scores[i] = s
    check_finite(torch.tensor([x for s in scores for x in s], dtype=torch.float64),
                 model_id(model), "choice log-likelihoods (its logits)")
    return choice_frame([d["id"] for d in docs], [d["label"] for d in docs], scores,
                        [[len(c) for c in d["choices"]] for d in docs])
