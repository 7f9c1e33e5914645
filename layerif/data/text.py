"""Plain-text token windows for pruning calibration and perplexity, from BoolQ's Wikipedia passages.

Offline there is no C4 or WikiText, so both come from the Wikipedia paragraphs that BoolQ
questions are asked about (SuperGLUE form, ``"<article title> -- <paragraph>"``):

* **perplexity** text: the unique passages of BoolQ's official *validation* split;
* **calibration** text: the unique passages of BoolQ's official *train* split whose article
  title does not occur among the validation passages -- disjoint from the perplexity text by
  passage *and* by article.

Windows are cut the same way for both: the passages are put in a seeded order
(``sha256(f"{seed}|{passage}")``; ``seed=None`` keeps source order), each is tokenized with a
trailing blank line (``"\\n\\n"``, no special tokens, so no BOS inside windows), the ids are
concatenated and cut into consecutive, non-overlapping ``seq_len`` windows. Wanda/SparseGPT
instead draw one random window from each of ``n_samples`` random C4 documents; BoolQ passages
(~150 tokens) are shorter than a window, so they are concatenated first.

With ``LAYERIF_OFFLINE=0`` and hub access, ``source="c4"`` (calibration: the first C4 ``en``
train shard, Wanda's choice) and ``source="wikitext2"`` (perplexity: WikiText-2 raw test,
joined with blank lines as in the GPTQ/Wanda evaluation) load the paper's corpora instead.
"""
from __future__ import annotations

import functools
import hashlib

import torch

from .registry import TASKS, official_records
from .sources import DataUnavailableError, hub_enabled, hub_rows

__all__ = ["boolq_passages", "calibration_tokens", "perplexity_tokens"]

def _title(passage: str) -> str:
    return passage.split(" -- ", 1)[0]


@functools.lru_cache(maxsize=None)
def boolq_passages() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``(calibration_passages, perplexity_passages)``: unique BoolQ passages, disjoint by article."""
    spec = TASKS["boolq"]
    held = tuple(dict.fromkeys(r["passage"] for r in official_records(spec, "validation")))
    held_titles = {_title(p) for p in held}
    calib = tuple(p for p in dict.fromkeys(r["passage"] for r in official_records(spec, "train"))
                  if _title(p) not in held_titles)
    return calib, held


def _hub_passages(source: str) -> tuple[str, ...]:
    if not hub_enabled():
        raise DataUnavailableError(f"source={source!r} needs the Hugging Face hub (set LAYERIF_OFFLINE=0); "
                                   "offline, use source='boolq'")
    if source == "c4":
        rows = hub_rows("allenai/c4", None, "train", data_files={"train": "en/c4-train.00000-of-01024.json.gz"})
        return tuple(r["text"] for r in rows)
    rows = hub_rows("wikitext", "wikitext-2-raw-v1", "test")
    return ("\n\n".join(r["text"] for r in rows),)


def _windows(tokenizer, passages, n_samples, seq_len, seed, what: str) -> torch.Tensor:
    if n_samples is not None and (isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 1):
        raise ValueError(f"n_samples={n_samples!r} is invalid: expected a positive int")
    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 1:
        raise ValueError(f"seq_len={seq_len!r} is invalid: expected a positive int")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise ValueError(f"seed={seed!r} is invalid: expected an int or None")
    if seed is not None:
        passages = sorted(passages, key=lambda p: hashlib.sha256(f"{seed}|{p}".encode()).hexdigest())
    need = None if n_samples is None else n_samples * seq_len
    ids: list[int] = []
    start, batch = 0, 16
    while start < len(passages) and (need is None or len(ids) < need):
        # growing batches: a few passages for small requests, big batches for whole corpora
        chunk = [p + "\n\n" for p in passages[start:start + batch]]
        for row in tokenizer(chunk, add_special_tokens=False)["input_ids"]:
            ids.extend(row)
        start, batch = start + batch, min(2 * batch, 1024)
    available = len(ids) // seq_len
    if available == 0 or (n_samples is not None and available < n_samples):
        raise ValueError(f"n_samples={n_samples!r} with seq_len={seq_len} is invalid: the {what} text gives "
                         f"{len(ids)} tokens with this tokenizer, i.e. at most {available} windows")
    count = available if n_samples is None else n_samples
    return torch.tensor(ids[:count * seq_len], dtype=torch.long).view(count, seq_len)


def calibration_tokens(tokenizer, n_samples: int, seq_len: int, seed: int | None = 0,
                       source: str = "boolq") -> torch.Tensor:
    """Calibration windows for Wanda / SparseGPT / OWL (see the module docstring for the recipe).

    Args:
        tokenizer: a Hugging Face tokenizer (called on lists of strings).
        n_samples: number of windows.
        seq_len: tokens per window.
        seed: passage-order seed; ``None`` keeps source order.
        source: ``"boolq"`` (offline) or ``"c4"`` (hub, ``LAYERIF_OFFLINE=0``).

    Returns:
        ``LongTensor[n_samples, seq_len]`` on the CPU.

    Raises:
        ValueError: bad arguments, or the text is too short for ``n_samples * seq_len`` tokens.
        DataUnavailableError: ``source="c4"`` without hub access.
    """
    if source not in ("boolq", "c4"):
        raise ValueError(f"source={source!r} is invalid: expected 'boolq' or 'c4'")
    passages = boolq_passages()[0] if source == "boolq" else _hub_passages(source)
    return _windows(tokenizer, passages, n_samples, seq_len, seed, f"{source} calibration")


def perplexity_tokens(tokenizer, n_samples: int | None, seq_len: int, seed: int | None = 0,
                      source: str = "boolq") -> torch.Tensor:
    """Evaluation windows for perplexity, disjoint from :func:`calibration_tokens`' text.

    Args:
        tokenizer: a Hugging Face tokenizer.
        n_samples: number of windows, or ``None`` for every full window of the text.
        seq_len: tokens per window.
        seed: passage-order seed (``None``: source order; WikiText is a single document).
        source: ``"boolq"`` (offline) or ``"wikitext2"`` (hub, ``LAYERIF_OFFLINE=0``).

    Returns:
        ``LongTensor[n_samples, seq_len]`` on the CPU.

    Raises:
        ValueError: bad arguments, or not enough text.
        DataUnavailableError: ``source="wikitext2"`` without hub access.
    """
    if source not in ("boolq", "wikitext2"):
        raise ValueError(f"source={source!r} is invalid: expected 'boolq' or 'wikitext2'")
    passages = boolq_passages()[1] if source == "boolq" else _hub_passages(source)
    return _windows(tokenizer, passages, n_samples, seq_len, seed, f"{source} perplexity")
