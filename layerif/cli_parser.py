"""The ``layerif`` command line's grammar: its subcommands, their options and help. What each
command does is :mod:`layerif.cli`'s."""
from __future__ import annotations

import argparse

from .paths import PROFILES
from .evaluate.suite import BACKENDS
from .notebook_params import MODEL_DTYPES
from .prune.config import METHODS
from .prune.magnitude import TIES

__all__ = ["DESCRIPTION", "build", "device_and_overwrite", "limit", "load_options_args"]

#: The program's description (``layerif --help``).
DESCRIPTION = "``layerif`` command line: thin wrappers over :mod:`layerif.study` and friends."


def build() -> argparse.ArgumentParser:
    """The ``layerif`` parser: one subcommand per verb."""
    p = argparse.ArgumentParser(prog="layerif", description=DESCRIPTION)
    sub = p.add_subparsers(dest="command", required=True)
    _add_run(sub)
    _add_book(sub)
    _add_status(sub)
    _add_scores(sub)
    _add_allocate(sub)
    _add_prune(sub)
    _add_evaluate(sub)
    _add_moe(sub)
    _add_describe(sub)
    _add_misc(sub)
    return p


def _add_run(sub) -> None:
    run = sub.add_parser(
        "run", help="execute notebooks with a parameter profile (skipping current ones)",
        description="Execute notebooks in run order with params/<profile>/. A notebook is "
        "skipped when its executed file records the same source, parameters and upstream "
        "runs. cpu notebooks go to book/executed/ (the book's, committed); smoke and paper "
        "go to results/<profile>/executed/. With --params FILE the file's values override "
        "the profile's and the executed notebook goes to results/<profile>/with-params/"
        "<hash of the values>/ instead, so the profile's own run (and the book) is untouched; "
        "results the notebook saves still go through the store, which refuses to replace "
        "one of the profile's results by a different one.",
        epilog="examples: layerif run 00_model_and_data --profile smoke | "
        "layerif run 05_pruning --profile cpu --params my.yaml  (my.yaml: 'models: "
        "[smollm2-135m]'); `layerif status` lists the notebook names")
    run.add_argument("notebooks", nargs="*", help="notebook names, e.g. 01_layer_scores "
                     "(default: all, in run order)")
    run.add_argument("--profile", default="cpu", choices=PROFILES)
    run.add_argument("--params", metavar="FILE", help="YAML file of parameter values "
                     "overriding the profile's (keys: the notebook's parameters cell); needs "
                     "notebook names")
    run.add_argument("--force", action="store_true", help="re-run current notebooks too")


def _add_book(sub) -> None:
    book = sub.add_parser(
        "book", help="bring all notebooks up to date; with --profile cpu also render the book",
        description="Run every notebook that is not current, then render _build/html from "
        "the cpu notebooks in book/executed/ (jupyter-book build -W -n --keep-going --all: "
        "any warning or unresolved reference fails the build and is printed). With --profile "
        "smoke or paper the notebooks are only run, into results/<profile>/executed/, and "
        "nothing is rendered: the book always shows the cpu profile.")
    book.add_argument("--profile", default="cpu", choices=PROFILES)
    book.add_argument("--force", action="store_true", help="re-run current notebooks too")


def _add_status(sub) -> None:
    stat = sub.add_parser(
        "status", help="say which executed notebooks are current, stale, missing or failed",
        description="One line per notebook: current | stale (which input changed: source, "
        "params, upstream) | missing | failed, and the command that fixes it. Exit status "
        "1 when any notebook is not current.")
    stat.add_argument("--profile", default="cpu", choices=PROFILES)


def _add_scores(sub) -> None:
    sc = sub.add_parser(
        "scores", help="LayerIF scores of a model on tasks, saved under results/<profile>/scores",
        description="Score each TASK (a registry task, or pruning_pool) with the sizes of "
        "params/<profile>/01_layer_scores.yaml (--model's entry of its sizes, else its first "
        "model's; --n-train, --n-val override), DataInf and Hessian-free from shared passes. "
        "Saved results of the same identity are loaded, not recomputed; a saved result of "
        "another identity is refused unless --overwrite.")
    sc.add_argument("tasks", nargs="+", help="task names, e.g. mrpc sst2 pruning_pool")
    sc.add_argument("--profile", default="cpu", choices=PROFILES)
    sc.add_argument("--model", default="smollm2-135m", help="embedded name, directory or hub id")
    sc.add_argument("--n-train", type=int, help="training examples per task (default: the "
                    "profile's params)")
    sc.add_argument("--n-val", type=int, help="validation examples per task (default: the "
                    "profile's params)")
    sc.add_argument("--methods", default="datainf,hessian_free",
                    help="comma-separated: datainf, hessian_free, exact")
    sc.add_argument("--overwrite", action="store_true", help="replace results of another identity")


def _add_allocate(sub) -> None:
    al = sub.add_parser(
        "allocate", help="experts or sparsity per block from saved scores, as CSV",
        description="Read a LayerScores folder (from `layerif scores`) and print (or --out) a "
        "CSV with one row per block.")
    al.add_argument("kind", choices=["experts", "sparsity"])
    al.add_argument("scores_dir", help="a folder written by LayerScores.save")
    al.add_argument("--aggregation", default="positive", choices=["positive", "top", "all"])
    al.add_argument("--total", type=int, help="experts: total over all blocks (required)")
    al.add_argument("--beta", type=float, default=2.5, help="experts: exponent (default 2.5)")
    al.add_argument("--target", type=float, default=0.5, help="sparsity: global target")
    al.add_argument("--epsilon", type=float, default=0.1, help="sparsity: band half-width")
    al.add_argument("--no-smooth", action="store_true", help="sparsity: skip Savitzky-Golay")
    al.add_argument("--out", help="write the CSV here instead of printing it")


def _add_prune(sub) -> None:
    pr = sub.add_parser(
        "prune", help="prune a model (per-block or global sparsity), evaluate it, save both",
        description="Load MODEL, prune every transformer block with the calibration size of "
        "`prune:` in params/<profile>/05_pruning.yaml (the book's), then measure perplexity "
        "on held-out BoolQ passages and zero-shot accuracy (sizes: its `evaluation:`), and "
        "save the sparsity report and the evaluation under --out (sparsity/, evaluation/). "
        "A saved result of the same identity is loaded, not recomputed; one of another "
        "identity is refused unless --overwrite.")
    pr.add_argument("model", help="embedded name, local checkpoint directory or hub id")
    ratios = pr.add_mutually_exclusive_group(required=True)
    ratios.add_argument("--allocation", help="CSV of per-block ratios: first column the block "
                        "index, then a 'sparsity' column (as `layerif allocate sparsity --out` "
                        "writes) or a single column")
    ratios.add_argument("--sparsity", type=float, help="one global sparsity in (0, 1) for "
                        "every block, instead of --allocation")
    pr.add_argument("--method", default="wanda", choices=METHODS)
    pr.add_argument("--profile", default="cpu", choices=PROFILES)
    pr.add_argument("--ties", default="exact", choices=TIES, help="exact (default) or the "
                    "published code's threshold rule (reference)")
    pr.add_argument("--out", help="result folder (default: results/<profile>/pruned/<model>/"
                    "<method>/<CSV stem or uniform-s<sparsity>>[-<dtype> unless float32])")
    pr.add_argument("--eval-limit", type=limit, help="zero-shot examples per task, or 'all' "
                    "(default: n_examples of `evaluation:` in params/<profile>/05_pruning.yaml)")
    pr.add_argument("--tasks", nargs="*", help="zero-shot tasks (default: the paper's seven); "
                    "--tasks with no names: perplexity only")
    load_options_args(pr)
    device_and_overwrite(pr)


def _add_evaluate(sub) -> None:
    ev = sub.add_parser(
        "evaluate", help="zero-shot accuracy and perplexity of a model, saved under results/",
        description="Load MODEL and measure perplexity on held-out BoolQ passages and "
        "zero-shot accuracy (acc, acc_norm, margin per task) with the sizes of `evaluation:` "
        "in params/<profile>/05_pruning.yaml (the book's evaluation), print the table and "
        "save it under --out. A saved result of the same "
        "identity is loaded, not recomputed; one of another identity is refused unless "
        "--overwrite.",
        epilog="example: layerif evaluate smollm2-135m --profile smoke --tasks boolq rte")
    ev.add_argument("model", help="embedded name (smollm2-135m, gemma3-270m), local "
                    "checkpoint directory or hub id")
    ev.add_argument("--profile", default="cpu", choices=PROFILES)
    ev.add_argument("--tasks", nargs="*", help="zero-shot tasks (default: the paper's seven; "
                    "`layerif tasks` lists them); --tasks with no names: perplexity only")
    ev.add_argument("--n-examples", type=limit, help="examples per task, or 'all' (default: "
                    "the profile's params)")
    ev.add_argument("--backend", choices=BACKENDS, help="zero-shot scorer (default: layerif; "
                    "lm-eval runs stock lm-evaluation-harness)")
    ev.add_argument("--out", help="result folder (default: results/<profile>/evaluated/<model>/"
                    "<hash of the evaluation config>[-<dtype> unless float32])")
    load_options_args(ev)
    device_and_overwrite(ev)


def _add_moe(sub) -> None:
    mo = sub.add_parser(
        "moe", help="fine-tune a LoRA-MoE with an expert allocation on a task, evaluate, save",
        description="Attach a LoRA-MoE to MODEL with experts per block from --method (LayerIF "
        "+ve / Top 25% / All from the task's saved scores, `layerif scores TASK` first; "
        "AlphaLoRA or MoLA <pattern> from the model alone; 'LoRA (same parameters)'; 'Base "
        "model') or from --allocation CSV (`layerif allocate experts --out`), fine-tune it on "
        "TASK's training examples with the profile's recipe and sizes (params/<profile>/"
        "03_lora_moe.yaml; adapter: rank 8, alpha 16, top-2; smoke: rank 4), evaluate on "
        "held-out examples and save under results/<profile>/moe/. A saved run of the same identity is loaded, not retrained.",
        epilog="example: layerif moe smollm2-135m csqa --method 'MoLA 5555' --profile smoke")
    mo.add_argument("model", help="embedded name, local checkpoint directory or hub id")
    mo.add_argument("task", help="task label, e.g. csqa, sst2, openbookqa:instruct")
    how = mo.add_mutually_exclusive_group(required=True)
    how.add_argument("--method", help="allocation method: 'LayerIF +ve', 'LayerIF Top 25%%', "
                     "'LayerIF All', AlphaLoRA, 'MoLA 2468' (or 5555, 8642, 1234, 46810, 3578), "
                     "'LoRA (same parameters)', 'Base model'")
    how.add_argument("--allocation", help="CSV of experts per block (an 'experts' column)")
    mo.add_argument("--per-block", type=float, default=5.0, help="average experts per block "
                    "for --method (2.5, 5 or 7; default 5)")
    mo.add_argument("--seed", type=int, default=0, help="adapter initialisation, data order "
                    "and dropout seed")
    mo.add_argument("--profile", default="cpu", choices=PROFILES)
    mo.add_argument("--n-train", type=limit, help="training examples (default: n_train of "
                    "params/<profile>/03_lora_moe.yaml)")
    mo.add_argument("--n-eval", type=limit, help="held-out examples (default: n_eval of "
                    "params/<profile>/03_lora_moe.yaml)")
    mo.add_argument("--results", help="results folder holding scores/ and receiving moe/ "
                    "(default: results/<profile>)")
    device_and_overwrite(mo, "replace a run of another identity")


def _add_describe(sub) -> None:
    desc = sub.add_parser("describe", help="print a model's transformer blocks")
    desc.add_argument("model", nargs="?", default="smollm2-135m")


def _add_misc(sub) -> None:
    """The subcommands without options: sync-notebooks and tasks."""
    sub.add_parser("sync-notebooks", help="write notebooks/*.ipynb from the MyST sources (nbval)")
    sub.add_parser("tasks", help="print the task registry's split sizes")


def load_options_args(parser) -> None:
    """``--dtype`` and ``--device-map``: how the model loads (default: the profile's
    ``model_dtype`` / ``device_map`` in params/<profile>/05_pruning.yaml, else float32 on one
    device)."""
    parser.add_argument("--dtype", choices=MODEL_DTYPES, help="the dtype the model loads in "
                        "(default: the profile's; paper: bfloat16); part of the result's identity")
    parser.add_argument("--device-map", help="'auto' spreads the model over the GPUs present "
                        "(accelerate; default: the profile's; paper: auto)")


def device_and_overwrite(parser, overwrite_help: str = "replace results of another identity") -> None:
    """The --device and --overwrite options of the commands that compute and save a result."""
    parser.add_argument("--device", default="auto", help="auto (CUDA if present) | cpu | cuda ...")
    parser.add_argument("--overwrite", action="store_true", help=overwrite_help)


def limit(text: str) -> int | str:
    if text == "all":
        return text
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is invalid: expected an int >= 1 or 'all'")
    return value
