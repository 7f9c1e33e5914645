"""``python -m layerif.bench profile-scores``: where ``layer_scores`` spends its time.

On a random-weight model of a paper shape (default SmolLM2-135M's, :mod:`.shapes`), with
``ScoreConfig.paper()`` on a handful of BoolQ examples and ``storage="stream"`` (the path a
7B model takes: its per-example q/k/v/o gradients never fit in memory), it prints

* the phases -- :class:`layerif.gradients.GradientEngine` passes, timed with ``cProfile``
  (cumulative seconds per method), against one plain forward+backward epoch over the same
  examples (every parameter's gradient);
* the top aten ops by self time under ``torch.profiler`` for the scores and for the plain
  epoch (CUDA kernel time too on a GPU).
"""
from __future__ import annotations

import argparse
import cProfile
import pstats
import time

import torch

from ..models import resolve_device
from . import shapes

PHASES = ("summed", "norms_and_dots", "weighted_sum", "per_example", "_run")


def _phase_seconds(profile: cProfile.Profile) -> dict[str, float]:
    """Cumulative seconds of the GradientEngine methods, and their call counts."""
    stats = pstats.Stats(profile).stats  # {(file, line, name): (cc, nc, tt, ct, callers)}
    out = {}
    for (path, _, name), (_, calls, _, cumulative, _) in stats.items():
        if path.endswith("gradients.py") and name in PHASES:
            out[f"{name} (x{calls})"] = cumulative
    return out


def _top_ops(prof, device, n: int) -> str:
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=key, row_limit=n, max_name_column_width=40)


def profile(model, tok, n_train: int, n_val: int, top: int = 12):
    """``(epoch s, scores s, phases, scores' op table, epoch's op table)``."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    from ..data import load_task
    from ..gradients import encode
    from ..scores import ScoreConfig, layer_scores
    from .influence import plain_epoch

    device = next(model.parameters()).device
    cfg = ScoreConfig.paper().replace(n_train=n_train, n_val=n_val, storage="stream",
                                      device=str(device))
    train = load_task("boolq", "train", n=n_train)
    val = load_task("boolq", "validation", n=n_val)
    batches = encode(tok, list(train) + list(val), max_length=cfg.max_length, batch_size=cfg.batch_size)
    plain_epoch(model, list(batches)[:1], device)  # warm-up
    epoch = plain_epoch(model, batches, device)
    cp = cProfile.Profile()
    start = time.perf_counter()
    cp.runcall(layer_scores, model, tok, train, val, cfg, progress=False)
    seconds = time.perf_counter() - start
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with torch_profile(activities=activities) as scores_prof:
        layer_scores(model, tok, train, val, cfg, progress=False)
    with torch_profile(activities=activities) as epoch_prof:
        plain_epoch(model, batches, device)
    return (epoch, seconds, _phase_seconds(cp), _top_ops(scores_prof, device, top),
            _top_ops(epoch_prof, device, top))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m layerif.bench profile-scores",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="smollm2-135m", choices=list(shapes.SHAPES))
    parser.add_argument("--layers", type=int, default=None)
    parser.add_argument("--hidden", type=int, default=None)
    parser.add_argument("--n-train", type=int, default=16)
    parser.add_argument("--n-val", type=int, default=4)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--top", type=int, default=12, help="ops listed per table")
    args = parser.parse_args(argv)

    from .paper_scale import embedded_tokenizer

    tok = embedded_tokenizer()
    fields = shapes.scaled(args.shape, args.layers, args.hidden)
    device = resolve_device(args.device)
    model = shapes.build(fields, device, getattr(torch, args.dtype),
                         vocab_size=max(fields["vocab_size"], len(tok)), name=args.shape)
    epoch, seconds, phases, scores_ops, epoch_ops = profile(model, tok, args.n_train, args.n_val, args.top)
    print(f"shape {args.shape}: {fields['num_hidden_layers']} blocks, width {fields['hidden_size']}, "
          f"{args.dtype}, random weights, {device}; ScoreConfig.paper() with storage='stream' on "
          f"{args.n_train}+{args.n_val} BoolQ examples")
    print(f"plain fwd+bwd epoch {epoch:.2f} s; layer_scores {seconds:.2f} s ({seconds / epoch:.2f}x) "
          "under cProfile")
    print("\nphase (GradientEngine method, cumulative)      seconds  x epoch")
    for name, s in phases.items():
        print(f"{name:<44}{s:>9.2f}{s / epoch:>9.2f}")
    print("\nlayer_scores, top ops by self time:\n" + scores_ops)
    print("plain epoch, top ops by self time:\n" + epoch_ops)
    return 0
