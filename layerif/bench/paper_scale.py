"""``python -m layerif.bench paper-scale``: every stage of the study with its paper preset
on a random-weight model of a paper shape.

``--shape mistral-7b | llama2-7b | gemma-7b | smollm2-135m`` (configs in
:mod:`layerif.bench.shapes`; the tokenizer is the embedded SmolLM2's, and the vocabulary is
the larger of the shape's and the tokenizer's so that every token id exists). Each stage is
timed against a plain baseline on the same model, the two alternating for ``--rounds``
rounds (the minimum of each is kept, so the first round doubles as the warm-up):

=================  =========================================  ===============================
stage              preset and work                            baseline
=================  =========================================  ===============================
scores             ``layer_scores(ScoreConfig.paper())``:     plain forward+backward epoch
                   300 + 50 BoolQ examples, q/k/v/o weights   (every parameter) over them
lora-moe step      ``MoEConfig.paper()``, 5 experts per       plain LoRA step (peft r=8,
                   block, ``TrainConfig.paper()`` steps       alpha 16, same projections)
choice_logliks     64 HellaSwag test examples (4 choices)     one plain forward over the
                                                              unique context/continuation
perplexity         ``EvalConfig.paper()``: 128 x 2048         plain forward over the rows
wanda, sparsegpt   ``PruneConfig.paper()`` (128 x 2048) at    plain forward over the
                   50%                                        calibration rows
=================  =========================================  ===============================

Memory is the CUDA allocator's peak (``torch.cuda.max_memory_allocated``, model included) on
a GPU, and the peak process RSS above its level at the stage's start (sampled every 20 ms)
on a CPU; the header says which. Token contents are random ids (weights are random too:
they do not change any stage's cost). ``--tiny`` (or ``--layers`` / ``--hidden`` for the
architecture alone) shrinks the run so that it finishes on a CPU in seconds.
"""
from __future__ import annotations

import argparse
import dataclasses
import math

import pandas as pd
import torch

from ..models import resolve_device, transformer_blocks
from ..tokens import pad_token_id, with_pad_token
from . import shapes
from ._common import timed

__all__ = ["COLUMNS", "PAPER", "STAGES", "TINY", "OwnSeconds", "Sizes", "embedded_tokenizer", "main",
           "measure", "run"]

STAGES = ("scores", "lora-moe step", "choice_logliks", "perplexity", "wanda", "sparsegpt")
COLUMNS = ["stage", "work", "seconds", "baseline", "baseline_s", "ratio", "peak_mem_GB"]


@dataclasses.dataclass(frozen=True)
class Sizes:
    """How much work each stage does (the presets' own sizes in :data:`PAPER`)."""

    n_train: int | None = None      # scores: None = ScoreConfig.paper()'s 300
    n_val: int | None = None        # scores: None = its 50
    train_steps: int = 2            # optimizer steps timed (one more runs first, untimed)
    grad_accum: int | None = None   # None = TrainConfig.paper()'s 16 micro-batches of 8
    train_len: int | None = None    # None = TrainConfig.paper()'s 256 tokens
    choices: int = 64               # HellaSwag test examples
    ppl: tuple | None = None        # (rows, tokens); None = EvalConfig.paper()'s 128 x 2048
    calibration: tuple | None = None  # (rows, tokens); None = PruneConfig.paper()'s 128 x 2048
    experts: int = 5                # per block: the paper's 160 experts over 32 blocks


PAPER = Sizes()
TINY = Sizes(n_train=6, n_val=2, train_steps=1, grad_accum=2, train_len=32, choices=3,
             ppl=(2, 32), calibration=(4, 32))



class OwnSeconds(float):
    """Returned by a stage that times itself (a training stage: its steps, not the attach)."""


def _timed(device, fn) -> tuple[float, float]:
    """``(seconds, GB)`` of ``fn()``; an :class:`OwnSeconds` it returns replaces the wall time."""
    own, seconds, mem = timed(device, fn)
    used = mem.peak if device.type == "cuda" else mem.peak - mem.start
    return (float(own) if isinstance(own, OwnSeconds) else seconds), used / 2**30


def measure(device, baseline, stage, rounds: int) -> tuple[float, float, float]:
    """``(baseline s, stage s, stage peak GB)``: the two alternate, min of each over rounds."""
    base_t, stage_t, peak = [], [], 0.0
    for _ in range(rounds):
        base_t.append(_timed(device, baseline)[0])
        seconds, gb = _timed(device, stage)
        stage_t.append(seconds)
        peak = max(peak, gb)
    return min(base_t), min(stage_t), peak


def _random_rows(n, length, vocab, seed):
    return torch.randint(0, vocab, (n, length), generator=torch.Generator().manual_seed(seed))


def _scores_stage(model, tok, sizes, device):
    from ..data import load_task
    from ..gradients import encode
    from ..scores import ScoreConfig, layer_scores
    from .influence import plain_epoch

    cfg = ScoreConfig.paper().replace(device=str(device))
    cfg = cfg.replace(n_train=sizes.n_train or cfg.n_train, n_val=sizes.n_val or cfg.n_val)
    train = load_task("boolq", "train", n=cfg.n_train)
    val = load_task("boolq", "validation", n=cfg.n_val)
    batches = encode(tok, list(train) + list(val), max_length=cfg.max_length,
                     batch_size=cfg.batch_size)
    work = f"{cfg.n_train}+{cfg.n_val} BoolQ, {cfg.modules} {cfg.target}, {cfg.max_length} tok"
    return (work, "plain fwd+bwd epoch", lambda: plain_epoch(model, batches, device),
            lambda: layer_scores(model, tok, train, val, cfg, progress=False))


def _train_fn(model, tok, rows, recipe, attach):
    """Attach an adapter, train ``rows``, take it off; seconds of all but the first step."""
    def fn():
        from ..train import finetune

        trained, undo = attach(model)
        try:
            hist = finetune(trained, tok, rows, recipe)
        finally:
            undo(trained)
        return OwnSeconds(hist["seconds"].iloc[1:].sum())
    return fn


def _train_stage(model, tok, sizes, device):
    from peft import LoraConfig, get_peft_model

    from .. import moe
    from ..train import TrainConfig

    recipe = TrainConfig.paper().replace(epochs=1, progress=False)
    recipe = recipe.replace(grad_accum=sizes.grad_accum or recipe.grad_accum,
                            max_length=sizes.train_len or recipe.max_length)
    n_rows = recipe.batch_size * recipe.grad_accum * (sizes.train_steps + 1)
    rows = _random_rows(n_rows, recipe.max_length, len(tok), seed=1)
    targets = list(moe.default_targets(model))
    n_blocks = len(transformer_blocks(model))

    def lora(m):
        cfg = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05, target_modules=targets)
        return get_peft_model(m, cfg), lambda p: p.unload()

    def mixture(m):
        return moe.attach(m, [sizes.experts] * n_blocks, moe.MoEConfig.paper()), moe.detach

    probe = moe.LoRAMoELinear(torch.nn.Linear(2, 2), sizes.experts, min(2, sizes.experts))
    work = (f"{sizes.train_steps} x ({recipe.grad_accum} x {recipe.batch_size} x "
            f"{recipe.max_length} tok), {sizes.experts} experts/block, auto={probe.path(device)}")
    return (work, "plain LoRA step (peft r=8)", _train_fn(model, tok, rows, recipe, lora),
            _train_fn(model, tok, rows, recipe, mixture))


def _choice_stage(model, tok, sizes, device):
    from ..data import load_task
    from ..evaluate.choices import choice_logliks
    from .evaluate import reference_forward, unique_sequences

    examples = load_task("hellaswag", "test", n=sizes.choices)
    contexts, continuations, _ = unique_sequences(tok, {"hellaswag": examples})
    pad = pad_token_id(tok)
    work = f"{len(examples)} HellaSwag, {len(continuations)} choices"
    return (work, "plain forward (unique tokens)",
            lambda: reference_forward(model, contexts + continuations, 8, pad),
            lambda: choice_logliks(model, tok, examples, progress=False))


def _perplexity_stage(model, tok, sizes, device):
    from ..evaluate.perplexity import perplexity
    from ..evaluate.suite import EvalConfig
    from .prune import forward_all

    paper = EvalConfig.paper()
    n, length = sizes.ppl or (paper.ppl_samples, paper.ppl_len)
    rows = _random_rows(n, length, len(tok), seed=2)
    return (f"{n} x {length} tok", "plain forward (same rows)",
            lambda: forward_all(model, rows, 8),
            lambda: perplexity(model, rows, 8, progress=False))


def _prune_stage(method):
    def stage(model, tok, sizes, device):
        from ..prune import PruneConfig, prune_model
        from .prune import forward_all

        cfg = PruneConfig.paper().replace(method=method)
        n, length = sizes.calibration or (cfg.n_samples, cfg.seq_len)
        cfg = cfg.replace(n_samples=n, seq_len=length)
        rows = _random_rows(n, length, len(tok), seed=3)
        return (f"{n} x {length} tok, 50%", "plain forward (calibration)",
                lambda: forward_all(model, rows, cfg.batch_size),
                lambda: prune_model(model, cfg, 0.5, rows, progress=False))
    return stage


BUILDERS = {"scores": _scores_stage, "lora-moe step": _train_stage, "choice_logliks": _choice_stage,
            "perplexity": _perplexity_stage, "wanda": _prune_stage("wanda"),
            "sparsegpt": _prune_stage("sparsegpt")}


def run(model, tok, sizes: Sizes = PAPER, stages=STAGES, rounds: int = 2, log=None) -> pd.DataFrame:
    """Time ``stages`` (in :data:`STAGES` order; pruning last: it zeroes weights) on
    ``model``; one row per stage with :data:`COLUMNS`."""
    device = next(model.parameters()).device
    rows = []
    for name in [s for s in STAGES if s in stages]:
        work, base_label, baseline, stage = BUILDERS[name](model, tok, sizes, device)
        base_s, stage_s, gb = measure(device, baseline, stage, rounds)
        rows.append({"stage": name, "work": work, "seconds": stage_s, "baseline": base_label,
                     "baseline_s": base_s, "ratio": stage_s / base_s, "peak_mem_GB": gb})
        if log is not None:
            log(f"  done: {name}: {stage_s:.2f} s ({stage_s / base_s:.2f}x {base_label})")
    return pd.DataFrame(rows, columns=COLUMNS)


def embedded_tokenizer():
    """The embedded SmolLM2's tokenizer (converting the model once if it is not cached)."""
    from transformers import AutoTokenizer

    from ..models import cache_dir, load_model

    path = cache_dir() / "models" / "smollm2-135m"
    if not (path / "tokenizer_config.json").exists():
        load_model("smollm2-135m", device="cpu")
    return with_pad_token(AutoTokenizer.from_pretrained(str(path)))


def _parser():
    parser = argparse.ArgumentParser(prog="python -m layerif.bench paper-scale",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="mistral-7b", choices=list(shapes.SHAPES))
    parser.add_argument("--layers", type=int, default=None, help="blocks (default: the shape's)")
    parser.add_argument("--hidden", type=int, default=None, help="width (default: the shape's)")
    parser.add_argument("--tiny", action="store_true",
                        help="2 blocks of width 64 and a handful of examples (CPU, seconds)")
    parser.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                        help="default: the paper's (bfloat16 for the 7B shapes; float32 with --tiny)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds (min of each)")
    parser.add_argument("--seed", type=int, default=0)
    return parser


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    if args.rounds < 1:
        raise ValueError(f"--rounds={args.rounds} is invalid: expected an int >= 1")
    layers, hidden = (args.layers or 2, args.hidden or 64) if args.tiny else (args.layers, args.hidden)
    fields = shapes.scaled(args.shape, layers, hidden)
    dtype = (getattr(torch, args.dtype) if args.dtype else
             torch.float32 if args.tiny else shapes.PAPER_DTYPE[args.shape])
    device = resolve_device(args.device)
    tok = embedded_tokenizer()
    vocab = max(fields["vocab_size"], len(tok))
    model = shapes.build(fields, device, dtype, args.seed, vocab, name=args.shape)
    n_params = sum(p.numel() for p in model.parameters())
    where = (torch.cuda.get_device_name(device) if device.type == "cuda"
             else f"cpu, {torch.get_num_threads()} torch threads")
    memory = ("peak_mem_GB = torch.cuda.max_memory_allocated (model included)" if device.type == "cuda"
              else "peak_mem_GB = peak process RSS above its level at the stage's start (sampled)")
    print(f"shape {args.shape}{' (scaled)' if layers or hidden else ''}: {fields['num_hidden_layers']} "
          f"blocks, width {fields['hidden_size']}, vocab {vocab}, {n_params / 1e9:.2f}B parameters, "
          f"{dtype}, random weights; {where}; torch {torch.__version__}; min of {args.rounds} "
          f"alternating rounds; {memory}", flush=True)
    table = run(model, tok, TINY if args.tiny else PAPER, args.stages, args.rounds,
                log=lambda line: print(line, flush=True))
    with pd.option_context("display.width", 200, "display.max_colwidth", 80):
        print(table.to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    if not math.isfinite(table["ratio"].sum()):
        return 1
    return 0
