"""``python -m layerif.bench evaluate``: cost of zero-shot multiple-choice scoring.

On the embedded SmolLM2-135M and the first N test examples of each of the paper's seven
zero-shot tasks, it times, in alternating rounds (the minimum per phase is reported):

* the reference: one plain batched forward (no cache, right-padded, length-sorted batches)
  over the unique tokens -- every context once and every continuation once, the
  continuations as their own short sequences;
* ``zero_shot(backend="layerif")``, the default path (goal: <= 1.5x the reference);
* ``zero_shot(backend="lm-eval")``, stock lm-eval (one forward per (context, choice)),

and prints the largest per-choice log-likelihood difference between the last two.
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

from ..evaluate.choices import encode_pair, lm_eval_docs
from ..evaluate.zero_shot import PAPER_TASKS, zero_shot
from ..models import load_model, resolve_device
from ..tokens import collate, pad_token_id
from ._common import sync

GOAL = 1.5


def unique_sequences(tokenizer, named) -> tuple[list[list[int]], list[list[int]], int]:
    """Unique contexts and continuations (token ids), and lm-eval's input tokens."""
    contexts, continuations, lm_eval_tokens = [], [], 0
    for examples in named.values():
        sep, docs = lm_eval_docs(examples)
        for doc in docs:
            pairs = [encode_pair(tokenizer, doc["prompt"], sep + c) for c in doc["choices"]]
            contexts.append(pairs[0][0])
            continuations += [cont for _, cont in pairs]
            lm_eval_tokens += sum(len(ctx) + len(cont) - 1 for ctx, cont in pairs)
    return contexts, continuations, lm_eval_tokens


@torch.no_grad()
def reference_forward(model, sequences, batch_size, pad):
    """One plain forward over ``sequences``: right-padded, length-sorted batches, no cache."""
    device = next(model.parameters()).device
    ordered = sorted(sequences, key=len, reverse=True)
    for start in range(0, len(ordered), batch_size):
        ids, mask = collate(ordered[start:start + batch_size], pad, device)
        model(input_ids=ids, attention_mask=mask, use_cache=False)



def _timed(device, fn):
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - t0


def measure(model, tokenizer, named, batch_size=8, rounds=2):
    """``(seconds per phase (min over rounds), layerif frame, lm-eval frame, token counts)``."""
    device = next(model.parameters()).device
    contexts, continuations, lm_eval_tokens = unique_sequences(tokenizer, named)
    pad = pad_token_id(tokenizer)
    reference_forward(model, contexts[:2], batch_size, pad)  # warm-up (kernels, allocator)
    phases = {
        "reference forward": lambda: reference_forward(model, contexts + continuations, batch_size, pad),
        'zero_shot(backend="layerif")': lambda: zero_shot(
            model, tokenizer, named, batch_size=batch_size, per_example=True, progress=False)[1],
        'zero_shot(backend="lm-eval")': lambda: zero_shot(
            model, tokenizer, named, batch_size=batch_size, per_example=True, backend="lm-eval")[1],
    }
    times, frames = {name: [] for name in phases}, {}
    for _ in range(rounds):
        for name, fn in phases.items():
            frames[name], elapsed = _timed(device, fn)
            times[name].append(elapsed)
    tokens = {"contexts": (len(contexts), sum(map(len, contexts))),
              "continuations": (len(continuations), sum(map(len, continuations))),
              "lm-eval inputs": (len(continuations), lm_eval_tokens)}
    ours, ref = (frames[name] for name in list(phases)[1:])
    return {k: min(v) for k, v in times.items()}, ours, ref, tokens


def print_report(seconds, ours, ref, tokens):
    base = seconds["reference forward"]
    header = f"{'phase':<32}{'seconds':>9}{'x reference':>13}"
    print(header)
    print("-" * len(header))
    for name, t in seconds.items():
        print(f"{name:<32}{t:>9.2f}{t / base:>13.2f}")
    ratio = seconds['zero_shot(backend="layerif")'] / base
    print(f"default path <= {GOAL:g}x reference: {'met' if ratio <= GOAL else 'not met'} ({ratio:.2f})")
    cols = [c for c in ref.columns if c.startswith("ll_")]
    delta = np.nanmax(np.abs(ours[cols].to_numpy() - ref[cols].to_numpy()))
    same = (ours["prediction"] == ref["prediction"]).mean()
    print(f"max |delta loglik| layerif vs lm-eval over {len(ref)} examples, all choices: {delta:.2e}; "
          f"same prediction: {same:.1%}")
    for name, (n, k) in tokens.items():
        print(f"tokens, {name}: {k} in {n} sequences")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m layerif.bench evaluate", description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--n", type=int, default=20, help="test examples per task (the first n)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2, help="alternating timing rounds (min per phase)")
    parser.add_argument("--tasks", nargs="+", default=list(PAPER_TASKS))
    args = parser.parse_args(argv)

    from ..data import load_task

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    model, tokenizer = load_model(args.model, device=device)
    named = {t: load_task(t, "test")[:args.n] for t in args.tasks}
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        f"cpu, {torch.get_num_threads()} torch threads, {os.cpu_count()} cores"
    print(f"model {args.model} ({model.dtype}) on {where}; first {args.n} test examples of "
          f"{len(named)} tasks ({', '.join(named)}); batch {args.batch_size}; min of {args.rounds} "
          "alternating rounds")
    print("reference = one plain batched forward (no cache, right-padded, length-sorted) over the "
          "unique tokens: each context once, each continuation once as its own short sequence")
    print_report(*measure(model, tokenizer, named, args.batch_size, args.rounds))
    return 0
