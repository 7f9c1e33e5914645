"""Per-example gradients of a causal LM, in batched passes with hooks.

The loss of one example (the loss every reference in the tests uses too)::

    loss_i = mean over the example's target positions t of  -log p(token_t | tokens_<t)

Target positions are every token after the first, excluding padding (``include_pads=False``,
the default). With ``include_pads=True`` every example is right-padded to ``max_length`` and
the pad positions count as targets too (labels = input_ids, as the authors' pipeline did);
padding to a fixed length keeps each example's loss independent of its batch.

Units (see :mod:`layerif._targets`) are full linear weights or LoRA A/B matrices. Each
:class:`GradientEngine` method is **one pass** over a set of examples (forward + backward
per batch, whatever the number of blocks), computing from hooked inputs and output
gradients (:mod:`layerif._hooks`) either per-example gradients (kept in memory) or only the
scalars and sums influence functions need (streamed):

* :meth:`GradientEngine.summed` -- ``sum_i g_i`` per unit (the validation vector);
* :meth:`GradientEngine.per_example` -- ``Tensor[n, numel]`` per unit;
* :meth:`GradientEngine.norms_and_dots` -- ``|g_i|^2`` and ``<w_u, g_iu>`` per unit;
* :meth:`GradientEngine.weighted_sum` -- ``sum_i c_iu g_iu`` per unit.

All vectors are flattened in the parameter's own layout. Parameter ``.grad`` is never
touched, and the model's ``requires_grad`` flags and train/eval mode are restored.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from . import _hooks
from ._targets import Unit, attached_lora, find_units, has_lora, select_modules, units_table
from .tokens import collate

__all__ = ["Batches", "GradientEngine", "Unit", "attached_lora", "encode", "example_losses",
           "find_units", "has_lora", "select_modules", "units_table"]


@dataclass
class Batches:
    """Tokenised examples, grouped into length-sorted padded batches.

    Attributes:
        batches: list of ``(input_ids, attention_mask, loss_mask, index)``; ``index`` maps
            batch rows back to the original example order.
        n: number of examples.
        n_tokens: total number of loss target tokens.
    """

    batches: list[tuple[Tensor, Tensor, Tensor, Tensor]]
    n: int
    n_tokens: int

    def __iter__(self):
        return iter(self.batches)

    def __len__(self):
        return len(self.batches)


def _text(example) -> str:
    if isinstance(example, str):
        return example
    text = getattr(example, "text", None)
    if not isinstance(text, str):
        raise ValueError(f"example {example!r} is invalid: expected a str or an object with "
                         "a str .text (layerif.data.Example)")
    return text


def encode(tokenizer, examples, max_length: int = 128, include_pads: bool = False,
           batch_size: int = 8) -> Batches:
    """Tokenise examples (``str`` or objects with ``.text``) into padded batches.

    Examples are sorted by length before batching so that little padding is computed; the
    per-example results do not depend on it (each example's loss is its own).

    Args:
        tokenizer: a Hugging Face tokenizer with a pad token.
        examples: sequence of ``str`` or ``layerif.data.Example``.
        max_length: truncation length in tokens.
        include_pads: pad to ``max_length`` and count pad targets in the loss.
        batch_size: examples per batch.

    Returns:
        :class:`Batches`.
    """
    if not isinstance(max_length, int) or max_length < 2:
        raise ValueError(f"max_length={max_length!r} is invalid: expected an int >= 2")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r} is invalid: expected an int >= 1")
    if tokenizer.pad_token_id is None:  # with include_pads, pad targets are in the loss: no fallback
        raise ValueError("tokenizer has no pad token: set one first (layerif.tokens.with_pad_token "
                         "gives it its eos token, as load_model does)")
    texts = [_text(e) for e in examples]
    if not texts:
        raise ValueError("examples=[] is invalid: expected at least one example")
    ids = tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]
    short = [i for i, t in enumerate(ids) if len(t) < 2]
    if short:
        raise ValueError(f"examples {short[:5]} have fewer than 2 tokens: no target to predict")
    order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
    batches, n_tokens = [], 0
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        input_ids, attention = collate([ids[i] for i in rows], tokenizer.pad_token_id,
                                       width=max_length if include_pads else None)
        loss_mask = torch.ones_like(attention) if include_pads else attention.clone()
        loss_mask[:, 0] = 0  # the first token is never predicted
        n_tokens += int(loss_mask.sum())
        batches.append((input_ids, attention, loss_mask, torch.tensor(rows)))
    return Batches(batches, len(ids), n_tokens)


def example_losses(model: nn.Module, input_ids: Tensor, attention_mask: Tensor,
                   loss_mask: Tensor) -> Tensor:
    """Per-example mean next-token loss over ``loss_mask`` positions; ``Tensor[B]``.

    The cross-entropy runs on ``[tokens, vocab]`` rows (vocabulary last, contiguous): with
    the vocabulary on dim 1 instead, CPU float32 reductions over ~50k words lose about an
    order of magnitude of accuracy in the per-example gradients.
    """
    logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
    logits = logits[:, :-1].to(torch.promote_types(logits.dtype, torch.float32))
    batch, steps, vocab = logits.shape
    nll = F.cross_entropy(logits.reshape(batch * steps, vocab),
                          input_ids[:, 1:].reshape(batch * steps),
                          reduction="none").view(batch, steps)
    mask = loss_mask[:, 1:].to(nll.dtype)
    return (nll * mask).sum(dim=1) / mask.sum(dim=1)


class GradientEngine:
    """Batched per-example gradient passes over a model's units.

    Per-unit vectors live on their unit's device (models spread over devices work);
    per-example scalars are gathered on the device of the input embeddings.

    Args:
        model: the causal LM.
        units: from :func:`find_units`.
        dtype: dtype of the gradient maths (captured inputs and output gradients are cast
            to it); ``None``: the model's, at least float32.
        progress: show a tqdm bar per pass.
    """

    def __init__(self, model: nn.Module, units: list[Unit], dtype: torch.dtype | None = None,
                 progress: bool = True):
        if not units:
            raise ValueError("units=[] is invalid: expected at least one unit")
        self.model, self.units, self.progress = model, list(units), progress
        self.dtype = dtype or torch.promote_types(self.units[0].param.dtype, torch.float32)
        embed = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
        self.device = (embed.weight if embed is not None else next(model.parameters())).device
        self.passes = 0  # forward+backward epochs run, for benchmarks and tests

    # -- one pass -------------------------------------------------------------------
    def _run(self, batches: Batches, desc: str):
        """Yield ``(index, xs, deltas)`` per batch, ``xs/deltas`` one per unit."""
        self.passes += 1
        params = [u.param for u in self.units]
        was_training = self.model.training
        self.model.eval()
        try:
            with _hooks.grad_only_for(self.model, params), torch.enable_grad():
                for input_ids, attention, loss_mask, index in tqdm(
                        batches, desc=desc, disable=not self.progress, leave=False):
                    to = self.device
                    with _hooks.Capture([u.linear for u in self.units]) as cap:
                        losses = example_losses(self.model, input_ids.to(to), attention.to(to),
                                                loss_mask.to(to))
                    deltas = cap.deltas(losses.sum())
                    cast: dict[int, Tensor] = {}  # shared inputs stay shared after the cast
                    for x in cap.inputs:
                        if id(x) not in cast:
                            cast[id(x)] = x.to(self.dtype)
                    xs = [cast[id(x)] for x in cap.inputs]
                    yield index.to(to), xs, [d.to(self.dtype) for d in deltas]
        finally:
            self.model.train(was_training)

    def _to_internal(self, u: Unit, flat: Tensor) -> Tensor:
        w = flat.reshape(u.shape)
        return w.T if u.transposed else w

    def _to_flat(self, u: Unit, w: Tensor) -> Tensor:
        return (w.transpose(-1, -2) if u.transposed else w).reshape(*w.shape[:-2], -1)

    def _zeros(self, u: Unit, *shape: int) -> Tensor:
        return torch.zeros(*shape, u.numel, dtype=self.dtype, device=u.param.device)

    # -- the passes -----------------------------------------------------------------
    def summed(self, batches: Batches) -> list[Tensor]:
        """``sum_i g_i`` per unit (flattened), in one pass."""
        acc = [self._zeros(u) for u in self.units]
        for _, xs, ds in self._run(batches, "summed gradient"):
            for k, (u, x, d) in enumerate(zip(self.units, xs, ds)):
                acc[k] += self._to_flat(u, _hooks.batch_sum(x, d))
        return acc

    def per_example(self, batches: Batches) -> list[Tensor]:
        """Per-example gradients ``Tensor[n, numel]`` per unit, in one pass."""
        out = [self._zeros(u, batches.n) for u in self.units]
        for index, xs, ds in self._run(batches, "per-example gradients"):
            for k, (u, x, d) in enumerate(zip(self.units, xs, ds)):
                out[k][index.to(x.device)] = self._to_flat(u, _hooks.per_example(x, d))
        return out

    def norms_and_dots(self, batches: Batches, vectors: list[Tensor] | None,
                       norms: bool = True) -> tuple[Tensor | None, Tensor | None]:
        """Per-example ``|g_iu|^2`` and ``<vectors[u], g_iu>``, each ``Tensor[n_units, n]``.

        Args:
            batches: the examples.
            vectors: one flattened vector per unit, or ``None`` for no dot products.
            norms: compute squared norms.
        """
        shape = (len(self.units), batches.n)
        sq = torch.zeros(shape, dtype=self.dtype, device=self.device) if norms else None
        dot = torch.zeros(shape, dtype=self.dtype, device=self.device) if vectors else None
        mats = None if not vectors else [
            self._to_internal(u, v.to(u.param.device, self.dtype)) for u, v in zip(self.units, vectors)]
        for index, xs, ds in self._run(batches, "norms and dots"):
            grams: dict[int, Tensor] = {}  # q, k and v read one input: one Gram for all three
            for k, (x, d) in enumerate(zip(xs, ds)):
                if norms:
                    gram = None
                    if _hooks._use_gram(x.shape[1], x.shape[2], d.shape[2]):
                        gram = grams.get(id(x))
                        if gram is None:
                            gram = grams[id(x)] = x @ x.transpose(1, 2)
                    sq[k, index] = _hooks.sq_norms(x, d, gram).to(self.device)
                if mats is not None:
                    dot[k, index] = _hooks.dots(x, d, mats[k]).to(self.device)
        return sq, dot

    def weighted_sum(self, batches: Batches, coef: Tensor) -> list[Tensor]:
        """``sum_i coef[u, i] g_iu`` per unit (flattened), in one pass."""
        acc = [self._zeros(u) for u in self.units]
        coef = coef.to(device=self.device, dtype=self.dtype)
        for index, xs, ds in self._run(batches, "weighted sum"):
            for k, (u, x, d) in enumerate(zip(self.units, xs, ds)):
                c = coef[k, index].to(x.device)
                acc[k] += self._to_flat(u, _hooks.weighted_sum(x, d, c))
        return acc
