"""``python -m layerif.bench prune``: cost and sanity of Magnitude / Wanda / SparseGPT.

On the embedded SmolLM2-135M with 32 x 256 calibration tokens (BoolQ passages), it times
each pruner at 50% uniform sparsity against one forward pass of the model over the same
calibration set (goals: Wanda <= 2x, SparseGPT <= 10x), records peak memory, and prints the
perplexity of the dense and pruned models on held-out BoolQ passages (expected order:
SparseGPT <= Wanda <= Magnitude).
"""
from __future__ import annotations

import argparse
import os

import torch

from ..models import load_model, resolve_device
from ..prune import PruneConfig, prune_model
from ..rng import seeded
from ._common import timed

GOALS = {"wanda": 2.0, "sparsegpt": 10.0}


def _tokens(tokenizer, n, seq_len, seed, kind):
    try:
        from .. import data
    except ImportError:
        data = None
    fn = getattr(data, f"{kind}_tokens", None) if data is not None else None
    if fn is not None:
        return fn(tokenizer, n, seq_len, seed=seed), "BoolQ passages (layerif.data)"
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, len(tokenizer), (n, seq_len), generator=g), "random token ids (no layerif.data)"


@torch.no_grad()
def forward_all(model, tokens, batch_size):
    device = next(model.parameters()).device
    for start in range(0, tokens.shape[0], batch_size):
        model(input_ids=tokens[start:start + batch_size].to(device), use_cache=False)



def _synthetic_smollm2(device, dtype):
    """A Llama with SmolLM2-135M's shapes and random weights: timing only, no checkpoint."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                         num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192,
                         tie_word_embeddings=True, rope_theta=100000.0)
    with seeded(0):
        model = LlamaForCausalLM(config).to(device=device, dtype=dtype).eval()

    class _Vocab:  # _tokens only needs len() for random ids
        def __len__(self):
            return config.vocab_size

    return model, _Vocab()


def _timed(device, fn):
    out, elapsed, memory = timed(device, fn)
    return out, elapsed, memory.peak


def measure(model, calibration, held_out, methods, sparsity=0.5, batch_size=8):
    """Rows ``(step, seconds, x forward, goal verdict, peak bytes, sparsity, perplexity)``.

    The model's weights are restored to dense after each method and at the end.
    """
    from ..evaluate.perplexity import perplexity

    device = next(model.parameters()).device
    dense = {k: v.detach().clone() for k, v in model.state_dict().items()}
    forward_all(model, calibration[:batch_size], batch_size)  # warm-up (kernels, allocator)
    _, t_forward, peak = _timed(device, lambda: forward_all(model, calibration, batch_size))
    rows = [("forward (baseline)", t_forward, 1.0, "", peak, float("nan"),
             perplexity(model, held_out, batch_size, progress=False))]
    try:
        for method in methods:
            model.load_state_dict(dense)
            config = PruneConfig(method=method, n_samples=calibration.shape[0],
                                 seq_len=calibration.shape[1], batch_size=batch_size)
            report, elapsed, peak = _timed(device, lambda: prune_model(
                model, config, sparsity, calibration, progress=False))
            ratio = elapsed / t_forward
            goal = GOALS.get(method)
            verdict = "" if goal is None else f"<= {goal:g}x {'ok' if ratio <= goal else 'MISSED'}"
            rows.append((method, elapsed, ratio, verdict, peak, report.attrs["global_sparsity"],
                         perplexity(model, held_out, batch_size, progress=False)))
    finally:
        model.load_state_dict(dense)
    return rows


def print_table(rows, device):
    mem_label = "peak GPU alloc MiB" if device.type == "cuda" else "peak RSS MiB"
    header = (f"{'step':<20}{'time s':>9}{'x forward':>11}  {'goal':<13}{mem_label:>19}"
              f"{'sparsity':>10}{'perplexity':>12}")
    print(header)
    print("-" * len(header))
    for name, t, ratio, verdict, peak, sparsity, ppl in rows:
        sp = "" if sparsity != sparsity else f"{sparsity:.4f}"
        print(f"{name:<20}{t:>9.2f}{ratio:>11.2f}  {verdict:<13}{peak / 2**20:>19.0f}{sp:>10}{ppl:>12.2f}")
    ppl = {name: p for name, *_, p in rows}
    if {"magnitude", "wanda", "sparsegpt"} <= set(ppl):
        ordered = ppl["sparsegpt"] <= ppl["wanda"] <= ppl["magnitude"]
        print(f"perplexity order SparseGPT <= Wanda <= Magnitude: {'yes' if ordered else 'NO'}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m layerif.bench prune", description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--synthetic", action="store_true",
                        help="time a SmolLM2-shaped Llama with random weights (no checkpoint; perplexity meaningless)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--n-samples", type=int, default=32, help="calibration sequences")
    parser.add_argument("--seq-len", type=int, default=256, help="tokens per sequence")
    parser.add_argument("--ppl-samples", type=int, default=32, help="held-out sequences for perplexity")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--sparsity", type=float, default=0.5)
    parser.add_argument("--methods", nargs="+", default=["magnitude", "wanda", "sparsegpt"])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    dtype = getattr(torch, args.dtype)
    if args.synthetic:
        model, tokenizer = _synthetic_smollm2(device, dtype)
        name = "SmolLM2-135M-shaped Llama, random weights"
    else:
        model, tokenizer = load_model(args.model, device=device, dtype=dtype)
        name = args.model
    if args.synthetic:
        g = torch.Generator().manual_seed(args.seed)
        calibration = torch.randint(0, len(tokenizer), (args.n_samples, args.seq_len), generator=g)
        held_out = torch.randint(0, len(tokenizer), (args.ppl_samples, args.seq_len), generator=g)
        source = "random token ids"
    else:
        calibration, source = _tokens(tokenizer, args.n_samples, args.seq_len, args.seed, "calibration")
        held_out, _ = _tokens(tokenizer, args.ppl_samples, args.seq_len, args.seed + 1, "perplexity")
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        f"cpu, {torch.get_num_threads()} torch threads, {os.cpu_count()} cores"
    print(f"model {name} ({args.dtype}) on {where}; calibration {args.n_samples} x {args.seq_len} tokens of "
          f"{source}; perplexity on {args.ppl_samples} x {args.seq_len} held-out tokens; "
          f"{args.sparsity:.0%} uniform sparsity; batch {args.batch_size}")
    print_table(measure(model, calibration, held_out, args.methods, args.sparsity, args.batch_size), device)
    if device.type != "cuda":
        print("peak RSS is the whole process: model, its dense copy (to restore it) and the step's buffers")
    return 0
