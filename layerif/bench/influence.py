"""``python -m layerif.bench influence``: the cost of LayerIF scores against plain training.

Prints, in one run on one model (default SmolLM2-135M, 30 blocks; n=256 train, m=64
validation examples, 128 tokens, batch 8):

* one plain forward+backward epoch over the n+m examples (every parameter's gradient, as a
  training step computes it, same length-sorted batches as the scorer);
* ``layer_scores`` for all blocks with full attention weights (q/k/v/o) and with LoRA r=8;
* their ratio to the plain epoch, the forward+backward passes used, peak memory;
* ``layer_scores(methods=("datainf", "hessian_free"))`` (full weights): both variants from
  shared passes, timed alternately with DataInf alone (``--shared-rounds``), and its ratio
  to DataInf alone;
* the estimated time of the authors' loop shape -- one block at a time, one example per
  forward+backward, per-example gradients stored, then DataInf -- timed on the first and
  the last block (deepest and shallowest backward) and scaled to all blocks.

Goals (issue 3): ratio <= 4 (full weights), <= 2.5 (LoRA), >= 10x faster than the loop,
peak RSS <= 8 GB; datainf + hessian_free from shared passes <= 1.2x DataInf alone.
"""
from __future__ import annotations

import argparse
import resource
import time

import torch

from ..rng import seeded
from ..tokens import with_pad_token
from ._common import sync

GOALS = {"weights": 4.0, "lora": 2.5, "loop_speedup": 10.0, "rss_gb": 8.0, "shared": 1.2}


def _peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux



def _examples(args):
    """(train, val, source description): the task's texts, or synthetic ones if unavailable."""
    try:
        from layerif.data import load_task

        train = load_task(args.task, "train", n=args.n_train, seed=args.seed)
        val = load_task(args.task, "validation", n=args.n_val, seed=args.seed)
        if len(train) == args.n_train and len(val) == args.n_val:
            return train, val, f"{args.task} (layerif.data)"
        reason = f"{args.task} has only {len(train)}/{len(val)} examples"
    except Exception as err:  # noqa: BLE001 -- any failure falls back, and says why
        reason = f"layerif.data unavailable ({type(err).__name__}: {err})"
    gen = torch.Generator().manual_seed(args.seed)
    words = ("the model reads a long passage about layers and influence then answers a "
             "question whether every block matters equally for the task at hand").split()

    def text(i):
        picks = torch.randint(len(words), (4 * args.max_length,), generator=gen)
        return f"Example {i}: " + " ".join(words[j] for j in picks.tolist())

    train = [text(i) for i in range(args.n_train)]
    val = [text(args.n_train + i) for i in range(args.n_val)]
    return train, val, f"synthetic texts ({reason})"


def _load(args, device):
    """The model and tokenizer; with --random-weights only config and tokenizer are read."""
    from layerif.models import load_model

    if not args.random_weights:
        return load_model(args.model, device=device)
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    config = AutoConfig.from_pretrained(args.model)
    with seeded(args.seed):
        model = AutoModelForCausalLM.from_config(config).to(device).eval()
    model._layerif_model_id = f"{args.model} (random weights)"
    return model, with_pad_token(AutoTokenizer.from_pretrained(args.model))


def plain_epoch(model, batches, device) -> float:
    """Seconds for forward+backward of every batch with every parameter's gradient."""
    from layerif.gradients import example_losses

    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(True)
    sync(device)
    start = time.perf_counter()
    for ids, att, mask, _ in batches:
        example_losses(model, ids.to(device), att.to(device), mask.to(device)).sum().backward()
    sync(device)
    seconds = time.perf_counter() - start
    model.zero_grad(set_to_none=True)
    for p, flag in flags:
        p.requires_grad_(flag)
    return seconds


def timed_scores(model, tok, train, val, config, device, progress, methods=None):
    """``(seconds, result)`` of one :func:`layerif.scores.layer_scores` call."""
    from layerif.scores import layer_scores

    sync(device)
    start = time.perf_counter()
    result = layer_scores(model, tok, train, val, config, progress=progress, methods=methods)
    sync(device)
    return time.perf_counter() - start, result


def shared_vs_alone(model, tok, train, val, config, device, progress, rounds: int,
                    first_alone: float) -> tuple[float, float, int]:
    """Mean seconds of DataInf alone and of datainf + hessian_free from shared passes.

    The phases alternate (``first_alone`` is a DataInf run just made, then shared, alone,
    shared, ...) so that a changing machine load hits both alike. Returns
    ``(alone, shared, passes of the shared call)``.
    """
    alone, shared, passes = [first_alone], [], 0
    for r in range(rounds):
        if r:
            alone.append(timed_scores(model, tok, train, val, config, device, progress)[0])
        seconds, out = timed_scores(model, tok, train, val, config, device, progress,
                                    methods=("datainf", "hessian_free"))
        shared.append(seconds)
        passes = out["datainf"].info["passes"]
    return sum(alone) / len(alone), sum(shared) / len(shared), passes


def block_loop(model, tokenizer, train, val, blocks, max_length, n_examples, device):
    """Seconds per block of the authors' loop shape (one example per backward, one block)."""
    from layerif import influence
    from layerif.gradients import encode, example_losses, find_units

    units = find_units(model, "weights", "attention")
    texts = (list(train) + list(val))[:n_examples]
    singles = list(encode(tokenizer, texts, max_length=max_length, batch_size=1))
    n_train = min(len(train), len(texts))
    times = []
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for block in blocks:
        params = [u.param for u in units if u.layer == block]
        for p, _ in flags:
            p.requires_grad_(any(p is q for q in params))
        sync(device)
        start = time.perf_counter()
        rows = []
        for ids, att, mask, _ in singles:
            loss = example_losses(model, ids.to(device), att.to(device), mask.to(device)).sum()
            rows.append([g.flatten() for g in torch.autograd.grad(loss, params)])
        stacks = [torch.stack([r[k] for r in rows[:n_train]]) for k in range(len(params))]
        vals = [torch.stack([r[k] for r in rows[n_train:]] or [torch.zeros_like(rows[0][k])])
                for k in range(len(params))]
        influence.datainf(stacks, vals)
        sync(device)
        times.append(time.perf_counter() - start)
        del rows, stacks, vals
    for p, flag in flags:
        p.requires_grad_(flag)
    return times


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m layerif.bench influence",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--task", default="boolq", help="layerif.data task (texts)")
    parser.add_argument("--n-train", type=int, default=256)
    parser.add_argument("--n-val", type=int, default=64)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lora-rank", type=int, default=8)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--loop-examples", type=int, default=None,
                        help="time the per-block loop on this many of the n+m examples and "
                        "scale linearly (default: all)")
    parser.add_argument("--skip-loop", action="store_true")
    parser.add_argument("--shared-rounds", type=int, default=1,
                        help="alternated (DataInf alone, shared datainf + hessian_free) rounds")
    parser.add_argument("--random-weights", action="store_true",
                        help="--model is a checkpoint directory whose config and tokenizer are "
                        "read; weights are random (same timings, no weight files needed)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--progress", action="store_true", help="show progress bars")
    return parser


def _score_phases(args, model, tok, train, val, device, epoch: float, record) -> dict:
    """Scores with full weights and with LoRA, and the shared DataInf + Hessian-free passes,
    each timed and passed to ``record``; returns their ratios (``weights``, ``lora`` to the
    epoch, ``shared`` to DataInf alone)."""
    from layerif.scores import ScoreConfig

    base = dict(device=str(device), batch_size=args.batch_size, max_length=args.max_length,
                lora_rank=args.lora_rank, lora_alpha=2.0 * args.lora_rank)
    results = {}
    for target in ("weights", "lora"):
        config = ScoreConfig(target=target, **base)
        seconds, scores = timed_scores(model, tok, train, val, config, device, args.progress)
        results[target] = seconds / epoch
        label = (f"LayerIF, full attention weights ({scores.info['storage']})" if target ==
                 "weights" else f"LayerIF, LoRA r={args.lora_rank} ({scores.info['storage']})")
        record(label, seconds, scores.info["passes"])
        if target == "weights":
            alone, shared, passes = shared_vs_alone(model, tok, train, val, config, device,
                                                    args.progress, args.shared_rounds, seconds)
            results["shared"] = shared / alone
            record(f"datainf + hessian_free (shared passes, {scores.info['storage']})",
                   shared, passes)
    return results


def _loop_phase(args, model, tok, train, val, device, n_blocks: int, record) -> float | None:
    """The authors' per-block loop on its first and last block, scaled to every block and
    example (None with ``--skip-loop``)."""
    if args.skip_loop:
        return None
    n_all = len(train) + len(val)
    n_loop = min(args.loop_examples or n_all, n_all)
    blocks = sorted({0, n_blocks - 1})
    times = block_loop(model, tok, train, val, blocks, args.max_length, n_loop, device)
    estimate = sum(times) / len(times) * n_blocks * n_all / n_loop
    note = "" if n_loop == n_all else f", timed on {n_loop} examples, scaled"
    record(f"authors' loop, est. {n_blocks} blocks (blocks {blocks}{note})", estimate, n_blocks)
    return estimate


def _report(rows, results: dict, epoch: float, loop_estimate: float | None, device) -> None:
    """The phase table, the CUDA peak, and each goal as PASS / MISS."""
    width = max(len(r[0]) for r in rows)
    print(f"\n{'phase':<{width}} {'seconds':>9} {'x epoch':>8} {'passes':>7} {'peak RSS GB':>12}")
    for label, seconds, passes, rss in rows:
        print(f"{label:<{width}} {seconds:>9.1f} {seconds / epoch:>8.2f} {passes:>7} {rss:>12.2f}")
    if device.type == "cuda":
        print(f"peak CUDA memory allocated: {torch.cuda.max_memory_allocated(device) / 2**30:.2f} GB")
    print()
    checks = [
        (f"full weights <= {GOALS['weights']}x epoch", results["weights"] <= GOALS["weights"],
         f"{results['weights']:.2f}x"),
        (f"LoRA <= {GOALS['lora']}x epoch", results["lora"] <= GOALS["lora"],
         f"{results['lora']:.2f}x"),
        (f"datainf + hessian_free (shared passes) <= {GOALS['shared']}x DataInf alone",
         results["shared"] <= GOALS["shared"], f"{results['shared']:.2f}x"),
        (f"peak RSS <= {GOALS['rss_gb']} GB", _peak_rss_gb() <= GOALS["rss_gb"],
         f"{_peak_rss_gb():.2f} GB"),
    ]
    if loop_estimate is not None:
        speedup = loop_estimate / (results["weights"] * epoch)
        checks.append((f">= {GOALS['loop_speedup']:.0f}x faster than the per-block loop",
                       speedup >= GOALS["loop_speedup"], f"{speedup:.1f}x"))
    for goal, ok, value in checks:
        print(f"{'PASS' if ok else 'MISS'}  {goal}: {value}")


def main(argv=None) -> int:
    from layerif.gradients import encode
    from layerif.models import resolve_device, transformer_blocks

    parser = _parser()
    args = parser.parse_args(argv)
    if args.shared_rounds < 1:
        parser.error(f"--shared-rounds={args.shared_rounds} is invalid: expected an int >= 1")

    device = resolve_device(args.device)
    model, tok = _load(args, device)
    train, val, source = _examples(args)
    n_blocks = len(transformer_blocks(model))
    all_batches = encode(tok, list(train) + list(val), max_length=args.max_length,
                         batch_size=args.batch_size)
    mean_len = (all_batches.n_tokens + all_batches.n) / all_batches.n
    weights = " (random weights)" if args.random_weights else ""
    print(f"model {args.model}{weights} ({n_blocks} blocks) on {device}, torch threads "
          f"{torch.get_num_threads()}; data: {source}; n={len(train)} train + m={len(val)} "
          f"validation, max {args.max_length} tokens (mean {mean_len:.1f}), batch {args.batch_size}",
          flush=True)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    plain_epoch(model, list(all_batches)[:1], device)  # warm-up (allocator, kernels)
    rows = []

    def record(label, seconds, passes):
        rows.append((label, seconds, passes, _peak_rss_gb()))
        print(f"  done: {label}: {seconds:.1f} s", flush=True)

    epoch = plain_epoch(model, all_batches, device)
    record("plain fwd+bwd epoch (n+m)", epoch, 1)
    results = _score_phases(args, model, tok, train, val, device, epoch, record)
    loop_estimate = _loop_phase(args, model, tok, train, val, device, n_blocks, record)
    _report(rows, results, epoch, loop_estimate, device)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
